//! A panic in a connection's task (a bug, or an embedding application's own
//! engine) ends that connection as the server would end it, and leaves
//! nothing behind: no registered connection, no presence entry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tidings::config::EngineSettings;
use tidings::engine::cluster::ControlHandler;
use tidings::engine::presence::{ClientPresence, MemoryPresence, PresenceChange, PresenceStore};
use tidings::engine::{
    Engine, EngineError, EventSink, HistoryPolicy, NewEvent, Publication, PublishOptions,
};
use tidings::protocol::messages::PresenceMember;
use tidings::protocol::{ChannelName, CloseCode, PresenceStatus};
use tidings::Tidings;
use tokio_tungstenite::tungstenite::Message;

use crate::faulty_broker::FaultyBroker;
use crate::http_transports::SseStream;
use crate::socketio;
use crate::support::*;

/// In-memory presence whose status changes panic, as a buggy store might, and
/// whose joins and member lists panic for channels ending in `:boom`.
#[derive(Default)]
struct PanickingPresence(MemoryPresence);

#[async_trait]
impl PresenceStore for PanickingPresence {
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
        assert!(
            !channel.as_str().ends_with(":boom"),
            "test presence store: join panics"
        );
        self.0.join(channel, client).await
    }
    async fn leave(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
    ) -> Result<Option<PresenceChange>, EngineError> {
        self.0.leave(channel, user, client).await
    }
    async fn set_status(
        &self,
        _channel: &ChannelName,
        _user: &str,
        _client: &str,
        _status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        panic!("test presence store: set_status panics");
    }
    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        assert!(
            !channel.as_str().ends_with(":boom"),
            "test presence store: members panics"
        );
        self.0.members(channel).await
    }
}

async fn server_whose_status_changes_panic() -> TestServer {
    let config = base_config();
    let mut engine = Engine::memory(&EngineSettings::default(), "panics");
    engine.presence = Arc::new(PanickingPresence::default());
    engine.broker = FaultyBroker::wrap(engine.broker);
    TestServer::with_tidings(Tidings::with_engine(config, engine).expect("valid test config")).await
}

/// Reads `ws` until the server ends it (within `WAIT`), with no text frame
/// starting with `prefix` on the way.
async fn ends_without(ws: &mut socketio::Ws, prefix: &str) {
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = ws.next().await {
            assert!(
                !frame.to_text().is_ok_and(|text| text.starts_with(prefix)),
                "{frame:?}"
            );
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket stayed open");
}

async fn members(server: &TestServer, channel: &str) -> usize {
    let (status, body) = server
        .api_get(&format!("/api/presence?channel={channel}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["members"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_websocket_whose_task_panics_is_closed_with_4000_and_unregistered() {
    let server = server_whose_status_changes_panic().await;
    let mut watcher = server.connect_user("watcher", &["acme"]).await;
    watcher.subscribe("workspace:acme").await;
    let mut alice = server.connect_user("alice", &["acme"]).await;
    alice.subscribe("workspace:acme").await;
    assert_eq!(members(&server, "workspace:acme").await, 2);
    assert_eq!(server.metric("tidings_connections").await, 2.0);

    alice
        .send(json!({"type": "status", "status": "away", "id": 1}))
        .await;
    let closed = alice.closed(WAIT).await;
    assert_eq!(closed.code, 4000, "{:?}", closed.disconnect);
    let disconnect = closed.disconnect.expect("a disconnect message first");
    assert_eq!(disconnect["reason"], "internal server error; reconnect");
    assert_eq!(disconnect["reconnect"], true);

    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 1.0)
        .await;
    assert_eq!(members(&server, "workspace:acme").await, 1);
    // The others are served as before.
    server.publish("workspace:acme", "after", json!({})).await;
    let event = watcher
        .wait_for("the event after the panic", |v| v["event"] == "after")
        .await;
    assert_eq!(event["channel"], "workspace:acme");
}

#[tokio::test]
async fn a_socketio_socket_whose_task_panics_is_closed_and_unregistered() {
    let server = server_whose_status_changes_panic().await;
    let (mut ws, _) =
        socketio::connect(&server, json!({"token": token("bob", &["acme"], &[])})).await;
    // On `workspace:acme` since connecting (its token's workspace), and one more.
    socketio::subscribe_for_position(&mut ws, 1, "workspace:acme:orders")
        .await
        .expect("subscribed");
    assert_eq!(members(&server, "workspace:acme").await, 1);
    assert_eq!(server.metric("tidings_connections").await, 1.0);

    ws.send(Message::text(r#"422["presence.update",{"status":"away"}]"#))
        .await
        .unwrap();
    // The server ends the transport, with no acknowledgement.
    ends_without(&mut ws, "432").await;
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(members(&server, "workspace:acme").await, 0);
    assert_eq!(server.metric("tidings_socketio_sessions").await, 0.0);
}

#[tokio::test]
async fn an_sse_stream_whose_session_panics_ends_and_is_unregistered() {
    let server = server_whose_status_changes_panic().await;
    let token = token("carol", &["acme"], &[]);
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &token).await;
    let client = stream.expect("connected").await.json()["client"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.expect("subscribed").await;
    assert_eq!(members(&server, "workspace:acme").await, 1);

    // The stream's session applies the status, and panics: the status never
    // took effect, and the request says the stream ended.
    let status = json!({"type": "status", "id": 1, "status": "away"});
    let (code, reply) = server.http_request(&token, Some(&client), status).await;
    assert_eq!(code, 400, "{reply}");
    assert_eq!(reply["message"], format!("stream {client} has ended"));
    let next = stream.next(WAIT).await;
    assert!(
        next.is_none() && stream.ended,
        "the stream ends (EventSource reconnects)"
    );
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(members(&server, "workspace:acme").await, 0);
}

#[tokio::test]
async fn a_request_whose_handler_panics_is_answered_500() {
    let server = server_whose_status_changes_panic().await;
    let (status, body) = server.api_get("/api/presence?channel=workspace:boom").await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": {"code": "internal", "message": "internal server error"}})
    );
    // `POST /request` answers in its own (the WebSocket) error form.
    let presence = json!({"type": "presence", "id": 7, "channel": "workspace:boom"});
    let (status, body) = server
        .http_request(&token("dave", &["boom"], &[]), None, presence)
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"type": "error", "code": "internal", "message": "internal server error"})
    );
    // The server goes on serving.
    assert_eq!(members(&server, "workspace:acme").await, 0);
}

/// A subscribe cut short by a panic after the hub took the connection in
/// (the broker's history read) is undone too: the connection's own list never
/// recorded that channel.
#[tokio::test]
async fn a_subscribe_cut_short_by_a_panic_leaves_no_subscriber_behind() {
    let server = server_whose_status_changes_panic().await;
    let mut dana = server.connect_user("dana", &["boom"]).await;
    dana.send(json!({"type": "subscribe", "channel": "workspace:boom", "id": 1}))
        .await;
    assert_eq!(dana.closed(WAIT).await.code, 4000);
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(server.metric("tidings_subscriptions").await, 0.0);
    assert_eq!(server.metric("tidings_channels").await, 0.0);
}

/// A Socket.IO socket whose engine panics while it joins its rooms on connect
/// is released as well.
#[tokio::test]
async fn a_socketio_connect_cut_short_by_a_panic_is_released() {
    let server = server_whose_status_changes_panic().await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"token": token("erin", &["boom"], &[])});
    ws.send(Message::text(format!("40{auth}"))).await.unwrap();
    ends_without(&mut ws, "40{").await;
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(server.metric("tidings_subscriptions").await, 0.0);
    assert_eq!(server.metric("tidings_socketio_sessions").await, 0.0);
}

/// A consumed message whose publish panics is dead-lettered with the reason,
/// and the consumer goes on with the next one (it used to end the consumer's
/// task: nothing more was consumed until a restart).
#[tokio::test]
async fn a_consumed_message_whose_publish_panics_is_dead_lettered() {
    let redis = RedisServer::start().await;
    let mut config = base_config();
    config.consumers = vec![tidings::consumers::ConsumerConfig {
        name: "bus".into(),
        redis_url: Some(redis.url()),
        streams: vec!["app-events".into()],
        block: Duration::from_millis(100),
        ..Default::default()
    }];
    let mut engine = Engine::memory(&EngineSettings::default(), "panics");
    engine.broker = FaultyBroker::wrap(engine.broker);
    let tidings = Tidings::with_engine(config, engine).expect("valid test config");
    let consumers = tidings::consumers::ConsumerSet::start(&tidings);
    let server = TestServer::with_tidings(tidings).await;
    let mut watcher = server.connect_user("watcher", &["acme"]).await;
    watcher.subscribe("workspace:acme").await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The group is made when the consumer starts, reading only what comes after.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("app-events")
            .query_async(&mut conn)
            .await;
        if groups.is_ok_and(|groups| !groups.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no consumer group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for event in ["boom", "after"] {
        let message = json!({"method": "publish", "payload": {
            "channel": "workspace:acme", "event": event, "data": {}}});
        let _: String = redis::cmd("XADD")
            .arg("app-events")
            .arg("*")
            .arg("message")
            .arg(message.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let event = watcher
        .wait_for("the message after the panic", |v| v["type"] == "event")
        .await;
    assert_eq!(event["event"], "after");
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("app-events:dead-letter")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    let reason: String = dead.ids[0].get("reason").unwrap();
    assert_eq!(reason, "internal error while placing the message");
    let dead_lettered =
        r#"tidings_consumer_dead_lettered_total{consumer="bus",kind="redis_stream"}"#;
    assert_eq!(server.metric(dead_lettered).await, 1.0);
    consumers.stop(WAIT).await;
}

/// An event sink that panics at the first event of a channel ending in
/// `:boom`, and the first time it is asked whether such a channel has
/// subscribers (then says no), and records everything else it is handed.
#[derive(Default)]
struct PanickingSink {
    panicked: std::sync::atomic::AtomicBool,
    asked: std::sync::atomic::AtomicBool,
    delivered: std::sync::Mutex<Vec<(String, u64)>>,
    resubscribed: std::sync::Mutex<Vec<String>>,
}

impl EventSink for PanickingSink {
    fn deliver(&self, publication: &Arc<Publication>) {
        let channel = publication.channel.as_str().to_owned();
        if channel.ends_with(":boom") && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("test sink: deliver panics");
        }
        self.delivered
            .lock()
            .unwrap()
            .push((channel, publication.offset));
    }
    fn has_subscribers(&self, channel: &ChannelName) -> bool {
        if !channel.as_str().ends_with(":boom") {
            return true;
        }
        assert!(
            self.asked.swap(true, Ordering::SeqCst),
            "test sink: has_subscribers panics"
        );
        false
    }
    fn deliver_presence(&self, _channel: &ChannelName, _text: &Utf8Bytes) {}
    fn resubscribe(&self, channel: &ChannelName) {
        self.resubscribed
            .lock()
            .unwrap()
            .push(channel.as_str().to_owned());
    }
}

/// Event `n` as an engine takes it, straight from a test.
fn event(n: u64) -> NewEvent {
    NewEvent {
        id: format!("e_{n}"),
        event: "x".into(),
        ts: "t".into(),
        data: serde_json::value::RawValue::from_string(n.to_string()).unwrap(),
        meta: None,
        audience: None,
        exclude_client: None,
    }
}

/// Publish options keeping `size` events of history.
fn keeping(size: usize) -> PublishOptions {
    PublishOptions {
        history: HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(60),
    }
}

/// A panic in the Redis engine's delivery task (here the sink it hands events
/// to) does not stop the node's deliveries: later events still arrive, and
/// every followed channel's subscribers are told to resubscribe, since an
/// event may have been lost on the way (it used to end the task: the node
/// silently delivered nothing more from Redis).
#[tokio::test]
async fn a_panic_in_the_redis_delivery_task_does_not_stop_deliveries() {
    let redis = RedisServer::start().await;
    let settings = EngineSettings {
        redis_url: redis.url(),
        ..EngineSettings::default()
    };
    let engine = Engine::redis(&settings, "panics").expect("valid settings");
    let sink = Arc::new(PanickingSink::default());
    engine.broker.attach(sink.clone());
    let boom = ChannelName::parse("workspace:boom").unwrap();
    let fine = ChannelName::parse("workspace:fine").unwrap();
    for channel in [&boom, &fine] {
        engine.broker.subscribe_node(channel).await.unwrap();
    }
    let options = keeping(10);
    engine
        .broker
        .publish(&boom, event(1), &options)
        .await
        .unwrap();
    engine
        .broker
        .publish(&fine, event(2), &options)
        .await
        .unwrap();
    engine
        .broker
        .publish(&boom, event(3), &options)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.delivered.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered after the panic: {:?}",
            sink.delivered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *sink.delivered.lock().unwrap(),
        [
            ("workspace:fine".to_owned(), 1),
            ("workspace:boom".to_owned(), 2)
        ]
    );
    let mut resubscribed = sink.resubscribed.lock().unwrap().clone();
    resubscribed.sort();
    assert_eq!(resubscribed, ["workspace:boom", "workspace:fine"]);
}

/// Counts this node's connections as 7, except that it panics the first time
/// it is asked (the heartbeat asks at every beat).
#[derive(Default)]
struct PanickingCount(std::sync::atomic::AtomicBool);

#[async_trait]
impl ControlHandler for PanickingCount {
    fn disconnect_user(&self, _user: &str, _code: CloseCode, _reason: Option<String>) -> usize {
        0
    }
    async fn unsubscribe_user(&self, _user: &str, _channel: &ChannelName, _reason: &str) -> usize {
        0
    }
    fn connection_count(&self) -> usize {
        assert!(
            self.0.swap(true, Ordering::SeqCst),
            "test control handler: connection_count panics"
        );
        7
    }
}

/// A panic in the Redis engine's heartbeat does not stop it (the other nodes
/// would take this one for dead and remove its users' presence): the beat
/// starts again and the other nodes see this one with its connections.
#[tokio::test]
async fn a_panic_in_the_redis_heartbeat_does_not_stop_it() {
    let redis = RedisServer::start().await;
    let settings = EngineSettings {
        redis_url: redis.url(),
        node_ttl: Duration::from_millis(600),
        ..EngineSettings::default()
    };
    let engine = Engine::redis(&settings, "beating").expect("valid settings");
    let handler = Arc::new(PanickingCount::default());
    engine.cluster.attach(handler.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    // Listing the nodes asks too: wait for the heartbeat's panic first.
    while !handler.0.load(Ordering::SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another node sees what the heartbeat writes (a node lists itself from memory).
    let observer = Engine::redis(&settings, "observer").expect("valid settings");
    loop {
        let nodes = observer.cluster.nodes().await.unwrap_or_default();
        if nodes
            .iter()
            .any(|node| node.name == "beating" && node.connections == 7)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat stopped: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The memory engine's sweeper goes on after a sweep that panics (here the
/// sink asked whether an idle channel still has subscribers): idle channels
/// are still reclaimed and history still expires (it used to end the sweeper).
#[tokio::test]
async fn a_panic_in_a_memory_sweep_does_not_stop_the_sweeper() {
    let settings = EngineSettings {
        sweep_interval: Duration::from_millis(20),
        position_ttl: Duration::from_millis(50),
        ..EngineSettings::default()
    };
    let engine = Engine::memory(&settings, "sweeping");
    let sink = Arc::new(PanickingSink::default());
    // Only the sweep's question panics here.
    sink.panicked.store(true, Ordering::SeqCst);
    engine.broker.attach(sink.clone());
    // Known to the engine once published to; idle once its history is gone
    // (none is kept) and its position outlived.
    let channel = ChannelName::parse("workspace:boom").unwrap();
    engine
        .broker
        .publish(&channel, event(1), &keeping(0))
        .await
        .unwrap();
    assert_eq!(engine.broker.channel_count(), 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while engine.broker.channel_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle channel was never reclaimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sink.asked.load(Ordering::SeqCst),
        "the sweep never asked the sink"
    );
}
