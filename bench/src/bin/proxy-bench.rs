//! The data plane against HAProxy's `mode tcp` and a direct connection, side
//! by side in one run.
//!
//! ```sh
//! cargo run --release -p trackwire-bench --bin proxy-bench
//! ```
//!
//! Needs `haproxy` on PATH (Debian's `haproxy` package; installed with apt
//! when missing and running as root). The backend (a sink/echo server) runs
//! in this process; HAProxy and the trackwire proxy run as their own
//! processes (the proxy is this binary re-executed with `--role proxy`,
//! routing from a health map in its fail-static cache, so no control plane
//! is involved). Workloads, each run `--runs` times per target, medians
//! reported:
//!
//! - bulk: 8 connections each sending 512 MiB to a sink (GiB/s);
//! - short: connect, 100-byte request, 100-byte response, close, at
//!   concurrency 64 for 20 s (connections/s);
//! - latency: 100-byte ping-pong on 16 long-lived connections for 10 s
//!   (p50/p99 round trip).
//!
//! `--pin` runs this process (load generator and backend) on CPU 0 and the
//! proxies on the other CPUs (`taskset`), as if they had their own
//! machines; by default everything shares every core. `--workloads` and
//! `--targets` select parts of the matrix.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use trackwire_bench::child::{self, ChildArgs, Running, block_on, free_addr};
use trackwire_bench::{cpu_time, wait_until};
use trackwire_core::config::ListenerSpec;
use trackwire_core::{Endpoint, HealthMap};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    #[arg(long, default_value_t = 8)]
    bulk_connections: usize,
    #[arg(long, default_value = "20s", value_parser = trackwire_core::duration::parse)]
    short_duration: Duration,
    #[arg(long, default_value_t = 64)]
    short_concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = trackwire_core::duration::parse)]
    latency_duration: Duration,
    /// Workloads to run (comma-separated): bulk, short, latency.
    #[arg(long, value_delimiter = ',', default_value = "bulk,short,latency")]
    workloads: Vec<String>,
    /// Pin the load generator and backend (this process) to CPU 0 and the
    /// proxies to the other CPUs, as if they ran on separate machines.
    #[arg(long)]
    pin: bool,
    /// Targets to measure (comma-separated): direct, haproxy, trackwire.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,haproxy,trackwire"
    )]
    targets: Vec<String>,
    #[command(flatten)]
    child: ChildArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.child.role == "proxy" {
        return block_on(proxy(args.child));
    }
    if args.pin && std::env::var_os("PROXY_BENCH_PINNED").is_none() {
        // Re-run this harness on CPU 0 (children are placed explicitly).
        let status = Command::new("taskset")
            .args(["-c", "0"])
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("PROXY_BENCH_PINNED", "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    block_on(harness(args))
}

/// The trackwire proxy on `bind`, routing from the map cached in
/// `state_dir` (no control plane).
async fn proxy(child: ChildArgs) -> anyhow::Result<()> {
    let spec = ListenerSpec {
        connect_timeout: Duration::from_secs(2),
        max_connections: 8_000,
        idle_timeout: Duration::from_secs(300),
        tcp_keepalive: None,
        ..ListenerSpec::new("bench", child.bind.parse()?, "bench")
    };
    let listeners = trackwire_data_plane::bind(std::slice::from_ref(&spec)).await?;
    trackwire_data_plane::run(
        trackwire_data_plane::Config {
            // Nothing listens there: the proxy routes on its cached map.
            control_plane: vec!["http://127.0.0.1:9".into()],
            listeners: vec![spec],
            state_dir: child.state_dir,
            proxy_id: "bench".into(),
            drain_grace: Duration::from_secs(1),
            tls: None,
        },
        listeners,
        None,
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

/// Sink/echo backend: the first byte says what to do. `S`: read to EOF,
/// answer the byte count. `R`: answer every 100-byte request with 100 bytes.
async fn backend() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut kind = [0u8; 1];
                if s.read_exact(&mut kind).await.is_err() {
                    return;
                }
                if kind[0] == b'S' {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = s.write_all(&total.to_be_bytes()).await;
                } else {
                    let mut req = [0u8; 100];
                    while s.read_exact(&mut req).await.is_ok() {
                        if s.write_all(&req).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

struct Target {
    name: &'static str,
    addr: String,
    /// The proxy's process (`None`: the direct connection).
    process: Option<Running>,
}

fn ensure_haproxy() -> anyhow::Result<()> {
    if Command::new("haproxy").arg("-v").output().is_ok() {
        return Ok(());
    }
    eprintln!("proxy-bench: haproxy not found; installing Debian's haproxy");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success();
    anyhow::ensure!(
        ok,
        "apt-get install haproxy failed (run as root, after apt-get update)"
    );
    Ok(())
}

async fn wait_listening(addr: &str) -> anyhow::Result<()> {
    let (limit, poll) = (Duration::from_secs(15), Duration::from_millis(20));
    let listening = async || TcpStream::connect(addr).await.is_ok();
    wait_until(&format!("{addr} not listening"), limit, poll, listening).await
}

async fn harness(args: Args) -> anyhow::Result<()> {
    ensure_haproxy()?;
    let backend = backend().await?;
    let dir = tempfile_dir()?;

    // HAProxy, mode tcp, one server, default threads (all cores).
    let hp_addr = free_addr()?;
    let cfg = format!(
        "global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\nfrontend bench\n    bind {hp_addr}\n    default_backend bench\n\nbackend bench\n    server b1 {backend}\n"
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg)?;
    let cpus = proxy_cpus(args.pin);
    let haproxy_argv = [
        OsStr::new("haproxy"),
        "-f".as_ref(),
        cfg_path.as_ref(),
        "-db".as_ref(),
    ];
    let haproxy = Running::spawn(child::command(&haproxy_argv, cpus.as_deref()))?;

    // trackwire, from a cached map with the one backend UP.
    let tw_addr = free_addr()?;
    let pool = [("b1".to_string(), Endpoint::up("b1", backend.to_string()))];
    let map = HealthMap {
        epoch: 1,
        revision: 1,
        pools: [("bench".to_string(), Arc::new(pool.into()))].into(),
    };
    trackwire_data_plane::cache::save(&dir, &map, &Default::default())?;
    let mut trackwire = ChildArgs {
        state_dir: Some(dir.clone()),
        ..ChildArgs::new("proxy", &tw_addr)
    }
    .command(cpus.as_deref())?;
    // Warnings about the unreachable control plane would only be noise.
    trackwire.env("TRACKWIRE_LOG", "error");
    let trackwire = Running::spawn(trackwire)?;

    let targets = [
        Target {
            name: "direct",
            addr: backend.to_string(),
            process: None,
        },
        Target {
            name: "haproxy",
            addr: hp_addr,
            process: Some(haproxy),
        },
        Target {
            name: "trackwire",
            addr: tw_addr,
            process: Some(trackwire),
        },
    ];
    for t in &targets {
        wait_listening(&t.addr).await?;
    }
    let v = Command::new("haproxy").arg("-v").output()?;
    println!(
        "proxy-bench: {} run(s) per workload; {}",
        args.runs,
        String::from_utf8_lossy(&v.stdout)
            .lines()
            .next()
            .unwrap_or("haproxy")
    );

    // Interleave targets within each run so drift on a noisy machine hits all.
    let mut bulk = vec![Vec::new(); 3];
    let mut short = vec![Vec::new(); 3];
    let mut p50 = vec![Vec::new(); 3];
    let mut p99 = vec![Vec::new(); 3];
    // Proxy CPU (user + system) per short connection (µs) and per GiB (s).
    let mut cpu_conn = vec![Vec::new(); 3];
    let mut cpu_gib = vec![Vec::new(); 3];
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    for w in &args.workloads {
        anyhow::ensure!(
            ["bulk", "short", "latency"].contains(&w.as_str()),
            "--workloads: unknown workload {w:?} (bulk, short, latency)"
        );
    }
    for _ in 0..args.runs {
        for (i, t) in targets.iter().enumerate() {
            if !args.targets.iter().any(|x| x == t.name) {
                continue;
            }
            let cpu = || Some(cpu_time(t.process.as_ref()?.pid()).ok()?.as_secs_f64());
            if wants("bulk") {
                let c0 = cpu();
                let rate = run_bulk(&t.addr, args.bulk_connections, args.bulk_mib).await?;
                bulk[i].push(rate);
                if let (Some(a), Some(b)) = (c0, cpu()) {
                    let gib = args.bulk_connections as f64 * args.bulk_mib as f64 / 1024.0;
                    cpu_gib[i].push((b - a) / gib);
                }
            }
            if wants("short") {
                let c0 = cpu();
                let rate = run_short(&t.addr, args.short_concurrency, args.short_duration).await?;
                short[i].push(rate);
                if let (Some(a), Some(b)) = (c0, cpu()) {
                    let conns = rate * args.short_duration.as_secs_f64();
                    cpu_conn[i].push((b - a) * 1e6 / conns);
                }
            }
            if wants("latency") {
                let (a, b) = run_latency(&t.addr, 16, args.latency_duration).await?;
                p50[i].push(a);
                p99[i].push(b);
            }
        }
    }
    // NaN (printed as such) for a workload not run.
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (mut b, mut s, mut l50, mut l99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cc, mut cg) = (Vec::new(), Vec::new());
    for i in 0..3 {
        cc.push(med(&mut cpu_conn[i]));
        cg.push(med(&mut cpu_gib[i]));
        b.push(med(&mut bulk[i]));
        s.push(med(&mut short[i]));
        l50.push(med(&mut p50[i]));
        l99.push(med(&mut p99[i]));
    }
    println!(
        "\n{:<10} {:>11} {:>13} {:>8} {:>8} {:>15} {:>14}",
        "target", "bulk GiB/s", "short conn/s", "p50 µs", "p99 µs", "CPU µs/conn", "CPU s/GiB"
    );
    for (i, t) in targets.iter().enumerate() {
        println!(
            "{:<10} {:>11.2} {:>13.0} {:>8.0} {:>8.0} {:>15.1} {:>14.3}",
            t.name, b[i], s[i], l50[i], l99[i], cc[i], cg[i]
        );
    }
    println!(
        "\ntrackwire / haproxy:  bulk {:.2}, conn/s {:.2}, p50 {:.2}, p99 {:.2}, CPU/conn {:.2}, CPU/GiB {:.2}",
        b[2] / b[1],
        s[2] / s[1],
        l50[2] / l50[1],
        l99[2] / l99[1],
        cc[2] / cc[1],
        cg[2] / cg[1]
    );
    println!(
        "trackwire / direct:   bulk {:.2}, conn/s {:.2}, p50 {:.2}, p99 {:.2}",
        b[2] / b[0],
        s[2] / s[0],
        l50[2] / l50[0],
        l99[2] / l99[0]
    );
    drop(targets);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The CPUs of the proxies: with `--pin`, every CPU but 0.
fn proxy_cpus(pin: bool) -> Option<String> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    pin.then(|| format!("1-{}", cpus.max(2) - 1))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `conns` connections each send `mib` MiB; GiB/s until the sink confirmed all.
async fn run_bulk(addr: &str, conns: usize, mib: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            s.write_all(b"S").await?;
            let block = vec![0x5au8; 256 * 1024];
            let total = mib * 1024 * 1024;
            let mut sent = 0u64;
            while sent < total {
                s.write_all(&block).await?;
                sent += block.len() as u64;
            }
            s.shutdown().await?;
            let mut got = [0u8; 8];
            s.read_exact(&mut got).await?;
            anyhow::ensure!(u64::from_be_bytes(got) == total, "sink got a short stream");
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let bytes = conns as f64 * mib as f64 * 1024.0 * 1024.0;
    Ok(bytes / start.elapsed().as_secs_f64() / (1024.0 * 1024.0 * 1024.0))
}

/// Short connections at fixed concurrency; connections per second.
async fn run_short(addr: &str, concurrency: usize, duration: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (addr, done, failed, stop) =
            (addr.to_string(), done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let req = [b'R'; 101];
            let mut resp = [0u8; 100];
            while !stop.load(Relaxed) {
                let ok = async {
                    let mut s = TcpStream::connect(&addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&req).await?;
                    s.read_exact(&mut resp).await?;
                    Ok::<(), std::io::Error>(())
                }
                .await;
                match ok {
                    Ok(()) => done.fetch_add(1, Relaxed),
                    Err(_) => failed.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    anyhow::ensure!(
        failed.load(Relaxed) == 0,
        "{} connections failed",
        failed.load(Relaxed)
    );
    Ok(done.load(Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Ping-pong on long-lived connections; (p50, p99) round trip in µs.
async fn run_latency(addr: &str, conns: usize, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, stop) = (addr.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            s.write_all(b"R").await?;
            let req = [7u8; 100];
            let mut resp = [0u8; 100];
            let mut samples = Vec::new();
            while !stop.load(Relaxed) {
                let t = Instant::now();
                s.write_all(&req).await?;
                s.read_exact(&mut resp).await?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<Vec<f64>, std::io::Error>(samples)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(f64::total_cmp);
    anyhow::ensure!(!all.is_empty(), "no round trips");
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((q(0.5), q(0.99)))
}
