//! The client end of a TLS link to the control plane: a tower connector
//! for tonic's `Endpoint::connect_with_connector` that reads the current
//! [`Tls`] material for every new connection, so a rotated client
//! certificate is used from the next reconnect on, and that accepts only a
//! server whose certificate names a control plane of its trust domain.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::{Identity, Role};
use crate::material::Tls;

/// Connects TCP, then TLS with the server name from the URI's host.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: Tls,
}

impl TlsConnector {
    pub fn new(tls: Tls) -> Self {
        TlsConnector { tls }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let config = tls
                .client_config()
                .ok_or("TLS material has no client config")?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: not a server name ({e})"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
            // WebPKI checked the chain and the host name; the server must
            // also be a control plane of our trust domain, so an agent's or
            // a proxy's certificate cannot pose as one.
            let trust_domain = tls.identity().trust_domain;
            let der = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| format!("{host}:{port}: no server certificate"))?;
            let id = Identity::from_cert(der, &trust_domain)
                .map_err(|e| format!("{host}:{port}: server {e}"))?;
            if id.role != Role::ControlPlane {
                return Err(
                    format!("{host}:{port}: server identity {id} is not a control plane").into(),
                );
            }
            Ok(TokioIo::new(stream))
        })
    }
}
