//! Transports: how clients and backends reach the hub. Each speaks the same
//! protocol types and goes through the same access checks.

pub mod api;
pub mod http;
pub mod lingering_close;
pub mod ops;
pub mod permessage_deflate;
pub mod polling;
pub mod request_endpoint;
mod requests;
pub mod socketio;
pub mod sse;
mod subscriptions;
pub mod websocket;
pub mod ws_upgrade;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidings_auth::Identity;

use crate::config::ConnectionSettings;
use tokio::time::Instant;

use crate::engine::{ChannelPosition, Publication};
use crate::hub::{Connection, ConnectionQueue, QueueLimits, RegisterError};
use crate::protocol::{ChannelName, RequestId};
use crate::server::ServerState;

/// Creates a client connection (WebSocket or SSE) for `identity` with the
/// configured send-queue bounds and registers it with the hub, within the
/// per-user and per-node connection limits.
pub(crate) fn open_client_connection(
    state: &ServerState,
    client_id: Arc<str>,
    identity: &Identity,
) -> Result<(Arc<Connection>, ConnectionQueue), RegisterError> {
    let settings = &state.config.connection;
    let (connection, queue) = Connection::new(
        state.hub.next_key(),
        client_id,
        identity.user.clone(),
        identity.roles.clone(),
        QueueLimits {
            messages: settings.send_queue_messages,
            bytes: settings.send_queue_bytes,
        },
    );
    state.hub.register(&connection)?;
    Ok((connection, queue))
}

/// The `history` reply: `{type, id?, channel, epoch, offset, complete?, events:[…]}`,
/// with each event's pre-encoded envelope spliced in rather than re-serialized.
pub(crate) fn history_json(
    id: Option<&RequestId>,
    channel: &ChannelName,
    position: &ChannelPosition,
    events: &[&Arc<Publication>],
    complete: Option<bool>,
) -> String {
    let mut out = String::with_capacity(reply_capacity(events));
    out.push_str(r#"{"type":"history""#);
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&serde_json::to_string(id).unwrap_or_else(|_| "null".into()));
    }
    out.push_str(r#","channel":"#);
    out.push_str(&serde_json::to_string(channel.as_str()).unwrap_or_default());
    out.push_str(r#","epoch":"#);
    out.push_str(&serde_json::to_string(&*position.epoch).unwrap_or_default());
    out.push_str(r#","offset":"#);
    out.push_str(&position.offset.to_string());
    if let Some(complete) = complete {
        out.push_str(if complete {
            r#","complete":true"#
        } else {
            r#","complete":false"#
        });
    }
    push_events(&mut out, events);
    out
}

/// Room for a reply carrying `events`: their envelopes plus the fields around them.
pub(crate) fn reply_capacity(events: &[&Arc<Publication>]) -> usize {
    128 + events.iter().map(|p| p.encoded().len() + 1).sum::<usize>()
}

/// Closes a reply object with `,"events":[…]}`, splicing in each event's
/// pre-encoded envelope rather than re-serializing it.
pub(crate) fn push_events(out: &mut String, events: &[&Arc<Publication>]) {
    out.push_str(r#","events":["#);
    for (i, publication) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(publication.encoded().as_str());
    }
    out.push_str("]}");
}

/// When a token with `exp` (unix seconds) stops being valid, on the monotonic clock.
pub(crate) fn expiry_instant(identity: &Identity) -> Option<Instant> {
    let expires = identity.expires_at?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(expires).saturating_sub(now);
    // A deadline years away is never reached by a connection anyway, and
    // adding 2^64 s to a clock reading panics (a token's `exp` may be that).
    Instant::now().checked_add(left.min(EXPIRY_HORIZON))
}

/// The furthest ahead a token's expiry is scheduled: ten years.
const EXPIRY_HORIZON: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration in whole milliseconds, as the protocol writes them.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connection's (or a user's, over `POST /request`) request budget; `None`
/// when unlimited.
pub(crate) fn request_quota(settings: &ConnectionSettings) -> Option<governor::Quota> {
    let per_second = std::num::NonZeroU32::new(settings.requests_per_second)?;
    let burst = std::num::NonZeroU32::new(settings.request_burst.max(per_second.get()))
        .unwrap_or(per_second);
    Some(governor::Quota::per_second(per_second).allow_burst(burst))
}

/// A connection's request budget (GCRA) and how long it has been over it
/// (WebSocket and Socket.IO connections alike).
pub(crate) struct RequestRate {
    pub limiter: governor::DefaultDirectRateLimiter,
    pub limited_in_a_row: u32,
    pub tolerance: u32,
}

impl RequestRate {
    pub fn new(settings: &ConnectionSettings) -> Option<Self> {
        let quota = request_quota(settings)?;
        Some(Self {
            limiter: governor::RateLimiter::direct(quota),
            limited_in_a_row: 0,
            tolerance: quota.burst_size().get(),
        })
    }
}

impl RequestRate {
    /// Counts one request: `Ok(true)` when it is within budget, `Ok(false)` when
    /// it must be refused, `Err(())` when the connection has been over budget for
    /// longer than its burst and must close with 4004.
    pub fn admit(&mut self) -> Result<bool, ()> {
        if self.limiter.check().is_ok() {
            self.limited_in_a_row = 0;
            return Ok(true);
        }
        self.limited_in_a_row += 1;
        if self.limited_in_a_row > self.tolerance {
            Err(())
        } else {
            Ok(false)
        }
    }
}
