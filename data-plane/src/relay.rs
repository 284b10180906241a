//! Relaying a session: one `pump` per direction until both are done
//! (half-closes are passed on), or until nothing moved for the idle timeout.
//!
//! A pump copies small reads through a 16 KiB buffer (for a few hundred
//! bytes `recv`/`send` beat splicing, which has to put linear skb data in a
//! fresh page). On Linux a read that fills the buffer switches the
//! direction to `splice(2)` through a pooled pipe (zero copy, see
//! [`crate::splice`]), and a splice that moves less than the buffer
//! switches it back (HAProxy's `splice-auto` idea). [`relay_copy`] never
//! splices: it is what other systems run, and is tested here too.

use std::future::Future;
use std::io;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[cfg(target_os = "linux")]
use crate::splice::splice_once;

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

/// One future for the whole relay, each pump stored once (no future moved
/// into a combinator after creation, which would store it twice): an idle
/// session costs only the two pumps and this frame.
async fn relay_with(
    client: &TcpStream,
    server: &TcpStream,
    idle: Duration,
    splice: bool,
    moved: Moved<'_>,
) -> io::Result<()> {
    let last = AtomicU64::new(0);
    let start = Instant::now();
    // Each pump's end, so the last one to end skips a shutdown(2) that
    // the close right after would make anyway.
    let (up_ended, down_ended) = (AtomicBool::new(false), AtomicBool::new(false));
    let up_ends = Ends {
        mine: &up_ended,
        other: &down_ended,
    };
    let down_ends = Ends {
        mine: &down_ended,
        other: &up_ended,
    };
    let mut up = std::pin::pin!(pump(
        client, server, &last, start, splice, moved.up, up_ends
    ));
    let mut down = std::pin::pin!(pump(
        server, client, &last, start, splice, moved.down, down_ends
    ));
    let (mut up_done, mut down_done) = (false, false);
    let mut both = std::pin::pin!(std::future::poll_fn(|cx| {
        for (pump, done) in [(up.as_mut(), &mut up_done), (down.as_mut(), &mut down_done)] {
            if !*done {
                match pump.poll(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => *done = true,
                    Poll::Pending => {}
                }
            }
        }
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }));
    // Unless nothing moved for `idle` (per `last`, ms since `start`).
    loop {
        let idle_for = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Relaxed)));
        if idle_for >= idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        tokio::select! {
            r = &mut both => return r,
            () = tokio::time::sleep(idle - idle_for) => {}
        }
    }
}

/// Where a pump records its end and learns the other's.
#[derive(Clone, Copy)]
pub(crate) struct Ends<'a> {
    pub mine: &'a AtomicBool,
    pub other: &'a AtomicBool,
}

/// Moves bytes from `src` to `dst` until EOF, then shuts `dst`'s write side
/// (unless the other direction has ended too: the relay is over and the
/// close that follows sends the FIN).
/// Notes the time of the last byte in `last_ms` (ms since `start`) and
/// adds the bytes to each of `moved`. With `splice`, a full buffer switches to
/// splicing (see the module docs).
pub(crate) async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    last_ms: &AtomicU64,
    start: Instant,
    splice: bool,
    moved: &[&AtomicU64],
    ends: Ends<'_>,
) -> io::Result<()> {
    let mut bulk = false;
    loop {
        src.readable().await?;
        let n = if bulk {
            match splice_once(src, dst).await? {
                None => continue,
                Some(n) => {
                    bulk = n >= COPY_BUF;
                    n
                }
            }
        } else {
            dst.writable().await?;
            match copy_once(src, dst)? {
                Copied::Nothing => continue,
                Copied::All(n) => {
                    bulk = splice && n == COPY_BUF;
                    n
                }
                Copied::Partly(n, mut rest) => {
                    // The destination is full: keep what it did not take.
                    while !rest.is_empty() {
                        dst.writable().await?;
                        match dst.try_write(&rest) {
                            Ok(m) => {
                                rest.drain(..m);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    n
                }
            }
        };
        if n == 0 {
            ends.mine.store(true, Relaxed);
            if !ends.other.load(Relaxed) {
                socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
            }
            return Ok(());
        }
        for m in moved {
            m.fetch_add(n as u64, Relaxed);
        }
        last_ms.store(start.elapsed().as_millis() as u64, Relaxed);
    }
}

/// Splicing needs Linux; elsewhere a pump never enters bulk mode.
#[cfg(not(target_os = "linux"))]
async fn splice_once(_: &TcpStream, _: &TcpStream) -> io::Result<Option<usize>> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
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
    /// so session futures stay small (no 16 KiB array moved around).
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; COPY_BUF]);
}

/// One read from `src` and as much of it written to `dst` as it takes, with
/// no await in between (so the per-thread buffer can be used). A read that
/// does not fill the buffer drained the socket: its readiness is cleared
/// then (as tokio's own `poll_read` does), so the next round waits for new
/// bytes instead of paying a read that would only say EAGAIN.
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
