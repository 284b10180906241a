//! The long-running commands: `control-plane`, `probe-agent`, `data-plane`.
//! Each validates its configuration, then binds its ports, then runs until
//! SIGINT/SIGTERM and drains.

use std::sync::Arc;
use std::time::Duration;
use trackwire_control_plane::store::StoreError;
use trackwire_control_plane::writes::WriteError;
use trackwire_core::backoff::Backoff;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::{EtcdOptions, EtcdStore, MemStore, Store};
use trackwire_core::PoolSpec;

use crate::Invalid;
use crate::args::{ControlPlaneArgs, DataPlaneArgs, EtcdTlsArgs, ProbeAgentArgs, TlsArgs};
use trackwire_control_plane::store::EtcdTls;
use trackwire_transport::{Side, Tls};

pub async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {what} {addr}"))
}

/// Cancels `token` on SIGINT/SIGTERM. Also takes SIGHUP over from its
/// default (terminate): `systemctl reload` sends it, and it reloads TLS
/// material ([`Tls`] listens for it too); without TLS it is only logged.
pub fn cancel_on_signal(token: &CancellationToken) {
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(
            async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading TLS material if any; nothing else to reload");
                }
            }
            .instrument(info_span!("signals")),
        );
    }
    let t = token.clone();
    tokio::spawn(
        async move {
            crate::signal().await;
            info!("signal received; shutting down");
            t.cancel();
        }
        .instrument(info_span!("signals")),
    );
}

/// Applies `pools` once the control plane answers, retrying while the store is unavailable.
pub async fn apply_at_start(
    store: Arc<dyn Store>,
    prefix: &str,
    pools: Vec<PoolSpec>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = Keys::new(prefix).map_err(Invalid)?;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match trackwire_control_plane::writes::apply(store.as_ref(), &keys, &pools, 0, false).await
        {
            Ok(r) => {
                info!(revision = r.revision, created = ?r.created, updated = ?r.updated, "applied pools from the config file");
                return Ok(());
            }
            Err(
                e @ (WriteError::Store(StoreError::Unavailable(_))
                | WriteError::Conflict(_)
                | WriteError::Partial(_)),
            ) => {
                warn!(error = %e, "applying config pools failed; retrying");
            }
            Err(e) => return Err(Invalid(format!("applying the config's pools: {e}")).into()),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_jittered()) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Loads the `--tls-*` material for `side`; a bad file is a configuration
/// error (exit 2) naming it, an expired certificate included.
pub fn load_tls(args: &TlsArgs, side: Side) -> anyhow::Result<Option<Tls>> {
    match args.files().map_err(Invalid)? {
        Some(files) => Ok(Some(
            Tls::load(files, side).map_err(|e| Invalid(e.to_string()))?,
        )),
        None => Ok(None),
    }
}

/// The etcd client's TLS material, read now so a bad file is named at start.
fn etcd_tls(args: &EtcdTlsArgs, urls: &[String]) -> anyhow::Result<Option<EtcdTls>> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Invalid(format!("{}: {e}", p.display())))
    };
    let https = urls.iter().any(|u| u.starts_with("https://"));
    match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (None, None, None) if https => Err(Invalid(
            "--etcd https://…: give --etcd-ca (and --etcd-cert/--etcd-key for client-cert-auth)"
                .into(),
        )
        .into()),
        (None, None, None) => Ok(None),
        (Some(_), _, _) if !https => {
            Err(Invalid("--etcd-ca given, but the --etcd endpoints are not https://".into()).into())
        }
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                (None, None) => None,
                _ => {
                    return Err(Invalid("--etcd-cert and --etcd-key go together".into()).into());
                }
            };
            Ok(Some(EtcdTls {
                ca_pem: read(ca)?,
                identity,
            }))
        }
        (None, _, _) => Err(Invalid("--etcd-cert/--etcd-key need --etcd-ca".into()).into()),
    }
}

pub async fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let admin_token = match &args.admin_token_file {
        Some(p) => Some(trackwire_transport::Token::from_file(p).map_err(Invalid)?),
        None => None,
    };
    let tls = load_tls(
        &args.tls,
        Side::Server {
            client_cert_optional: admin_token.is_some(),
        },
    )?;
    let config = trackwire_control_plane::Config {
        prefix: args.prefix.clone(),
        agent_ttl: args.agent_ttl,
        stale_max: (!args.stale_max.is_zero()).then_some(args.stale_max),
        tls,
        admin_token,
        limits: args.limits.limits().map_err(Invalid)?,
        http_limits: Default::default(),
    };
    config.validate().map_err(|e| Invalid(e.to_string()))?;
    let pools = match &args.config {
        Some(path) => {
            let doc = crate::load_document(path)?;
            if !doc.listeners.is_empty() {
                warn!(
                    "the control plane ignores [[listener]] sections; data-plane proxies serve them"
                );
            }
            doc.pools
        }
        None => Vec::new(),
    };
    let grpc = bind(args.grpc_bind, "--grpc-bind").await?;
    let http = bind(args.http_bind, "--http-bind").await?;
    let agent_check = match args.agent_check_bind {
        Some(addr) => Some(bind(addr, "--agent-check-bind").await?),
        None => None,
    };
    let store: Arc<dyn Store> = match &args.etcd {
        Some(urls) => {
            let tls = etcd_tls(&args.etcd_tls, &urls.0)?;
            info!(endpoints = ?urls.0, tls = tls.is_some(), "using etcd");
            Arc::new(
                EtcdStore::connect(&EtcdOptions {
                    tls,
                    ..EtcdOptions::new(urls.0.clone())
                })
                .await
                .context("connect to etcd")?,
            )
        }
        None => {
            warn!("no --etcd: using the embedded store (single node; state is lost on restart)");
            Arc::new(MemStore::new())
        }
    };
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown);
    if !pools.is_empty() {
        let (store, prefix, token) = (Arc::clone(&store), args.prefix.clone(), shutdown.clone());
        tokio::spawn(
            async move {
                if let Err(e) = apply_at_start(store, &prefix, pools, token.clone()).await {
                    tracing::error!(error = %e, "config pools rejected; shutting down");
                    token.cancel();
                }
            }
            .instrument(info_span!("apply_config_pools")),
        );
    }
    trackwire_control_plane::run(
        config,
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: Some(http),
            agent_check,
        },
        shutdown,
    )
    .await?;
    Ok(())
}

pub async fn probe_agent(args: ProbeAgentArgs) -> anyhow::Result<()> {
    let config = trackwire_probe_agent::Config {
        tls: load_tls(&args.control_plane.tls, Side::Client)?,
        control_plane: args.control_plane.urls.0,
        zone: args.zone,
        state_dir: args.state_dir,
        heartbeat: args.heartbeat,
    };
    config.validate().map_err(agent_error)?;
    // The identity is configuration too: check it before binding.
    if let (None, Some(dir)) = (&config.tls, &config.state_dir) {
        trackwire_probe_agent::load_or_create_agent_id(dir).map_err(agent_error)?;
    }
    let http = bind(args.http_bind, "--http-bind").await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown);
    trackwire_probe_agent::run(config, Some(http), shutdown)
        .await
        .map_err(agent_error)?;
    Ok(())
}

/// Configuration errors exit 2 ([`Invalid`]); the rest exit 1.
fn agent_error(e: trackwire_probe_agent::Error) -> anyhow::Error {
    if e.is_config() {
        Invalid(e.to_string()).into()
    } else {
        e.into()
    }
}

pub async fn data_plane(args: DataPlaneArgs) -> anyhow::Result<()> {
    let doc = crate::load_document(&args.config)?;
    let config = trackwire_data_plane::Config {
        tls: load_tls(&args.control_plane.tls, Side::Client)?,
        control_plane: args.control_plane.urls.0,
        listeners: doc.listeners,
        state_dir: args.state_dir,
        proxy_id: args
            .proxy_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        drain_grace: args.drain_grace,
        workers: args.workers,
    };
    config.validate().map_err(|e| match e {
        // A flag, not the config file.
        trackwire_data_plane::Error::StateDir { path, reason } => {
            Invalid(format!("--state-dir {}: {reason}", path.display()))
        }
        // A flag (--tls-*, --control-plane), not the config file.
        trackwire_data_plane::Error::Config(m) if m.starts_with("--") || m.contains("://") => {
            Invalid(m)
        }
        e => Invalid(format!("{}: {e}", args.config.display())),
    })?;
    let listeners = trackwire_data_plane::bind(&config.listeners).await?;
    let http = bind(args.http_bind, "--http-bind").await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown);
    trackwire_data_plane::run(config, listeners, Some(http), shutdown).await?;
    Ok(())
}
