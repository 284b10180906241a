//! The control plane's HTTP port: `/healthz` (process alive), `/readyz`
//! (facts loaded, map served, and the store answering), `/metrics`
//! (Prometheus text), `/api/v1/health` (JSON, see [`crate::api`]) and `/` (a
//! status page listing every backend's derived state).

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

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
}

pub fn router(
    state: StateRx,
    metrics: Arc<Metrics>,
    subscribers: Arc<Subscribers>,
    results: Arc<Results>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/health", get(api_health))
        .route("/", get(status_page))
        .with_state(Ctx {
            state,
            metrics,
            subscribers,
            results,
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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(State(ctx): State<Ctx>) -> Html<String> {
    let snap = ctx.state.borrow().clone();
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>trackwire</title><style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}\
         .up{color:#080}.down{color:#b00}</style></head><body><h1>trackwire control plane</h1>",
    );
    let Some(snap) = snap else {
        out.push_str("<p>loading facts from the store…</p></body></html>");
        return Html(out);
    };
    let _ = write!(
        out,
        "<p>revision {} · {} agents live · suspect agents: {}</p><table><tr><th>pool</th><th>backend</th><th>address</th>\
         <th>state</th><th>admin</th><th>votes up/counted</th><th>agents</th></tr>",
        snap.derived.map.revision,
        snap.facts.agents.len(),
        if snap.derived.suspects.is_empty() {
            "none".to_string()
        } else {
            escape(
                &snap
                    .derived
                    .suspects
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
    );
    for (pool, endpoints) in &snap.derived.map.pools {
        for e in endpoints.values() {
            let agents = snap
                .derived
                .detail(pool, &e.backend)
                .map(|d| d.assigned.len())
                .unwrap_or(0);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class={st}>{st}</td><td>{}</td><td>{}/{}</td><td>{agents}</td></tr>",
                escape(pool),
                escape(&e.backend),
                escape(&e.address),
                e.admin_state.as_str(),
                e.votes_up,
                e.votes,
                st = e.state.as_str(),
            );
        }
    }
    out.push_str("</table></body></html>");
    Html(out)
}
