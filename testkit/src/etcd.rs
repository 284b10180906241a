//! Real etcd servers for integration tests.
//!
//! [`EtcdCluster::start`] runs Debian's `etcd` (3.4) binary with its data in a
//! temp dir on free loopback ports, waits until every member answers
//! `/health`, and kills the members when dropped (also when a test panics).
//! The test command (`scripts/test`) installs `etcd-server` when `etcd` is
//! missing, so a test that needs etcd fails loudly rather than skipping.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

/// PEM files for an etcd serving TLS to clients with `--client-cert-auth`:
/// its CA (client certificates must chain to it), its server certificate
/// (valid for 127.0.0.1) and key, and a client certificate and key the
/// harness uses for its health probe.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn healthy(url: &str) -> bool {
    let Some(hostport) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(s) = TcpStream::connect(hostport) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    answers_healthy(s, hostport)
}

/// Asks `GET /health` on an open connection: etcd says `"health":"true"`.
fn answers_healthy(mut s: impl Read + Write, hostport: &str) -> bool {
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.contains(" 200 ") && buf.contains("\"health\":\"true\"")
}

/// [`healthy`] over TLS with the harness's client certificate.
fn healthy_tls(url: &str, tls: &EtcdTlsFiles) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let Some(hostport) = url.strip_prefix("https://") else {
        return false;
    };
    let config = (|| -> Option<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&tls.ca).ok()? {
            roots.add(c.ok()?).ok()?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.client_cert)
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_file(&tls.client_key).ok()?;
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()
    })();
    let Some(config) = config else {
        return false;
    };
    let Ok(name) = ServerName::try_from("127.0.0.1") else {
        return false;
    };
    let Ok(conn) = rustls::ClientConnection::new(std::sync::Arc::new(config), name) else {
        return false;
    };
    let Ok(tcp) = TcpStream::connect(hostport) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
    answers_healthy(rustls::StreamOwned::new(conn, tcp), hostport)
}

impl EtcdCluster {
    /// One member.
    pub fn start() -> EtcdCluster {
        Self::start_n(1)
    }

    /// `n` members in one cluster, with short heartbeat/election timers so
    /// failover tests run in well under a second.
    pub fn start_n(n: usize) -> EtcdCluster {
        Self::start_with(n, None)
    }

    /// One member serving clients over TLS, requiring client certificates.
    pub fn start_tls(tls: &EtcdTlsFiles) -> EtcdCluster {
        Self::start_with(1, Some(tls))
    }

    fn start_with(n: usize, tls: Option<&EtcdTlsFiles>) -> EtcdCluster {
        // On tmpfs when there is one: etcd fsyncs every write, and the tests
        // measure trackwire, not the disk (a slow disk made etcd the
        // bottleneck of fleet-sized tests).
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir for etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.path().join(&name);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))
                .expect("etcd log file");
            let mut cmd = Command::new("etcd");
            if let Some(t) = tls {
                cmd.arg("--cert-file")
                    .arg(&t.server_cert)
                    .arg("--key-file")
                    .arg(&t.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect(
                    "start etcd: is etcd-server installed? run the suite with scripts/test, which installs it",
                );
            members.push(EtcdMember {
                name,
                client_url,
                child: Some(child),
            });
        }
        let cluster = EtcdCluster { members, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.members.iter().all(|m| match tls {
            Some(t) => healthy_tls(&m.client_url, t),
            None => healthy(&m.client_url),
        }) {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within 20s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// Kills member `i` with SIGKILL (a crash, not a graceful stop).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
