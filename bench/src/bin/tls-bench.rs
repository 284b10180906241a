//! What mutual TLS costs on the control plane's gRPC port.
//!
//! ```sh
//! cargo run --release -p trackwire-bench --bin tls-bench
//! ```
//!
//! One control plane on the embedded store, plaintext and mutual TLS side
//! by side in one run, interleaved rounds, medians:
//!
//! - **new connections/s**: `--clients` tasks each loop on a fresh
//!   connection (TCP, then the TLS handshake with an admin certificate, then
//!   HTTP/2) and one `grpc.health.v1.Health/Check` call, for `--seconds`;
//! - **propagation**: an admin `SetBackendState` (drain, then ready)
//!   until a proxy's `Subscribe` stream on an established connection
//!   receives the delta, `--flips` times; p50 and p99.
//!
//! Client and server share this process and the machine's cores, the same
//! way in both modes: the ratio is what to read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{BackendSpec, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;
use trackwire_transport::pki::Ca;
use trackwire_transport::{Role, Side, Tls, TlsFiles};

#[derive(Parser)]
struct Args {
    /// Concurrent connecting clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of one connection-rate measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Admin changes timed per propagation measurement.
    #[arg(long, default_value_t = 100)]
    flips: usize,
    /// Interleaved rounds per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    path: std::path::PathBuf,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::generate("bench.test", 2)?;
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem)?;
        Ok(Pki {
            path: dir.path().to_path_buf(),
            _dir: dir,
            ca,
        })
    }

    fn tls(&self, role: Role, name: &str, side: Side) -> anyhow::Result<Tls> {
        let leaf = self.ca.issue(role, name, &["127.0.0.1".into()], 2)?;
        let (cert, key) = leaf.write(&self.path, role, name)?;
        Ok(Tls::load(
            TlsFiles {
                ca: self.path.join("ca.crt"),
                cert,
                key,
            },
            side,
        )?)
    }
}

struct Mode {
    name: &'static str,
    url: String,
    admin: Option<Tls>,
    proxy: Option<Tls>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn start_cp(tls: Option<Tls>, shutdown: &CancellationToken) -> anyhow::Result<String> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let keys =
        trackwire_control_plane::keys::Keys::new("/trackwire/").map_err(anyhow::Error::msg)?;
    let pool = PoolSpec::new(
        "bench",
        (0..3)
            .map(|i| BackendSpec::new(format!("b{i}"), format!("127.0.0.1:{}", 9000 + i)))
            .collect(),
    );
    trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[pool], 0, false).await?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", grpc.local_addr()?);
    let config = trackwire_control_plane::Config {
        tls,
        ..Default::default()
    };
    tokio::spawn(trackwire_control_plane::run(
        config,
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: None,
        },
        shutdown.clone(),
    ));
    Ok(url)
}

/// New connections per second: connect, one health check, close.
async fn connection_rate(mode: &Mode, clients: usize, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, tls, done, failed) = (
            mode.url.clone(),
            mode.admin.clone(),
            Arc::clone(&done),
            Arc::clone(&failed),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let ok = match trackwire_connect::channel(&url, tls.as_ref()).await {
                    Ok(ch) => tonic_health::pb::health_client::HealthClient::new(ch)
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if ok {
                    done.fetch_add(1, Relaxed);
                } else {
                    failed.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let f = failed.load(Relaxed);
    if f > 0 {
        eprintln!("{}: {f} failed connections", mode.name);
    }
    done.load(Relaxed) as f64 / seconds as f64
}

/// Admin change → delta at a subscribed proxy, on established connections.
async fn propagation(mode: &Mode, flips: usize) -> anyhow::Result<(f64, f64)> {
    let ch = trackwire_connect::channel(&mode.url, mode.proxy.as_ref())
        .await
        .map_err(anyhow::Error::msg)?;
    let mut stream = HealthMapServiceClient::new(ch)
        .subscribe(pb::SubscribeRequest {
            proxy_id: "bench".into(),
            pools: vec!["bench".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    stream.message().await?; // the snapshot
    let ch = trackwire_connect::channel(&mode.url, mode.admin.as_ref())
        .await
        .map_err(anyhow::Error::msg)?;
    let mut admin = AdminServiceClient::new(ch);
    let mut samples = Vec::new();
    for i in 0..flips {
        let state = if i % 2 == 0 {
            pb::AdminState::Drain
        } else {
            pb::AdminState::Ready
        };
        let t0 = Instant::now();
        admin
            .set_backend_state(pb::SetBackendStateRequest {
                pool: "bench".into(),
                backend: "b0".into(),
                state: state as i32,
                ..Default::default()
            })
            .await?;
        stream.message().await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    Ok((q(0.5), q(0.99)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let pki = Pki::new()?;
    let server = pki.tls(
        Role::ControlPlane,
        "cp",
        Side::Server {
            client_cert_optional: false,
        },
    )?;
    let modes = [
        Mode {
            name: "plaintext",
            url: start_cp(None, &shutdown).await?,
            admin: None,
            proxy: None,
        },
        Mode {
            name: "mutual TLS",
            url: start_cp(Some(server), &shutdown).await?,
            admin: Some(pki.tls(Role::Admin, "bench", Side::Client)?),
            proxy: Some(pki.tls(Role::Proxy, "bench", Side::Client)?),
        },
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rates = [Vec::new(), Vec::new()];
    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, m) in modes.iter().enumerate() {
            let r = connection_rate(m, args.clients, args.seconds).await;
            let (a, b) = propagation(m, args.flips).await?;
            eprintln!(
                "round {round} {:<10}: {r:>8.0} conn/s, propagation p50 {a:.2} ms p99 {b:.2} ms",
                m.name
            );
            rates[i].push(r);
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    let (r, a, b) = (rates.map(median), p50.map(median), p99.map(median));
    println!(
        "\n{} clients, {} s per rate measurement, {} changes per propagation measurement, medians of {} interleaved rounds\n",
        args.clients, args.seconds, args.flips, args.rounds
    );
    println!("| mode | new connections/s | propagation p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (i, m) in modes.iter().enumerate() {
        println!("| {} | {:.0} | {:.2} | {:.2} |", m.name, r[i], a[i], b[i]);
    }
    println!(
        "| **TLS / plaintext** | **{:.2}** | **{:.2}** | **{:.2}** |",
        r[1] / r[0],
        a[1] / a[0],
        b[1] / b[0]
    );
    shutdown.cancel();
    Ok(())
}
