//! The client end of a TLS link to the control plane: a tower connector
//! for tonic's `Endpoint::connect_with_connector` that reads the current
//! [`Tls`] material for every new connection, so a rotated client
//! certificate is used from the next reconnect on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
            Ok(TokioIo::new(stream))
        })
    }
}
