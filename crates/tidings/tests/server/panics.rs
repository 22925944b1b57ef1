//! A panic in a connection's task (a bug, or an embedding application's own
//! engine) ends that connection as the server would end it, and leaves
//! nothing behind: no registered connection, no presence entry.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tidings::config::EngineSettings;
use tidings::engine::presence::{ClientPresence, MemoryPresence, PresenceChange, PresenceStore};
use tidings::engine::{Engine, EngineError};
use tidings::protocol::messages::PresenceMember;
use tidings::protocol::{ChannelName, PresenceStatus};
use tidings::Tidings;
use tokio_tungstenite::tungstenite::Message;

use crate::http_transports::SseStream;
use crate::socketio;
use crate::support::*;

/// In-memory presence whose status changes panic, as a buggy store might, and
/// whose member lists panic for channels ending in `:boom`.
#[derive(Default)]
struct PanickingPresence(MemoryPresence);

#[async_trait]
impl PresenceStore for PanickingPresence {
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
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
    TestServer::with_tidings(Tidings::with_engine(config, engine).expect("valid test config")).await
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
    // The server ends the transport: the stream ends (no acknowledgement).
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = ws.next().await {
            assert!(
                !frame.to_text().is_ok_and(|text| text.starts_with("432")),
                "acknowledged: {frame:?}"
            );
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket stayed open");
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

    // The stream's session applies the status, and panics.
    let response = server
        .http
        .post(server.url("/request"))
        .bearer_auth(&token)
        .header("x-tidings-client", client.as_str())
        .json(&json!({"type": "status", "id": 1, "status": "away"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
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
    let response = server
        .http
        .post(server.url("/request"))
        .bearer_auth(token("dave", &["boom"], &[]))
        .json(&json!({"type": "presence", "id": 7, "channel": "workspace:boom"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"type": "error", "code": "internal", "message": "internal server error"})
    );
    // The server goes on serving.
    assert_eq!(members(&server, "workspace:acme").await, 0);
}
