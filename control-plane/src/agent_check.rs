//! HAProxy's agent-check protocol, so existing HAProxy fleets can follow the
//! health map without a sidecar (HAProxy's configuration manual, section
//! "agent-check").
//!
//! HAProxy connects every `agent-inter`, sends `agent-send` — here
//! `<pool>/<backend>\n` — and reads one line of words. The answer reflects
//! the derived map (see [`answer`]): the administrative state (`ready`,
//! `drain`, `maint`), the weight as a percentage of the heaviest backend of
//! the pool (servers carry `weight 100`) and the operational state: `up`,
//! or `down #<reason>` last (HAProxy 2.6 reads the text after `#` to the end
//! of the line; `down#reason` without the space is an error to it). The
//! servers need `check` too: without a health check HAProxy ignores an
//! agent's `down`. Every answer names all three, so
//! whatever an earlier answer set is reverted by a later one (only the
//! agent can undo what the agent set). When this port cannot be reached
//! HAProxy keeps the last state: fail static for free.
//!
//! Bounded: a request line of at most [`MAX_LINE`] bytes read within
//! [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections at once (more
//! are closed unanswered, which HAProxy treats as "no news").

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use trackwire_core::{AdminState, HealthState};

use crate::derive::Derived;
use crate::state::StateRx;

/// The longest request line: a pool and a backend name (63 bytes each at
/// most) with room to spare.
pub const MAX_LINE: usize = 256;
/// How long a client may take to send its line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// The line HAProxy reads for `request` (`<pool>/<backend>`, without the
/// newline) against `derived`, newline included.
pub fn answer(derived: Option<&Derived>, request: &str) -> String {
    let Some((pool, backend)) = request.split_once('/') else {
        return down(&format!(
            "bad request {request:?}, expected <pool>/<backend>"
        ));
    };
    let Some(derived) = derived else {
        // Loading facts: no news, keep what HAProxy has (it keeps the
        // last state for an answer without a state word).
        return "\n".to_owned();
    };
    answer_from(derived, pool, backend)
}

fn answer_from(derived: &Derived, pool: &str, backend: &str) -> String {
    let Some(eps) = derived.map.pools.get(pool) else {
        return down(&format!("unknown pool {pool}"));
    };
    let Some(ep) = eps.get(backend) else {
        return down(&format!("unknown backend {backend} in pool {pool}"));
    };
    let admin = match ep.admin_state {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    };
    let heaviest = eps.values().map(|e| e.weight).max().unwrap_or(1).max(1);
    let percent = match ep.weight {
        0 => 0,
        w => (u64::from(w) * 100 / u64::from(heaviest)).max(1),
    };
    match ep.state {
        HealthState::Up => format!("up {admin} {percent}%\n"),
        HealthState::Down => {
            let reason = derived
                .detail(pool, backend)
                .and_then(|d| {
                    d.votes
                        .iter()
                        .find(|v| v.counted && v.verdict.state == HealthState::Down)
                        .map(|v| v.verdict.reason.clone())
                })
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "marked DOWN by trackwire".to_owned());
            format!("{admin} {percent}% down #{}\n", description(&reason))
        }
    }
}

/// `down` with a description (HAProxy 2.6 reads the text after `#` to the
/// end of the line, so it comes last).
fn down(why: &str) -> String {
    format!("down #{}\n", description(why))
}

/// A description for after `#`: one line of printable ASCII, bounded.
fn description(reason: &str) -> String {
    reason
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Serves the protocol on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: StateRx, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HAProxy agent-check listening");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (sock, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "agent-check accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Full: close unanswered (HAProxy keeps the last state).
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, "agent-check port full; closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(
            async move {
                if let Err(e) = one(sock, &state).await {
                    debug!(%peer, error = %e, "agent-check connection ended");
                }
                drop(permit);
            }
            .instrument(info_span!("agent_check")),
        );
    }
}

async fn one(mut sock: TcpStream, state: &StateRx) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(64);
    let read = async {
        let mut buf = [0u8; MAX_LINE];
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(!line.is_empty());
            }
            line.extend_from_slice(&buf[..n]);
            if let Some(end) = line.iter().position(|b| *b == b'\n' || *b == b'\r') {
                line.truncate(end);
                return Ok(true);
            }
            if line.len() > MAX_LINE {
                return Ok(false);
            }
        }
    };
    let complete = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => false,
    };
    let reply = if !complete {
        down(&format!(
            "request line missing, over {MAX_LINE} bytes or slower than {READ_TIMEOUT:?}"
        ))
    } else {
        let request = String::from_utf8_lossy(&line);
        let snap = state.borrow().clone();
        answer(snap.as_ref().map(|s| &s.derived), request.trim())
    };
    sock.write_all(reply.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_one_printable_line() {
        assert_eq!(description("L7STS 503\r\nx\té"), "L7STS 503??x??");
    }

    #[test]
    fn malformed_requests_are_down_with_a_reason() {
        assert!(answer(None, "no-slash").starts_with("down #bad request"));
        assert_eq!(answer(None, "web/b1"), "\n", "loading: no news");
    }
}
