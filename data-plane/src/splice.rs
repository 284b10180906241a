//! Zero-copy relaying on Linux: `splice(2)` moves bytes socket → pipe →
//! socket inside the kernel, never through user space.
//!
//! This is the workspace's one module with `unsafe` code (the workspace
//! denies it elsewhere): three libc calls — `pipe2`, `splice` and nothing
//! else — each on file descriptors this module owns or borrows from a live
//! `TcpStream` for the duration of the call. Readiness comes from tokio
//! (`readable`/`writable` + `try_io`), so the sockets stay in tokio's
//! reactor and the pumps are ordinary async code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes moved per splice call (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

fn pipe() -> io::Result<Pipe> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by no one else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(Pipe { read, write })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // caller holds the stream or pipe they belong to); null offsets are
    // valid for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes from `src` to `dst` until EOF, then shuts `dst`'s write side.
/// Notes the time of the last byte in `last_ms` (ms since `start`).
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    last_ms: &AtomicU64,
    start: Instant,
) -> io::Result<u64> {
    let pipe = pipe()?;
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let mut total = 0u64;
    loop {
        // Fill the (empty) pipe from the source: EAGAIN can only mean the
        // socket has nothing to read.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice(src_fd, pipe_w, CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
            return Ok(total);
        }
        // Drain the pipe into the destination: EAGAIN means the socket is full.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe_r, dst_fd, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        last_ms.store(start.elapsed().as_millis() as u64, Relaxed);
    }
}
