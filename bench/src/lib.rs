//! Shared pieces of the benchmarks: child processes and their arguments
//! ([`child`]), process accounting from `/proc`, the descriptor limit,
//! Prometheus text parsing, waiting with a deadline, pools for the control
//! plane, and a minimal loopback HTTP target server. Each binary in
//! `src/bin` keeps only its own workload and report.

pub mod child;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::Store;
use trackwire_core::{AdminState, BackendSpec, CheckSpec, HealthState, PoolSpec, Quorum};

/// CPU time (user + system) of a process, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name (which may hold spaces);
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<u64>()?)
    };
    let ticks = field(11)? + field(12)?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// `CLK_TCK` (`getconf`), 100 when it cannot be read.
fn clock_ticks_per_second() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (the
/// children it starts inherit it) and returns the new soft limit.
// Through util-linux's `prlimit` on this process: std has no setrlimit,
// and the workspace keeps `unsafe` to the data plane's splice module.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let (soft, hard) = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .ok_or_else(|| std::io::Error::other("no 'Max open files' in /proc/self/limits"))?;
    if soft == hard {
        return soft.parse().map_err(std::io::Error::other);
    }
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "prlimit exited with {status}"
        )));
    }
    // "unlimited" cannot be a descriptor limit; report what the kernel caps at.
    Ok(hard.parse().unwrap_or(1 << 20))
}

/// Resident set size in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Fetches `http://addr/metrics` and returns `series → value` (label sets kept verbatim).
pub async fn scrape(addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.rsplit_once(' ')
            && let Ok(v) = v.parse::<f64>()
        {
            out.insert(k.to_string(), v);
        }
    }
    Ok(out)
}

/// The smallest `le` bound of histogram `name` holding quantile `q` of the
/// observations made between two scrapes.
pub fn quantile_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

/// Polls `done` every `poll` until it holds; an error naming `what` after
/// `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    poll: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !done().await {
        anyhow::ensure!(t.elapsed() < limit, "{what}");
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// A pool of the given `(name, address)` backends, all ready and of weight
/// 1, with `check` and initially DOWN, one agent per backend.
pub fn pool(
    name: String,
    backends: impl IntoIterator<Item = (String, String)>,
    check: CheckSpec,
) -> PoolSpec {
    PoolSpec {
        name,
        backends: backends
            .into_iter()
            .map(|(name, address)| BackendSpec {
                name,
                address,
                weight: 1,
                admin_state: AdminState::Ready,
                backup: false,
                zone: String::new(),
            })
            .collect(),
        check: Some(check),
        quorum: Quorum::Majority,
        initial_state: HealthState::Down,
        replicas: 1,
        zone_spread: false,
        damping: None,
        grpc_xds: false,
    }
}

/// Writes `pools` under the default key prefix, as `trackwire apply` would.
pub async fn apply(store: &dyn Store, pools: &[PoolSpec]) -> anyhow::Result<Keys> {
    let keys = Keys::new("/trackwire/").map_err(anyhow::Error::msg)?;
    trackwire_control_plane::writes::apply(store, &keys, pools, 0, false)
        .await
        .context("apply")?;
    Ok(keys)
}

/// A control plane on `store` serving gRPC on `grpc` (no HTTP port) until
/// `shutdown`.
pub async fn control_plane(
    store: Arc<dyn Store>,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listeners = trackwire_control_plane::Listeners {
        grpc,
        http: None,
        agent_check: None,
    };
    trackwire_control_plane::run(Default::default(), store, listeners, shutdown).await?;
    Ok(())
}

/// Serves `HTTP/1.1 200 ok` to every request on `n` loopback ports, closing
/// each connection after the answer. Returns the addresses.
pub async fn start_targets(n: usize) -> anyhow::Result<Vec<String>> {
    let mut addrs = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(l.local_addr()?.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let mut seen = 0;
                    loop {
                        match s.read(&mut buf[seen..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen += n,
                        }
                        if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") || seen == buf.len() {
                            break;
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
    }
    Ok(addrs)
}
