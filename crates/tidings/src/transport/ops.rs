//! Operational endpoints: `/health`, `/metrics`, and the live event console at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::server::ServerState;

const CONSOLE_HTML: &str = include_str!("console.html");

/// `/health` and `/metrics`, plus `/` when the console is enabled.
pub fn routes(console: bool) -> Router<Arc<ServerState>> {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    if console {
        router.route("/", get(|| async { Html(CONSOLE_HTML) }))
    } else {
        router
    }
}

/// Always 200 while the process serves: during a Redis outage the node keeps
/// its connections and says `degraded` (a load balancer that drained every
/// node would cut clients off for nothing). So does a consumer whose source
/// does not answer: its events stop arriving, the node serves the rest.
async fn health(State(state): State<Arc<ServerState>>) -> Response {
    let engine = state.cluster.status();
    let consumers = state.metrics.consumers();
    let sources_up = consumers.iter().all(|c| c.source_up() != Some(false));
    let mut body = json!({
        "status": if engine.available && sources_up { "ok" } else { "degraded" },
        "node": state.node,
        "connections": state.hub.connection_count(),
        "engine": {
            "type": state.config.engine.kind.as_str(),
            "available": engine.available,
        },
    });
    if !consumers.is_empty() {
        body["consumers"] = consumers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "kind": c.kind,
                    "source_up": c.source_up(),
                    "lag": c.lag(),
                })
            })
            .collect();
    }
    Json(body).into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let nodes = state.nodes().await.ok().map(|n| n.len());
    let text = state.metrics.render(
        state.hub.channel_count(),
        state.hub.broker().channel_count(),
        &state.cluster.status(),
        nodes,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
