//! The agent's HTTP port: `/healthz`, `/readyz` (connected to a control
//! plane) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runner::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.connected.load(Relaxed) == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to a control plane\n",
        )
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = format!(
        "# HELP trackwire_agent_targets checks assigned to this agent\n# TYPE trackwire_agent_targets gauge\ntrackwire_agent_targets {}\n\
         # HELP trackwire_agent_checks_total checks run\n# TYPE trackwire_agent_checks_total counter\ntrackwire_agent_checks_total {}\n\
         # HELP trackwire_agent_checks_failed_total checks that failed\n# TYPE trackwire_agent_checks_failed_total counter\ntrackwire_agent_checks_failed_total {}\n\
         # HELP trackwire_agent_transitions_total verdict transitions\n# TYPE trackwire_agent_transitions_total counter\ntrackwire_agent_transitions_total {}\n\
         # HELP trackwire_agent_connected 1 while a control-plane session is up\n# TYPE trackwire_agent_connected gauge\ntrackwire_agent_connected {}\n",
        s.targets.load(Relaxed),
        s.checks_total.load(Relaxed),
        s.checks_failed.load(Relaxed),
        s.transitions.load(Relaxed),
        s.connected.load(Relaxed),
    );
    s.lateness.render(
        &mut body,
        "trackwire_agent_check_lateness_seconds",
        "how late checks started against their schedule",
    );
    s.latency.render(
        &mut body,
        "trackwire_agent_check_duration_seconds",
        "check duration, connect to verdict",
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
