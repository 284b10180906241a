//! `trackwire dev`: the whole product in one process, on the embedded store.
//!
//! Starts the control plane (MemStore), one probe agent and one data-plane
//! proxy, each talking real gRPC over loopback as separate processes would,
//! and — without `--config` — three demo HTTP backends behind a listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::config::{Document, ListenerSpec};
use trackwire_core::{BackendSpec, CheckSpec, PoolSpec, StatusSet};

use trackwire_transport::{Role, Side, Tls};

use crate::Invalid;
use crate::args::DevArgs;
use crate::demo::DemoBackend;
use crate::run::{apply_at_start, bind, cancel_on_signal};

/// The demo document: pool `demo` checked with `GET /readyz` expecting 200.
pub fn demo_document(backends: &[DemoBackend], proxy_bind: std::net::SocketAddr) -> Document {
    let interval = Duration::from_secs(1);
    let check = CheckSpec {
        path: "/readyz".into(),
        expect_status: StatusSet::single(200),
        ..CheckSpec::every(interval)
    };
    Document {
        pools: vec![PoolSpec {
            check: Some(check),
            ..PoolSpec::new(
                "demo",
                backends
                    .iter()
                    .map(|b| BackendSpec::new(&b.name, b.addr.to_string()))
                    .collect(),
            )
        }],
        listeners: vec![ListenerSpec {
            connect_timeout: Duration::from_secs(2),
            ..ListenerSpec::new("demo", proxy_bind, "demo")
        }],
    }
}

/// Spawns a component that stops the others when it ends (on error or not).
fn spawn_linked<T, E>(
    component: &'static str,
    shutdown: &CancellationToken,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, E>>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let token = shutdown.clone();
    tokio::spawn(
        async move {
            let r = fut.await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "component failed; stopping dev");
            }
            token.cancel();
            r
        }
        .instrument(tracing::info_span!("component", name = component)),
    )
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut demo = Vec::new();
    let doc = match &args.config {
        Some(path) => crate::load_document(path)?,
        None => {
            for i in 1..=3 {
                let l = bind("127.0.0.1:0".parse()?, "demo backend").await?;
                demo.push(DemoBackend::spawn(
                    &format!("backend-{i}"),
                    l,
                    shutdown.clone(),
                )?);
            }
            demo_document(&demo, args.proxy_bind)
        }
    };
    if doc.listeners.is_empty() {
        return Err(Invalid("the config defines no [[listener]] for the dev proxy".into()).into());
    }
    let grpc = bind(args.grpc_bind, "--grpc-bind").await?;
    let http = bind(args.http_bind, "--http-bind").await?;
    let agent_check = match args.agent_check_bind {
        Some(addr) => Some(bind(addr, "--agent-check-bind").await?),
        None => None,
    };
    let proxies = trackwire_data_plane::bind(&doc.listeners).await?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let (control_url, pki) = if args.tls {
        let sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            grpc_addr.ip().to_string(),
        ];
        let issued = crate::certs::dev_pki(&args.state_dir, &sans)?;
        (format!("https://{grpc_addr}"), Some(issued))
    } else {
        (format!("http://{grpc_addr}"), None)
    };
    let tls_for = |role: Role, side: Side| -> anyhow::Result<Option<Tls>> {
        match pki
            .as_ref()
            .and_then(|p| p.iter().find(|(r, _)| *r == role))
        {
            Some((_, issued)) => Ok(Some(
                Tls::load(issued.files(), side).map_err(|e| Invalid(e.to_string()))?,
            )),
            None => Ok(None),
        }
    };

    cancel_on_signal(&shutdown);
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cp = spawn_linked(
        "control-plane",
        &shutdown,
        trackwire_control_plane::run(
            trackwire_control_plane::Config {
                tls: tls_for(
                    Role::ControlPlane,
                    Side::Server {
                        client_cert_optional: false,
                    },
                )?,
                ..Default::default()
            },
            Arc::clone(&store),
            trackwire_control_plane::Listeners {
                grpc,
                http: Some(http),
                agent_check,
            },
            shutdown.clone(),
        ),
    );
    apply_at_start(
        Arc::clone(&store),
        &trackwire_control_plane::Config::default().prefix,
        doc.pools.clone(),
        shutdown.clone(),
    )
    .await?;
    let agent = spawn_linked(
        "probe-agent",
        &shutdown,
        trackwire_probe_agent::run(
            trackwire_probe_agent::Config {
                control_plane: vec![control_url.clone()],
                zone: "dev".into(),
                state_dir: None,
                heartbeat: Duration::from_secs(2),
                tls: tls_for(Role::Agent, Side::Client)?,
            },
            None::<TcpListener>,
            shutdown.clone(),
        ),
    );
    let mut proxy_lines = Vec::new();
    for p in &proxies {
        proxy_lines.push(format!(
            "  proxy          {}  (listener {} -> pool {})",
            p.local_addr()?,
            p.spec.name,
            p.spec.pool
        ));
    }
    let dp = spawn_linked(
        "data-plane",
        &shutdown,
        trackwire_data_plane::run(
            trackwire_data_plane::Config {
                control_plane: vec![control_url.clone()],
                listeners: doc.listeners.clone(),
                state_dir: None,
                proxy_id: "dev".into(),
                drain_grace: Duration::from_secs(2),
                workers: 0,
                tls: tls_for(Role::Proxy, Side::Client)?,
            },
            proxies,
            None,
            shutdown.clone(),
        ),
    );

    let mut banner = String::from("trackwire dev is running (Ctrl-C stops it)\n");
    for l in &proxy_lines {
        banner.push_str(l);
        banner.push('\n');
    }
    banner.push_str(&format!("  control-plane  {control_url}  (gRPC)\n"));
    banner.push_str(&format!("  status-page    http://{http_addr}/\n"));
    for b in &demo {
        banner.push_str(&format!("  {:<13}  http://{}\n", b.name, b.addr));
    }
    if let Some(first) = demo.first() {
        let proxy = proxy_lines
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("127.0.0.1:8080")
            .to_string();
        banner.push_str(&format!(
            "\nTry it:\n  curl http://{proxy}/                      # answered by one backend\n  curl -X POST http://{}/toggle   # {} /readyz answers 503\n",
            first.addr, first.name
        ));
    }
    match pki
        .as_ref()
        .and_then(|p| p.iter().find(|(r, _)| *r == Role::Admin))
    {
        Some((_, admin)) => {
            let (ca, cert, key) = (
                admin.ca.display(),
                admin.cert.display(),
                admin.key.display(),
            );
            banner.push_str(&format!(
                "\nEvery gRPC link is mutual TLS (CA and certificates in {dir}). As the admin:\n  \
                 trackwire get backends --control-plane {control_url} --tls-ca {ca} --tls-cert {cert} --tls-key {key}\n  \
                 grpcurl -cacert {ca} -cert {cert} -key {key} {grpc_addr} trackwire.v1.AdminService/ListPools\n\
                 or export TRACKWIRE_CONTROL_PLANE={control_url} TRACKWIRE_TLS_CA={ca} TRACKWIRE_TLS_CERT={cert} TRACKWIRE_TLS_KEY={key}\n",
                dir = args.state_dir.display()
            ));
        }
        None => banner.push_str(&format!(
            "  trackwire get backends --control-plane {control_url}\n"
        )),
    }
    // One write, and a closed stdout (`trackwire dev | head`) is not fatal:
    // the fleet keeps running.
    banner.push('\n');
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), banner.as_bytes());

    let (cp, agent, dp) = tokio::join!(cp, agent, dp);
    cp??;
    agent??;
    dp??;
    Ok(())
}
