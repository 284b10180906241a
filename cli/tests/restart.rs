//! Zero-downtime proxy restart under load, as operators do it: a new
//! `trackwire data-plane` binds the same listener address (SO_REUSEPORT)
//! while the old one still serves, then the old one gets SIGTERM, stops
//! accepting, finishes its open session and exits. No client connection may
//! fail at any point.
//!
//! Linux resets connections still queued on a listener that closes unless
//! `net.ipv4.tcp_migrate_req = 1`, a per-network-namespace setting. So the
//! whole fleet (control plane, probe agent, both proxies, and a Python
//! backend + load generator, `restart_load.py`) runs in a network namespace
//! the test creates, sets that sysctl in, and deletes afterwards; only
//! loopback exists inside it. Needs root and `ip` (iproute2), as CI has.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_trackwire");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/restart_load.py");

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("tw-restart-{}", std::process::id());
        // Left over from an earlier run with the same pid: start clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap_or_else(|e| panic!("run `ip` (iproute2): {e}"));
        assert!(ok.success(), "ip netns add {name} (needs root)");
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    fn run(&self, argv: &[&str]) {
        let ok = self
            .command(argv[0])
            .args(&argv[1..])
            .status()
            .expect("ip netns exec");
        assert!(ok.success(), "in {}: {argv:?} failed", self.0);
    }

    /// Sets a sysctl of this namespace (`/proc/sys/net` is per namespace).
    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        self.run(&["sh", "-c", &format!("echo {value} > {path}")]);
        let out = self
            .command("cat")
            .arg(&path)
            .output()
            .expect("read sysctl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), value, "{key}");
    }

    /// `trackwire ARGS` inside the namespace, logging to `log`.
    fn trackwire(&self, args: &[&str], log: &Path) -> Running {
        let log = File::create(log).expect("log file");
        Running(
            self.command(BIN)
                .args(args)
                .env("TRACKWIRE_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn trackwire"),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Kills the child if the test ends before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load script: commands in, JSON events out.
struct Load {
    _child: Running,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    /// Successful and failed requests, as of the last progress event.
    ok: u64,
    failed: u64,
}

impl Load {
    fn spawn(ns: &Netns) -> Load {
        let mut child = ns
            .command("python3")
            .args([
                SCRIPT,
                "--backend",
                "127.0.0.1:9001",
                "--proxy",
                "127.0.0.1:9000",
                // 64 looping clients keep the accept queues busy: with
                // tcp_migrate_req = 0 this test failed one run in three
                // (connections reset in the old proxy's queue).
                "--workers",
                "64",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 restart_load.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad line from the load script {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut load = Load {
            _child: Running(child),
            stdin,
            events,
            ok: 0,
            failed: 0,
        };
        load.next("listening", Duration::from_secs(10));
        load
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to the load script");
        self.stdin.flush().expect("flush");
    }

    /// The next event named `name` (progress events update the counters).
    fn next(&mut self, name: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {name:?} event from the load script: {e}"));
            if v["event"] == "progress" {
                self.ok = v["ok"].as_u64().expect("ok");
                self.failed = v["failed"].as_u64().expect("failed");
            }
            if v["event"] == name {
                return v;
            }
        }
    }

    fn ask(&mut self, cmd: &str, answer: &str) -> Value {
        self.send(cmd);
        self.next(answer, Duration::from_secs(15))
    }

    /// Waits until at least `n` requests have succeeded.
    fn wait_ok(&mut self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ok < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests succeeded ({} failed)",
                self.ok,
                self.failed
            );
            self.next("progress", Duration::from_secs(5));
        }
    }

    /// A counter from a proxy's /metrics.
    fn metric(&mut self, http: &str, name: &str) -> u64 {
        let v = self.ask(&format!("get http://{http}/metrics"), "get");
        let body = v["body"].as_str().expect("body");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the metrics of {http}:\n{body}"))
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn restart_under_load_refuses_no_connection() {
    let ns = Netns::create();
    ns.sysctl("net/ipv4/tcp_migrate_req", "1");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("trackwire.toml");
    std::fs::write(
        &config,
        r#"
[[pool]]
name = "web"
[pool.check]
path = "/readyz"
expect_status = "200"
interval = "200ms"
[[pool.backend]]
name = "b1"
address = "127.0.0.1:9001"

[[listener]]
name = "web"
bind = "127.0.0.1:9000"
pool = "web"
"#,
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let control = "http://127.0.0.1:7400";
    let mut load = Load::spawn(&ns);
    let _cp = ns.trackwire(
        &[
            "control-plane",
            "--grpc-bind",
            "127.0.0.1:7400",
            "--http-bind",
            "127.0.0.1:7401",
            "--config",
            config,
        ],
        &dir.path().join("cp.log"),
    );
    let agent_dir = dir.path().join("agent");
    let _agent = ns.trackwire(
        &[
            "probe-agent",
            "--control-plane",
            control,
            "--http-bind",
            "127.0.0.1:7402",
            "--heartbeat",
            "500ms",
            "--state-dir",
            agent_dir.to_str().expect("utf-8"),
        ],
        &dir.path().join("agent.log"),
    );
    let proxy = |http: &str, log: &str| {
        ns.trackwire(
            &[
                "data-plane",
                "--control-plane",
                control,
                "--config",
                config,
                "--http-bind",
                http,
                "--drain-grace",
                "30s",
            ],
            &dir.path().join(log),
        )
    };
    let mut old = proxy("127.0.0.1:7403", "old.log");

    // The old proxy routes to the backend once the agent has checked it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.ask("probe", "probe")["ok"] != true {
        assert!(
            Instant::now() < deadline,
            "the proxy never routed a request\n{}",
            log_of(&dir.path().join("old.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    load.send("load");
    load.wait_ok(200, Duration::from_secs(30));
    // A long session, held open through the old proxy (the only one yet).
    assert_eq!(load.ask("hold", "held")["ok"], true);

    // The new proxy binds the same address while the old one serves.
    let new = proxy("127.0.0.1:7404", "new.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.ask("get http://127.0.0.1:7404/readyz", "get")["status"] != 200 {
        assert!(
            Instant::now() < deadline,
            "the new proxy never became ready\n{}",
            log_of(&dir.path().join("new.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kernel spreads new connections over both listeners.
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.metric("127.0.0.1:7404", "trackwire_proxy_connections_total") < 50 {
        assert!(
            Instant::now() < deadline,
            "the new proxy got no connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM the old one: it stops accepting, its open session continues.
    let pid = old.0.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let ok_at_term = load.ok;
    load.wait_ok(ok_at_term + 200, Duration::from_secs(30));
    assert_eq!(
        load.ask("ping", "pong")["ok"],
        true,
        "the old proxy cut its open session while draining"
    );
    assert!(
        old.0.try_wait().expect("try_wait").is_none(),
        "the old proxy exited with a session open (grace is 30s)"
    );
    load.ask("release", "released");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = old.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the old proxy did not exit after its last session closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "old proxy: {status}\n{}",
        log_of(&dir.path().join("old.log"))
    );

    // The new proxy carries everything now.
    // (Polled: the load script reports its counts in periodic progress
    // events, so its `ok` lags what the proxy has already counted.)
    let before = load.metric("127.0.0.1:7404", "trackwire_proxy_connections_total");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = load.metric("127.0.0.1:7404", "trackwire_proxy_connections_total");
        if after >= before + 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new proxy took only {} connections since the old one left",
            after - before
        );
        load.next("progress", Duration::from_secs(5));
    }

    let summary = load.ask("stop", "summary");
    assert_eq!(
        summary["failed"],
        0,
        "connections failed during the restart: {summary}\nold proxy log:\n{}",
        log_of(&dir.path().join("old.log"))
    );
    assert!(summary["ok"].as_u64().expect("ok") >= 700, "{summary}");
    drop(new);
}
