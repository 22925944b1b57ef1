//! Prometheus metrics, owned by one server instance (no global recorder, so an
//! embedding application or a test can run several servers in one process).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::cluster::EngineStatus;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The server's metrics.
pub struct Metrics {
    handle: PrometheusHandle,
    connections: Gauge,
    subscriptions: Gauge,
    hub_channels: Gauge,
    engine_channels: Gauge,
    events_published: Counter,
    events_delivered: Counter,
    slow_consumer_closes: Counter,
    auth_failures: Counter,
    publish_to_write: Histogram,
    recovered: Counter,
    recovery_failed: [Counter; 3],
    sse_streams: Gauge,
    socketio_sessions: Gauge,
    socketio_pending_closes: Counter,
    polls: Counter,
    polls_waiting: Gauge,
    http_requests: Counter,
    engine_available: Gauge,
    engine_outages: Counter,
    engine_gaps_filled: Counter,
    engine_resubscribes: Counter,
    nodes: Gauge,
    ws_deflates: Counter,
    ws_deflated_frames: Counter,
    ws_deflated_bytes_in: Counter,
    ws_deflated_bytes_out: Counter,
    recorder: PrometheusRecorder,
    /// Every consumer's state, for `/health`.
    consumers: std::sync::Mutex<Vec<Arc<ConsumerHealth>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static METADATA: Metadata<'static> = Metadata::new("tidings", Level::INFO, Some("tidings"));

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics with their own recorder.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full("tidings_publish_to_write_seconds".into()),
                LATENCY_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            (
                KeyName::from_const_str(name),
                unit,
                SharedString::const_str(help),
            )
        };
        let gauge = |name: &'static str, help: &'static str| {
            let (key, unit, help) = describe(name, None, help);
            recorder.describe_gauge(key, unit, help);
            recorder.register_gauge(&Key::from_static_name(name), &METADATA)
        };
        let counter = |name: &'static str, help: &'static str| {
            let (key, unit, help) = describe(name, None, help);
            recorder.describe_counter(key, unit, help);
            recorder.register_counter(&Key::from_static_name(name), &METADATA)
        };
        let connections = gauge(
            "tidings_connections",
            "Open client connections on this node.",
        );
        let subscriptions = gauge(
            "tidings_subscriptions",
            "Channel subscriptions of local connections.",
        );
        let hub_channels = gauge(
            "tidings_channels",
            "Channels with at least one local subscriber.",
        );
        let engine_channels = gauge(
            "tidings_engine_channels",
            "Channels the engine holds state (offsets, history) for.",
        );
        let events_published = counter("tidings_events_published_total", "Events published.");
        let events_delivered = counter(
            "tidings_events_delivered_total",
            "Events queued for delivery to connections.",
        );
        let slow_consumer_closes = counter(
            "tidings_slow_consumer_closes_total",
            "Connections whose send queue overflowed, counted when it did; each is closed with 4002.",
        );
        let auth_failures = counter(
            "tidings_auth_failures_total",
            "Refused tokens and API keys.",
        );
        recorder.describe_counter(
            KeyName::from_const_str("tidings_recoveries_total"),
            None,
            SharedString::const_str(
                "Subscribes that asked to recover missed events, by result (recovered, failed) and reason.",
            ),
        );
        let recovery = |result: &'static str, reason: Option<&'static str>| {
            let mut labels = vec![metrics::Label::from_static_parts("result", result)];
            if let Some(reason) = reason {
                labels.push(metrics::Label::from_static_parts("reason", reason));
            }
            recorder.register_counter(
                &Key::from_parts("tidings_recoveries_total", labels),
                &METADATA,
            )
        };
        let recovered = recovery("recovered", None);
        let recovery_failed = RecoveryFailure::ALL.map(|r| recovery("failed", Some(r.as_str())));
        let sse_streams = gauge("tidings_sse_streams", "Open SSE streams on this node.");
        let socketio_sessions = gauge(
            "tidings_socketio_sessions",
            "Open Engine.IO sessions at the Socket.IO endpoint on this node.",
        );
        let socketio_pending_closes = counter(
            "tidings_socketio_pending_closes_total",
            "Engine.IO sessions that had not joined, closed to make room for a new one (over the cap on sessions waiting to join).",
        );
        let polls = counter(
            "tidings_polls_total",
            "HTTP polling requests (GET /events) answered.",
        );
        let polls_waiting = gauge(
            "tidings_polls_waiting",
            "Long-poll requests waiting for an event.",
        );
        let http_requests = counter(
            "tidings_http_requests_total",
            "Client requests received over POST /request.",
        );
        let engine_available = gauge(
            "tidings_engine_available",
            "1 while the engine (Redis) answers, 0 during an outage.",
        );
        let engine_outages = counter(
            "tidings_engine_outages_total",
            "Times the engine (Redis) became unreachable.",
        );
        let engine_gaps_filled = counter(
            "tidings_engine_gaps_filled_total",
            "Times events lost between nodes were filled from history, in order.",
        );
        let engine_resubscribes = counter(
            "tidings_engine_resubscribes_total",
            "Times a channel's local subscribers were told to resubscribe (continuity lost).",
        );
        let nodes = gauge("tidings_nodes", "Live nodes of the cluster.");
        let ws_deflates = counter(
            "tidings_ws_deflate_total",
            "Events compressed for permessage-deflate (once per event, whatever the number of subscribers).",
        );
        let ws_deflated_frames = counter(
            "tidings_ws_deflated_frames_total",
            "Compressed event frames written to WebSocket connections.",
        );
        let ws_deflated_bytes_in = counter(
            "tidings_ws_deflated_frame_bytes_in_total",
            "Payload bytes of the compressed event frames written, before compression.",
        );
        let ws_deflated_bytes_out = counter(
            "tidings_ws_deflated_frame_bytes_out_total",
            "Payload bytes of the compressed event frames written, as sent.",
        );
        for (name, help) in CONSUMER_COUNTERS {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        }
        for (name, help) in CONSUMER_GAUGES {
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        }
        let (key, unit, help) = describe(
            "tidings_publish_to_write_seconds",
            Some(Unit::Seconds),
            "Time from an event reaching this node to its write to a socket.",
        );
        recorder.describe_histogram(key, unit, help);
        let publish_to_write = recorder.register_histogram(
            &Key::from_static_name("tidings_publish_to_write_seconds"),
            &METADATA,
        );
        Self {
            handle: recorder.handle(),
            connections,
            subscriptions,
            hub_channels,
            engine_channels,
            events_published,
            events_delivered,
            slow_consumer_closes,
            auth_failures,
            publish_to_write,
            recovered,
            recovery_failed,
            sse_streams,
            socketio_sessions,
            socketio_pending_closes,
            polls,
            polls_waiting,
            http_requests,
            engine_available,
            engine_outages,
            engine_gaps_filled,
            engine_resubscribes,
            nodes,
            ws_deflates,
            ws_deflated_frames,
            ws_deflated_bytes_in,
            ws_deflated_bytes_out,
            recorder,
            consumers: std::sync::Mutex::default(),
        }
    }

    /// Renders the Prometheus text exposition, with the channel gauges and the
    /// engine's state as given (`nodes` when the node list could be read).
    pub fn render(
        &self,
        hub_channels: usize,
        engine_channels: usize,
        engine: &EngineStatus,
        nodes: Option<usize>,
    ) -> String {
        self.hub_channels.set(hub_channels as f64);
        self.engine_channels.set(engine_channels as f64);
        self.engine_available
            .set(if engine.available { 1.0 } else { 0.0 });
        self.engine_outages.absolute(engine.outages);
        self.engine_gaps_filled.absolute(engine.gaps_filled);
        self.engine_resubscribes.absolute(engine.resubscribes);
        if let Some(nodes) = nodes {
            self.nodes.set(nodes as f64);
        }
        self.handle.render()
    }

    /// Drains histogram samples into buckets; call periodically so samples do not
    /// pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Every consumer's state, as `/health` shows it.
    pub fn consumers(&self) -> Vec<Arc<ConsumerHealth>> {
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The metrics of one consumer, labelled `consumer` and `kind`.
    pub fn consumer(&self, name: &str, kind: &'static str) -> ConsumerMetrics {
        let labels = vec![
            metrics::Label::new("consumer", name.to_owned()),
            metrics::Label::from_static_parts("kind", kind),
        ];
        let counter = |metric: &'static str| {
            self.recorder
                .register_counter(&Key::from_parts(metric, labels.clone()), &METADATA)
        };
        let gauge = |metric: &'static str| {
            self.recorder
                .register_gauge(&Key::from_parts(metric, labels.clone()), &METADATA)
        };
        let health = {
            let mut consumers = self
                .consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match consumers.iter().find(|c| c.name == name) {
                Some(health) => health.clone(),
                None => {
                    let health = Arc::new(ConsumerHealth {
                        name: name.to_owned(),
                        kind,
                        source: AtomicU8::new(SOURCE_UNCHECKED),
                        lag: AtomicU64::new(0),
                    });
                    consumers.push(health.clone());
                    health
                }
            }
        };
        ConsumerMetrics {
            health,
            processed: counter(CONSUMER_COUNTERS[0].0),
            published: counter(CONSUMER_COUNTERS[1].0),
            duplicates: counter(CONSUMER_COUNTERS[2].0),
            dead_lettered: counter(CONSUMER_COUNTERS[3].0),
            retries: counter(CONSUMER_COUNTERS[4].0),
            lag: gauge(CONSUMER_GAUGES[0].0),
            oldest_age: gauge(CONSUMER_GAUGES[1].0),
            source_up: gauge(CONSUMER_GAUGES[2].0),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.increment(1.0);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections.decrement(1.0);
    }
    pub(crate) fn subscription_added(&self) {
        self.subscriptions.increment(1.0);
    }
    pub(crate) fn subscription_removed(&self) {
        self.subscriptions.decrement(1.0);
    }
    pub(crate) fn event_published(&self) {
        self.events_published.increment(1);
    }
    pub(crate) fn events_fanned_out(&self, delivered: u64) {
        if delivered > 0 {
            self.events_delivered.increment(delivered);
        }
    }
    pub(crate) fn slow_consumer_closed(&self) {
        self.slow_consumer_closes.increment(1);
    }
    pub(crate) fn auth_failed(&self) {
        self.auth_failures.increment(1);
    }
    /// An event was compressed for permessage-deflate.
    pub(crate) fn deflated_event(&self) {
        self.ws_deflates.increment(1);
    }
    /// A compressed event frame of `plain` bytes (`sent` compressed) was written.
    pub(crate) fn deflated_frame_written(&self, plain: usize, sent: usize) {
        self.ws_deflated_frames.increment(1);
        self.ws_deflated_bytes_in.increment(plain as u64);
        self.ws_deflated_bytes_out.increment(sent as u64);
    }
    pub(crate) fn written(&self, latency: Duration) {
        self.publish_to_write.record(latency.as_secs_f64());
    }
    pub(crate) fn recovery(&self, outcome: Result<(), RecoveryFailure>) {
        match outcome {
            Ok(()) => self.recovered.increment(1),
            Err(failure) => self.recovery_failed[failure as usize].increment(1),
        }
    }
    pub(crate) fn socketio_session_opened(&self) {
        self.socketio_sessions.increment(1.0);
    }
    pub(crate) fn socketio_session_closed(&self) {
        self.socketio_sessions.decrement(1.0);
    }
    /// A session waiting to join was closed for a new one.
    pub(crate) fn socketio_pending_closed(&self) {
        self.socketio_pending_closes.increment(1);
    }
    pub(crate) fn sse_stream_opened(&self) {
        self.sse_streams.increment(1.0);
    }
    pub(crate) fn sse_stream_closed(&self) {
        self.sse_streams.decrement(1.0);
    }
    pub(crate) fn poll_answered(&self) {
        self.polls.increment(1);
    }
    pub(crate) fn poll_waiting(&self, waiting: bool) {
        if waiting {
            self.polls_waiting.increment(1.0);
        } else {
            self.polls_waiting.decrement(1.0);
        }
    }
    pub(crate) fn http_request(&self) {
        self.http_requests.increment(1);
    }
}

const CONSUMER_COUNTERS: [(&str, &str); 5] = [
    (
        "tidings_consumer_processed_total",
        "Messages a consumer finished (placed, skipped or dead-lettered).",
    ),
    (
        "tidings_consumer_published_total",
        "Events a consumer published (one per channel).",
    ),
    (
        "tidings_consumer_duplicates_total",
        "Publishes a consumer dropped because the event id was seen within its idempotency window.",
    ),
    (
        "tidings_consumer_dead_lettered_total",
        "Messages a consumer moved to its dead-letter.",
    ),
    (
        "tidings_consumer_retries_total",
        "Publish attempts a consumer retried after a transient failure (engine unavailable).",
    ),
];

const CONSUMER_GAUGES: [(&str, &str); 3] = [
    (
        "tidings_consumer_lag",
        "Messages waiting for a consumer: stream entries not yet delivered to the group or not acknowledged, unpublished outbox rows.",
    ),
    (
        "tidings_consumer_oldest_age_seconds",
        "Age of a consumer's oldest unprocessed message (0 when none).",
    ),
    (
        "tidings_consumer_source_up",
        "1 while the consumer's source (Redis or PostgreSQL) answers its once-a-second backlog check, 0 while it does not (lag and age then keep their last value).",
    ),
];

/// One consumer's metrics (cheap to clone).
#[derive(Clone)]
pub struct ConsumerMetrics {
    health: Arc<ConsumerHealth>,
    processed: Counter,
    published: Counter,
    duplicates: Counter,
    dead_lettered: Counter,
    retries: Counter,
    lag: Gauge,
    oldest_age: Gauge,
    source_up: Gauge,
}

impl ConsumerMetrics {
    /// `count` messages finished: acknowledged or committed as placed,
    /// skipped or dead-lettered.
    pub(crate) fn processed(&self, count: usize) {
        self.processed.increment(count as u64);
    }
    pub(crate) fn published(&self) {
        self.published.increment(1);
    }
    pub(crate) fn duplicate(&self) {
        self.duplicates.increment(1);
    }
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }
    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }
    pub(crate) fn backlog(&self, lag: u64, oldest_age: Duration) {
        self.lag.set(lag as f64);
        self.oldest_age.set(oldest_age.as_secs_f64());
        self.health.lag.store(lag, Ordering::Relaxed);
    }
    /// Whether the last backlog check could read the source.
    pub(crate) fn source_up(&self, up: bool) {
        self.source_up.set(if up { 1.0 } else { 0.0 });
        let source = if up { SOURCE_UP } else { SOURCE_DOWN };
        self.health.source.store(source, Ordering::Relaxed);
    }
}

const SOURCE_UNCHECKED: u8 = 0;
const SOURCE_UP: u8 = 1;
const SOURCE_DOWN: u8 = 2;

/// One consumer's state for `/health`: its source as of the last
/// once-a-second backlog check, and its lag then.
#[derive(Debug)]
pub struct ConsumerHealth {
    /// The consumer's name.
    pub name: String,
    /// `redis_stream` or `postgres_outbox`.
    pub kind: &'static str,
    source: AtomicU8,
    lag: AtomicU64,
}

impl ConsumerHealth {
    /// Whether the source answered the last check; `None` before the first.
    pub fn source_up(&self) -> Option<bool> {
        match self.source.load(Ordering::Relaxed) {
            SOURCE_UP => Some(true),
            SOURCE_DOWN => Some(false),
            _ => None,
        }
    }

    /// Messages waiting, as of the last check that could read the source.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }
}

/// Why a `since` could not be recovered (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryFailure {
    /// The channel's history was reset: another epoch.
    EpochChanged = 0,
    /// Events after `since` have left history (trimmed or expired).
    HistoryGone = 1,
    /// `since.offset` is beyond the channel's last offset.
    OffsetAhead = 2,
}

impl RecoveryFailure {
    const ALL: [Self; 3] = [Self::EpochChanged, Self::HistoryGone, Self::OffsetAhead];

    /// The reason as sent to clients and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::HistoryGone => "history_gone",
            Self::OffsetAhead => "offset_ahead",
        }
    }
}
