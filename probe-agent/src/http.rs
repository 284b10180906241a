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
use trackwire_transport::Tls;

pub fn router(shared: Arc<Shared>, tls: Option<Tls>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ctx { shared, tls })
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    tls: Option<Tls>,
}

async fn readyz(State(Ctx { shared: s, .. }): State<Ctx>) -> impl IntoResponse {
    if s.connected.load(Relaxed) == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to a control plane\n",
        )
    }
}

async fn metrics(State(Ctx { shared: s, tls }): State<Ctx>) -> impl IntoResponse {
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
    body.push_str("# HELP trackwire_agent_check_results_total check results by HAProxy outcome code\n# TYPE trackwire_agent_check_results_total counter\n");
    for o in crate::check::Outcome::ALL {
        body.push_str(&format!(
            "trackwire_agent_check_results_total{{outcome=\"{o}\"}} {}\n",
            s.outcomes[o.index()].load(Relaxed)
        ));
    }
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
    if let Some(tls) = tls {
        tls.render_metrics(&mut body);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Outcome;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn metrics_expose_outcomes_and_histograms() {
        let shared = Arc::new(Shared::default());
        shared.outcomes[Outcome::L7Sts.index()].fetch_add(2, Relaxed);
        shared.lateness.observe(std::time::Duration::from_millis(3));
        let resp = router(Arc::clone(&shared), None)
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("trackwire_agent_check_results_total{outcome=\"L7STS\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("trackwire_agent_check_lateness_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        let ready = router(shared, None)
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(
            ready.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected yet"
        );
    }
}
