//! `POST /request`: what a WebSocket client would send, for clients on SSE or
//! polling. Same token, same checks, same replies; `status` and `refresh` reach
//! the SSE stream named by `X-Tidings-Client`.

use std::sync::Arc;

use axum::extract::rejection::{FailedToBufferBody, StringRejection};
use axum::extract::{FromRequest, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tidings_auth::Identity;

use super::http::{
    authenticate_client, declares_more_than, given_twice, repeated_parameter, ApiError,
    CLIENT_HEADER, INTERNAL_ERROR,
};
use super::requests::{self, Reader};
use super::subscriptions::Refusal;
use crate::hub::connection::{PushOutcome, MAX_CONTROLS};
use crate::hub::ControlRequest;
use crate::protocol::time::format_unix_seconds;
use crate::protocol::{parse_request, ErrorCode, Request, RequestId, ServerMessage};
use crate::server::ServerState;

/// `POST /request`.
pub async fn handle(
    State(state): State<Arc<ServerState>>,
    RawQuery(raw): RawQuery,
    request: axum::extract::Request,
) -> Response {
    state.metrics.http_request();
    let raw = raw.unwrap_or_default();
    if let Some(name) = repeated_parameter(&raw, &["token"]) {
        let twice = given_twice(name);
        return reply_error(None, Refusal::new(twice.code, twice.message));
    }
    let query_token = form_urlencoded::parse(raw.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned());
    let identity = match authenticate_client(&state, request.headers(), query_token.as_deref()) {
        Ok(identity) => identity,
        Err(err) => return reply_error(None, Refusal::new(err.code, err.message)),
    };
    let client = request
        .headers()
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if declares_more_than(request.headers(), state.config.connection.max_message_size) {
        let refusal = Refusal::new(ErrorCode::LimitExceeded, "request over max_message_size");
        return reply_error(None, refusal);
    }
    // Read only once the token is good: a client without one gets its 401
    // without the server buffering its body first.
    let body = String::from_request(request, &state).await;
    // The extractor's refusals are plain text; this endpoint answers in the
    // protocol's JSON errors.
    let body = match body {
        Ok(body) if body.len() <= state.config.connection.max_message_size => body,
        Ok(_)
        | Err(StringRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            let refusal = Refusal::new(ErrorCode::LimitExceeded, "request over max_message_size");
            return reply_error(None, refusal);
        }
        Err(StringRejection::InvalidUtf8(_)) => {
            let refusal = Refusal::new(ErrorCode::BadRequest, "the request body is not UTF-8");
            return reply_error(None, refusal);
        }
        Err(other) => {
            let refusal = Refusal::new(ErrorCode::BadRequest, other.body_text());
            return reply_error(None, refusal);
        }
    };
    let (id, request) = match parse_request(&body) {
        Ok(parsed) => parsed,
        Err(bad) => {
            let message = for_this_endpoint(bad.message);
            return reply_error(bad.id, Refusal::new(ErrorCode::BadRequest, message));
        }
    };
    if !state.user_request_limits.admit(&identity.user) {
        let refusal = Refusal::new(ErrorCode::RateLimited, "too many requests; slow down");
        return reply_error(id, refusal);
    }
    match dispatch(&state, &identity, &client, id.clone(), request).await {
        Ok(text) => json_response(StatusCode::OK, text),
        Err(refusal) => reply_error(id, refusal),
    }
}

/// The parser's message for an unknown `type` lists every type a WebSocket
/// takes; this endpoint names the ones it takes.
fn for_this_endpoint(message: String) -> String {
    match message
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((kind, _)) => format!(
            "unknown request type `{kind}`: POST /request takes publish, history, presence, ping, status and refresh"
        ),
        None => message,
    }
}

async fn dispatch(
    state: &ServerState,
    identity: &Identity,
    client: &str,
    id: Option<RequestId>,
    request: Request,
) -> Result<String, Refusal> {
    match request {
        Request::Publish {
            channel,
            event,
            data,
        } => requests::publish(state, identity, id, channel, event, &data)
            .await
            .map(|m| m.to_json()),
        Request::History {
            channel,
            since,
            limit,
            order,
        } => {
            let reader = Reader { client, identity };
            let order = order.unwrap_or_default();
            requests::history(state, reader, id, &channel, since, limit, order).await
        }
        Request::Presence { channel } => requests::presence(state, identity, id, &channel)
            .await
            .map(|m| m.to_json()),
        Request::Ping => Ok(ServerMessage::Pong { id }.to_json()),
        Request::Status { status } => {
            control(state, identity, client, ControlRequest::Status(status)).await?;
            Ok(ServerMessage::Status { id, status }.to_json())
        }
        Request::Refresh { token } => {
            let refreshed = requests::verify_refresh(state, &identity.user, &token)?;
            let expires_at = refreshed.expires_at.map(format_unix_seconds);
            control(state, identity, client, ControlRequest::Refresh(refreshed)).await?;
            Ok(ServerMessage::Refreshed { id, expires_at }.to_json())
        }
        Request::Subscribe { .. } | Request::Unsubscribe { .. } => Err(Refusal::new(
            ErrorCode::BadRequest,
            "subscriptions belong to a stream: open /sse with the channel list and the last resume token",
        )),
        Request::Auth { .. } | Request::Pong => Err(Refusal::new(
            ErrorCode::BadRequest,
            "not a request POST /request takes",
        )),
    }
}

/// Hands `request` to the live connection `client` of the same user and
/// waits until its stream has applied it (behind the events queued before
/// it), so that the reply means it took effect.
async fn control(
    state: &ServerState,
    identity: &Identity,
    client: &str,
    request: ControlRequest,
) -> Result<(), Refusal> {
    if client.is_empty() {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "this request needs X-Tidings-Client naming your SSE stream",
        ));
    }
    let connection = state
        .hub
        .connection_of(&identity.user, client)
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::BadRequest,
                format!("no live stream {client} of this user"),
            )
        })?;
    let ended = || Refusal::new(ErrorCode::BadRequest, format!("stream {client} has ended"));
    let (outcome, applied) = connection.push_control(request);
    // Not kept while waiting: the hub's handle must not outlive the stream.
    drop(connection);
    match outcome {
        PushOutcome::Queued => match applied.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((code, message))) => Err(Refusal::new(code, message)),
            Err(_) => Err(ended()),
        },
        PushOutcome::Overflow => Err(Refusal::new(
            ErrorCode::RateLimited,
            format!(
                "stream {client} has {MAX_CONTROLS} requests waiting; retry once it reads them"
            ),
        )),
        PushOutcome::Filtered | PushOutcome::Closed => Err(ended()),
    }
}

/// The answer to a request whose handling panicked (the server's catch-panic
/// layer for this route): 500 `internal` in the WebSocket error form.
pub fn panic_reply(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("POST /request panicked; answered 500");
    reply_error(None, Refusal::new(ErrorCode::Internal, INTERNAL_ERROR))
}

fn reply_error(id: Option<RequestId>, refusal: Refusal) -> Response {
    let status = ApiError::new(refusal.code, "").status();
    let text = ServerMessage::error(id, refusal.code, refusal.message).to_json();
    json_response(status, text)
}

fn json_response(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
