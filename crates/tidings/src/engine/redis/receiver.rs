//! The delivery task: turns this node's pub/sub messages into the hub's events,
//! each channel's in offset order, with no gap left silent.
//!
//! One task owns every followed channel's position, so ordering needs no lock:
//! a message at the next offset is delivered; one at or below the position is
//! a duplicate and dropped; one further ahead means messages were lost (Redis
//! dropped them, or the pub/sub connection was down) and the missing events are
//! read from the channel's history first. When history cannot fill the gap, or
//! the channel's epoch changed (Redis lost its state), the channel's local
//! subscribers are told to resubscribe, which recovers them or tells them to
//! reload. After the pub/sub connection drops, every followed channel is
//! checked the same way once Redis answers again.
//!
//! Stopped by dropping the engine: the task holds it weakly and ends when every
//! sender of its queue is gone.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::{stream, FutureExt, StreamExt};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{ChannelRead, Shared};
use crate::engine::Publication;
use crate::protocol::ChannelName;

/// What the delivery task is told, in one queue so that "follow this channel"
/// is always seen before the channel's first message.
pub(crate) enum Incoming {
    /// A message or event of the pub/sub connection.
    Push(PushInfo),
    /// Start following `channel`: buffer its messages until its baseline.
    Follow(ChannelName),
    /// The channel's position right after this node subscribed.
    Baseline {
        channel: ChannelName,
        epoch: Arc<str>,
        top: u64,
    },
    /// Stop following `channel`.
    Unfollow(ChannelName),
    /// Extend the remembered position of every followed channel.
    Touch,
    /// Other nodes took this one for dead and removed its presence entries:
    /// every subscriber subscribes again, which enters it again.
    ResubscribeAll,
}

/// One message of a channel's pub/sub channel.
enum ChannelMessage {
    Event(Arc<Publication>),
    Presence(Utf8Bytes),
}

struct Followed {
    /// `None` until the baseline arrives.
    position: Option<(Arc<str>, u64)>,
    /// Events that came before the baseline, at most [`MAX_WAITING`]; past
    /// that only the latest is kept (the others are read back from history
    /// as the gap before it, once the baseline arrives).
    waiting: Vec<Arc<Publication>>,
}

/// Events kept for a channel whose baseline has not arrived (it comes one
/// Redis round trip after the subscription). A bound, so that a channel whose
/// baseline never comes cannot hold every event published to it.
const MAX_WAITING: usize = 4096;

/// How long to wait before checking the channels again while Redis is away.
const RESYNC_RETRY: Duration = Duration::from_millis(250);

/// Subscriptions and history reads in flight while resyncing: a node
/// following thousands of channels checks them in a few round trips' time
/// rather than one round trip each.
const RESYNC_IN_FLIGHT: usize = 64;

/// Runs the delivery task until the engine is dropped.
pub(crate) async fn run(shared: Weak<Shared>, mut queue: UnboundedReceiver<Incoming>) {
    let mut followed: HashMap<ChannelName, Followed> = HashMap::new();
    let mut resync_pending = false;
    loop {
        let next = if resync_pending {
            match tokio::time::timeout(RESYNC_RETRY, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    resync_pending = !guarded(&shared, &mut followed, Step::Resync).await;
                    continue;
                }
            }
        } else {
            queue.recv().await
        };
        let Some(incoming) = next else { return };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        resync_pending |= guarded(&shared, &mut followed, Step::Handle(incoming)).await;
        shared
            .followed_channels
            .store(followed.len(), Ordering::Relaxed);
        if resync_pending && queue.is_empty() {
            resync_pending = !guarded(&shared, &mut followed, Step::Resync).await;
        }
    }
}

/// One step of the delivery task.
enum Step {
    /// Handle an item of the queue.
    Handle(Incoming),
    /// Check every followed channel after a pub/sub drop.
    Resync,
}

/// Runs `step`: for `Handle`, true when the pub/sub connection dropped; for
/// `Resync`, true when every channel was checked. A panic (a bug; the hub's
/// sink runs in this task) must not end the task, which would silently stop
/// this node's deliveries: what the step was doing may be half done (a
/// position moved past an event not handed over), so every local subscriber
/// recovers from its own offset, and the step counts as done.
async fn guarded(
    shared: &Shared,
    followed: &mut HashMap<ChannelName, Followed>,
    step: Step,
) -> bool {
    let resync = matches!(step, Step::Resync);
    let ran = AssertUnwindSafe(async {
        match step {
            Step::Handle(incoming) => handle(shared, followed, incoming).await,
            Step::Resync => resync_all(shared, followed).await,
        }
    })
    .catch_unwind()
    .await;
    match ran {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(
                "the Redis delivery task panicked; every local subscriber resubscribes"
            );
            let resubscribe_all = std::panic::catch_unwind(AssertUnwindSafe(|| {
                for channel in followed.keys() {
                    shared.lost_continuity(channel);
                }
            }));
            if resubscribe_all.is_err() {
                tracing::error!("resubscribing after a panic panicked too");
            }
            resync
        }
    }
}

/// Handles one item of the queue; true when the pub/sub connection dropped
/// (every channel must then be checked).
async fn handle(
    shared: &Shared,
    followed: &mut HashMap<ChannelName, Followed>,
    incoming: Incoming,
) -> bool {
    match incoming {
        Incoming::Follow(channel) => {
            followed.insert(
                channel,
                Followed {
                    position: None,
                    waiting: Vec::new(),
                },
            );
        }
        Incoming::Baseline {
            channel,
            epoch,
            top,
        } => {
            let Some(state) = followed.get_mut(&channel) else {
                return false;
            };
            state.position = Some((epoch, top));
            for publication in std::mem::take(&mut state.waiting) {
                on_event(shared, followed, publication).await;
            }
        }
        Incoming::Unfollow(channel) => {
            followed.remove(&channel);
        }
        Incoming::Touch => touch(shared, followed).await,
        Incoming::ResubscribeAll => {
            for channel in followed.keys() {
                shared.lost_continuity(channel);
            }
        }
        Incoming::Push(push) => match push.kind {
            PushKind::Message | PushKind::SMessage => {
                on_message(shared, followed, push.data).await;
            }
            PushKind::Disconnection => {
                // Messages published while the connection was down are lost;
                // check every channel once Redis answers again.
                return true;
            }
            _ => {}
        },
    }
    false
}

async fn on_message(
    shared: &Shared,
    followed: &mut HashMap<ChannelName, Followed>,
    data: Vec<Value>,
) {
    let mut parts = data.into_iter();
    let (Some(name), Some(payload)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Some(name), Some(payload)) = (bulk(name), bulk(payload)) else {
        return;
    };
    let Ok(name) = std::str::from_utf8(&name) else {
        return;
    };
    if name == shared.link.keys.control() {
        super::cluster::on_control(shared, &payload).await;
        return;
    }
    let Some(channel) = shared.link.keys.channel_of_pubsub(name) else {
        return;
    };
    match parse_message(channel.clone(), payload) {
        Some(ChannelMessage::Event(publication)) => {
            if followed.contains_key(&channel) {
                on_event(shared, followed, publication).await;
            }
        }
        Some(ChannelMessage::Presence(text)) => {
            if let Some(sink) = shared.sink.get() {
                sink.deliver_presence(&channel, &text);
            }
        }
        None => tracing::warn!(%channel, "unreadable message on the channel's pub/sub channel"),
    }
}

/// Places one event after the channel's position: delivered, dropped as a
/// duplicate, preceded by the events it skipped, or ending the subscriptions.
async fn on_event(
    shared: &Shared,
    followed: &mut HashMap<ChannelName, Followed>,
    publication: Arc<Publication>,
) {
    let Some(state) = followed.get_mut(&publication.channel) else {
        return;
    };
    let Some((epoch, last)) = state.position.clone() else {
        if state.waiting.len() >= MAX_WAITING {
            // Only the latest is needed: placed after the baseline, it is
            // preceded by the events it skipped, read from history.
            state.waiting = Vec::new();
        }
        state.waiting.push(publication);
        return;
    };
    if epoch != publication.epoch {
        tracing::info!(channel = %publication.channel, "channel epoch changed in Redis: subscribers resubscribe");
        state.position = Some((publication.epoch.clone(), publication.offset));
        shared.lost_continuity(&publication.channel);
        return;
    }
    if publication.offset <= last {
        return;
    }
    if publication.offset > last + 1 {
        let missing = publication.offset - 1 - last;
        let read = shared
            .read(&publication.channel, last, missing as usize, 0)
            .await;
        match read {
            Ok(read) if fills(&read, &epoch, last, publication.offset - 1) => {
                shared.gaps_filled.fetch_add(1, Ordering::Relaxed);
                for missed in &read.events {
                    shared.deliver(missed);
                }
            }
            _ => {
                tracing::info!(channel = %publication.channel, missing, "events lost in transit and not in history: subscribers resubscribe");
                state.position = Some((epoch, publication.offset));
                shared.lost_continuity(&publication.channel);
                return;
            }
        }
    }
    state.position = Some((epoch, publication.offset));
    shared.deliver(&publication);
}

/// Whether `read` holds exactly the events `after+1..=through` of `epoch`.
fn fills(read: &ChannelRead, epoch: &Arc<str>, after: u64, through: u64) -> bool {
    read.epoch == *epoch
        && read.complete
        && read.events.len() as u64 == through - after
        && read
            .events
            .iter()
            .zip(after + 1..)
            .all(|(p, offset)| p.offset == offset)
}

/// Brings every followed channel up to date after pub/sub messages may have
/// been lost; returns false when Redis is still away.
async fn resync_all(shared: &Shared, followed: &mut HashMap<ChannelName, Followed>) -> bool {
    if shared.link.ping_subscriber().await.is_err() {
        return false;
    }
    let started = std::time::Instant::now();
    // On Redis Cluster, the client's own resubscription after one shard's
    // connection dropped can lose the subscriptions held on the other
    // shards (found by an audit: a master restarted, and a node stopped
    // hearing channels of the masters that never went down). Subscribing
    // again is harmless where the subscription survived; the reads below
    // then fill what was missed meanwhile.
    if shared.link.sharded() {
        if shared.link.subscribe_control().await.is_err() {
            return false;
        }
        let channels: Vec<ChannelName> = followed.keys().cloned().collect();
        let subscribed: Vec<_> = stream::iter(channels)
            .map(|channel| async move { shared.link.subscribe(&channel).await })
            .buffer_unordered(RESYNC_IN_FLIGHT)
            .collect()
            .await;
        if subscribed.iter().any(Result::is_err) {
            return false;
        }
    }
    let positions: Vec<(ChannelName, Arc<str>, u64)> = followed
        .iter()
        .filter_map(|(channel, state)| {
            let (epoch, last) = state.position.clone()?;
            Some((channel.clone(), epoch, last))
        })
        .collect();
    // Each channel's events are delivered by this task alone, so channels
    // may be read in any order: only one channel's own events must stay in
    // order, and each read is applied whole.
    let mut reads = stream::iter(positions)
        .map(|(channel, epoch, last)| async move {
            let read = shared.read(&channel, last, 0, 0).await;
            (channel, epoch, last, read)
        })
        .buffer_unordered(RESYNC_IN_FLIGHT);
    while let Some((channel, epoch, last, read)) = reads.next().await {
        let Ok(read) = read else {
            // The rest is checked on the next try.
            return false;
        };
        let Some(state) = followed.get_mut(&channel) else {
            continue;
        };
        if read.epoch != epoch {
            tracing::info!(%channel, "channel state lost in Redis: subscribers resubscribe");
            state.position = Some((read.epoch.clone(), read.top));
            shared.lost_continuity(&channel);
        } else if read.top > last {
            if fills(&read, &epoch, last, read.top) {
                shared.gaps_filled.fetch_add(1, Ordering::Relaxed);
                for missed in &read.events {
                    shared.deliver(missed);
                }
                state.position = Some((epoch, read.top));
            } else {
                state.position = Some((epoch, read.top));
                shared.lost_continuity(&channel);
            }
        }
    }
    tracing::info!(
        channels = followed.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "channels checked after the Redis connection came back"
    );
    true
}

/// Keeps the position of every followed channel remembered in Redis.
async fn touch(shared: &Shared, followed: &HashMap<ChannelName, Followed>) {
    let ttl = super::millis(super::cluster::followed_ttl(&shared.link.settings)).max(1);
    let expire = |channel: &ChannelName| {
        redis::cmd("PEXPIRE")
            .arg(shared.link.keys.meta(channel))
            .arg(ttl)
            .arg("GT")
            .to_owned()
    };
    for chunk in followed.keys().collect::<Vec<_>>().chunks(500) {
        let done = if shared.link.sharded() {
            // A cluster routes each key to its shard, one command at a time.
            let commands: Vec<redis::Cmd> = chunk.iter().map(|c| expire(c)).collect();
            let results = futures_util::future::join_all(
                commands.iter().map(|cmd| shared.link.query::<()>(cmd)),
            )
            .await;
            results.iter().all(Result::is_ok)
        } else {
            let mut pipe = redis::pipe();
            for channel in chunk {
                pipe.add_command(expire(channel)).ignore();
            }
            let Ok(mut conn) = shared.link.commands().await else {
                return;
            };
            let result: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            shared.link.observe(result).is_ok()
        };
        if !done {
            return;
        }
    }
}

fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Parses `E<epoch>\n<offset>\n<header>\n<envelope>` or `P<presence push>`.
fn parse_message(channel: ChannelName, payload: Vec<u8>) -> Option<ChannelMessage> {
    let text = String::from_utf8(payload).ok()?;
    if let Some(presence) = text.strip_prefix('P') {
        return Some(ChannelMessage::Presence(Utf8Bytes::from(
            presence.to_owned(),
        )));
    }
    let rest = text.strip_prefix('E')?;
    let mut fields = rest.splitn(4, '\n');
    let epoch = fields.next()?;
    let offset = fields.next()?.parse().ok()?;
    let header = fields.next()?;
    let envelope = fields.next()?;
    super::publication(
        channel,
        offset,
        Arc::from(epoch),
        header,
        envelope.to_owned(),
    )
    .map(|p| ChannelMessage::Event(Arc::new(p)))
}
