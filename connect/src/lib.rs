//! How trackwire processes reach the control plane: the one gRPC channel
//! setup ([`channel`]) and the one failover loop ([`failover`]) shared by
//! the probe agent's session and the proxy's health-map subscription.
//!
//! A crate of its own because both components need it and neither depends
//! on the other, while `trackwire-core` stays free of tonic and tokio.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use trackwire_core::backoff::Backoff;
use trackwire_transport::Tls;
use trackwire_transport::client::TlsConnector;

/// First retry delay after a session ends.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A channel to one control-plane URL with the settings every long-lived
/// client uses: a short connect timeout, no Nagle delay on small updates,
/// and HTTP/2 keep-alives so a dead peer is noticed within seconds.
///
/// `https://` URLs need `tls` (mutual TLS with this process's certificate,
/// re-read for every new connection so a rotated certificate is used from
/// the next reconnect); `http://` URLs are plaintext and refuse `tls`.
pub async fn channel(url: &str, tls: Option<&Tls>) -> Result<Channel, String> {
    endpoint(url, tls)?
        .connect()
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))
}

/// What [`channel`] connects, without connecting yet.
pub fn endpoint(url: &str, tls: Option<&Tls>) -> Result<Connector, String> {
    check_scheme(url, tls.is_some())?;
    // Our connector does TLS; tonic sees a plain URL so that its own TLS
    // (compiled in for etcd's client) stays out of the way.
    let plain = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(plain)
        .map_err(|e| format!("invalid endpoint {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        // Ping whatever hyper thinks of the connection's streams: without
        // this no ping went out on a proxy's open Subscribe stream, and a
        // proxy cut off from the control plane (no FIN, no RST) kept the
        // dead connection, and a stale map, indefinitely (chaos scenario 4).
        .keep_alive_while_idle(true);
    Ok(Connector {
        endpoint,
        tls: tls.cloned(),
    })
}

/// Whether `url`'s scheme agrees with the presence of TLS material.
pub fn check_scheme(url: &str, tls: bool) -> Result<(), String> {
    match (url.starts_with("https://"), tls) {
        (true, false) => Err(format!(
            "{url}: an https:// control plane needs --tls-ca, --tls-cert and --tls-key"
        )),
        (false, true) => Err(format!(
            "{url}: TLS material given for an http:// URL; use https:// (or drop the --tls-* flags)"
        )),
        _ => Ok(()),
    }
}

/// A long-lived client's link settings: at least one URL, each URL's
/// scheme agreeing with the TLS material, and a certificate for `role`.
/// `what` names the client in the error ("a probe agent").
pub fn check_client(
    urls: &[String],
    tls: Option<&Tls>,
    role: trackwire_transport::Role,
    what: &str,
) -> Result<(), String> {
    if urls.is_empty() {
        return Err("control_plane: at least one endpoint".into());
    }
    for url in urls {
        check_scheme(url, tls.is_some())?;
    }
    if let Some(tls) = tls {
        let id = tls.identity();
        if id.role != role {
            return Err(format!(
                "--tls-cert: identity {id} has role {}; {what} needs a{} {role} certificate",
                id.role,
                if role == trackwire_transport::Role::Agent {
                    "n"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// An endpoint and how to secure it.
#[derive(Debug, Clone)]
pub struct Connector {
    endpoint: tonic::transport::Endpoint,
    tls: Option<Tls>,
}

impl Connector {
    /// A deadline for each call's response.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(d);
        self
    }

    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => {
                self.endpoint
                    .connect_with_connector(TlsConnector::new(tls.clone()))
                    .await
            }
            None => self.endpoint.connect().await,
        }
    }

    /// A channel that connects on first use (and reconnects after).
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            Some(tls) => self
                .endpoint
                .connect_with_connector_lazy(TlsConnector::new(tls.clone())),
            None => self.endpoint.connect_lazy(),
        }
    }
}

/// An error with its sources, so a TLS failure says why ("certificate
/// expired", "unknown issuer") instead of "transport error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Whether an attempt got as far as a working session (then the backoff
/// starts again from its base).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Established,
    Failed,
}

impl From<bool> for Attempt {
    /// `true`: the session got going.
    fn from(established: bool) -> Self {
        if established {
            Attempt::Established
        } else {
            Attempt::Failed
        }
    }
}

/// The failover policy: each attempt takes the next URL in turn; between
/// attempts a jittered exponential backoff (reset after an attempt that
/// was established), so a fleet reconnecting after an outage does not
/// arrive in one burst. The caller's loop is
///
/// ```text
/// let mut failover = Failover::new(&urls);
/// loop {
///     let url = failover.next_url();
///     let outcome = tokio::select! { a = attempt(&url) => a, () = shutdown.cancelled() => break };
///     if !failover.pause(outcome, &shutdown).await { break }
/// }
/// ```
#[derive(Debug)]
pub struct Failover {
    urls: Vec<String>,
    next: usize,
    backoff: Backoff,
}

impl Failover {
    /// `urls` must not be empty (the flag parsers refuse an empty list).
    pub fn new(urls: &[String]) -> Self {
        Failover {
            urls: urls.to_vec(),
            next: 0,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_MAX),
        }
    }

    /// The URL of the next attempt.
    pub fn next_url(&mut self) -> String {
        let url = self
            .urls
            .get(self.next % self.urls.len().max(1))
            .cloned()
            .unwrap_or_default();
        self.next += 1;
        url
    }

    /// Waits before the next attempt; false when `shutdown` came first.
    pub async fn pause(&mut self, outcome: Attempt, shutdown: &CancellationToken) -> bool {
        if outcome == Attempt::Established {
            self.backoff.reset();
        }
        tokio::select! {
            () = tokio::time::sleep(self.backoff.next_jittered()) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rotates_urls_and_backs_off_until_established() {
        let urls = vec!["a".to_string(), "b".to_string()];
        let shutdown = CancellationToken::new();
        let mut f = Failover::new(&urls);
        let seen: Vec<String> = (0..5).map(|_| f.next_url()).collect();
        assert_eq!(seen, ["a", "b", "a", "b", "a"]);
        // Failures: waits of at least half of 100, 200, 400 and 800 ms.
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            assert!(f.pause(Attempt::Failed, &shutdown).await);
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(750), "{waited:?}");
        assert!(waited <= Duration::from_millis(1500), "{waited:?}");
        // An established session starts again from the base.
        let start = tokio::time::Instant::now();
        assert!(f.pause(Attempt::Established, &shutdown).await);
        assert!(start.elapsed() <= BACKOFF_BASE, "{:?}", start.elapsed());
        shutdown.cancel();
        assert!(!f.pause(Attempt::Failed, &shutdown).await);
    }
}
