//! A corpus of bad input: each gets the contract's answer, never a panic, a hang
//! or another client's data.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn malformed_requests_get_bad_request_and_the_connection_lives() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let corpus: &[(&str, Option<serde_json::Value>)] = &[
        ("not json", None),
        ("", None),
        ("[]", None),
        ("null", None),
        ("42", None),
        (r#"{"id": 1}"#, Some(json!(1))),
        (r#"{"type": "bogus", "id": "x"}"#, Some(json!("x"))),
        (r#"{"type": 7, "id": 2}"#, Some(json!(2))),
        (r#"{"type": "subscribe", "id": 3}"#, Some(json!(3))),
        (
            r#"{"type": "subscribe", "id": 4, "channel": 12}"#,
            Some(json!(4)),
        ),
        (
            r#"{"type": "subscribe", "id": 5, "channel": "workspace:acme", "since": "yesterday"}"#,
            Some(json!(5)),
        ),
        (
            r#"{"type": "subscribe", "id": 6, "channel": "workspace:acme", "since": {"offset": -1, "epoch": "e"}}"#,
            Some(json!(6)),
        ),
        (
            r#"{"type": "publish", "id": 7, "channel": "workspace:acme"}"#,
            Some(json!(7)),
        ),
        (
            r#"{"type": "status", "id": 8, "status": "sleepy"}"#,
            Some(json!(8)),
        ),
        (
            r#"{"type": "subscribe", "id": 14, "channel": "workspace:acme", "since": [1, "e"]}"#,
            Some(json!(14)),
        ),
        (
            r#"{"type": "history", "id": 15, "channel": "workspace:acme", "since": [1, "e"]}"#,
            Some(json!(15)),
        ),
        (
            r#"{"type": "status", "id": 12, "status": {"away": null}}"#,
            Some(json!(12)),
        ),
        (
            r#"{"type": "status", "id": 13, "status": null}"#,
            Some(json!(13)),
        ),
        (
            r#"{"type": "auth", "id": 9, "token": "again"}"#,
            Some(json!(9)),
        ),
        (
            r#"{"type": "unsubscribe", "id": 10, "channel": "workspace:acme"}"#,
            Some(json!(10)),
        ),
        (r#"{"id": {"nested": true}, "type": "ping"}"#, None),
        (
            r#"{"type": "subscribe", "id": 11, "channel": "workspace:acme\u0000"}"#,
            Some(json!(11)),
        ),
    ];
    for (text, id) in corpus {
        client.send_text(text).await;
        let reply = client
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no reply to {text:?}"));
        assert_eq!(reply["type"], "error", "{text:?} → {reply}");
        let expected_code = if text.contains("unsubscribe") {
            "not_subscribed"
        } else {
            "bad_request"
        };
        assert_eq!(reply["code"], expected_code, "{text:?} → {reply}");
        assert_eq!(reply.get("id").cloned(), id.clone(), "{text:?} → {reply}");
        // A successful request in between resets the bad-request streak.
        let pong = client.request(json!({"type": "ping"}), 99).await;
        assert_eq!(pong["type"], "pong");
    }
}

#[tokio::test]
async fn huge_strings_and_names_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let long_channel = format!("workspace:{}", "a".repeat(300));
    let reply = client
        .request(json!({"type": "subscribe", "channel": long_channel}), 1)
        .await;
    assert_eq!(reply["code"], "bad_request");
    let reply = client.request(json!({"type": "subscribe", "channel": "workspace:acme", "since": {"offset": 1, "epoch": "x".repeat(10_000)}}), 2).await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["recovered"], false);
}

/// The read buffer is small (256 B by default: it is allocated per idle
/// connection); messages up to `max_message_size` still arrive whole, one
/// after another, large and small.
#[tokio::test]
async fn messages_up_to_max_message_size_are_read_whole() {
    let server = TestServer::start().await;
    let max = tidings::config::ConnectionSettings::default().max_message_size;
    let mut client = server.connect_user("u1", &["acme"]).await;
    for (id, size) in [(1, max - 200), (2, 300), (3, max / 2), (4, max - 200)] {
        let reply = client
            .request(json!({"type": "ping", "pad": "x".repeat(size)}), id)
            .await;
        assert_eq!(reply["type"], "pong", "ping of {size} bytes");
    }
}

#[tokio::test]
async fn oversized_message_closes_with_4501() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    let huge = json!({"type": "ping", "pad": "x".repeat(200 * 1024)}).to_string();
    let _ = client.ws.send(Message::Text(huge.into())).await;
    assert_eq!(client.closed(WAIT).await.code, 4501);
}

#[tokio::test]
async fn binary_frame_closes_with_4501() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    client
        .ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4501);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
}

#[tokio::test]
async fn too_many_bad_requests_in_a_row_close_with_4501() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &[]).await;
    // 20 get their error; the 21st closes.
    for _ in 0..21 {
        client.ws.send(Message::Text("nope".into())).await.unwrap();
    }
    for _ in 0..20 {
        assert_eq!(client.expect("error").await["code"], "bad_request");
    }
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4501);
    assert_eq!(closed.disconnect.unwrap()["code"], 4501);
}

#[tokio::test]
async fn a_rate_limited_request_ends_a_bad_request_streak() {
    let mut config = base_config();
    config.connection.max_bad_requests = 3;
    config.connection.requests_per_second = 1;
    config.connection.request_burst = 5;
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &[]).await;
    for _ in 0..5 {
        client.send(json!({"type": "ping"})).await;
        client.expect("pong").await;
    }
    // Three bad requests (the limiter does not count them), one limited
    // request, then three more bad ones: two streaks of three, no close.
    let bad = json!({"type": "nope"});
    for _ in 0..3 {
        client.send(bad.clone()).await;
        assert_eq!(client.expect("error").await["code"], "bad_request");
    }
    client.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(client.expect("error").await["code"], "rate_limited");
    for _ in 0..3 {
        client.send(bad.clone()).await;
        assert_eq!(client.expect("error").await["code"], "bad_request");
    }
    client.send(bad).await;
    assert_eq!(client.closed(WAIT).await.code, 4501);
}

#[tokio::test]
async fn thousands_of_subscribes_hit_the_channel_limit() {
    let mut config = base_config();
    config.connection.requests_per_second = 0;
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let limit = tidings::config::ConnectionSettings::default().max_channels;
    let total = 2000;
    for i in 0..total {
        let request =
            json!({"type": "subscribe", "id": i, "channel": format!("workspace:acme:items:{i}")});
        client.send(request).await;
    }
    let mut subscribed = 0;
    let mut limited = 0;
    while subscribed + limited < total {
        let reply = client.next(WAIT).await.expect("a reply to every subscribe");
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("subscribed"), _) => subscribed += 1,
            (Some("error"), Some("limit_exceeded")) => limited += 1,
            other => panic!("unexpected {other:?}: {reply}"),
        }
    }
    assert_eq!(subscribed, limit);
    assert_eq!(
        limited,
        total - limit,
        "limit errors do not count as bad requests"
    );
    assert_eq!(server.metric("tidings_subscriptions").await, limit as f64);
}

#[tokio::test]
async fn garbage_on_the_upgrade_path_does_not_crash() {
    let server = TestServer::start().await;
    let plain = server.http.get(server.url("/ws")).send().await.unwrap();
    assert!(plain.status().is_client_error());
    let weird = server
        .http
        .get(server.url("/ws?token=%FF%FE"))
        .send()
        .await
        .unwrap();
    assert!(weird.status().is_client_error());
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn request_floods_are_rate_limited_then_closed_with_4004() {
    let mut config = base_config();
    config.connection.requests_per_second = 10;
    config.connection.request_burst = 10;
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &[]).await;
    for i in 0..15 {
        client.send(json!({"type": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..15 {
        let reply = client.next(WAIT).await.expect("a reply to every ping");
        match reply["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if reply["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    assert!(
        (10..=11).contains(&pongs),
        "burst of 10 allowed, got {pongs}"
    );
    assert_eq!(pongs + limited, 15);
    // After a pause the budget refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = client.request(json!({"type": "ping"}), 100).await;
    assert_eq!(reply["type"], "pong");
    // A client that ignores rate_limited is closed.
    for i in 0..200 {
        if client
            .ws
            .send(Message::Text(
                json!({"type": "ping", "id": i}).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4004);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);
}

/// A client that stops mid-request does not hold its socket forever: the
/// headers, then the body, must come within `connection.request_timeout`,
/// and an idle keep-alive connection is closed after it too.
#[tokio::test]
async fn a_request_left_unfinished_is_dropped_after_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = base_config();
    config.connection.request_timeout = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;
    let post = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{}}"
    );
    // A polling session's POST: its body is read once the session is known.
    let open = crate::socketio::polling_handshake(&server).await;
    let socketio_post = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n4",
        open["sid"].as_str().unwrap()
    );
    let cases: [(&str, &[u8]); 5] = [
        ("nothing sent", b""),
        ("socket.io body unfinished", socketio_post.as_bytes()),
        ("headers unfinished", b"GET /health HTTP/1.1\r\nHost: x\r\n"),
        ("body unfinished", post.as_bytes()),
        (
            "idle after a request",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (case, sent) in cases {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("{case}: still open after 5 s"));
        assert!(read.is_ok(), "{case}: {read:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "{case}: closed after {took:?}"
        );
        let text = String::from_utf8_lossy(&received);
        match case {
            "body unfinished" => assert!(text.starts_with("HTTP/1.1 400"), "{case}: {text}"),
            "socket.io body unfinished" => assert!(
                text.starts_with("HTTP/1.1 400") && text.contains(r#""code":3"#),
                "{case}: {text}"
            ),
            "idle after a request" => assert!(text.starts_with("HTTP/1.1 200"), "{case}: {text}"),
            _ => assert!(text.is_empty(), "{case}: {text}"),
        }
    }
}

/// `POST /request` checks the token before it reads the body: a client
/// without a good token gets its 401 at once, however much body it promises
/// (it was read first, up to `api.max_body_size`, waiting for all of it).
#[tokio::test]
async fn request_without_a_good_token_is_refused_before_its_body_is_read() {
    let mut config = base_config();
    config.connection.request_timeout = Duration::from_secs(10);
    let server = TestServer::with_config(config).await;
    let text = first_answer(
        &server,
        "POST /request HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n\
         Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{\"type\"",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains(r#""code":"unauthorized""#), "{text}");
}

/// Sends `request` on a new connection and returns the first bytes of the
/// answer, which must come within 3 s: nothing waits for the body the
/// request promised.
pub(crate) async fn first_answer(server: &TestServer, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut received = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut received))
        .await
        .expect("no answer within 3 s: the body was awaited first")
        .unwrap();
    String::from_utf8_lossy(&received[..read]).into_owned()
}

/// A body whose `Content-Length` is over the limit is refused before it is
/// read: at once, even from a client that sends none of it.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let mut config = base_config();
    config.connection.request_timeout = Duration::from_secs(10);
    let server = TestServer::with_config(config).await;
    let good = token("u1", &["acme"], &[]);
    let requests = [
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{{"
        ),
        format!(
            "POST /request HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
        ),
    ];
    for request in requests {
        let text = first_answer(&server, &request).await;
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#""code":"limit_exceeded""#), "{text}");
    }
    // Without the API key, the key is what is refused.
    let text = first_answer(
        &server,
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // Only the routes that take a body check its size: a wrong method is
    // still 405, and a GET route ignores a body it does not read.
    for (request, status) in [
        ("PUT /api/publish", "405"),
        ("POST /api/info", "405"),
        ("GET /api/info", "200"),
    ] {
        let text = first_answer(
            &server,
            &format!(
                "{request} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
                 Content-Length: 2000000\r\n\r\n"
            ),
        )
        .await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}: {text}"
        );
    }
}

/// A client that sends the whole of a body the server refused without
/// reading it (413 on its `Content-Length`) can finish sending it and reads
/// the answer: the server closes only after draining it, so the client sees
/// no reset (Node's `fetch` reported one as a dropped connection and retried).
#[tokio::test]
async fn a_refused_body_is_drained_before_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let size = 8 * 1024 * 1024;
    for attempt in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let body = vec![b' '; size];
        let sent = tokio::time::timeout(WAIT, tcp.write_all(&body)).await;
        assert!(
            matches!(sent, Ok(Ok(()))),
            "attempt {attempt}: the body could not be sent: {sent:?}"
        );
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes once the body is drained")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#""code":"limit_exceeded""#), "{text}");
    }
}

/// Refusals before a WebSocket upgrade, and of Socket.IO's Engine.IO
/// requests, come in their documented JSON shapes, never axum's plain text.
#[tokio::test]
async fn refused_upgrades_and_repeated_parameters_answer_in_json() {
    let server = TestServer::start().await;
    let good = token("u1", &["acme"], &[]);
    let http = reqwest::Client::new();
    let upgrade = |url: String| {
        http.get(url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    let cases = [
        (
            upgrade(server.url(&format!("/ws?token={good}&token={good}"))),
            400,
        ),
        (http.get(server.url(&format!("/ws?token={good}"))), 400),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    // A token given twice is refused on every transport.
    let twice = format!("token={good}&token={good}");
    let response = http
        .get(server.url(&format!("/sse?channel=workspace:acme&{twice}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "`token` given twice", "{body}");
    let response = upgrade(server.url(&format!("/ws?{twice}")))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "`token` given twice", "{body}");
    for query in [
        twice.clone(),
        format!("token={good}&channel=workspace:acme&since=1&since=2"),
        // The first value does not parse: still named as given twice.
        format!("token={good}&channel=workspace:acme&limit=abc&limit=1"),
        format!("token={good}&wait=x&wait=x"),
    ] {
        let response = http
            .get(server.url(&format!("/events?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.ends_with("` given twice"), "{body}");
    }
    let response = http
        .post(server.url(&format!("/request?{twice}")))
        .body(r#"{"type":"presence","channel":"workspace:acme"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_request", "{body}");
    // The server API's GET routes name the parameter too (not axum's
    // "Failed to deserialize query string").
    for (path, name) in [
        (
            "/api/history?channel=workspace:acme&channel=workspace:acme",
            "channel",
        ),
        (
            "/api/history?channel=workspace:acme&limit=x&limit=2",
            "limit",
        ),
        (
            "/api/presence?channel=workspace:acme&channel=user:u1",
            "channel",
        ),
    ] {
        let (status, body) = server.api_get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body["error"]["message"],
            format!("`{name}` given twice"),
            "{path}"
        );
    }
    let response = http
        .get(server.url("/socket.io/?EIO=4&EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], 3, "{body}");
}
