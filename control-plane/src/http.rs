//! The control plane's HTTP port: `/healthz` (process alive), `/readyz`
//! (facts loaded, map served, and the store answering), `/metrics`
//! (Prometheus text), `/api/v1/health` (JSON, see [`crate::api`]) and `/` (a
//! status page listing every backend's derived state).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::results::Results;
use crate::state::StateRx;
use crate::subscribers::Subscribers;
use trackwire_core::metrics::Registry;

#[derive(Clone)]
struct Ctx {
    state: StateRx,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    subscribers: Arc<Subscribers>,
    results: Arc<Results>,
    shutdown: CancellationToken,
}

pub fn router(
    state: StateRx,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    subscribers: Arc<Subscribers>,
    results: Arc<Results>,
    shutdown: CancellationToken,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/health", get(api_health))
        .route("/api/v1/stream", get(api_stream))
        .route("/", get(status_page))
        .with_state(Ctx {
            state,
            metrics,
            registry,
            subscribers,
            results,
            shutdown,
        })
}

/// See [`crate::api`].
async fn api_health(State(ctx): State<Ctx>, uri: axum::http::Uri) -> axum::response::Response {
    let filter = match crate::api::Filter::parse(uri.query().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let snap = ctx.state.borrow().clone();
    let Some(snap) = snap else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading facts from the store\n",
        )
            .into_response();
    };
    let body = crate::api::health(&snap, &ctx.results, &ctx.subscribers, &filter);
    match serde_json::to_string(&body) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    if ctx.metrics.store_up.get() == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unreachable (serving the last map)\n",
        )
    } else if ctx.state.borrow().is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading facts from the store\n",
        )
    }
}

/// The component's registry, as OpenMetrics or classic text by `Accept`.
async fn metrics_text(State(ctx): State<Ctx>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = trackwire_core::metrics::scrape(&ctx.registry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// The status page: one static page (no external assets) that renders
/// `/api/v1/health` and follows `/api/v1/stream` without reloading.
async fn status_page() -> Html<&'static str> {
    Html(include_str!("status/index.html"))
}

/// Server-sent events: the JSON view (`event: health`) now and after each
/// change of the map, at most four times a second; ends on shutdown.
async fn api_stream(
    State(ctx): State<Ctx>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let first = true;
    let stream = futures::stream::unfold((ctx, first), |(mut ctx, first)| async move {
        if !first {
            tokio::select! {
                changed = ctx.state.changed() => changed.ok()?,
                () = ctx.shutdown.cancelled() => return None,
            }
            // Coalesce a burst of revisions into one event.
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                () = ctx.shutdown.cancelled() => return None,
            }
        }
        let snap = ctx.state.borrow_and_update().clone();
        let data = match &snap {
            Some(snap) => {
                let body = crate::api::health(
                    snap,
                    &ctx.results,
                    &ctx.subscribers,
                    &crate::api::Filter::default(),
                );
                serde_json::to_string(&body).unwrap_or_default()
            }
            None => String::new(),
        };
        let event = if data.is_empty() {
            Event::default().comment("loading facts from the store")
        } else {
            Event::default().event("health").data(data)
        };
        Some((Ok(event), (ctx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
