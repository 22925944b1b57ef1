//! A broker for tests of what goes wrong inside an engine: the in-memory
//! broker, with faults on channels and events named for them.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use tidings::engine::{
    Broker, ChannelPosition, EngineError, EventSink, HistoryPage, HistoryQuery, NewEvent,
    PublishOptions, PublishOutcome,
};
use tidings::protocol::ChannelName;

/// The in-memory broker (or any other), except that:
/// - reading the history of a channel ending in `:boom` panics (a subscribe
///   is cut short after the hub took it in), and so does publishing an event
///   named `boom`;
/// - subscribing the node to a channel ending in `:stall-node`, or reading
///   the history of one ending in `:stall-history`, never completes;
///
/// and it records the channels the node unsubscribes from.
pub struct FaultyBroker {
    inner: Arc<dyn Broker>,
    pub unsubscribed: Mutex<Vec<String>>,
}

impl FaultyBroker {
    pub fn wrap(inner: Arc<dyn Broker>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            unsubscribed: Mutex::new(Vec::new()),
        })
    }

    /// Whether the node unsubscribed from `channel`.
    pub fn unsubscribed_from(&self, channel: &str) -> bool {
        self.unsubscribed
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == channel)
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    fn attach(&self, sink: Arc<dyn EventSink>) {
        self.inner.attach(sink);
    }
    async fn publish(
        &self,
        channel: &ChannelName,
        event: NewEvent,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        assert!(event.event != "boom", "test broker: publish panics");
        self.inner.publish(channel, event, options).await
    }
    async fn publish_presence(
        &self,
        channel: &ChannelName,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        self.inner.publish_presence(channel, text).await
    }
    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        if channel.as_str().ends_with(":stall-node") {
            std::future::pending::<()>().await;
        }
        self.inner.subscribe_node(channel).await
    }
    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.unsubscribed
            .lock()
            .unwrap()
            .push(channel.as_str().to_owned());
        self.inner.unsubscribe_node(channel).await
    }
    async fn position(&self, channel: &ChannelName) -> Result<ChannelPosition, EngineError> {
        self.inner.position(channel).await
    }
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        assert!(
            !channel.as_str().ends_with(":boom"),
            "test broker: history panics"
        );
        if channel.as_str().ends_with(":stall-history") {
            std::future::pending::<()>().await;
        }
        self.inner.history(channel, query).await
    }
    fn channel_count(&self) -> usize {
        self.inner.channel_count()
    }
}
