//! The TOML config document: `[[pool]]` sections (stored by `trackwire apply`)
//! and `[[listener]]` sections (served by `trackwire data-plane`); `trackwire
//! dev` uses both. Parsing validates everything and names the failing field.
//!
//! ```toml
//! [[pool]]
//! name = "myApp"
//! [pool.check]
//! kind = "http"
//! path = "/readyz"
//! expect_status = "200"
//! [[pool.backend]]
//! name = "server-1"
//! address = "backend-1.example.com:6443"
//!
//! [[listener]]
//! name = "myApp"
//! bind = "0.0.0.0:6443"
//! pool = "myApp"
//! ```
//!
//! One home per concept: a listener's defaults are [`ListenerSpec::new`]'s,
//! its rules [`ListenerSpec::validate`]'s (a pool's are
//! [`PoolSpec::validate`]'s); enum names are their `FromStr`/`as_str`. The
//! file's shape is one serde type (`file`), read by [`Document::parse`] and
//! written by [`Document::to_toml`], so nothing can be read that is not
//! written back.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{FieldError, FieldNames};
use crate::model::{PoolSpec, validate_name, validate_pools};

mod file;
#[cfg(test)]
mod tests;

// Re-exported: their home is `limits`; these paths predate it.
pub use crate::limits::{MAX_LISTENERS, MAX_POOLS};

pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// A parsed and validated config document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub pools: Vec<PoolSpec>,
    pub listeners: Vec<ListenerSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Power of two random choices (weighted), the less loaded wins.
    Random,
    /// Consistent hash of the client address (weighted rendezvous): a
    /// backend leaving remaps only its own clients.
    Source,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::Random => "random",
            Balance::Source => "source",
        }
    }
}

impl FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "roundrobin" => Ok(Balance::RoundRobin),
            "leastconn" => Ok(Balance::LeastConn),
            "random" => Ok(Balance::Random),
            "source" => Ok(Balance::Source),
            other => Err(format!(
                "unknown balance algorithm {other:?} (roundrobin, leastconn, random or source)"
            )),
        }
    }
}

/// What a listener does when no backend of its pool is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoBackend {
    /// Close the connection (HAProxy's behaviour).
    #[default]
    Refuse,
    /// Use every backend not in `maint`, whatever its health (Envoy's panic mode).
    Panic,
}

impl NoBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NoBackend::Refuse => "refuse",
            NoBackend::Panic => "panic",
        }
    }
}

impl FromStr for NoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(NoBackend::Refuse),
            "panic" => Ok(NoBackend::Panic),
            other => Err(format!("unknown policy {other:?} (refuse or panic)")),
        }
    }
}

/// The PROXY protocol header a listener sends to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            other => Err(format!(
                "unknown PROXY protocol version {other:?} (v1, v2 or none)"
            )),
        }
    }
}

serde_by_name!(Balance, NoBackend, ProxyProtocol);

macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_by_name!(Balance, NoBackend, ProxyProtocol);

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub name: String,
    pub bind: SocketAddr,
    pub pool: String,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Further backends tried when a connect fails (HAProxy `retries` with `redispatch`).
    pub retries: u32,
    pub on_no_backend: NoBackend,
    /// Open client connections at most; further clients wait in the accept queue.
    pub max_connections: u32,
    /// A session with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Open sessions per backend at most (0: no limit); a full backend is skipped.
    pub max_connections_per_backend: u32,
    /// PROXY protocol header sent to backends.
    pub send_proxy: Option<ProxyProtocol>,
    /// TCP keep-alive idle time on both sockets (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// Passive health: failed connects in a row that eject a backend locally (0: off).
    pub passive_failures: u32,
    pub passive_ejection: Duration,
    pub passive_max_percent: u32,
    /// Close open sessions to a backend when it is marked DOWN (HAProxy
    /// `on-marked-down shutdown-sessions`); off: they continue.
    pub shutdown_sessions_on_down: bool,
}

impl ListenerSpec {
    /// A listener with every option at its documented default (the one
    /// place those defaults are written).
    pub fn new(name: &str, bind: SocketAddr, pool: &str) -> Self {
        ListenerSpec {
            name: name.to_string(),
            bind,
            pool: pool.to_string(),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            on_no_backend: NoBackend::Refuse,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(3600),
            max_connections_per_backend: 0,
            send_proxy: None,
            tcp_keepalive: Some(Duration::from_secs(60)),
            passive_failures: 5,
            passive_ejection: Duration::from_secs(30),
            passive_max_percent: 50,
            shutdown_sessions_on_down: false,
        }
    }

    /// Checks the listener's own rules (the document checks that names and
    /// addresses are unique among listeners).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name(&self.name).map_err(|e| FieldError::new("name", e))?;
        validate_name(&self.pool).map_err(|e| FieldError::new("pool", e))?;
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("passive_ejection", self.passive_ejection),
        ] {
            if d.is_zero() {
                return Err(FieldError::new(name, "must be greater than 0"));
            }
            whole_millis(name, d)?;
        }
        if self.retries > 16 {
            return Err(FieldError::new("retries", "must be between 0 and 16"));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(FieldError::new(
                "max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if let Some(d) = self.tcp_keepalive {
            if d < Duration::from_secs(1) {
                return Err(FieldError::new("tcp_keepalive", "at least 1s, or \"off\""));
            }
            whole_millis("tcp_keepalive", d)?;
        }
        if self.passive_max_percent > 100 {
            return Err(FieldError::new(
                "passive_max_percent",
                "must be between 0 and 100",
            ));
        }
        Ok(())
    }
}

/// Durations are written (and read) in whole milliseconds.
fn whole_millis(name: &str, d: Duration) -> Result<(), FieldError> {
    if crate::duration::is_whole_millis(d) {
        Ok(())
    } else {
        Err(FieldError::new(
            name,
            format!(
                "{} is not a whole number of milliseconds",
                crate::duration::format(d)
            ),
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(#[from] FieldError),
    /// The document holds something its TOML form cannot (serializing failed).
    #[error("rendering as TOML: {0}")]
    Render(String),
}

impl Document {
    /// Parses and validates a TOML document.
    pub fn parse(text: &str) -> Result<Document, ConfigError> {
        let file: file::FileDocument =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let doc = file.into_document()?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks every pool and listener and the cross-document rules: unique
    /// pool and listener names, no two listeners on one address. A listener
    /// may name a pool this document does not define (a data-plane config
    /// serving pools applied elsewhere).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_pools(&self.pools, FieldNames::Toml)?;
        if self.listeners.len() > MAX_LISTENERS {
            return Err(FieldError::new(
                "listener",
                format!("at most {MAX_LISTENERS} listeners"),
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let path = format!("listener[{i}]");
            l.validate().map_err(|e| e.within(&path))?;
            if !names.insert(l.name.as_str()) {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return Err(FieldError::new(
                    format!("{path}.bind"),
                    format!("{} is bound by another listener", l.bind),
                ));
            }
        }
        Ok(())
    }

    /// Renders the document as TOML that [`Document::parse`] reads back
    /// unchanged, every field written out. Fails only for what TOML cannot
    /// hold: two check headers of one name (a TOML table has each key once).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let file = file::FileDocument::try_from(self)?;
        toml::to_string(&file).map_err(|e| ConfigError::Render(e.to_string()))
    }
}

/// Accepts `ip:port`, `[v6]:port`, and HAProxy's `*:port` / `:port` (all IPv4 addresses).
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let normalized = if let Some(port) = s.strip_prefix("*:").or_else(|| s.strip_prefix(':')) {
        format!("0.0.0.0:{port}")
    } else {
        s.to_string()
    };
    normalized
        .parse()
        .map_err(|_| format!("invalid bind address {s:?}: expected ip:port, [ipv6]:port or *:port"))
}
