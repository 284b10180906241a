//! The trackwire control plane: the shared check source of a fleet.
//!
//! - [`store`]: the store contract with `EtcdStore` and `MemStore`.
//! - [`keys`], [`facts`]: the key layout and the in-memory index of facts.
//! - [`assign`], [`derive`]: rendezvous assignment and facts → health map (pure).
//! - [`damper`]: writes flap-damping records (compare-and-set, any replica).
//! - [`state`]: list + watch the store, publish derived snapshots.
//! - [`grpc`]: `ProbeService`, `HealthMapService`, `AdminService`.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, status page.
//!
//! [`run`] takes already-bound listeners and a shutdown token, so tests bind
//! `127.0.0.1:0` and read the real address back.

pub mod assign;
pub mod damper;
pub mod derive;
pub mod events;
pub mod facts;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod results;
pub mod state;
pub mod store;
pub mod subscribers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};
use trackwire_proto::v1::admin_service_server::AdminServiceServer;
use trackwire_proto::v1::health_map_service_server::HealthMapServiceServer;
use trackwire_proto::v1::probe_service_server::ProbeServiceServer;

use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Config {
    /// Store key prefix, e.g. `/trackwire/`.
    pub prefix: String,
    /// Lease TTL of an agent session: its verdicts stop counting this long
    /// after the agent was last heard from.
    pub agent_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: "/trackwire/".into(),
            agent_ttl: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        Keys::new(&self.prefix).map_err(|m| Error::Config(format!("prefix: {m}")))?;
        if self.agent_ttl < Duration::from_secs(2) || self.agent_ttl > Duration::from_secs(300) {
            return Err(Error::Config(
                "agent_ttl: must be between 2s and 300s".into(),
            ));
        }
        Ok(())
    }
}

pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Serves the control plane until `shutdown` is cancelled, then ends every
/// stream and returns.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let keys = Keys::new(&config.prefix).map_err(Error::Config)?;
    let metrics = Arc::new(Metrics::default());
    let history = Arc::new(state::MapHistory::default());
    let results = Arc::new(results::Results::default());
    let subscribers = Arc::new(subscribers::Subscribers::default());
    let (tx, state) = watch::channel(None);

    let sync = tokio::spawn(
        state::sync(
            Arc::clone(&store),
            keys.clone(),
            tx,
            Arc::clone(&metrics),
            Arc::clone(&history),
            shutdown.clone(),
        )
        .instrument(info_span!("store_sync")),
    );

    let damper = tokio::spawn(
        damper::run(
            Arc::clone(&store),
            keys.clone(),
            state.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("damper")),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    {
        let mut state = state.clone();
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            if state::ready(&mut state).await.is_some() {
                reporter
                    .set_serving::<ProbeServiceServer<grpc::probe::ProbeSvc>>()
                    .await;
                reporter
                    .set_serving::<HealthMapServiceServer<grpc::healthmap::HealthMapSvc>>()
                    .await;
                reporter
                    .set_serving::<AdminServiceServer<grpc::admin::AdminSvc>>()
                    .await;
            }
        });
    }
    // Both reflection versions: grpcurl speaks v1, many clients (Python's
    // grpcio-reflection, Postman) still v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(trackwire_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let probe = grpc::probe::ProbeSvc {
        store: Arc::clone(&store),
        keys: keys.clone(),
        state: state.clone(),
        metrics: Arc::clone(&metrics),
        agent_ttl: config.agent_ttl,
        results: Arc::clone(&results),
        shutdown: shutdown.clone(),
    };
    let healthmap = grpc::healthmap::HealthMapSvc {
        state: state.clone(),
        metrics: Arc::clone(&metrics),
        history: Arc::clone(&history),
        subscribers: Arc::clone(&subscribers),
        snapshot_permits: Arc::new(tokio::sync::Semaphore::new(
            grpc::healthmap::SNAPSHOT_PERMITS,
        )),
        shutdown: shutdown.clone(),
    };
    let admin = grpc::admin::AdminSvc {
        store: Arc::clone(&store),
        keys,
        state: state.clone(),
        subscribers: Arc::clone(&subscribers),
        history,
        results,
        shutdown: shutdown.clone(),
    };

    let grpc_addr = listeners.grpc.local_addr()?;
    info!(%grpc_addr, "control plane gRPC listening");
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ProbeServiceServer::new(probe))
        .add_service(HealthMapServiceServer::new(healthmap))
        .add_service(AdminServiceServer::new(admin))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle and delayed ACKs hold small health-map
            // deltas back by up to 40 ms.
            tonic::transport::server::TcpIncoming::from(listeners.grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(30))),
            shutdown.clone().cancelled_owned(),
        );

    let http = async {
        if let Some(l) = listeners.http {
            info!(http_addr = %l.local_addr()?, "control plane HTTP listening");
            axum::serve(
                l,
                http::router(
                    state.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&subscribers),
                ),
            )
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        }
        Ok::<(), Error>(())
    };
    let (g, h) = tokio::join!(grpc, http);
    shutdown.cancel();
    let _ = sync.await;
    let _ = damper.await;
    g?;
    h?;
    Ok(())
}
