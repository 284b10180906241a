//! The `tcp` check after connect: optionally send bytes, then optionally read
//! (at most 64 KiB) until the reply contains the expected bytes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use trackwire_core::limits::MAX_BODY_BYTES;

use super::{CheckResult, Outcome, PreparedCheck};

pub(super) async fn exchange(
    mut stream: TcpStream,
    check: &PreparedCheck,
    deadline: Instant,
    start: Instant,
) -> CheckResult {
    let done = |outcome, reason: String| CheckResult {
        outcome,
        status: None,
        latency: start.elapsed(),
        reason,
    };
    let spec = &check.spec;
    if let Some(send) = &spec.tcp_send {
        match tokio::time::timeout_at(deadline, stream.write_all(send.as_bytes())).await {
            Err(_) => return done(Outcome::L7Tout, "send timeout".into()),
            Ok(Err(e)) => return done(Outcome::L7Rsp, format!("send: {e}")),
            Ok(Ok(())) => {}
        }
    }
    let Some(expect) = &spec.tcp_expect else {
        return done(Outcome::L4Ok, String::new());
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if buf.windows(expect.len()).any(|w| w == expect.as_bytes()) {
            return done(Outcome::L7Ok, String::new());
        }
        if buf.len() >= MAX_BODY_BYTES {
            return done(Outcome::L7Rsp, format!("reply does not contain {expect:?}"));
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return done(Outcome::L7Tout, format!("no {expect:?} before the timeout")),
            Ok(Err(e)) => return done(Outcome::L7Rsp, format!("read: {e}")),
            Ok(Ok(0)) => return done(Outcome::L7Rsp, format!("closed without {expect:?}")),
            Ok(Ok(n)) => {
                let room = MAX_BODY_BYTES - buf.len();
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}
