//! The `trackwire` binary as users run it: `dev` end to end (demo backends,
//! flipping one to 503, apply/get against it, clean exit on SIGTERM), and
//! exit code 2 with the failing field named for invalid configs; a proxy
//! refusing to start on a port in use (1) or a state dir that is a file (2).

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_trackwire");

/// Kills the child if a test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(addr: &str, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = String::new();
    // A proxy with no UP backend closes at once; that reads as an empty answer.
    if write!(s, "{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return out;
    }
    let _ = s.read_to_string(&mut out);
    out
}

fn backend_of(response: &str) -> Option<String> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("hello from "))
        .map(str::to_string)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run trackwire");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `trackwire` with `args` and `envs`, logging warnings only, its
/// output discarded.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Running {
    Running(
        Command::new(BIN)
            .args(args)
            .envs(envs.iter().copied())
            .env("TRACKWIRE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn trackwire"),
    )
}

/// Sends `signal` (`-TERM`, `-HUP`) to `child`.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal}: {status:?}");
}

/// What `trackwire dev` prints as it starts.
#[derive(Default)]
struct Banner {
    proxy: String,
    control: String,
    status: String,
    /// (name, host:port) of each demo backend.
    backends: Vec<(String, String)>,
    /// The admin command it prints, without the leading `trackwire`.
    get: Vec<String>,
}

/// Starts `trackwire dev` on free ports with `extra` flags and reads its
/// banner up to the admin command. The rest of its stdout is returned, so
/// that the pipe stays open while the caller keeps it.
fn start_dev(extra: &[&str]) -> (Running, Banner, Lines<BufReader<ChildStdout>>) {
    let child = Command::new(BIN)
        .args([
            "dev",
            "--proxy-bind",
            "127.0.0.1:0",
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("TRACKWIRE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start trackwire dev");
    let mut dev = Running(child);
    let stdout = dev.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Banner::default();
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["proxy", addr, ..] => banner.proxy = addr.to_string(),
            ["control-plane", url, ..] => banner.control = url.to_string(),
            ["status-page", url] => banner.status = url.to_string(),
            [name, url] if name.starts_with("backend-") => {
                banner.backends.push((
                    name.to_string(),
                    url.trim_start_matches("http://").to_string(),
                ));
            }
            ["trackwire", "get", ..] => {
                banner.get = words[1..].iter().map(|w| w.to_string()).collect();
                break;
            }
            _ => {}
        }
    }
    (dev, banner, lines)
}

/// Waits (15 s at most) until connections through `proxy` reach all three
/// backends.
fn wait_all_three_backends(proxy: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen: std::collections::HashSet<String> = (0..9)
            .filter_map(|_| backend_of(&http(proxy, "GET", "/")))
            .collect();
        if seen.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all backends reachable through {proxy}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (`secs` at most) until every connection through `proxy` is
/// answered, none of them by `backend`.
fn wait_out_of_rotation(proxy: &str, backend: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen: Vec<String> = (0..6)
            .filter_map(|_| backend_of(&http(proxy, "GET", "/")))
            .collect();
        assert_eq!(seen.len(), 6, "every connection is answered");
        if !seen.iter().any(|b| b == backend) {
            break;
        }
        assert!(Instant::now() < deadline, "{backend} still in rotation");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `args` (a `get backends`): it succeeds, listing three backends UP.
fn expect_three_up(args: &[&str]) {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" UP ")).count(),
        3,
        "{out}"
    );
}

#[test]
fn dev_runs_the_whole_path_and_stops_cleanly() {
    // The banner names every address.
    let (mut dev, banner, _stdout) = start_dev(&[]);
    let Banner {
        proxy,
        control,
        status,
        backends,
        ..
    } = banner;
    assert!(!proxy.is_empty() && !control.is_empty() && !status.is_empty());
    assert_eq!(backends.len(), 3);
    // The proxy listens once it holds a health map.
    wait_listening(&proxy);

    // All three backends get connections once their checks pass.
    wait_all_three_backends(&proxy);

    // The status page is served, its JSON view and the admin CLI see the pool.
    let host = status.trim_start_matches("http://").trim_end_matches('/');
    let page = http(host, "GET", "/");
    assert!(page.contains("<title>trackwire</title>"), "{page}");
    let json = http(host, "GET", "/api/v1/health?pool=demo");
    assert!(
        json.contains(r#""name":"backend-2","address""#) && json.contains(r#""state":"up""#),
        "{json}"
    );
    expect_three_up(&["get", "backends", "--control-plane", &control]);

    // Flip backend-2 to 503: the proxy stops sending to it (1s interval, fall 3).
    let b2 = &backends[1].1;
    assert!(http(b2, "POST", "/down").contains("503"));
    wait_out_of_rotation(&proxy, "backend-2", 10);
    let (_, out, _) = run(&["get", "backends", "--control-plane", &control]);
    assert!(
        out.lines()
            .any(|l| l.contains("backend-2") && l.contains("DOWN") && l.contains("L7STS 503")),
        "{out}"
    );

    // Operator verbs: drain a backend, see it, clear the override.
    let (code, out, err) = run(&[
        "drain",
        "demo/backend-3",
        "--reason",
        "test",
        "--control-plane",
        &control,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend/demo/backend-3 drain"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out, _) = run(&["get", "backends", "--control-plane", &control]);
        if out
            .lines()
            .any(|l| l.contains("backend-3") && l.contains(" drain "))
        {
            break;
        }
        assert!(Instant::now() < deadline, "drain not shown: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = run(&[
        "ready",
        "demo/backend-3",
        "--clear",
        "--control-plane",
        &control,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["drain", "demo/nope", "--control-plane", &control]);
    assert_eq!(code, 2, "unknown backend is invalid input: {err}");
    let (code, _, err) = run(&["drain", "no-slash", "--control-plane", &control]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run(&["get", "agents", "--control-plane", &control]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(" dev ") && l.contains(" 3 ")),
        "{out}"
    );

    // describe, JSON output, replayed events.
    let (code, out, err) = run(&[
        "describe",
        "backend",
        "demo/backend-2",
        "--control-plane",
        &control,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("State:        DOWN") && out.contains("L7STS 503"),
        "{out}"
    );
    let (code, out, err) = run(&["get", "backends", "-o", "json", "--control-plane", &control]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(rows[1]["backend"], "backend-2");
    let (code, out, err) = run(&[
        "watch",
        "--from-revision",
        "1",
        "--count",
        "1",
        "-o",
        "json",
        "--control-plane",
        &control,
    ]);
    assert_eq!(code, 0, "{err}");
    let event: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON event");
    assert!(
        event["kind"].is_string() && event["pool"] == "demo",
        "{out}"
    );

    // apply adds a pool; get pools lists it.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pools.toml");
    std::fs::write(
        &file,
        "[[pool]]\nname = \"extra\"\n[[pool.backend]]\nname = \"x\"\naddress = \"127.0.0.1:9\"\n",
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    let (code, out, err) = run(&[
        "apply",
        "--dry-run",
        "-f",
        &file,
        "--control-plane",
        &control,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pool/extra would be created") && out.contains("+ name = \"extra\""),
        "{out}"
    );
    let (_, pools, _) = run(&["get", "pools", "--control-plane", &control]);
    assert!(
        !pools.contains("extra"),
        "a dry run writes nothing: {pools}"
    );
    let (code, out, err) = run(&["apply", "-f", &file, "--control-plane", &control]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pool/extra created"), "{out}");
    let (code, out, _) = run(&["apply", "-f", &file, "--control-plane", &control]);
    assert_eq!(code, 0);
    assert!(out.contains("pool/extra unchanged"), "{out}");
    let (_, out, _) = run(&["get", "pools", "--control-plane", &control]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("extra ") && l.contains("none")),
        "{out}"
    );

    // SIGTERM: everything shuts down and the process exits 0.
    signal(&dev.0, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = dev.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "dev did not exit within 10s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn invalid_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[pool]]\nname = \"p\"\n[pool.check]\nexpect_status = \"200-700\"\n\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    for args in [
        vec![
            "data-plane",
            "--control-plane",
            "http://127.0.0.1:1",
            "--config",
            &file,
        ],
        vec![
            "apply",
            "-f",
            &file,
            "--control-plane",
            "http://127.0.0.1:1",
        ],
        vec![
            "dev",
            "--config",
            &file,
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("pool[0].check.expect_status"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = run(&["check", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pool[0].check.expect_status"), "{err}");
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/seed.toml");
    let (code, out, err) = run(&["check", seed]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("valid (1 pools, 3 backends, 1 listeners)"),
        "{out}"
    );
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        "[[pool]]\nname = \"k\"\n[pool.check]\nkind = \"https\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
    )
    .expect("write");
    let (code, _, err) = run(&["check", &tls.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pool[0].check.tls_ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    let (code, _, err) = run(&["probe-agent", "--control-plane", "localhost:7400"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--control-plane") && err.contains("http://"),
        "{err}"
    );
}

#[test]
fn check_reads_durations_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, interval: &str| {
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!("[[pool]]\nname = \"p\"\n[pool.check]\ninterval = {interval}\n"),
        )
        .expect("write");
        file.to_string_lossy().into_owned()
    };
    // A bare number is milliseconds, as a TOML integer too.
    let (code, out, err) = run(&["check", &write("int.toml", "500")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid (1 pools"), "{out}");
    // Not a whole number of milliseconds: refused, not stored as 2s or 1ms.
    for (name, bad) in [("us.toml", "\"1us\""), ("frac.toml", "\"1500us\"")] {
        let (code, _, err) = run(&["check", &write(name, bad)]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("pool[0].check.interval") && err.contains("whole milliseconds"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn check_refuses_oversized_inputs_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.toml");
    std::fs::write(
        &file,
        format!(
            "[[pool]]\nname = \"p\"\n[pool.check]\npath = \"/{}\"\n",
            "a".repeat(3_000_000)
        ),
    )
    .expect("write");
    let (code, _, err) = run(&["check", &file.to_string_lossy()]);
    assert_eq!(code, 2, "{}", &err[..err.len().min(300)]);
    assert!(
        err.contains("pool[0].check.path: 2.9 MiB long; at most 8 KiB"),
        "{}",
        &err[..err.len().min(300)]
    );
}

#[test]
fn import_haproxy_output_is_accepted_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cfg in ["seed.cfg", "kube-apiserver.cfg", "patroni.cfg"] {
        let path = format!(
            "{}/../deploy/examples/haproxy/{cfg}",
            env!("CARGO_MANIFEST_DIR")
        );
        let (code, out, err) = run(&["import", "haproxy", &path]);
        assert_eq!(code, 0, "{cfg}: {err}");
        let toml = dir.path().join(format!("{cfg}.toml"));
        std::fs::write(&toml, &out).expect("write");
        let (code, _, err) = run(&["check", &toml.to_string_lossy()]);
        assert_eq!(
            code, 0,
            "{cfg}: the imported document is rejected: {err}\n{out}"
        );
        // Nothing translated is lost on the way out (`on-marked-down
        // shutdown-sessions` was, for one).
        let text = std::fs::read_to_string(&path).expect("read the example");
        let translated = trackwire_cli::import::haproxy(&text)
            .expect("translates")
            .document;
        let printed = trackwire_core::config::Document::parse(&out).expect("parses");
        assert_eq!(printed, translated, "{cfg}: the output differs\n{out}");
    }
    let bad = dir.path().join("bad.cfg");
    std::fs::write(
        &bad,
        "frontend f\n  bind :80\n  use_backend b if api\nbackend b\n  server s 127.0.0.1:1\n",
    )
    .expect("write");
    let (code, out, err) = run(&["import", "haproxy", &bad.to_string_lossy()]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("line 3:"), "{err}");
    // Nothing routed: no empty document and exit 0, but the backends named.
    let unrouted = dir.path().join("unrouted.cfg");
    std::fs::write(
        &unrouted,
        "\u{feff}backend api\n  server s 127.0.0.1:1\nbackend db\n  server s 127.0.0.1:2\n",
    )
    .expect("write");
    let (code, out, err) = run(&["import", "haproxy", &unrouted.to_string_lossy()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no frontend routes to backend api (line 1), db (line 3)"),
        "{err}"
    );
}

/// `apply --expected-revision`: a revision older than a stored pool's last
/// change is refused, writing nothing; the current one applies.
#[test]
fn apply_refuses_a_stale_expected_revision() {
    let (grpc, http) = (free_addr(), free_addr());
    let _cp = spawn(
        &["control-plane", "--grpc-bind", &grpc, "--http-bind", &http],
        &[],
    );
    wait_listening(&grpc);
    let control = format!("http://{grpc}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, pool: &str, backends: usize| {
        let path = dir.path().join(name);
        let mut doc = format!("[[pool]]\nname = \"{pool}\"\n");
        for i in 1..=backends {
            doc.push_str(&format!(
                "[[pool.backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{i}\"\n"
            ));
        }
        std::fs::write(&path, doc).expect("write");
        path.to_string_lossy().into_owned()
    };
    let revision_of = |out: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix("revision "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {out:?}"))
    };
    let apply = |args: &[&str], envs: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("apply")
            .args(args)
            .args(["--control-plane", &control])
            .envs(envs.iter().copied())
            .output()
            .expect("run apply");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = apply(&["-f", &file("web.toml", "web", 1)], &[]);
    assert_eq!(code, 0, "{err}");
    let read = revision_of(&out);
    // Someone else changes another pool after `read`.
    let (code, out, err) = apply(&["-f", &file("db.toml", "db", 1)], &[]);
    assert_eq!(code, 0, "{err}");
    let current = revision_of(&out);
    assert!(current > read, "{read} -> {current}");

    let web2 = file("web2.toml", "web", 2);
    let stale = read.to_string();
    let (code, out, err) = apply(&["-f", &web2, "--expected-revision", &stale], &[]);
    assert_eq!(code, 2, "stale revision refused: {out}{err}");
    assert!(
        err.contains(&format!(
            "--expected-revision {read} is stale, nothing was written"
        )),
        "{err}"
    );
    let (_, pools, _) = run(&["get", "pools", "--control-plane", &control]);
    assert!(
        pools
            .lines()
            .any(|l| l.starts_with("web ") && l.split_whitespace().nth(1) == Some("1")),
        "web still has one backend: {pools}"
    );
    // The current revision (here from the environment) applies.
    let current = current.to_string();
    let (code, out, err) = apply(
        &["-f", &web2],
        &[("TRACKWIRE_EXPECTED_REVISION", current.as_str())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pool/web updated"), "{out}");
}

#[test]
fn corrupt_agent_id_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = dir.path().join("agent-id");
    std::fs::write(&id, "not-a-uuid\n").expect("write");
    let (code, _, err) = run(&[
        "probe-agent",
        "--control-plane",
        "http://127.0.0.1:1",
        "--http-bind",
        "127.0.0.1:0",
        "--state-dir",
        &dir.path().to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}: not a valid agent id", id.display())),
        "{err}"
    );
}

#[test]
fn unreachable_control_plane_exits_1() {
    let (code, _, err) = run(&["get", "pools", "--control-plane", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no control-plane endpoint reachable"), "{err}");
}

/// Runs trackwire and waits up to 10 s for it to exit: `None` if it still
/// runs then (it is killed).
fn run_exiting(args: &[&str]) -> Option<(i32, String)> {
    let child = Command::new(BIN)
        .args(args)
        .env("TRACKWIRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run trackwire");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = running.0.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = running.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Some((status.code().unwrap_or(-1), err))
}

/// A data-plane config with one listener, `name` on `bind`.
fn listener_config(dir: &std::path::Path, name: &str, bind: &str) -> String {
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!("[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\npool = \"k\"\n"),
    )
    .expect("write");
    file.to_string_lossy().into_owned()
}

#[test]
fn a_listener_port_in_use_exits_1_naming_the_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Held without SO_REUSEPORT, so the proxy cannot share it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let config = listener_config(dir.path(), "kube-api", &addr);
    let (code, err) = run_exiting(&[
        "data-plane",
        "--config",
        &config,
        "--control-plane",
        "http://127.0.0.1:1",
        "--http-bind",
        "127.0.0.1:0",
    ])
    .expect("exits at once");
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.starts_with(&format!("error: listener \"kube-api\": bind {addr}: ")),
        "{line}"
    );
    assert_eq!(
        line.to_lowercase().matches("in use").count(),
        1,
        "the cause once: {line}"
    );
}

#[test]
fn a_state_dir_that_is_a_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let file = file.to_string_lossy().into_owned();
    let config = listener_config(dir.path(), "web", "127.0.0.1:0");
    let (code, err) = run_exiting(&[
        "data-plane",
        "--config",
        &config,
        "--control-plane",
        "http://127.0.0.1:1",
        "--http-bind",
        "127.0.0.1:0",
        "--state-dir",
        &file,
    ])
    .expect("refuses to start (it ran on without a usable cache)");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("error: --state-dir {file}: not a directory")),
        "{err}"
    );
}

/// Waits until `addr` accepts TCP connections.
fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} not listening within 15s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The fleet topology as separate processes: a control plane on a real etcd,
/// a probe agent and a data-plane proxy, configured through flags and
/// environment variables the way operators run them.
#[test]
fn separate_processes_on_etcd() {
    let etcd = trackwire_testkit::EtcdCluster::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let token = tokio_util::sync::CancellationToken::new();
    let backends: Vec<trackwire_cli::demo::DemoBackend> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 1..=3 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            v.push(
                trackwire_cli::demo::DemoBackend::spawn(&format!("b{i}"), l, token.clone())
                    .expect("backend"),
            );
        }
        v
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = free_addr();
    let config = dir.path().join("trackwire.toml");
    let mut doc = String::from(
        "[[pool]]\nname = \"web\"\n[pool.check]\npath = \"/readyz\"\nexpect_status = \"200\"\ninterval = \"200ms\"\n",
    );
    for b in &backends {
        doc.push_str(&format!(
            "[[pool.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    doc.push_str(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"{proxy}\"\npool = \"web\"\n"
    ));
    std::fs::write(&config, doc).expect("write config");
    let config = config.to_string_lossy().into_owned();

    let (grpc, cp_http) = (free_addr(), free_addr());
    let control = format!("http://{grpc}");
    let etcd_urls = etcd.endpoints().join(",");
    let _cp = spawn(
        &[
            "control-plane",
            "--grpc-bind",
            &grpc,
            "--http-bind",
            &cp_http,
        ],
        &[("TRACKWIRE_ETCD", &etcd_urls)],
    );
    wait_listening(&grpc);
    let (code, out, err) = run(&["apply", "-f", &config, "--control-plane", &control]);
    assert_eq!(code, 0, "{out}{err}");
    let agent_state = dir.path().join("agent");
    let agent_state = agent_state.to_string_lossy().into_owned();
    let _agent = spawn(
        &[
            "probe-agent",
            "--zone",
            "z1",
            "--http-bind",
            &free_addr(),
            "--heartbeat",
            "500ms",
        ],
        &[
            ("TRACKWIRE_CONTROL_PLANE", &control),
            ("TRACKWIRE_STATE_DIR", &agent_state),
        ],
    );
    let _proxy = spawn(
        &[
            "data-plane",
            "--config",
            &config,
            "--http-bind",
            &free_addr(),
        ],
        &[("TRACKWIRE_CONTROL_PLANE", &control)],
    );
    wait_listening(&proxy);
    wait_all_three_backends(&proxy);
    // The agent kept its identity in its state dir.
    let id = std::fs::read_to_string(dir.path().join("agent/agent-id")).expect("agent-id written");
    assert!(uuid::Uuid::parse_str(id.trim()).is_ok(), "{id}");

    backends[0].set_ready(false);
    wait_out_of_rotation(&proxy, "b1", 5);
    token.cancel();
}

/// `dev --tls`: every link mutual TLS with a dev CA in the state dir; the
/// banner's admin command works as printed; a plaintext client and a
/// proxy certificate are refused.
#[test]
fn dev_with_tls_runs_the_whole_path_over_mutual_tls() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_string_lossy().into_owned();
    // Its stdout is kept open for the whole test (a closed pipe is not what
    // this tests).
    let (_dev, banner, _stdout) = start_dev(&["--tls", "--state-dir", &state_dir]);
    let proxy = banner.proxy;
    assert!(!proxy.is_empty(), "no proxy line in the banner");
    let get: Vec<&str> = banner.get.iter().map(String::as_str).collect();
    assert!(
        get.contains(&"--tls-cert") && get.iter().any(|w| w.starts_with("https://")),
        "banner command {get:?}"
    );
    for f in [
        "ca.crt",
        "ca.key",
        "admin-dev.crt",
        "agent-dev.key",
        "proxy-dev.crt",
    ] {
        assert!(state.path().join(f).exists(), "{f} not in the state dir");
    }
    wait_listening(&proxy);
    // Agent and proxy over mTLS: the proxy routes to all three backends.
    wait_all_three_backends(&proxy);
    // The printed admin command, as printed.
    expect_three_up(&get);
    // The agent registered under its certificate's name.
    let mut agents: Vec<&str> = get.clone();
    agents[1] = "agents";
    let (code, out, err) = run(&agents);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("dev ")), "{out}");
    // Plaintext against the TLS port fails.
    let url = get
        .iter()
        .find(|w| w.starts_with("https://"))
        .expect("url")
        .to_string();
    let plain = url.replace("https://", "http://");
    let (code, _, err) = run(&["get", "pools", "--control-plane", &plain]);
    assert_eq!(code, 1, "plaintext client must fail: {err}");
    // A proxy certificate may not drain.
    let dir = state.path();
    let (code, _, err) = run(&[
        "drain",
        "demo/backend-1",
        "--control-plane",
        &url,
        "--tls-ca",
        &dir.join("ca.crt").to_string_lossy(),
        "--tls-cert",
        &dir.join("proxy-dev.crt").to_string_lossy(),
        "--tls-key",
        &dir.join("proxy-dev.key").to_string_lossy(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("role proxy") && err.contains("SetBackendState"),
        "{err}"
    );
}

/// `certs init` and `certs issue` write what a fleet needs, refuse to
/// replace a CA key, and name bad input.
#[test]
fn certs_init_and_issue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().to_string();
    let (code, out, err) = run(&[
        "certs",
        "init",
        "--dir",
        &d,
        "--trust-domain",
        "example.org",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("example.org"), "{out}");
    let (code, _, err) = run(&["certs", "init", "--dir", &d]);
    assert_eq!(code, 2, "a second init must not replace the CA key");
    assert!(err.contains("ca.key"), "{err}");
    let (code, out, err) = run(&[
        "certs",
        "issue",
        "--dir",
        &d,
        "--role",
        "control-plane",
        "--name",
        "cp-1",
        "--san",
        "10.0.0.1",
        "--san",
        "cp-1.example.org",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("spiffe://example.org/trackwire/control-plane/cp-1"),
        "{out}"
    );
    let key = dir.path().join("control-plane-cp-1.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are private");
    }
    let (code, _, err) = run(&[
        "certs", "issue", "--dir", &d, "--role", "root", "--name", "x",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("root"), "{err}");
    let (code, _, err) = run(&[
        "certs", "issue", "--dir", &d, "--role", "agent", "--name", "../x",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("../x"), "{err}");
}

/// SIGHUP (`systemctl reload`) reloads TLS material; a plaintext process
/// must survive it too, not die of the signal's default action. An expired
/// certificate is refused at start, naming the file and the date.
#[test]
fn sighup_does_not_kill_and_expired_certificates_are_refused_at_start() {
    let (grpc, http_addr) = (free_addr(), free_addr());
    let mut cp = spawn(
        &[
            "control-plane",
            "--grpc-bind",
            &grpc,
            "--http-bind",
            &http_addr,
        ],
        &[],
    );
    wait_listening(&http_addr);
    signal(&cp.0, "-HUP");
    // Still serving, and still running a moment later.
    assert!(http(&http_addr, "GET", "/healthz").contains("200"));
    assert!(cp.0.try_wait().expect("wait").is_none(), "SIGHUP killed it");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = trackwire_transport::pki::Ca::generate("trackwire.test", 30).expect("ca");
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).expect("write");
    let id = trackwire_transport::Identity::new(
        "trackwire.test",
        trackwire_transport::Role::ControlPlane,
        "old",
    )
    .expect("id");
    let mut spec = trackwire_transport::pki::LeafSpec::for_identity(&id, &[], 1);
    spec.not_before = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    spec.not_after = std::time::UNIX_EPOCH + Duration::from_secs(1_600_086_400);
    let leaf = ca.sign(&spec).expect("sign");
    let (crt, key) = leaf
        .write(dir.path(), trackwire_transport::Role::ControlPlane, "old")
        .expect("write");
    let out = Command::new(BIN)
        .args([
            "control-plane",
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .arg("--tls-ca")
        .arg(dir.path().join("ca.crt"))
        .arg("--tls-cert")
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("control-plane-old.crt") && err.contains("expired on 2020-09-14"),
        "{err}"
    );
}

/// `--log-format json`: every log line is one JSON object with a level and
/// a message.
#[test]
fn json_logs_are_one_object_per_line() {
    let child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "control-plane",
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start control plane");
    let mut cp = Running(child);
    let stderr = cp.0.stderr.take().expect("stderr");
    // Up to the plaintext warning, which comes right after the listener's.
    let mut lines: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines().take(10) {
        let line = line.expect("line");
        let done = line.contains("PLAINTEXT");
        lines.push(line);
        if done {
            break;
        }
    }
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("PLAINTEXT")),
        "the plaintext warning is among the first lines: {lines:?}"
    );
}

/// The status page in a real browser: headless Chromium (Debian's
/// `chromium` and `chromium-driver`, installed by `scripts/test`) driven by
/// selenium (`tests/status_page.py`) against `trackwire dev`. Flipping a
/// demo backend's `/readyz` shows on the page without a reload.
/// Screenshots are kept in `target/tmp/status-page/`.
#[test]
fn the_status_page_follows_a_backend_going_down_without_reloading() {
    let (_dev, banner, _stdout) = start_dev(&[]);
    let (_, backend) = banner
        .backends
        .iter()
        .find(|(name, _)| name == "backend-1")
        .expect("backend-1 in the banner");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/status_page.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&banner.status)
        .arg(format!("http://{backend}/toggle"))
        .arg(&shots)
        .output()
        .expect("run python3 (scripts/test installs selenium)");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "browser test failed:\n{o}\n{e}");
    assert!(o.contains("without a reload"), "{o}");
    assert!(shots.join("status-page.png").exists());
}
