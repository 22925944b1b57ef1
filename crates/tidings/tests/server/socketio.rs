//! The Socket.IO endpoint over real sockets, at the packet level (the
//! socket.io-client tests in `tests/socketio/` cover the client library).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::bad_input::first_answer;
use crate::support::{base_config, token, TestServer, WAIT};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next text frame that is not a ping (answered).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match frame {
            Message::Text(text) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap();
            }
            Message::Text(text) => return text.to_string(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

/// Opens an Engine.IO WebSocket session and sends `CONNECT` with `auth`.
pub(crate) async fn connect(server: &TestServer, auth: Value) -> (Ws, String) {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    ws.send(Message::text(format!("40{auth}"))).await.unwrap();
    let reply = next_text(&mut ws).await;
    (ws, reply)
}

/// Opens an Engine.IO long-polling session; returns its `open` packet.
pub(crate) async fn polling_handshake(server: &TestServer) -> Value {
    let text = server
        .http
        .get(server.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap()
}

/// Opens an Engine.IO long-polling session; returns its URL (with its `sid`).
async fn polling_session_url(server: &TestServer) -> String {
    let open = polling_handshake(server).await;
    let sid = open["sid"].as_str().unwrap();
    server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
}

/// Connects the polling session at `url` (its `CONNECT` to `/` answered).
async fn polling_connect(server: &TestServer, url: &str, user: &str) {
    let auth = json!({"token": token(user, &["acme"], &[])});
    let posted = server.http.post(url).body(format!("40{auth}")).send();
    assert_eq!(posted.await.unwrap().status().as_u16(), 200);
    let answer = server.http.get(url).send().await.unwrap();
    let text = answer.text().await.unwrap();
    assert!(text.starts_with("40{"), "{text}");
}

/// Emits `subscribe` to `channel` with ack id `id`: the position of the
/// `tidings:position` that follows a success, or the refusal.
pub(crate) async fn subscribe_for_position(
    ws: &mut Ws,
    id: usize,
    channel: &str,
) -> Result<String, Value> {
    ws.send(Message::text(format!(
        r#"42{id}["subscribe",{}]"#,
        json!(channel)
    )))
    .await
    .unwrap();
    let ack_prefix = format!("43{id}");
    let answer: Value = loop {
        let frame = next_text(ws).await;
        if let Some(ack) = frame.strip_prefix(&ack_prefix) {
            break serde_json::from_str(ack).unwrap();
        }
    };
    if answer[0]["ok"] != true {
        return Err(answer[0].clone());
    }
    let event = next_text(ws).await;
    let args: Value = serde_json::from_str(event.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[0], "tidings:position", "{event}");
    Ok(args[2].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn polling_handshake_announces_the_configured_heartbeat() {
    let mut config = base_config();
    config.connection.heartbeat = Duration::from_secs(7);
    config.connection.pong_timeout = Duration::from_secs(3);
    let server = TestServer::with_config(config).await;
    let open = polling_handshake(&server).await;
    assert_eq!(open["pingInterval"], 7000);
    assert_eq!(open["pingTimeout"], 3000);
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let old = server
        .http
        .get(server.url("/socket.io/?EIO=3&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status().as_u16(), 400);
}

#[tokio::test]
async fn events_arrive_as_name_data_meta_and_position() {
    let server = TestServer::start().await;
    let (mut ws, reply) = connect(&server, json!({"token": token("u-sio", &["acme"], &[])})).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert!(handshake["sid"].as_str().unwrap().starts_with("c_"));
    assert!(handshake["pid"].is_string());
    server
        .publish("workspace:acme", "approval.created", json!({"id": 1}))
        .await;
    let event = next_text(&mut ws).await;
    let args: Value = serde_json::from_str(event.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[0], "approval.created");
    assert_eq!(args[1], json!({"id": 1}));
    assert_eq!(args[2]["channel"], "workspace:acme");
    assert_eq!(args[2]["offset"], 1);
    assert!(args[3].as_str().unwrap().contains("workspace:acme,"));
    assert_eq!(server.metric("tidings_connections").await, 1.0);
    assert_eq!(server.metric("tidings_socketio_sessions").await, 1.0);
    drop(ws);
    let deadline = std::time::Instant::now() + WAIT;
    // The session goes first; the hub connection once it has left the engine.
    while server.metric("tidings_socketio_sessions").await > 0.0
        || server.metric("tidings_connections").await > 0.0
    {
        assert!(std::time::Instant::now() < deadline, "session not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A polling client's close packet ends the session at once: it is no longer
/// counted, though its next poll still gets the reference server's `noop`.
#[tokio::test]
async fn a_polling_close_packet_ends_the_count_at_once() {
    let server = TestServer::start().await;
    let url = |sid: &str| server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let sid = polling_handshake(&server).await["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = json!({"token": token("u-close", &["acme"], &[])});
    let post = |body: String| server.http.post(url(&sid)).body(body).send();
    assert_eq!(
        post(format!("40{auth}")).await.unwrap().status().as_u16(),
        200
    );
    let connected = server.http.get(url(&sid)).send().await.unwrap();
    assert!(connected.text().await.unwrap().starts_with("40"));
    assert_eq!(server.metric("tidings_socketio_sessions").await, 1.0);

    assert_eq!(post("1".to_owned()).await.unwrap().status().as_u16(), 200);
    assert_eq!(server.metric("tidings_socketio_sessions").await, 0.0);
    let last = server.http.get(url(&sid)).send().await.unwrap();
    assert_eq!(last.text().await.unwrap(), "6");
    let after = server.http.get(url(&sid)).send().await.unwrap();
    assert_eq!(after.status().as_u16(), 400, "the sid is gone");
    assert_eq!(server.metric("tidings_socketio_sessions").await, 0.0);
}

/// A connected client that sends pings (or emits that are answered) and
/// never polls for the answers cannot grow the server's memory: once the
/// outbox is over its limit (`send_queue_bytes`) the server stops reading the
/// client, and the session ends when the client's pong does not arrive.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_not_read_either() {
    let mut config = base_config();
    config.connection.send_queue_bytes = 16 * 1024;
    config.connection.heartbeat = Duration::from_millis(300);
    config.connection.pong_timeout = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let url = polling_session_url(&server).await;
    polling_connect(&server, &url, "u-noread").await;
    // 4,000 pings: their answers would hold about 160 KB. The server stops
    // reading them at 16 KB, so the POST waits (its pings are not taken) until
    // the session ends for want of a pong, and is then refused.
    let pings = vec!["2"; 4000].join("\u{1e}");
    let answer = server.http.post(&url).body(pings).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    assert_eq!(server.metric("tidings_socketio_sessions").await, 0.0);
    let after = server.http.get(&url).send().await.unwrap();
    assert_eq!(after.status().as_u16(), 400, "the sid is gone");
}

/// Engine.IO sends one `POST` at a time: a second one while the first is
/// still being read ends the session (as the reference server does), so a
/// client cannot pile up held `POST`s on a session it does not poll.
#[tokio::test]
async fn overlapping_posts_end_the_session() {
    let mut config = base_config();
    config.connection.send_queue_bytes = 16 * 1024;
    let server = TestServer::with_config(config).await;
    let url = polling_session_url(&server).await;
    // Connected: before that, a full outbox ends the session at once.
    polling_connect(&server, &url, "u-overlap").await;
    let pings = vec!["2"; 4000].join("\u{1e}");
    let first = tokio::spawn(server.http.post(&url).body(pings.clone()).send());
    // The first POST is held once the answers fill the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!first.is_finished(), "the first POST was not held");
    // Refused at once, not held until the session times out (`auth_timeout`).
    let second = tokio::time::timeout(
        Duration::from_secs(2),
        server.http.post(&url).body(pings).send(),
    )
    .await
    .expect("the second POST answered at once")
    .unwrap();
    assert_eq!(second.status().as_u16(), 400);
    let first = tokio::time::timeout(WAIT, first)
        .await
        .expect("the first POST ends");
    assert_eq!(first.unwrap().unwrap().status().as_u16(), 400);
    server
        .wait_for_metric("tidings_socketio_sessions", WAIT, |n| n == 0.0)
        .await;
}

/// A replay larger than the outbox limit goes out whole to a client that
/// reads, and the socket goes on: only its next packets wait for room.
#[tokio::test]
async fn a_replay_over_the_outbox_limit_reaches_a_reading_client() {
    let mut config = base_config();
    config.connection.send_queue_bytes = 16 * 1024;
    let server = TestServer::with_config(config).await;
    server.publish("workspace:acme:big", "e", json!(0)).await;
    let (_, history) = server
        .api_get("/api/history?channel=workspace:acme:big&limit=1")
        .await;
    let epoch = history["epoch"].as_str().unwrap().to_owned();
    let text = "x".repeat(1000);
    for i in 1..60 {
        server
            .publish("workspace:acme:big", "e", json!({ "i": i, "text": text }))
            .await;
    }
    let (mut ws, _) = connect(&server, json!({"token": token("u-big", &["acme"], &[])})).await;
    let since = json!({"channel": "workspace:acme:big", "since": {"offset": 1, "epoch": epoch}});
    ws.send(Message::text(format!(r#"421["subscribe",{since}]"#)))
        .await
        .unwrap();
    let mut replayed = 0;
    while replayed < 59 {
        let frame = next_text(&mut ws).await;
        if frame.starts_with(r#"42["e""#) {
            replayed += 1;
        }
    }
    // The socket still answers.
    ws.send(Message::text(r#"422["presence.update",{"status":"away"}]"#))
        .await
        .unwrap();
    loop {
        let frame = next_text(&mut ws).await;
        if let Some(ack) = frame.strip_prefix("432") {
            let answer: Value = serde_json::from_str(ack).unwrap();
            assert_eq!(answer[0]["ok"], true, "{answer}");
            break;
        }
    }
}

/// Sessions whose socket has not joined are capped per node (a lowered cap
/// here): a handshake past the cap closes the oldest session still waiting
/// (a flood of handshakes, which needs no token, must not keep real clients
/// out, and a real client joins within a round trip). A socket that joined
/// holds no slot and is never closed for one; a session that times out gives
/// its slot back and is forgotten at once.
#[tokio::test]
async fn a_handshake_past_the_pending_cap_closes_the_oldest_waiting_session() {
    let mut config = base_config();
    config.transports.socketio_max_pending = Some(2);
    config.connection.auth_timeout = Duration::from_millis(800);
    let server = TestServer::with_config(config).await;
    let first = polling_session_url(&server).await;
    let second = polling_session_url(&server).await;
    // A socket that joins gives its slot back.
    polling_connect(&server, &first, "u-pending").await;
    let third = polling_session_url(&server).await;
    // The cap is reached (second and third): a fourth closes the oldest.
    let fourth = polling_session_url(&server).await;
    let closed = server.http.get(&second).send().await.unwrap();
    assert_eq!(
        closed.status().as_u16(),
        400,
        "the oldest waiting sid is gone"
    );
    let ping = server.http.post(&third).body("2").send().await.unwrap();
    assert_eq!(ping.status().as_u16(), 200, "the newer one goes on");
    assert_eq!(
        server
            .http
            .get(&third)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "3"
    );
    // A WebSocket handshake too.
    let ws_url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (_ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let closed = server.http.get(&third).send().await.unwrap();
    assert_eq!(closed.status().as_u16(), 400, "the next oldest is gone");
    assert_eq!(
        server.metric("tidings_socketio_pending_closes_total").await,
        2.0,
        "each session closed for a newer one is counted"
    );

    // Sessions that time out are gone at once.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let gone = server.http.get(&fourth).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 400, "the timed-out sid is gone");
    // The joined socket goes on through all of it.
    let ping = server.http.post(&first).body("2").send().await.unwrap();
    assert_eq!(ping.status().as_u16(), 200);
    let pong = server.http.get(&first).send().await.unwrap();
    assert_eq!(pong.text().await.unwrap(), "3");
}

/// Before its socket connects, a session's outbox holds a few KiB: a client
/// that floods `CONNECT`s to a namespace that does not exist (each answered
/// with `connect_error`) without reading the answers has its session closed,
/// instead of making it hold up to `send_queue_bytes`. A few are answered.
#[tokio::test]
async fn a_preconnect_flood_of_namespace_connects_ends_the_session() {
    let server = TestServer::start().await;
    let url = polling_session_url(&server).await;
    let few = ["40/nope,"; 3].join("\u{1e}");
    let posted = server.http.post(&url).body(few).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    let answers = server.http.get(&url).send().await.unwrap();
    let text = answers.text().await.unwrap();
    let packets: Vec<&str> = text.split('\u{1e}').collect();
    assert_eq!(packets.len(), 3, "{text}");
    assert!(packets.iter().all(|p| p.starts_with("44/nope,")), "{text}");

    // 7,000 in one body under maxPayload: their answers would hold about
    // 560 KB, far under send_queue_bytes (4 MiB) but over the pre-connect
    // limit, so the session ends and the rest of the body is refused.
    let flood = vec!["40/nope,"; 7000].join("\u{1e}");
    let posted = tokio::time::timeout(WAIT, server.http.post(&url).body(flood).send())
        .await
        .expect("the flood is answered in time")
        .unwrap();
    assert_eq!(posted.status().as_u16(), 400);
    server
        .wait_for_metric("tidings_socketio_sessions", WAIT, |n| n == 0.0)
        .await;
    let gone = server.http.get(&url).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 400, "the sid is gone");
}

/// A recovering `CONNECT` answered with a replay larger than the pre-connect
/// outbox limit is not cut short by it: the limit is the full one as soon
/// as the socket connects.
#[tokio::test]
async fn a_recovery_replay_over_the_preconnect_limit_reaches_the_client() {
    let server = TestServer::start().await;
    server.publish("workspace:acme", "e", json!(0)).await;
    let token = token("u-replay", &["acme"], &[]);
    let (ws, reply) = connect(&server, json!({"token": token})).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let pid = handshake["pid"].as_str().unwrap().to_owned();
    assert!(pid.contains("workspace:acme,"), "{pid}");
    drop(ws);
    let text = "x".repeat(1000);
    for i in 1..=20 {
        server
            .publish("workspace:acme", "e", json!({ "i": i, "text": text }))
            .await;
    }
    let (mut ws, reply) = connect(&server, json!({"token": token, "pid": pid})).await;
    let again: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(again["pid"], pid.as_str(), "recovered");
    for i in 1..=20 {
        let frame = next_text(&mut ws).await;
        let args: Value = serde_json::from_str(frame.strip_prefix("42").unwrap()).unwrap();
        assert_eq!(args[0], "e", "{frame}");
        assert_eq!(args[1]["i"], i, "{frame}");
    }
    // The socket goes on.
    ws.send(Message::text(r#"421["presence.update",{"status":"away"}]"#))
        .await
        .unwrap();
    let ack = next_text(&mut ws).await;
    let answer: Value = serde_json::from_str(ack.strip_prefix("431").unwrap()).unwrap();
    assert_eq!(answer[0]["ok"], true, "{answer}");
}

/// A polling body over `maxPayload` ends the session with 413, also when it
/// is over the server's own body limit too.
#[tokio::test]
async fn a_polling_body_over_max_payload_ends_the_session() {
    let server = TestServer::start().await;
    for size in [70 * 1024, 2 * 1024 * 1024] {
        let open = polling_handshake(&server).await;
        let url = server.url(&format!(
            "/socket.io/?EIO=4&transport=polling&sid={}",
            open["sid"].as_str().unwrap()
        ));
        let big = format!("4{}", "x".repeat(size));
        let answer = server.http.post(&url).body(big).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 413, "{size}");
        assert_eq!(answer.text().await.unwrap(), "payload too large");
        let last = server.http.get(&url).send().await.unwrap();
        assert_eq!(
            last.text().await.unwrap(),
            "1",
            "{size}: the session's close"
        );
    }
    // Declared over maxPayload: refused before the body is read, at once
    // even from a client that sends none of it.
    let open = polling_handshake(&server).await;
    let sid = open["sid"].as_str().unwrap();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let text = first_answer(
        &server,
        &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n4"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("payload too large"), "{text}");
    let last = server.http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(last.text().await.unwrap(), "1");
}

/// A reconnect that cannot recover is followed by `tidings:position`, so the
/// client's kept offset (socket.io-client keeps the last event's until the
/// next event) names the new positions and the next reconnect recovers.
#[tokio::test]
async fn an_unrecovered_reconnect_sends_the_new_positions() {
    let server = TestServer::start().await;
    let token = token("u-rec", &["acme"], &[]);
    let stale = "1;workspace:acme,NOTTHEEPOCH,1";
    let (mut ws, reply) = connect(
        &server,
        json!({"token": token, "pid": "pOLD.1;workspace:acme,NOTTHEEPOCH,1", "offset": stale}),
    )
    .await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let pid = handshake["pid"].as_str().unwrap().to_owned();
    assert_ne!(pid, "pOLD.1;workspace:acme,NOTTHEEPOCH,1", "not recovered");
    let position = next_text(&mut ws).await;
    let args: Value = serde_json::from_str(position.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[0], "tidings:position", "{position}");
    let offset = args[2].as_str().unwrap().to_owned();
    assert!(offset.contains("workspace:acme,"), "{offset}");
    drop(ws);

    // With the new pid and that offset, the next reconnect recovers: the
    // server answers with the same pid.
    let (_ws, reply) = connect(
        &server,
        json!({"token": token, "pid": pid, "offset": offset}),
    )
    .await;
    let again: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(again["pid"], pid.as_str(), "recovered");
}

/// Every Engine.IO error is JSON, the wrong-method one included.
#[tokio::test]
async fn a_wrong_method_gets_the_json_error() {
    let server = TestServer::start().await;
    let response = server
        .http
        .put(server.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": 2, "message": "Bad handshake method"}));
}

#[tokio::test]
async fn a_bad_token_gets_connect_error_with_our_code() {
    let server = TestServer::start().await;
    let (_ws, reply) = connect(&server, json!({"token": "not-a-jwt"})).await;
    let error: Value = serde_json::from_str(reply.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(error["data"]["code"], "unauthorized");
    let (_ws, reply) = connect(&server, json!({})).await;
    assert!(reply.starts_with("44"), "{reply}");
}

#[tokio::test]
async fn subscribe_is_acknowledged_and_refusals_carry_the_error_code() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, json!({"token": token("u-sub", &["acme"], &[])})).await;
    ws.send(Message::text(
        r#"421["subscribe",{"channel":"workspace:acme:orders"}]"#,
    ))
    .await
    .unwrap();
    let ack = next_text(&mut ws).await;
    let answer: Value = serde_json::from_str(ack.strip_prefix("431").unwrap()).unwrap();
    assert_eq!(answer[0]["ok"], true);
    assert_eq!(answer[0]["channel"], "workspace:acme:orders");
    ws.send(Message::text(r#"422["subscribe","workspace:other"]"#))
        .await
        .unwrap();
    let mut ack = next_text(&mut ws).await;
    while !ack.starts_with("432") {
        ack = next_text(&mut ws).await;
    }
    let answer: Value = serde_json::from_str(ack.strip_prefix("432").unwrap()).unwrap();
    assert_eq!(answer[0]["error"]["code"], "permission_denied");
}

#[tokio::test]
async fn too_many_bad_requests_in_a_row_end_the_socket_with_4501() {
    let mut config = base_config();
    config.connection.max_bad_requests = 3;
    let server = TestServer::with_config(config).await;
    let (mut ws, _) = connect(&server, json!({"token": token("u-bad", &["acme"], &[])})).await;
    // A good request between bad ones starts the count again.
    for id in 1..=3 {
        ws.send(Message::text(format!(r#"42{id}["subscribe",42]"#)))
            .await
            .unwrap();
        let ack = next_text(&mut ws).await;
        assert!(ack.contains("bad_request"), "{ack}");
    }
    ws.send(Message::text(r#"424["subscribe","workspace:acme:orders"]"#))
        .await
        .unwrap();
    let mut ack = next_text(&mut ws).await;
    while !ack.starts_with("434") {
        ack = next_text(&mut ws).await;
    }
    assert!(ack.contains(r#""ok":true"#), "{ack}");
    for id in 5..=7 {
        ws.send(Message::text(format!(r#"42{id}["subscribe",42]"#)))
            .await
            .unwrap();
        let mut ack = next_text(&mut ws).await;
        while !ack.starts_with(&format!("43{id}")) {
            ack = next_text(&mut ws).await;
        }
        assert!(ack.contains("bad_request"), "{ack}");
    }
    // The fourth in a row: the disconnect notice, then the namespace's end.
    ws.send(Message::text(r#"428["subscribe",42]"#))
        .await
        .unwrap();
    let mut notice = next_text(&mut ws).await;
    while !notice.starts_with("42[\"tidings:disconnect\"") {
        assert!(!notice.starts_with("438"), "answered: {notice}");
        notice = next_text(&mut ws).await;
    }
    let args: Value = serde_json::from_str(notice.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[1]["code"], 4501, "{notice}");
    assert_eq!(args[1]["reason"], "too many bad requests in a row");
    assert_eq!(next_text(&mut ws).await, "41");
}

#[tokio::test]
async fn the_endpoint_can_be_switched_off() {
    let mut config = base_config();
    config.transports.socketio = false;
    let server = TestServer::with_config(config).await;
    let response = server
        .http
        .get(server.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
}

/// Names socket.io-client cannot take as an event (it drops the connection)
/// and `tidings:` names (the server's own) arrive as `tidings:event` with the
/// real name first; other events keep theirs.
#[tokio::test]
async fn reserved_event_names_arrive_as_tidings_event() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, json!({"token": token("u-rsv", &["acme"], &[])})).await;
    for name in ["disconnect", "*", "tidings:disconnect", "order.shipped"] {
        server
            .publish("workspace:acme", name, json!({"n": name}))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_text(&mut ws).await;
        let args: Value = serde_json::from_str(event.strip_prefix("42").unwrap()).unwrap();
        seen.push(args);
    }
    for (args, name) in seen[..3]
        .iter()
        .zip(["disconnect", "*", "tidings:disconnect"])
    {
        assert_eq!(args[0], "tidings:event", "{args}");
        assert_eq!(args[1], name);
        assert_eq!(args[2], json!({"n": name}));
        assert_eq!(args[3]["channel"], "workspace:acme");
        assert!(args[4].as_str().unwrap().contains("workspace:acme,"));
    }
    assert_eq!(seen[3][0], "order.shipped");
    assert_eq!(seen[3][1], json!({"n": "order.shipped"}));
    assert_eq!(seen[3][2]["offset"], 4);
}

/// socket.io-client sends its position back in `CONNECT`, which must fit in
/// `maxPayload`: a subscribe that would make it longer than half of that is
/// refused, and every position the socket was given stays under it.
#[tokio::test]
async fn a_subscribe_that_would_outgrow_the_resume_position_is_refused() {
    let mut config = base_config();
    config.connection.max_message_size = 4096;
    let server = TestServer::with_config(config).await;
    let (mut ws, _) = connect(&server, json!({"token": token("u-pos", &["acme"], &[])})).await;
    let mut refused = None;
    for i in 0..40 {
        let channel = format!("workspace:acme:{i:03}{}", "x".repeat(200));
        match subscribe_for_position(&mut ws, i, &channel).await {
            Ok(position) => assert!(position.len() <= 2048, "{position}"),
            Err(refusal) => {
                refused = Some((i, refusal));
                break;
            }
        }
    }
    let (i, answer) = refused.expect("a subscribe was refused");
    assert_eq!(answer["error"]["code"], "limit_exceeded", "{answer}");
    assert!(
        (7..=9).contains(&i),
        "refused at subscribe {i}: each entry counts about 250 bytes of 2048"
    );
}

/// The position and the pid (which repeats the rooms joined on connect) are
/// sent back with the token in `CONNECT`: with many long workspaces in the
/// token and a small `maxPayload`, rooms stop at half of what the token
/// leaves, subscribes at all of it (pid included), and the socket
/// reconnects and recovers.
#[tokio::test]
async fn a_socket_with_many_rooms_and_channels_can_always_reconnect() {
    let mut config = base_config();
    config.connection.max_message_size = 4096;
    let server = TestServer::with_config(config).await;
    let workspaces: Vec<String> = (0..10).map(|i| format!("w{i}{}", "x".repeat(58))).collect();
    let names: Vec<&str> = workspaces.iter().map(String::as_str).collect();
    let token = token("u-rooms", &names, &[]);
    let (mut ws, reply) = connect(&server, json!({ "token": token })).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let pid = handshake["pid"].as_str().unwrap().to_owned();
    assert!(pid.len() <= 1024, "pid of {} bytes", pid.len());
    let joined = pid.matches(";workspace:").count();
    assert!(
        (1..10).contains(&joined),
        "{joined} workspace rooms in {pid}"
    );
    let mut position = None;
    let mut refused = None;
    for i in 0..20 {
        let channel = format!("workspace:{}:{i:03}{}", workspaces[0], "y".repeat(100));
        match subscribe_for_position(&mut ws, i, &channel).await {
            Ok(latest) => position = Some(latest),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    let refused = refused.expect("a subscribe was refused");
    assert_eq!(refused["error"]["code"], "limit_exceeded", "{refused}");
    let position = position.expect("at least one subscribe was accepted");
    drop(ws);

    let auth = json!({ "token": token, "pid": pid, "offset": position });
    assert!(format!("40{auth}").len() <= 4096);
    let (_ws, reply) = connect(&server, auth).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(handshake["pid"], pid, "not recovered: {reply}");
}

/// `auth` is the application's object: fields of its own, and a `pid` or
/// `offset` that is not socket.io-client's string, leave the token readable;
/// a token that is not a string is named as such.
#[tokio::test]
async fn the_token_is_read_whatever_else_auth_holds() {
    let server = TestServer::start().await;
    let good = token("u-auth", &["acme"], &[]);
    let (_ws, reply) = connect(
        &server,
        json!({"token": good, "pid": 123, "offset": 5, "tenant": {"id": 1}}),
    )
    .await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert!(
        handshake["sid"].as_str().unwrap().starts_with("c_"),
        "{reply}"
    );
    let (_ws, reply) = connect(&server, json!({"token": 123})).await;
    let error: Value = serde_json::from_str(reply.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(error["message"], "auth.token must be a string", "{reply}");
    assert_eq!(error["data"]["code"], "unauthorized");
}

/// An emit too deeply nested to read is refused as `/ws` refuses it, not as
/// one of the wrong shape.
#[tokio::test]
async fn a_too_deep_emit_says_so() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, json!({"token": token("u-deep", &["acme"], &[])})).await;
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    ws.send(Message::text(format!(
        r#"421["note.added",{{"channel":"workspace:acme","data":{deep}}}]"#
    )))
    .await
    .unwrap();
    let mut ack = next_text(&mut ws).await;
    while !ack.starts_with("431") {
        ack = next_text(&mut ws).await;
    }
    let answer: Value = serde_json::from_str(ack.strip_prefix("431").unwrap()).unwrap();
    assert_eq!(answer[0]["error"]["code"], "bad_request", "{answer}");
    let message = answer[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("recursion limit exceeded"), "{message}");
}

/// A token of 25 KB (180 workspaces with 100-byte names) at the default
/// `maxPayload`: the rooms joined on connect leave the reconnect packet
/// (token, pid, and an offset as long as the rooms' position) within it.
#[tokio::test]
async fn a_large_token_still_reconnects_at_the_default_max_payload() {
    let server = TestServer::start().await;
    let workspaces: Vec<String> = (0..180)
        .map(|i| format!("w{i:03}{}", "x".repeat(96)))
        .collect();
    let names: Vec<&str> = workspaces.iter().map(String::as_str).collect();
    let token = token("u-big", &names, &[]);
    assert!(token.len() > 24_000, "{}", token.len());
    let (ws, reply) = connect(&server, json!({ "token": token })).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let pid = handshake["pid"].as_str().unwrap().to_owned();
    let (_, rooms) = pid.split_once('.').unwrap();
    drop(ws);
    let auth = json!({ "token": token, "pid": pid, "offset": rooms });
    assert!(
        format!("40{auth}").len() <= 65_536,
        "{}",
        format!("40{auth}").len()
    );
    let (_ws, reply) = connect(&server, auth).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(handshake["pid"], pid, "not recovered: {reply}");
}

/// A token over a quarter of `maxPayload` narrows the ceiling: with half of
/// it left to the position and pid, the reconnect packet (token, pid,
/// offset) would not fit.
#[tokio::test]
async fn a_token_over_a_quarter_of_max_payload_leaves_room_to_reconnect() {
    let mut config = base_config();
    config.connection.max_message_size = 4096;
    let server = TestServer::with_config(config).await;
    let workspaces: Vec<String> = (0..17)
        .map(|i| format!("w{i:02}{}", "x".repeat(97)))
        .collect();
    let names: Vec<&str> = workspaces.iter().map(String::as_str).collect();
    let token = token("u-wide", &names, &[]);
    assert!(token.len() > 2200 && token.len() < 2700, "{}", token.len());
    let (mut ws, reply) = connect(&server, json!({ "token": token })).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let pid = handshake["pid"].as_str().unwrap().to_owned();
    let mut position = pid.split_once('.').unwrap().1.to_owned();
    for i in 0..20 {
        match subscribe_for_position(&mut ws, i, &format!("workspace:{}:{i:02}", workspaces[0]))
            .await
        {
            Ok(latest) => position = latest,
            Err(refusal) => {
                assert_eq!(refusal["error"]["code"], "limit_exceeded", "{refusal}");
                break;
            }
        }
    }
    drop(ws);
    let auth = json!({ "token": token, "pid": pid, "offset": position });
    assert!(
        format!("40{auth}").len() <= 4096,
        "{}",
        format!("40{auth}").len()
    );
    let (_ws, reply) = connect(&server, auth).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(handshake["pid"], pid, "not recovered: {reply}");
}

/// A refresh through `POST /request` naming a socket applies the new token's
/// claims as on `/ws`: a workspace it no longer names ends with
/// `tidings:unsubscribed`, and events for a role it no longer has stop.
#[tokio::test]
async fn a_refresh_through_post_request_applies_the_new_claims_to_a_socket() {
    let server = TestServer::start().await;
    let old = token("u-refresh", &["acme", "globex"], &["admin"]);
    let (mut ws, reply) = connect(&server, json!({ "token": old })).await;
    let handshake: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let client = handshake["sid"].as_str().unwrap().to_owned();

    let fewer = token("u-refresh", &["acme"], &[]);
    let refresh = json!({"type": "refresh", "id": 1, "token": fewer});
    let (status, _) = server.http_request(&old, Some(&client), refresh).await;
    assert_eq!(status, 200);
    let unsubscribed = next_text(&mut ws).await;
    let args: Value = serde_json::from_str(unsubscribed.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(
        args,
        json!(["tidings:unsubscribed", {"channel": "workspace:globex", "reason": "permission_denied"}])
    );
    let position = next_text(&mut ws).await;
    let args: Value = serde_json::from_str(position.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[0], "tidings:position");
    assert!(!args[2].as_str().unwrap().contains("globex"), "{position}");

    server
        .publish("workspace:globex", "globex", json!({}))
        .await;
    let admins_only = json!({"channel": "workspace:acme", "event": "for-admins", "data": 1,
        "audience": {"roles": ["admin"]}});
    assert_eq!(server.api("/api/publish", admins_only).await.0, 200);
    server.publish("workspace:acme", "for-all", json!({})).await;
    let event = next_text(&mut ws).await;
    let args: Value = serde_json::from_str(event.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(args[0], "for-all", "{event}");
}

/// A session that never joined and is closed by the server for a bad packet
/// (here a CONNECT_ERROR from the client) gives its pending slot back at once,
/// rather than lingering with it for `pingInterval` + `pingTimeout`.
#[tokio::test]
async fn a_session_closed_before_joining_gives_its_pending_slot_back() {
    let mut config = base_config();
    config.transports.socketio_max_pending = Some(1);
    config.connection.auth_timeout = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let url = polling_session_url(&server).await;
    server.http.post(&url).body("44").send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = server
        .http
        .get(server.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200, "the slot is still held");
}
