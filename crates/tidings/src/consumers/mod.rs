//! Consumers: publish what backends put on an event bus (a Redis Stream, a
//! PostgreSQL outbox table) without any glue code, at least once from the
//! source and exactly once to clients.
//!
//! The invariant every consumer keeps: a message is acknowledged (stream entry
//! `XACK`ed, outbox row marked) only after it is placed in its channel(s) or put
//! in the dead-letter, and its idempotency key is its event id, so a message
//! delivered again after a crash publishes nothing new within the consumer's
//! `idempotency_window`.
//!
//! - [`message`]: turns one message (command or mapping mode) into a publish,
//!   through the same validation as the server API.
//! - [`placement`]: publishes it, retrying transient failures with backoff.
//! - [`redis_stream`] and [`postgres_outbox`]: the two sources.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use redis::IntoConnectionInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{at_most_problem, without_password, NamespaceConfig, MAX_DURATION};
use crate::metrics::ConsumerMetrics;
use crate::protocol::ChannelName;
use crate::Tidings;

pub mod message;
pub mod placement;
pub mod postgres_outbox;
pub mod redis_stream;

use message::ChannelTemplate;

/// Which source a consumer reads.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    /// Redis Streams, through a consumer group.
    #[default]
    RedisStream,
    /// A PostgreSQL transactional outbox table.
    PostgresOutbox,
}

impl ConsumerKind {
    /// The name used in configuration and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RedisStream => "redis_stream",
            Self::PostgresOutbox => "postgres_outbox",
        }
    }
}

/// How a message is read.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageMode {
    /// `{"method": "publish" | "broadcast" | "events", "payload": {...}}`: the
    /// body of the server API request of that name.
    #[default]
    Command,
    /// The application's own event shape, mapped by `[consumers.mapping]`.
    Mapping,
}

impl MessageMode {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Mapping => "mapping",
        }
    }
}

/// Where a new consumer group starts reading a stream.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamStart {
    /// Only entries added after the group is created.
    #[default]
    New,
    /// Every entry the stream still holds.
    Beginning,
}

/// Mapping mode: which field of the application's event is what. Fields are
/// dotted paths into the JSON message (`data.entityType`); `channels` are
/// templates whose `{path}` placeholders are replaced by the fields' values.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MappingConfig {
    /// The event id: the idempotency key (required).
    pub id: String,
    /// The event name (required).
    pub event: String,
    /// Channel templates, e.g. `workspace:{tenantId}`. When empty, the event
    /// goes to the entity channels, as `/api/events` does: `workspace:{w}`,
    /// `workspace:{w}:{type}` and `workspace:{w}:{type}:{id}` (which needs
    /// `workspace`, `entity_type` and `entity_id`).
    pub channels: Vec<String>,
    /// The payload; the whole message when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The workspace (tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The entity type (`meta.entity.type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// The entity id (`meta.entity.id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The entity version (`meta.entity.version`, a whole number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_version: Option<String>,
    /// Who made the change (`meta.actor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The request that caused it (`meta.correlation_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// An audience object (`{"users": [...], "roles": [...]}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// One `[[consumers]]` entry. `Debug` shows passwords in its URLs as `***`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Name, unique among the consumers: the metric label and log field.
    pub name: String,
    /// `redis_stream` or `postgres_outbox`.
    pub kind: ConsumerKind,
    /// Run it (`false` keeps the entry but switches it off).
    pub enabled: bool,
    /// `command` or `mapping`.
    pub mode: MessageMode,
    /// The field mapping of `mode = "mapping"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingConfig>,
    /// Consume only events whose name matches one of these patterns (`*` at
    /// the end matches any rest: `approval.*`); empty consumes every event.
    /// Others are acknowledged without publishing.
    pub events: Vec<String>,
    /// How long an event id is remembered: a message delivered again within
    /// it (after a crash between publish and acknowledgement) publishes
    /// nothing. Must outlast the longest redelivery delay.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Longest pause between retries of a transient failure (engine unavailable).
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// Log a warning when the oldest unprocessed message is older than this.
    #[serde(with = "humantime_serde")]
    pub lag_warning: Duration,
    /// Messages read at once.
    pub batch_size: usize,

    /// redis_stream: the Redis to read; `engine.redis_url` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// redis_stream: the stream keys.
    pub streams: Vec<String>,
    /// redis_stream: the consumer group (created when missing).
    pub group: String,
    /// redis_stream: where a newly created group starts (`new` or `beginning`).
    pub start: StreamStart,
    /// redis_stream: the entry field holding the JSON message.
    pub message_field: String,
    /// redis_stream: how long one `XREADGROUP` waits for entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// redis_stream: entries pending (delivered, unacknowledged) this long in
    /// another consumer are claimed and finished.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// redis_stream: the dead-letter stream; `{stream}:dead-letter` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,

    /// postgres_outbox: connection string (`postgres://user:pass@host:port/db`
    /// or `host=... user=...`), without TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// postgres_outbox: the outbox table (`schema.table` allowed).
    pub table: String,
    /// postgres_outbox: the `LISTEN` channel the table's trigger notifies.
    pub notify_channel: String,
    /// postgres_outbox: how often the table is read when no notification comes
    /// (the fallback when a notification is lost with a connection).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// postgres_outbox: delete published rows instead of setting `processed_at`
    /// (dead-lettered rows are always kept).
    pub delete_published: bool,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("enabled", &self.enabled)
            .field("mode", &self.mode)
            .field("mapping", &self.mapping)
            .field("events", &self.events)
            .field("idempotency_window", &self.idempotency_window)
            .field("max_retry_backoff", &self.max_retry_backoff)
            .field("lag_warning", &self.lag_warning)
            .field("batch_size", &self.batch_size)
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(without_password),
            )
            .field("streams", &self.streams)
            .field("group", &self.group)
            .field("start", &self.start)
            .field("message_field", &self.message_field)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field(
                "postgres_url",
                &self.postgres_url.as_deref().map(without_password),
            )
            .field("table", &self.table)
            .field("notify_channel", &self.notify_channel)
            .field("poll_interval", &self.poll_interval)
            .field("delete_published", &self.delete_published)
            .finish()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: ConsumerKind::RedisStream,
            enabled: true,
            mode: MessageMode::Command,
            mapping: None,
            events: Vec::new(),
            idempotency_window: Duration::from_secs(3600),
            max_retry_backoff: Duration::from_secs(5),
            lag_warning: Duration::from_secs(30),
            batch_size: 100,
            redis_url: None,
            streams: Vec::new(),
            group: "tidings".to_owned(),
            start: StreamStart::New,
            message_field: "message".to_owned(),
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            dead_letter_stream: None,
            postgres_url: None,
            table: "tidings_outbox".to_owned(),
            notify_channel: "tidings_outbox".to_owned(),
            poll_interval: Duration::from_secs(1),
            delete_published: false,
        }
    }
}

/// A problem with one consumer setting: the field (relative to the consumer)
/// and the reason.
pub type FieldProblem = (String, String);

fn problem(field: impl Into<String>, reason: impl Into<String>) -> FieldProblem {
    (field.into(), reason.into())
}

/// Whether `name` is an SQL identifier we can splice into statements: letters, digits and `_`,
/// optionally `schema.table`.
pub fn is_sql_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && part.len() <= 63
        })
}

impl ConsumerConfig {
    /// redis_stream: where the dead letters of `stream` go.
    pub fn dead_letter_stream_of(&self, stream: &str) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{stream}:dead-letter"))
    }

    /// Checks the settings against the namespaces in force; the error names
    /// the field (e.g. `mapping.channels[1]`) and the reason.
    pub fn validate(
        &self,
        namespaces: &BTreeMap<String, NamespaceConfig>,
    ) -> Result<(), FieldProblem> {
        for (field, value) in [
            ("idempotency_window", self.idempotency_window),
            ("max_retry_backoff", self.max_retry_backoff),
            ("lag_warning", self.lag_warning),
            ("block", self.block),
            ("claim_idle", self.claim_idle),
            ("poll_interval", self.poll_interval),
        ] {
            if let Some(too_long) = at_most_problem(value, MAX_DURATION) {
                return Err(problem(field, too_long));
            }
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(problem(
                "name",
                "must be a non-empty name of letters, digits, `_`, `-` or `.`",
            ));
        }
        if self.idempotency_window.is_zero() {
            return Err(problem("idempotency_window", "must be greater than zero"));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(problem("batch_size", "must be between 1 and 10000"));
        }
        if self.max_retry_backoff.is_zero() {
            return Err(problem("max_retry_backoff", "must be greater than zero"));
        }
        for (i, pattern) in self.events.iter().enumerate() {
            if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
                return Err(problem(
                    format!("events[{i}]"),
                    "must be an event name, or a prefix ending in `*`",
                ));
            }
        }
        match self.kind {
            ConsumerKind::RedisStream => {
                if self.streams.is_empty() || self.streams.iter().any(String::is_empty) {
                    return Err(problem("streams", "list at least one stream key"));
                }
                if self.group.is_empty() {
                    return Err(problem("group", "must not be empty"));
                }
                if self.message_field.is_empty() {
                    return Err(problem("message_field", "must not be empty"));
                }
                if self.block.is_zero() || self.claim_idle.is_zero() {
                    return Err(problem(
                        if self.block.is_zero() {
                            "block"
                        } else {
                            "claim_idle"
                        },
                        "must be greater than zero",
                    ));
                }
                if self.postgres_url.is_some() {
                    return Err(problem(
                        "postgres_url",
                        "applies to kind = \"postgres_outbox\" only",
                    ));
                }
                // Dead letters written to a consumed stream would be read
                // back, dead-lettered again, and so on without end.
                if let Some(looping) = self
                    .streams
                    .iter()
                    .find(|stream| self.streams.contains(&self.dead_letter_stream_of(stream)))
                {
                    return Err(problem(
                        "dead_letter_stream",
                        format!(
                            "`{}` (for `{looping}`) is a consumed stream: its dead letters would be read again",
                            self.dead_letter_stream_of(looping)
                        ),
                    ));
                }
                // Caught here, not when the consumer starts: a bad URL would
                // otherwise leave the consumer off behind one log line.
                if let Some(url) = &self.redis_url {
                    url.as_str()
                        .into_connection_info()
                        .map_err(|e| problem("redis_url", format!("not a Redis URL ({e})")))?;
                }
            }
            ConsumerKind::PostgresOutbox => {
                let Some(url) = &self.postgres_url else {
                    return Err(problem(
                        "postgres_url",
                        "required for kind = \"postgres_outbox\"",
                    ));
                };
                let no_tls = || {
                    problem(
                        "postgres_url",
                        "`sslmode` asks for TLS, which cannot be met: the consumer connects without TLS",
                    )
                };
                // tokio-postgres does not know the verify modes at all.
                let spaceless: String = url.split_whitespace().collect();
                if spaceless.contains("sslmode=verify-") {
                    return Err(no_tls());
                }
                let pg = url.parse::<tokio_postgres::Config>().map_err(|e| {
                    problem("postgres_url", format!("not a connection string ({e})"))
                })?;
                if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                    return Err(no_tls());
                }
                if !is_sql_name(&self.table) {
                    return Err(problem(
                        "table",
                        "must be a table name of letters, digits and `_` (optionally `schema.table`)",
                    ));
                }
                if !is_sql_name(&self.notify_channel) || self.notify_channel.contains('.') {
                    return Err(problem(
                        "notify_channel",
                        "must be a name of letters, digits and `_`",
                    ));
                }
                if self.poll_interval.is_zero() {
                    return Err(problem("poll_interval", "must be greater than zero"));
                }
                if !self.streams.is_empty() || self.redis_url.is_some() {
                    return Err(problem(
                        if self.streams.is_empty() {
                            "redis_url"
                        } else {
                            "streams"
                        },
                        "applies to kind = \"redis_stream\" only",
                    ));
                }
            }
        }
        match (self.mode, &self.mapping) {
            (MessageMode::Command, Some(_)) => {
                Err(problem("mapping", "applies to mode = \"mapping\" only"))
            }
            (MessageMode::Command, None) => Ok(()),
            (MessageMode::Mapping, None) => Err(problem(
                "mapping",
                "mode = \"mapping\" needs a [consumers.mapping] table",
            )),
            (MessageMode::Mapping, Some(mapping)) => validate_mapping(mapping, namespaces),
        }
    }
}

fn validate_mapping(
    mapping: &MappingConfig,
    namespaces: &BTreeMap<String, NamespaceConfig>,
) -> Result<(), FieldProblem> {
    for (field, path) in [("id", &mapping.id), ("event", &mapping.event)] {
        if path.is_empty() {
            return Err(problem(
                format!("mapping.{field}"),
                "required: the field of the message that holds it",
            ));
        }
    }
    let optional = [
        ("id", Some(&mapping.id)),
        ("event", Some(&mapping.event)),
        ("data", mapping.data.as_ref()),
        ("workspace", mapping.workspace.as_ref()),
        ("entity_type", mapping.entity_type.as_ref()),
        ("entity_id", mapping.entity_id.as_ref()),
        ("entity_version", mapping.entity_version.as_ref()),
        ("actor", mapping.actor.as_ref()),
        ("correlation_id", mapping.correlation_id.as_ref()),
        ("audience", mapping.audience.as_ref()),
    ];
    for (field, path) in optional {
        if let Some(path) = path {
            message::FieldPath::parse(path)
                .map_err(|reason| problem(format!("mapping.{field}"), reason))?;
        }
    }
    if mapping.channels.is_empty() {
        if mapping.workspace.is_none()
            || mapping.entity_type.is_none()
            || mapping.entity_id.is_none()
        {
            return Err(problem(
                "mapping.channels",
                "list channel templates, or map workspace, entity_type and entity_id \
                 to publish to the entity channels",
            ));
        }
        if !namespaces.contains_key("workspace") {
            return Err(problem(
                "mapping.channels",
                "the entity channels need the `workspace` namespace, which is not configured",
            ));
        }
    }
    for (i, template) in mapping.channels.iter().enumerate() {
        let field = format!("mapping.channels[{i}]");
        let parsed = ChannelTemplate::parse(template).map_err(|r| problem(&field, r))?;
        // A template whose channels could never be valid would dead-letter
        // every message: refuse it here instead.
        let sample = parsed.sample();
        let channel = ChannelName::parse(&sample).map_err(|err| {
            problem(
                &field,
                format!("`{template}` gives channels like `{sample}`: {err}"),
            )
        })?;
        if channel.segments().any(str::is_empty) {
            return Err(problem(
                field,
                format!("`{template}` gives channels like `{sample}`, with an empty segment"),
            ));
        }
        if let Some(namespace) = parsed.literal_namespace() {
            let Some(config) = namespaces.get(namespace) else {
                return Err(problem(
                    field,
                    format!("namespace `{namespace}` is not configured"),
                ));
            };
            // A placeholder's value may hold `:` and add segments, so with
            // placeholders the sample has the fewest the template can give:
            // too many is certain, too few only without placeholders.
            let segments = channel.segments().count();
            let too_few = segments < config.min_segments && !parsed.has_placeholders();
            if too_few || segments > config.max_segments {
                return Err(problem(
                    field,
                    format!(
                        "`{template}` has {segments} segment{}; namespace `{namespace}` takes {} to {}",
                        if segments == 1 { "" } else { "s" },
                        config.min_segments,
                        config.max_segments
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Running consumers: started with [`ConsumerSet::start`], stopped with
/// [`ConsumerSet::stop`] (dropping the set stops them too, without waiting).
#[derive(Debug)]
pub struct ConsumerSet {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What every consumer task gets.
#[derive(Clone)]
pub(crate) struct ConsumerContext {
    pub config: Arc<ConsumerConfig>,
    pub tidings: Tidings,
    pub metrics: ConsumerMetrics,
    pub placer: placement::Placer,
}

impl ConsumerSet {
    /// Starts every enabled consumer of the server's configuration. Each runs
    /// until [`ConsumerSet::stop`]; a source that is down is retried with
    /// backoff, never given up on.
    pub fn start(tidings: &Tidings) -> Self {
        let (stop, stopped) = watch::channel(false);
        let state = tidings.state();
        let mut tasks = Vec::new();
        for config in state.config.consumers.iter().filter(|c| c.enabled) {
            let config = Arc::new(config.clone());
            let metrics = state.metrics.consumer(&config.name, config.kind.as_str());
            let placer = placement::Placer::new(
                config.clone(),
                state
                    .publisher
                    .with_idempotency_window(config.idempotency_window),
                state.config.api.clone(),
                metrics.clone(),
            );
            let context = ConsumerContext {
                config: config.clone(),
                tidings: tidings.clone(),
                metrics,
                placer,
            };
            let stopped = stopped.clone();
            tracing::info!(consumer = %config.name, kind = config.kind.as_str(), "consumer starting");
            tasks.push(match config.kind {
                ConsumerKind::RedisStream => tokio::spawn(redis_stream::run(context, stopped)),
                ConsumerKind::PostgresOutbox => {
                    tokio::spawn(postgres_outbox::run(context, stopped))
                }
            });
        }
        Self { stop, tasks }
    }

    /// Stops every consumer between messages and waits up to `grace` for them
    /// (a message being placed is finished or left unacknowledged).
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(std::mem::take(&mut self.tasks));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("consumers did not stop within {grace:?}");
        }
    }
}

impl Drop for ConsumerSet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs `session` until `stop`, opening a new one after each lost connection
/// to the source: the pause starts at 100 ms, doubles up to 5 s, and starts
/// over after a session that lasted 10 s. `session` gets its own handle on
/// `stop` and returns `None` when stopped, or why the source was lost.
pub(crate) async fn reconnect_until_stopped<S, F>(
    name: &str,
    source: &'static str,
    stop: &mut watch::Receiver<bool>,
    mut session: S,
) where
    S: FnMut(watch::Receiver<bool>) -> F,
    F: std::future::Future<Output = Option<String>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        // A panic outside a message's placement (which dead-letters the
        // message) is a bug of ours: start the session over rather than let
        // the consumer end unseen.
        let ended = AssertUnwindSafe(session(stop.clone())).catch_unwind().await;
        let Some(err) = ended.unwrap_or_else(|_| Some("the consumer's session panicked".into()))
        else {
            break;
        };
        tracing::warn!(consumer = %name, source, error = %err, ?backoff, "consumer lost its source; reconnecting");
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        if pause_or_stop(stop, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Waits for `stop` to turn true (or its sender to go away).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sleeps `pause`, or less when stopped; true when stopped.
pub(crate) async fn pause_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        () = stopped(stop) => true,
        () = tokio::time::sleep(pause) => *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn with_consumer(consumer: ConsumerConfig) -> String {
        let config = Config {
            consumers: vec![consumer],
            ..Config::default()
        };
        config
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn consumer_settings_are_checked_with_their_field() {
        let stream = ConsumerConfig {
            name: "bus".into(),
            streams: vec!["events".into()],
            ..ConsumerConfig::default()
        };
        assert_eq!(with_consumer(stream.clone()), "");
        assert_eq!(
            with_consumer(ConsumerConfig {
                streams: Vec::new(),
                ..stream.clone()
            }),
            "consumers[0].streams: list at least one stream key"
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                mode: MessageMode::Mapping,
                ..stream.clone()
            }),
            "consumers[0].mapping: mode = \"mapping\" needs a [consumers.mapping] table"
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                mode: MessageMode::Mapping,
                mapping: Some(MappingConfig {
                    id: "id".into(),
                    event: "type".into(),
                    ..MappingConfig::default()
                }),
                ..stream.clone()
            }),
            "consumers[0].mapping.channels: list channel templates, or map workspace, \
             entity_type and entity_id to publish to the entity channels"
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                redis_url: Some("http//127.0.0.1:6379".into()),
                ..stream.clone()
            }),
            "consumers[0].redis_url: not a Redis URL (Redis URL did not parse - InvalidClientConfig)"
        );
        let outbox = ConsumerConfig {
            name: "outbox".into(),
            kind: ConsumerKind::PostgresOutbox,
            ..ConsumerConfig::default()
        };
        assert_eq!(
            with_consumer(outbox.clone()),
            "consumers[0].postgres_url: required for kind = \"postgres_outbox\""
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                postgres_url: Some("postgres://u@h/db".into()),
                table: "outbox; DROP TABLE x".into(),
                ..outbox
            }),
            "consumers[0].table: must be a table name of letters, digits and `_` \
             (optionally `schema.table`)"
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                dead_letter_stream: Some("events".into()),
                ..stream.clone()
            }),
            "consumers[0].dead_letter_stream: `events` (for `events`) is a consumed stream: \
             its dead letters would be read again"
        );
        assert_eq!(
            with_consumer(ConsumerConfig {
                streams: vec!["events".into(), "events:dead-letter".into()],
                ..stream.clone()
            }),
            "consumers[0].dead_letter_stream: `events:dead-letter` (for `events`) is a consumed \
             stream: its dead letters would be read again"
        );
        let mapped = |template: &str| ConsumerConfig {
            mode: MessageMode::Mapping,
            mapping: Some(MappingConfig {
                id: "id".into(),
                event: "type".into(),
                channels: vec![template.into()],
                ..MappingConfig::default()
            }),
            ..stream.clone()
        };
        assert_eq!(with_consumer(mapped("workspace:{tenant}:{kind}")), "");
        // `{key}` may be `acme:b1`: two segments, so `chat:{key}` can have three.
        let chat = NamespaceConfig {
            min_segments: 3,
            max_segments: 3,
            ..NamespaceConfig::default()
        };
        let mut config = Config {
            consumers: vec![mapped("chat:{key}")],
            ..Config::default()
        };
        config.namespaces.insert("chat".into(), chat);
        assert!(config.validate().is_ok());
        for (template, reason) in [
            (
                "workspace:a b",
                "`workspace:a b` gives channels like `workspace:a b`: ",
            ),
            (
                "workspace:{t}:a:b:c",
                "`workspace:{t}:a:b:c` has 5 segments; namespace `workspace` takes 2 to 4",
            ),
            (
                "user:{t}:x",
                "`user:{t}:x` has 3 segments; namespace `user` takes 2 to 2",
            ),
            (
                "workspace",
                "`workspace` has 1 segment; namespace `workspace` takes 2 to 4",
            ),
            (
                "workspace:{a}:{b}:{c}:{d}",
                "`workspace:{a}:{b}:{c}:{d}` has 5 segments; namespace `workspace` takes 2 to 4",
            ),
            (
                "workspace::{t}",
                "`workspace::{t}` gives channels like `workspace::x`, with an empty segment",
            ),
            (
                "workspace:",
                "`workspace:` gives channels like `workspace:`, with an empty segment",
            ),
        ] {
            let error = with_consumer(mapped(template));
            assert!(
                error.starts_with(&format!("consumers[0].mapping.channels[0]: {reason}")),
                "{template}: {error}"
            );
        }
        let outbox_at = |url: &str| ConsumerConfig {
            name: "outbox".into(),
            kind: ConsumerKind::PostgresOutbox,
            postgres_url: Some(url.into()),
            ..ConsumerConfig::default()
        };
        assert_eq!(with_consumer(outbox_at("postgres://u@h/db")), "");
        assert_eq!(
            with_consumer(outbox_at("postgres://u@h/db?sslmode=require")),
            "consumers[0].postgres_url: `sslmode` asks for TLS, which cannot be met: the consumer \
             connects without TLS"
        );
        assert_eq!(
            with_consumer(outbox_at("host=h user=u sslmode = verify-full")),
            with_consumer(outbox_at("postgres://u@h/db?sslmode=require"))
        );
        let twice = Config {
            consumers: vec![stream.clone(), stream],
            ..Config::default()
        };
        assert_eq!(
            twice.validate().unwrap_err().to_string(),
            "consumers: two consumers are named `bus`"
        );
    }
}
