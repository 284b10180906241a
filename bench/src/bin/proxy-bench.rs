//! The data plane against HAProxy's `mode tcp` and a direct connection, side
//! by side in one run, loaded by external generators (`wrk`, `iperf3`) in
//! front of real backends (nginx, `iperf3 -s`).
//!
//! ```sh
//! cargo run --release -p trackwire-bench --bin proxy-bench
//! ```
//!
//! Needs `wrk`, `iperf3`, `nginx` and `haproxy` (Debian's `wrk`, `iperf3`,
//! `nginx-core` and `haproxy`, installed with apt-get when missing and
//! running as root). Everything runs as its own process: nginx (this run's
//! config in a temp dir, one process; a system nginx is never used) and
//! `iperf3 -s` are the backends; HAProxy (`mode tcp`, `nbthread` = CPUs)
//! and the trackwire proxy (this binary re-executed with `--role proxy`,
//! routing from a health map in its fail-static cache, so no control plane
//! is involved; `TRACKWIRE_WORKERS` worker threads, one per CPU by default;
//! one process in front of nginx, one in front of iperf3) are
//! the targets besides `direct`. The descriptor limit is raised to the hard
//! limit (children inherit it). Every child, and every network namespace,
//! is removed at the end, also on an error, a panic or Ctrl-C.
//!
//! Workloads (`--workloads`, default all), each in `--rounds` (3) rounds
//! interleaving the `--targets` (direct, haproxy, trackwire) in an order
//! rotating per round; medians reported:
//!
//! - short: `wrk -t2 -c64 -H 'Connection: close'` for `--duration` (8 s):
//!   new connections/s, and the proxy's CPU time (user + system) per
//!   connection;
//! - keepalive: `wrk -t2 -c64 --latency` for `--duration`: requests/s and
//!   p99 latency;
//! - bulk: `iperf3 -P4 -t` `--bulk-seconds` (5): GB/s received, and the
//!   proxy's CPU seconds per GiB;
//! - idle: `--idle-connections` (4000) connections to nginx held open, each
//!   having sent one byte the proxy relays: the growth of the RSS of a
//!   freshly started proxy process (for direct, of a fresh nginx) per
//!   connection (fresh, as allocators keep freed memory for reuse);
//! - shaped (as root, with `ip` and `tc`): three network namespaces
//!   (client, proxy, server) linked by veth pairs shaped with `tbf` to each
//!   `--shaped` rate (1gbit,10gbit) in both directions. Bulk from the
//!   client to the server routed through the proxy namespace (direct),
//!   against through a trackwire proxy there: Gbit/s and the ratio. Only
//!   198.18.0.0/15 addresses are used, and only inside the namespaces.
//!   `--no-shaped` skips it.
//!
//! The report names the machine, the tool versions and the command line,
//! and warns when direct new connections/s is not 1.5× the best proxy's
//! (wrk would then be the bottleneck of the proxies' figure too).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use trackwire_bench::child::{self, ChildArgs, Running, block_on, free_addr};
use trackwire_bench::{cpu_time, raise_nofile_limit, rss_bytes, wait_until};
use trackwire_core::config::ListenerSpec;
use trackwire_core::{Endpoint, HealthMap};

const TARGETS: [&str; 3] = ["direct", "haproxy", "trackwire"];
const WORKLOADS: [&str; 5] = ["short", "keepalive", "bulk", "idle", "shaped"];

// The report's metrics (the samples' keys).
const CONN: &str = "new conn/s";
const REQ: &str = "ka req/s";
const P99: &str = "p99 ms";
const BULK: &str = "bulk GB/s";
const CPU_CONN: &str = "CPU µs/conn";
const CPU_GIB: &str = "CPU s/GiB";
const IDLE: &str = "idle KB/conn";

// The shaped workload's addresses: 198.18.0.0/15 (benchmarking) only.
const CL_NET: &str = "198.18.1.0/24";
const SV_NET: &str = "198.18.2.0/24";
const PX_CL: &str = "198.18.1.2";
const PX_SV: &str = "198.18.2.1";
const SV: &str = "198.18.2.2";
const SHAPED_IPERF_PORT: u16 = 5201;
const SHAPED_PROXY_PORT: u16 = 8080;

#[derive(Parser)]
struct Args {
    /// Rounds of each workload (targets interleaved; medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each wrk run (short, keepalive).
    #[arg(long, default_value = "8s", value_parser = trackwire_core::duration::parse)]
    duration: Duration,
    /// Seconds of each iperf3 run (bulk, shaped).
    #[arg(long, default_value_t = 5)]
    bulk_seconds: u32,
    /// Connections the idle workload holds open through each target.
    #[arg(long, default_value_t = 4000)]
    idle_connections: usize,
    /// Link rates of the shaped workload (tc rates, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1gbit,10gbit")]
    shaped: Vec<String>,
    /// Skip the shaped workload.
    #[arg(long)]
    no_shaped: bool,
    /// Workloads to run (comma-separated): short, keepalive, bulk, idle,
    /// shaped.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short,keepalive,bulk,idle,shaped"
    )]
    workloads: Vec<String>,
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
    // Before any child starts: they inherit it (and a proxy started by hand
    // raises its own).
    let nofile = raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    if args.child.role == "proxy" {
        return block_on(proxy(args.child));
    }
    block_on(async move {
        // Dropping the harness on a signal kills its children and deletes
        // its namespaces (their guards' Drop).
        tokio::select! {
            r = harness(args, nofile) => r,
            s = interrupted() => bail!("interrupted by {s}"),
        }
    })
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The trackwire proxy on `bind`, routing from the map cached in
/// `state_dir` (no control plane).
async fn proxy(child: ChildArgs) -> anyhow::Result<()> {
    let spec = ListenerSpec {
        connect_timeout: Duration::from_secs(2),
        max_connections: 10_000,
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
            // One per CPU, as HAProxy's nbthread here.
            // As `trackwire data-plane --workers` reads it (0: one per CPU).
            workers: trackwire_workers(),
            tls: None,
        },
        listeners,
        None,
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

/// The external programs, found on PATH or in the sbin directories.
struct Tools {
    wrk: PathBuf,
    iperf3: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // The effective uid: the second field of `Uid:`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

/// The tools, installing the Debian packages of those missing (as root).
fn ensure_tools() -> anyhow::Result<Tools> {
    const PACKAGES: [(&str, &str); 4] = [
        ("wrk", "wrk"),
        ("iperf3", "iperf3"),
        ("nginx", "nginx-core"),
        ("haproxy", "haproxy"),
    ];
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        anyhow::ensure!(
            is_root(),
            "missing programs: install the Debian packages {} (or run this as root)",
            missing.join(" ")
        );
        eprintln!("proxy-bench: installing {}", missing.join(" "));
        if !apt_install(&missing)? {
            // The package lists may be stale or absent: refresh them, once.
            run("apt-get update -qq")?;
            anyhow::ensure!(
                apt_install(&missing)?,
                "apt-get install {} failed",
                missing.join(" ")
            );
        }
    }
    let get = |p: &str| find_program(p).with_context(|| format!("{p} not found"));
    Ok(Tools {
        wrk: get("wrk")?,
        iperf3: get("iperf3")?,
        nginx: get("nginx")?,
        haproxy: get("haproxy")?,
    })
}

fn apt_install(packages: &[&str]) -> anyhow::Result<bool> {
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    Ok(status.success())
}

/// Runs `command` (words without quoting: no argument holds a space) to
/// completion: its stdout, or an error with its stderr.
fn run(command: &str) -> anyhow::Result<String> {
    let mut words = command.split_whitespace();
    let program = words.next().context("an empty command")?;
    let out = Command::new(program)
        .args(words)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `argv` under `ip netns exec netns` when `netns` is given.
fn in_netns(netns: Option<&str>, argv: &[&OsStr]) -> Vec<OsString> {
    let prefix = netns.map(|ns| ["ip", "netns", "exec", ns].map(OsString::from));
    let rest = argv.iter().map(|a| a.to_os_string());
    prefix.into_iter().flatten().chain(rest).collect()
}

fn port(addr: &str) -> anyhow::Result<u16> {
    Ok(addr
        .parse::<SocketAddr>()
        .with_context(|| format!("bad address {addr}"))?
        .port())
}

/// Whether the `/proc/net/tcp` table `table` has a socket listening on
/// `port`.
fn listens(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address (hex ip:port) and st (0A: LISTEN).
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

/// Waits until something listens on TCP `port` (in namespace `netns`).
/// Read from `/proc/net/tcp`: a probing connection would start an iperf3
/// test (and in a namespace would come from the wrong one).
async fn wait_listening(what: &str, port: u16, netns: Option<&str>) -> anyhow::Result<()> {
    let table = || match netns {
        Some(ns) => run(&format!("ip netns exec {ns} cat /proc/net/tcp")).ok(),
        None => std::fs::read_to_string("/proc/net/tcp").ok(),
    };
    let listening = async || table().is_some_and(|t| listens(&t, port));
    let (limit, poll) = (Duration::from_secs(15), Duration::from_millis(25));
    let what = format!("{what} not listening on port {port} after {limit:?}");
    wait_until(&what, limit, poll, listening).await
}

/// What the harness starts its processes with.
struct Env {
    tools: Tools,
    dir: PathBuf,
    nofile: u64,
    cpus: usize,
    /// HAProxy's global `maxconn`: 30000, or what the descriptors allow.
    haproxy_maxconn: u64,
}

/// nginx with this run's config in `dir/tag`, on a free loopback port:
/// `ok\n` to every request, `/nginx_status` the stub status. One process
/// (`master_process off`): the one that holds the connections, so its RSS
/// is theirs, and a kill stops all of it.
async fn spawn_nginx(env: &Env, tag: &str) -> anyhow::Result<(Running, String)> {
    let addr = free_addr()?;
    let dir = env.dir.join(tag);
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        "master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_header_timeout 300s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen {addr} backlog=4096;
        location / {{ return 200 \"ok\\n\"; }}
        location = /nginx_status {{ stub_status; }}
    }}
}}
",
        nofile = env.nofile
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let argv = [
        env.tools.nginx.as_os_str(),
        "-c".as_ref(),
        path.as_os_str(),
        "-p".as_ref(),
        dir.as_os_str(),
        "-g".as_ref(),
        "daemon off;".as_ref(),
    ];
    let nginx = Running::spawn(child::command(&argv, None))?;
    wait_listening("nginx", port(&addr)?, None).await?;
    Ok((nginx, addr))
}

/// `iperf3 -s` on `addr` (in `netns`); it serves one test at a time.
async fn spawn_iperf3(env: &Env, addr: &str, netns: Option<&str>) -> anyhow::Result<Running> {
    let sa: SocketAddr = addr.parse()?;
    let (ip, port) = (sa.ip().to_string(), sa.port().to_string());
    let argv = [
        env.tools.iperf3.as_os_str(),
        "-s".as_ref(),
        "-B".as_ref(),
        ip.as_ref(),
        "-p".as_ref(),
        port.as_ref(),
    ];
    let server = Running::spawn(child::command(&in_netns(netns, &argv), None))?;
    wait_listening("iperf3 -s", sa.port(), netns).await?;
    Ok(server)
}

/// HAProxy, `mode tcp`, one frontend per `(name, bind, server)` route.
async fn spawn_haproxy(
    env: &Env,
    tag: &str,
    routes: &[(&str, &str, &str)],
) -> anyhow::Result<Running> {
    let mut cfg = format!(
        "global\n    nbthread {}\n    maxconn {}\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5m\n    timeout server 5m\n",
        env.cpus, env.haproxy_maxconn
    );
    for (name, bind, server) in routes {
        cfg += &format!(
            "\nfrontend {name}\n    bind {bind}\n    maxconn 30000\n    default_backend {name}\n\
             \nbackend {name}\n    server {name} {server}\n"
        );
    }
    let path = env.dir.join(format!("{tag}.cfg"));
    std::fs::write(&path, cfg)?;
    let argv = [
        env.tools.haproxy.as_os_str(),
        "-f".as_ref(),
        path.as_os_str(),
        "-db".as_ref(),
    ];
    let haproxy = Running::spawn(child::command(&argv, None))?;
    for (_, bind, _) in routes {
        wait_listening("haproxy", port(bind)?, None).await?;
    }
    Ok(haproxy)
}

/// A trackwire proxy (this binary, `--role proxy`) on `bind` in `netns`,
/// routing to `backend` from a map cached in its state dir `dir/tag`.
async fn spawn_trackwire(
    env: &Env,
    tag: &str,
    bind: &str,
    backend: &str,
    netns: Option<&str>,
) -> anyhow::Result<Running> {
    let state_dir = env.dir.join(tag);
    let pool = [("b1".to_string(), Endpoint::up("b1", backend))];
    let map = HealthMap {
        epoch: 1,
        revision: 1,
        pools: [("bench".to_string(), Arc::new(pool.into()))].into(),
    };
    trackwire_data_plane::cache::save(&state_dir, &map, &Default::default())?;
    let argv = ChildArgs {
        state_dir: Some(state_dir),
        ..ChildArgs::new("proxy", bind)
    }
    .argv()?;
    let argv: Vec<&OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
    let mut command = child::command(&in_netns(netns, &argv), None);
    // Warnings about the unreachable control plane would only be noise.
    command.env("TRACKWIRE_LOG", "error");
    let proxy = Running::spawn(command)?;
    wait_listening("trackwire", port(bind)?, netns).await?;
    Ok(proxy)
}

/// One target of the loopback workloads.
struct Target {
    name: &'static str,
    /// In front of nginx.
    http: String,
    /// In front of `iperf3 -s`.
    bulk: String,
    /// The processes whose CPU time the workloads on `http` and on `bulk`
    /// cost (`None`: direct).
    cpu: Option<(u32, u32)>,
}

/// Samples by (row, metric).
#[derive(Default)]
struct Samples(BTreeMap<(String, String), Vec<f64>>);

impl Samples {
    fn push(&mut self, row: &str, metric: &str, value: f64) {
        let key = (row.to_string(), metric.to_string());
        self.0.entry(key).or_default().push(value);
    }

    fn median(&self, row: &str, metric: &str) -> Option<f64> {
        let key = (row.to_string(), metric.to_string());
        let mut v: Vec<f64> = self
            .0
            .get(&key)?
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
}

async fn harness(args: Args, nofile: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    for w in &args.workloads {
        anyhow::ensure!(
            WORKLOADS.contains(&w.as_str()),
            "--workloads: unknown workload {w:?} ({})",
            WORKLOADS.join(", ")
        );
    }
    for t in &args.targets {
        anyhow::ensure!(
            TARGETS.contains(&t.as_str()),
            "--targets: unknown target {t:?} ({})",
            TARGETS.join(", ")
        );
    }
    anyhow::ensure!(args.rounds > 0, "--rounds: at least 1");
    anyhow::ensure!(
        args.duration >= Duration::from_secs(1),
        "--duration: at least 1s"
    );
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    let targeted = |t: &str| args.targets.iter().any(|x| x == t);
    let rates = parse_rates(&args.shaped)?;

    let tools = ensure_tools()?;
    // Removed when dropped: after the processes, declared later, which use it.
    let dir = tempfile::Builder::new().prefix("proxy-bench-").tempdir()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // HAProxy needs 2 descriptors a connection and some; it refuses to
    // start when its maxconn does not fit the descriptor limit.
    let haproxy_maxconn = 30_000.min(nofile.saturating_sub(100) / 2);
    let env = Env {
        tools,
        dir: dir.path().to_path_buf(),
        nofile,
        cpus,
        haproxy_maxconn,
    };
    print_header(&env, &args);

    // The backends, and the targets in front of them. Killed when dropped.
    let mut procs: Vec<(&str, Running)> = Vec::new();
    let (nginx, nginx_addr) = spawn_nginx(&env, "nginx").await?;
    procs.push(("nginx", nginx));
    let iperf_addr = free_addr()?;
    procs.push(("iperf3 -s", spawn_iperf3(&env, &iperf_addr, None).await?));
    let mut targets = Vec::new();
    if targeted("direct") {
        targets.push(Target {
            name: "direct",
            http: nginx_addr.clone(),
            bulk: iperf_addr.clone(),
            cpu: None,
        });
    }
    if targeted("haproxy") {
        let (http, bulk) = (free_addr()?, free_addr()?);
        let routes = [
            ("http", http.as_str(), nginx_addr.as_str()),
            ("bulk", bulk.as_str(), iperf_addr.as_str()),
        ];
        let haproxy = spawn_haproxy(&env, "haproxy", &routes).await?;
        let pid = haproxy.pid();
        procs.push(("haproxy", haproxy));
        targets.push(Target {
            name: "haproxy",
            http,
            bulk,
            cpu: Some((pid, pid)),
        });
    }
    if targeted("trackwire") {
        let (http, bulk) = (free_addr()?, free_addr()?);
        let tw_http = spawn_trackwire(&env, "tw-http", &http, &nginx_addr, None).await?;
        let tw_bulk = spawn_trackwire(&env, "tw-bulk", &bulk, &iperf_addr, None).await?;
        let cpu = Some((tw_http.pid(), tw_bulk.pid()));
        procs.push(("trackwire (http)", tw_http));
        procs.push(("trackwire (bulk)", tw_bulk));
        targets.push(Target {
            name: "trackwire",
            http,
            bulk,
            cpu,
        });
    }

    let mut samples = Samples::default();
    let cpu = |pid: Option<u32>| Some(cpu_time(pid?).ok()?.as_secs_f64());
    let loopback = ["short", "keepalive", "bulk", "idle"];
    for round in 0..args.rounds {
        for w in loopback.into_iter().filter(|w| wants(w)) {
            for k in 0..targets.len() {
                let t = &targets[(k + round) % targets.len()];
                for (name, p) in &mut procs {
                    if let Some(status) = p.try_wait()? {
                        bail!("{name} exited ({status})");
                    }
                }
                let tag = format!("[{}/{}] {w:<9} {:<9}", round + 1, args.rounds, t.name);
                let what = || format!("{w} on {}, round {}", t.name, round + 1);
                match w {
                    "short" => {
                        let pid = t.cpu.map(|c| c.0);
                        let c0 = cpu(pid);
                        let r = wrk(&env, &t.http, args.duration, true)
                            .await
                            .with_context(what)?;
                        samples.push(t.name, CONN, r.rps);
                        let mut line = format!("{tag} {:.0} conn/s", r.rps);
                        if let (Some(a), Some(b)) = (c0, cpu(pid))
                            && r.requests > 0
                        {
                            let us = (b - a) * 1e6 / r.requests as f64;
                            samples.push(t.name, CPU_CONN, us);
                            line += &format!(", CPU {us:.1} µs/conn");
                        }
                        eprintln!("{line}{}", r.warning);
                    }
                    "keepalive" => {
                        let r = wrk(&env, &t.http, args.duration, false)
                            .await
                            .with_context(what)?;
                        samples.push(t.name, REQ, r.rps);
                        let p99 = r.p99_ms.context("wrk printed no 99% latency")?;
                        samples.push(t.name, P99, p99);
                        eprintln!("{tag} {:.0} req/s, p99 {p99:.2} ms{}", r.rps, r.warning);
                    }
                    "bulk" => {
                        let pid = t.cpu.map(|c| c.1);
                        let c0 = cpu(pid);
                        let r = iperf(&env, None, t.bulk.parse()?, args.bulk_seconds)
                            .await
                            .with_context(what)?;
                        let gbs = r.bits_per_second / 8e9;
                        samples.push(t.name, BULK, gbs);
                        let mut line = format!("{tag} {gbs:.2} GB/s");
                        if let (Some(a), Some(b)) = (c0, cpu(pid))
                            && r.bytes > 0.0
                        {
                            let s = (b - a) / (r.bytes / (1u64 << 30) as f64);
                            samples.push(t.name, CPU_GIB, s);
                            line += &format!(", CPU {s:.3} s/GiB");
                        }
                        eprintln!("{line}");
                    }
                    _ /* idle */ => {
                        let tag2 = format!("idle-{round}-{}", t.name);
                        let kb = idle(&env, t.name, &tag2, args.idle_connections)
                            .await
                            .with_context(what)?;
                        samples.push(t.name, IDLE, kb);
                        eprintln!("{tag} {kb:.2} KB/conn");
                    }
                }
                // Let the last run's sockets and CPU settle.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    let mut shaped_ran = false;
    if wants("shaped") && !args.no_shaped {
        let why_not = if !targeted("trackwire") {
            Some("compares direct with trackwire, which is not a target")
        } else if !is_root() {
            Some("needs root")
        } else if find_program("ip").is_none() || find_program("tc").is_none() {
            Some("needs ip and tc (iproute2)")
        } else {
            None
        };
        match why_not {
            Some(why) => eprintln!("proxy-bench: shaped skipped: {why}"),
            None => {
                shaped(&env, &args, &rates, &mut samples).await?;
                shaped_ran = true;
            }
        }
    }
    drop(procs);
    report(&targets, &samples, shaped_ran.then_some(rates.as_slice()));
    eprintln!(
        "proxy-bench: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    drop(dir);
    Ok(())
}

fn print_header(env: &Env, args: &Args) {
    let kernel = run("uname -r").unwrap_or_default();
    println!(
        "proxy-bench: {} CPUs, kernel {}, RLIMIT_NOFILE {}",
        env.cpus,
        kernel.trim(),
        env.nofile
    );
    let t = &env.tools;
    println!(
        "  {}; {}; {}; {}",
        version(&t.haproxy, "-v"),
        version(&t.nginx, "-v"),
        version(&t.wrk, "-v"),
        version(&t.iperf3, "-v")
    );
    println!(
        "  haproxy: nbthread {}, maxconn {} (global), 30000 (frontends); \
         trackwire: workers {}, max_connections 10000, idle_timeout 5m, no TCP keep-alive",
        env.cpus,
        env.haproxy_maxconn,
        match trackwire_workers() {
            0 => format!("{} (one per CPU)", env.cpus),
            n => n.to_string(),
        }
    );
    println!(
        "  {} round(s); wrk -t2 -c64 for {:?}; iperf3 -P4 -t{}; {} idle connections; \
         shaped links {}",
        args.rounds,
        args.duration,
        args.bulk_seconds,
        args.idle_connections,
        if args.no_shaped {
            "off".to_string()
        } else {
            args.shaped.join(",")
        }
    );
    println!("  command: {}", command_line());
}

/// The first line `program flag` prints (stdout or stderr), trimmed of
/// copyright and URL.
fn version(program: &Path, flag: &str) -> String {
    let Ok(out) = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
    else {
        return format!("{} (no version)", program.display());
    };
    let text = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("?");
    let line = line.split(" Copyright").next().unwrap_or(line);
    let line = line.split(" - http").next().unwrap_or(line);
    line.trim_start_matches("nginx version: ")
        .trim()
        .to_string()
}

fn command_line() -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    };
    std::env::args()
        .map(|a| {
            if plain(&a) {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What wrk measured.
struct Wrk {
    rps: f64,
    requests: u64,
    p99_ms: Option<f64>,
    /// Errors wrk counted, as a line suffix (empty when none).
    warning: String,
}

/// `wrk -t2 -c64` on `http://addr/` for `duration`: with `close`, a new
/// connection per request; otherwise keep-alive, with the latency
/// distribution.
async fn wrk(env: &Env, addr: &str, duration: Duration, close: bool) -> anyhow::Result<Wrk> {
    let mut command = tokio::process::Command::new(&env.tools.wrk);
    command.args(["-t2", "-c64", &format!("-d{}s", duration.as_secs())]);
    if close {
        command.args(["-H", "Connection: close"]);
    } else {
        command.arg("--latency");
    }
    command
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = command.output().await.context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_wrk(&stdout).with_context(|| format!("wrk's output:\n{stdout}"))
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut rps = None;
    let mut requests = None;
    let mut p99_ms = None;
    let mut warning = String::new();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            requests = words[0].parse::<u64>().ok();
        } else if words.first() == Some(&"99%") {
            p99_ms = words.get(1).and_then(|v| wrk_ms(v));
        } else if line.starts_with("Socket errors:") || line.starts_with("Non-2xx") {
            warning += &format!(" (wrk: {line})");
        }
    }
    Ok(Wrk {
        rps: rps.context("no Requests/sec")?,
        requests: requests.context("no request count")?,
        p99_ms,
        warning,
    })
}

/// A wrk duration (`850.00us`, `1.06ms`, `2.00s`, `1.00m`) in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    [
        ("us", 1e-3),
        ("ms", 1.0),
        ("s", 1e3),
        ("m", 60e3),
        ("h", 3600e3),
    ]
    .into_iter()
    .find_map(|(unit, ms)| Some(v.strip_suffix(unit)?.parse::<f64>().ok()? * ms))
}

/// What iperf3 measured at the receiver.
struct Iperf {
    bytes: f64,
    bits_per_second: f64,
}

/// `iperf3 -c` to `addr`, 4 streams for `seconds` (from namespace `netns`).
async fn iperf(
    env: &Env,
    netns: Option<&str>,
    addr: SocketAddr,
    seconds: u32,
) -> anyhow::Result<Iperf> {
    let (ip, port, t) = (
        addr.ip().to_string(),
        addr.port().to_string(),
        seconds.to_string(),
    );
    let client = [
        env.tools.iperf3.as_os_str(),
        "-c".as_ref(),
        ip.as_ref(),
        "-p".as_ref(),
        port.as_ref(),
        "-P4".as_ref(),
        "-t".as_ref(),
        t.as_ref(),
        "-J".as_ref(),
    ];
    let argv = in_netns(netns, &client);
    let mut busy = 0;
    loop {
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = command.output().await.context("running iperf3")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 printed no JSON ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
            // The server still finishing the previous test.
            if busy < 3 && error.contains("busy") {
                busy += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            bail!("iperf3 to {addr}: {error}");
        }
        let sum = &json["end"]["sum_received"];
        return Ok(Iperf {
            bytes: sum["bytes"]
                .as_f64()
                .context("iperf3: no end.sum_received.bytes")?,
            bits_per_second: sum["bits_per_second"]
                .as_f64()
                .context("iperf3: no end.sum_received.bits_per_second")?,
        });
    }
}

/// Opens `n` connections through a fresh `target` (a fresh nginx behind
/// it) and returns the growth of the RSS of the process holding them (the
/// proxy; for direct, nginx), in KB per connection.
async fn idle(env: &Env, target: &str, tag: &str, n: usize) -> anyhow::Result<f64> {
    let (nginx, nginx_addr) = spawn_nginx(env, &format!("{tag}-nginx")).await?;
    let (proxy, addr) = match target {
        "direct" => (None, nginx_addr.clone()),
        "haproxy" => {
            let bind = free_addr()?;
            let routes = [("http", bind.as_str(), nginx_addr.as_str())];
            (Some(spawn_haproxy(env, tag, &routes).await?), bind)
        }
        _ => {
            let bind = free_addr()?;
            let tw = spawn_trackwire(env, tag, &bind, &nginx_addr, None).await?;
            (Some(tw), bind)
        }
    };
    let pid = proxy.as_ref().unwrap_or(&nginx).pid();
    let before = settled_rss(pid).await?;
    let mut open = Vec::with_capacity(n);
    // In batches: a burst of thousands of SYNs would overflow the backlog.
    while open.len() < n {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..(n - open.len()).min(200) {
            let addr = addr.clone();
            batch.spawn(async move { open_idle(&addr).await });
        }
        while let Some(s) = batch.join_next().await {
            open.push(s??);
        }
    }
    // Every byte relayed: nginx is reading a request on each connection.
    let relayed = async || {
        nginx_reading(&nginx_addr)
            .await
            .is_ok_and(|r| r >= n as u64)
    };
    let limit = Duration::from_secs(20);
    let what = format!("nginx does not see {n} connections sending after {limit:?}");
    if let Err(e) = wait_until(&what, limit, Duration::from_millis(50), relayed).await {
        eprintln!("proxy-bench: warning: {e}");
    }
    let after = settled_rss(pid).await?;
    drop(open);
    drop(proxy);
    drop(nginx);
    Ok((after as f64 - before as f64) / 1024.0 / n as f64)
}

async fn connect_and_send(addr: &str) -> std::io::Result<TcpStream> {
    let connect = TcpStream::connect(addr);
    let mut s = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(b"G").await?;
    Ok(s)
}

/// A connection to `addr` that sent `G` (an HTTP request's first byte);
/// tried twice.
async fn open_idle(addr: &str) -> anyhow::Result<TcpStream> {
    if let Ok(s) = connect_and_send(addr).await {
        return Ok(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    connect_and_send(addr)
        .await
        .with_context(|| format!("opening an idle connection to {addr} (tried twice)"))
}

/// nginx's `Reading` count (connections it is reading a request from).
async fn nginx_reading(addr: &str) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /nginx_status HTTP/1.0\r\n\r\n").await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let mut words = answer.split_whitespace().skip_while(|w| *w != "Reading:");
    words
        .nth(1)
        .context("no Reading: in nginx's stub status")?
        .parse()
        .context("nginx's Reading: count")
}

/// The RSS of `pid` once two readings 100 ms apart agree, or after 1 s.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut last = rss_bytes(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_bytes(pid)?;
        if now == last || start.elapsed() >= Duration::from_secs(1) {
            return Ok(now);
        }
        last = now;
    }
}

/// `tc` rates (`1gbit`) with their bits per second.
fn parse_rates(rates: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    rates
        .iter()
        .map(|r| {
            let lower = r.to_ascii_lowercase();
            let digits = lower.find(|c: char| !c.is_ascii_digit() && c != '.');
            let (num, unit) = lower.split_at(digits.unwrap_or(lower.len()));
            let scale = match unit {
                "bit" => 1.0,
                "kbit" => 1e3,
                "mbit" => 1e6,
                "gbit" => 1e9,
                "tbit" => 1e12,
                _ => bail!("--shaped: {r:?} is not a rate such as 1gbit or 500mbit"),
            };
            let bits = num
                .parse::<f64>()
                .with_context(|| format!("--shaped: {r:?}"))?
                * scale;
            anyhow::ensure!(bits >= 1e6, "--shaped: {r:?} is below 1mbit");
            Ok((lower.clone(), bits as u64))
        })
        .collect()
}

/// Network namespaces, deleted when dropped: declare it before the
/// processes started in them, so that they are killed first.
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> anyhow::Result<()> {
        run(&format!("ip netns add {name}"))?;
        self.0.push(name.to_string());
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            if let Err(e) = run(&format!("ip netns del {ns}")) {
                eprintln!("proxy-bench: could not delete network namespace {ns}: {e}");
            }
        }
    }
}

/// Client, proxy and server namespaces: cl (198.18.1.1) — px (198.18.1.2,
/// 198.18.2.1, forwarding) — sv (198.18.2.2), veth links created straight
/// inside them (nothing appears in the root namespace).
struct Topology {
    cl: String,
    px: String,
    sv: String,
    /// Every veth end, as (namespace, device): shaping all of them shapes
    /// both directions of both links.
    links: Vec<(String, &'static str)>,
    /// Deleted (with the links) when the topology is dropped.
    _namespaces: Namespaces,
}

impl Topology {
    fn create() -> anyhow::Result<Topology> {
        let id = std::process::id();
        let (cl, px, sv) = (
            format!("pb-cl-{id}"),
            format!("pb-px-{id}"),
            format!("pb-sv-{id}"),
        );
        let mut namespaces = Namespaces::default();
        for ns in [&cl, &px, &sv] {
            namespaces.add(ns)?;
            run(&format!("ip -n {ns} link set lo up"))?;
        }
        let veth = "type veth peer name";
        run(&format!(
            "ip link add veth0 netns {cl} {veth} vcl netns {px}"
        ))?;
        run(&format!(
            "ip link add vsv netns {px} {veth} veth0 netns {sv}"
        ))?;
        let ends = [
            (&cl, "veth0", "198.18.1.1/24"),
            (&px, "vcl", "198.18.1.2/24"),
            (&px, "vsv", "198.18.2.1/24"),
            (&sv, "veth0", "198.18.2.2/24"),
        ];
        for (ns, dev, addr) in ends {
            run(&format!("ip -n {ns} addr add {addr} dev {dev}"))?;
            run(&format!("ip -n {ns} link set {dev} up"))?;
        }
        run(&format!(
            "ip netns exec {px} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        run(&format!("ip -n {cl} route add {SV_NET} via {PX_CL}"))?;
        run(&format!("ip -n {sv} route add {CL_NET} via {PX_SV}"))?;
        let links = ends
            .iter()
            .map(|(ns, dev, _)| (ns.to_string(), *dev))
            .collect();
        Ok(Topology {
            cl,
            px,
            sv,
            links,
            _namespaces: namespaces,
        })
    }

    /// A token bucket of `rate` on every veth end, with a burst of 4 ms at
    /// the rate (at least 64 KiB: a GSO packet must fit).
    fn shape(&self, rate: &str, bits: u64) -> anyhow::Result<()> {
        let burst = (bits / 8 / 250).max(64 * 1024);
        for (ns, dev) in &self.links {
            let tbf = format!("tbf rate {rate} burst {burst} latency 10ms");
            run(&format!(
                "ip netns exec {ns} tc qdisc replace dev {dev} root {tbf}"
            ))?;
        }
        Ok(())
    }
}

/// Bulk across shaped links: client → server routed through the proxy
/// namespace (direct), and through a trackwire proxy in it.
async fn shaped(
    env: &Env,
    args: &Args,
    rates: &[(String, u64)],
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let topology = Topology::create()?;
    let server = format!("{SV}:{SHAPED_IPERF_PORT}");
    let bind = format!("{PX_CL}:{SHAPED_PROXY_PORT}");
    let iperf3_server = spawn_iperf3(env, &server, Some(&topology.sv)).await?;
    let proxy = spawn_trackwire(env, "tw-shaped", &bind, &server, Some(&topology.px)).await?;
    let paths = [("direct", server.parse()?), ("trackwire", bind.parse()?)];
    for round in 0..args.rounds {
        for (rate, bits) in rates {
            topology.shape(rate, *bits)?;
            for k in 0..paths.len() {
                let (name, addr) = paths[(k + round) % paths.len()];
                let c0 = cpu_time(proxy.pid())?;
                let r = iperf(env, Some(&topology.cl), addr, args.bulk_seconds)
                    .await
                    .with_context(|| format!("shaped {rate}, {name}, round {}", round + 1))?;
                let row = format!("shaped {rate}");
                let gbit = r.bits_per_second / 1e9;
                samples.push(&row, name, gbit);
                let mut line = format!(
                    "[{}/{}] {row:<12} {name:<9} {gbit:.2} Gbit/s",
                    round + 1,
                    args.rounds
                );
                if name == "trackwire" && r.bytes > 0.0 {
                    let s = (cpu_time(proxy.pid())? - c0).as_secs_f64()
                        / (r.bytes / (1u64 << 30) as f64);
                    samples.push(&row, CPU_GIB, s);
                    line += &format!(", CPU {s:.3} s/GiB");
                }
                eprintln!("{line}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    drop(proxy);
    drop(iperf3_server);
    drop(topology);
    Ok(())
}

fn cell(v: Option<f64>, precision: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.precision$}"),
        _ => "n/a".into(),
    }
}

fn report(targets: &[Target], samples: &Samples, shaped: Option<&[(String, u64)]>) {
    // Metric, precision, column width.
    let columns = [
        (CONN, 0, 11),
        (REQ, 0, 10),
        (P99, 2, 8),
        (BULK, 2, 10),
        (CPU_CONN, 1, 12),
        (CPU_GIB, 3, 10),
        (IDLE, 2, 13),
    ];
    let mut header = format!("\n{:<20}", "target");
    for (m, _, w) in columns {
        header += &format!(" {m:>w$}");
    }
    println!("{header}");
    for t in targets {
        let mut row = format!("{:<20}", t.name);
        for (m, p, w) in columns {
            row += &format!(" {:>w$}", cell(samples.median(t.name, m), p));
        }
        println!("{row}");
    }
    let has = |name: &str| targets.iter().any(|t| t.name == name);
    for (base, metrics) in [
        (
            "haproxy",
            &[CONN, REQ, P99, BULK, CPU_CONN, CPU_GIB, IDLE][..],
        ),
        // CPU is the proxies' only; direct's idle figure is nginx's.
        ("direct", &[CONN, REQ, P99, BULK][..]),
    ] {
        if !(has("trackwire") && has(base)) {
            continue;
        }
        let mut row = format!("{:<20}", format!("trackwire / {base}"));
        for (m, _, w) in columns {
            let ratio = metrics.contains(&m).then(|| {
                let (a, b) = (samples.median("trackwire", m), samples.median(base, m));
                a.zip(b).map(|(a, b)| a / b)
            });
            row += &format!(" {:>w$}", cell(ratio.flatten(), 2));
        }
        println!("{row}");
    }
    if let Some(rates) = shaped {
        println!(
            "\n{:<20} {:>13} {:>16} {:>18} {:>20}",
            "shaped link",
            "direct Gbit/s",
            "trackwire Gbit/s",
            "trackwire / direct",
            "trackwire CPU s/GiB"
        );
        for (rate, _) in rates {
            let row = format!("shaped {rate}");
            let (d, t) = (
                samples.median(&row, "direct"),
                samples.median(&row, "trackwire"),
            );
            println!(
                "{:<20} {:>13} {:>16} {:>18} {:>20}",
                rate,
                cell(d, 2),
                cell(t, 2),
                cell(t.zip(d).map(|(t, d)| t / d), 2),
                cell(samples.median(&row, CPU_GIB), 3)
            );
        }
    }
    // wrk must outrun the proxies for their figures to be theirs.
    let direct = samples.median("direct", CONN);
    let best = ["haproxy", "trackwire"]
        .iter()
        .filter_map(|t| samples.median(t, CONN))
        .reduce(f64::max);
    if let (Some(d), Some(b)) = (direct, best)
        && d < 1.5 * b
    {
        println!(
            "\nwarning: direct new conn/s ({d:.0}) is not 1.5× the best proxy's ({b:.0}): \
             the load generator (and nginx, on the same CPUs) may be the bottleneck of the proxies' figures too"
        );
    }
}

/// `TRACKWIRE_WORKERS` from the environment (0, one per CPU, when unset).
fn trackwire_workers() -> usize {
    std::env::var("TRACKWIRE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
