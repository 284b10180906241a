//! The `grpc` check: `grpc.health.v1.Health/Check` over plaintext HTTP/2 on
//! the connection already made (so connect failures stay L4 outcomes).
//! SERVING passes; NOT_SERVING, SERVICE_UNKNOWN or an RPC error fail.

use parking_lot::Mutex;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{CheckResult, Outcome, PreparedCheck};

pub(super) async fn check(
    stream: TcpStream,
    check: &PreparedCheck,
    deadline: Instant,
    start: Instant,
) -> CheckResult {
    let done = |outcome, reason: String| CheckResult {
        outcome,
        status: None,
        latency: start.elapsed(),
        reason,
    };
    let endpoint = match Endpoint::from_shared(format!("http://{}", check.connect_to)) {
        Ok(e) => e,
        Err(e) => return done(Outcome::L7Rsp, format!("address: {e}")),
    };
    // Hand tonic the connection we already made, exactly once.
    let slot = std::sync::Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_| {
        let taken = slot.lock().take();
        async move {
            taken
                .map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection already used"))
        }
    });
    let rpc = async {
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| (Outcome::L7Rsp, format!("HTTP/2: {e}")))?;
        let service = check.spec.grpc_service.clone().unwrap_or_default();
        HealthClient::new(channel)
            .check(HealthCheckRequest { service })
            .await
            .map_err(|s| (Outcome::L7Rsp, format!("{}: {}", s.code(), s.message())))
    };
    match tokio::time::timeout_at(deadline, rpc).await {
        Err(_) => done(Outcome::L7Tout, "response timeout".into()),
        Ok(Err((o, reason))) => done(o, reason),
        Ok(Ok(resp)) => match ServingStatus::try_from(resp.into_inner().status) {
            Ok(ServingStatus::Serving) => done(Outcome::L7Ok, String::new()),
            Ok(other) => done(Outcome::L7Sts, other.as_str_name().to_string()),
            Err(_) => done(Outcome::L7Rsp, "unknown serving status".into()),
        },
    }
}
