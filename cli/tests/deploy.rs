//! `deploy/` as shipped, validated offline with the real tools (installed by
//! `scripts/test`): the compose file parses (`docker-compose config`, no
//! engine needed), both kustomizations build (`kubectl kustomize`) and
//! their output validates against Kubernetes' schemas (`kubernetes-validate
//! --strict`), the systemd units pass `systemd-analyze verify` and are
//! sandboxed, the image runs as a non-root user with a HEALTHCHECK, and
//! every config document shipped with them passes `trackwire check`. Also
//! the two commands the container files rely on: `trackwire healthcheck`
//! and `trackwire demo-backend`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_trackwire");

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {what} (scripts/test installs it): {e}"))
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn trackwire_check(path: &Path) {
    let out = run(Command::new(BIN).arg("check").arg(path), "trackwire check");
    ok(&out, &format!("trackwire check {}", path.display()));
}

#[test]
fn compose_file_parses_and_its_config_is_valid() {
    let file = deploy("compose/docker-compose.yml");
    let out = run(
        Command::new("docker-compose")
            .arg("-f")
            .arg(&file)
            .args(["config", "--quiet"]),
        "docker-compose (Debian's docker-compose)",
    );
    ok(&out, "docker-compose config");
    let text = std::fs::read_to_string(&file).expect("read compose file");
    // The cluster the README walks through.
    for service in [
        "etcd-1",
        "etcd-2",
        "etcd-3",
        "control-plane-1",
        "control-plane-2",
        "agent-a1",
        "agent-a2",
        "agent-b1",
        "proxy-1",
        "proxy-2",
        "backend-1",
        "backend-2",
        "backend-3",
        "certs",
    ] {
        assert!(
            text.contains(&format!("\n  {service}:")),
            "service {service} missing"
        );
    }
    trackwire_check(&deploy("compose/trackwire.toml"));
}

/// The TOML document in the ConfigMap of a built kustomization.
fn configmap_toml(built: &str) -> Option<String> {
    let start = built.find("trackwire.toml: |")?;
    let mut out = String::new();
    for line in built[start..].lines().skip(1) {
        if let Some(rest) = line.strip_prefix("    ") {
            out.push_str(rest);
            out.push('\n');
        } else if line.trim().is_empty() {
            out.push('\n');
        } else {
            break;
        }
    }
    Some(out)
}

#[test]
fn kustomizations_build_and_validate_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for k in ["kubernetes/base", "kubernetes/overlays/example"] {
        let out = run(
            Command::new("kubectl").arg("kustomize").arg(deploy(k)),
            "kubectl",
        );
        ok(&out, &format!("kubectl kustomize {k}"));
        let built = String::from_utf8_lossy(&out.stdout).into_owned();
        for kind in [
            "kind: Deployment",
            "kind: StatefulSet",
            "kind: DaemonSet",
            "kind: PodDisruptionBudget",
            "kind: ConfigMap",
            "kind: Service",
            "readinessProbe",
            "livenessProbe",
            "runAsNonRoot: true",
            "topologySpreadConstraints",
        ] {
            assert!(built.contains(kind), "{k}: no {kind:?}");
        }
        let path = dir.path().join(format!("{}.yaml", k.replace('/', "-")));
        std::fs::write(&path, &built).expect("write");
        let out = run(
            Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
                .arg(&path),
            "kubernetes-validate (PyPI)",
        );
        ok(&out, &format!("kubernetes-validate --strict {k}"));
        let toml = configmap_toml(&built).unwrap_or_else(|| panic!("{k}: no trackwire.toml"));
        let doc = dir.path().join("trackwire.toml");
        std::fs::write(&doc, toml).expect("write");
        trackwire_check(&doc);
    }
    // The overlay points the control plane at an existing etcd over TLS.
    let out = run(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy("kubernetes/overlays/example")),
        "kubectl",
    );
    let built = String::from_utf8_lossy(&out.stdout);
    assert!(built.contains("TRACKWIRE_ETCD_CA"), "{built}");
}

#[test]
fn systemd_units_verify_and_are_sandboxed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for e in std::fs::read_dir(deploy("systemd")).expect("deploy/systemd") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "service") {
            let text = std::fs::read_to_string(&path).expect("read unit");
            for line in [
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "ProtectHome=yes",
                "PrivateTmp=yes",
                "SystemCallFilter=@system-service",
                "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            ] {
                assert!(text.contains(line), "{}: no {line}", path.display());
            }
            let caps = if path.to_string_lossy().contains("data-plane") {
                "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
            } else {
                "CapabilityBoundingSet=\n"
            };
            assert!(text.contains(caps), "{}: not {caps}", path.display());
            // Verified against this build of the binary.
            let name = path.file_name().expect("name").to_owned();
            std::fs::write(
                dir.path().join(&name),
                text.replace("/usr/bin/trackwire", BIN),
            )
            .expect("write unit");
            units.push(dir.path().join(name));
        }
    }
    assert!(units.len() >= 4, "{units:?}");
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .current_dir(dir.path()),
        "systemd-analyze",
    );
    ok(&out, "systemd-analyze verify");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}

#[test]
fn the_image_is_multi_stage_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(deploy("compose/Dockerfile")).expect("Dockerfile");
    assert!(text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2);
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && user != "USER 0", "{user}");
    assert!(
        text.contains("HEALTHCHECK") && text.contains("\"healthcheck\""),
        "no HEALTHCHECK running `trackwire healthcheck`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_reads_the_process_http_port() {
    let store: std::sync::Arc<dyn trackwire_control_plane::store::Store> =
        std::sync::Arc::new(trackwire_control_plane::store::MemStore::new());
    let cp = start_cp(store, Default::default()).await;
    let port = cp.http.rsplit(':').next().expect("port").to_owned();
    let status = |bind: String| async move {
        tokio::process::Command::new(BIN)
            .arg("healthcheck")
            .env("TRACKWIRE_HTTP_BIND", bind)
            .output()
            .await
            .expect("run trackwire healthcheck")
    };
    // As a container sets it: the unspecified address is reached on loopback.
    let out = status(format!("0.0.0.0:{port}")).await;
    assert!(out.status.success(), "{out:?}");
    cp.stop().await;
    let out = status(format!("0.0.0.0:{port}")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}/healthz")),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_backend_serves_and_flips_readyz() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo-backend", "--name", "backend-7"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .kill_on_drop(true)
        .spawn()
        .expect("run trackwire demo-backend");
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the demo backend to listen", 10, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        http_get(&base, "/").await,
        (200, "hello from backend-7\n".into())
    );
    assert_eq!(http_get(&base, "/readyz").await.0, 200);
    let post = |path: &'static str| {
        let base = base.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .expect("connect");
            s.write_all(
                format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
            out
        }
    };
    assert!(post("/down").await.contains("now answers 503"));
    assert_eq!(http_get(&base, "/readyz").await.0, 503);
    assert!(post("/up").await.contains("now answers 200"));
    assert_eq!(http_get(&base, "/readyz").await.0, 200);
    let _ = child.kill().await;
}
