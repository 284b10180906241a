//! The HTTP/1.1 exchange of an `http`/`https` check, on hyper's client
//! connection API: one request per connection (`Connection: close`), status
//! compared with the expected set, and at most 64 KiB of body read when a
//! body match is configured; the rest is never buffered.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use trackwire_core::model::MAX_BODY_BYTES;

use super::{CheckResult, Outcome, PreparedCheck};

pub(super) async fn exchange<S>(
    stream: S,
    check: &PreparedCheck,
    deadline: Instant,
    start: Instant,
) -> CheckResult
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let done = |outcome, status, reason: String| CheckResult {
        outcome,
        status,
        latency: start.elapsed(),
        reason,
    };
    let spec = &check.spec;
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(v) => v,
        Err(e) => return done(Outcome::L7Rsp, None, e.to_string()),
    };
    // The connection task ends when `sender` and the response are dropped.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = Request::builder()
        .method(spec.method.as_str())
        .uri(spec.path.as_str())
        .header(hyper::header::HOST, check.host_header.as_str())
        .header(hyper::header::USER_AGENT, "trackwire-check/0.1")
        .header(hyper::header::CONNECTION, "close");
    for (k, v) in &spec.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = match builder.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return done(Outcome::L7Rsp, None, format!("bad request: {e}")),
    };
    let result = async {
        let resp = match tokio::time::timeout_at(deadline, sender.send_request(req)).await {
            Err(_) => return done(Outcome::L7Tout, None, "response timeout".into()),
            Ok(Err(e)) => {
                let reason = if e.is_incomplete_message() {
                    "connection closed before a response".to_string()
                } else {
                    e.to_string()
                };
                return done(Outcome::L7Rsp, None, reason);
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if !spec.expect_status.contains(status) {
            return done(Outcome::L7Sts, Some(status), status.to_string());
        }
        let Some(needle) = &spec.expect_body else {
            return done(Outcome::L7Ok, Some(status), String::new());
        };
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let found = loop {
            if contains(&buf, needle.as_bytes()) {
                break true;
            }
            if buf.len() >= MAX_BODY_BYTES {
                break false;
            }
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return done(Outcome::L7Tout, Some(status), "body timeout".into()),
                Ok(None) => break contains(&buf, needle.as_bytes()),
                Ok(Some(Err(e))) => return done(Outcome::L7Rsp, Some(status), e.to_string()),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let room = MAX_BODY_BYTES - buf.len();
                        buf.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        };
        if found {
            done(Outcome::L7Ok, Some(status), String::new())
        } else {
            done(
                Outcome::L7Rsp,
                Some(status),
                format!("body does not contain {needle:?}"),
            )
        }
    }
    .await;
    drop(sender);
    conn.abort();
    result
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
