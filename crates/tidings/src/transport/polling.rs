//! HTTP polling at `GET /events` (contract §7): one channel per request, resumed
//! from `since`/`epoch` with the §5 guarantee, optionally held open (`wait`)
//! until an event arrives.
//!
//! Polling is stateless: a waiting request joins the channel's subscribers with a
//! throwaway hub connection only for the length of the wait.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidings_auth::Identity;
use tokio::time::Instant;

use super::http::{authenticate_client, given_twice, repeated_parameter, ApiError};
use super::subscriptions::{parse_channel, recovery};
use super::{duration_ms, expiry_instant, push_events, reply_capacity};
use crate::access::Action;
use crate::engine::{HistoryPage, HistoryQuery, Publication};
use crate::hub::{Connection, QueueLimits};
use crate::protocol::time::format_unix_seconds;
use crate::protocol::{ChannelName, ErrorCode, StreamPosition, PROTOCOL_VERSION};
use crate::server::ServerState;

/// Events in one reply unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most events in one reply.
const MAX_LIMIT: usize = 1000;

/// Query parameters of `GET /events`.
#[derive(Debug, Default, Deserialize)]
pub struct PollQuery {
    channel: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
    /// Seconds to hold the request open while nothing is new.
    wait: Option<f64>,
    token: Option<String>,
}

/// The parameters of `GET /events`.
const PARAMETERS: [&str; 6] = ["channel", "since", "epoch", "limit", "wait", "token"];

/// `GET /events`.
pub async fn poll(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Response {
    match answer(&state, &headers, raw.as_deref(), query).await {
        Ok(body) => {
            state.metrics.poll_answered();
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn answer(
    state: &ServerState,
    headers: &HeaderMap,
    raw: Option<&str>,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<String, ApiError> {
    if let Some(name) = repeated_parameter(raw.unwrap_or_default(), &PARAMETERS) {
        return Err(given_twice(name));
    }
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let identity = authenticate_client(state, headers, query.token.as_deref())?;
    if !state.user_request_limits.admit(&identity.user) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many requests; slow down",
        ));
    }
    let Some(channel) = &query.channel else {
        return Ok(connected_json(state, &identity));
    };
    let channel =
        parse_channel(channel).map_err(|refusal| ApiError::new(refusal.code, refusal.message))?;
    state
        .access
        .check(&identity, &channel, Action::Subscribe)
        .map_err(|err| {
            let refusal = super::subscriptions::Refusal::from(err);
            ApiError::new(refusal.code, refusal.message)
        })?;
    let since = match (query.since, query.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "`since` and `epoch` go together",
            ))
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("`limit` must be 1 to {MAX_LIMIT}"),
        ));
    }
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::from_secs_f64(seconds.min(86_400.0))
                .min(state.config.transports.max_poll_wait)
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "`wait` must be a number of seconds",
            ))
        }
    };
    // A wait ends when the token does, as a WebSocket or SSE stream would:
    // nothing published after `exp` goes to its bearer.
    let wait = match expiry_instant(&identity) {
        Some(expiry) => wait.min(expiry.saturating_duration_since(Instant::now())),
        None => wait,
    };
    let poll = Poll {
        state,
        identity: &identity,
        channel: &channel,
        limit,
    };
    // Without `since`, start at the channel's current top.
    let (start, resuming) = match since {
        Some(since) => (since, true),
        None => {
            let page = poll.read(u64::MAX).await?;
            let top = StreamPosition {
                offset: page.position.offset,
                epoch: page.position.epoch.to_string(),
            };
            (top, false)
        }
    };
    let page = poll.read(start.offset).await?;
    if let Err(failure) = recovery(&start, &page) {
        if resuming {
            state.metrics.recovery(Err(failure));
        }
        return Ok(poll.reply(&page, false, resuming));
    }
    if resuming {
        state.metrics.recovery(Ok(()));
    }
    if !page.events.is_empty() || wait.is_zero() {
        return Ok(poll.reply(&page, true, resuming));
    }
    let page = poll.wait_for_event(&start, wait).await?;
    let recovered = recovery(&start, &page).is_ok();
    Ok(poll.reply(&page, recovered, resuming))
}

/// The probe answer: the token is good and polling is served.
fn connected_json(state: &ServerState, identity: &Identity) -> String {
    let mut answer = serde_json::json!({
        "type": "connected",
        "user": &*identity.user,
        "heartbeat": duration_ms(state.config.transports.max_poll_wait),
        "node": state.node,
        "version": PROTOCOL_VERSION,
    });
    // Absent, not null, for a token without `exp`: as in the other transports'
    // `connected`.
    if let Some(expires_at) = identity.expires_at {
        answer["expires_at"] = serde_json::Value::from(format_unix_seconds(expires_at));
    }
    answer.to_string()
}

struct Poll<'a> {
    state: &'a ServerState,
    identity: &'a Identity,
    channel: &'a ChannelName,
    limit: usize,
}

/// Takes a waiting poll's throwaway connection off the channel, however the
/// request ends (answered, or dropped because the client went away).
struct WaitGuard<'a> {
    state: &'a ServerState,
    channel: ChannelName,
    connection: Arc<Connection>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.state.metrics.poll_waiting(false);
        let hub = self.state.hub.clone();
        let channel = self.channel.clone();
        let connection = self.connection.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                hub.remove_subscription(&channel, &connection).await;
            });
        }
    }
}

/// Gives a long-poll slot back to the user's budget when the wait ends.
struct WaitSlot<'a> {
    state: &'a ServerState,
    user: &'a Arc<str>,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.state.user_request_limits.end_wait(self.user);
    }
}

impl Poll<'_> {
    /// Reads up to `limit` + 1 events after `after` (one more tells whether
    /// there are more).
    async fn read(&self, after: u64) -> Result<HistoryPage, ApiError> {
        let query = HistoryQuery {
            after: Some(after),
            limit: Some(self.limit + 1),
            newest_first: false,
        };
        self.state
            .hub
            .broker()
            .history(self.channel, &query)
            .await
            .map_err(|err| {
                tracing::warn!(channel = %self.channel, error = %err, "poll failed in the engine");
                ApiError::new(
                    ErrorCode::EngineUnavailable,
                    "the engine is unavailable; retry",
                )
            })
    }

    /// Joins the channel, reads again (an event may have arrived before joining),
    /// and otherwise waits for the first event or the end of `wait`.
    async fn wait_for_event(
        &self,
        start: &StreamPosition,
        wait: Duration,
    ) -> Result<HistoryPage, ApiError> {
        let state = self.state;
        let user = &self.identity.user;
        if !state.user_request_limits.begin_wait(user) {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many long polls waiting for this user (max_connections_per_user)",
            ));
        }
        let _slot = WaitSlot { state, user };
        let (connection, mut queue) = Connection::new(
            state.hub.next_key(),
            Arc::from(""),
            self.identity.user.clone(),
            self.identity.roles.clone(),
            QueueLimits {
                messages: 16,
                bytes: state.config.api.max_body_size + 64 * 1024,
            },
        );
        state
            .hub
            .add_subscription(self.channel, &connection, false)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::EngineUnavailable,
                    "the engine is unavailable; retry",
                )
            })?;
        state.metrics.poll_waiting(true);
        let _guard = WaitGuard {
            state,
            channel: self.channel.clone(),
            connection,
        };
        let page = self.read(start.offset).await?;
        if !page.events.is_empty() || recovery(start, &page).is_err() {
            return Ok(page);
        }
        // Any queued item means the channel moved; history has the details.
        // A node shutting down answers at once (with what it has, often no
        // events), so the client polls again, elsewhere or after the restart,
        // instead of having its request cut when the node exits.
        tokio::select! {
            _ = tokio::time::timeout(wait, queue.recv()) => {}
            _ = state.hub.closing() => {}
        }
        self.read(start.offset).await
    }

    /// `{channel, epoch, offset, recovered?, more, events}`.
    fn reply(&self, page: &HistoryPage, recovered: bool, resuming: bool) -> String {
        let (events, offset, more) = if recovered {
            let more = page.events.len() > self.limit;
            let taken = &page.events[..page.events.len().min(self.limit)];
            // With more to come, continue after the last event read; otherwise
            // from the top (events filtered out by audience move it on too).
            let offset = match taken.last() {
                Some(last) if more => last.offset,
                _ => page.position.offset,
            };
            (taken, offset, more)
        } else {
            (&[][..], page.position.offset, false)
        };
        let identity = self.identity;
        let admitted: Vec<&Arc<Publication>> = events
            .iter()
            .filter(|p| p.admits("", &identity.user, &identity.roles))
            .collect();
        let mut out = String::with_capacity(reply_capacity(&admitted));
        out.push_str(r#"{"channel":"#);
        out.push_str(&serde_json::to_string(self.channel.as_str()).unwrap_or_default());
        out.push_str(r#","epoch":"#);
        out.push_str(&serde_json::to_string(&*page.position.epoch).unwrap_or_default());
        out.push_str(r#","offset":"#);
        out.push_str(&offset.to_string());
        if resuming {
            out.push_str(if recovered {
                r#","recovered":true"#
            } else {
                r#","recovered":false"#
            });
        }
        out.push_str(if more {
            r#","more":true"#
        } else {
            r#","more":false"#
        });
        push_events(&mut out, &admitted);
        out
    }
}
