//! `trackwire certs init|issue`: the CA and the certificates of a secure
//! fleet (see README "Securing a fleet"). The work is in
//! `trackwire_transport::pki`; this prints what was written.

use std::path::{Path, PathBuf};

use trackwire_transport::pki::{Ca, PkiError};
use trackwire_transport::{Identity, Role};

use crate::Invalid;
use crate::args::{CertsCommand, CertsInitArgs, CertsIssueArgs};

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init(a) => init(&a),
        CertsCommand::Issue(a) => issue(&a),
    }
}

fn invalid(e: PkiError) -> anyhow::Error {
    Invalid(e.to_string()).into()
}

fn init(a: &CertsInitArgs) -> anyhow::Result<()> {
    if a.days == 0 {
        return Err(Invalid("--days: at least 1".into()).into());
    }
    let ca = Ca::generate(&a.trust_domain, a.days).map_err(invalid)?;
    ca.write(&a.dir).map_err(invalid)?;
    println!(
        "wrote {} and {} (trust domain {})",
        a.dir.join("ca.crt").display(),
        a.dir.join("ca.key").display(),
        ca.trust_domain
    );
    println!("keep ca.key offline or in a secret store; only ca.crt goes to every process");
    Ok(())
}

fn issue(a: &CertsIssueArgs) -> anyhow::Result<()> {
    let ca = Ca::load(&a.dir).map_err(invalid)?;
    let leaf = ca
        .issue(a.role, &a.name, &a.sans, a.days)
        .map_err(invalid)?;
    let (crt, key) = leaf.write(&a.dir, a.role, &a.name).map_err(invalid)?;
    let id = Identity::new(&ca.trust_domain, a.role, &a.name).map_err(Invalid)?;
    println!(
        "wrote {} and {} ({id}, {} days)",
        crt.display(),
        key.display(),
        a.days
    );
    Ok(())
}

/// The files of one identity in a certs dir.
#[derive(Debug, Clone)]
pub struct Issued {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    pub fn files(&self) -> trackwire_transport::TlsFiles {
        trackwire_transport::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// `dev --tls`: a CA in `dir` (made on first use, kept after) and fresh
/// certificates for every role named `dev`.
pub fn dev_pki(dir: &Path, sans: &[String]) -> anyhow::Result<Vec<(Role, Issued)>> {
    if !dir.join("ca.key").exists() {
        Ca::generate(trackwire_transport::identity::DEFAULT_TRUST_DOMAIN, 365)
            .and_then(|ca| ca.write(dir))
            .map_err(invalid)?;
    }
    let ca = Ca::load(dir).map_err(invalid)?;
    let mut out = Vec::new();
    for role in Role::ALL {
        let sans = if role == Role::ControlPlane {
            sans
        } else {
            &[]
        };
        let leaf = ca.issue(role, "dev", sans, 30).map_err(invalid)?;
        let (cert, key) = leaf.write(dir, role, "dev").map_err(invalid)?;
        out.push((
            role,
            Issued {
                ca: dir.join("ca.crt"),
                cert,
                key,
            },
        ));
    }
    Ok(out)
}
