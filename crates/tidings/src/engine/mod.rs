//! The engine: where events get their offsets, where history lives, and how events
//! reach every node. [`Broker`] is the seam: [`memory::MemoryBroker`] serves one
//! node; a Redis broker serves several without the hub or transports changing.

pub mod memory;
pub mod presence;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::EngineSettings;
use crate::protocol::messages::EventEnvelope;
use crate::protocol::{ChannelName, EventMeta};
use presence::{MemoryPresence, PresenceStore};

/// The engine a server runs on: where events are placed and carried, and where
/// presence lives.
#[derive(Clone)]
pub struct Engine {
    /// Offsets, history and delivery to every node.
    pub broker: Arc<dyn Broker>,
    /// Who is on which channel.
    pub presence: Arc<dyn PresenceStore>,
}

impl Engine {
    /// The single-node engine, with its sweep running as `settings` say.
    /// Must be called within a Tokio runtime.
    pub fn memory(settings: &EngineSettings) -> Self {
        let broker = Arc::new(memory::MemoryBroker::new(settings.position_ttl));
        broker.start_sweeper(settings.sweep_interval);
        Self {
            broker,
            presence: Arc::new(MemoryPresence::new()),
        }
    }
}

/// Who may receive an event, on top of channel permissions (§6 `audience`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Users (`sub`) allowed to receive it.
    #[serde(default)]
    pub users: Vec<String>,
    /// Roles allowed to receive it.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Audience {
    /// Whether a connection of `user` with `roles` is in the audience.
    pub fn admits(&self, user: &str, roles: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || self.roles.iter().any(|r| roles.contains(r))
    }
}

/// An event before the engine has placed it in its channel.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event id (`e_…`).
    pub id: String,
    /// Event name.
    pub event: String,
    /// Publish timestamp, already formatted.
    pub ts: String,
    /// Payload, verbatim JSON.
    pub data: Box<RawValue>,
    /// Publisher metadata.
    pub meta: Option<EventMeta>,
    /// Restricts who receives it.
    pub audience: Option<Audience>,
    /// A connection id that must not receive it.
    pub exclude_client: Option<String>,
}

/// An event placed in a channel: what history keeps and fan-out delivers.
///
/// The wire envelope is encoded once, on first use, and shared by every recipient
/// and every replay.
#[derive(Debug)]
pub struct Publication {
    /// The channel.
    pub channel: ChannelName,
    /// Offset in the channel (1, 2, 3… within an epoch).
    pub offset: u64,
    /// The history epoch the offset belongs to.
    pub epoch: Arc<str>,
    /// The event as published.
    pub event: NewEvent,
    /// When this node received it, for publish-to-write latency.
    pub received_at: Instant,
    encoded: OnceLock<Utf8Bytes>,
    sse_frame: OnceLock<bytes::Bytes>,
}

impl Publication {
    /// Wraps an event placed at `offset` of `channel`.
    pub fn new(channel: ChannelName, offset: u64, epoch: Arc<str>, event: NewEvent) -> Self {
        Self {
            channel,
            offset,
            epoch,
            event,
            received_at: Instant::now(),
            encoded: OnceLock::new(),
            sse_frame: OnceLock::new(),
        }
    }

    /// The `event` push as JSON text, encoded once.
    pub fn encoded(&self) -> &Utf8Bytes {
        self.encoded.get_or_init(|| {
            let envelope = EventEnvelope {
                kind: "event",
                channel: self.channel.as_str(),
                offset: self.offset,
                id: &self.event.id,
                event: &self.event.event,
                ts: &self.event.ts,
                data: &self.event.data,
                meta: self.event.meta.as_ref().filter(|m| !m.is_empty()),
            };
            // The envelope holds only strings, numbers and already-valid JSON.
            let mut json = serde_json::to_string(&envelope).unwrap_or_default();
            // serde_json's buffer growth leaves up to twice the length allocated,
            // and the bytes live as long as the event stays in history.
            json.shrink_to_fit();
            Utf8Bytes::from(json)
        })
    }

    /// The event as an SSE message without its `id:` line (`event: <name>` and
    /// the envelope as `data:` lines), formatted once and shared by every stream.
    pub fn sse_frame(&self) -> &bytes::Bytes {
        self.sse_frame.get_or_init(|| {
            let envelope = self.encoded().as_str();
            let mut frame = String::with_capacity(envelope.len() + self.event.event.len() + 16);
            frame.push_str("event: ");
            frame.push_str(&self.event.event);
            frame.push('\n');
            push_sse_data(&mut frame, envelope);
            frame.push('\n');
            bytes::Bytes::from(frame)
        })
    }

    /// Whether a connection may receive this event given the audience and exclusion.
    pub fn admits(&self, client: &str, user: &str, roles: &[String]) -> bool {
        if self.event.exclude_client.as_deref() == Some(client) {
            return false;
        }
        match &self.event.audience {
            Some(audience) => audience.admits(user, roles),
            None => true,
        }
    }
}

/// Appends `text` as SSE `data:` lines. Verbatim JSON payloads may contain line
/// breaks (as whitespace only); each becomes a new `data:` line, which the
/// client joins back with `\n`, an equally valid JSON whitespace.
pub fn push_sse_data(frame: &mut String, text: &str) {
    for line in text.split('\n') {
        for part in line.split('\r') {
            frame.push_str("data: ");
            frame.push_str(part);
            frame.push('\n');
        }
    }
}

/// How a channel keeps history; comes from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Events kept (0 = none).
    pub size: usize,
    /// How long they are kept.
    pub ttl: Duration,
}

/// Per-publish options.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The channel's history policy.
    pub history: HistoryPolicy,
    /// Deduplication key: a repeat within `idempotency_window` publishes nothing
    /// and returns the first result.
    pub idempotency_key: Option<String>,
    /// How long keys are remembered.
    pub idempotency_window: Duration,
}

/// Where a publish landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Offset in the channel.
    pub offset: u64,
    /// History epoch.
    pub epoch: Arc<str>,
    /// Event id.
    pub id: String,
    /// True when the idempotency key had been seen and nothing was published.
    pub duplicate: bool,
}

/// A channel's current top: the last offset and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPosition {
    /// Last offset published (0 = none yet).
    pub offset: u64,
    /// Epoch.
    pub epoch: Arc<str>,
}

/// A history read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Return events with offset greater than this.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: Option<usize>,
    /// The newest events first (and `limit` keeps the newest), instead of the
    /// oldest first.
    pub newest_first: bool,
}

/// The events a history read found.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Current top of the channel.
    pub position: ChannelPosition,
    /// Events in offset order.
    pub events: Vec<Arc<Publication>>,
    /// Whether history still holds every event after `query.after` (false when some
    /// were trimmed or expired).
    pub complete: bool,
}

/// An engine failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store is unreachable or failed.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Receives events bound for this node's subscribers. The hub implements it.
pub trait EventSink: Send + Sync + 'static {
    /// Hands over one event. Called in offset order per channel; must not block.
    fn deliver(&self, publication: &Arc<Publication>);
    /// Whether this node has subscribers on `channel` (keeps its history alive).
    fn has_subscribers(&self, channel: &ChannelName) -> bool;
}

/// Places events in channels, keeps history, and carries events to every node.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Registers where this node's events go. Called once, by the hub.
    fn attach(&self, sink: Arc<dyn EventSink>);
    /// Assigns the next offset, appends to history and delivers to every node, so
    /// that each node's sink sees a channel's events in offset order.
    async fn publish(
        &self,
        channel: &ChannelName,
        event: NewEvent,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError>;
    /// This node now has subscribers on `channel`.
    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError>;
    /// This node no longer has subscribers on `channel`.
    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError>;
    /// The channel's current top.
    async fn position(&self, channel: &ChannelName) -> Result<ChannelPosition, EngineError>;
    /// Reads history.
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, EngineError>;
    /// Number of channels the engine holds state for.
    fn channel_count(&self) -> usize;
}
