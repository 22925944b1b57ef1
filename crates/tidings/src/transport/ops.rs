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

async fn health(State(state): State<Arc<ServerState>>) -> Response {
    Json(json!({
        "status": "ok",
        "node": state.node,
        "connections": state.hub.connection_count(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let text = state.metrics.render(
        state.hub.channel_count(),
        state.hub.broker().channel_count(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
