//! The engine: where events get their offsets, where history lives, and how events
//! reach every node. [`Broker`] is the seam: [`memory::MemoryBroker`] serves one
//! node; a Redis broker serves several without the hub or transports changing.

pub mod cluster;
pub mod memory;
pub mod presence;
pub mod redis;

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::EngineSettings;
use crate::protocol::{ChannelName, EventMeta};
use cluster::{Cluster, LocalCluster};
use presence::{MemoryPresence, PresenceStore};

/// The engine a server runs on: where events are placed and carried, and where
/// presence lives.
#[derive(Clone)]
pub struct Engine {
    /// Offsets, history and delivery to every node.
    pub broker: Arc<dyn Broker>,
    /// Who is on which channel.
    pub presence: Arc<dyn PresenceStore>,
    /// Which nodes are alive, and actions that reach every node.
    pub cluster: Arc<dyn Cluster>,
}

impl Engine {
    /// The single-node engine of node `node`, with its sweep running as
    /// `settings` say. Must be called within a Tokio runtime.
    pub fn memory(settings: &EngineSettings, node: &str) -> Self {
        let broker = Arc::new(memory::MemoryBroker::new(settings.position_ttl));
        broker.start_sweeper(settings.sweep_interval);
        Self {
            broker,
            presence: Arc::new(MemoryPresence::new()),
            cluster: Arc::new(LocalCluster::new(node.to_owned())),
        }
    }
}

/// Who may receive an event, on top of channel permissions (§6 `audience`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
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

/// Who may receive an event beyond the channel's subscribers: its `audience`
/// and `exclude_client`. Boxed in [`Publication`]: most events have neither.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
pub struct DeliveryFilter {
    /// Restricts who receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    /// A connection id that must not receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_client: Option<String>,
}

impl DeliveryFilter {
    /// The filter of `event`, or `None` when it admits every subscriber.
    pub fn of(event: &NewEvent) -> Option<Box<Self>> {
        (event.audience.is_some() || event.exclude_client.is_some()).then(|| {
            Box::new(Self {
                audience: event.audience.clone(),
                exclude_client: event.exclude_client.clone(),
            })
        })
    }
}

/// An event's envelope without its offset: `prefix` + offset + `suffix` is the
/// `event` push. An engine that assigns offsets elsewhere (a Redis script)
/// splices the offset in without re-encoding anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeParts {
    /// `{"type":"event","channel":"…","offset":`
    pub prefix: String,
    /// `,"id":"…","event":"…","ts":"…","data":…[,"meta":…]}`
    pub suffix: String,
}

/// Room for `{"type":"event","channel":"…","offset":` around the name, and
/// the longest offset.
const ENVELOPE_HEAD_LEN: usize = 40 + 20;

impl EnvelopeParts {
    /// Encodes `event` for `channel`, once.
    pub fn encode(channel: &ChannelName, event: &NewEvent) -> Self {
        let mut prefix = String::with_capacity(channel.as_str().len() + ENVELOPE_HEAD_LEN);
        write_envelope_head(&mut prefix, channel);
        let tail = encode_envelope_tail(event);
        let mut suffix = String::with_capacity(tail.len());
        suffix.push(',');
        suffix.push_str(tail.strip_prefix('{').unwrap_or(&tail));
        Self { prefix, suffix }
    }

    /// The whole envelope of `event` at `offset` of `channel`, built in one
    /// buffer: what [`encode`](Self::encode) then [`at`](Self::at) give, for
    /// an engine that knows the offset when it encodes.
    pub fn encode_at(channel: &ChannelName, event: &NewEvent, offset: u64) -> Utf8Bytes {
        let tail = encode_envelope_tail(event);
        let mut json =
            String::with_capacity(channel.as_str().len() + ENVELOPE_HEAD_LEN + tail.len());
        write_envelope_head(&mut json, channel);
        // Writing to a String cannot fail.
        let _ = write!(json, "{offset},");
        json.push_str(tail.strip_prefix('{').unwrap_or(&tail));
        Utf8Bytes::from(json)
    }

    /// The whole envelope at `offset`.
    pub fn at(&self, offset: u64) -> Utf8Bytes {
        let offset = offset.to_string();
        let mut json = String::with_capacity(self.prefix.len() + offset.len() + self.suffix.len());
        json.push_str(&self.prefix);
        json.push_str(&offset);
        json.push_str(&self.suffix);
        Utf8Bytes::from(json)
    }
}

/// `{"type":"event","channel":"…","offset":`
fn write_envelope_head(out: &mut String, channel: &ChannelName) {
    out.push_str(r#"{"type":"event","channel":""#);
    // Channel names are plain ASCII without quotes or escapes (`ChannelName::parse`).
    out.push_str(channel.as_str());
    out.push_str(r#"","offset":"#);
}

/// The envelope's fields after `offset` as a JSON object (`{"id":…}`).
fn encode_envelope_tail(event: &NewEvent) -> String {
    let tail = EnvelopeTail {
        id: &event.id,
        event: &event.event,
        ts: &event.ts,
        data: &event.data,
        meta: event.meta.as_ref().filter(|m| !m.is_empty()),
    };
    // The tail holds only strings and already-valid JSON.
    serde_json::to_string(&tail).unwrap_or_else(|_| "{}".to_owned())
}

/// The envelope's fields after `offset`, in wire order.
#[derive(serde::Serialize)]
struct EnvelopeTail<'a> {
    id: &'a str,
    event: &'a str,
    ts: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a EventMeta>,
}

/// The Socket.IO event, JSON-encoded, that carries an event whose own name
/// cannot be emitted as is: `["tidings:event", "<name>", data, meta, position]`.
const SOCKETIO_RENAMED_EVENT: &str = r#""tidings:event""#;

/// Whether an event name cannot go to a Socket.IO client as its own event:
/// socket.io-client's parser refuses Socket.IO's reserved names as a broken
/// packet (it drops the connection, and recovery replays the event on every
/// reconnect), python-socketio hands `connect`/`disconnect` to the app's own
/// handlers and `*` to its catch-all handler (which takes the name first),
/// and `tidings:` names are the server's own pushes, which a publisher must
/// not be able to forge.
pub(crate) fn socketio_name_is_reserved(name: &str) -> bool {
    matches!(
        name,
        "connect"
            | "connect_error"
            | "disconnect"
            | "disconnecting"
            | "newListener"
            | "removeListener"
            | "*"
    ) || name.starts_with("tidings:")
}

/// An event placed in a channel: what history keeps and fan-out delivers.
///
/// The wire envelope is encoded once, when the event is placed (or arrives
/// encoded from another node), and shared by every recipient and every replay.
#[derive(Debug)]
pub struct Publication {
    /// The channel.
    pub channel: ChannelName,
    /// Offset in the channel (1, 2, 3… within an epoch).
    pub offset: u64,
    /// The history epoch the offset belongs to.
    pub epoch: Arc<str>,
    /// Event id (`e_…`).
    pub id: Box<str>,
    /// Event name.
    pub name: Box<str>,
    /// Audience and exclusion, when the publisher set either.
    pub filter: Option<Box<DeliveryFilter>>,
    /// When this node received it, for publish-to-write latency.
    pub received_at: Instant,
    encoded: Utf8Bytes,
    sse_frame: OnceLock<bytes::Bytes>,
    socketio_args: OnceLock<Utf8Bytes>,
    deflated: OnceLock<bytes::Bytes>,
}

impl Publication {
    /// Places `event` at `offset` of `channel`, encoding its envelope.
    pub fn new(channel: ChannelName, offset: u64, epoch: Arc<str>, event: NewEvent) -> Self {
        let encoded = EnvelopeParts::encode_at(&channel, &event, offset);
        let filter = DeliveryFilter::of(&event);
        Self::from_encoded(
            channel,
            offset,
            epoch,
            event.id.into(),
            event.event.into(),
            filter,
            encoded,
        )
    }

    /// An event whose envelope is already encoded (it came from another node).
    pub fn from_encoded(
        channel: ChannelName,
        offset: u64,
        epoch: Arc<str>,
        id: Box<str>,
        name: Box<str>,
        filter: Option<Box<DeliveryFilter>>,
        encoded: Utf8Bytes,
    ) -> Self {
        Self {
            channel,
            offset,
            epoch,
            id,
            name,
            filter,
            received_at: Instant::now(),
            encoded,
            sse_frame: OnceLock::new(),
            socketio_args: OnceLock::new(),
            deflated: OnceLock::new(),
        }
    }

    /// The `event` push as JSON text.
    pub fn encoded(&self) -> &Utf8Bytes {
        &self.encoded
    }

    /// The event as an SSE message without its `id:` line (`event: <name>` and
    /// the envelope as `data:` lines), formatted once and shared by every stream.
    pub fn sse_frame(&self) -> &bytes::Bytes {
        self.sse_frame.get_or_init(|| {
            let envelope = self.encoded.as_str();
            let mut frame = String::with_capacity(envelope.len() + self.name.len() + 16);
            frame.push_str("event: ");
            frame.push_str(&self.name);
            frame.push('\n');
            push_sse_data(&mut frame, envelope);
            frame.push('\n');
            bytes::Bytes::from(frame)
        })
    }

    /// The envelope compressed for permessage-deflate, computed by `deflate`
    /// on the first call (the first connection that negotiated compression)
    /// and shared by every later one: one compression per event, however many
    /// subscribers. `deflate` is passed in because compression is the
    /// WebSocket transport's business (`transport::permessage_deflate`).
    pub fn deflated(&self, deflate: impl FnOnce(&[u8]) -> bytes::Bytes) -> &bytes::Bytes {
        self.deflated
            .get_or_init(|| deflate(self.encoded.as_str().as_bytes()))
    }

    /// The event's Socket.IO arguments without the brackets:
    /// `"<name>",<data>,{"channel","offset","id","ts"[,"meta"]}`, formatted
    /// once from the envelope and shared by every Socket.IO socket. A name
    /// Socket.IO or Tidings keeps for itself goes out as
    /// `"tidings:event","<name>",…` (see `socketio_name_is_reserved`).
    pub fn socketio_args(&self) -> &Utf8Bytes {
        self.socketio_args.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Envelope<'a> {
                #[serde(borrow)]
                channel: &'a RawValue,
                offset: u64,
                #[serde(borrow)]
                id: &'a RawValue,
                #[serde(borrow)]
                event: &'a RawValue,
                #[serde(borrow)]
                ts: &'a RawValue,
                #[serde(borrow)]
                data: &'a RawValue,
                #[serde(borrow, default)]
                meta: Option<&'a RawValue>,
            }
            let envelope = self.encoded.as_str();
            let mut out = String::with_capacity(envelope.len() + 32);
            if socketio_name_is_reserved(&self.name) {
                out.push_str(SOCKETIO_RENAMED_EVENT);
                out.push(',');
            }
            let Ok(e) = serde_json::from_str::<Envelope<'_>>(envelope) else {
                // Every envelope is written by `EnvelopeParts`; this is unreachable
                // short of a corrupted history entry, which then carries nothing.
                let name = serde_json::to_string(&*self.name).unwrap_or_else(|_| "\"\"".into());
                out.push_str(&name);
                out.push_str(",null,null");
                return Utf8Bytes::from(out);
            };
            out.push_str(e.event.get());
            out.push(',');
            out.push_str(e.data.get());
            out.push_str(r#",{"channel":"#);
            out.push_str(e.channel.get());
            out.push_str(r#","offset":"#);
            out.push_str(&e.offset.to_string());
            out.push_str(r#","id":"#);
            out.push_str(e.id.get());
            out.push_str(r#","ts":"#);
            out.push_str(e.ts.get());
            if let Some(meta) = e.meta {
                out.push_str(r#","meta":"#);
                out.push_str(meta.get());
            }
            out.push('}');
            Utf8Bytes::from(out)
        })
    }

    /// Whether a connection may receive this event given the audience and exclusion.
    pub fn admits(&self, client: &str, user: &str, roles: &[String]) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        if filter.exclude_client.as_deref() == Some(client) {
            return false;
        }
        match &filter.audience {
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

/// How long a channel that was only ever read (polled, its history fetched;
/// never published to or subscribed) is kept after its last read, at most
/// (`engine.position_ttl` when shorter): reads must not pin memory for an hour.
pub(crate) const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How many placements of one [`Broker::publish_many`] run at once when the
/// engine places them one channel at a time.
pub const PUBLISH_CONCURRENCY: usize = 128;

/// One channel's event in a [`Broker::publish_many`].
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where it goes.
    pub channel: ChannelName,
    /// The event.
    pub event: NewEvent,
    /// The channel's options.
    pub options: PublishOptions,
}

/// Places each of `placements` with [`Broker::publish`], up to
/// [`PUBLISH_CONCURRENCY`] at once, results in order. On the first error the
/// remaining placements are dropped (those already placed stay placed).
pub async fn publish_each<B: Broker + ?Sized>(
    broker: &B,
    placements: Vec<Placement>,
) -> Result<Vec<PublishOutcome>, EngineError> {
    stream::iter(placements)
        .map(|p| async move { broker.publish(&p.channel, p.event, &p.options).await })
        .buffered(PUBLISH_CONCURRENCY)
        .try_collect()
        .await
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
    /// Hands over a presence push (already encoded) for `channel`'s subscribers.
    fn deliver_presence(&self, channel: &ChannelName, text: &Utf8Bytes);
    /// The engine lost `channel`'s continuity (its state was reset, or events
    /// went missing that history cannot fill): this node's subscribers must
    /// subscribe again with `since`, and recover or be told to reload.
    fn resubscribe(&self, channel: &ChannelName);
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
    /// Places one event in each of several channels (a broadcast): each as
    /// [`publish`](Self::publish) would, outcomes in the order given. On the
    /// first error the rest may be left unplaced; a retry with the same
    /// idempotency key places them without duplicating the others. Engines
    /// that can place several channels per round trip override it.
    async fn publish_many(
        &self,
        placements: Vec<Placement>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
        publish_each(self, placements).await
    }
    /// Sends a presence push to `channel`'s subscribers on every node.
    async fn publish_presence(
        &self,
        channel: &ChannelName,
        text: Utf8Bytes,
    ) -> Result<(), EngineError>;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventMeta;

    /// The memory engine builds the envelope in one buffer, the Redis engine
    /// splices the offset between the parts: both must give the same bytes.
    #[test]
    fn envelope_in_one_buffer_matches_the_spliced_parts() {
        let channel = ChannelName::parse("workspace:acme:applications").unwrap();
        let data = RawValue::from_string(r#"{"name":"a \"quoted\" é","n":[1,2]}"#.into()).unwrap();
        let plain = NewEvent {
            id: "e_01J".into(),
            event: "applications.\"updated\"".into(),
            ts: "2026-12-06T04:20:00.000Z".into(),
            data,
            meta: None,
            audience: None,
            exclude_client: None,
        };
        let with_meta = NewEvent {
            meta: Some(EventMeta {
                actor: Some("u7".into()),
                correlation_id: None,
                entity: None,
            }),
            ..plain.clone()
        };
        for event in [plain, with_meta] {
            for offset in [1, 42, u64::MAX] {
                let spliced = EnvelopeParts::encode(&channel, &event).at(offset);
                let direct = EnvelopeParts::encode_at(&channel, &event, offset);
                assert_eq!(direct.as_str(), spliced.as_str());
                let parsed: serde_json::Value = serde_json::from_str(direct.as_str()).unwrap();
                assert_eq!(parsed["offset"], offset);
                assert_eq!(parsed["channel"], "workspace:acme:applications");
                assert_eq!(parsed["event"], "applications.\"updated\"");
            }
        }
    }

    /// Socket.IO arguments for an event that arrived encoded (another node,
    /// history): a reserved name is carried by `tidings:event`, also when the
    /// envelope cannot be read, and the name is JSON-escaped there too.
    #[test]
    fn socketio_args_rename_reserved_names_of_encoded_events() {
        let channel = ChannelName::parse("workspace:acme").unwrap();
        let encoded = |name: &str, envelope: &str| {
            Publication::from_encoded(
                channel.clone(),
                3,
                Arc::from("E"),
                "e_1".into(),
                name.into(),
                None,
                Utf8Bytes::from(envelope.to_owned()),
            )
        };
        let envelope = r#"{"type":"event","channel":"workspace:acme","offset":3,"id":"e_1","event":"disconnect","ts":"t","data":{"a":1}}"#;
        let args = encoded("disconnect", envelope);
        assert!(
            args.socketio_args().as_str().starts_with(
                r#""tidings:event","disconnect",{"a":1},{"channel":"workspace:acme","offset":3"#
            ),
            "{}",
            args.socketio_args().as_str()
        );
        let plain = encoded(
            "order.shipped",
            &envelope.replace("disconnect", "order.shipped"),
        );
        assert!(plain
            .socketio_args()
            .as_str()
            .starts_with(r#""order.shipped",{"a":1}"#));
        let corrupted = encoded("tidings:x\"y", "not json");
        assert_eq!(
            corrupted.socketio_args().as_str(),
            r#""tidings:event","tidings:x\"y",null,null"#
        );
    }
}
