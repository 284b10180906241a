//! The client connector accepts only a control plane of its trust domain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::Service;
use trackwire_transport::client::TlsConnector;
use trackwire_transport::pki::{Ca, LeafSpec};
use trackwire_transport::{Identity, Role, Side, Tls, TlsFiles};

/// A bare TLS server presenting `uri` as its identity (valid for 127.0.0.1).
async fn server_as(ca: &Ca, uri: &str) -> String {
    let now = SystemTime::now();
    let leaf = ca
        .sign(&LeafSpec {
            common_name: "server".into(),
            uris: vec![uri.to_string()],
            sans: vec!["127.0.0.1".into()],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
            server: true,
        })
        .expect("sign");
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config =
        rustls::ServerConfig::builder_with_provider(trackwire_transport::material::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 16]).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn only_a_control_plane_certificate_is_accepted_as_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("trackwire.test", 2).expect("ca");
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).expect("write");
    let leaf = ca.issue(Role::Agent, "me", &[], 1).expect("issue");
    let (cert, key) = leaf.write(dir.path(), Role::Agent, "me").expect("write");
    let tls = Tls::load(
        TlsFiles {
            ca: dir.path().join("ca.crt"),
            cert,
            key,
        },
        Side::Client,
    )
    .expect("client material");
    let mut connector = TlsConnector::new(tls);
    let id = |role| {
        Identity::new("trackwire.test", role, "x")
            .expect("id")
            .uri()
    };

    let good = server_as(&ca, &id(Role::ControlPlane)).await;
    assert!(connector.call(good.parse().expect("uri")).await.is_ok());

    let agent = server_as(&ca, &id(Role::Agent)).await;
    let Err(e) = connector.call(agent.parse().expect("uri")).await else {
        panic!("an agent's certificate posed as a control plane");
    };
    assert!(e.to_string().contains("is not a control plane"), "{e}");

    let other = server_as(&ca, "spiffe://other.test/trackwire/control-plane/x").await;
    let Err(e) = connector.call(other.parse().expect("uri")).await else {
        panic!("a control plane of another trust domain was accepted");
    };
    assert!(e.to_string().contains("trust domain"), "{e}");
}

/// A client's rotated certificate is used from its next connection on.
#[tokio::test]
async fn a_client_presents_its_rotated_certificate_on_the_next_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("trackwire.test", 2).expect("ca");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write");
    // A server requiring client certificates that reports each client's serial.
    let server = ca
        .issue(Role::ControlPlane, "cp", &["127.0.0.1".into()], 1)
        .expect("issue");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca"))
        .expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        trackwire_transport::material::provider(),
    )
    .build()
    .expect("verifier");
    let config =
        rustls::ServerConfig::builder_with_provider(trackwire_transport::material::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key"),
            )
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, mut serials) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(s) = acceptor.accept(tcp).await
                && let Some(der) = s.get_ref().1.peer_certificates().and_then(|c| c.first())
            {
                let v = trackwire_transport::identity::Validity::of(der).expect("validity");
                let _ = tx.send(v.serial);
            }
        }
    });

    let issue = || {
        ca.issue(Role::Agent, "a1", &[], 1)
            .expect("issue")
            .write(dir.path(), Role::Agent, "a1")
            .expect("write")
    };
    let (cert, key) = issue();
    let tls = Tls::load(
        TlsFiles {
            ca: ca_path.clone(),
            cert,
            key,
        },
        Side::Client,
    )
    .expect("client material");
    let first = tls.current().leaf.serial.clone();
    let mut connector = TlsConnector::new(tls.clone());
    drop(
        connector
            .call(url.parse().expect("uri"))
            .await
            .expect("connect"),
    );
    assert_eq!(serials.recv().await.expect("serial"), first);

    issue();
    assert!(tls.reload(true).expect("reload"), "new material taken");
    let second = tls.current().leaf.serial.clone();
    assert_ne!(first, second);
    drop(
        connector
            .call(url.parse().expect("uri"))
            .await
            .expect("connect"),
    );
    assert_eq!(serials.recv().await.expect("serial"), second);
}
