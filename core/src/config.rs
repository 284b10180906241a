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

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::error::{FieldError, FieldNames};
use crate::model::{
    AdminState, BackendSpec, BodyMatch, CheckKind, CheckSpec, DEFAULT_REPLICAS, DampingSpec,
    HealthState, PoolSpec, Quorum, StatusSet, TlsSpec, validate_pools,
};

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

/// What a listener does when no backend of its pool is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoBackend {
    /// Close the connection (HAProxy's behaviour).
    #[default]
    Refuse,
    /// Use every backend not in `maint`, whatever its health (Envoy's panic mode).
    Panic,
}

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
    /// A listener with every option at its documented default.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(#[from] FieldError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default)]
    pool: Vec<RawPool>,
    #[serde(default)]
    listener: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    #[serde(default)]
    backend: Vec<RawBackend>,
    check: Option<RawCheck>,
    quorum: Option<String>,
    initial_state: Option<String>,
    replicas: Option<u32>,
    zone_spread: Option<bool>,
    damping: Option<RawDamping>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDamping {
    half_life: Option<RawDuration>,
    penalty: Option<u32>,
    suppress: Option<u32>,
    reuse: Option<u32>,
    max_suppress: Option<RawDuration>,
}

impl RawDamping {
    fn into_spec(self) -> Result<DampingSpec, FieldError> {
        let d = DampingSpec::default();
        Ok(DampingSpec {
            half_life: parse_duration(self.half_life.as_ref(), "half_life")?.unwrap_or(d.half_life),
            penalty: self.penalty.unwrap_or(d.penalty),
            suppress: self.suppress.unwrap_or(d.suppress),
            reuse: self.reuse.unwrap_or(d.reuse),
            max_suppress: parse_duration(self.max_suppress.as_ref(), "max_suppress")?
                .unwrap_or(d.max_suppress),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    address: String,
    weight: Option<u32>,
    admin_state: Option<String>,
    backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect_status: Option<String>,
    expect_body: Option<String>,
    interval: Option<RawDuration>,
    fast_interval: Option<RawDuration>,
    down_interval: Option<RawDuration>,
    timeout: Option<RawDuration>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    tls_server_name: Option<String>,
    tls_ca_file: Option<String>,
    tls_insecure: Option<bool>,
    expect_body_regex: Option<String>,
    expect_negate: Option<bool>,
    address: Option<String>,
    tcp_send: Option<String>,
    tcp_expect: Option<String>,
    grpc_service: Option<String>,
    jitter_percent: Option<u32>,
    #[serde(default)]
    tls_alpn: Vec<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    bind: String,
    pool: String,
    balance: Option<String>,
    connect_timeout: Option<RawDuration>,
    retries: Option<u32>,
    on_no_backend: Option<String>,
    max_connections: Option<u32>,
    idle_timeout: Option<RawDuration>,
    max_connections_per_backend: Option<u32>,
    send_proxy: Option<String>,
    tcp_keepalive: Option<RawDuration>,
    passive_failures: Option<u32>,
    passive_ejection: Option<RawDuration>,
    passive_max_percent: Option<u32>,
    shutdown_sessions_on_down: Option<bool>,
}

impl Document {
    /// Parses and validates a TOML document.
    pub fn parse(text: &str) -> Result<Document, ConfigError> {
        let raw: RawDocument =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let doc = raw.into_document()?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks every pool and the cross-document rules: unique pool and listener
    /// names, no two listeners on one address. A listener may name a pool this
    /// document does not define (a data-plane config serving pools applied elsewhere).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_pools(&self.pools, FieldNames::Toml)?;
        if self.listeners.len() > MAX_LISTENERS {
            return Err(FieldError::new(
                "listener",
                format!("at most {MAX_LISTENERS} listeners"),
            ));
        }
        let mut lnames = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !lnames.insert(l.name.as_str()) {
                return Err(FieldError::new(
                    format!("listener[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return Err(FieldError::new(
                    format!("listener[{i}].bind"),
                    format!("{} is bound by another listener", l.bind),
                ));
            }
        }
        Ok(())
    }

    /// Renders the document as TOML that [`Document::parse`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for p in &self.pools {
            out.push_str(&pool_toml(p));
            out.push('\n');
        }
        for l in &self.listeners {
            out.push_str("[[listener]]\n");
            push_kv(&mut out, "name", &l.name);
            push_kv(&mut out, "bind", &l.bind.to_string());
            push_kv(&mut out, "pool", &l.pool);
            push_kv(&mut out, "balance", l.balance.as_str());
            if l.on_no_backend == NoBackend::Panic {
                push_kv(&mut out, "on_no_backend", "panic");
            }
            out.push_str(&format!("max_connections = {}\n", l.max_connections));
            push_kv(&mut out, "idle_timeout", &duration::format(l.idle_timeout));
            if l.max_connections_per_backend > 0 {
                out.push_str(&format!(
                    "max_connections_per_backend = {}\n",
                    l.max_connections_per_backend
                ));
            }
            match l.send_proxy {
                Some(ProxyProtocol::V1) => push_kv(&mut out, "send_proxy", "v1"),
                Some(ProxyProtocol::V2) => push_kv(&mut out, "send_proxy", "v2"),
                None => {}
            }
            match l.tcp_keepalive {
                Some(d) => push_kv(&mut out, "tcp_keepalive", &duration::format(d)),
                None => push_kv(&mut out, "tcp_keepalive", "off"),
            }
            out.push_str(&format!(
                "passive_failures = {}\npassive_max_percent = {}\n",
                l.passive_failures, l.passive_max_percent
            ));
            push_kv(
                &mut out,
                "passive_ejection",
                &duration::format(l.passive_ejection),
            );
            push_kv(
                &mut out,
                "connect_timeout",
                &duration::format(l.connect_timeout),
            );
            out.push_str(&format!("retries = {}\n\n", l.retries));
        }
        out
    }
}

fn push_kv(out: &mut String, key: &str, value: &str) {
    // toml's string serializer handles escaping.
    let v = toml::Value::String(value.to_string());
    out.push_str(&format!("{key} = {v}\n"));
}

fn pool_toml(p: &PoolSpec) -> String {
    let mut out = String::from("[[pool]]\n");
    push_kv(&mut out, "name", &p.name);
    push_kv(&mut out, "quorum", p.quorum.as_str());
    push_kv(&mut out, "initial_state", p.initial_state.as_str());
    out.push_str(&format!("replicas = {}\n", p.replicas));
    if p.zone_spread {
        out.push_str("zone_spread = true\n");
    }
    if let Some(d) = &p.damping {
        out.push_str("\n[pool.damping]\n");
        push_kv(&mut out, "half_life", &duration::format(d.half_life));
        out.push_str(&format!(
            "penalty = {}\nsuppress = {}\nreuse = {}\n",
            d.penalty, d.suppress, d.reuse
        ));
        push_kv(&mut out, "max_suppress", &duration::format(d.max_suppress));
    }
    if let Some(c) = &p.check {
        out.push_str("\n[pool.check]\n");
        push_kv(&mut out, "kind", c.kind.as_str());
        push_kv(&mut out, "method", &c.method);
        push_kv(&mut out, "path", &c.path);
        if let Some(h) = &c.host {
            push_kv(&mut out, "host", h);
        }
        push_kv(&mut out, "expect_status", &c.expect_status.to_string());
        match &c.expect_body {
            Some(BodyMatch::Substring(b)) => push_kv(&mut out, "expect_body", b),
            Some(BodyMatch::Regex(r)) => push_kv(&mut out, "expect_body_regex", r),
            None => {}
        }
        if c.expect_negate {
            out.push_str("expect_negate = true\n");
        }
        for (k, v) in [
            ("address", &c.address),
            ("tcp_send", &c.tcp_send),
            ("tcp_expect", &c.tcp_expect),
            ("grpc_service", &c.grpc_service),
        ] {
            if let Some(v) = v {
                push_kv(&mut out, k, v);
            }
        }
        out.push_str(&format!("jitter_percent = {}\n", c.jitter_percent));
        push_kv(&mut out, "interval", &duration::format(c.interval));
        push_kv(
            &mut out,
            "fast_interval",
            &duration::format(c.fast_interval),
        );
        push_kv(
            &mut out,
            "down_interval",
            &duration::format(c.down_interval),
        );
        push_kv(&mut out, "timeout", &duration::format(c.timeout));
        out.push_str(&format!("rise = {}\nfall = {}\n", c.rise, c.fall));
        if let Some(port) = c.port {
            out.push_str(&format!("port = {port}\n"));
        }
        if let Some(s) = &c.tls.server_name {
            push_kv(&mut out, "tls_server_name", s);
        }
        if let Some(f) = &c.tls.ca_file {
            push_kv(&mut out, "tls_ca_file", &f.to_string_lossy());
        }
        if c.tls.insecure {
            out.push_str("tls_insecure = true\n");
        }
        if !c.tls.alpn.is_empty() {
            let list: Vec<String> = c
                .tls
                .alpn
                .iter()
                .map(|p| toml::Value::String(p.clone()).to_string())
                .collect();
            out.push_str(&format!("tls_alpn = [{}]\n", list.join(", ")));
        }
        if let (Some(cert), Some(key)) = (&c.tls.client_cert, &c.tls.client_key) {
            push_kv(&mut out, "tls_client_cert", &cert.to_string_lossy());
            push_kv(&mut out, "tls_client_key", &key.to_string_lossy());
        }
        if !c.headers.is_empty() {
            out.push_str("\n[pool.check.headers]\n");
            for (k, v) in &c.headers {
                push_kv(&mut out, &toml::Value::String(k.clone()).to_string(), v);
            }
        }
    }
    for b in &p.backends {
        out.push_str("\n[[pool.backend]]\n");
        push_kv(&mut out, "name", &b.name);
        push_kv(&mut out, "address", &b.address);
        out.push_str(&format!("weight = {}\n", b.weight));
        push_kv(&mut out, "admin_state", b.admin_state.as_str());
        if b.backup {
            out.push_str("backup = true\n");
        }
    }
    out
}

fn parse_field<T: std::str::FromStr<Err = String>>(
    value: Option<&str>,
    path: &str,
    default: T,
) -> Result<T, FieldError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| FieldError::new(path, e)),
    }
}

/// A duration as written in the file: a string with a unit (`"500ms"`,
/// `"2s"`) or a TOML integer, which is milliseconds (as a bare number is in
/// HAProxy and in a duration string). Checked in `parse_duration`, so the
/// error names the field.
#[derive(Debug, Clone, PartialEq)]
enum RawDuration {
    Millis(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a duration such as \"500ms\" or \"2s\", or an integer number of milliseconds",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Millis(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn parse_duration(value: Option<&RawDuration>, path: &str) -> Result<Option<Duration>, FieldError> {
    match value {
        None => Ok(None),
        Some(RawDuration::Millis(ms)) => u64::try_from(*ms)
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| FieldError::new(path, format!("negative duration {ms}"))),
        Some(RawDuration::Text(v)) => duration::parse(v)
            .map(Some)
            .map_err(|e| FieldError::new(path, e)),
    }
}

impl RawDocument {
    fn into_document(self) -> Result<Document, FieldError> {
        let pools = self
            .pool
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_spec().map_err(|e| e.within(&format!("pool[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let listeners = self
            .listener
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                l.into_spec()
                    .map_err(|e| e.within(&format!("listener[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Document { pools, listeners })
    }
}

impl RawPool {
    fn into_spec(self) -> Result<PoolSpec, FieldError> {
        let backends = self
            .backend
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(BackendSpec {
                    name: b.name,
                    address: b.address,
                    weight: b.weight.unwrap_or(1),
                    admin_state: parse_field(
                        b.admin_state.as_deref(),
                        &format!("backend[{i}].admin_state"),
                        AdminState::Ready,
                    )?,
                    backup: b.backup.unwrap_or(false),
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        let check = self
            .check
            .map(|c| c.into_spec().map_err(|e| e.within("check")))
            .transpose()?;
        Ok(PoolSpec {
            name: self.name,
            backends,
            check,
            quorum: parse_field(self.quorum.as_deref(), "quorum", Quorum::Majority)?,
            initial_state: parse_field(
                self.initial_state.as_deref(),
                "initial_state",
                HealthState::Down,
            )?,
            replicas: self.replicas.unwrap_or(DEFAULT_REPLICAS),
            zone_spread: self.zone_spread.unwrap_or(false),
            damping: self
                .damping
                .map(|d| d.into_spec().map_err(|e| e.within("damping")))
                .transpose()?,
        })
    }
}

impl RawCheck {
    fn into_spec(self) -> Result<CheckSpec, FieldError> {
        let d = CheckSpec::http_default();
        let kind = parse_field(self.kind.as_deref(), "kind", CheckKind::Http)?;
        let interval = parse_duration(self.interval.as_ref(), "interval")?.unwrap_or(d.interval);
        let expect_status = match self.expect_status.as_deref() {
            None => StatusSet::default(),
            Some(s) => s.parse().map_err(|e| FieldError::new("expect_status", e))?,
        };
        let expect_body = match (self.expect_body, self.expect_body_regex) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "expect_body_regex",
                    "set expect_body or expect_body_regex, not both",
                ));
            }
            (Some(s), None) => Some(BodyMatch::Substring(s)),
            (None, Some(r)) => Some(BodyMatch::Regex(r)),
            (None, None) => None,
        };
        let spec = CheckSpec {
            kind,
            method: self.method.unwrap_or(d.method),
            path: self.path.unwrap_or(d.path),
            host: self.host,
            headers: self.headers.into_iter().collect(),
            expect_status,
            expect_body,
            expect_negate: self.expect_negate.unwrap_or(false),
            address: self.address,
            tcp_send: self.tcp_send,
            tcp_expect: self.tcp_expect,
            grpc_service: self.grpc_service,
            jitter_percent: self.jitter_percent.unwrap_or(d.jitter_percent),
            interval,
            // HAProxy: fastinter and downinter default to inter, timeout check to inter.
            fast_interval: parse_duration(self.fast_interval.as_ref(), "fast_interval")?
                .unwrap_or(interval),
            down_interval: parse_duration(self.down_interval.as_ref(), "down_interval")?
                .unwrap_or(interval),
            timeout: parse_duration(self.timeout.as_ref(), "timeout")?.unwrap_or(interval),
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
            port: self.port,
            tls: TlsSpec {
                server_name: self.tls_server_name,
                ca_file: self.tls_ca_file.map(Into::into),
                insecure: self.tls_insecure.unwrap_or(false),
                alpn: self.tls_alpn,
                client_cert: self.tls_client_cert.map(Into::into),
                client_key: self.tls_client_key.map(Into::into),
            },
        };
        spec.validate(FieldNames::Toml)?;
        Ok(spec)
    }
}

impl RawListener {
    fn into_spec(self) -> Result<ListenerSpec, FieldError> {
        crate::model::validate_name(&self.name).map_err(|e| FieldError::new("name", e))?;
        crate::model::validate_name(&self.pool).map_err(|e| FieldError::new("pool", e))?;
        let bind = parse_bind(&self.bind).map_err(|e| FieldError::new("bind", e))?;
        let balance = match self.balance.as_deref() {
            None | Some("roundrobin") => Balance::RoundRobin,
            Some("leastconn") => Balance::LeastConn,
            Some("random") => Balance::Random,
            Some("source") => Balance::Source,
            Some(other) => {
                return Err(FieldError::new(
                    "balance",
                    format!(
                        "unknown balance algorithm {other:?} (roundrobin, leastconn, random or source)"
                    ),
                ));
            }
        };
        let on_no_backend = match self.on_no_backend.as_deref() {
            None | Some("refuse") => NoBackend::Refuse,
            Some("panic") => NoBackend::Panic,
            Some(other) => {
                return Err(FieldError::new(
                    "on_no_backend",
                    format!("unknown policy {other:?} (refuse or panic)"),
                ));
            }
        };
        let connect_timeout = parse_duration(self.connect_timeout.as_ref(), "connect_timeout")?
            .unwrap_or(Duration::from_secs(5));
        if connect_timeout.is_zero() {
            return Err(FieldError::new("connect_timeout", "must be greater than 0"));
        }
        let retries = self.retries.unwrap_or(2);
        if retries > 16 {
            return Err(FieldError::new("retries", "must be between 0 and 16"));
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 || max_connections > 1_000_000 {
            return Err(FieldError::new(
                "max_connections",
                "must be between 1 and 1000000",
            ));
        }
        let idle_timeout = parse_duration(self.idle_timeout.as_ref(), "idle_timeout")?
            .unwrap_or(Duration::from_secs(3600));
        if idle_timeout.is_zero() {
            return Err(FieldError::new("idle_timeout", "must be greater than 0"));
        }
        let send_proxy = match self.send_proxy.as_deref() {
            None | Some("none") => None,
            Some("v1") => Some(ProxyProtocol::V1),
            Some("v2") => Some(ProxyProtocol::V2),
            Some(other) => {
                return Err(FieldError::new(
                    "send_proxy",
                    format!("unknown PROXY protocol version {other:?} (v1, v2 or none)"),
                ));
            }
        };
        let tcp_keepalive = match &self.tcp_keepalive {
            None => Some(Duration::from_secs(60)),
            Some(RawDuration::Text(off)) if off == "off" => None,
            v => parse_duration(v.as_ref(), "tcp_keepalive")?,
        };
        let passive_ejection = parse_duration(self.passive_ejection.as_ref(), "passive_ejection")?
            .unwrap_or(Duration::from_secs(30));
        if passive_ejection.is_zero() {
            return Err(FieldError::new(
                "passive_ejection",
                "must be greater than 0",
            ));
        }
        let passive_max_percent = self.passive_max_percent.unwrap_or(50);
        if passive_max_percent > 100 {
            return Err(FieldError::new(
                "passive_max_percent",
                "must be between 0 and 100",
            ));
        }
        if tcp_keepalive.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(FieldError::new("tcp_keepalive", "at least 1s, or \"off\""));
        }
        Ok(ListenerSpec {
            name: self.name,
            bind,
            pool: self.pool,
            balance,
            connect_timeout,
            retries,
            on_no_backend,
            max_connections,
            idle_timeout,
            max_connections_per_backend: self.max_connections_per_backend.unwrap_or(0),
            send_proxy,
            tcp_keepalive,
            passive_failures: self.passive_failures.unwrap_or(5),
            passive_ejection,
            passive_max_percent,
            shutdown_sessions_on_down: self.shutdown_sessions_on_down.unwrap_or(false),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
[[pool]]
name = "myApp"

[pool.check]
kind = "http"
method = "GET"
path = "/readyz"
expect_status = "200"

[[pool.backend]]
name = "server-1"
address = "backend-1.example.com:6443"

[[pool.backend]]
name = "server-2"
address = "backend-2.example.com:6443"

[[pool.backend]]
name = "server-3"
address = "backend-3.example.com:6443"

[[listener]]
name = "myApp"
bind = "*:6443"
pool = "myApp"
"#;

    #[test]
    fn seed_configuration_is_expressible() {
        let doc = Document::parse(SEED).expect("seed parses");
        let pool = &doc.pools[0];
        assert_eq!(pool.name, "myApp");
        assert_eq!(pool.backends.len(), 3);
        let check = pool.check.as_ref().expect("check");
        assert_eq!(check.path, "/readyz");
        assert!(check.expect_status.contains(200) && !check.expect_status.contains(204));
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!((check.rise, check.fall), (2, 3));
        assert_eq!(doc.listeners[0].bind, "0.0.0.0:6443".parse().expect("addr"));
    }

    #[test]
    fn listener_defaults_match_the_constructor() {
        let doc =
            Document::parse("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n")
                .expect("valid");
        let expected = ListenerSpec::new("l", "127.0.0.1:80".parse().expect("addr"), "p");
        assert_eq!(doc.listeners[0], expected);
    }

    #[test]
    fn to_toml_round_trips() {
        let doc = Document::parse(SEED).expect("seed parses");
        let again = Document::parse(&doc.to_toml()).expect("rendered parses");
        assert_eq!(doc, again);
    }

    fn err(text: &str) -> String {
        Document::parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err("[[pool]]\nname = \"a\"\n[pool.check]\nexpect_status = \"700\"\n")
                .starts_with("pool[0].check.expect_status:")
        );
        assert!(
            err("[[pool]]\nname = \"a\"\n[[pool.backend]]\nname = \"b\"\naddress = \"nohost\"\n")
                .starts_with("pool[0].backend[0].address:")
        );
        assert!(
            err("[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\"\n").starts_with("pool[1].name:")
        );
        assert!(
            err("[[listener]]\nname = \"l\"\nbind = \"nope\"\npool = \"p\"\n")
                .starts_with("listener[0].bind:")
        );
        assert!(err("[[pool]]\nname = \"a\"\nbogus = 1\n").contains("bogus"));
        assert!(
            err("[[pool]]\nname = \"a\"\n[pool.check]\nhost = \"a\\r\\nb\"\n")
                .starts_with("pool[0].check.host:")
        );
        let e = err(
            "[[pool]]\nname = \"a\"\n[[pool.backend]]\nname = \"b\"\naddress = \"http://x:80\"\n",
        );
        assert!(
            e.starts_with("pool[0].backend[0].address:") && e.contains("not a URL"),
            "{e}"
        );
        assert!(
            err("[[pool]]\nname = \"a\"\n[pool.check]\ninterval = \"0s\"\n")
                .starts_with("pool[0].check.interval:")
        );
    }

    #[test]
    fn durations_parse_as_documented() {
        let check = |line: &str| {
            Document::parse(&format!("[[pool]]\nname = \"p\"\n[pool.check]\n{line}\n"))
                .map(|d| d.pools[0].check.as_ref().map(|c| c.interval))
        };
        // A TOML integer is milliseconds, as a bare number in a string is.
        assert_eq!(
            check("interval = 500").expect("integer"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            check("interval = \"500\"").expect("string"),
            Some(Duration::from_millis(500))
        );
        // What milliseconds cannot hold is refused, naming the field, never
        // stored as something else (1us was stored as 2s, 1500us as 1ms).
        for bad in ["\"1us\"", "\"1500us\"", "-5"] {
            let e = check(&format!("interval = {bad}"))
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("pool[0].check.interval:"), "{bad}: {e}");
        }
        let e = check("interval = 1.5").expect_err("float").to_string();
        assert!(e.contains("integer number of milliseconds"), "{e}");
        let listener = Document::parse(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\nconnect_timeout = 250\nidle_timeout = 60000\ntcp_keepalive = 1000\n",
        )
        .expect("integers")
        .listeners
        .remove(0);
        assert_eq!(listener.connect_timeout, Duration::from_millis(250));
        assert_eq!(listener.idle_timeout, Duration::from_secs(60));
        assert_eq!(listener.tcp_keepalive, Some(Duration::from_secs(1)));
        assert!(
            err("[[pool]]\nname = \"p\"\n[pool.damping]\nhalf_life = \"10us\"\n")
                .starts_with("pool[0].damping.half_life:")
        );
    }

    fn pool_of(n: usize, address_len: usize) -> PoolSpec {
        // Labels of a DNS name are at most 63 bytes.
        let host = vec!["h".repeat(49); address_len / 50].join(".");
        PoolSpec {
            name: "big".into(),
            backends: (0..n)
                .map(|i| BackendSpec {
                    name: format!("backend-{i:05}-{}", "n".repeat(40)),
                    address: format!("{host}:{}", 1 + i % 60_000),
                    weight: 1,
                    admin_state: AdminState::Ready,
                    backup: false,
                })
                .collect(),
            check: Some(CheckSpec::http_default()),
            quorum: Quorum::Majority,
            initial_state: HealthState::Down,
            replicas: 3,
            zone_spread: false,
            damping: None,
        }
    }

    #[test]
    fn a_pool_must_fit_in_one_store_value() {
        // Every field within its own limit, the whole over 1 MiB encoded.
        let small = pool_of(1_000, 200);
        let doc = |pools: Vec<PoolSpec>| Document {
            pools,
            listeners: vec![],
        };
        assert!(doc(vec![small.clone()]).validate().is_ok());
        let mut big = pool_of(6_000, 200);
        assert!(big.validate(FieldNames::Toml).is_ok(), "each field is fine");
        big.name = "big2".into();
        let e = doc(vec![small, big]).validate().expect_err("too large");
        assert_eq!(e.path, "pool[1]", "the pool itself: {e}");
        assert!(
            e.message.starts_with("encoded pool spec is 1.")
                && e.message.contains(" MiB; at most 1 MiB (fewer backends"),
            "{e}"
        );
    }

    #[test]
    fn a_huge_check_path_is_refused_by_parse() {
        let text = format!(
            "[[pool]]\nname = \"p\"\n[pool.check]\npath = \"/{}\"\n",
            "a".repeat(3_000_000)
        );
        let e = err(&text);
        assert!(
            e.starts_with("pool[0].check.path: 2.9 MiB long; at most 8 KiB"),
            "{}",
            &e[..e.len().min(200)]
        );
    }
}
