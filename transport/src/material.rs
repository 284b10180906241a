//! A process's TLS material — CA bundle, certificate, key — loaded, checked
//! and turned into rustls configs, and reloaded without downtime.
//!
//! [`Tls`] holds the current [`Material`] behind a lock that is read once
//! per new connection: established connections keep the config they were
//! made with; new ones get the newest. The reloader polls the three files'
//! modification stamps every [`POLL`] and reloads on SIGHUP; material that
//! fails to load (a half-written key, a key that does not match the
//! certificate, an expired certificate, a certificate without a trackwire
//! identity) is refused with an error naming the file, counted, and the
//! previous material stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::identity::{Identity, Role, Validity};

/// How often the files' modification stamps are compared.
pub const POLL: Duration = Duration::from_secs(2);
/// At most one expiry warning per certificate this often.
const EXPIRY_WARN_EVERY: Duration = Duration::from_secs(3600);

/// The three files of `--tls-ca`, `--tls-cert`, `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// All three or none: a partial set is a configuration error naming
    /// the missing flag.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, String> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (ca.is_none(), "--tls-ca"),
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                ]
                .into_iter()
                .filter_map(|(m, f)| m.then_some(f))
                .collect();
                Err(format!(
                    "{}: TLS needs --tls-ca, --tls-cert and --tls-key together",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// Which end of links this material serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A control-plane replica. `client_cert_optional`: a bearer token may
    /// stand in for a client certificate (admin calls only).
    Server { client_cert_optional: bool },
    /// An agent, proxy or admin client of the control plane.
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct MaterialError {
    pub file: PathBuf,
    pub reason: String,
}

fn err(file: &Path, reason: impl std::fmt::Display) -> MaterialError {
    MaterialError {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Loaded, checked material and the configs built from it.
#[derive(Debug)]
pub struct Material {
    /// This process's own identity.
    pub identity: Identity,
    pub leaf: Validity,
    pub cas: Vec<Validity>,
    pub server: Option<Arc<ServerConfig>>,
    pub client: Option<Arc<ClientConfig>>,
}

/// The one crypto provider of the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the files, and builds the config for `side`.
pub fn load(files: &TlsFiles, side: Side, now: SystemTime) -> Result<Material, MaterialError> {
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| err(&files.ca, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.ca, e))?;
    if cas.is_empty() {
        return Err(err(&files.ca, "no PEM certificate in the CA bundle"));
    }
    let mut roots = RootCertStore::empty();
    let mut ca_validity = Vec::new();
    for c in &cas {
        roots.add(c.clone()).map_err(|e| err(&files.ca, e))?;
        ca_validity.push(Validity::of(c).map_err(|e| err(&files.ca, e))?);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert, e))?;
    let Some(leaf_der) = chain.first() else {
        return Err(err(&files.cert, "no PEM certificate"));
    };
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, e))?;
    let provider = provider();
    CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
        err(
            &files.key,
            format!(
                "does not match the certificate in {} ({e})",
                files.cert.display()
            ),
        )
    })?;
    let leaf = Validity::of(leaf_der).map_err(|e| err(&files.cert, e))?;
    if leaf.not_after < now {
        return Err(err(
            &files.cert,
            format!("expired on {}", rfc3339(leaf.not_after)),
        ));
    }
    if leaf.not_before > now {
        return Err(err(
            &files.cert,
            format!("not valid before {}", rfc3339(leaf.not_before)),
        ));
    }
    let identity = Identity::from_own_cert(leaf_der).map_err(|e| err(&files.cert, e))?;
    let trust_domain = identity.trust_domain.clone();
    let roots = Arc::new(roots);
    let h2 = vec![b"h2".to_vec()];
    let (server, client) = match side {
        Side::Server {
            client_cert_optional,
        } => {
            if identity.role != Role::ControlPlane {
                return Err(err(
                    &files.cert,
                    format!(
                        "identity {identity} has role {}; a control plane serves with a control-plane certificate",
                        identity.role
                    ),
                ));
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone());
            let builder = if client_cert_optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let webpki = builder.build().map_err(|e| err(&files.ca, e))?;
            let verifier = Arc::new(PeerVerifier {
                inner: webpki,
                trust_domain,
            });
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| err(&files.cert, e))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| err(&files.cert, e))?;
            config.alpn_protocols = h2;
            (Some(Arc::new(config)), None)
        }
        Side::Client => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::clone(&roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| err(&files.ca, e))?;
            // The server's identity (role control-plane, this trust domain)
            // is checked by the connector once the handshake is done.
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| err(&files.cert, e))?
                .with_webpki_verifier(webpki)
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(&files.cert, e))?;
            config.alpn_protocols = h2;
            (None, Some(Arc::new(config)))
        }
    };
    Ok(Material {
        identity,
        leaf,
        cas: ca_validity,
        server,
        client,
    })
}

/// `2026-11-27T00:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    trackwire_core::time::format_utc(ms)
}

/// Counters every component exports.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    pub handshake_failures: AtomicU64,
}

/// Reloadable TLS material; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Tls(Arc<Inner>);

/// The identity and the file names only: never key material.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity().uri())
            .field("files", &self.0.files)
            .finish_non_exhaustive()
    }
}

struct Inner {
    files: TlsFiles,
    side: Side,
    current: RwLock<Arc<Material>>,
    /// The files' stamps at the last load attempt (good or bad).
    tried: Mutex<Stamps>,
    stats: TlsStats,
    last_expiry_warning: Mutex<Option<Instant>>,
}

type Stamps = [Option<(SystemTime, u64)>; 3];

fn stamps(files: &TlsFiles) -> Stamps {
    [&files.ca, &files.cert, &files.key].map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

impl Tls {
    /// Loads the material; an error names the file (the process refuses to start).
    pub fn load(files: TlsFiles, side: Side) -> Result<Tls, MaterialError> {
        let tried = stamps(&files);
        let material = load(&files, side, SystemTime::now())?;
        let tls = Tls(Arc::new(Inner {
            files,
            side,
            current: RwLock::new(Arc::new(material)),
            tried: Mutex::new(tried),
            stats: TlsStats::default(),
            last_expiry_warning: Mutex::new(None),
        }));
        tls.warn_if_expiring();
        Ok(tls)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.0.files
    }

    pub fn current(&self) -> Arc<Material> {
        Arc::clone(&self.0.current.read())
    }

    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }

    pub fn stats(&self) -> &TlsStats {
        &self.0.stats
    }

    /// The server config for the next accepted connection.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.current().server.clone()
    }

    /// The client config for the next connection made.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.current().client.clone()
    }

    /// Reloads when the files changed since the last attempt (or always,
    /// with `force`). `Ok(true)`: new material is in use.
    pub fn reload(&self, force: bool) -> Result<bool, MaterialError> {
        let now_stamps = stamps(&self.0.files);
        {
            let mut tried = self.0.tried.lock();
            if !force && *tried == now_stamps {
                return Ok(false);
            }
            *tried = now_stamps;
        }
        match load(&self.0.files, self.0.side, SystemTime::now()) {
            Ok(m) => {
                info!(
                    identity = %m.identity,
                    serial = %m.leaf.serial,
                    not_after = %rfc3339(m.leaf.not_after),
                    "TLS material reloaded; new connections use it"
                );
                *self.0.current.write() = Arc::new(m);
                self.0.stats.reloads.fetch_add(1, Relaxed);
                *self.0.last_expiry_warning.lock() = None;
                self.warn_if_expiring();
                Ok(true)
            }
            Err(e) => {
                self.0.stats.reload_errors.fetch_add(1, Relaxed);
                error!(file = %e.file.display(), error = %e.reason, "TLS reload refused; keeping the previous material");
                Err(e)
            }
        }
    }

    /// Polls the files every [`POLL`] and reloads on SIGHUP, until `shutdown`.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    () = shutdown.cancelled() => return,
                };
                let _ = tls.reload(force);
                tls.warn_if_expiring();
            }
        }.instrument(tracing::info_span!("tls_reload", cert = %self.0.files.cert.display())))
    }

    /// Logs a warning (at most hourly) when the certificate or a CA has less
    /// than a third of its lifetime or 7 days left.
    fn warn_if_expiring(&self) {
        let m = self.current();
        let now = SystemTime::now();
        let soon: Vec<(&Path, &Validity)> = std::iter::once((self.0.files.cert.as_path(), &m.leaf))
            .chain(m.cas.iter().map(|v| (self.0.files.ca.as_path(), v)))
            .filter(|(_, v)| v.expiring_soon(now))
            .collect();
        if soon.is_empty() {
            return;
        }
        let mut last = self.0.last_expiry_warning.lock();
        if last.is_some_and(|t| t.elapsed() < EXPIRY_WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        for (file, v) in soon {
            warn!(
                file = %file.display(),
                subject = %v.subject,
                not_after = %rfc3339(v.not_after),
                "certificate expires soon (less than a third of its lifetime or 7 days left); issue a new one"
            );
        }
    }
}

/// WebPKI client verification, then exactly one trackwire identity in the
/// server's trust domain: a bad identity fails the handshake, with a reason
/// the server logs.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        Identity::from_cert(end_entity, &self.trust_domain)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
