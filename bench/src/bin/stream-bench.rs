//! Health-map propagation at fleet scale, on a real etcd.
//!
//! ```sh
//! cargo run --release -p trackwire-bench --bin stream-bench
//! ```
//!
//! 10,000 backends in 100 pools (checked, one agent's verdicts each); 1,000
//! subscribers held by this process as real gRPC streams (50 per HTTP/2
//! connection), each subscribed to every pool; one verdict flip per second
//! for 60 s, written to etcd as an agent session would. Reports p50/p99/max
//! of the time from the etcd commit of a verdict to the last subscriber
//! receiving it, control-plane CPU and RSS (the control plane runs as a child
//! process: this binary re-executed with `--role cp`), bytes sent per flip,
//! and the time for all subscribers to get snapshots again after the control
//! plane is killed and restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use trackwire_core::time::now_ms;

use clap::Parser;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use trackwire_bench::child::{ChildArgs, Running, block_on, free_addr};
use trackwire_bench::{apply, control_plane, cpu_time, pool, rss_bytes, wait_until};
use trackwire_control_plane::keys;
use trackwire_control_plane::store::{EtcdOptions, EtcdStore, Op, Store};
use trackwire_core::convert::health_to_pb;
use trackwire_core::{CheckSpec, HealthState, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    pools: usize,
    #[arg(long, default_value_t = 100)]
    backends_per_pool: usize,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 60)]
    flips: usize,
    #[command(flatten)]
    child: ChildArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.child.role.as_str() {
        "cp" => block_on(cp(args.child)),
        _ => block_on(harness(args)),
    }
}

/// The control plane: gRPC on `bind`, its store the etcd at `connect`.
async fn cp(child: ChildArgs) -> anyhow::Result<()> {
    let store = EtcdStore::connect(&EtcdOptions::new(vec![child.connect])).await?;
    let grpc = TcpListener::bind(&child.bind).await?;
    control_plane(Arc::new(store), grpc, CancellationToken::new()).await
}

/// What every subscriber task reports into.
struct Shared {
    /// (pool, backend, state) of the flip in flight (read by every subscriber per message).
    want: RwLock<Option<(String, String, i32)>>,
    received: AtomicUsize,
    last_receive_ns: AtomicU64,
    first_receive_ns: AtomicU64,
    flip_bytes: AtomicU64,
    snapshots: AtomicUsize,
    epoch_start: Instant,
}

fn spawn_cp(etcd: &str, grpc: &str) -> anyhow::Result<Running> {
    Running::spawn(
        ChildArgs {
            connect: etcd.into(),
            ..ChildArgs::new("cp", grpc)
        }
        .command(None)?,
    )
}

async fn harness(args: Args) -> anyhow::Result<()> {
    let etcd = trackwire_testkit::EtcdCluster::start();
    let endpoints = etcd.endpoints();
    let store: Arc<dyn Store> =
        Arc::new(EtcdStore::connect(&EtcdOptions::new(endpoints.clone())).await?);

    // Facts: pools, one live agent, an UP verdict for every backend.
    let pools: Vec<PoolSpec> = (0..args.pools)
        .map(|p| {
            let backends = (0..args.backends_per_pool).map(|b| {
                let address = format!("10.{}.{}.{}:6443", p / 256, p % 256, b % 250 + 1);
                (format!("b{b}"), address)
            });
            pool(format!("pool-{p}"), backends, CheckSpec::http_default())
        })
        .collect();
    let keys = apply(store.as_ref(), &pools).await?;
    let agent = "00000000-0000-4000-8000-000000000001";
    let lease = store.grant_lease(Duration::from_secs(30)).await?;
    store
        .put(
            &keys.agent(agent),
            keys::encode_agent(pb::StoredAgent {
                agent_id: agent.into(),
                zone: "bench".into(),
                ..Default::default()
            }),
            Some(lease),
        )
        .await?;
    // Verdicts count only with the fingerprint of the spec they are about.
    let fingerprints: std::collections::HashMap<(String, String), u64> = pools
        .iter()
        .flat_map(|p| {
            let check = p.check.clone().unwrap_or_else(CheckSpec::http_default);
            p.backends.iter().map(move |b| {
                (
                    (p.name.clone(), b.name.clone()),
                    trackwire_core::convert::target_fingerprint(&b.address, &check),
                )
            })
        })
        .collect();
    let verdict = |pool: &str, backend: &str, state: HealthState| Op::Put {
        key: keys.verdict(agent, pool, backend),
        value: keys::encode_verdict(pb::Verdict {
            pool: pool.into(),
            backend: backend.into(),
            state: health_to_pb(state),
            since_ms: now_ms(),
            reason: "bench".into(),
            fingerprint: fingerprints
                .get(&(pool.to_string(), backend.to_string()))
                .copied()
                .unwrap_or(0),
        }),
        lease: Some(lease),
    };
    for p in &pools {
        for chunk in p.backends.chunks(100) {
            let ops = chunk
                .iter()
                .map(|b| verdict(&p.name, &b.name, HealthState::Up))
                .collect();
            store.txn(vec![], ops).await?;
        }
    }
    {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = store.keep_alive(lease).await;
            }
        });
    }

    let grpc = free_addr()?;
    let cp = spawn_cp(&endpoints[0], &grpc)?;
    let url = format!("http://{grpc}");
    let shared = Arc::new(Shared {
        want: RwLock::new(None),
        received: AtomicUsize::new(0),
        last_receive_ns: AtomicU64::new(0),
        first_receive_ns: AtomicU64::new(u64::MAX),
        flip_bytes: AtomicU64::new(0),
        snapshots: AtomicUsize::new(0),
        epoch_start: Instant::now(),
    });
    let token = CancellationToken::new();
    let per_conn = 50;
    let mut channels = Vec::new();
    for _ in 0..args.subscribers.div_ceil(per_conn) {
        channels.push(Endpoint::from_shared(url.clone())?.connect_lazy());
    }
    for i in 0..args.subscribers {
        tokio::spawn(subscriber(
            channels[i / per_conn].clone(),
            format!("bench-{i}"),
            Arc::clone(&shared),
            token.clone(),
        ));
    }
    let t = Instant::now();
    let all_snapshots = async || shared.snapshots.load(Relaxed) >= args.subscribers;
    let (two_minutes, ms20) = (Duration::from_secs(120), Duration::from_millis(20));
    wait_until(
        "subscribers did not connect",
        two_minutes,
        ms20,
        all_snapshots,
    )
    .await?;
    println!(
        "stream-bench: {} backends in {} pools, {} subscribers connected in {:.2} s",
        args.pools * args.backends_per_pool,
        args.pools,
        args.subscribers,
        t.elapsed().as_secs_f64()
    );

    // One flip per second.
    let cpu0 = cpu_time(cp.pid())?;
    let window = Instant::now();
    let mut latencies = Vec::new();
    let mut firsts = Vec::new();
    let mut bytes_per_flip = Vec::new();
    let mut rss_max = 0;
    for i in 0..args.flips {
        let pool = format!("pool-{}", rand::random_range(0..args.pools));
        let backend = format!("b{}", rand::random_range(0..args.backends_per_pool));
        let state = if i % 2 == 0 {
            HealthState::Down
        } else {
            HealthState::Up
        };
        // Flip to DOWN, then back UP on the same backend.
        let (pool, backend) = if i % 2 == 1 {
            let w = shared.want.read().clone();
            w.map(|(p, b, _)| (p, b)).unwrap_or((pool, backend))
        } else {
            (pool, backend)
        };
        shared.received.store(0, Relaxed);
        shared.flip_bytes.store(0, Relaxed);
        shared.first_receive_ns.store(u64::MAX, Relaxed);
        *shared.want.write() = Some((pool.clone(), backend.clone(), health_to_pb(state)));
        store
            .txn(vec![], vec![verdict(&pool, &backend, state)])
            .await?;
        let committed = shared.epoch_start.elapsed();
        wait_until(
            &format!("flip {i} not delivered to all subscribers"),
            Duration::from_secs(10),
            Duration::from_millis(1),
            async || shared.received.load(Relaxed) >= args.subscribers,
        )
        .await?;
        let last = Duration::from_nanos(shared.last_receive_ns.load(Relaxed));
        latencies.push(last.saturating_sub(committed));
        firsts.push(
            Duration::from_nanos(shared.first_receive_ns.load(Relaxed)).saturating_sub(committed),
        );
        bytes_per_flip.push(shared.flip_bytes.load(Relaxed));
        rss_max = rss_max.max(rss_bytes(cp.pid())?);
        let next = window + Duration::from_secs(i as u64 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    let cpu = (cpu_time(cp.pid())? - cpu0).as_secs_f64() / window.elapsed().as_secs_f64() * 100.0;
    latencies.sort();
    firsts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    bytes_per_flip.sort();
    println!("flips                         {}", args.flips);
    println!(
        "commit -> last subscriber     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "commit -> first subscriber    p50 {:.1} ms, max {:.1} ms (store + control plane, before fan-out)",
        ms(firsts[firsts.len() / 2]),
        ms(firsts[firsts.len() - 1])
    );
    println!(
        "all flips, sorted (ms)        {}",
        latencies
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("control-plane CPU             {cpu:.0}% of one core (mean over the flips)");
    println!(
        "control-plane RSS (max)       {:.1} MiB",
        rss_max as f64 / 1048576.0
    );
    println!(
        "bytes sent per flip           {} (median, all subscribers; {:.0} per subscriber)",
        bytes_per_flip[bytes_per_flip.len() / 2],
        bytes_per_flip[bytes_per_flip.len() / 2] as f64 / args.subscribers as f64
    );

    // Restart: kill the control plane, start a new one on the same port.
    drop(cp);
    shared.snapshots.store(0, Relaxed);
    let restart = Instant::now();
    let cp = spawn_cp(&endpoints[0], &grpc)?;
    let ms5 = Duration::from_millis(5);
    wait_until(
        "subscribers did not come back",
        two_minutes,
        ms5,
        all_snapshots,
    )
    .await?;
    println!(
        "restart -> all snapshots      {:.2} s ({} subscribers)",
        restart.elapsed().as_secs_f64(),
        args.subscribers
    );
    token.cancel();
    drop(cp);
    Ok(())
}

/// One subscriber: reconnects with a short jittered delay; counts snapshots
/// and the arrival of the flip in flight.
async fn subscriber(channel: Channel, id: String, shared: Arc<Shared>, token: CancellationToken) {
    let mut client = HealthMapServiceClient::new(channel).max_decoding_message_size(64 << 20);
    while !token.is_cancelled() {
        let req = pb::SubscribeRequest {
            pools: vec![],
            proxy_id: id.clone(),
            ..Default::default()
        };
        let Ok(resp) = client.subscribe(req).await else {
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..150))).await;
            continue;
        };
        let mut stream = resp.into_inner();
        let mut in_snapshot = false;
        while let Ok(Some(msg)) = stream.message().await {
            // A snapshot may come in chunks: it counts once the last arrived.
            in_snapshot |= msg.snapshot;
            if in_snapshot {
                if !msg.more {
                    in_snapshot = false;
                    shared.snapshots.fetch_add(1, Relaxed);
                }
                continue;
            }
            let hit = {
                let want = shared.want.read();
                let Some((pool, backend, state)) = want.as_ref() else {
                    continue;
                };
                msg.pools.iter().any(|p| {
                    &p.pool == pool
                        && p.upserts
                            .iter()
                            .any(|e| &e.backend == backend && e.state == *state)
                })
            };
            if hit {
                let now = shared.epoch_start.elapsed().as_nanos() as u64;
                shared.last_receive_ns.fetch_max(now, Relaxed);
                shared.first_receive_ns.fetch_min(now, Relaxed);
                shared
                    .flip_bytes
                    .fetch_add(prost::Message::encoded_len(&msg) as u64, Relaxed);
                shared.received.fetch_add(1, Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(50..150))).await;
    }
}
