//! Validated domain types for pools, backends and checks.
//!
//! Values of these types are valid by construction: the config parser and the
//! proto conversions are the only ways in, and both validate.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{FieldError, FieldNames};
use crate::limits::{
    MAX_FILE_PATH_BYTES, MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES, MAX_HEADERS,
    MAX_HTTP_METHOD_BYTES, MAX_HTTP_PATH_BYTES, MAX_MATCH_BYTES, MAX_POOL_SPEC_BYTES, MAX_POOLS,
    format_bytes,
};
// Re-exported: their home is `limits`; these paths predate it.
pub use crate::limits::{MAX_BACKENDS_PER_POOL, MAX_BODY_BYTES, REGEX_SIZE_LIMIT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthState {
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl FromStr for HealthState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "up" => Ok(HealthState::Up),
            "down" => Ok(HealthState::Down),
            _ => Err(format!("unknown state {s:?} (expected up or down)")),
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operator-set state of a backend, as HAProxy's `set server state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AdminState {
    /// Takes traffic when healthy.
    #[default]
    Ready,
    /// No new connections; existing ones continue; checks keep running.
    Drain,
    /// No traffic and no checks.
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            _ => Err(format!(
                "unknown admin state {s:?} (expected ready, drain or maint)"
            )),
        }
    }
}

/// How agent verdicts combine into a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quorum {
    /// DOWN only when a strict majority of the counted verdicts say DOWN.
    #[default]
    Majority,
    /// DOWN when any counted verdict says DOWN.
    Any,
    /// DOWN only when every counted verdict says DOWN.
    All,
}

impl Quorum {
    pub fn as_str(self) -> &'static str {
        match self {
            Quorum::Majority => "majority",
            Quorum::Any => "any",
            Quorum::All => "all",
        }
    }
}

impl FromStr for Quorum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "majority" => Ok(Quorum::Majority),
            "any" => Ok(Quorum::Any),
            "all" => Ok(Quorum::All),
            _ => Err(format!(
                "unknown quorum policy {s:?} (expected majority, any or all)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Https,
    Tcp,
    /// `grpc.health.v1.Health/Check` over plaintext HTTP/2.
    Grpc,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc => "grpc",
        }
    }
}

impl FromStr for CheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(CheckKind::Http),
            "https" => Ok(CheckKind::Https),
            "tcp" => Ok(CheckKind::Tcp),
            "grpc" => Ok(CheckKind::Grpc),
            _ => Err(format!(
                "unknown check kind {s:?} (expected http, https, tcp or grpc)"
            )),
        }
    }
}

serde_by_name!(HealthState, AdminState, Quorum, CheckKind);

/// Expected HTTP statuses: a list of inclusive ranges (`200`, `200,204`, `200-299`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    /// Exactly one status, e.g. HAProxy's `http-check expect status 200`.
    pub fn single(status: u16) -> Self {
        StatusSet(vec![(status, status)])
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl Default for StatusSet {
    /// HAProxy's default for `option httpchk`: any 2xx or 3xx.
    fn default() -> Self {
        StatusSet(vec![(200, 399)])
    }
}

impl FromStr for StatusSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |v: &str| -> Result<u16, String> {
                let n: u16 = v
                    .parse()
                    .map_err(|_| format!("invalid status {v:?} in {s:?}"))?;
                if !(100..=599).contains(&n) {
                    return Err(format!("status {n} in {s:?} is outside 100-599"));
                }
                Ok(n)
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("empty status range {lo}-{hi} in {s:?}"));
            }
            out.push((lo, hi));
        }
        Ok(StatusSet(out))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSpec {
    /// Name sent as SNI and verified against the certificate; default: the backend host.
    pub server_name: Option<String>,
    /// PEM bundle of the CAs to trust; default: the webpki roots are *not* used,
    /// so a verified HTTPS check needs a CA file or `insecure`.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (HAProxy's `verify none`).
    pub insecure: bool,
    /// ALPN protocols offered; a server choosing `h2` gets an HTTP/2 check.
    pub alpn: Vec<String>,
    /// Client certificate chain and private key (PEM), for servers that require mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What the response body must contain (in its first [`MAX_BODY_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyMatch {
    Substring(String),
    /// A regex (Rust `regex` syntax, compiled size-limited).
    Regex(String),
}

pub fn compile_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub method: String,
    pub path: String,
    /// Host header; default: the address checked.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub expect_status: StatusSet,
    /// Body expectation, checked on the first [`MAX_BODY_BYTES`].
    pub expect_body: Option<BodyMatch>,
    /// Invert the body match, or the status match when there is no body
    /// match (HAProxy's `http-check expect !`).
    pub expect_negate: bool,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub down_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Check this port instead of the backend's traffic port.
    pub port: Option<u16>,
    /// Check this host instead of the backend's (HAProxy `addr`).
    pub address: Option<String>,
    /// TCP checks: bytes sent after connect, and a substring the reply must contain.
    pub tcp_send: Option<String>,
    pub tcp_expect: Option<String>,
    /// gRPC checks: the service asked about (`None`: the whole server).
    pub grpc_service: Option<String>,
    /// Spread of each interval in percent (HAProxy spreads checks too).
    pub jitter_percent: u32,
    pub tls: TlsSpec,
}

impl CheckSpec {
    /// An HTTP check with HAProxy's defaults: `GET /`, expect 200-399, inter 2s, rise 2, fall 3.
    pub fn http_default() -> Self {
        let interval = Duration::from_secs(2);
        CheckSpec {
            kind: CheckKind::Http,
            method: "GET".into(),
            path: "/".into(),
            host: None,
            headers: Vec::new(),
            expect_status: StatusSet::default(),
            expect_body: None,
            expect_negate: false,
            interval,
            fast_interval: interval,
            down_interval: interval,
            timeout: interval,
            rise: 2,
            fall: 3,
            port: None,
            address: None,
            tcp_send: None,
            tcp_expect: None,
            grpc_service: None,
            jitter_percent: 10,
            tls: TlsSpec::default(),
        }
    }

    /// [`CheckSpec::http_default`] checked every `interval` in every state,
    /// with `interval` as its timeout too (tests and short-lived demos).
    pub fn every(interval: Duration) -> Self {
        CheckSpec {
            interval,
            fast_interval: interval,
            down_interval: interval,
            timeout: interval,
            ..CheckSpec::http_default()
        }
    }

    /// Checks the invariants every constructor must uphold; errors spell
    /// fields as `names` does.
    pub fn validate(&self, names: FieldNames) -> Result<(), FieldError> {
        for (name, d) in [
            ("interval", self.interval),
            ("fast_interval", self.fast_interval),
            ("down_interval", self.down_interval),
            ("timeout", self.timeout),
        ] {
            let name = names.duration(name);
            if d.is_zero() {
                return Err(FieldError::new(name, "must be greater than 0"));
            }
            if d > Duration::from_secs(3600) {
                return Err(FieldError::new(name, "must be at most 1h"));
            }
            // The store and the wire carry milliseconds: anything else would
            // come back as another value.
            if !crate::duration::is_whole_millis(d) {
                return Err(FieldError::new(
                    name,
                    format!(
                        "{} is not a whole number of milliseconds",
                        crate::duration::format(d)
                    ),
                ));
            }
        }
        if self.rise == 0 || self.rise > 1000 {
            return Err(FieldError::new("rise", "must be between 1 and 1000"));
        }
        if self.fall == 0 || self.fall > 1000 {
            return Err(FieldError::new("fall", "must be between 1 and 1000"));
        }
        if matches!(self.kind, CheckKind::Http | CheckKind::Https) {
            if self.method.is_empty()
                || self.method.len() > MAX_HTTP_METHOD_BYTES
                || !self.method.bytes().all(|b| b.is_ascii_alphabetic())
            {
                return Err(FieldError::new(
                    "method",
                    format!(
                        "invalid HTTP method {:?}: 1-{MAX_HTTP_METHOD_BYTES} letters",
                        self.method
                    ),
                ));
            }
            if self.path.len() > MAX_HTTP_PATH_BYTES {
                return Err(FieldError::new(
                    "path",
                    format!(
                        "{} long; at most {}",
                        format_bytes(self.path.len()),
                        format_bytes(MAX_HTTP_PATH_BYTES)
                    ),
                ));
            }
            if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FieldError::new(
                    "path",
                    format!(
                        "must start with / and contain no spaces or control characters (percent-encode them), got {:?}",
                        self.path
                    ),
                ));
            }
        }
        if let Some(h) = &self.host {
            if h.len() > MAX_HEADER_VALUE_BYTES {
                return Err(FieldError::new(
                    "host",
                    format!(
                        "{} long; at most {}",
                        format_bytes(h.len()),
                        format_bytes(MAX_HEADER_VALUE_BYTES)
                    ),
                ));
            }
            if h.is_empty() || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(FieldError::new(
                    "host",
                    format!("must be non-empty with no spaces or control characters, got {h:?}"),
                ));
            }
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(FieldError::new(
                "headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if name.is_empty()
                || name.len() > MAX_HEADER_NAME_BYTES
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(FieldError::new(
                    format!("headers[{i}].name"),
                    format!(
                        "invalid header name {name:?}: 1-{MAX_HEADER_NAME_BYTES} letters, digits or '-'"
                    ),
                ));
            }
            if value.len() > MAX_HEADER_VALUE_BYTES {
                return Err(FieldError::new(
                    format!("headers[{i}].value"),
                    format!(
                        "{} long; at most {}",
                        format_bytes(value.len()),
                        format_bytes(MAX_HEADER_VALUE_BYTES)
                    ),
                ));
            }
            if !is_field_value(value) {
                return Err(FieldError::new(
                    format!("headers[{i}].value"),
                    format!("must not contain CR, LF or other control characters, got {value:?}"),
                ));
            }
            if name.eq_ignore_ascii_case("host") {
                return Err(FieldError::new(
                    format!("headers[{i}].name"),
                    "set the Host header with the check's `host`",
                ));
            }
        }
        match &self.expect_body {
            Some(BodyMatch::Substring(b)) if b.is_empty() || b.len() > MAX_MATCH_BYTES => {
                return Err(FieldError::new(
                    "expect_body",
                    format!("must be 1 to {MAX_MATCH_BYTES} bytes"),
                ));
            }
            Some(BodyMatch::Regex(r)) => {
                if r.len() > MAX_MATCH_BYTES {
                    return Err(FieldError::new(
                        "expect_body_regex",
                        format!("at most {MAX_MATCH_BYTES} bytes"),
                    ));
                }
                compile_regex(r).map_err(|e| FieldError::new("expect_body_regex", e))?;
            }
            _ => {}
        }
        let is_http = matches!(self.kind, CheckKind::Http | CheckKind::Https);
        if self.expect_body.is_some() && !is_http {
            return Err(FieldError::new(
                "expect_body",
                "body expectations apply to http and https checks",
            ));
        }
        if self.kind != CheckKind::Tcp && (self.tcp_send.is_some() || self.tcp_expect.is_some()) {
            return Err(FieldError::new(
                "tcp_send",
                "tcp_send and tcp_expect apply to tcp checks",
            ));
        }
        for (name, v) in [
            ("tcp_send", &self.tcp_send),
            ("tcp_expect", &self.tcp_expect),
        ] {
            if v.as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > MAX_MATCH_BYTES)
            {
                return Err(FieldError::new(
                    name,
                    format!("must be 1 to {MAX_MATCH_BYTES} bytes"),
                ));
            }
        }
        if self.kind != CheckKind::Grpc && self.grpc_service.is_some() {
            return Err(FieldError::new("grpc_service", "applies to grpc checks"));
        }
        if self
            .grpc_service
            .as_ref()
            .is_some_and(|s| s.len() > MAX_MATCH_BYTES)
        {
            return Err(FieldError::new(
                "grpc_service",
                format!("at most {MAX_MATCH_BYTES} bytes"),
            ));
        }
        if let Some(name) = &self.tls.server_name {
            let valid = if name.contains(':') {
                validate_ipv6(name)
            } else {
                validate_host(name)
            };
            valid.map_err(|e| FieldError::new("tls_server_name", e))?;
        }
        for (name, file) in [
            ("tls_ca_file", &self.tls.ca_file),
            ("tls_client_cert", &self.tls.client_cert),
            ("tls_client_key", &self.tls.client_key),
        ] {
            if file
                .as_ref()
                .is_some_and(|f| f.as_os_str().len() > MAX_FILE_PATH_BYTES)
            {
                return Err(FieldError::new(
                    name,
                    format!("at most {MAX_FILE_PATH_BYTES} bytes"),
                ));
            }
        }
        if self.jitter_percent > 50 {
            return Err(FieldError::new(
                "jitter_percent",
                "must be between 0 and 50",
            ));
        }
        if let Some(a) = &self.address {
            // A host only (the port is `port`'s); IPv6 with or without brackets.
            let host = a
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(a);
            let valid = if host.contains(':') {
                validate_ipv6(host)
            } else {
                validate_host(host)
            };
            valid.map_err(|e| FieldError::new("address", format!("invalid host {a:?}: {e}")))?;
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(FieldError::new(
                "tls_client_key",
                "tls_client_cert and tls_client_key go together",
            ));
        }
        if self.tls.alpn.len() > 8 || self.tls.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(FieldError::new(
                "tls_alpn",
                "1 to 8 protocol names of 1-255 bytes",
            ));
        }
        if self.kind == CheckKind::Https && self.tls.ca_file.is_none() && !self.tls.insecure {
            // As HAProxy: verification is on by default and needs a CA file.
            return Err(FieldError::new(
                "tls_ca_file",
                "an https check verifies the server certificate: set tls_ca_file, or tls_insecure = true to skip verification",
            ));
        }
        if self.port == Some(0) {
            return Err(FieldError::new("port", "must be 1-65535"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    /// `host:port`; IPv6 hosts in brackets.
    pub address: String,
    pub weight: u32,
    pub admin_state: AdminState,
    /// Takes traffic only when no non-backup backend is available.
    pub backup: bool,
    /// The zone the backend runs in (empty: none); its locality in xDS.
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    /// `None`: backends are not checked and always UP (a HAProxy server without `check`).
    pub check: Option<CheckSpec>,
    pub quorum: Quorum,
    /// State of a checked backend before any agent has reported on it.
    pub initial_state: HealthState,
    /// How many agents check each backend (all agents if fewer are live).
    pub replicas: u32,
    /// Choose each backend's agents from distinct zones first.
    pub zone_spread: bool,
    /// Flap damping; `None`: off.
    pub damping: Option<DampingSpec>,
    /// Also serve the pool to proxyless gRPC clients over xDS (Listener,
    /// RouteConfiguration and Cluster besides its ClusterLoadAssignment).
    pub grpc_xds: bool,
}

pub const DEFAULT_REPLICAS: u32 = 3;

impl BodyMatch {
    /// The body expectation from its two spellings (a substring or a
    /// regex), of which at most one may be set.
    pub fn from_parts(
        substring: Option<String>,
        regex: Option<String>,
    ) -> Result<Option<BodyMatch>, FieldError> {
        match (substring, regex) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "expect_body_regex",
                "set expect_body or expect_body_regex, not both",
            )),
            (Some(s), None) => Ok(Some(BodyMatch::Substring(s))),
            (None, Some(r)) => Ok(Some(BodyMatch::Regex(r))),
            (None, None) => Ok(None),
        }
    }
}

impl BackendSpec {
    /// A backend with the documented defaults: weight 1, `ready`, not a backup.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        BackendSpec {
            name: name.into(),
            address: address.into(),
            weight: 1,
            admin_state: AdminState::Ready,
            backup: false,
            zone: String::new(),
        }
    }
}

impl PoolSpec {
    /// A pool with the documented defaults: no check (always UP), quorum
    /// `majority`, initial state DOWN, 3 replicas, no zone spread, no damping.
    pub fn new(name: impl Into<String>, backends: Vec<BackendSpec>) -> Self {
        PoolSpec {
            name: name.into(),
            backends,
            check: None,
            quorum: Quorum::Majority,
            initial_state: HealthState::Down,
            replicas: DEFAULT_REPLICAS,
            zone_spread: false,
            damping: None,
            grpc_xds: false,
        }
    }
}

impl PoolSpec {
    /// Checks the pool and everything in it; errors spell fields as `names`
    /// does (`backend[2].address` in a TOML document, `backends[2].address`
    /// on the wire).
    pub fn validate(&self, names: FieldNames) -> Result<(), FieldError> {
        validate_name(&self.name).map_err(|e| FieldError::new("name", e))?;
        let backends = names.backends();
        if self.backends.len() > MAX_BACKENDS_PER_POOL {
            return Err(FieldError::new(
                backends,
                format!("at most {MAX_BACKENDS_PER_POOL} backends per pool"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let path = format!("{backends}[{i}]");
            validate_name(&b.name).map_err(|e| FieldError::new(format!("{path}.name"), e))?;
            if !seen.insert(b.name.as_str()) {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    format!("duplicate backend name {:?}", b.name),
                ));
            }
            validate_address(&b.address)
                .map_err(|e| FieldError::new(format!("{path}.address"), e))?;
            if !b.zone.is_empty() {
                validate_name(&b.zone).map_err(|e| {
                    FieldError::new(format!("{path}.zone"), e.replacen("name", "zone", 1))
                })?;
            }
            if b.weight > 256 {
                return Err(FieldError::new(
                    format!("{path}.weight"),
                    "must be between 0 and 256",
                ));
            }
        }
        if let Some(c) = &self.check {
            c.validate(names).map_err(|e| e.within("check"))?;
        }
        if let Some(d) = &self.damping {
            d.validate(names).map_err(|e| e.within("damping"))?;
        }
        if self.replicas == 0 || self.replicas > 64 {
            return Err(FieldError::new("replicas", "must be between 1 and 64"));
        }
        Ok(())
    }
}

/// Checks a set of pools as one write stores them (a config document, an
/// `ApplyPools` request): each pool, that each fits in one store value, and
/// that names are unique. Paths start at the list (`pool[2].check.interval`,
/// `pools[2].check.interval_ms`), spelled as `names` does.
pub fn validate_pools(pools: &[PoolSpec], names: FieldNames) -> Result<(), FieldError> {
    let list = names.pools();
    if pools.len() > MAX_POOLS {
        return Err(FieldError::new(list, format!("at most {MAX_POOLS} pools")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in pools.iter().enumerate() {
        let path = format!("{list}[{i}]");
        p.validate(names).map_err(|e| e.within(&path))?;
        // Every field is within its own limit, yet the whole may not fit in
        // one store value. Checked here, where pools are written, and not
        // when reading pools stored by an older version.
        let size = crate::convert::pool_encoded_len(p);
        if size > MAX_POOL_SPEC_BYTES {
            return Err(FieldError::new(
                path,
                format!(
                    "encoded pool spec is {}; at most {} (fewer backends or shorter names/addresses)",
                    format_bytes(size),
                    format_bytes(MAX_POOL_SPEC_BYTES)
                ),
            ));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!("duplicate pool name {:?}", p.name),
            ));
        }
    }
    Ok(())
}

/// Flap damping of a pool, as BGP route-flap damping (RFC 2439): every
/// transition of a backend's derived state adds `penalty` to a figure of
/// merit that halves every `half_life`; above `suppress` the backend is held
/// DOWN until the figure decays below `reuse` (at most `max_suppress`). The
/// arithmetic lives with its one user, the control plane's damper.
#[derive(Debug, Clone, PartialEq)]
pub struct DampingSpec {
    pub half_life: Duration,
    pub penalty: u32,
    pub suppress: u32,
    pub reuse: u32,
    pub max_suppress: Duration,
}

impl Default for DampingSpec {
    /// Cisco's BGP defaults, scaled to health checks: half-life 60 s,
    /// penalty 1000, suppress 2000, reuse 750, at most 5 minutes.
    fn default() -> Self {
        DampingSpec {
            half_life: Duration::from_secs(60),
            penalty: 1000,
            suppress: 2000,
            reuse: 750,
            max_suppress: Duration::from_secs(300),
        }
    }
}

impl DampingSpec {
    /// Errors spell fields as `names` does (`half_life`, `half_life_ms`).
    pub fn validate(&self, names: FieldNames) -> Result<(), FieldError> {
        if self.half_life.is_zero() || self.half_life > Duration::from_secs(3600) {
            return Err(FieldError::new(
                names.duration("half_life"),
                "must be between 1ms and 1h",
            ));
        }
        for (name, d) in [
            ("half_life", self.half_life),
            ("max_suppress", self.max_suppress),
        ] {
            if !crate::duration::is_whole_millis(d) {
                return Err(FieldError::new(
                    names.duration(name),
                    "must be a whole number of milliseconds",
                ));
            }
        }
        if self.penalty == 0 {
            return Err(FieldError::new("penalty", "must be greater than 0"));
        }
        if self.reuse == 0 || self.reuse >= self.suppress {
            return Err(FieldError::new(
                "reuse",
                "must be greater than 0 and below suppress",
            ));
        }
        if self.max_suppress < self.half_life || self.max_suppress > Duration::from_secs(86_400) {
            return Err(FieldError::new(
                names.duration("max_suppress"),
                "must be at least half_life and at most 24h",
            ));
        }
        Ok(())
    }
}

/// Names of pools, backends and listeners: 1-63 characters of letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit. They appear in store keys.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=crate::limits::MAX_NAME_BYTES).contains(&name.len());
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6) and checks both parts: the
/// host is a DNS name (letters, digits, `-`, `_`, `.`), a valid IPv4
/// address, or a bracketed IPv6 address.
pub fn split_address(addr: &str) -> Result<(&str, u16), String> {
    if let Some((_, rest)) = addr.split_once("://") {
        let authority = rest.split('/').next().unwrap_or(rest);
        return Err(format!(
            "invalid address {addr:?}: expected host:port, not a URL (write {authority:?})"
        ));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid address {addr:?}: expected host:port"))?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("invalid address {addr:?}: unclosed '['"))?;
        validate_ipv6(inner).map_err(|e| format!("invalid address {addr:?}: {e}"))?;
        inner
    } else if host.contains(':') {
        return Err(format!(
            "invalid address {addr:?}: put IPv6 addresses in brackets, e.g. [::1]:6443"
        ));
    } else {
        validate_host(host).map_err(|e| format!("invalid address {addr:?}: {e}"))?;
        host
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid address {addr:?}: port {port:?} is not 1-65535"))?;
    if port == 0 {
        return Err(format!("invalid address {addr:?}: port 0"));
    }
    Ok((host, port))
}

pub fn validate_address(addr: &str) -> Result<(), String> {
    split_address(addr).map(|_| ())
}

/// A host name or IPv4 address (IPv6 goes through [`validate_ipv6`]).
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.len() > crate::limits::MAX_HOST_BYTES {
        return Err(format!(
            "host is {} bytes; at most {}",
            host.len(),
            crate::limits::MAX_HOST_BYTES
        ));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "host {host:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    // Resolvers read an all-numeric name as an IPv4 address (`256.1.1.1`
    // fails, `1.2.3` means 1.2.0.3): only the dotted-quad form is accepted.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"));
    }
    let labels = host.strip_suffix('.').unwrap_or(host);
    if labels.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(format!(
            "host {host:?} has an empty or over-long (> 63) label"
        ));
    }
    Ok(())
}

/// An IPv6 address, optionally with a zone (`fe80::1%eth0`).
pub fn validate_ipv6(host: &str) -> Result<(), String> {
    let (ip, zone) = match host.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (host, None),
    };
    let zone_ok = zone.is_none_or(|z| {
        !z.is_empty()
            && z.len() <= 16
            && z.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if ip.parse::<std::net::Ipv6Addr>().is_err() || !zone_ok {
        return Err(format!("{host:?} is not a valid IPv6 address"));
    }
    Ok(())
}

/// Whether `s` can be sent as an HTTP field value: no control characters
/// (CR and LF would split the request) other than tab.
fn is_field_value(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let s: StatusSet = "200,204,300-302".parse().expect("valid");
        assert!(s.contains(200) && s.contains(204) && s.contains(301));
        assert!(!s.contains(201) && !s.contains(303));
        assert_eq!(s.to_string(), "200,204,300-302");
        assert!(StatusSet::default().contains(302) && !StatusSet::default().contains(404));
        assert!(
            "600"
                .parse::<StatusSet>()
                .unwrap_err()
                .contains("outside 100-599")
        );
        assert!(
            "299-200"
                .parse::<StatusSet>()
                .unwrap_err()
                .contains("empty")
        );
        assert!("abc".parse::<StatusSet>().is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("a.example:6443"), Ok(("a.example", 6443)));
        assert_eq!(split_address("[::1]:80"), Ok(("::1", 80)));
        assert!(split_address("::1:80").unwrap_err().contains("brackets"));
        assert!(split_address("host").is_err());
        assert!(split_address("host:0").is_err());
        assert!(split_address(":80").is_err());
        assert!(split_address("h:99999").is_err());
        assert_eq!(split_address("10.0.0.1:80"), Ok(("10.0.0.1", 80)));
        assert_eq!(split_address("[fe80::1%eth0]:80"), Ok(("fe80::1%eth0", 80)));
        assert_eq!(split_address("my_svc.local.:80"), Ok(("my_svc.local.", 80)));
    }

    #[test]
    fn malformed_addresses_are_named() {
        for (addr, want) in [
            ("a b:80", "may contain only letters"),
            ("a\tb:80", "may contain only letters"),
            ("256.1.1.1:80", "\"256.1.1.1\" is not a valid IPv4 address"),
            ("1.2.3:80", "not a valid IPv4 address"),
            (
                "http://x:80",
                "expected host:port, not a URL (write \"x:80\")",
            ),
            ("https://x:80/healthz", "not a URL (write \"x:80\")"),
            ("[zz::1]:80", "not a valid IPv6 address"),
            ("a..b:80", "empty or over-long"),
            ("bücher.example:80", "may contain only letters"),
        ] {
            let e = validate_address(addr).expect_err(addr);
            assert!(
                e.starts_with(&format!("invalid address {addr:?}: ")) && e.contains(want),
                "{addr}: {e}"
            );
            assert!(!e.contains("brackets"), "no IPv6 hint for {addr}: {e}");
        }
        let long = format!("{}:80", "a.".repeat(127));
        assert!(validate_address(&long).unwrap_err().contains("at most 253"));
    }

    #[test]
    fn header_values_and_host_refuse_control_characters() {
        let mut c = CheckSpec::http_default();
        c.host = Some("a\r\nb".into());
        let e = c.validate(FieldNames::Toml).expect_err("CRLF in host");
        assert_eq!(e.path, "host", "{e}");
        c.host = Some("api.example:8443".into());
        assert!(c.validate(FieldNames::Toml).is_ok());
        for bad in ["a\r\nb", "a\0b", "a\x7fb"] {
            let mut c = CheckSpec::http_default();
            c.headers = vec![("X-A".into(), bad.into())];
            assert_eq!(
                c.validate(FieldNames::Toml).expect_err(bad).path,
                "headers[0].value",
                "{bad:?}"
            );
        }
        let mut c = CheckSpec::http_default();
        c.headers = vec![("X-A".into(), "tab\tok".into())];
        assert!(c.validate(FieldNames::Toml).is_ok());
        c.headers = vec![("host".into(), "x".into())];
        assert!(
            c.validate(FieldNames::Toml)
                .expect_err("Host header")
                .message
                .contains("`host`")
        );
        let mut c = CheckSpec::http_default();
        c.path = "/a\0b".into();
        assert_eq!(
            c.validate(FieldNames::Toml).expect_err("NUL in path").path,
            "path"
        );
        let mut c = CheckSpec::http_default();
        c.address = Some("a b".into());
        assert_eq!(
            c.validate(FieldNames::Toml)
                .expect_err("space in address")
                .path,
            "address"
        );
        c.address = Some("::1".into());
        assert!(c.validate(FieldNames::Toml).is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_name("myApp").is_ok());
        assert!(validate_name("server-1").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn check_validation_names_fields() {
        let mut c = CheckSpec::http_default();
        assert!(c.validate(FieldNames::Toml).is_ok());
        c.rise = 0;
        assert_eq!(c.validate(FieldNames::Toml).unwrap_err().path, "rise");
        c = CheckSpec::http_default();
        c.path = "readyz".into();
        assert_eq!(c.validate(FieldNames::Toml).unwrap_err().path, "path");
        c = CheckSpec::http_default();
        c.interval = Duration::ZERO;
        assert_eq!(c.validate(FieldNames::Toml).unwrap_err().path, "interval");
        c = CheckSpec::http_default();
        c.timeout = Duration::from_micros(1500);
        let e = c.validate(FieldNames::Toml).unwrap_err();
        assert_eq!(e.path, "timeout");
        assert!(e.message.contains("1500us"), "{e}");
    }

    #[test]
    fn check_strings_are_bounded() {
        let mut c = CheckSpec::http_default();
        c.path = format!("/{}", "a".repeat(3 * 1024 * 1024));
        let e = c.validate(FieldNames::Toml).expect_err("3 MB path");
        assert_eq!(e.path, "path");
        assert!(e.message.contains("at most 8 KiB"), "{e}");
        c.path = format!("/{}", "a".repeat(MAX_HTTP_PATH_BYTES - 1));
        assert!(
            c.validate(FieldNames::Toml).is_ok(),
            "exactly the limit is fine"
        );

        let mut c = CheckSpec::http_default();
        c.headers = vec![("X-A".into(), "v".repeat(MAX_HEADER_VALUE_BYTES + 1))];
        assert_eq!(
            c.validate(FieldNames::Toml).expect_err("long value").path,
            "headers[0].value"
        );
        let mut c = CheckSpec::http_default();
        c.host = Some("h".repeat(MAX_HEADER_VALUE_BYTES + 1));
        assert_eq!(
            c.validate(FieldNames::Toml).expect_err("long host").path,
            "host"
        );
        let mut c = CheckSpec::http_default();
        c.method = "G".repeat(MAX_HTTP_METHOD_BYTES + 1);
        assert_eq!(
            c.validate(FieldNames::Toml).expect_err("long method").path,
            "method"
        );
        let mut c = CheckSpec::http_default();
        c.tls.server_name = Some("s".repeat(crate::limits::MAX_HOST_BYTES + 1));
        assert_eq!(
            c.validate(FieldNames::Toml).expect_err("long SNI").path,
            "tls_server_name"
        );
    }
}
