//! Publishing: the one path every event takes into the engine, whether it comes
//! from the HTTP API, a client connection, or a Rust backend embedding Tidings.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::access::{AccessError, AccessPolicy};
use crate::engine::{
    Audience, Broker, EngineError, HistoryPolicy, NewEvent, Placement, PublishOptions,
    PublishOutcome, PUBLISH_CONCURRENCY,
};
use crate::metrics::Metrics;
use crate::protocol::time::{new_event_id, now_timestamp};
use crate::protocol::{json_object, ChannelName, EntityRef, ErrorCode, EventMeta};

/// How many channels of one broadcast are placed at once by an engine that
/// places one channel per call.
pub const BROADCAST_CONCURRENCY: usize = PUBLISH_CONCURRENCY;

/// Longest event name or idempotency key, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// One event to publish (the body of `POST /api/publish`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Channel name.
    pub channel: String,
    /// Event name, e.g. `applications.updated`.
    pub event: String,
    /// Payload: any JSON.
    pub data: Box<RawValue>,
    /// Publisher metadata.
    #[serde(default, deserialize_with = "json_object::optional_object")]
    pub meta: Option<EventMeta>,
    /// Restricts who receives it.
    #[serde(default, deserialize_with = "json_object::optional_object")]
    pub audience: Option<Audience>,
    /// A connection id that must not receive it.
    #[serde(default)]
    pub exclude_client: Option<String>,
    /// Deduplication key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl PublishRequest {
    /// An event with a ready JSON payload and no metadata, audience, exclusion or
    /// idempotency key (set those fields afterwards as needed).
    pub fn new(channel: impl Into<String>, event: impl Into<String>, data: Box<RawValue>) -> Self {
        Self {
            channel: channel.into(),
            event: event.into(),
            data,
            meta: None,
            audience: None,
            exclude_client: None,
            idempotency_key: None,
        }
    }

    /// Like [`PublishRequest::new`], serializing `data`.
    pub fn json<T: Serialize + ?Sized>(
        channel: impl Into<String>,
        event: impl Into<String>,
        data: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(
            channel,
            event,
            serde_json::value::to_raw_value(data)?,
        ))
    }
}

/// The body of `POST /api/broadcast`: one event to several channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// Channel names.
    pub channels: Vec<String>,
    /// Event name.
    pub event: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// Publisher metadata.
    #[serde(default, deserialize_with = "json_object::optional_object")]
    pub meta: Option<EventMeta>,
    /// Restricts who receives it.
    #[serde(default, deserialize_with = "json_object::optional_object")]
    pub audience: Option<Audience>,
    /// A connection id that must not receive it.
    #[serde(default)]
    pub exclude_client: Option<String>,
    /// Deduplication key (per channel).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The body of `POST /api/events`: an entity change, fanned to the workspace, the
/// entity type and the entity channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityChange {
    /// Workspace (tenant) id.
    pub workspace: String,
    /// The entity.
    #[serde(deserialize_with = "json_object::object")]
    pub entity: EntityRef,
    /// What happened: any event-name segment (`created`, `approved`,
    /// `status_changed`); the event is named `{entity.type}.{action}`.
    pub action: String,
    /// Payload (defaults to `null`).
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Who made the change.
    #[serde(default)]
    pub actor: Option<String>,
    /// The request that caused it.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Restricts who receives it.
    #[serde(default, deserialize_with = "json_object::optional_object")]
    pub audience: Option<Audience>,
    /// A connection id that must not receive it.
    #[serde(default)]
    pub exclude_client: Option<String>,
    /// Deduplication key (per channel).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl EntityChange {
    /// The event name it is published as: `{entity.type}.{action}`.
    pub fn event_name(&self) -> String {
        format!("{}.{}", self.entity.entity_type, self.action)
    }
}

/// Where one event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Channel name.
    pub channel: String,
    /// Offset in the channel.
    pub offset: u64,
    /// Event id.
    pub id: String,
    /// True when the idempotency key had been seen within the window, so
    /// nothing new was published (the fields above are the first publish's).
    #[serde(skip)]
    pub duplicate: bool,
}

/// Why a publish was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The channel's namespace is not configured.
    #[error("unknown channel {0}")]
    UnknownChannel(String),
    /// The publisher may not publish there.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is over a configured limit (size, channel count).
    #[error("{0}")]
    LimitExceeded(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl PublishError {
    /// The contract's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::UnknownChannel(_) => ErrorCode::UnknownChannel,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Engine(_) => ErrorCode::EngineUnavailable,
        }
    }
}

/// Parses the JSON body of a publish request (one of the request types above)
/// the way the server API does: a JSON object, unknown fields refused, nothing
/// after it. Consumers parse their command-mode messages with it too, so a
/// message is accepted exactly when the same HTTP request would be.
pub fn parse_request<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PublishError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    json_object::object(&mut json)
        .and_then(|parsed| json.end().map(|()| parsed))
        .map_err(|e| PublishError::BadRequest(format!("invalid body: {e}")))
}

impl BroadcastRequest {
    /// Refuses a broadcast to more than `max` channels (`api.max_broadcast_channels`).
    pub fn check_channel_count(&self, max: usize) -> Result<(), PublishError> {
        if self.channels.len() > max {
            return Err(PublishError::LimitExceeded(format!(
                "at most {max} channels per broadcast"
            )));
        }
        Ok(())
    }
}

impl From<AccessError> for PublishError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::UnknownChannel(c) => Self::UnknownChannel(c),
            e @ AccessError::PermissionDenied { .. } => Self::PermissionDenied(e.to_string()),
        }
    }
}

/// Publishes events. Cheap to clone; this is the handle an embedding backend keeps.
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    access: AccessPolicy,
    metrics: Arc<Metrics>,
    idempotency_window: Duration,
    limits: PublishLimits,
}

/// What one publish may carry: the server API's limits, applied to every way
/// in (HTTP, consumers, a Rust caller) alike.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// Most bytes of `data` (`api.max_body_size`): a larger event would not
    /// fit a long poll's reply, and may close subscribers as slow consumers.
    pub max_data_size: usize,
    /// Most channels of one broadcast (`api.max_broadcast_channels`).
    pub max_broadcast_channels: usize,
}

impl PublishLimits {
    /// The limits `config` sets.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            max_data_size: config.api.max_body_size,
            max_broadcast_channels: config.api.max_broadcast_channels,
        }
    }
}

/// The event fields shared by every channel of a multi-channel publish.
struct EventTemplate {
    event: String,
    data: Box<RawValue>,
    meta: Option<EventMeta>,
    audience: Option<Audience>,
    exclude_client: Option<String>,
    idempotency_key: Option<String>,
}

fn check_name(what: &str, value: &str) -> Result<(), PublishError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(PublishError::BadRequest(format!(
            "{what} must be 1-{MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl Publisher {
    /// A publisher over `broker`, placing events per the namespaces of
    /// `access`, within the default configuration's limits (see
    /// [`with_limits`](Self::with_limits)).
    pub fn new(
        broker: Arc<dyn Broker>,
        access: AccessPolicy,
        metrics: Arc<Metrics>,
        idempotency_window: Duration,
    ) -> Self {
        Self {
            broker,
            access,
            metrics,
            idempotency_window,
            limits: PublishLimits::of(&crate::config::Config::default()),
        }
    }

    /// The same publisher refusing what is over `limits` with
    /// [`PublishError::LimitExceeded`].
    pub fn with_limits(self, limits: PublishLimits) -> Self {
        Self { limits, ..self }
    }

    /// The same publisher remembering idempotency keys for `window` instead
    /// (each consumer has its own window); a window over
    /// [`MAX_DURATION`](crate::config::MAX_DURATION) (365 days) is taken as that.
    pub fn with_idempotency_window(&self, window: Duration) -> Self {
        Self {
            idempotency_window: window,
            ..self.clone()
        }
    }

    /// Publishes one event.
    pub async fn publish(&self, request: PublishRequest) -> Result<Published, PublishError> {
        let resolved = self.resolve(&request.channel)?;
        let template = EventTemplate {
            event: request.event,
            data: request.data,
            meta: request.meta,
            audience: request.audience,
            exclude_client: request.exclude_client,
            idempotency_key: request.idempotency_key,
        };
        self.check_template(&template)?;
        let placement = self.placement(resolved, &template, new_event_id(), now_timestamp());
        let outcome = self
            .broker
            .publish(&placement.channel, placement.event, &placement.options)
            .await?;
        Ok(self.published(request.channel, outcome))
    }

    /// Publishes one event to several channels. Every channel is checked before
    /// anything is published. The event keeps one id across channels.
    pub async fn broadcast(
        &self,
        request: BroadcastRequest,
    ) -> Result<Vec<Published>, PublishError> {
        if request.channels.is_empty() {
            return Err(PublishError::BadRequest("`channels` is empty".into()));
        }
        request.check_channel_count(self.limits.max_broadcast_channels)?;
        let resolved = request
            .channels
            .iter()
            .map(|c| self.resolve(c))
            .collect::<Result<Vec<_>, _>>()?;
        let template = EventTemplate {
            event: request.event,
            data: request.data,
            meta: request.meta,
            audience: request.audience,
            exclude_client: request.exclude_client,
            idempotency_key: request.idempotency_key,
        };
        self.check_template(&template)?;
        // One event: one id and one timestamp on every channel.
        let id = new_event_id();
        let ts = now_timestamp();
        // One call for all channels: the engine places several per round
        // trip (Redis), since one round trip after another a broadcast to
        // 100,000 channels takes seconds. On the first error the remaining
        // placements are dropped; a retry with the same idempotency key
        // completes the rest without duplicates.
        let placements = resolved
            .into_iter()
            .map(|channel| self.placement(channel, &template, id.clone(), ts.clone()))
            .collect();
        let outcomes = self.broker.publish_many(placements).await?;
        Ok(request
            .channels
            .into_iter()
            .zip(outcomes)
            .map(|(channel, outcome)| self.published(channel, outcome))
            .collect())
    }

    /// Publishes an entity change as `{type}.{action}` to `workspace:{w}`,
    /// `workspace:{w}:{type}` and `workspace:{w}:{type}:{id}`, with `meta.entity`.
    pub async fn publish_entity_change(
        &self,
        change: EntityChange,
    ) -> Result<Vec<Published>, PublishError> {
        for (what, value) in [
            ("workspace", &change.workspace),
            ("entity.type", &change.entity.entity_type),
            ("entity.id", &change.entity.id),
        ] {
            if value.is_empty() || value.contains(':') {
                return Err(PublishError::BadRequest(format!(
                    "{what} must be non-empty and contain no ':'"
                )));
            }
        }
        let base = format!("workspace:{}", change.workspace);
        let typed = format!("{base}:{}", change.entity.entity_type);
        let single = format!("{typed}:{}", change.entity.id);
        // The event is `{entity.type}.{action}`: the action gets what the
        // type leaves of an event name, so the message can give the real bound.
        if change.entity.entity_type.len() + 2 > MAX_NAME_LEN {
            return Err(PublishError::BadRequest(format!(
                "entity.type must be at most {} bytes (the event `{{entity.type}}.{{action}}` \
                 is at most {MAX_NAME_LEN})",
                MAX_NAME_LEN - 2
            )));
        }
        let max_action = MAX_NAME_LEN - change.entity.entity_type.len() - 1;
        if change.action.is_empty()
            || change.action.len() > max_action
            || change.action.chars().any(char::is_control)
        {
            return Err(PublishError::BadRequest(format!(
                "action must be 1-{max_action} bytes without control characters \
                 (the event `{{entity.type}}.{{action}}` is at most {MAX_NAME_LEN})"
            )));
        }
        let event = change.event_name();
        let data = match change.data {
            Some(data) => data,
            None => RawValue::from_string("null".to_owned())
                .map_err(|e| PublishError::BadRequest(e.to_string()))?,
        };
        self.broadcast(BroadcastRequest {
            channels: vec![base, typed, single],
            event,
            data,
            meta: Some(EventMeta {
                actor: change.actor,
                correlation_id: change.correlation_id,
                entity: Some(change.entity),
            }),
            audience: change.audience,
            exclude_client: change.exclude_client,
            idempotency_key: change.idempotency_key,
        })
        .await
    }

    /// The channel `name` and its namespace's history policy.
    fn resolve(&self, name: &str) -> Result<(ChannelName, HistoryPolicy), PublishError> {
        let channel = ChannelName::parse(name)
            .map_err(|e| PublishError::BadRequest(format!("channel: {e}")))?;
        let namespace = self.access.namespace(&channel)?;
        let history = HistoryPolicy {
            size: namespace.config.history_size,
            ttl: namespace.config.history_ttl,
        };
        Ok((channel, history))
    }

    fn check_template(&self, template: &EventTemplate) -> Result<(), PublishError> {
        check_name("event", &template.event)?;
        let max = self.limits.max_data_size;
        if template.data.get().len() > max {
            return Err(PublishError::LimitExceeded(format!(
                "`data` is over {max} bytes (api.max_body_size)"
            )));
        }
        if let Some(key) = &template.idempotency_key {
            check_name("idempotency_key", key)?;
        }
        Ok(())
    }

    fn placement(
        &self,
        (channel, history): (ChannelName, HistoryPolicy),
        template: &EventTemplate,
        id: String,
        ts: String,
    ) -> Placement {
        let options = PublishOptions {
            history,
            idempotency_key: template.idempotency_key.clone(),
            idempotency_window: self.idempotency_window,
        };
        let event = NewEvent {
            id,
            event: template.event.clone(),
            ts,
            data: template.data.clone(),
            meta: template.meta.clone(),
            audience: template.audience.clone(),
            // An empty id names no connection (a poll's throwaway one has it).
            exclude_client: template.exclude_client.clone().filter(|c| !c.is_empty()),
        };
        Placement {
            channel,
            event,
            options,
        }
    }

    fn published(&self, channel: String, outcome: PublishOutcome) -> Published {
        if !outcome.duplicate {
            self.metrics.event_published();
        }
        Published {
            channel,
            offset: outcome.offset,
            id: outcome.id,
            duplicate: outcome.duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use axum::extract::ws::Utf8Bytes;

    use super::*;
    use crate::config::Config;
    use crate::engine::memory::MemoryBroker;
    use crate::engine::{ChannelPosition, EventSink, HistoryPage, HistoryQuery, PublishOutcome};

    /// A memory engine whose publishes take a while, counting how many overlap.
    struct SlowBroker {
        inner: MemoryBroker,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl Broker for SlowBroker {
        fn attach(&self, sink: Arc<dyn EventSink>) {
            self.inner.attach(sink);
        }
        async fn publish(
            &self,
            channel: &ChannelName,
            event: NewEvent,
            options: &PublishOptions,
        ) -> Result<PublishOutcome, EngineError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let outcome = self.inner.publish(channel, event, options).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
        async fn publish_presence(
            &self,
            channel: &ChannelName,
            text: Utf8Bytes,
        ) -> Result<(), EngineError> {
            self.inner.publish_presence(channel, text).await
        }
        async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
            self.inner.subscribe_node(channel).await
        }
        async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
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
            self.inner.history(channel, query).await
        }
        fn channel_count(&self) -> usize {
            self.inner.channel_count()
        }
    }

    fn broadcast_to(channels: &[String], key: Option<&str>) -> BroadcastRequest {
        BroadcastRequest {
            channels: channels.to_vec(),
            event: "notice.sent".into(),
            data: RawValue::from_string("1".into()).unwrap(),
            meta: None,
            audience: None,
            exclude_client: None,
            idempotency_key: key.map(str::to_owned),
        }
    }

    /// A Rust caller gets the server API's limits: `data` within
    /// `api.max_body_size`, a broadcast within `api.max_broadcast_channels`.
    #[tokio::test]
    async fn publishes_over_the_configured_limits_are_refused() {
        let publisher = Publisher::new(
            Arc::new(MemoryBroker::new(Duration::from_secs(60))),
            AccessPolicy::new(&Config::default()),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
        )
        .with_limits(PublishLimits {
            max_data_size: 8,
            max_broadcast_channels: 2,
        });
        let request = |data: &str| {
            PublishRequest::new(
                "user:u1",
                "notice.sent",
                RawValue::from_string(data.to_owned()).unwrap(),
            )
        };
        assert!(publisher.publish(request("[1,2,3]")).await.is_ok());
        let big = publisher.publish(request("[1,2,3,4,5]")).await;
        assert!(
            matches!(big, Err(PublishError::LimitExceeded(_))),
            "{big:?}"
        );
        let channels = |n: usize| -> Vec<String> { (0..n).map(|i| format!("user:u{i}")).collect() };
        assert!(publisher
            .broadcast(broadcast_to(&channels(2), None))
            .await
            .is_ok());
        let wide = publisher.broadcast(broadcast_to(&channels(3), None)).await;
        assert!(
            matches!(wide, Err(PublishError::LimitExceeded(_))),
            "{wide:?}"
        );
    }

    #[tokio::test]
    async fn broadcast_places_channels_concurrently_in_request_order() {
        let broker = Arc::new(SlowBroker {
            inner: MemoryBroker::new(Duration::from_secs(60)),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let publisher = Publisher::new(
            broker.clone(),
            AccessPolicy::new(&Config::default()),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
        );
        let channels: Vec<String> = (0..300).map(|n| format!("user:u{n}")).collect();
        // One after another, 300 placements of 20 ms would take 6 s.
        let started = std::time::Instant::now();
        let placed = publisher
            .broadcast(broadcast_to(&channels, Some("k1")))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let most = broker.most_in_flight.load(Ordering::SeqCst);
        assert!(
            most > 1 && most <= BROADCAST_CONCURRENCY,
            "{most} in flight"
        );
        let order: Vec<&str> = placed.iter().map(|p| p.channel.as_str()).collect();
        assert_eq!(
            order,
            channels.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(placed.iter().all(|p| p.offset == 1 && p.id == placed[0].id));

        // The same key again: the same event everywhere, nothing new placed.
        let again = publisher
            .broadcast(broadcast_to(&channels, Some("k1")))
            .await
            .unwrap();
        assert!(placed.iter().all(|p| !p.duplicate));
        assert!(again.iter().all(|p| p.duplicate));
        let placements = |list: &[Published]| {
            list.iter()
                .map(|p| (p.channel.clone(), p.offset, p.id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(placements(&again), placements(&placed));
    }
}
