//! Heartbeats, token expiry and refresh, slow consumers, limits and shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn client_ping_gets_pong() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    let pong = client.request(json!({"type": "ping"}), 5).await;
    assert_eq!(pong, json!({"type": "pong", "id": 5}));
}

#[tokio::test]
async fn silent_client_is_closed_with_4001() {
    let mut config = base_config();
    config.connection.heartbeat = Duration::from_millis(200);
    config.connection.pong_timeout = Duration::from_millis(200);
    let server = TestServer::with_config(config).await;
    let client = server.connect_user("u1", &[]).await;
    // Read raw frames without answering pings.
    let (_sink, mut stream) = client.ws.split();
    let started = Instant::now();
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Text(t))) if t.as_str() == r#"{"type":"ping"}"# => pings += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    assert_eq!(pings, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn answering_pings_keeps_the_connection() {
    let mut config = base_config();
    config.connection.heartbeat = Duration::from_millis(100);
    config.connection.pong_timeout = Duration::from_millis(100);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    // `next` answers pings; after many heartbeats the connection still works.
    assert!(client.next(Duration::from_millis(800)).await.is_none());
    server
        .publish("workspace:acme", "still-here", json!({}))
        .await;
    assert_eq!(client.expect("event").await["event"], "still-here");
}

#[tokio::test]
async fn expired_token_closes_with_4003_unless_refreshed() {
    let server = TestServer::start().await;
    // exp is in whole seconds: a 2 s token expires 1–2 s from now.
    let mut lapsing = server
        .connect(&token_with_ttl("u1", &[], &[], Duration::from_secs(2)))
        .await;
    let mut refreshed = server
        .connect(&token_with_ttl(
            "u1",
            &["acme"],
            &[],
            Duration::from_secs(2),
        ))
        .await;
    let reply = refreshed
        .request(
            json!({"type": "refresh", "token": token("u1", &["acme"], &[])}),
            1,
        )
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    assert!(reply["expires_at"].as_str().unwrap().ends_with('Z'));

    let closed = lapsing.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, 4003);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);

    refreshed.subscribe("workspace:acme").await;
    server
        .publish("workspace:acme", "after-expiry", json!({}))
        .await;
    assert_eq!(refreshed.expect("event").await["event"], "after-expiry");
}

#[tokio::test]
async fn refresh_refuses_bad_or_foreign_tokens() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    let other_user = client
        .request(
            json!({"type": "refresh", "token": token("u2", &[], &[])}),
            1,
        )
        .await;
    assert_eq!(other_user["code"], "unauthorized");
    let garbage = client
        .request(json!({"type": "refresh", "token": "x.y.z"}), 2)
        .await;
    assert_eq!(garbage["code"], "unauthorized");
    let pong = client.request(json!({"type": "ping"}), 3).await;
    assert_eq!(pong["type"], "pong", "errors do not close the connection");
}

/// A refreshed token's claims govern what the connection keeps receiving:
/// channels it no longer allows end with an `unsubscribed` push, and
/// `audience` roles on delivery are the new token's.
#[tokio::test]
async fn refresh_with_fewer_rights_ends_subscriptions_and_applies_new_roles() {
    let server = TestServer::start().await;
    let mut client = server
        .connect(&token("u1", &["acme", "globex"], &["admin"]))
        .await;
    client.subscribe("workspace:acme").await;
    client.subscribe("workspace:globex").await;
    let admins_only = json!({"channel": "workspace:acme", "event": "for-admins", "data": 1,
        "audience": {"roles": ["admin"]}});
    assert_eq!(server.api("/api/publish", admins_only.clone()).await.0, 200);
    assert_eq!(client.expect("event").await["event"], "for-admins");

    client
        .send(json!({"type": "refresh", "id": 1, "token": token("u1", &["acme"], &[])}))
        .await;
    let revoked = client.expect("unsubscribed").await;
    assert_eq!(
        revoked,
        json!({"type": "unsubscribed", "channel": "workspace:globex", "reason": "permission_denied"})
    );
    let reply = client.expect("refreshed").await;
    assert_eq!(reply["id"], 1, "{reply}");

    // Neither the revoked channel nor the admins-only event reaches it; the
    // marker published last proves both were sent before it.
    server
        .publish("workspace:globex", "globex", json!({}))
        .await;
    assert_eq!(server.api("/api/publish", admins_only).await.0, 200);
    server.publish("workspace:acme", "marker", json!({})).await;
    let mut names = Vec::new();
    loop {
        let event = client.expect("event").await;
        names.push(event["event"].as_str().unwrap().to_owned());
        if event["event"] == "marker" {
            break;
        }
    }
    assert_eq!(names, ["marker"]);

    // The channel is gone from the connection: subscribing again is refused
    // by the new claims, and unsubscribing says it is not there.
    let again = client
        .request(
            json!({"type": "subscribe", "channel": "workspace:globex"}),
            2,
        )
        .await;
    assert_eq!(again["code"], "permission_denied", "{again}");
    let gone = client
        .request(
            json!({"type": "unsubscribe", "channel": "workspace:globex"}),
            3,
        )
        .await;
    assert_eq!(gone["code"], "not_subscribed", "{gone}");
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4002_and_memory_stays_bounded() {
    let mut config = base_config();
    config.connection.send_queue_bytes = 1024 * 1024;
    config.connection.send_queue_messages = 10_000;
    let server = TestServer::with_config(config).await;
    let mut stalled = server.connect_user("slow", &["acme"]).await;
    stalled.subscribe("workspace:acme").await;
    let mut healthy = server.connect_user("fast", &["acme"]).await;
    healthy.subscribe("workspace:acme").await;

    let before = rss_bytes();
    let payload = serde_json::value::to_raw_value(&"x".repeat(64 * 1024)).unwrap();
    let publisher = server.tidings.publisher();
    // 3,000 events of 64 KiB = ~190 MiB that an unbounded queue would hold.
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 3000 {
            match healthy.next(WAIT).await {
                Some(v) if v["type"] == "event" => n += 1,
                Some(_) => {}
                None => break,
            }
        }
        (n, healthy)
    });
    for _ in 0..3000 {
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
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 96 * 1024 * 1024,
        "RSS grew by {} MiB",
        grown / (1024 * 1024)
    );
    let (received, _healthy) = reader.await.unwrap();
    assert_eq!(received, 3000, "a client that keeps up gets everything");

    // The stalled client, once it reads, finds the close (or a reset).
    let closed = stalled.closed(Duration::from_secs(10)).await;
    assert!(
        closed.code == 4002 || closed.code == 1006,
        "code {}",
        closed.code
    );
    let deadline = Instant::now() + WAIT;
    while server.metric("tidings_connections").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "stalled connection was not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.metric("tidings_slow_consumer_closes_total").await,
        1.0
    );
}

#[tokio::test]
async fn per_user_connection_limit_closes_with_4503() {
    let mut config = base_config();
    config.connection.max_connections_per_user = 2;
    let server = TestServer::with_config(config).await;
    let _a = server.connect_user("u1", &[]).await;
    let _b = server.connect_user("u1", &[]).await;
    let _other = server.connect_user("u2", &[]).await;
    let url = format!("{}?token={}", server.ws_url(), token("u1", &[], &[]));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut third = Client::from_stream(ws).await;
    let closed = third.closed(WAIT).await;
    assert_eq!(closed.code, 4503);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
}

/// A long poll waiting when the node shuts down is answered at once (no
/// events, the channel's position) instead of being cut when the node exits;
/// one that arrives during the drain is answered without waiting.
#[tokio::test]
async fn shutdown_answers_waiting_long_polls() {
    let server = Arc::new(TestServer::start().await);
    server.publish("workspace:acme", "before", json!({})).await;
    let token = token("u1", &["acme"], &[]);
    let (_, first) = server.poll(&token, "channel=workspace:acme").await;
    let query = format!(
        "channel=workspace:acme&since=1&epoch={}&wait=30",
        first["epoch"].as_str().unwrap()
    );
    let waiting = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = server.poll(&token, &query).await;
            (reply, started.elapsed())
        })
    };
    server
        .wait_for_metric("tidings_polls_waiting", WAIT, |n| n >= 1.0)
        .await;
    let tidings = server.tidings.clone();
    let shutdown = tokio::spawn(async move { tidings.shutdown(Duration::from_secs(5)).await });
    let ((status, reply), took) = waiting.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["events"], json!([]), "{reply}");
    assert_eq!(reply["offset"], 1, "{reply}");
    assert!(
        took < Duration::from_secs(5),
        "answered at the shutdown: {took:?}"
    );
    let started = Instant::now();
    let (status, late) = server.poll(&token, "channel=workspace:acme&wait=30").await;
    assert_eq!((status, &late["offset"]), (200, &json!(1)), "{late}");
    assert!(started.elapsed() < Duration::from_secs(5));
    shutdown.await.unwrap();
}

/// An embedder's `shutdown(Duration::MAX)` panicked (a deadline past the
/// clock's range) after the 1012s, before the node left the cluster.
#[tokio::test]
async fn a_drain_too_long_to_count_waits_until_everyone_left() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    let tidings = server.tidings.clone();
    let shutdown = tokio::spawn(async move { tidings.shutdown(Duration::MAX).await });
    assert_eq!(client.closed(WAIT).await.code, 1012);
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returned once the client left")
        .expect("shutdown did not panic");
}

#[tokio::test]
async fn shutdown_sends_1012_to_everyone() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.connect_user(&format!("u{i}"), &[]).await);
    }
    let tidings = server.tidings.clone();
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { tidings.shutdown(Duration::from_secs(5)).await });
    for client in &mut clients {
        let closed = client.closed(WAIT).await;
        assert_eq!(closed.code, 1012);
        assert_eq!(
            closed.disconnect.unwrap(),
            json!({"type": "disconnect", "code": 1012, "reason": "server restarting", "reconnect": true})
        );
    }
    shutdown.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained early once everyone left"
    );
    assert_eq!(server.tidings.state().hub.connection_count(), 0);
}

/// `serve` ends within `shutdown_drain` of its signal even when an idle
/// keep-alive connection (a proxy's pool) and a WebSocket that never answers
/// the Close frame are both open: it used to add a second for the idle one.
#[tokio::test]
async fn serve_returns_within_the_drain_with_an_idle_keep_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = base_config();
    config.connection.shutdown_drain = Duration::from_millis(1000);
    let tidings = tidings::Tidings::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (fire, signal) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(tidings.clone().serve(listener, async move {
        let _ = signal.await;
    }));

    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let read = idle.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    // Connected, then never read again: the Close frame is never answered.
    let url = format!("ws://{addr}/ws?token={}", token("u1", &[], &[]));
    let (_deaf, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while tidings.state().hub.connection_count() == 0 {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    fire.send(()).unwrap();
    serving.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1400),
        "serve took {took:?} for a 1 s drain"
    );
}
