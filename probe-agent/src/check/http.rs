//! The HTTP exchange of an `http`/`https` check, on hyper's client
//! connection API: one request per connection (HTTP/1.1 with
//! `Connection: close`, or HTTP/2 when TLS ALPN chose `h2`), the status
//! compared with the expected set, and at most 64 KiB of body read when a
//! body match is configured; the rest is never buffered. `expect_negate`
//! inverts the body match, or the status match when there is none.

use tracing::Instrument;

use super::expect::{self, Expect};
use super::{CheckResult, Outcome, PreparedCheck};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> hyper::Result<hyper::Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

async fn handshake<S>(stream: S, h2: bool) -> hyper::Result<(Sender, JoinHandle<()>)>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(stream);
    // The connection task ends when the sender and the response are dropped.
    if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        Ok((
            Sender::H2(s),
            tokio::spawn(
                async move {
                    let _ = conn.await;
                }
                .in_current_span(),
            ),
        ))
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
        Ok((
            Sender::H1(s),
            tokio::spawn(
                async move {
                    let _ = conn.await;
                }
                .in_current_span(),
            ),
        ))
    }
}

pub(super) async fn exchange<S>(
    stream: S,
    check: &PreparedCheck,
    h2: bool,
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
    let (mut sender, conn) = match tokio::time::timeout_at(deadline, handshake(stream, h2)).await {
        Err(_) => return done(Outcome::L7Tout, None, "HTTP handshake timeout".into()),
        Ok(Err(e)) => return done(Outcome::L7Rsp, None, e.to_string()),
        Ok(Ok(v)) => v,
    };
    let mut builder = Request::builder()
        .method(spec.method.as_str())
        .header(hyper::header::USER_AGENT, "trackwire-check/0.1");
    if h2 {
        // HTTP/2 carries the authority in the URI, not a Host header.
        builder = builder.uri(format!("https://{}{}", check.host_header, spec.path));
    } else {
        builder = builder
            .uri(spec.path.as_str())
            .header(hyper::header::HOST, check.host_header.as_str())
            .header(hyper::header::CONNECTION, "close");
    }
    for (k, v) in &spec.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = match builder.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return done(Outcome::L7Rsp, None, format!("bad request: {e}")),
    };
    let result = async {
        let resp = match tokio::time::timeout_at(deadline, sender.send(req)).await {
            Err(_) => return done(Outcome::L7Tout, None, "response timeout".into()),
            Ok(Err(e)) => {
                // With TLS 1.3 a server rejecting the client certificate says
                // so only after the handshake: still a TLS failure.
                if let Some(tls) = tls_error(&e) {
                    return done(Outcome::L6Rsp, None, tls);
                }
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
        let mut scan = match expect::status(check, status) {
            Expect::Done((outcome, reason)) => return done(outcome, Some(status), reason),
            Expect::Body(scan) => scan,
        };
        let mut body = resp.into_body();
        let (outcome, reason) = loop {
            if let Some(judged) = scan.decided() {
                break judged;
            }
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return done(Outcome::L7Tout, Some(status), "body timeout".into()),
                Ok(None) => break scan.end(),
                Ok(Some(Err(e))) => return done(Outcome::L7Rsp, Some(status), e.to_string()),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        scan.push(data);
                    }
                }
            }
        };
        done(outcome, Some(status), reason)
    }
    .await;
    drop(sender);
    conn.abort();
    result
}

/// The rustls error behind a hyper error, if any.
fn tls_error(e: &hyper::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        source = err.source();
    }
    None
}
