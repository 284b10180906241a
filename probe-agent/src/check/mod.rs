//! One health check: connect, optionally TLS, optionally an HTTP exchange,
//! and a HAProxy-style outcome code. The timeout covers everything from
//! connect to the end of the response, as HAProxy's `timeout check`.

pub mod expect;
mod grpc;
mod http;
mod tcp;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use trackwire_core::model::{compile_regex, split_address};
use trackwire_core::{BodyMatch, CheckKind, CheckSpec};

/// HAProxy's check status codes (the subset that applies to our check kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Layer 4 connection established (TCP check passed).
    L4Ok,
    /// Connect timed out.
    L4Tout,
    /// Connection refused, reset or unreachable.
    L4Con,
    /// TLS handshake completed (not a final state for HTTPS).
    L6Ok,
    /// TLS handshake timed out.
    L6Tout,
    /// TLS handshake failed (certificate, protocol).
    L6Rsp,
    /// HTTP check passed.
    L7Ok,
    /// HTTP status not expected.
    L7Sts,
    /// Malformed or unexpected response (including a body mismatch).
    L7Rsp,
    /// Response timed out.
    L7Tout,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::L4Ok,
        Outcome::L4Tout,
        Outcome::L4Con,
        Outcome::L6Ok,
        Outcome::L6Tout,
        Outcome::L6Rsp,
        Outcome::L7Ok,
        Outcome::L7Sts,
        Outcome::L7Rsp,
        Outcome::L7Tout,
    ];

    /// Position in [`Outcome::ALL`], for per-outcome counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::L4Ok => "L4OK",
            Outcome::L4Tout => "L4TOUT",
            Outcome::L4Con => "L4CON",
            Outcome::L6Ok => "L6OK",
            Outcome::L6Tout => "L6TOUT",
            Outcome::L6Rsp => "L6RSP",
            Outcome::L7Ok => "L7OK",
            Outcome::L7Sts => "L7STS",
            Outcome::L7Rsp => "L7RSP",
            Outcome::L7Tout => "L7TOUT",
        }
    }

    pub fn passed(self) -> bool {
        matches!(self, Outcome::L4Ok | Outcome::L6Ok | Outcome::L7Ok)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub latency: Duration,
    pub reason: String,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.outcome.passed()
    }

    /// `L7STS 503` / `L4CON connection refused`: what the agent reports as a verdict reason.
    pub fn summary(&self) -> String {
        if self.reason.is_empty() {
            self.outcome.to_string()
        } else {
            format!("{} {}", self.outcome, self.reason)
        }
    }
}

/// A compiled body expectation.
pub(crate) enum Matcher {
    Substring(Vec<u8>),
    Regex {
        re: regex::bytes::Regex,
        /// The pattern has an assertion that looks past a match's end (`$`,
        /// `\z`, `\b`, ...), so a match at the end of the body read so far
        /// may be undone by the next bytes.
        end_sensitive: bool,
    },
}

impl Matcher {
    fn regex(pattern: &str) -> Result<Self, String> {
        use regex_syntax::hir::Look;
        let end_sensitive = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(pattern)
            // Unparsable here (compile_regex accepted it): assume the worst.
            .map_or(true, |hir| {
                !hir.properties()
                    .look_set()
                    .remove(Look::Start)
                    .remove(Look::StartLF)
                    .is_empty()
            });
        Ok(Matcher::Regex {
            re: compile_regex(pattern)?,
            end_sensitive,
        })
    }

    pub(crate) fn is_match(&self, body: &[u8]) -> bool {
        match self {
            Matcher::Substring(n) => {
                n.is_empty() || body.windows(n.len()).any(|w| w == n.as_slice())
            }
            Matcher::Regex { re, .. } => re.is_match(body),
        }
    }

    /// Whether `body` holds a match that no further bytes can undo: any
    /// match, unless the pattern looks past a match's end; then only one
    /// that ends before the bytes read so far do.
    pub(crate) fn settled_match(&self, body: &[u8]) -> bool {
        match self {
            Matcher::Regex {
                re,
                end_sensitive: true,
            } => re.find_iter(body).any(|m| m.end() < body.len()),
            _ => self.is_match(body),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Matcher::Substring(n) => format!("{:?}", String::from_utf8_lossy(n)),
            Matcher::Regex { re, .. } => format!("/{}/", re.as_str()),
        }
    }
}

/// A check ready to run repeatedly against one backend: address, Host header,
/// body matcher and TLS client configuration are worked out once.
pub struct PreparedCheck {
    pub spec: CheckSpec,
    /// `host:port` actually connected to (address and port overrides applied).
    connect_to: String,
    host_header: String,
    matcher: Option<Matcher>,
    tls: Option<Result<tls::TlsTarget, String>>,
}

impl PreparedCheck {
    pub fn new(address: &str, spec: CheckSpec) -> Result<Self, String> {
        let (host, port) = split_address(address)?;
        let host = spec
            .address
            .as_deref()
            .map(|a| a.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(host);
        let port = spec.port.unwrap_or(port);
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let connect_to = format!("{bracketed}:{port}");
        let host_header = spec.host.clone().unwrap_or_else(|| connect_to.clone());
        let matcher = match &spec.expect_body {
            Some(BodyMatch::Substring(s)) => Some(Matcher::Substring(s.as_bytes().to_vec())),
            Some(BodyMatch::Regex(r)) => Some(Matcher::regex(r)?),
            None => None,
        };
        let tls = (spec.kind == CheckKind::Https).then(|| tls::TlsTarget::new(host, &spec.tls));
        Ok(PreparedCheck {
            spec,
            connect_to,
            host_header,
            matcher,
            tls,
        })
    }

    pub async fn run(&self) -> CheckResult {
        let start = Instant::now();
        let deadline = start + self.spec.timeout;
        let done = |outcome, status, reason: String| CheckResult {
            outcome,
            status,
            latency: start.elapsed(),
            reason,
        };
        let tcp =
            match tokio::time::timeout_at(deadline, TcpStream::connect(&self.connect_to)).await {
                Err(_) => return done(Outcome::L4Tout, None, "connect timeout".into()),
                Ok(Err(e)) => return done(Outcome::L4Con, None, io_reason(&e)),
                Ok(Ok(s)) => s,
            };
        let _ = tcp.set_nodelay(true);
        match self.spec.kind {
            CheckKind::Tcp => tcp::exchange(tcp, self, deadline, start).await,
            CheckKind::Grpc => grpc::check(tcp, self, deadline, start).await,
            CheckKind::Http => http::exchange(tcp, self, false, deadline, start).await,
            CheckKind::Https => {
                let target = match &self.tls {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => return done(Outcome::L6Rsp, None, e.clone()),
                    None => return done(Outcome::L6Rsp, None, "no TLS configuration".into()),
                };
                let stream = match tokio::time::timeout_at(deadline, target.connect(tcp)).await {
                    Err(_) => return done(Outcome::L6Tout, None, "TLS handshake timeout".into()),
                    Ok(Err(e)) => return done(Outcome::L6Rsp, None, e),
                    Ok(Ok(s)) => s,
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                http::exchange(stream, self, h2, deadline, start).await
            }
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// Shared so every target of one agent reuses one rustls crypto provider.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
