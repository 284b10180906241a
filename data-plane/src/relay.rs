//! Relaying a session: both directions until both are done (half-closes
//! are passed on), or until nothing moved for the idle timeout.
//!
//! A direction copies small reads through a 16 KiB buffer (for a few
//! hundred bytes `recv`/`send` beat splicing, which has to put linear skb
//! data in a fresh page). On Linux a read that fills the buffer switches
//! the direction to `splice(2)` through a pooled pipe (zero copy, see
//! [`crate::splice`]), and a splice that moves less than the buffer
//! switches it back (HAProxy's `splice-auto` idea). [`relay_copy`] never
//! splices: it is what other systems run, and is tested here too.
//!
//! Each direction is a small state machine ([`Dir`]) polled by one future
//! with the idle timer. Readiness is polled with `poll_read_ready` /
//! `poll_write_ready`, which register the task with the socket directly,
//! so no readiness future is stored per await: an idle session costs a few
//! hundred bytes. A read that does not fill the buffer drained the socket:
//! its readiness is cleared then (as tokio's own `poll_read` does), so the
//! next round waits for new bytes instead of paying a read that would only
//! say EAGAIN.

use std::io;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Read buffer of the copy mode, and the size of a read that switches a
/// direction to splicing.
const COPY_BUF: usize = 16 * 1024;

/// Where a relay counts the bytes it moves, as it moves them (so long
/// sessions show in the metrics before they end, and a session cut short
/// still counts what it moved): counters for client → server (`up`) and
/// server → client (`down`), each added to after every chunk.
#[derive(Debug, Clone, Copy)]
pub struct Moved<'a> {
    pub up: &'a [&'a AtomicU64],
    pub down: &'a [&'a AtomicU64],
}

/// Relays both ways until both directions are done or nothing moved for
/// `idle`, splicing bulk data on Linux, counting bytes into `moved`.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    idle: Duration,
    moved: Moved<'_>,
) -> io::Result<()> {
    relay_with(client, server, idle, cfg!(target_os = "linux"), moved).await
}

/// [`relay`] copying every byte through user space (the portable path).
pub async fn relay_copy(
    client: &TcpStream,
    server: &TcpStream,
    idle: Duration,
    moved: Moved<'_>,
) -> io::Result<()> {
    relay_with(client, server, idle, false, moved).await
}

async fn relay_with(
    client: &TcpStream,
    server: &TcpStream,
    idle: Duration,
    splice: bool,
    moved: Moved<'_>,
) -> io::Result<()> {
    let mut up = Dir::new(splice, moved.up);
    let mut down = Dir::new(splice, moved.down);
    // When bytes last moved either way, in ms since `start`.
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let both = std::future::poll_fn(|cx| {
        let before = up.moved + down.moved;
        let up_done = up.poll(cx, client, server, down.ended);
        let down_done = down.poll(cx, server, client, up.ended);
        if up.moved + down.moved != before {
            last.store(start.elapsed().as_millis() as u64, Relaxed);
        }
        match (up_done, down_done) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    });
    let mut both = std::pin::pin!(both);
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    loop {
        tokio::select! {
            r = &mut both => return r,
            () = &mut timer => {}
        }
        let quiet_since = start + Duration::from_millis(last.load(Relaxed));
        if quiet_since.elapsed() >= idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        timer.as_mut().reset(quiet_since + idle);
    }
}

/// One direction: moves bytes from a source to a destination until EOF,
/// then shuts the destination's write side (unless the other direction
/// has ended too: the relay is over and the close that follows sends the
/// FIN).
pub(crate) struct Dir<'a> {
    splice: bool,
    /// Splicing (the last read filled the buffer).
    bulk: bool,
    /// Copy-mode bytes the destination did not take yet.
    pending: Vec<u8>,
    #[cfg(target_os = "linux")]
    inflight: Option<crate::splice::InFlight>,
    counters: &'a [&'a AtomicU64],
    /// Bytes moved so far.
    pub moved: u64,
    pub ended: bool,
}

impl<'a> Dir<'a> {
    pub(crate) fn new(splice: bool, counters: &'a [&'a AtomicU64]) -> Dir<'a> {
        Dir {
            splice,
            bulk: false,
            pending: Vec::new(),
            #[cfg(target_os = "linux")]
            inflight: None,
            counters,
            moved: 0,
            ended: false,
        }
    }

    fn count(&mut self, n: usize) {
        self.moved += n as u64;
        for c in self.counters {
            c.fetch_add(n as u64, Relaxed);
        }
    }

    /// Moves what it can; ready at EOF (after the shutdown) or on error.
    /// `other_ended`: the opposite direction is done.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        other_ended: bool,
    ) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        loop {
            // What the destination has not taken yet goes first.
            while !self.pending.is_empty() {
                ready!(dst.poll_write_ready(cx))?;
                match dst.try_write(&self.pending) {
                    Ok(m) => {
                        self.pending.drain(..m);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            #[cfg(target_os = "linux")]
            ready!(crate::splice::poll_drain(&mut self.inflight, dst, cx))?;
            ready!(src.poll_read_ready(cx))?;
            let n = if self.bulk {
                match self.fill(src)? {
                    None => continue,
                    Some(n) => {
                        self.bulk = n >= COPY_BUF;
                        n
                    }
                }
            } else {
                match copy_once(src, dst)? {
                    Copied::Nothing => continue,
                    Copied::All(n) => {
                        self.bulk = self.splice && n == COPY_BUF;
                        n
                    }
                    Copied::Partly(n, rest) => {
                        // The destination is full: keep what it did not take.
                        self.pending = rest;
                        n
                    }
                }
            };
            if n == 0 {
                self.ended = true;
                if !other_ended {
                    socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
                }
                return Poll::Ready(Ok(()));
            }
            self.count(n);
        }
    }

    /// One splice from `src` into a pooled pipe (drained by the next round):
    /// `None` when there was nothing to read after all.
    #[cfg(target_os = "linux")]
    fn fill(&mut self, src: &TcpStream) -> io::Result<Option<usize>> {
        use crate::splice::Filled;
        Ok(match crate::splice::fill(src)? {
            Filled::Nothing => None,
            Filled::Eof => Some(0),
            Filled::Bytes(inflight, n) => {
                self.inflight = Some(inflight);
                Some(n)
            }
        })
    }

    /// Splicing needs Linux; elsewhere a direction never enters bulk mode.
    #[cfg(not(target_os = "linux"))]
    fn fill(&mut self, _: &TcpStream) -> io::Result<Option<usize>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// One direction on its own until EOF (tests).
#[cfg(test)]
pub(crate) async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    splice: bool,
    counters: &[&AtomicU64],
) -> io::Result<()> {
    let mut dir = Dir::new(splice, counters);
    std::future::poll_fn(|cx| dir.poll(cx, src, dst, false)).await
}

enum Copied {
    /// The source had nothing to read after all.
    Nothing,
    /// Read and written in full (0: EOF).
    All(usize),
    /// Read this many; the destination took only part, the rest is here.
    Partly(usize, Vec<u8>),
}

thread_local! {
    /// The copy mode's buffer: one per runtime thread, not one per session,
    /// so sessions stay small (no 16 KiB array moved around).
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; COPY_BUF]);
}

/// One read from `src` and as much of it written to `dst` as it takes, with
/// no await in between (so the per-thread buffer can be used). A short read
/// clears the source's readiness (see the module docs).
fn copy_once(src: &TcpStream, dst: &TcpStream) -> io::Result<Copied> {
    BUF.with_borrow_mut(|buf| {
        let mut short = None;
        let read = src.try_io(Interest::READABLE, || {
            let n = (&*socket2::SockRef::from(src)).read(buf)?;
            if n > 0 && n < buf.len() {
                short = Some(n);
                // Clears the readiness observed before this read.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match (read, short) {
            (_, Some(n)) => n,
            (Ok(n), None) => n,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Copied::Nothing);
            }
            (Err(e), None) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            match dst.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Copied::Partly(n, buf[sent..n].to_vec()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Copied::All(n))
    })
}
