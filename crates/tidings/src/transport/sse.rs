//! Server-Sent Events at `GET /sse?channel=a&channel=b` (contract §7).
//!
//! A stream is a hub connection like a WebSocket, with the same subscribe and
//! recovery procedure (`Subscriptions`); its body is produced lazily, so a
//! stream costs no task of its own and hyper's write readiness is the
//! backpressure. Each event's `event:`/`data:` bytes come pre-formatted from the
//! [`Publication`]; only the `id:` line (the resume token) is per stream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use tidings_auth::Identity;
use tokio::time::Instant;

use super::http::{authenticate_client, given_twice, ApiError, CLIENT_HEADER};
use super::subscriptions::{parse_channel, Subscriptions};
use super::{duration_ms, expiry_instant, open_client_connection};
use crate::engine::{push_sse_data, Publication};
use crate::hub::connection::ServerUnsubscribe;
use crate::hub::{
    CloseRequest, Connection, ConnectionQueue, ControlRequest, Outbound, RESUBSCRIBE_REASON,
    REVOKED_REASON,
};
use crate::protocol::time::{format_unix_seconds, new_client_id};
use crate::protocol::{
    ChannelName, CloseCode, ErrorCode, PresenceStatus, ServerMessage, StreamPosition,
    PROTOCOL_VERSION,
};
use crate::server::ServerState;

/// Most queued items written in one chunk.
const WRITE_BATCH: usize = 64;
/// Version prefix of resume tokens, so their format can change compatibly.
const TOKEN_VERSION: &str = "1";
/// Longest resume token read (a `Last-Event-ID` is client input).
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A resume token: each channel's epoch and the last offset the stream delivered.
///
/// Written as `1;channel,epoch,offset;channel,epoch,offset`. Channel names and
/// epochs never contain `;` or `,`. Clients must treat it as opaque.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    positions: BTreeMap<ChannelName, (Arc<str>, u64)>,
}

impl ResumeToken {
    /// Reads a token; `None` when it is not one this server wrote.
    pub fn parse(text: &str, max_channels: usize) -> Option<Self> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = text.split(';');
        if parts.next()? != TOKEN_VERSION {
            return None;
        }
        let mut positions = BTreeMap::new();
        for part in parts {
            let mut fields = part.split(',');
            let channel = ChannelName::parse(fields.next()?).ok()?;
            let epoch = fields.next().filter(|e| !e.is_empty())?;
            let offset = fields.next()?.parse().ok()?;
            if fields.next().is_some() || positions.len() >= max_channels {
                return None;
            }
            positions.insert(channel, (Arc::from(epoch), offset));
        }
        Some(Self { positions })
    }

    /// The position of `channel`, if the token has it.
    pub fn position(&self, channel: &ChannelName) -> Option<StreamPosition> {
        self.positions
            .get(channel)
            .map(|(epoch, offset)| StreamPosition {
                offset: *offset,
                epoch: epoch.to_string(),
            })
    }

    /// Every channel of the token with its position.
    pub fn positions(&self) -> impl Iterator<Item = (&ChannelName, StreamPosition)> {
        self.positions.iter().map(|(channel, (epoch, offset))| {
            let position = StreamPosition {
                offset: *offset,
                epoch: epoch.to_string(),
            };
            (channel, position)
        })
    }

    fn set(&mut self, channel: &ChannelName, epoch: &Arc<str>, offset: u64) {
        match self.positions.get_mut(channel) {
            Some(position) => *position = (epoch.clone(), offset),
            None => {
                self.positions
                    .insert(channel.clone(), (epoch.clone(), offset));
            }
        }
    }

    fn write_to(&self, out: &mut String) {
        out.push_str(TOKEN_VERSION);
        for (channel, (epoch, offset)) in &self.positions {
            out.push(';');
            out.push_str(channel.as_str());
            out.push(',');
            out.push_str(epoch);
            out.push(',');
            out.push_str(&offset.to_string());
        }
    }
}

/// What `GET /sse` was asked for.
struct StreamRequest {
    channels: Vec<ChannelName>,
    resume: Option<ResumeToken>,
    token: Option<String>,
}

fn parse_stream_request(
    raw: Option<&str>,
    headers: &HeaderMap,
    max_channels: usize,
) -> Result<StreamRequest, ApiError> {
    let mut channels = Vec::new();
    let mut last_event_id = None;
    let mut token = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*key {
            "channel" => {
                let channel = parse_channel(&value)
                    .map_err(|refusal| ApiError::new(refusal.code, refusal.message))?;
                if !channels.contains(&channel) {
                    channels.push(channel);
                }
            }
            // Given twice, as on /ws and /events: a 400, not one of the two.
            "last_event_id" | "token" => {
                let slot = if key == "token" {
                    &mut token
                } else {
                    &mut last_event_id
                };
                if slot.replace(value.into_owned()).is_some() {
                    return Err(given_twice(&key));
                }
            }
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "name at least one channel: /sse?channel=…",
        ));
    }
    if channels.len() > max_channels {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("at most {max_channels} channels per stream"),
        ));
    }
    let unreadable = || {
        ApiError::new(
            ErrorCode::BadRequest,
            "last_event_id is not a resume token of this server",
        )
    };
    // The browser's own reconnect sends the header; an explicit query wins.
    // An empty query is no query: a polyfill that always appends
    // `last_event_id=` must not hide the header its reconnect sends.
    let last_event_id = last_event_id.filter(|query| !query.trim().is_empty());
    let last_event_id = match (last_event_id, headers.get("last-event-id")) {
        (Some(query), _) => Some(query),
        (None, Some(header)) => Some(header.to_str().map_err(|_| unreadable())?.to_owned()),
        (None, None) => None,
    };
    let resume = match last_event_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(ResumeToken::parse(text, max_channels).ok_or_else(unreadable)?),
    };
    Ok(StreamRequest {
        channels,
        resume,
        token,
    })
}

/// `GET /sse`: opens a stream on the named channels, resuming from
/// `Last-Event-ID` / `?last_event_id=` when given. `HEAD` checks the request
/// and the token the same way and answers the same headers without opening
/// a stream.
pub async fn stream(
    State(state): State<Arc<ServerState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let max_channels = state.config.connection.max_channels;
    let request = match parse_stream_request(raw.as_deref(), &headers, max_channels) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let identity = match authenticate_client(&state, &headers, request.token.as_deref()) {
        Ok(identity) => identity,
        Err(err) => return err.into_response(),
    };
    if method == Method::HEAD {
        // A HEAD response has no body: opening a connection here would only
        // count it, join presence and leave again.
        return stream_response(Body::empty(), None);
    }
    let settings = &state.config.connection;
    let client_id: Arc<str> = Arc::from(new_client_id().as_str());
    let (connection, queue) = match open_client_connection(&state, client_id.clone(), &identity) {
        Ok(opened) => opened,
        Err(err) => {
            let mut response =
                ApiError::new(ErrorCode::LimitExceeded, err.to_string()).into_response();
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return response;
        }
    };
    state.metrics.sse_stream_opened();
    tracing::debug!(client = %client_id, user = %identity.user, "sse stream opened");
    let session = SseSession {
        next_ping: Instant::now() + settings.heartbeat,
        token_expiry: expiry_instant(&identity),
        state: state.clone(),
        identity,
        connection,
        queue: Some(queue),
        subscriptions: Some(Subscriptions::default()),
        delivered: ResumeToken::default(),
        status: PresenceStatus::Online,
        phase: Phase::Opening {
            channels: request.channels,
            resume: request.resume.unwrap_or_default(),
        },
    };
    let body = futures_util::stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), session))
    });
    stream_response(Body::from_stream(body), Some(&client_id))
}

/// An event stream's response: its headers around `body`.
fn stream_response(body: Body, client_id: Option<&str>) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(Ok(value)) = client_id.map(HeaderValue::from_str) {
        headers.insert(CLIENT_HEADER, value);
    }
    response
}

enum Phase {
    /// Nothing sent yet: subscribe to these, resuming from `resume`.
    Opening {
        channels: Vec<ChannelName>,
        resume: ResumeToken,
    },
    /// Streaming events.
    Live,
    /// `disconnect` sent; the body ends.
    Done,
}

struct SseSession {
    state: Arc<ServerState>,
    identity: Identity,
    connection: Arc<Connection>,
    // Options only so `Drop` can hand them to the clean-up task.
    queue: Option<ConnectionQueue>,
    subscriptions: Option<Subscriptions>,
    /// What the client has received: the positions its next resume starts from.
    delivered: ResumeToken,
    status: PresenceStatus,
    next_ping: Instant,
    token_expiry: Option<Instant>,
    phase: Phase,
}

impl Drop for SseSession {
    fn drop(&mut self) {
        // Dropped when the client goes away (hyper drops the body) or after
        // `disconnect`: leave presence and the hub off the request path.
        self.queue.take();
        self.state.metrics.sse_stream_closed();
        let subscriptions = self.subscriptions.take().unwrap_or_default();
        let state = self.state.clone();
        let connection = self.connection.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { subscriptions.close(&state, &connection).await });
        }
        tracing::debug!(client = %self.connection.client_id, "sse stream closed");
    }
}

/// Appends one SSE message: optional `id:` (the resume token), `event:`, data.
fn push_message(out: &mut String, token: Option<&ResumeToken>, event: &str, data: &str) {
    if let Some(token) = token {
        out.push_str("id: ");
        token.write_to(out);
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    push_sse_data(out, data);
    out.push('\n');
}

impl SseSession {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match std::mem::replace(&mut self.phase, Phase::Live) {
            Phase::Opening { channels, resume } => Some(self.open(channels, resume).await),
            Phase::Live => Some(self.live().await),
            Phase::Done => {
                self.phase = Phase::Done;
                None
            }
        }
    }

    fn subscriptions(&mut self) -> &mut Subscriptions {
        self.subscriptions
            .get_or_insert_with(Subscriptions::default)
    }

    /// `retry:`, `connected`, then each channel's `subscribed` (or `error`) and
    /// its replay, in the order the channels were named.
    async fn open(&mut self, channels: Vec<ChannelName>, resume: ResumeToken) -> Bytes {
        let state = self.state.clone();
        let mut out = String::new();
        out.push_str("retry: ");
        out.push_str(&duration_ms(state.config.transports.sse_retry).to_string());
        out.push_str("\n\n");
        let connected = ServerMessage::Connected {
            id: None,
            client: self.connection.client_id.to_string(),
            user: self.identity.user.to_string(),
            heartbeat: duration_ms(state.config.connection.heartbeat),
            expires_at: self.identity.expires_at.map(format_unix_seconds),
            node: state.node.clone(),
            version: PROTOCOL_VERSION,
        };
        push_message(&mut out, None, "connected", &connected.to_json());
        // Until a channel is subscribed, the token still carries where the client
        // was, so a stream that breaks mid-way resumes from there.
        for channel in &channels {
            if let Some((epoch, offset)) = resume.positions.get(channel) {
                self.delivered.set(channel, epoch, *offset);
            }
        }
        let mut engine_down = false;
        for channel in channels {
            let since = resume.position(&channel);
            let connection = self.connection.clone();
            let identity = self.identity.clone();
            let status = self.status;
            let result = self
                .subscriptions()
                .subscribe(
                    &state,
                    &identity,
                    &connection,
                    channel.clone(),
                    since.as_ref(),
                    status,
                )
                .await;
            let subscribed = match result {
                Ok(subscribed) => subscribed,
                Err(refusal) => {
                    engine_down |= refusal.code == ErrorCode::EngineUnavailable;
                    self.delivered.positions.remove(&channel);
                    let error = json!({
                        "type": "error",
                        "channel": channel.as_str(),
                        "code": refusal.code,
                        "message": refusal.message,
                    });
                    push_message(&mut out, None, "error", &error.to_string());
                    continue;
                }
            };
            let position = &subscribed.position;
            match subscribed.recovery {
                Some(Ok(())) => {}
                Some(Err(reason)) => {
                    let notice = json!({
                        "type": "unrecoverable",
                        "channel": channel.as_str(),
                        "epoch": &*position.epoch,
                        "offset": position.offset,
                        "reason": reason.as_str(),
                    });
                    self.delivered
                        .set(&channel, &position.epoch, position.offset);
                    push_message(&mut out, None, "unrecoverable", &notice.to_string());
                }
                None => self
                    .delivered
                    .set(&channel, &position.epoch, position.offset),
            }
            let reply = subscribed.reply(None).to_json();
            push_message(&mut out, Some(&self.delivered), "subscribed", &reply);
            for publication in &subscribed.replay {
                self.push_event(&mut out, publication);
            }
            if subscribed.recovery == Some(Ok(())) {
                // Events filtered out by audience still move the position on.
                self.delivered
                    .set(&channel, &position.epoch, position.offset);
            }
        }
        if engine_down {
            // A stream cannot subscribe again: end it so that the client
            // (EventSource after `retry:`, the SDK with backoff) opens a new one,
            // resuming what it got, instead of staying open deaf to a channel.
            self.push_end(
                &mut out,
                CloseCode::Reconnect,
                Some("the engine is unavailable; reconnect".to_owned()),
            );
        }
        Bytes::from(out)
    }

    fn push_event(&mut self, out: &mut String, publication: &Publication) {
        self.delivered
            .set(&publication.channel, &publication.epoch, publication.offset);
        out.push_str("id: ");
        self.delivered.write_to(out);
        out.push('\n');
        // `Publication::sse_frame` is ASCII-safe UTF-8 produced from a String.
        out.push_str(std::str::from_utf8(publication.sse_frame()).unwrap_or_default());
    }

    /// Waits for the next thing to send: queued events (batched), a keep-alive,
    /// or the end of the stream.
    async fn live(&mut self) -> Bytes {
        loop {
            let deadline = match self.token_expiry {
                Some(expiry) => expiry.min(self.next_ping),
                None => self.next_ping,
            };
            let Some(queue) = self.queue.as_mut() else {
                return self.end(CloseCode::GoingAway, None);
            };
            let connection = self.connection.clone();
            let step = tokio::select! {
                biased;
                request = connection.close_requested() => Err(request),
                item = queue.recv() => Ok(Some(item)),
                () = tokio::time::sleep_until(deadline) => Ok(None),
            };
            match step {
                Err(CloseRequest { code, reason }) => return self.end(code, Some(reason)),
                Ok(Some(item)) => {
                    let chunk = self.write_queued(item).await;
                    if !chunk.is_empty() {
                        return chunk;
                    }
                }
                Ok(None) => {
                    let now = Instant::now();
                    if self.token_expiry.is_some_and(|expiry| expiry <= now) {
                        return self.end(CloseCode::TokenExpired, None);
                    }
                    self.next_ping = now + self.state.config.connection.heartbeat;
                    return Bytes::from_static(b": ping\n\n");
                }
            }
        }
    }

    /// The `disconnect` message; the body ends after it.
    fn end(&mut self, code: CloseCode, reason: Option<String>) -> Bytes {
        let mut out = String::new();
        self.push_end(&mut out, code, reason);
        Bytes::from(out)
    }

    /// Writes the `disconnect` message to `out`; the body ends after it.
    fn push_end(&mut self, out: &mut String, code: CloseCode, reason: Option<String>) {
        self.phase = Phase::Done;
        let notice = ServerMessage::Disconnect {
            code: code.code(),
            reason: reason.unwrap_or_else(|| code.default_reason().to_owned()),
            reconnect: code.reconnect(),
        };
        push_message(out, None, "disconnect", &notice.to_json());
    }

    async fn write_queued(&mut self, first: Outbound) -> Bytes {
        let state = self.state.clone();
        let connection = self.connection.clone();
        let mut out = String::new();
        let mut oldest = None;
        let mut item = Some(first);
        let mut written = 0;
        while let Some(next) = item.take() {
            match next {
                Outbound::Event(publication) => {
                    if self.subscriptions().accept(&publication) {
                        oldest.get_or_insert(publication.received_at);
                        self.push_event(&mut out, &publication);
                    }
                }
                Outbound::Presence(push) => {
                    if self.subscriptions().contains(&push.channel) {
                        push_message(&mut out, None, "presence", &push.text);
                    }
                }
                Outbound::Unsubscribed(notice) if notice.reason == RESUBSCRIBE_REASON => {
                    // A stream cannot subscribe again on its own: end it, and
                    // the client reopens it with its resume token, which
                    // recovers the channel or reports it `unrecoverable`.
                    connection.request_close(CloseCode::Reconnect, Some(notice.reason));
                }
                Outbound::Unsubscribed(notice) => {
                    let ServerUnsubscribe { channel, reason } = *notice;
                    if self
                        .subscriptions()
                        .forget(&state, &connection, &channel)
                        .await
                    {
                        self.delivered.positions.remove(&channel);
                        let notice = ServerMessage::Unsubscribed {
                            id: None,
                            channel: channel.to_string(),
                            reason: Some(reason),
                        };
                        push_message(&mut out, None, "unsubscribed", &notice.to_json());
                    }
                }
                Outbound::Control(control) => {
                    let (request, applied) = control.take();
                    let mut outcome = Ok(());
                    match request {
                        ControlRequest::Status(status) => {
                            self.status = status;
                            if let Some(subscriptions) = &self.subscriptions {
                                outcome =
                                    subscriptions.set_status(&state, &connection, status).await;
                            }
                        }
                        ControlRequest::Refresh(identity) => {
                            let revoked = self
                                .subscriptions
                                .get_or_insert_with(Subscriptions::default)
                                .take_refresh(
                                    &state,
                                    &connection,
                                    identity,
                                    &mut self.identity,
                                    &mut self.token_expiry,
                                )
                                .await;
                            for channel in revoked {
                                self.delivered.positions.remove(&channel);
                                let notice = ServerMessage::Unsubscribed {
                                    id: None,
                                    channel: channel.to_string(),
                                    reason: Some(REVOKED_REASON.to_owned()),
                                };
                                push_message(&mut out, None, "unsubscribed", &notice.to_json());
                            }
                        }
                    }
                    applied.done(outcome.map_err(|refusal| (refusal.code, refusal.message)));
                }
            }
            written += 1;
            if written < WRITE_BATCH {
                item = self.queue.as_mut().and_then(ConnectionQueue::try_recv);
            }
        }
        if let Some(received) = oldest {
            state.metrics.written(received.elapsed());
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_round_trip_and_reject_garbage() {
        let mut token = ResumeToken::default();
        let a = ChannelName::parse("workspace:acme").unwrap();
        let b = ChannelName::parse("user:u1").unwrap();
        token.set(&a, &Arc::from("EPOCHA"), 42);
        token.set(&b, &Arc::from("EPOCHB"), 0);
        let mut text = String::new();
        token.write_to(&mut text);
        assert_eq!(text, "1;user:u1,EPOCHB,0;workspace:acme,EPOCHA,42");
        let parsed = ResumeToken::parse(&text, 10).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.position(&a).unwrap().offset, 42);
        for bad in [
            "",
            "2;user:u1,E,1",
            "1;user:u1,E",
            "1;user:u1,E,x",
            "1;user:u1,,1",
            "1;bad channel,E,1",
            "1;user:u1,E,1,9",
            "1;a,E,1;b,E,1;c,E,1",
        ] {
            assert!(ResumeToken::parse(bad, 2).is_none(), "{bad}");
        }
        assert_eq!(ResumeToken::parse("1", 2), Some(ResumeToken::default()));
    }
}
