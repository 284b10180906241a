//! The document's TOML form, key for key: one serde type that
//! [`Document::parse`] reads and [`Document::to_toml`] writes, so a key is
//! either read and written or neither.
//!
//! Reading fills what a file leaves out with the domain's defaults
//! ([`ListenerSpec::new`], [`CheckSpec::http_default`],
//! [`DampingSpec::default`]) and parses names with the enums' `FromStr`,
//! naming the field on error; the document is validated afterwards, as a
//! whole. Writing sets every key. Both directions destructure the domain
//! types completely, so a field added to them does not compile until it has
//! a key here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Document, ListenerSpec, parse_bind};
use crate::duration;
use crate::error::{FieldError, FieldNames};
use crate::model::{
    BackendSpec, BodyMatch, CheckSpec, DEFAULT_REPLICAS, DampingSpec, HealthState, PoolSpec,
    TlsSpec,
};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDocument {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pool: Vec<FilePool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    listener: Vec<FileListener>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    name: String,
    quorum: Option<String>,
    initial_state: Option<String>,
    replicas: Option<u32>,
    zone_spread: Option<bool>,
    grpc_xds: Option<bool>,
    damping: Option<FileDamping>,
    check: Option<FileCheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backend: Vec<FileBackend>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDamping {
    half_life: Option<FileDuration>,
    penalty: Option<u32>,
    suppress: Option<u32>,
    reuse: Option<u32>,
    max_suppress: Option<FileDuration>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    name: String,
    address: String,
    weight: Option<u32>,
    admin_state: Option<String>,
    backup: Option<bool>,
    zone: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    kind: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<String>,
    expect_body: Option<String>,
    expect_body_regex: Option<String>,
    expect_negate: Option<bool>,
    interval: Option<FileDuration>,
    fast_interval: Option<FileDuration>,
    down_interval: Option<FileDuration>,
    timeout: Option<FileDuration>,
    rise: Option<u32>,
    fall: Option<u32>,
    jitter_percent: Option<u32>,
    port: Option<u16>,
    address: Option<String>,
    tcp_send: Option<String>,
    tcp_expect: Option<String>,
    grpc_service: Option<String>,
    tls_server_name: Option<String>,
    tls_ca_file: Option<String>,
    tls_insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tls_alpn: Vec<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
    /// A TOML table has no order: headers are read sorted by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: String,
    bind: String,
    pool: String,
    balance: Option<String>,
    connect_timeout: Option<FileDuration>,
    retries: Option<u32>,
    on_no_backend: Option<String>,
    max_connections: Option<u32>,
    idle_timeout: Option<FileDuration>,
    max_connections_per_backend: Option<u32>,
    /// `v1`, `v2` or `none`.
    send_proxy: Option<String>,
    /// A duration or `off`.
    tcp_keepalive: Option<FileDuration>,
    passive_failures: Option<u32>,
    passive_ejection: Option<FileDuration>,
    passive_max_percent: Option<u32>,
    shutdown_sessions_on_down: Option<bool>,
}

/// A duration as written in the file: a string with a unit (`"500ms"`,
/// `"2s"`) or a TOML integer, which is milliseconds (as a bare number is in
/// HAProxy and in a duration string). Checked by [`FileDuration::read`], so
/// the error names the field.
#[derive(Debug, Clone, PartialEq)]
enum FileDuration {
    Millis(i64),
    Text(String),
}

impl FileDuration {
    fn write(d: Duration) -> Self {
        FileDuration::Text(duration::format(d))
    }

    fn read(value: Option<Self>, path: &str) -> Result<Option<Duration>, FieldError> {
        match value {
            None => Ok(None),
            Some(FileDuration::Millis(ms)) => u64::try_from(ms)
                .map(|ms| Some(Duration::from_millis(ms)))
                .map_err(|_| FieldError::new(path, format!("negative duration {ms}"))),
            Some(FileDuration::Text(v)) => duration::parse(&v)
                .map(Some)
                .map_err(|e| FieldError::new(path, e)),
        }
    }
}

impl Serialize for FileDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FileDuration::Millis(ms) => s.serialize_i64(*ms),
            FileDuration::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FileDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a duration such as \"500ms\" or \"2s\", or an integer number of milliseconds",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileDuration, E> {
                Ok(FileDuration::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileDuration, E> {
                Ok(FileDuration::Millis(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileDuration, E> {
                Ok(FileDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A name parsed by its type's `FromStr` (the one place its names live).
fn parse<T: FromStr<Err = String>>(
    value: Option<String>,
    path: &str,
) -> Result<Option<T>, FieldError> {
    value
        .map(|v| v.parse().map_err(|e| FieldError::new(path, e)))
        .transpose()
}

fn path_string(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.to_string_lossy().into_owned())
}

impl FileDocument {
    pub(super) fn into_document(self) -> Result<Document, FieldError> {
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

impl TryFrom<&Document> for FileDocument {
    type Error = FieldError;

    fn try_from(doc: &Document) -> Result<Self, FieldError> {
        let Document { pools, listeners } = doc;
        Ok(FileDocument {
            pool: pools
                .iter()
                .enumerate()
                .map(|(i, p)| FilePool::try_from(p).map_err(|e| e.within(&format!("pool[{i}]"))))
                .collect::<Result<_, _>>()?,
            listener: listeners.iter().map(FileListener::from).collect(),
        })
    }
}

impl FilePool {
    fn into_spec(self) -> Result<PoolSpec, FieldError> {
        let FilePool {
            name,
            quorum,
            initial_state,
            replicas,
            zone_spread,
            grpc_xds,
            damping,
            check,
            backend,
        } = self;
        let backends = FieldNames::Toml.backends();
        let backends = backend
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let FileBackend {
                    name,
                    address,
                    weight,
                    admin_state,
                    backup,
                    zone,
                } = b;
                Ok(BackendSpec {
                    name,
                    address,
                    weight: weight.unwrap_or(1),
                    admin_state: parse(admin_state, &format!("{backends}[{i}].admin_state"))?
                        .unwrap_or_default(),
                    backup: backup.unwrap_or(false),
                    zone: zone.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        Ok(PoolSpec {
            name,
            backends,
            check: check
                .map(|c| c.into_spec().map_err(|e| e.within("check")))
                .transpose()?,
            quorum: parse(quorum, "quorum")?.unwrap_or_default(),
            initial_state: parse(initial_state, "initial_state")?.unwrap_or(HealthState::Down),
            replicas: replicas.unwrap_or(DEFAULT_REPLICAS),
            zone_spread: zone_spread.unwrap_or(false),
            grpc_xds: grpc_xds.unwrap_or(false),
            damping: damping
                .map(|d| d.into_spec().map_err(|e| e.within("damping")))
                .transpose()?,
        })
    }
}

impl TryFrom<&PoolSpec> for FilePool {
    type Error = FieldError;

    fn try_from(p: &PoolSpec) -> Result<Self, FieldError> {
        let PoolSpec {
            name,
            backends,
            check,
            quorum,
            initial_state,
            replicas,
            zone_spread,
            damping,
            grpc_xds,
        } = p;
        Ok(FilePool {
            name: name.clone(),
            quorum: Some(quorum.as_str().into()),
            initial_state: Some(initial_state.as_str().into()),
            replicas: Some(*replicas),
            zone_spread: Some(*zone_spread),
            grpc_xds: Some(*grpc_xds),
            damping: damping.as_ref().map(FileDamping::from),
            check: check
                .as_ref()
                .map(|c| FileCheck::try_from(c).map_err(|e| e.within("check")))
                .transpose()?,
            backend: backends
                .iter()
                .map(|b| {
                    let BackendSpec {
                        name,
                        address,
                        weight,
                        admin_state,
                        backup,
                        zone,
                    } = b;
                    FileBackend {
                        name: name.clone(),
                        address: address.clone(),
                        weight: Some(*weight),
                        admin_state: Some(admin_state.as_str().into()),
                        backup: Some(*backup),
                        zone: (!zone.is_empty()).then(|| zone.clone()),
                    }
                })
                .collect(),
        })
    }
}

impl FileDamping {
    fn into_spec(self) -> Result<DampingSpec, FieldError> {
        let FileDamping {
            half_life,
            penalty,
            suppress,
            reuse,
            max_suppress,
        } = self;
        let d = DampingSpec::default();
        Ok(DampingSpec {
            half_life: FileDuration::read(half_life, "half_life")?.unwrap_or(d.half_life),
            penalty: penalty.unwrap_or(d.penalty),
            suppress: suppress.unwrap_or(d.suppress),
            reuse: reuse.unwrap_or(d.reuse),
            max_suppress: FileDuration::read(max_suppress, "max_suppress")?
                .unwrap_or(d.max_suppress),
        })
    }
}

impl From<&DampingSpec> for FileDamping {
    fn from(d: &DampingSpec) -> Self {
        let DampingSpec {
            half_life,
            penalty,
            suppress,
            reuse,
            max_suppress,
        } = d;
        FileDamping {
            half_life: Some(FileDuration::write(*half_life)),
            penalty: Some(*penalty),
            suppress: Some(*suppress),
            reuse: Some(*reuse),
            max_suppress: Some(FileDuration::write(*max_suppress)),
        }
    }
}

impl FileCheck {
    fn into_spec(self) -> Result<CheckSpec, FieldError> {
        let FileCheck {
            kind,
            method,
            path,
            host,
            expect_status,
            expect_body,
            expect_body_regex,
            expect_negate,
            interval,
            fast_interval,
            down_interval,
            timeout,
            rise,
            fall,
            jitter_percent,
            port,
            address,
            tcp_send,
            tcp_expect,
            grpc_service,
            tls_server_name,
            tls_ca_file,
            tls_insecure,
            tls_alpn,
            tls_client_cert,
            tls_client_key,
            headers,
        } = self;
        let d = CheckSpec::http_default();
        let interval = FileDuration::read(interval, "interval")?.unwrap_or(d.interval);
        let expect_body = BodyMatch::from_parts(expect_body, expect_body_regex)?;
        Ok(CheckSpec {
            kind: parse(kind, "kind")?.unwrap_or(d.kind),
            method: method.unwrap_or(d.method),
            path: path.unwrap_or(d.path),
            host,
            headers: headers.into_iter().collect(),
            expect_status: parse(expect_status, "expect_status")?.unwrap_or(d.expect_status),
            expect_body,
            expect_negate: expect_negate.unwrap_or(d.expect_negate),
            interval,
            // HAProxy: fastinter and downinter default to inter, timeout check to inter.
            fast_interval: FileDuration::read(fast_interval, "fast_interval")?.unwrap_or(interval),
            down_interval: FileDuration::read(down_interval, "down_interval")?.unwrap_or(interval),
            timeout: FileDuration::read(timeout, "timeout")?.unwrap_or(interval),
            rise: rise.unwrap_or(d.rise),
            fall: fall.unwrap_or(d.fall),
            port,
            address,
            tcp_send,
            tcp_expect,
            grpc_service,
            jitter_percent: jitter_percent.unwrap_or(d.jitter_percent),
            tls: TlsSpec {
                server_name: tls_server_name,
                ca_file: tls_ca_file.map(Into::into),
                insecure: tls_insecure.unwrap_or(false),
                alpn: tls_alpn,
                client_cert: tls_client_cert.map(Into::into),
                client_key: tls_client_key.map(Into::into),
            },
        })
    }
}

impl TryFrom<&CheckSpec> for FileCheck {
    type Error = FieldError;

    fn try_from(c: &CheckSpec) -> Result<Self, FieldError> {
        let CheckSpec {
            kind,
            method,
            path,
            host,
            headers,
            expect_status,
            expect_body,
            expect_negate,
            interval,
            fast_interval,
            down_interval,
            timeout,
            rise,
            fall,
            port,
            address,
            tcp_send,
            tcp_expect,
            grpc_service,
            jitter_percent,
            tls:
                TlsSpec {
                    server_name,
                    ca_file,
                    insecure,
                    alpn,
                    client_cert,
                    client_key,
                },
        } = c;
        let mut table = BTreeMap::new();
        for (i, (name, value)) in headers.iter().enumerate() {
            if table.insert(name.clone(), value.clone()).is_some() {
                return Err(FieldError::new(
                    format!("headers[{i}].name"),
                    format!("header {name:?} is set twice; a TOML table holds each name once"),
                ));
            }
        }
        let (body, regex) = match expect_body {
            Some(BodyMatch::Substring(s)) => (Some(s.clone()), None),
            Some(BodyMatch::Regex(r)) => (None, Some(r.clone())),
            None => (None, None),
        };
        Ok(FileCheck {
            kind: Some(kind.as_str().into()),
            method: Some(method.clone()),
            path: Some(path.clone()),
            host: host.clone(),
            expect_status: Some(expect_status.to_string()),
            expect_body: body,
            expect_body_regex: regex,
            expect_negate: Some(*expect_negate),
            interval: Some(FileDuration::write(*interval)),
            fast_interval: Some(FileDuration::write(*fast_interval)),
            down_interval: Some(FileDuration::write(*down_interval)),
            timeout: Some(FileDuration::write(*timeout)),
            rise: Some(*rise),
            fall: Some(*fall),
            jitter_percent: Some(*jitter_percent),
            port: *port,
            address: address.clone(),
            tcp_send: tcp_send.clone(),
            tcp_expect: tcp_expect.clone(),
            grpc_service: grpc_service.clone(),
            tls_server_name: server_name.clone(),
            tls_ca_file: path_string(ca_file),
            tls_insecure: Some(*insecure),
            tls_alpn: alpn.clone(),
            tls_client_cert: path_string(client_cert),
            tls_client_key: path_string(client_key),
            headers: table,
        })
    }
}

impl FileListener {
    /// The listener: [`ListenerSpec::new`]'s defaults, overridden by what
    /// the file sets.
    fn into_spec(self) -> Result<ListenerSpec, FieldError> {
        let FileListener {
            name,
            bind,
            pool,
            balance,
            connect_timeout,
            retries,
            on_no_backend,
            max_connections,
            idle_timeout,
            max_connections_per_backend,
            send_proxy,
            tcp_keepalive,
            passive_failures,
            passive_ejection,
            passive_max_percent,
            shutdown_sessions_on_down,
        } = self;
        let bind = parse_bind(&bind).map_err(|e| FieldError::new("bind", e))?;
        let d = ListenerSpec::new(&name, bind, &pool);
        Ok(ListenerSpec {
            balance: parse(balance, "balance")?.unwrap_or(d.balance),
            connect_timeout: FileDuration::read(connect_timeout, "connect_timeout")?
                .unwrap_or(d.connect_timeout),
            retries: retries.unwrap_or(d.retries),
            on_no_backend: parse(on_no_backend, "on_no_backend")?.unwrap_or(d.on_no_backend),
            max_connections: max_connections.unwrap_or(d.max_connections),
            idle_timeout: FileDuration::read(idle_timeout, "idle_timeout")?
                .unwrap_or(d.idle_timeout),
            max_connections_per_backend: max_connections_per_backend
                .unwrap_or(d.max_connections_per_backend),
            send_proxy: match send_proxy.as_deref() {
                None => d.send_proxy,
                Some("none") => None,
                Some(_) => parse(send_proxy, "send_proxy")?,
            },
            tcp_keepalive: match tcp_keepalive {
                None => d.tcp_keepalive,
                Some(FileDuration::Text(off)) if off == "off" => None,
                v => FileDuration::read(v, "tcp_keepalive")?,
            },
            passive_failures: passive_failures.unwrap_or(d.passive_failures),
            passive_ejection: FileDuration::read(passive_ejection, "passive_ejection")?
                .unwrap_or(d.passive_ejection),
            passive_max_percent: passive_max_percent.unwrap_or(d.passive_max_percent),
            shutdown_sessions_on_down: shutdown_sessions_on_down
                .unwrap_or(d.shutdown_sessions_on_down),
            ..d
        })
    }
}

impl From<&ListenerSpec> for FileListener {
    fn from(l: &ListenerSpec) -> Self {
        let ListenerSpec {
            name,
            bind,
            pool,
            balance,
            connect_timeout,
            retries,
            on_no_backend,
            max_connections,
            idle_timeout,
            max_connections_per_backend,
            send_proxy,
            tcp_keepalive,
            passive_failures,
            passive_ejection,
            passive_max_percent,
            shutdown_sessions_on_down,
        } = l;
        FileListener {
            name: name.clone(),
            bind: bind.to_string(),
            pool: pool.clone(),
            balance: Some(balance.as_str().into()),
            connect_timeout: Some(FileDuration::write(*connect_timeout)),
            retries: Some(*retries),
            on_no_backend: Some(on_no_backend.as_str().into()),
            max_connections: Some(*max_connections),
            idle_timeout: Some(FileDuration::write(*idle_timeout)),
            max_connections_per_backend: Some(*max_connections_per_backend),
            send_proxy: Some(send_proxy.map_or("none", |p| p.as_str()).into()),
            tcp_keepalive: Some(match tcp_keepalive {
                Some(d) => FileDuration::write(*d),
                None => FileDuration::Text("off".into()),
            }),
            passive_failures: Some(*passive_failures),
            passive_ejection: Some(FileDuration::write(*passive_ejection)),
            passive_max_percent: Some(*passive_max_percent),
            shutdown_sessions_on_down: Some(*shutdown_sessions_on_down),
        }
    }
}
