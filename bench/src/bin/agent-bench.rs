//! Probe-agent throughput: one agent process checking N HTTP targets at a
//! fixed interval against real loopback listeners.
//!
//! ```sh
//! cargo run --release -p trackwire-bench --bin agent-bench -- --targets 10000 --interval 1s
//! ```
//!
//! The harness runs the control plane (embedded store) and the target HTTP
//! servers in its own process and the agent in a child process (this binary
//! re-executed with `--role agent`), so the agent's CPU and RSS are its own.
//! After a warm-up it measures, over the window: checks/s, failed checks,
//! agent CPU (% of one core), RSS, and the lateness of checks against their
//! schedule (p50/p99 from the agent's histogram; bucket upper bounds).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackwire_bench::child::{ChildArgs, Running, block_on, free_addr};
use trackwire_bench::{
    apply, control_plane, cpu_time, pool, quantile_between, rss_bytes, scrape, start_targets,
};
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{CheckSpec, PoolSpec, StatusSet};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    targets: usize,
    #[arg(long, default_value = "1s", value_parser = trackwire_core::duration::parse)]
    interval: Duration,
    /// Loopback listener ports the targets are spread over.
    #[arg(long, default_value_t = 100)]
    ports: usize,
    #[arg(long, default_value = "10s", value_parser = trackwire_core::duration::parse)]
    warmup: Duration,
    #[arg(long, default_value = "30s", value_parser = trackwire_core::duration::parse)]
    duration: Duration,
    #[command(flatten)]
    child: ChildArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.child.role.as_str() {
        "agent" => block_on(agent(args.child)),
        _ => block_on(harness(args)),
    }
}

/// The agent: its HTTP port on `bind` (for the harness's scrapes),
/// connected to the control plane at `connect`.
async fn agent(child: ChildArgs) -> anyhow::Result<()> {
    let http = TcpListener::bind(&child.bind).await?;
    trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![child.connect],
            zone: "bench".into(),
            state_dir: None,
            heartbeat: Duration::from_secs(2),
            tls: None,
        },
        Some(http),
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

async fn harness(args: Args) -> anyhow::Result<()> {
    let targets = start_targets(args.ports).await?;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", grpc.local_addr()?);
    let token = CancellationToken::new();
    tokio::spawn(control_plane(Arc::clone(&store), grpc, token.clone()));
    let check = CheckSpec {
        path: "/healthz".into(),
        expect_status: StatusSet::single(200),
        interval: args.interval,
        fast_interval: args.interval,
        down_interval: args.interval,
        timeout: args.interval,
        ..CheckSpec::http_default()
    };
    let per_pool = 1_000;
    let pools: Vec<PoolSpec> = (0..args.targets.div_ceil(per_pool))
        .map(|p| {
            let backends = (p * per_pool..((p + 1) * per_pool).min(args.targets))
                .map(|i| (format!("b{i}"), targets[i % targets.len()].clone()));
            pool(format!("pool-{p}"), backends, check.clone())
        })
        .collect();
    apply(store.as_ref(), &pools).await?;

    let metrics_addr = free_addr()?;
    let child = Running::spawn(
        ChildArgs {
            connect: url,
            ..ChildArgs::new("agent", &metrics_addr)
        }
        .command(None)?,
    )?;
    let pid = child.pid();
    println!(
        "agent-bench: {} targets on {} loopback ports, interval {:?}; warm-up {:?}, measuring {:?}",
        args.targets, args.ports, args.interval, args.warmup, args.duration
    );
    tokio::time::sleep(args.warmup).await;
    let before = scrape(&metrics_addr).await?;
    let cpu0 = cpu_time(pid)?;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(args.duration).await;
    let after = scrape(&metrics_addr).await?;
    let cpu1 = cpu_time(pid)?;
    let elapsed = t0.elapsed();
    let rss = rss_bytes(pid)?;
    drop(child);
    token.cancel();

    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let checks = delta("trackwire_agent_checks_total");
    let failed = delta("trackwire_agent_checks_failed_total");
    let rate = checks / elapsed.as_secs_f64();
    let cpu = (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let ms = |v: Option<f64>| {
        v.map(|s| format!("{:.1} ms", s * 1000.0))
            .unwrap_or("n/a".into())
    };
    let late = "trackwire_agent_check_lateness_seconds";
    let dur = "trackwire_agent_check_duration_seconds";
    println!("targets                 {}", args.targets);
    println!(
        "expected checks/s       {:.0}",
        args.targets as f64 / args.interval.as_secs_f64()
    );
    println!("achieved checks/s       {rate:.0}");
    println!("failed checks           {failed:.0}");
    println!("agent CPU               {cpu:.0}% of one core");
    println!(
        "agent RSS               {:.1} MiB",
        rss as f64 / (1024.0 * 1024.0)
    );
    println!(
        "lateness p50 / p99      <= {} / <= {}",
        ms(quantile_between(&before, &after, late, 0.5)),
        ms(quantile_between(&before, &after, late, 0.99))
    );
    println!(
        "check duration p50/p99  <= {} / <= {}",
        ms(quantile_between(&before, &after, dur, 0.5)),
        ms(quantile_between(&before, &after, dur, 0.99))
    );
    Ok(())
}
