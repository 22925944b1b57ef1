//! The Redis engine: several nodes share offsets, history, presence and
//! delivery through one Redis (or a Redis Cluster), with the hub and the
//! transports unchanged.
//!
//! - Each publish is one function call in Redis (`tidings.lua`): it assigns
//!   the next offset, appends to the channel's history stream, records the
//!   idempotency key and publishes the encoded envelope to the other nodes.
//! - A node subscribes to a channel's pub/sub channel while it has local
//!   subscribers; `receiver` hands the hub each channel's events in offset
//!   order and fills or reports every gap.
//! - Presence entries carry the node that holds them; a node's heartbeat lists
//!   it as alive, and the entries of a node that stopped heart-beating are
//!   removed by the survivors (`cluster`).

mod broker;
pub(crate) mod cluster;
mod link;
mod presence;
mod receiver;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, SemaphorePermit};

pub use broker::RedisBroker;
pub use cluster::RedisCluster;
pub use presence::RedisPresence;

use super::cluster::ControlHandler;
use super::{DeliveryFilter, Engine, EngineError, EventSink, Publication, UNCLAIMED_TTL};
use crate::config::{ConfigError, EngineSettings};
use crate::protocol::ChannelName;
use link::RedisLink;
use receiver::Incoming;

impl Engine {
    /// The Redis engine for node `node`. Connects lazily: a Redis that is down
    /// now makes the node degraded until it is back. Must be called within a
    /// Tokio runtime (it starts the delivery task and the heartbeat).
    pub fn redis(settings: &EngineSettings, node: &str) -> Result<Self, ConfigError> {
        let shared = Shared::start(settings, node)?;
        Ok(Self {
            broker: Arc::new(RedisBroker::new(shared.clone())),
            presence: Arc::new(RedisPresence::new(shared.clone())),
            cluster: Arc::new(RedisCluster::new(shared)),
        })
    }
}

/// Presence calls one node sends to Redis at once. When all of a node's
/// connections close together (a load balancer restart, a deploy), each
/// sends its leaves at the same instant: unbounded, 100,000 closing
/// connections queued so many commands on the node's one Redis connection
/// that tens of thousands overran `engine.redis_timeout` and failed. Bounded,
/// the rest wait here (the timeout counts from the send), and the leaves
/// drain at the rate Redis answers.
pub const PRESENCE_CALLS_IN_FLIGHT: usize = 64;

/// How often a node on Redis Cluster checks every shard during an outage.
const SHARD_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often it checks them otherwise (in [`SHARD_CHECK_INTERVAL`]s): an idle
/// node whose requests reach no shard that is down still finds it.
const SHARD_CHECKS_WHEN_UP: u32 = 4;

/// On Redis Cluster, checks every shard: every 500 ms while Redis is taken
/// as unreachable, ending the outage once all answer (a call that reaches
/// one shard does not; see `Availability`), and every 2 s otherwise, so
/// `/health` finds a master that is down even when no request reaches it.
/// Runs until the engine is dropped.
async fn watch_shards(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(SHARD_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.left.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if !shared.link.availability.is_up() || ticks.is_multiple_of(SHARD_CHECKS_WHEN_UP) {
            let _ = shared.link.check_every_shard().await;
        }
    }
}

/// Runs a background task of the engine until it returns, starting it again
/// a second after a panic (a bug): a heartbeat that stopped would have the
/// other nodes reap this one, its users gone from presence, while it serves.
async fn restart_after_panic<T, F>(name: &'static str, mut task: T)
where
    T: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    while AssertUnwindSafe(task()).catch_unwind().await.is_err() {
        tracing::error!(
            task = name,
            "a Redis engine task panicked; starting it again"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the broker, presence, cluster and delivery task of one node share.
pub(crate) struct Shared {
    link: RedisLink,
    sink: OnceLock<Arc<dyn EventSink>>,
    control: OnceLock<Arc<dyn ControlHandler>>,
    incoming: tokio::sync::mpsc::UnboundedSender<Incoming>,
    /// Nodes whose heartbeat had stopped at this node's last heartbeat: their
    /// presence entries are not listed while the reaper removes them.
    dead_nodes: std::sync::RwLock<Vec<String>>,
    followed_channels: AtomicUsize,
    gaps_filled: AtomicU64,
    resubscribes: AtomicU64,
    started: std::time::Instant,
    /// Slots for presence calls (joins, leaves, listings, pushes); see
    /// [`PRESENCE_CALLS_IN_FLIGHT`].
    presence_calls: Semaphore,
    /// The node is stopping and has left the node list: no more heartbeats.
    left: AtomicBool,
}

impl Shared {
    /// Waits for one of the [`PRESENCE_CALLS_IN_FLIGHT`] slots.
    async fn presence_slot(&self) -> Result<SemaphorePermit<'_>, EngineError> {
        // The semaphore is never closed; the error is mapped rather than
        // unwrapped all the same.
        self.presence_calls
            .acquire()
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    fn start(settings: &EngineSettings, node: &str) -> Result<Arc<Self>, ConfigError> {
        let (incoming, queue) = tokio::sync::mpsc::unbounded_channel();
        let pushes = incoming.clone();
        let link = RedisLink::new(
            settings,
            node,
            Arc::new(move |push| {
                let _ = pushes.send(Incoming::Push(push));
            }),
        )?;
        let shared = Arc::new(Self {
            link,
            sink: OnceLock::new(),
            control: OnceLock::new(),
            incoming,
            dead_nodes: std::sync::RwLock::new(Vec::new()),
            followed_channels: AtomicUsize::new(0),
            gaps_filled: AtomicU64::new(0),
            resubscribes: AtomicU64::new(0),
            started: std::time::Instant::now(),
            presence_calls: Semaphore::new(PRESENCE_CALLS_IN_FLIGHT),
            left: AtomicBool::new(false),
        });
        // The delivery task catches its own panics (it owns the queue and
        // every channel's position, which a restart would lose).
        tokio::spawn(receiver::run(Arc::downgrade(&shared), queue));
        let weak = Arc::downgrade(&shared);
        tokio::spawn(restart_after_panic("heartbeat", move || {
            cluster::heartbeat(weak.clone())
        }));
        if shared.link.sharded() {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(restart_after_panic("shard check", move || {
                watch_shards(weak.clone())
            }));
        }
        Ok(shared)
    }

    /// Nodes found dead at the last heartbeat.
    fn dead_nodes(&self) -> Vec<String> {
        self.dead_nodes
            .read()
            .map(|nodes| nodes.clone())
            .unwrap_or_default()
    }

    fn tell(&self, incoming: Incoming) {
        // The delivery task outlives every handle that can call this.
        let _ = self.incoming.send(incoming);
    }

    fn deliver(&self, publication: &Arc<Publication>) {
        if let Some(sink) = self.sink.get() {
            sink.deliver(publication);
        }
    }

    fn lost_continuity(&self, channel: &ChannelName) {
        self.resubscribes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(sink) = self.sink.get() {
            sink.resubscribe(channel);
        }
    }

    /// How long a read keeps a channel's position from now, in ms: a channel
    /// that is only read (polled, its history fetched) stays known while it
    /// is read, but is not kept for the whole `position_ttl`.
    fn unclaimed_ttl_ms(&self) -> u64 {
        millis(self.link.settings.position_ttl.min(UNCLAIMED_TTL))
    }

    /// Sends a presence push to `channel`'s subscribers on every node.
    async fn publish_presence(
        &self,
        channel: &ChannelName,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        let link = &self.link;
        // A mass disconnect sends a push per leaving user: capped with the
        // leaves themselves.
        let _slot = self.presence_slot().await?;
        let mut message = Vec::with_capacity(text.len() + 1);
        message.push(b'P');
        message.extend_from_slice(text.as_bytes());
        let command = if link.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        link.query::<()>(
            redis::cmd(command)
                .arg(link.keys.pubsub(channel))
                .arg(message),
        )
        .await
    }

    /// Reads `channel`'s position and up to `limit` events after `after` (0 =
    /// all), oldest first, keeping its position for at least `keep` from now.
    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
        keep: u64,
    ) -> Result<ChannelRead, EngineError> {
        self.read_ordered(channel, after, limit, keep, false).await
    }

    async fn read_ordered(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
        keep: u64,
        newest_first: bool,
    ) -> Result<ChannelRead, EngineError> {
        let keys = &self.link.keys;
        let meta = keys.meta(channel);
        let stream = keys.stream(channel);
        let epoch = new_epoch();
        let keep = keep.to_string();
        let after_arg = after.min(i64::MAX as u64).to_string();
        let limit_arg = limit.to_string();
        let now = now_ms().to_string();
        let unclaimed_ttl = self.unclaimed_ttl_ms().to_string();
        let reply: Vec<Value> = self
            .link
            .call(
                "read",
                &[&meta, &stream],
                &[
                    epoch.as_bytes(),
                    keep.as_bytes(),
                    unclaimed_ttl.as_bytes(),
                    after_arg.as_bytes(),
                    limit_arg.as_bytes(),
                    if newest_first { b"1" } else { b"0" },
                    now.as_bytes(),
                ],
            )
            .await?;
        parse_read(channel, reply, now_ms())
            .ok_or_else(|| EngineError::Unavailable("unexpected reply from Redis".to_owned()))
    }
}

/// A channel's position and the events a read found.
pub(crate) struct ChannelRead {
    pub epoch: Arc<str>,
    pub top: u64,
    /// Whether history holds every event after the read's `after`.
    pub complete: bool,
    pub events: Vec<Arc<Publication>>,
}

/// What travels beside the encoded envelope: enough to filter and name the
/// event without decoding the envelope.
#[derive(Serialize, Deserialize)]
struct Header {
    id: Box<str>,
    event: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Box<DeliveryFilter>>,
}

/// An event from Redis: its header and its envelope, already encoded.
fn publication(
    channel: ChannelName,
    offset: u64,
    epoch: Arc<str>,
    header: &str,
    envelope: String,
) -> Option<Publication> {
    let header: Header = serde_json::from_str(header).ok()?;
    Some(Publication::from_encoded(
        channel,
        offset,
        epoch,
        header.id,
        header.event,
        header.filter,
        Utf8Bytes::from(envelope),
    ))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Parses the `read` function's reply, dropping events whose TTL has passed.
fn parse_read(channel: &ChannelName, reply: Vec<Value>, now: u64) -> Option<ChannelRead> {
    let mut fields = reply.into_iter();
    let epoch: Arc<str> = Arc::from(text(&fields.next()?)?);
    let top = number(&fields.next()?)?;
    let complete = number(&fields.next()?)? == 1;
    let Value::Array(entries) = fields.next()? else {
        return None;
    };
    let ttl = fields.next().as_ref().and_then(number).unwrap_or(0);
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return None;
        };
        let mut entry = entry.into_iter();
        let id = text(&entry.next()?)?;
        let offset: u64 = id.strip_suffix("-0")?.parse().ok()?;
        let (mut header, mut envelope, mut at) = (None, None, 0u64);
        match entry.next()? {
            Value::Array(values) => {
                let mut values = values.into_iter();
                while let (Some(k), Some(v)) = (values.next(), values.next()) {
                    match text(&k)?.as_str() {
                        "h" => header = text(&v),
                        "e" => envelope = text(&v),
                        "t" => at = number(&v).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    match text(&k)?.as_str() {
                        "h" => header = text(&v),
                        "e" => envelope = text(&v),
                        "t" => at = number(&v).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => return None,
        }
        if ttl > 0 && at + ttl <= now {
            continue;
        }
        events.push(Arc::new(publication(
            channel.clone(),
            offset,
            epoch.clone(),
            &header?,
            envelope?,
        )?));
    }
    Some(ChannelRead {
        epoch,
        top,
        complete,
        events,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

fn new_epoch() -> String {
    let id = ulid::Ulid::generate().to_string();
    id[id.len() - 10..].to_owned()
}
