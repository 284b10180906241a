//! Who is on the other end of a link: exactly one URI SAN
//! `spiffe://<trust-domain>/trackwire/<role>/<name>` in its certificate.
//!
//! The subject's CN is ignored. A certificate with no trackwire URI, with
//! several, with an unknown role, a name that could not be a store key part,
//! or a trust domain other than the verifier's is refused. Other URI SANs
//! (say a SPIFFE ID for another system) are left alone.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The trust domain `trackwire certs init` uses when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "trackwire.local";

/// The path segment every trackwire identity starts with.
const PATH_PREFIX: &str = "/trackwire/";

/// What a peer may do; see the role table in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Operators and their tools: every `AdminService` method.
    Admin,
    /// Probe agents: `ProbeService.Connect` under their own name.
    Agent,
    /// Data-plane proxies: `HealthMapService.Subscribe`.
    Proxy,
    /// The certificate a control-plane replica serves with.
    ControlPlane,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Agent, Role::Proxy, Role::ControlPlane];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Proxy => "proxy",
            Role::ControlPlane => "control-plane",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (one of admin, agent, proxy, control-plane)")
            })
    }
}

/// A verified peer (or this process's own certificate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub role: Role,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error(
        "certificate has no trackwire identity (a URI SAN spiffe://<trust-domain>/trackwire/<role>/<name>)"
    )]
    Missing,
    #[error("certificate has {0} trackwire identities ({1}); exactly one is allowed")]
    Several(usize, String),
    #[error("certificate identity {uri}: trust domain {found:?} is not {expected:?}")]
    TrustDomain {
        uri: String,
        found: String,
        expected: String,
    },
    #[error("identity {uri}: {reason}")]
    Malformed { uri: String, reason: String },
}

impl Identity {
    /// Checks the parts against the same rules a URI must pass.
    pub fn new(trust_domain: &str, role: Role, name: &str) -> Result<Self, String> {
        check_trust_domain(trust_domain)?;
        check_name(name)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            role,
            name: name.to_string(),
        })
    }

    /// `spiffe://<trust-domain>/trackwire/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}{PATH_PREFIX}{}/{}",
            self.trust_domain, self.role, self.name
        )
    }

    /// Parses a trackwire SPIFFE URI (any trust domain).
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let malformed = |reason: String| IdentityError::Malformed {
            uri: uri.to_string(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| malformed("not a spiffe:// URI".into()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| malformed("no path".into()))?;
        let path = format!("/{path}");
        let tail = path
            .strip_prefix(PATH_PREFIX)
            .ok_or_else(|| malformed(format!("path does not start with {PATH_PREFIX}")))?;
        let (role, name) = tail
            .split_once('/')
            .ok_or_else(|| malformed("expected /trackwire/<role>/<name>".into()))?;
        let role = Role::from_str(role).map_err(malformed)?;
        Identity::new(domain, role, name).map_err(malformed)
    }

    /// The identity in a DER certificate, for a verifier of `trust_domain`.
    pub fn from_cert(der: &[u8], trust_domain: &str) -> Result<Identity, IdentityError> {
        let id = Identity::from_own_cert(der)?;
        if id.trust_domain != trust_domain {
            return Err(IdentityError::TrustDomain {
                uri: id.uri(),
                found: id.trust_domain,
                expected: trust_domain.to_string(),
            });
        }
        Ok(id)
    }

    /// The identity in this process's own certificate: its trust domain is
    /// the one its peers must belong to.
    pub fn from_own_cert(der: &[u8]) -> Result<Identity, IdentityError> {
        let uris = trackwire_uris(der)?;
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Identity::parse_uri(one),
            several => Err(IdentityError::Several(several.len(), several.join(", "))),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Every URI SAN of `der` that claims to be a trackwire identity (a
/// `spiffe://` URI whose path starts with `/trackwire/`), malformed or not.
fn trackwire_uris(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .filter(|u| {
            u.strip_prefix("spiffe://")
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(_, p)| format!("/{p}").starts_with(PATH_PREFIX))
        })
        .collect())
}

/// The trust domain named by a `spiffe://<td>` URI SAN of a CA certificate.
pub fn ca_trust_domain(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u
            .strip_prefix("spiffe://")
            .map(|d| d.trim_end_matches('/').to_string())
            .filter(|d| !d.contains('/') && check_trust_domain(d).is_ok()),
        _ => None,
    })
}

/// A certificate's validity window and serial, for expiry checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// The subject, for messages.
    pub subject: String,
}

impl Validity {
    pub fn of(der: &[u8]) -> Result<Validity, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let at = |t: i64| {
            if t >= 0 {
                UNIX_EPOCH + Duration::from_secs(t.unsigned_abs())
            } else {
                UNIX_EPOCH
            }
        };
        Ok(Validity {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            serial: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
            subject: cert.subject().to_string(),
        })
    }

    /// Whether less than a third of the lifetime or 7 days is left at `now`.
    pub fn expiring_soon(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let left = self.not_after.duration_since(now).unwrap_or_default();
        left < lifetime / 3 || left < Duration::from_secs(7 * 86_400)
    }
}

/// SPIFFE trust domain rules: lowercase letters, digits, `.`, `-`, `_`.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err(format!("trust domain {td:?}: 1 to 255 characters"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(format!(
            "trust domain {td:?}: only lowercase letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// A name becomes a store key part (the agent id) and a file name: the
/// same rule as pool and backend names (`trackwire_core::model::validate_name`:
/// 1–63 letters, digits, `-`, `_`, `.`, starting with a letter or digit), so
/// no `/`, `..` or control character can escape a key prefix.
pub fn check_name(name: &str) -> Result<(), String> {
    trackwire_core::model::validate_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_name_the_part() {
        let id = Identity::new("example.org", Role::Agent, "agent-1").expect("valid");
        assert_eq!(id.uri(), "spiffe://example.org/trackwire/agent/agent-1");
        assert_eq!(Identity::parse_uri(&id.uri()).expect("parses"), id);
        for (uri, part) in [
            ("https://example.org/trackwire/agent/a", "spiffe://"),
            ("spiffe://example.org/other/agent/a", "path"),
            ("spiffe://example.org/trackwire/root/a", "unknown role"),
            ("spiffe://example.org/trackwire/agent/..", "invalid name"),
            ("spiffe://example.org/trackwire/agent/a/b", "invalid name"),
            ("spiffe://example.org/trackwire/agent/a\nb", "invalid name"),
            ("spiffe://Example.org/trackwire/agent/a", "lowercase"),
            ("spiffe://example.org/trackwire/agent/", "invalid name"),
        ] {
            let e = Identity::parse_uri(uri).expect_err(uri).to_string();
            assert!(e.contains(part), "{uri}: {e}");
        }
    }

    #[test]
    fn expiring_soon_is_a_third_of_the_lifetime_or_a_week() {
        let day = Duration::from_secs(86_400);
        let v = Validity {
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH + 90 * day,
            serial: String::new(),
            subject: String::new(),
        };
        assert!(!v.expiring_soon(UNIX_EPOCH + 59 * day));
        assert!(v.expiring_soon(UNIX_EPOCH + 61 * day));
        let long = Validity {
            not_after: UNIX_EPOCH + 3650 * day,
            ..v
        };
        assert!(!long.expiring_soon(UNIX_EPOCH + 2000 * day));
        assert!(long.expiring_soon(UNIX_EPOCH + 3644 * day));
    }
}
