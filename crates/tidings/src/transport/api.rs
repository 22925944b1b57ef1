//! The server API (§6): how backends publish and manage connections.
//! Every route but the OpenAPI document needs the API key
//! (`Authorization: Bearer` or `X-API-Key`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::{bearer_bytes, declares_more_than, given_twice, repeated_parameter, ApiError};
use crate::engine::{HistoryQuery, Publication};
use crate::protocol::{ChannelName, CloseCode, ErrorCode, HistoryOrder};
use crate::publisher::{
    parse_request, BroadcastRequest, EntityChange, PublishError, PublishRequest, Published,
};
use crate::server::ServerState;

/// The OpenAPI 3.1 document of the server API, served at `GET /api/openapi.json`.
/// Kept by hand in `docs/openapi.json`; `tests/server/openapi.rs` fails when a
/// route, field or status drifts from it.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../../../docs/openapi.json");

/// Where the OpenAPI document is served. Public: the schema is no secret, and
/// code generators and fuzzers can fetch it without the key.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// The routes that need the API key, with their handlers.
/// Each path, its handler, and whether it takes a body.
fn keyed_operations() -> [(&'static str, MethodRouter<Arc<ServerState>>, bool); 8] {
    [
        ("/api/publish", post(publish), true),
        ("/api/broadcast", post(broadcast), true),
        ("/api/events", post(entity_event), true),
        ("/api/disconnect", post(disconnect), true),
        ("/api/unsubscribe", post(unsubscribe), true),
        ("/api/presence", get(presence), false),
        ("/api/history", get(history), false),
        ("/api/info", get(info), false),
    ]
}

/// Every path [`routes`] serves, so a test can hold them equal to the paths of
/// the OpenAPI document.
pub fn paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = keyed_operations().map(|(path, ..)| path).into();
    paths.push(OPENAPI_PATH);
    paths
}

/// The `/api/*` routes (without `/api/ws`, which the WebSocket transport serves).
pub fn routes(state: Arc<ServerState>) -> Router<Arc<ServerState>> {
    let keyed = keyed_operations()
        .into_iter()
        .fold(Router::new(), |router, (path, handler, takes_body)| {
            // On the method's handler only: a wrong method still gets its 405.
            let handler = if takes_body {
                handler.route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    refuse_declared_oversize,
                ))
            } else {
                handler
            };
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(state, require_api_key));
    keyed.route(OPENAPI_PATH, get(openapi_document))
}

async fn openapi_document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn require_api_key(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // An empty `Bearer` is ignored here (unlike a client token's, which it
    // refuses): a proxy may add one, and the X-API-Key beside it still counts.
    // A non-empty one is the key checked, text or not (not text: refused).
    let presented = match bearer_bytes(&headers).filter(|key| !key.is_empty()) {
        Some(bearer) => Some(bearer),
        None => headers.get("x-api-key").map(|v| v.as_bytes()),
    }
    .map(std::str::from_utf8);
    let Some(key) = &state.api_key else {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "the server API is disabled: no api_key is configured",
        )
        .into_response();
    };
    match presented {
        Some(Ok(presented)) if key.matches(presented) => next.run(request).await,
        _ => {
            state.metrics.auth_failed();
            ApiError::new(ErrorCode::Unauthorized, "missing or invalid API key").into_response()
        }
    }
}

/// A body whose `Content-Length` is over the limit: 413 before any of it is
/// read (a client that declared more than it sends would otherwise hold the
/// request until `request_timeout`).
async fn refuse_declared_oversize(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Response {
    if declares_more_than(request.headers(), state.config.api.max_body_size) {
        return body_too_large().into_response();
    }
    next.run(request).await
}

fn body_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::LimitExceeded,
        "request body exceeds api.max_body_size",
    )
}

/// Parses a JSON body, answering malformed or oversized bodies with the
/// contract's error shape.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large()
        } else {
            ApiError::new(ErrorCode::BadRequest, e.body_text())
        }
    })?;
    Ok(parse_request(&body)?)
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> Self {
        if let PublishError::Engine(e) = &err {
            tracing::error!(error = %e, "publish failed in the engine");
        }
        ApiError::new(err.code(), err.to_string())
    }
}

async fn publish(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: PublishRequest = parse_body(body)?;
    let published = state.publisher.publish(request).await?;
    Ok(Json(published).into_response())
}

async fn broadcast(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // The publisher refuses more than `api.max_broadcast_channels` (413).
    let request: BroadcastRequest = parse_body(body)?;
    let results = state.publisher.broadcast(request).await?;
    Ok(Json(PlacedResults {
        event: None,
        results: &results,
    })
    .into_response())
}

async fn entity_event(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let change: EntityChange = parse_body(body)?;
    let event = change.event_name();
    let results = state.publisher.publish_entity_change(change).await?;
    Ok(Json(PlacedResults {
        event: Some(&event),
        results: &results,
    })
    .into_response())
}

/// The answer of `/api/broadcast` and `/api/events`, serialized straight
/// from the results (through a `json!` value it cost a map per channel).
#[derive(Serialize)]
struct PlacedResults<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    results: &'a [Published],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: DisconnectRequest = parse_body(body)?;
    let code = match request.code {
        None => CloseCode::DisconnectedByApi,
        Some(n) => CloseCode::from_code(n)
            .filter(|c| c.code() >= 4000)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    "code must be one of the 4xxx close codes of the contract",
                )
            })?,
    };
    let count = state
        .cluster
        .disconnect_user(&request.user, code, request.reason)
        .await
        .map_err(engine_unavailable)?;
    Ok(Json(json!({ "disconnected": count })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    user: String,
    channel: String,
    #[serde(default)]
    reason: Option<String>,
}

/// A channel named in a request: 400 `bad_request` when the name is invalid,
/// 404 `unknown_channel` when no namespace defines it.
fn known_channel(state: &ServerState, name: &str) -> Result<ChannelName, ApiError> {
    let channel = ChannelName::parse(name)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("channel: {e}")))?;
    state
        .access
        .namespace(&channel)
        .map_err(|e| ApiError::new(ErrorCode::UnknownChannel, e.to_string()))?;
    Ok(channel)
}

async fn unsubscribe(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: UnsubscribeRequest = parse_body(body)?;
    // As publish answers: no such channel is a 404, not a count of 0 that
    // hides a typo.
    let channel = known_channel(&state, &request.channel)?;
    let reason = request
        .reason
        .as_deref()
        .unwrap_or("unsubscribed by the server");
    let count = state
        .cluster
        .unsubscribe_user(&request.user, &channel, reason)
        .await
        .map_err(engine_unavailable)?;
    Ok(Json(json!({ "unsubscribed": count })).into_response())
}

#[derive(Deserialize)]
struct ChannelQuery {
    channel: String,
}

async fn presence(
    State(state): State<Arc<ServerState>>,
    RawQuery(raw): RawQuery,
    query: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if let Some(name) = repeated_parameter(raw.as_deref().unwrap_or_default(), &["channel"]) {
        return Err(given_twice(name));
    }
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let channel = known_channel(&state, &query.channel)?;
    let members = state.presence.members(&channel).await.map_err(|e| {
        tracing::error!(error = %e, "presence read failed");
        ApiError::new(ErrorCode::EngineUnavailable, "presence read failed; retry")
    })?;
    Ok(Json(json!({ "channel": channel, "members": members })).into_response())
}

/// `GET /api/history` parameters.
#[derive(Debug, Deserialize)]
struct HistoryParams {
    channel: String,
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    order: HistoryOrder,
}

/// The backend sees every event: audience and exclusion do not apply.
async fn history(
    State(state): State<Arc<ServerState>>,
    RawQuery(raw): RawQuery,
    query: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let names = ["channel", "since", "epoch", "limit", "order"];
    if let Some(name) = repeated_parameter(raw.as_deref().unwrap_or_default(), &names) {
        return Err(given_twice(name));
    }
    let Query(params) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let channel = known_channel(&state, &params.channel)?;
    if params.epoch.is_some() && params.since.is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "`epoch` needs `since`",
        ));
    }
    let query = HistoryQuery {
        after: params.since,
        limit: params.limit,
        newest_first: params.order == HistoryOrder::Newest,
    };
    let page = state
        .hub
        .broker()
        .history(&channel, &query)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "history read failed");
            ApiError::new(ErrorCode::EngineUnavailable, "history read failed; retry")
        })?;
    let same_epoch = params
        .epoch
        .as_deref()
        .is_none_or(|epoch| epoch == &*page.position.epoch);
    let events: Vec<&Arc<Publication>> = page.events.iter().filter(|_| same_epoch).collect();
    let body = super::history_json(
        None,
        &channel,
        &page.position,
        &events,
        Some(page.complete && same_epoch),
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/info`: this node and every live node of the cluster.
async fn info(State(state): State<Arc<ServerState>>) -> Result<Response, ApiError> {
    let nodes = state.nodes().await.map_err(engine_unavailable)?;
    Ok(Json(json!({
        "node": state.node,
        "version": env!("CARGO_PKG_VERSION"),
        "engine": state.config.engine.kind.as_str(),
        "nodes": nodes,
    }))
    .into_response())
}

/// The answer to an action the engine could not carry out.
fn engine_unavailable(err: crate::engine::EngineError) -> ApiError {
    tracing::debug!(error = %err, "engine unavailable");
    ApiError::new(
        ErrorCode::EngineUnavailable,
        "the engine is unavailable; retry",
    )
}
