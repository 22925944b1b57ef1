//! [`RedisBroker`]: offsets, history and delivery between nodes through Redis.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::Value;

use super::receiver::Incoming;
use super::{millis, new_epoch, now_ms, number, text, Header, Shared};
use crate::config::MAX_DURATION;
use crate::engine::{
    publish_each, Broker, ChannelPosition, DeliveryFilter, EngineError, EnvelopeParts, EventSink,
    HistoryPage, HistoryQuery, NewEvent, Placement, PublishOptions, PublishOutcome,
};
use crate::protocol::ChannelName;

/// Offsets, history and delivery in Redis, shared by every node.
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl RedisBroker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Channels placed by one `publish_many` call to Redis. Large enough that the
/// per-call cost (a round trip, a function call, a reply) is small per
/// channel, small enough that one call does not hold Redis for long (about
/// 30 µs per channel).
const PUBLISH_BATCH: usize = 32;

/// Batches of one broadcast sent before the first answers: overlaps the round
/// trips without queueing a whole broadcast on the connection at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// The keys and arguments of one channel's placement, as the library's
/// publish functions take them.
struct PublishCall {
    keys: [String; 3],
    args: [Vec<u8>; 12],
}

impl RedisBroker {
    fn call_of(
        &self,
        channel: &ChannelName,
        event: &NewEvent,
        options: &PublishOptions,
    ) -> Result<PublishCall, EngineError> {
        let link = &self.shared.link;
        let keys = &link.keys;
        let parts = EnvelopeParts::encode(channel, event);
        let header = serde_json::to_string(&Header {
            id: event.id.as_str().into(),
            event: event.event.as_str().into(),
            filter: DeliveryFilter::of(event),
        })
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let window = if options.idempotency_key.is_some() {
            millis(options.idempotency_window.min(MAX_DURATION)).max(1)
        } else {
            0
        };
        let (size, ttl) = if options.history.size > 0 && !options.history.ttl.is_zero() {
            (options.history.size, millis(options.history.ttl).max(1))
        } else {
            (0, 0)
        };
        Ok(PublishCall {
            keys: [
                keys.meta(channel),
                keys.stream(channel),
                keys.idempotency(channel, options.idempotency_key.as_deref().unwrap_or("")),
            ],
            args: [
                new_epoch().into_bytes(),
                size.to_string().into_bytes(),
                ttl.to_string().into_bytes(),
                millis(link.settings.position_ttl).to_string().into_bytes(),
                window.to_string().into_bytes(),
                now_ms().to_string().into_bytes(),
                keys.pubsub(channel).into_bytes(),
                header.into_bytes(),
                parts.prefix.as_bytes().to_vec(),
                parts.suffix.as_bytes().to_vec(),
                if link.sharded() { b"1" } else { b"0" }.to_vec(),
                event.id.as_bytes().to_vec(),
            ],
        })
    }

    /// Places up to [`PUBLISH_BATCH`] channels with one `publish_many` call.
    async fn publish_batch(
        &self,
        batch: Vec<Placement>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
        let calls = batch
            .iter()
            .map(|p| self.call_of(&p.channel, &p.event, &p.options))
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<&str> = calls
            .iter()
            .flat_map(|c| c.keys.iter().map(String::as_str))
            .collect();
        let args: Vec<&[u8]> = calls
            .iter()
            .flat_map(|c| c.args.iter().map(Vec::as_slice))
            .collect();
        let replies: Vec<Value> = self.shared.link.call("publish_many", &keys, &args).await?;
        if replies.len() != batch.len() {
            return Err(unexpected());
        }
        replies
            .into_iter()
            .zip(batch)
            .map(|(reply, placement)| match reply {
                Value::Array(reply) => outcome(&reply, placement.event.id),
                _ => Err(unexpected()),
            })
            .collect()
    }
}

/// Reads one channel's reply of the publish functions: `{'ok', offset,
/// epoch}` or `{'dup', offset, epoch, first id}`.
fn outcome(reply: &[Value], id: String) -> Result<PublishOutcome, EngineError> {
    let status = reply.first().and_then(text).ok_or_else(unexpected)?;
    let offset = reply.get(1).and_then(number).ok_or_else(unexpected)?;
    let epoch: Arc<str> = Arc::from(reply.get(2).and_then(text).ok_or_else(unexpected)?);
    match status.as_str() {
        "ok" => Ok(PublishOutcome {
            offset,
            epoch,
            id,
            duplicate: false,
        }),
        "dup" => Ok(PublishOutcome {
            offset,
            epoch,
            id: reply.get(3).and_then(text).ok_or_else(unexpected)?,
            duplicate: true,
        }),
        _ => Err(unexpected()),
    }
}

fn unexpected() -> EngineError {
    EngineError::Unavailable("unexpected reply from Redis".to_owned())
}

#[async_trait]
impl Broker for RedisBroker {
    fn attach(&self, sink: Arc<dyn EventSink>) {
        let _ = self.shared.sink.set(sink);
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        event: NewEvent,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let call = self.call_of(channel, &event, options)?;
        let keys: Vec<&str> = call.keys.iter().map(String::as_str).collect();
        let args: Vec<&[u8]> = call.args.iter().map(Vec::as_slice).collect();
        let reply: Vec<Value> = self.shared.link.call("publish", &keys, &args).await?;
        outcome(&reply, event.id)
    }

    async fn publish_many(
        &self,
        placements: Vec<Placement>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
        // In a Redis Cluster the channels' keys live in different slots, and
        // one call may only touch one slot: there, one call per channel.
        if self.shared.link.sharded() || placements.len() < 2 {
            return publish_each(self, placements).await;
        }
        let mut rest = placements.into_iter().peekable();
        let mut batches: Vec<Vec<Placement>> = Vec::new();
        while rest.peek().is_some() {
            batches.push(rest.by_ref().take(PUBLISH_BATCH).collect());
        }
        let placed: Vec<Vec<PublishOutcome>> = stream::iter(batches)
            .map(|batch| async move { self.publish_batch(batch).await })
            .buffered(BATCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(placed.into_iter().flatten().collect())
    }

    async fn publish_presence(
        &self,
        channel: &ChannelName,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        self.shared.publish_presence(channel, text).await
    }

    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let shared = &self.shared;
        // Followed before subscribing, so the channel's first message finds it.
        shared.tell(Incoming::Follow(channel.clone()));
        if let Err(err) = shared.link.subscribe(channel).await {
            shared.tell(Incoming::Unfollow(channel.clone()));
            return Err(err);
        }
        let keep = millis(super::cluster::followed_ttl(&shared.link.settings));
        match shared.read(channel, u64::MAX, 0, keep).await {
            Ok(read) => {
                shared.tell(Incoming::Baseline {
                    channel: channel.clone(),
                    epoch: read.epoch,
                    top: read.top,
                });
                Ok(())
            }
            Err(err) => {
                shared.tell(Incoming::Unfollow(channel.clone()));
                let _ = shared.link.unsubscribe(channel).await;
                Err(err)
            }
        }
    }

    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let shared = &self.shared;
        shared.tell(Incoming::Unfollow(channel.clone()));
        shared.link.unsubscribe(channel).await?;
        // The position must outlive the last subscriber by `position_ttl`, so
        // a client that drops off a quiet channel can still resume there (the
        // keep-alive of followed channels only runs every position_ttl / 4).
        let link = &shared.link;
        link.query::<()>(
            redis::cmd("PEXPIRE")
                .arg(link.keys.meta(channel))
                .arg(millis(link.settings.position_ttl))
                .arg("GT"),
        )
        .await
    }

    async fn position(&self, channel: &ChannelName) -> Result<ChannelPosition, EngineError> {
        let keep = self.shared.unclaimed_ttl_ms();
        let read = self.shared.read(channel, u64::MAX, 0, keep).await?;
        Ok(ChannelPosition {
            offset: read.top,
            epoch: read.epoch,
        })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        let read = self
            .shared
            .read_ordered(
                channel,
                query.after.unwrap_or(0),
                query.limit.unwrap_or(0),
                self.shared.unclaimed_ttl_ms(),
                query.newest_first,
            )
            .await?;
        let mut events = read.events;
        if query.limit == Some(0) {
            events.clear();
        }
        Ok(HistoryPage {
            position: ChannelPosition {
                offset: read.top,
                epoch: read.epoch,
            },
            events,
            complete: read.complete,
        })
    }

    fn channel_count(&self) -> usize {
        self.shared.followed_channels.load(Ordering::Relaxed)
    }
}
