//! [`RedisBroker`]: offsets, history and delivery between nodes through Redis.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use redis::Value;

use super::receiver::Incoming;
use super::{millis, new_epoch, now_ms, number, text, Header, Shared};
use crate::engine::{
    Broker, ChannelPosition, DeliveryFilter, EngineError, EnvelopeParts, EventSink, HistoryPage,
    HistoryQuery, NewEvent, PublishOptions, PublishOutcome,
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
        let link = &self.shared.link;
        let keys = &link.keys;
        let parts = EnvelopeParts::encode(channel, &event);
        let header = serde_json::to_string(&Header {
            id: event.id.as_str().into(),
            event: event.event.as_str().into(),
            filter: DeliveryFilter::of(&event),
        })
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let meta = keys.meta(channel);
        let stream = keys.stream(channel);
        let idempotency =
            keys.idempotency(channel, options.idempotency_key.as_deref().unwrap_or(""));
        let window = if options.idempotency_key.is_some() {
            millis(options.idempotency_window).max(1)
        } else {
            0
        };
        let (size, ttl) = if options.history.size > 0 && !options.history.ttl.is_zero() {
            (options.history.size, millis(options.history.ttl).max(1))
        } else {
            (0, 0)
        };
        let epoch = new_epoch();
        let strings = [
            size.to_string(),
            ttl.to_string(),
            millis(link.settings.position_ttl).to_string(),
            window.to_string(),
            now_ms().to_string(),
            keys.pubsub(channel),
        ];
        let reply: Vec<Value> = link
            .call(
                "publish",
                &[&meta, &stream, &idempotency],
                &[
                    epoch.as_bytes(),
                    strings[0].as_bytes(),
                    strings[1].as_bytes(),
                    strings[2].as_bytes(),
                    strings[3].as_bytes(),
                    strings[4].as_bytes(),
                    strings[5].as_bytes(),
                    header.as_bytes(),
                    parts.prefix.as_bytes(),
                    parts.suffix.as_bytes(),
                    if link.sharded() { b"1" } else { b"0" },
                    event.id.as_bytes(),
                ],
            )
            .await?;
        let status = reply.first().and_then(text).ok_or_else(unexpected)?;
        let offset = reply.get(1).and_then(number).ok_or_else(unexpected)?;
        let epoch: Arc<str> = Arc::from(reply.get(2).and_then(text).ok_or_else(unexpected)?);
        match status.as_str() {
            "ok" => Ok(PublishOutcome {
                offset,
                epoch,
                id: event.id,
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
        let keep = millis(shared.link.settings.position_ttl);
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
        self.shared.tell(Incoming::Unfollow(channel.clone()));
        self.shared.link.unsubscribe(channel).await
    }

    async fn position(&self, channel: &ChannelName) -> Result<ChannelPosition, EngineError> {
        let read = self.shared.read(channel, u64::MAX, 0, 0).await?;
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
                0,
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
