//! The control plane's HTTP port: `/healthz` (process alive), `/readyz`
//! (facts loaded, map served, and the store answering), `/metrics`
//! (Prometheus text), `/api/v1/health` (JSON, see [`crate::api`]) and `/` (a
//! status page listing every backend's derived state).

use std::fmt::Write;
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

#[derive(Clone)]
struct Ctx {
    state: StateRx,
    metrics: Arc<Metrics>,
    subscribers: Arc<Subscribers>,
    results: Arc<Results>,
    shutdown: CancellationToken,
}

pub fn router(
    state: StateRx,
    metrics: Arc<Metrics>,
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
    use std::sync::atomic::Ordering::Relaxed;
    if ctx.metrics.store_up.load(Relaxed) == 0 {
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

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    let mut out = ctx.metrics.render();
    let revision = ctx
        .state
        .borrow()
        .as_ref()
        .map(|s| s.derived.map.revision)
        .unwrap_or(0);
    // One series per proxy id (the fleet's size), never per connection or
    // peer port: the largest lag among a proxy id's subscriptions.
    let name = "trackwire_subscriber_lag_revisions";
    let _ = writeln!(
        out,
        "# HELP {name} revisions the current map is ahead of what a proxy has (the largest over its subscriptions)\n# TYPE {name} gauge"
    );
    let mut lag: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for s in ctx.subscribers.list(revision) {
        let l = lag.entry(s.proxy_id).or_default();
        *l = (*l).max(s.lag_revisions);
    }
    for (proxy_id, l) in lag {
        let _ = writeln!(out, "{name}{{proxy_id=\"{}\"}} {l}", label(&proxy_id));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Escapes a Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
