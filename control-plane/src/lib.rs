//! The trackwire control plane: the shared check source of a fleet.
//!
//! - [`store`]: the store contract with `EtcdStore` and `MemStore`.
//! - [`keys`], [`facts`]: the key layout and the in-memory index of facts.
//! - [`assign`], [`derive`]: rendezvous assignment and facts → health map (pure).
//! - [`damper`]: writes flap-damping records (compare-and-set, any replica).
//! - [`state`]: list + watch the store, publish derived snapshots.
//! - [`grpc`]: `ProbeService`, `HealthMapService`, `AdminService`.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, status page.
//! - [`agent_check`]: HAProxy's agent-check protocol over the derived map.
//!
//! [`run`] takes already-bound listeners and a shutdown token, so tests bind
//! `127.0.0.1:0` and read the real address back.

pub mod agent_check;
pub mod api;
pub mod assign;
pub mod damper;
pub mod derive;
pub mod events;
pub mod facts;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod recorder;
pub mod results;
pub mod state;
pub mod store;
pub mod subscribers;
pub mod writes;
pub mod xds;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use trackwire_proto::v1::admin_service_server::AdminServiceServer;
use trackwire_proto::v1::health_map_service_server::HealthMapServiceServer;
use trackwire_proto::v1::probe_service_server::ProbeServiceServer;

use trackwire_core::limits::{HttpLimits, ServerLimits};
use trackwire_transport::{Access, AuthLayer, Tls, Token};

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
    /// How long a stale backend state is trusted (`None`: without bound);
    /// see [`recorder`].
    pub stale_max: Option<Duration>,
    /// Mutual TLS on the gRPC port (`None`: plaintext, with a warning).
    pub tls: Option<Tls>,
    /// The admin bearer token (`--admin-token-file`), for admin clients
    /// without a certificate.
    pub admin_token: Option<Token>,
    pub limits: ServerLimits,
    pub http_limits: HttpLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: "/trackwire/".into(),
            agent_ttl: Duration::from_secs(10),
            stale_max: Some(recorder::DEFAULT_STALE_MAX),
            tls: None,
            admin_token: None,
            limits: ServerLimits::default(),
            http_limits: HttpLimits::default(),
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
        self.limits.validate().map_err(Error::Config)?;
        if let Some(tls) = &self.tls
            && tls.server_config().is_none()
        {
            return Err(Error::Config(
                "--tls-cert: material was loaded for a client, not a server".into(),
            ));
        }
        Ok(())
    }
}

pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    /// HAProxy's agent-check protocol (see [`agent_check`]); off when `None`.
    pub agent_check: Option<TcpListener>,
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
    // Every store operation timed and its errors counted.
    let store: Arc<dyn Store> = Arc::new(store::Metered::new(store, Arc::clone(&metrics)));
    // Up until the probe says otherwise: nothing is ready before facts load anyway.
    metrics.store_up.set(1);
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

    let stale = Arc::new(recorder::StaleClock::new(config.stale_max));
    metrics
        .stale_max_seconds
        .set(config.stale_max.map_or(0, |d| d.as_secs()));
    let recorder = tokio::spawn(
        recorder::run(
            Arc::clone(&store),
            keys.clone(),
            state.clone(),
            Arc::clone(&stale),
            Arc::clone(&metrics),
            shutdown.clone(),
        )
        .instrument(info_span!("recorder")),
    );
    let store_probe = tokio::spawn(
        probe_store(Arc::clone(&store), Arc::clone(&metrics), shutdown.clone())
            .instrument(info_span!("store_probe")),
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

    // The map as xDS resources, converted once per snapshot for every stream.
    let (xds_tx, xds_resources) = watch::channel(None);
    tokio::spawn(
        xds::publish(state.clone(), xds_tx, shutdown.clone()).instrument(info_span!("xds_publish")),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    {
        let mut state = state.clone();
        let reporter = health_reporter.clone();
        tokio::spawn(
            async move {
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
                    reporter
                        .set_serving::<AggregatedDiscoveryServiceServer<grpc::xds::XdsSvc>>()
                        .await;
                }
            }
            .instrument(info_span!("health_reporter")),
        );
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
        reports_per_second: config.limits.agent_reports_per_second,
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
    let ads = grpc::xds::XdsSvc {
        resources: xds_resources,
        metrics: Arc::clone(&metrics),
        subscribers: Arc::clone(&subscribers),
        shutdown: shutdown.clone(),
    };
    let admin = grpc::admin::AdminSvc {
        store: Arc::clone(&store),
        keys,
        state: state.clone(),
        subscribers: Arc::clone(&subscribers),
        history,
        results: Arc::clone(&results),
        stale,
        shutdown: shutdown.clone(),
    };

    let grpc_addr = listeners.grpc.local_addr()?;
    match &config.tls {
        Some(tls) => {
            let id = tls.identity();
            info!(%grpc_addr, identity = %id, token = config.admin_token.is_some(), "control plane gRPC listening (mutual TLS)");
            tls.spawn_reloader(shutdown.clone());
        }
        None => {
            info!(%grpc_addr, "control plane gRPC listening");
            warn!(
                %grpc_addr,
                "gRPC is PLAINTEXT: anyone who can reach this port can change and delete pools, \
                 drain backends, vote as any agent and read the health map{}; give --tls-ca, \
                 --tls-cert and --tls-key for mutual TLS",
                if config.admin_token.is_some() { " (admin calls need the bearer token)" } else { "" }
            );
        }
    }
    let mut registry = trackwire_core::metrics::Registry::default();
    metrics::register(
        &mut registry,
        &metrics,
        state.clone(),
        Arc::clone(&subscribers),
        config.tls.as_ref(),
    );
    let registry = Arc::new(registry);
    let limits = config.limits;
    let max = limits.max_message_bytes;
    let access = AuthLayer::new(Access {
        tls: config.tls.is_some(),
        token: config.admin_token.clone(),
        table: grpc::ROLE_TABLE,
    });
    let grpc = tonic::transport::Server::builder()
        // Each call in a span naming its method (calls are admin requests,
        // agent sessions and subscriptions: not per connection or message).
        .trace_fn(|req| info_span!("grpc", method = %req.uri().path()))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_interval))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .layer(grpc::calls::CallsLayer(Arc::clone(&metrics)))
        .layer(access)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            ProbeServiceServer::new(probe)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            HealthMapServiceServer::new(healthmap)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AdminServiceServer::new(admin)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AggregatedDiscoveryServiceServer::new(ads)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(
            trackwire_transport::server::incoming(
                listeners.grpc,
                config.tls.clone(),
                limits,
                Arc::clone(&metrics.grpc_listener),
                shutdown.clone(),
            ),
            shutdown.clone().cancelled_owned(),
        );

    let http = async {
        if let Some(l) = listeners.http {
            info!(http_addr = %l.local_addr()?, "control plane HTTP listening");
            trackwire_transport::http::serve(
                l,
                http::router(
                    state.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&registry),
                    Arc::clone(&subscribers),
                    Arc::clone(&results),
                    shutdown.clone(),
                ),
                config.http_limits,
                shutdown.clone(),
            )
            .await?;
        }
        Ok::<(), Error>(())
    };
    let agent_check = async {
        if let Some(l) = listeners.agent_check {
            agent_check::serve(l, state.clone(), shutdown.clone()).await;
        }
    };
    let (g, h, ()) = tokio::join!(grpc, http, agent_check);
    shutdown.cancel();
    let _ = sync.await;
    let _ = damper.await;
    let _ = recorder.await;
    let _ = store_probe.await;
    g?;
    h?;
    Ok(())
}

/// Asks the store for its revision every 2 s: `/readyz` and `trackwire_store_up`
/// say whether it answers.
async fn probe_store(store: Arc<dyn Store>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(3), store.revision()).await,
            Ok(Ok(_))
        );
        if up != was_up {
            if up {
                info!("store answers again");
            } else {
                tracing::warn!(
                    "store unreachable; /readyz answers 503, the last map is still served"
                );
            }
            was_up = up;
        }
        metrics.store_up.set(u64::from(up));
    }
}
