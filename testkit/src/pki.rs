//! A throwaway PKI for TLS check tests: a CA, a second unrelated CA, server
//! certificates (valid, expired, for other names) and a client certificate,
//! written as PEM files in a temp dir; plus TLS servers that wrap
//! [`TestHttp`](crate::http::TestHttp) (HTTP/1.1) or answer HTTP/2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::TestHttp;

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// A leaf certificate for `names`; `expired` makes it valid only in 2020.
    pub fn issue(&self, names: &[&str], expired: bool, client: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "trackwire test");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct TestPki {
    pub ca: Ca,
    pub other_ca: Ca,
    dir: tempfile::TempDir,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let _ = rustls::crypto::ring::default_provider().install_default();
        TestPki {
            ca: Ca::new("trackwire test CA"),
            other_ca: Ca::new("unrelated CA"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes `contents` to a file in the PKI's temp dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write PEM");
        p
    }

    pub fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem)
    }

    pub fn other_ca_file(&self) -> PathBuf {
        self.write("other-ca.pem", &self.other_ca.pem)
    }
}

fn server_config(leaf: &Leaf, alpn: &[&str], client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca"))
                .expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// HTTPS (HTTP/1.1) in front of `http`'s handler. `client_ca` requires client certificates.
pub async fn serve_https(http: TestHttp, leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(leaf, &["http/1.1"], client_ca)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, http) = (acceptor.clone(), http.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(sock).await {
                    http.serve(tls).await;
                }
            });
        }
    });
    addr
}

/// HTTPS that negotiates `h2` by ALPN and answers HTTP/2 requests with
/// 200 and the body `h2 ok` (and HTTP/1.1 requests with 505).
pub async fn serve_h2(leaf: &Leaf) -> SocketAddr {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let acceptor = TlsAcceptor::from(Arc::new(server_config(leaf, &["h2", "http/1.1"], None)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let (status, body) = if req.version() == hyper::Version::HTTP_2 {
                            (200, "h2 ok")
                        } else {
                            (505, "HTTP/2 required")
                        };
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
            });
        }
    });
    addr
}
