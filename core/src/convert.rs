//! Conversions between `trackwire.v1` wire types and domain types.
//!
//! Wire → domain validates and returns a [`FieldError`] naming the field path
//! (`pools[2].check.rise`); domain → wire cannot fail.

use std::time::Duration;

use trackwire_proto::v1 as pb;

use crate::error::{FieldError, FieldNames};
use crate::map::{Endpoint, PoolUpdate};
use crate::model::{
    AdminState, BackendSpec, BodyMatch, CheckKind, CheckSpec, DEFAULT_REPLICAS, DampingSpec,
    HealthState, PoolSpec, Quorum, StatusSet, TlsSpec,
};

pub fn health_to_pb(s: HealthState) -> i32 {
    match s {
        HealthState::Up => pb::HealthState::Up as i32,
        HealthState::Down => pb::HealthState::Down as i32,
    }
}

pub fn health_from_pb(v: i32, path: &str) -> Result<HealthState, FieldError> {
    match pb::HealthState::try_from(v) {
        Ok(pb::HealthState::Up) => Ok(HealthState::Up),
        Ok(pb::HealthState::Down) => Ok(HealthState::Down),
        _ => Err(FieldError::new(path, format!("invalid health state {v}"))),
    }
}

pub fn admin_to_pb(s: AdminState) -> i32 {
    match s {
        AdminState::Ready => pb::AdminState::Ready as i32,
        AdminState::Drain => pb::AdminState::Drain as i32,
        AdminState::Maint => pb::AdminState::Maint as i32,
    }
}

pub fn admin_from_pb(v: i32, path: &str) -> Result<AdminState, FieldError> {
    match pb::AdminState::try_from(v) {
        Ok(pb::AdminState::Unspecified | pb::AdminState::Ready) => Ok(AdminState::Ready),
        Ok(pb::AdminState::Drain) => Ok(AdminState::Drain),
        Ok(pb::AdminState::Maint) => Ok(AdminState::Maint),
        Err(_) => Err(FieldError::new(path, format!("invalid admin state {v}"))),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn check_to_pb(c: &CheckSpec) -> pb::CheckSpec {
    pb::CheckSpec {
        kind: match c.kind {
            CheckKind::Http => pb::CheckKind::Http,
            CheckKind::Https => pb::CheckKind::Https,
            CheckKind::Tcp => pb::CheckKind::Tcp,
            CheckKind::Grpc => pb::CheckKind::Grpc,
        } as i32,
        method: c.method.clone(),
        path: c.path.clone(),
        host: c.host.clone().unwrap_or_default(),
        headers: c
            .headers
            .iter()
            .map(|(name, value)| pb::HeaderSpec {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        expect_status: c.expect_status.to_string(),
        expect_body: match &c.expect_body {
            Some(BodyMatch::Substring(s)) => s.clone(),
            _ => String::new(),
        },
        expect_body_regex: match &c.expect_body {
            Some(BodyMatch::Regex(r)) => r.clone(),
            _ => String::new(),
        },
        expect_negate: c.expect_negate,
        address: c.address.clone().unwrap_or_default(),
        tcp_send: c.tcp_send.clone().unwrap_or_default(),
        tcp_expect: c.tcp_expect.clone().unwrap_or_default(),
        grpc_service: c.grpc_service.clone().unwrap_or_default(),
        tls_alpn: c.tls.alpn.clone(),
        tls_client_cert: path_str(c.tls.client_cert.as_ref()),
        tls_client_key: path_str(c.tls.client_key.as_ref()),
        jitter_percent: Some(c.jitter_percent),
        interval_ms: ms(c.interval),
        fast_interval_ms: ms(c.fast_interval),
        down_interval_ms: ms(c.down_interval),
        timeout_ms: ms(c.timeout),
        rise: c.rise,
        fall: c.fall,
        port: c.port.map(u32::from).unwrap_or(0),
        tls_server_name: c.tls.server_name.clone().unwrap_or_default(),
        tls_ca_file: c
            .tls
            .ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        tls_insecure: c.tls.insecure,
    }
}

fn path_str(p: Option<&std::path::PathBuf>) -> String {
    p.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl TryFrom<&pb::CheckSpec> for CheckSpec {
    type Error = FieldError;

    fn try_from(c: &pb::CheckSpec) -> Result<Self, FieldError> {
        let d = CheckSpec::http_default();
        let kind = match pb::CheckKind::try_from(c.kind) {
            Ok(pb::CheckKind::Unspecified | pb::CheckKind::Http) => CheckKind::Http,
            Ok(pb::CheckKind::Https) => CheckKind::Https,
            Ok(pb::CheckKind::Tcp) => CheckKind::Tcp,
            Ok(pb::CheckKind::Grpc) => CheckKind::Grpc,
            Err(_) => return Err(FieldError::new("kind", format!("invalid kind {}", c.kind))),
        };
        // No default for 0: a zero here was once a sub-millisecond duration
        // truncated on the way out, and reading it as the default stored
        // `1us` as 2 s. Every valid spec sends each duration as >= 1 ms.
        let millis = |v: u64, field: &str| {
            if v == 0 {
                Err(FieldError::new(field, "must be greater than 0"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let expect_status = if c.expect_status.is_empty() {
            StatusSet::default()
        } else {
            c.expect_status
                .parse()
                .map_err(|e| FieldError::new("expect_status", e))?
        };
        let port = match c.port {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| FieldError::new("port", format!("port {p} is not 1-65535")))?,
            ),
        };
        let spec = CheckSpec {
            kind,
            method: non_empty(&c.method).unwrap_or(d.method),
            path: non_empty(&c.path).unwrap_or(d.path),
            host: non_empty(&c.host),
            headers: c
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            expect_status,
            expect_body: BodyMatch::from_parts(
                non_empty(&c.expect_body),
                non_empty(&c.expect_body_regex),
            )?,
            expect_negate: c.expect_negate,
            address: non_empty(&c.address),
            tcp_send: non_empty(&c.tcp_send),
            tcp_expect: non_empty(&c.tcp_expect),
            grpc_service: non_empty(&c.grpc_service),
            jitter_percent: c.jitter_percent.unwrap_or(d.jitter_percent),
            interval: millis(c.interval_ms, "interval_ms")?,
            fast_interval: millis(c.fast_interval_ms, "fast_interval_ms")?,
            down_interval: millis(c.down_interval_ms, "down_interval_ms")?,
            timeout: millis(c.timeout_ms, "timeout_ms")?,
            rise: if c.rise == 0 { d.rise } else { c.rise },
            fall: if c.fall == 0 { d.fall } else { c.fall },
            port,
            tls: TlsSpec {
                server_name: non_empty(&c.tls_server_name),
                ca_file: non_empty(&c.tls_ca_file).map(Into::into),
                insecure: c.tls_insecure,
                alpn: c.tls_alpn.clone(),
                client_cert: non_empty(&c.tls_client_cert).map(Into::into),
                client_key: non_empty(&c.tls_client_key).map(Into::into),
            },
        };
        spec.validate(FieldNames::Wire)?;
        Ok(spec)
    }
}

pub fn pool_to_pb(p: &PoolSpec) -> pb::PoolSpec {
    pb::PoolSpec {
        name: p.name.clone(),
        backends: p
            .backends
            .iter()
            .map(|b| pb::BackendSpec {
                name: b.name.clone(),
                address: b.address.clone(),
                weight: b.weight,
                admin_state: admin_to_pb(b.admin_state),
                backup: b.backup,
                zone: b.zone.clone(),
            })
            .collect(),
        check: p.check.as_ref().map(check_to_pb),
        quorum: match p.quorum {
            Quorum::Majority => pb::QuorumPolicy::Majority,
            Quorum::Any => pb::QuorumPolicy::Any,
            Quorum::All => pb::QuorumPolicy::All,
        } as i32,
        initial_state: health_to_pb(p.initial_state),
        replicas: p.replicas,
        zone_spread: p.zone_spread,
        damping: p.damping.as_ref().map(|d| pb::DampingSpec {
            half_life_ms: ms(d.half_life),
            penalty: d.penalty,
            suppress: d.suppress,
            reuse: d.reuse,
            max_suppress_ms: ms(d.max_suppress),
        }),
        grpc_xds: p.grpc_xds,
    }
}

/// The protobuf-encoded size of a pool spec (see [`crate::limits::MAX_POOL_SPEC_BYTES`]).
pub fn pool_encoded_len(p: &PoolSpec) -> usize {
    prost::Message::encoded_len(&pool_to_pb(p))
}

impl TryFrom<&pb::PoolSpec> for PoolSpec {
    type Error = FieldError;

    fn try_from(p: &pb::PoolSpec) -> Result<Self, FieldError> {
        let backends = p
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(BackendSpec {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    admin_state: admin_from_pb(
                        b.admin_state,
                        &format!("backends[{i}].admin_state"),
                    )?,
                    backup: b.backup,
                    zone: b.zone.clone(),
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        let check = p
            .check
            .as_ref()
            .map(|c| CheckSpec::try_from(c).map_err(|e| e.within("check")))
            .transpose()?;
        let quorum = match pb::QuorumPolicy::try_from(p.quorum) {
            Ok(pb::QuorumPolicy::Unspecified | pb::QuorumPolicy::Majority) => Quorum::Majority,
            Ok(pb::QuorumPolicy::Any) => Quorum::Any,
            Ok(pb::QuorumPolicy::All) => Quorum::All,
            Err(_) => {
                return Err(FieldError::new(
                    "quorum",
                    format!("invalid quorum {}", p.quorum),
                ));
            }
        };
        let initial_state = if p.initial_state == pb::HealthState::Unspecified as i32 {
            HealthState::Down
        } else {
            health_from_pb(p.initial_state, "initial_state")?
        };
        let spec = PoolSpec {
            name: p.name.clone(),
            backends,
            check,
            quorum,
            initial_state,
            replicas: if p.replicas == 0 {
                DEFAULT_REPLICAS
            } else {
                p.replicas
            },
            zone_spread: p.zone_spread,
            damping: p.damping.as_ref().map(|d| DampingSpec {
                half_life: Duration::from_millis(d.half_life_ms),
                penalty: d.penalty,
                suppress: d.suppress,
                reuse: d.reuse,
                max_suppress: Duration::from_millis(d.max_suppress_ms),
            }),
            grpc_xds: p.grpc_xds,
        };
        spec.validate(FieldNames::Wire)?;
        Ok(spec)
    }
}

pub fn endpoint_to_pb(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        backend: e.backend.clone(),
        address: e.address.clone(),
        weight: e.weight,
        admin_state: admin_to_pb(e.admin_state),
        state: health_to_pb(e.state),
        decided_at_ms: e.decided_at_ms,
        votes: e.votes,
        votes_up: e.votes_up,
        backup: e.backup,
        stale: e.stale,
    }
}

/// Identifies what a verdict is about: the backend's address and the check
/// run against it. A verdict counts only while its fingerprint matches the
/// backend's current spec, so changing an address or a check discards the
/// verdicts made before. Never 0 (0 marks "no fingerprint").
pub fn target_fingerprint(address: &str, check: &CheckSpec) -> u64 {
    fingerprint_with(address, &encode_check(check))
}

/// The encoded check, for [`fingerprint_with`] (encode once per pool).
pub fn encode_check(check: &CheckSpec) -> Vec<u8> {
    use prost::Message;
    check_to_pb(check).encode_to_vec()
}

/// [`target_fingerprint`] from an already encoded check.
pub fn fingerprint_with(address: &str, encoded_check: &[u8]) -> u64 {
    crate::hash::stable_hash(&[b"target-v1", address.as_bytes(), encoded_check]).max(1)
}

impl TryFrom<&pb::Endpoint> for Endpoint {
    type Error = FieldError;

    fn try_from(e: &pb::Endpoint) -> Result<Self, FieldError> {
        crate::model::validate_address(&e.address).map_err(|m| FieldError::new("address", m))?;
        Ok(Endpoint {
            backend: e.backend.clone(),
            address: e.address.clone(),
            weight: e.weight,
            admin_state: admin_from_pb(e.admin_state, "admin_state")?,
            state: health_from_pb(e.state, "state")?,
            decided_at_ms: e.decided_at_ms,
            votes: e.votes,
            votes_up: e.votes_up,
            backup: e.backup,
            stale: e.stale,
        })
    }
}

pub fn pool_update_to_pb(u: &PoolUpdate) -> pb::PoolUpdate {
    pb::PoolUpdate {
        pool: u.pool.clone(),
        upserts: u.upserts.iter().map(endpoint_to_pb).collect(),
        removals: u.removals.clone(),
        removed: u.removed,
    }
}

impl TryFrom<&pb::PoolUpdate> for PoolUpdate {
    type Error = FieldError;

    fn try_from(u: &pb::PoolUpdate) -> Result<Self, FieldError> {
        let upserts = u
            .upserts
            .iter()
            .enumerate()
            .map(|(i, e)| Endpoint::try_from(e).map_err(|err| err.within(&format!("upserts[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PoolUpdate {
            pool: u.pool.clone(),
            upserts,
            removals: u.removals.clone(),
            removed: u.removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Document;

    #[test]
    fn pool_round_trips_through_the_wire() {
        let doc = Document::parse(
            "[[pool]]\nname = \"p\"\nquorum = \"any\"\ninitial_state = \"up\"\n[pool.check]\nkind = \"https\"\npath = \"/readyz\"\nexpect_status = \"200-204\"\ntls_insecure = true\nport = 8443\n[pool.check.headers]\nX-A = \"b\"\n[[pool.backend]]\nname = \"b1\"\naddress = \"[::1]:6443\"\nadmin_state = \"drain\"\n",
        )
        .expect("valid");
        let pool = &doc.pools[0];
        let back = PoolSpec::try_from(&pool_to_pb(pool)).expect("round trip");
        assert_eq!(&back, pool);
    }

    #[test]
    fn durations_round_trip_exactly() {
        let doc = Document::parse(
            "[[pool]]\nname = \"p\"\n[pool.check]\ninterval = 1\nfast_interval = \"2000us\"\ndown_interval = 1500\ntimeout = \"1ms\"\n[pool.damping]\nhalf_life = 1\nmax_suppress = \"1s\"\n",
        )
        .expect("valid");
        let pool = &doc.pools[0];
        let c = pool.check.as_ref().expect("check");
        assert_eq!(
            (c.interval, c.fast_interval, c.down_interval, c.timeout),
            (
                Duration::from_millis(1),
                Duration::from_millis(2),
                Duration::from_millis(1500),
                Duration::from_millis(1)
            )
        );
        let back = PoolSpec::try_from(&pool_to_pb(pool)).expect("round trip");
        assert_eq!(&back, pool);
    }

    #[test]
    fn a_zero_duration_on_the_wire_is_refused_not_defaulted() {
        let mut c = check_to_pb(&CheckSpec::http_default());
        c.interval_ms = 0;
        let e = CheckSpec::try_from(&c).expect_err("0 ms");
        assert_eq!(e.path, "interval_ms");
        let mut c = check_to_pb(&CheckSpec::http_default());
        c.timeout_ms = 0;
        assert_eq!(
            CheckSpec::try_from(&c).expect_err("0 ms").path,
            "timeout_ms"
        );
    }

    #[test]
    fn wire_errors_name_the_field() {
        let mut p = pool_to_pb(&PoolSpec {
            check: Some(CheckSpec::http_default()),
            ..PoolSpec::new("p", vec![BackendSpec::new("b", "h:1")])
        });
        p.backends[0].address = "bad".into();
        assert_eq!(
            PoolSpec::try_from(&p).expect_err("bad address").path,
            "backends[0].address"
        );
        p.backends[0].address = "h:1".into();
        if let Some(c) = p.check.as_mut() {
            c.expect_status = "99".into();
        }
        assert_eq!(
            PoolSpec::try_from(&p).expect_err("bad status").path,
            "check.expect_status"
        );
        // Durations are named as the wire carries them, in milliseconds.
        if let Some(c) = p.check.as_mut() {
            c.expect_status = "200".into();
            c.interval_ms = 3_600_001;
        }
        assert_eq!(
            PoolSpec::try_from(&p).expect_err("interval over 1h").path,
            "check.interval_ms"
        );
        p.check = None;
        p.damping = Some(pb::DampingSpec {
            half_life_ms: 10_000,
            penalty: 1000,
            suppress: 2000,
            reuse: 750,
            max_suppress_ms: 1_000,
        });
        assert_eq!(
            PoolSpec::try_from(&p)
                .expect_err("max_suppress below half_life")
                .path,
            "damping.max_suppress_ms"
        );
    }
}
