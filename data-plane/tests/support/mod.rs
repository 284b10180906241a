//! What the data plane's integration tests share: echo backends, maps of
//! one pool, and waiting for a condition with a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use trackwire_core::{Endpoint, HealthMap};

/// A backend that greets with `greeting` and a newline, then echoes.
pub async fn backend(greeting: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let greeting = format!("{greeting}\n");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let _ = s.write_all(greeting.as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A map (epoch 1, revision 1) whose pool "web" holds `eps`.
pub fn map_of(eps: &[Endpoint]) -> Arc<HealthMap> {
    let pool: BTreeMap<String, Endpoint> =
        eps.iter().map(|e| (e.backend.clone(), e.clone())).collect();
    Arc::new(HealthMap {
        epoch: 1,
        revision: 1,
        pools: BTreeMap::from([("web".to_string(), Arc::new(pool))]),
    })
}

/// Polls `done` every few milliseconds until it holds; fails the test,
/// naming `what`, after 10 s.
pub async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
