//! The certificate tooling behind `trackwire certs init` and `trackwire
//! certs issue` (rcgen): a CA whose certificate names its trust domain
//! (URI SAN `spiffe://<trust-domain>`), and leaves carrying exactly one
//! trackwire identity. Files are written whole (temp file, then rename) and
//! keys are readable by their owner only, so a process reloading them never
//! sees half a key.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{Identity, Role, ca_trust_domain, check_trust_domain};

/// Default lifetime of a leaf certificate.
pub const DEFAULT_LEAF_DAYS: u32 = 90;
/// Lifetime of a CA made by `certs init`.
pub const CA_DAYS: u32 = 3650;
/// Leaves start this long before they are made, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A CA in memory: its certificate (PEM) and signing key.
pub struct Ca {
    pub cert_pem: String,
    pub trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
}

/// One leaf to sign. Tests build odd ones (no URI, two URIs, expired);
/// [`Ca::issue`] builds the normal one.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub uris: Vec<String>,
    /// DNS names or IP addresses the certificate is valid for as a server.
    pub sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Usable as a TLS server certificate (control-plane replicas).
    pub server: bool,
}

/// A signed leaf: certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl LeafSpec {
    /// The leaf `certs issue` makes for `identity`: valid `days` from now,
    /// a server certificate too for the control-plane role.
    pub fn for_identity(identity: &Identity, sans: &[String], days: u32) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            common_name: identity.name.clone(),
            uris: vec![identity.uri()],
            sans: sans.to_vec(),
            not_before: now - BACKDATE,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
            server: identity.role == Role::ControlPlane,
        }
    }
}

impl Ca {
    /// A new CA for `trust_domain`, valid `days`.
    pub fn generate(trust_domain: &str, days: u32) -> Result<Ca, PkiError> {
        check_trust_domain(trust_domain).map_err(PkiError::Invalid)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("trackwire CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            trust_domain: trust_domain.to_string(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads `DIR/ca.crt` and `DIR/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let cert_pem = fs::read_to_string(&crt).map_err(|e| file_err(&crt, e))?;
        let key_pem = fs::read_to_string(&key).map_err(|e| file_err(&key, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| file_err(&crt, e))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| file_err(&crt, e))?;
        let trust_domain = ca_trust_domain(&der).ok_or_else(|| {
            file_err(
                &crt,
                "no spiffe://<trust-domain> URI SAN (not made by `trackwire certs init`?)",
            )
        })?;
        Ok(Ca {
            cert_pem,
            trust_domain,
            issuer,
        })
    }

    /// A leaf for `role`/`name` with the extra server names `sans`.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        sans: &[String],
        days: u32,
    ) -> Result<Leaf, PkiError> {
        let identity = Identity::new(&self.trust_domain, role, name).map_err(PkiError::Invalid)?;
        if days == 0 {
            return Err(PkiError::Invalid("--days: at least 1".into()));
        }
        self.sign(&LeafSpec::for_identity(&identity, sans, days))
    }

    /// Signs any leaf (tests use it for deliberately wrong ones).
    pub fn sign(&self, spec: &LeafSpec) -> Result<Leaf, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.clone());
        params.distinguished_name = dn;
        let mut names = Vec::new();
        for u in &spec.uris {
            names.push(SanType::URI(u.clone().try_into()?));
        }
        for s in &spec.sans {
            names.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_dns_name(s)?;
                    SanType::DnsName(s.clone().try_into()?)
                }
            });
        }
        params.subject_alt_names = names;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if spec.server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `DIR/ca.crt` and `DIR/ca.key`; refuses to replace a CA key.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let key = dir.join("ca.key");
        if key.exists() {
            return Err(file_err(
                &key,
                "exists; refusing to replace a CA key (move it away to make a new CA)",
            ));
        }
        write_atomic(&key, self.issuer.key().serialize_pem().as_bytes(), true)?;
        write_atomic(&dir.join("ca.crt"), self.cert_pem.as_bytes(), false)
    }
}

impl Leaf {
    /// Writes `DIR/ROLE-NAME.crt` and `DIR/ROLE-NAME.key`, each whole; returns their paths.
    pub fn write(
        &self,
        dir: &Path,
        role: Role,
        name: &str,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{role}-{name}.crt"));
        let key = dir.join(format!("{role}-{name}.key"));
        // The key first: a reloading process waits for a certificate that
        // matches it, and never pairs a new certificate with the old key.
        write_atomic(&key, self.key_pem.as_bytes(), true)?;
        write_atomic(&crt, self.cert_pem.as_bytes(), false)?;
        Ok((crt, key))
    }
}

fn check_dns_name(s: &str) -> Result<(), PkiError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').enumerate().all(|(i, label)| {
            !label.is_empty()
                && label.len() <= 63
                && ((label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-'))
                    || (i == 0 && label == "*"))
        });
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "--san {s:?}: neither an IP address nor a DNS name"
        )))
    }
}

/// Writes `bytes` to a temp file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

use rustls::pki_types::pem::PemObject;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_leaves_carry_one_identity_of_the_cas_trust_domain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("example.org", 30).expect("ca");
        ca.write(dir.path()).expect("write ca");
        let again = Ca::generate("example.org", 30).expect("ca");
        let e = again.write(dir.path()).expect_err("second CA").to_string();
        assert!(e.contains("ca.key") && e.contains("refusing"), "{e}");

        let ca = Ca::load(dir.path()).expect("load");
        assert_eq!(ca.trust_domain, "example.org");
        let leaf = ca
            .issue(Role::Agent, "agent-1", &["10.0.0.1".into()], 5)
            .expect("issue");
        let (crt, _) = leaf
            .write(dir.path(), Role::Agent, "agent-1")
            .expect("write");
        assert!(crt.ends_with("agent-agent-1.crt"));
        let der = rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())
            .expect("pem");
        let id = Identity::from_cert(&der, "example.org").expect("identity");
        assert_eq!((id.role, id.name.as_str()), (Role::Agent, "agent-1"));
        let e = Identity::from_cert(&der, "other.org").expect_err("other domain");
        assert!(matches!(
            e,
            crate::identity::IdentityError::TrustDomain { .. }
        ));

        for bad in ["a b", "-", "x..y."] {
            let e = ca
                .issue(Role::Agent, "a", &[bad.to_string()], 5)
                .expect_err(bad)
                .to_string();
            assert!(e.contains("--san"), "{e}");
        }
        let e = ca.issue(Role::Agent, "a/b", &[], 5).expect_err("name");
        assert!(e.to_string().contains("a/b"), "{e}");
    }
}
