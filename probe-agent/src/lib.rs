//! The trackwire probe agent: runs the checks the control plane assigns it,
//! with HAProxy's semantics, and reports verdict transitions.
//!
//! - [`check`]: one HTTP/HTTPS/TCP check with HAProxy outcome codes.
//! - [`risefall`]: the sans-IO rise/fall machine.
//! - [`runner`]: one task per assigned target; applies assignment diffs.
//! - [`session`]: the `ProbeService.Connect` session with failover.
//! - [`metrics`]: the agent's metrics (checks by pool and outcome, timing).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.

pub mod check;
pub mod http;
pub mod metrics;
pub mod risefall;
pub mod runner;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::runner::Shared;
use trackwire_core::limits::HttpLimits;
use trackwire_transport::{Role, Tls};

#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: Vec<String>,
    pub zone: String,
    /// Holds `agent-id`, so the agent keeps its identity across restarts.
    pub state_dir: Option<PathBuf>,
    pub heartbeat: Duration,
    /// Mutual TLS to `https://` control planes; the agent id is then the
    /// certificate's name and the state dir's `agent-id` is not used.
    pub tls: Option<Tls>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    /// The state dir's `agent-id` is not an agent id: a configuration error
    /// (exit 2), not something a retry fixes.
    #[error(
        "{}: not a valid agent id ({reason}); restore it, or delete it to give this agent a new identity",
        path.display()
    )]
    AgentId { path: PathBuf, reason: String },
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

impl Error {
    /// Whether the operator's configuration is at fault (as opposed to the
    /// environment): the CLI exits 2 for these, 1 for the rest.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_) | Error::AgentId { .. })
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        trackwire_connect::check_client(
            &self.control_plane,
            self.tls.as_ref(),
            Role::Agent,
            "a probe agent",
        )
        .map_err(Error::Config)?;
        if self.zone.len() > 63 {
            return Err(Error::Config("zone: at most 63 bytes".into()));
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            return Err(Error::Config(
                "heartbeat: must be between 100ms and 60s".into(),
            ));
        }
        Ok(())
    }
}

/// Reads `agent-id` from the state dir, creating it (atomically) on first start.
pub fn load_or_create_agent_id(dir: &Path) -> Result<String, Error> {
    let err = |source| Error::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            uuid::Uuid::parse_str(id).map_err(|e| Error::AgentId {
                path: path.clone(),
                reason: format!("not a UUID: {e}"),
            })?;
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::AgentId {
            path,
            reason: "not UTF-8".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            let tmp = dir.join("agent-id.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let agent_id = match (&config.tls, &config.state_dir) {
        // The certificate is the identity: one agent cannot speak for another.
        (Some(tls), _) => tls.identity().name,
        (None, Some(dir)) => load_or_create_agent_id(dir)?,
        (None, None) => {
            let id = uuid::Uuid::new_v4().to_string();
            warn!(agent_id = %id, "no state dir: this agent gets a new identity on every start");
            id
        }
    };
    info!(agent_id = %agent_id, zone = %config.zone, "probe agent starting");
    if config.tls.is_none() {
        warn!(
            "the control-plane link is PLAINTEXT: anyone on the path can read this agent's \
             assignment and forge or suppress its verdicts; give --tls-ca, --tls-cert, --tls-key \
             and https:// URLs"
        );
    }
    let shared = Arc::new(Shared::default());
    let session = tokio::spawn(
        session::run(
            session::SessionConfig {
                control_plane: config.control_plane.clone(),
                agent_id: agent_id.clone(),
                instance_id: uuid::Uuid::new_v4().to_string(),
                zone: config.zone.clone(),
                heartbeat: config.heartbeat,
                tls: config.tls.clone(),
            },
            Arc::clone(&shared),
            shutdown.clone(),
        )
        .instrument(info_span!("agent", id = %agent_id)),
    );
    if let Some(tls) = &config.tls {
        tls.spawn_reloader(shutdown.clone());
    }
    let mut registry = trackwire_core::metrics::Registry::default();
    shared.metrics.register(&mut registry, config.tls.as_ref());
    if let Some(l) = http {
        info!(http_addr = %l.local_addr()?, "probe agent HTTP listening");
        trackwire_transport::http::serve(
            l,
            http::router(Arc::clone(&shared), Arc::new(registry)),
            HttpLimits::default(),
            shutdown.clone(),
        )
        .await?;
    }
    shutdown.cancelled().await;
    let _ = session.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_is_stable_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_agent_id(dir.path()).expect("create");
        assert!(uuid::Uuid::parse_str(&first).is_ok());
        assert_eq!(load_or_create_agent_id(dir.path()).expect("load"), first);
        std::fs::write(dir.path().join("agent-id"), "not-a-uuid\n").expect("write");
        let err = load_or_create_agent_id(dir.path()).expect_err("corrupt id");
        assert!(err.is_config(), "{err:?}");
        assert!(
            err.to_string()
                .contains("agent-id: not a valid agent id (not a UUID"),
            "{err}"
        );
        std::fs::write(dir.path().join("agent-id"), b"\xff\xfe").expect("write");
        let err = load_or_create_agent_id(dir.path()).expect_err("binary id");
        assert!(
            err.is_config() && err.to_string().contains("not UTF-8"),
            "{err}"
        );
    }
}
