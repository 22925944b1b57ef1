//! The WebSocket close handshake in every direction (RFC 6455 §5.5.1, §7):
//! client-initiated, server-initiated, before authentication, and towards a
//! slow consumer that resumes reading.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Sends Close 1000 "bye" and returns the frame the server answers with and how
/// long it took.
async fn close_and_read_reply(client: &mut Client) -> (Option<Message>, Duration) {
    let sent = Instant::now();
    client
        .ws
        .send(Message::Close(Some(CloseFrame {
            code: WireCloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, client.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (Some(Message::Close(frame)), sent.elapsed())
            }
            // Anything the server had already sent (a ping) may come first.
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) | Err(_) => return (None, sent.elapsed()),
        }
    }
}

fn close_code(reply: &Option<Message>) -> Option<u16> {
    match reply {
        Some(Message::Close(Some(frame))) => Some(u16::from(frame.code)),
        _ => None,
    }
}

#[tokio::test]
async fn client_close_is_answered_with_a_close_frame() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let (reply, took) = close_and_read_reply(&mut client).await;
    assert_eq!(close_code(&reply), Some(1000), "reply: {reply:?}");
    assert!(took < Duration::from_millis(100), "answered after {took:?}");
    // Then the server closes TCP.
    let end = tokio::time::timeout(WAIT, client.ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "after the Close: {end:?}"
    );
    // And the connection is gone from the hub.
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
}

#[tokio::test]
async fn client_close_before_auth_is_answered_with_a_close_frame() {
    let server = TestServer::start().await;
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut client = Client::from_stream(ws).await;
    let (reply, took) = close_and_read_reply(&mut client).await;
    assert_eq!(close_code(&reply), Some(1000), "reply: {reply:?}");
    assert!(took < Duration::from_millis(100), "answered after {took:?}");
}

#[tokio::test]
async fn server_close_waits_for_the_clients_close_then_ends_tcp() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let (status, body) = server
        .api(
            "/api/disconnect",
            json!({"user": "u1", "code": 4000, "reason": "move"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4000);
    assert_eq!(closed.disconnect.unwrap()["code"], 4000);
    // tokio-tungstenite answered the Close; the server then ends TCP (the
    // stream ends instead of erroring on a reset).
    let end = tokio::time::timeout(WAIT, client.ws.next()).await;
    assert!(matches!(end, Ok(None)), "after the handshake: {end:?}");
}

#[tokio::test]
async fn oversized_frame_before_auth_closes_with_4501() {
    let server = TestServer::start().await;
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut client = Client::from_stream(ws).await;
    // One frame declaring 65,537 bytes: one more than max_message_size.
    let text = "x".repeat(64 * 1024 + 1);
    let _ = client.ws.send(Message::Text(text.into())).await;
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4501);
    let disconnect = closed.disconnect.expect("disconnect before the Close");
    assert_eq!(disconnect["code"], 4501);
    assert_eq!(disconnect["reconnect"], false);
}

#[tokio::test]
async fn stalled_slow_consumer_reads_4002_when_it_resumes() {
    let mut config = base_config();
    config.connection.send_queue_bytes = 256 * 1024;
    config.connection.send_queue_messages = 10_000;
    let server = TestServer::with_config(config).await;
    let mut stalled = server.connect_user("slow", &["acme"]).await;
    stalled.subscribe("workspace:acme").await;

    // Flood the channel: 400 events of 64 KiB (25 MiB) are far more than the
    // socket buffers, the write buffer and the 256 KiB queue hold.
    let stalled_at = Instant::now();
    let payload = serde_json::value::to_raw_value(&"x".repeat(64 * 1024)).unwrap();
    let publisher = server.tidings.publisher();
    for _ in 0..400 {
        publisher
            .publish(tidings::PublishRequest::new(
                "workspace:acme",
                "big",
                payload.clone(),
            ))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    server
        .wait_for_metric("tidings_slow_consumer_closes_total", WAIT, |n| n == 1.0)
        .await;
    // Stay away 5 s in all, well past the old 2 s the close frame was given.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stalled_at.elapsed())).await;

    let closed = stalled.closed(Duration::from_secs(20)).await;
    assert_eq!(closed.code, 4002, "close frame after resuming");
    let disconnect = closed.disconnect.expect("disconnect before the Close");
    assert_eq!(disconnect["code"], 4002);
    assert_eq!(disconnect["reconnect"], true);
    // Reading on sends the client's Close reply, which ends the handshake.
    let end = tokio::time::timeout(WAIT, stalled.ws.next()).await;
    assert!(matches!(end, Ok(None)), "after the handshake: {end:?}");
    server
        .wait_for_metric("tidings_connections", WAIT, |n| n == 0.0)
        .await;
}

#[tokio::test]
async fn a_long_reason_is_cut_to_fit_the_close_frame_and_sent_whole_in_disconnect() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    let reason = "é".repeat(100);
    let (status, body) = server
        .api(
            "/api/disconnect",
            json!({"user": "u1", "code": 4000, "reason": reason}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut disconnect = None;
    let frame = loop {
        match tokio::time::timeout(WAIT, client.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                disconnect = Some(serde_json::from_str::<serde_json::Value>(&text).unwrap())
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close code"),
            other => panic!("expected a Close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), 4000);
    assert!(frame.reason.len() <= 123);
    assert!(reason.starts_with(frame.reason.as_str()));
    assert_eq!(disconnect.unwrap()["reason"], reason);
}
