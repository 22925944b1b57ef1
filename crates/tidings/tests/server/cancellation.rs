//! A client that goes away mid-subscribe drops its request's future at an
//! await (an SSE stream still opening, a long poll joining its channel). What
//! the subscribe had done by then must be undone: a connection left among a
//! channel's subscribers, or a channel the node follows with nobody on it,
//! would stay until the node stops (and, on Redis, buffer its events).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tidings::config::EngineSettings;
use tidings::engine::presence::{ClientPresence, MemoryPresence, PresenceChange, PresenceStore};
use tidings::engine::{Engine, EngineError};
use tidings::protocol::messages::PresenceMember;
use tidings::protocol::{ChannelName, PresenceStatus};
use tidings::Tidings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::faulty_broker::FaultyBroker;
use crate::support::*;

async fn stalling_server() -> (TestServer, Arc<FaultyBroker>) {
    let mut engine = Engine::memory(&EngineSettings::default(), "stalling");
    let broker = FaultyBroker::wrap(engine.broker);
    engine.broker = broker.clone();
    let tidings = Tidings::with_engine(base_config(), engine).expect("valid test config");
    (TestServer::with_tidings(tidings).await, broker)
}

/// Sends `GET path` and its headers, reads the response's head, and gives
/// the socket back (its body still to come).
async fn request_head(server: &TestServer, path: &str) -> tokio::net::TcpStream {
    request_head_text(server, path).await.0
}

/// [`request_head`], with the head's text.
async fn request_head_text(server: &TestServer, path: &str) -> (tokio::net::TcpStream, String) {
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(WAIT, socket.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(read, 1, "closed before the head: {head:?}");
        head.push(byte[0]);
    }
    (socket, String::from_utf8(head).unwrap())
}

/// Resets `socket` (RST, as a browser tab that is killed).
fn reset(socket: tokio::net::TcpStream) {
    let socket = socket.into_std().unwrap();
    socket2::SockRef::from(&socket)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(socket);
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_sse_stream_dropped_while_its_node_subscribes_leaves_no_followed_channel() {
    let (server, broker) = stalling_server().await;
    let token = token("u1", &["acme"], &[]);
    let path = format!("/sse?channel=workspace:acme:stall-node&token={token}");
    let socket = request_head(&server, &path).await;
    // The stream's body is subscribing the node (never completing) now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset(socket);
    until(
        "the node never unsubscribed the channel it began to follow",
        || broker.unsubscribed_from("workspace:acme:stall-node"),
    )
    .await;
    server
        .wait_for_metric("tidings_sse_streams", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(server.metric("tidings_subscriptions").await, 0.0);
}

#[tokio::test]
async fn an_sse_stream_dropped_while_reading_history_leaves_no_subscriber() {
    let (server, _broker) = stalling_server().await;
    let token = token("u1", &["acme"], &[]);
    let path = format!("/sse?channel=workspace:acme:stall-history&token={token}");
    let socket = request_head(&server, &path).await;
    // Taken in by the hub, then stuck reading history.
    server
        .wait_for_metric("tidings_subscriptions", WAIT, |n| n == 1.0)
        .await;
    reset(socket);
    server
        .wait_for_metric("tidings_subscriptions", WAIT, |n| n == 0.0)
        .await;
    assert_eq!(server.metric("tidings_channels").await, 0.0);
}

#[tokio::test]
async fn a_long_poll_dropped_while_its_node_subscribes_leaves_no_followed_channel() {
    let (server, broker) = stalling_server().await;
    let token = token("u1", &["acme"], &[]);
    let path = format!("/events?channel=workspace:acme:stall-node&wait=30&token={token}");
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset(socket);
    until(
        "the node never unsubscribed the channel it began to follow",
        || broker.unsubscribed_from("workspace:acme:stall-node"),
    )
    .await;
    assert_eq!(server.metric("tidings_subscriptions").await, 0.0);
}

/// Memory presence whose first `leave` never completes.
#[derive(Default)]
struct StallFirstLeave {
    inner: MemoryPresence,
    stalled: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl PresenceStore for StallFirstLeave {
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
        self.inner.join(channel, client).await
    }
    async fn leave(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
    ) -> Result<Option<PresenceChange>, EngineError> {
        if !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.leave(channel, user, client).await
    }
    async fn set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
        status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        self.inner.set_status(channel, user, client, status).await
    }
    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        self.inner.members(channel).await
    }
}

#[tokio::test]
/// An SSE stream dropped while a refresh revokes one of its channels (the
/// presence leave in flight) is not left among the channel's subscribers:
/// the channel stays listed until every step of its end is done.
async fn an_sse_stream_dropped_while_a_refresh_revokes_a_channel_leaves_no_subscriber() {
    let mut engine = Engine::memory(&EngineSettings::default(), "f1");
    let presence = Arc::new(StallFirstLeave::default());
    engine.presence = presence.clone();
    let tidings = Tidings::with_engine(base_config(), engine).expect("valid test config");
    let server = TestServer::with_tidings(tidings).await;
    let full = token("u1", &["acme"], &[]);
    let mut stream =
        crate::http_transports::SseStream::open(&server, "channel=workspace:acme", &full).await;
    let client = stream.expect("connected").await.json()["client"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.expect("subscribed").await;
    assert_eq!(server.metric("tidings_subscriptions").await, 1.0);
    // A refresh that revokes workspace:acme: the stream leaves presence (stalls).
    let fewer = token("u1", &[], &[]);
    let refresh = serde_json::json!({"type": "refresh", "id": 1, "token": fewer});
    let server = Arc::new(server);
    // Answered once applied: not while the stream is stuck in the leave.
    let refreshed = tokio::spawn({
        let (server, full, client) = (server.clone(), full.clone(), client.clone());
        async move { server.http_request(&full, Some(&client), refresh).await }
    });
    until("the stream began to leave presence", || {
        presence.stalled.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    drop(stream);
    server
        .wait_for_metric("tidings_sse_streams", WAIT, |n| n == 0.0)
        .await;
    let (status, reply) = tokio::time::timeout(WAIT, refreshed)
        .await
        .expect("answered once the stream ended")
        .unwrap();
    assert_eq!(
        (status, &reply["code"]),
        (400, &serde_json::json!("bad_request")),
        "the refresh never completed: {reply}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.metric("tidings_subscriptions").await,
        0.0,
        "the dropped stream is still among workspace:acme's subscribers"
    );
}

/// A `status` over `POST /request` is answered once the named stream has
/// applied it: here the stream is stuck opening, so the answer waits, and
/// when the stream goes away instead, it says so (not a 200 for a status
/// that never took effect).
#[tokio::test]
async fn a_status_for_a_stream_that_ends_before_taking_it_is_not_answered_ok() {
    let (server, _broker) = stalling_server().await;
    let token = token("u1", &["acme"], &[]);
    let path = format!("/sse?channel=workspace:acme:stall-history&token={token}");
    let (socket, head) = request_head_text(&server, &path).await;
    let client = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-tidings-client")
                .then(|| value.trim().to_owned())
        })
        .expect("the stream names its connection");
    server
        .wait_for_metric("tidings_subscriptions", WAIT, |n| n == 1.0)
        .await;
    let server = Arc::new(server);
    let status = tokio::spawn({
        let (server, token, client) = (server.clone(), token.clone(), client.clone());
        async move {
            server
                .http_request(
                    &token,
                    Some(&client),
                    serde_json::json!({"type": "status", "id": 1, "status": "busy"}),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !status.is_finished(),
        "answered before the stream took the status"
    );
    reset(socket);
    let (code, reply) = tokio::time::timeout(WAIT, status)
        .await
        .expect("answered once the stream ended")
        .unwrap();
    assert_eq!(code, 400, "{reply}");
    assert_eq!(reply["code"], "bad_request");
    assert_eq!(
        reply["message"],
        format!("stream {client} has ended"),
        "{reply}"
    );
}
