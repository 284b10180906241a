//! Store key layout and the versioned values stored under it.
//!
//! ```text
//! {prefix}pools/{pool}                       StoredPool    (no lease)
//! {prefix}agents/{agent_id}                  StoredAgent   (agent's session lease)
//! {prefix}verdicts/{agent_id}/{pool}/{backend} StoredVerdict (same lease)
//! {prefix}damping/{pool}/{backend}           StoredDamping (no lease; damped pools only)
//! {prefix}admin/{pool}/{backend}             StoredAdmin   (no lease; operator overrides)
//! {prefix}decisions/{pool}/{backend}         StoredDecision (no lease; last decided state)
//! ```
//!
//! Values are protobuf messages with a `schema` number; readers skip values
//! with a newer schema than they know instead of misreading them.

use prost::Message;
use trackwire_core::convert::{health_from_pb, health_to_pb};
use trackwire_proto::v1 as pb;

use crate::damper::DampState;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Pool(&'a str),
    Agent(&'a str),
    Verdict {
        agent: &'a str,
        pool: &'a str,
        backend: &'a str,
    },
    Damping {
        pool: &'a str,
        backend: &'a str,
    },
    Admin {
        pool: &'a str,
        backend: &'a str,
    },
    Decision {
        pool: &'a str,
        backend: &'a str,
    },
    Other,
}

impl Keys {
    /// `prefix` must start and end with `/`, e.g. the default `/trackwire/`.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(format!(
                "invalid store prefix {prefix:?}: must start and end with '/', e.g. /trackwire/"
            ));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
        })
    }

    pub fn root(&self) -> &str {
        &self.prefix
    }

    pub fn pools(&self) -> String {
        format!("{}pools/", self.prefix)
    }

    pub fn pool(&self, name: &str) -> String {
        format!("{}pools/{name}", self.prefix)
    }

    pub fn agent(&self, id: &str) -> String {
        format!("{}agents/{id}", self.prefix)
    }

    pub fn verdict(&self, agent: &str, pool: &str, backend: &str) -> String {
        format!("{}verdicts/{agent}/{pool}/{backend}", self.prefix)
    }

    pub fn damping(&self, pool: &str, backend: &str) -> String {
        format!("{}damping/{pool}/{backend}", self.prefix)
    }

    pub fn damping_prefix(&self, pool: &str) -> String {
        format!("{}damping/{pool}/", self.prefix)
    }

    pub fn admin(&self, pool: &str, backend: &str) -> String {
        format!("{}admin/{pool}/{backend}", self.prefix)
    }

    pub fn admin_prefix(&self, pool: &str) -> String {
        format!("{}admin/{pool}/", self.prefix)
    }

    pub fn decision(&self, pool: &str, backend: &str) -> String {
        format!("{}decisions/{pool}/{backend}", self.prefix)
    }

    pub fn decision_prefix(&self, pool: &str) -> String {
        format!("{}decisions/{pool}/", self.prefix)
    }

    /// Every verdict key of one agent.
    pub fn agent_verdicts(&self, agent: &str) -> String {
        format!("{}verdicts/{agent}/", self.prefix)
    }

    pub fn parse<'a>(&self, key: &'a str) -> KeyKind<'a> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        if let Some(name) = rest.strip_prefix("pools/") {
            return KeyKind::Pool(name);
        }
        if let Some(id) = rest.strip_prefix("agents/") {
            return KeyKind::Agent(id);
        }
        if let Some(v) = rest.strip_prefix("verdicts/") {
            let mut parts = v.splitn(3, '/');
            if let (Some(agent), Some(pool), Some(backend)) =
                (parts.next(), parts.next(), parts.next())
            {
                return KeyKind::Verdict {
                    agent,
                    pool,
                    backend,
                };
            }
        }
        if let Some((pool, backend)) = rest
            .strip_prefix("damping/")
            .and_then(|r| r.split_once('/'))
        {
            return KeyKind::Damping { pool, backend };
        }
        if let Some((pool, backend)) = rest.strip_prefix("admin/").and_then(|r| r.split_once('/')) {
            return KeyKind::Admin { pool, backend };
        }
        if let Some((pool, backend)) = rest
            .strip_prefix("decisions/")
            .and_then(|r| r.split_once('/'))
        {
            return KeyKind::Decision { pool, backend };
        }
        KeyKind::Other
    }
}

pub fn encode_pool(spec: pb::PoolSpec) -> Vec<u8> {
    pb::StoredPool {
        schema: SCHEMA,
        spec: Some(spec),
    }
    .encode_to_vec()
}

pub fn decode_pool(bytes: &[u8]) -> Result<pb::PoolSpec, String> {
    let s = pb::StoredPool::decode(bytes).map_err(|e| e.to_string())?;
    if s.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            s.schema
        ));
    }
    s.spec.ok_or_else(|| "missing spec".to_string())
}

pub fn encode_agent(a: pb::StoredAgent) -> Vec<u8> {
    pb::StoredAgent {
        schema: SCHEMA,
        ..a
    }
    .encode_to_vec()
}

pub fn decode_agent(bytes: &[u8]) -> Result<pb::StoredAgent, String> {
    let a = pb::StoredAgent::decode(bytes).map_err(|e| e.to_string())?;
    if a.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            a.schema
        ));
    }
    Ok(a)
}

pub fn encode_verdict(v: pb::Verdict) -> Vec<u8> {
    pb::StoredVerdict {
        schema: SCHEMA,
        verdict: Some(v),
    }
    .encode_to_vec()
}

pub fn decode_verdict(bytes: &[u8]) -> Result<pb::Verdict, String> {
    let s = pb::StoredVerdict::decode(bytes).map_err(|e| e.to_string())?;
    if s.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            s.schema
        ));
    }
    s.verdict.ok_or_else(|| "missing verdict".to_string())
}

pub fn encode_damping(d: &DampState) -> Vec<u8> {
    pb::StoredDamping {
        schema: SCHEMA,
        last_state: health_to_pb(d.last_state),
        penalty: d.penalty,
        at_ms: d.at_ms,
        suppressed: d.suppressed,
        until_ms: d.until_ms,
    }
    .encode_to_vec()
}

pub fn decode_damping(bytes: &[u8]) -> Result<DampState, String> {
    let s = pb::StoredDamping::decode(bytes).map_err(|e| e.to_string())?;
    if s.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            s.schema
        ));
    }
    Ok(DampState {
        last_state: health_from_pb(s.last_state, "last_state").map_err(|e| e.to_string())?,
        penalty: s.penalty,
        at_ms: s.at_ms,
        suppressed: s.suppressed,
        until_ms: s.until_ms,
    })
}

pub fn encode_admin(a: pb::StoredAdmin) -> Vec<u8> {
    pb::StoredAdmin {
        schema: SCHEMA,
        ..a
    }
    .encode_to_vec()
}

pub fn decode_admin(bytes: &[u8]) -> Result<pb::StoredAdmin, String> {
    let a = pb::StoredAdmin::decode(bytes).map_err(|e| e.to_string())?;
    if a.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            a.schema
        ));
    }
    Ok(a)
}

pub fn encode_decision(d: pb::StoredDecision) -> Vec<u8> {
    pb::StoredDecision {
        schema: SCHEMA,
        ..d
    }
    .encode_to_vec()
}

pub fn decode_decision(bytes: &[u8]) -> Result<pb::StoredDecision, String> {
    let d = pb::StoredDecision::decode(bytes).map_err(|e| e.to_string())?;
    if d.schema > SCHEMA {
        return Err(format!(
            "schema {} is newer than this build's {SCHEMA}",
            d.schema
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let k = Keys::new("/tw/").expect("valid prefix");
        assert_eq!(k.parse(&k.pool("p")), KeyKind::Pool("p"));
        assert_eq!(k.parse(&k.agent("a")), KeyKind::Agent("a"));
        assert_eq!(
            k.parse(&k.verdict("a", "p", "b")),
            KeyKind::Verdict {
                agent: "a",
                pool: "p",
                backend: "b"
            }
        );
        assert_eq!(
            k.parse(&k.damping("p", "b")),
            KeyKind::Damping {
                pool: "p",
                backend: "b"
            }
        );
        assert_eq!(
            k.parse(&k.admin("p", "b")),
            KeyKind::Admin {
                pool: "p",
                backend: "b"
            }
        );
        assert_eq!(
            k.parse(&k.decision("p", "b")),
            KeyKind::Decision {
                pool: "p",
                backend: "b"
            }
        );
        assert_eq!(k.parse("/other/pools/p"), KeyKind::Other);
        assert!(Keys::new("trackwire").is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let bytes = pb::StoredPool {
            schema: SCHEMA + 1,
            spec: Some(pb::PoolSpec::default()),
        }
        .encode_to_vec();
        assert!(decode_pool(&bytes).unwrap_err().contains("newer"));
    }
}
