//! The agent's HTTP port: `/healthz`, `/readyz` (connected to a control
//! plane) and `/metrics` (the registry, see [`crate::metrics`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runner::Shared;
use trackwire_core::metrics::Registry;

pub fn router(shared: Arc<Shared>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ctx { shared, registry })
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    if ctx.shared.metrics.connected.get() == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to a control plane\n",
        )
    }
}

/// The registry, as OpenMetrics or classic text by `Accept`.
async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = trackwire_core::metrics::scrape(&ctx.registry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{CheckResult, Outcome};
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// GETs `path` from the router: (status, body).
    async fn get(
        shared: &Arc<Shared>,
        registry: &Arc<Registry>,
        path: &str,
    ) -> (StatusCode, String) {
        let resp = router(Arc::clone(shared), Arc::clone(registry))
            .oneshot(
                axum::http::Request::get(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_expose_outcomes_by_pool_and_histograms() {
        let shared = Arc::new(Shared::default());
        let m = &shared.metrics;
        let web = m.pool("web");
        let result = CheckResult {
            outcome: Outcome::L7Sts,
            status: Some(503),
            latency: std::time::Duration::from_millis(2),
            reason: String::new(),
        };
        m.record(&web, &result);
        m.record(&web, &result);
        m.lateness.observe(std::time::Duration::from_millis(3));
        let mut registry = Registry::default();
        m.register(&mut registry, None);
        let registry = Arc::new(registry);
        let (status, text) = get(&shared, &registry, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                "trackwire_agent_check_results_total{pool=\"web\",outcome=\"L7STS\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("trackwire_agent_checks_failed_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("trackwire_agent_check_lateness_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        // A pool whose targets all stopped leaves the output.
        drop(web);
        let (_, text) = get(&shared, &registry, "/metrics").await;
        assert!(!text.contains("pool=\"web\""), "{text}");
        let (status, _) = get(&shared, &registry, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not connected yet");
    }
}
