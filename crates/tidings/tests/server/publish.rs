//! The publish API and what subscribers receive.

use std::time::Duration;

use serde_json::{json, Value};

use tidings::engine::HistoryQuery;
use tidings::protocol::{ChannelName, CloseCode};

use crate::support::*;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_namespace_that_keeps_no_history_is_not_recoverable() {
    for (size, ttl) in [(0, Duration::from_secs(60)), (100, Duration::ZERO)] {
        let server = TestServer::with_config(config_with_workspace(|ws| {
            ws.history_size = size;
            ws.history_ttl = ttl;
        }))
        .await;
        let mut client = server.connect_user("u1", &["acme"]).await;
        let subscribed = client.subscribe("workspace:acme").await;
        assert_eq!(subscribed["recoverable"], false, "size {size}, ttl {ttl:?}");
    }
}

#[tokio::test]
async fn published_event_has_the_contract_envelope() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let subscribed = client.subscribe("workspace:acme:applications").await;
    assert_eq!(subscribed["offset"], 0);
    assert_eq!(subscribed["recoverable"], true);
    assert!(
        subscribed.get("recovered").is_none(),
        "only present when since was given"
    );

    let (status, published) = server
        .api(
            "/api/publish",
            json!({
                "channel": "workspace:acme:applications",
                "event": "applications.updated",
                "data": {"id": "app123", "status": "approved", "n": [1, 2.5, null]},
                "meta": {"actor": "u7", "correlation_id": "req-91", "entity": {"type": "applications", "id": "app123", "version": 7}}
            }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(published["channel"], "workspace:acme:applications");
    assert_eq!(published["offset"], 1);
    let id = published["id"].as_str().unwrap();
    assert!(id.starts_with("e_"));

    let event = client.expect("event").await;
    let ts = event["ts"].as_str().unwrap().to_owned();
    assert_eq!(ts.len(), 24, "RFC 3339 UTC with milliseconds: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.');
    let expected = json!({
        "type": "event",
        "channel": "workspace:acme:applications",
        "offset": 1,
        "id": id,
        "event": "applications.updated",
        "ts": ts,
        "data": {"id": "app123", "status": "approved", "n": [1, 2.5, null]},
        "meta": {"actor": "u7", "correlation_id": "req-91", "entity": {"type": "applications", "id": "app123", "version": 7}}
    });
    assert_eq!(event, expected);

    // Without meta, the key is absent.
    server
        .publish("workspace:acme:applications", "x", json!(null))
        .await;
    let bare = client.expect("event").await;
    assert!(bare.get("meta").is_none(), "{bare}");
    assert_eq!(bare["data"], Value::Null);
}

#[tokio::test]
async fn entity_events_reach_all_three_scopes() {
    let server = TestServer::start().await;
    let mut all = server.connect_user("u1", &["acme"]).await;
    let mut list = server.connect_user("u2", &["acme"]).await;
    let mut detail = server.connect_user("u3", &["acme"]).await;
    let mut other_entity = server.connect_user("u4", &["acme"]).await;
    all.subscribe("workspace:acme").await;
    list.subscribe("workspace:acme:applications").await;
    detail.subscribe("workspace:acme:applications:app123").await;
    other_entity
        .subscribe("workspace:acme:applications:app999")
        .await;

    let (status, body) = server
        .api(
            "/api/events",
            json!({"workspace": "acme", "entity": {"type": "applications", "id": "app123", "version": 3},
                   "action": "updated", "data": {"status": "approved"}, "actor": "u7", "correlation_id": "c1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"], "applications.updated");
    assert_eq!(body["results"].as_array().unwrap().len(), 3);

    for (client, channel) in [
        (&mut all, "workspace:acme"),
        (&mut list, "workspace:acme:applications"),
        (&mut detail, "workspace:acme:applications:app123"),
    ] {
        let event = client.expect("event").await;
        assert_eq!(event["channel"], channel);
        assert_eq!(event["event"], "applications.updated");
        assert_eq!(
            event["meta"]["entity"],
            json!({"type": "applications", "id": "app123", "version": 3})
        );
        assert_eq!(event["meta"]["actor"], "u7");
        assert_eq!(event["data"]["status"], "approved");
    }
    assert!(other_entity.drain_events(QUIET).await.is_empty());

    let (status, body) = server
        .api(
            "/api/events",
            json!({"workspace": "a:b", "entity": {"type": "t", "id": "1"}, "action": "created"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Any event-name segment is an action; an empty one or one with a control
    // character is not.
    let (status, body) = server
        .api(
            "/api/events",
            json!({"workspace": "acme", "entity": {"type": "applications", "id": "app123"}, "action": "status_changed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"], "applications.status_changed");
    let event = detail.expect("event").await;
    assert_eq!(event["event"], "applications.status_changed");
    for action in ["", "a\u{1}b"] {
        let (status, _) = server
            .api(
                "/api/events",
                json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": action}),
            )
            .await;
        assert_eq!(status, 400, "action {action:?}");
    }
    // A type that leaves no room for an action is named as the problem.
    let (status, body) = server
        .api(
            "/api/events",
            json!({"workspace": "acme", "entity": {"type": "t".repeat(254), "id": "1"}, "action": "a"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("entity.type must be at most 253 bytes"),
        "{message}"
    );
    // The action gets what the type leaves of a 255-byte event name, and the
    // refusal says how much that is.
    for (entity_type, longest) in [("t", 253), ("tt", 252)] {
        for (action, expected) in [("a".repeat(longest), 200), ("a".repeat(longest + 1), 400)] {
            let (status, body) = server
                .api(
                    "/api/events",
                    json!({"workspace": "acme", "entity": {"type": entity_type, "id": "1"}, "action": action}),
                )
                .await;
            assert_eq!(status, expected, "{entity_type} {}: {body}", action.len());
            if expected == 400 {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.starts_with(&format!("action must be 1-{longest} bytes")),
                    "{message}"
                );
            }
        }
    }
}

#[tokio::test]
async fn audience_limits_recipients_by_user_and_role() {
    let server = TestServer::start().await;
    let mut alice = server
        .connect(&token("alice", &["acme"], &["reviewer"]))
        .await;
    let mut bob = server.connect(&token("bob", &["acme"], &[])).await;
    let mut carol = server.connect(&token("carol", &["acme"], &["admin"])).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.subscribe("workspace:acme").await;
    }
    let (status, _) = server
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "approval.requested", "data": {},
                   "audience": {"users": ["bob"], "roles": ["admin"]}}),
        )
        .await;
    assert_eq!(status, 200);
    server
        .publish("workspace:acme", "everyone", json!({}))
        .await;

    let names = |events: Vec<Value>| {
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(alice.drain_events(QUIET).await), ["everyone"]);
    assert_eq!(
        names(bob.drain_events(QUIET).await),
        ["approval.requested", "everyone"]
    );
    assert_eq!(
        names(carol.drain_events(QUIET).await),
        ["approval.requested", "everyone"]
    );
}

#[tokio::test]
async fn exclude_client_skips_only_that_connection() {
    let server = TestServer::start().await;
    let mut tab1 = server.connect_user("u1", &["acme"]).await;
    let mut tab2 = server.connect_user("u1", &["acme"]).await;
    tab1.subscribe("workspace:acme").await;
    tab2.subscribe("workspace:acme").await;
    let (status, _) = server
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "saved", "data": {}, "exclude_client": tab1.client_id()}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(tab1.drain_events(QUIET).await.is_empty());
    assert_eq!(tab2.drain_events(QUIET).await.len(), 1);
}

#[tokio::test]
async fn idempotency_key_delivers_once_with_the_same_offset() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let body =
        json!({"channel": "workspace:acme", "event": "e", "data": 1, "idempotency_key": "req-1"});
    let (_, first) = server.api("/api/publish", body.clone()).await;
    let (status, second) = server.api("/api/publish", body).await;
    assert_eq!(status, 200);
    assert_eq!(first, second);
    assert_eq!(client.drain_events(QUIET).await.len(), 1);
    let next = server.publish("workspace:acme", "e", json!(2)).await;
    assert_eq!(next["offset"], 2);
}

#[tokio::test]
async fn offsets_are_consecutive_per_channel() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme", "beta"]).await;
    client.subscribe("workspace:acme").await;
    client.subscribe("workspace:beta").await;
    for i in 0..20 {
        let channel = if i % 3 == 0 {
            "workspace:beta"
        } else {
            "workspace:acme"
        };
        server.publish(channel, "tick", json!(i)).await;
    }
    let events = client.drain_events(QUIET).await;
    assert_eq!(events.len(), 20);
    for channel in ["workspace:acme", "workspace:beta"] {
        let offsets: Vec<u64> = events
            .iter()
            .filter(|e| e["channel"] == channel)
            .map(|e| e["offset"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "{channel}");
    }
}

#[tokio::test]
async fn concurrent_publishers_keep_offsets_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let publisher = server.tidings.publisher();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                publisher
                    .publish(tidings::PublishRequest::json("workspace:acme", "e", &[t, i]).unwrap())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let offsets: Vec<u64> = client
        .drain_events(QUIET)
        .await
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn broadcast_publishes_to_every_channel_or_none() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme", "beta"]).await;
    client.subscribe("workspace:acme").await;
    client.subscribe("workspace:beta").await;
    let (status, body) = server
        .api("/api/broadcast", json!({"channels": ["workspace:acme", "workspace:beta"], "event": "notice", "data": {}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(client.drain_events(QUIET).await.len(), 2);

    let (status, body) = server
        .api(
            "/api/broadcast",
            json!({"channels": ["workspace:acme", "nowhere:x"], "event": "notice", "data": {}}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_channel");
    assert!(
        client.drain_events(QUIET).await.is_empty(),
        "nothing published when one channel is unknown"
    );
}

#[tokio::test]
async fn broadcast_over_several_batches_places_each_channel_once() {
    // 100 channels: more than three of the Redis engine's batches of 32, the
    // last one partial.
    let server = TestServer::start().await;
    let channels: Vec<String> = (0..100).map(|i| format!("workspace:acme:c{i}")).collect();
    let watched = [
        "workspace:acme:c0",
        "workspace:acme:c33",
        "workspace:acme:c99",
    ];
    let mut client = server.connect_user("u1", &["acme"]).await;
    for channel in watched {
        client.subscribe(channel).await;
    }
    let body = json!({"channels": channels, "event": "notice", "data": {"n": 1}, "idempotency_key": "b-1"});
    let (status, first) = server.api("/api/broadcast", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let results = first["results"].as_array().unwrap();
    assert_eq!(results.len(), channels.len());
    let id = results[0]["id"].clone();
    for (result, channel) in results.iter().zip(&channels) {
        assert_eq!(
            result["channel"],
            channel.as_str(),
            "results in request order"
        );
        assert_eq!(result["offset"], 1, "{result}");
        assert_eq!(result["id"], id);
    }
    let events = client.drain_events(QUIET).await;
    let mut got: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["channel"].as_str().unwrap().to_owned(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, u64)> = watched.iter().map(|c| ((*c).to_owned(), 1)).collect();
    expected.sort();
    assert_eq!(got, expected, "each watched channel once");
    assert!(events.iter().all(|e| e["id"] == id && e["data"]["n"] == 1));

    // The same key: the first placements again, nothing new delivered.
    let (status, again) = server.api("/api/broadcast", body).await;
    assert_eq!(status, 200, "{again}");
    for (result, before) in again["results"].as_array().unwrap().iter().zip(results) {
        assert_eq!(result["offset"], before["offset"]);
        assert_eq!(result["id"], id);
    }
    assert!(client.drain_events(QUIET).await.is_empty());

    // Each channel's offsets go on from there.
    let (status, next) = server
        .api(
            "/api/broadcast",
            json!({"channels": channels, "event": "notice", "data": 2}),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert!(next["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["offset"] == 2));
    assert_eq!(offsets(&client.drain_events(QUIET).await), vec![2, 2, 2]);
}

#[tokio::test]
async fn api_key_is_required_and_errors_are_json() {
    let server = TestServer::start().await;
    let body = json!({"channel": "workspace:acme", "event": "e", "data": 1});
    let no_key = server
        .http
        .post(server.url("/api/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status().as_u16(), 401);
    let err: Value = no_key.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");

    let wrong = server
        .http
        .post(server.url("/api/publish"))
        .header("x-api-key", "wrong-key-wrong-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = server
        .http
        .post(server.url("/api/publish"))
        .header("x-api-key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    // Another scheme, or an empty Bearer, leaves X-API-Key to decide; a
    // Bearer that is not empty is the key checked, even one that is not text.
    use reqwest::header::HeaderValue;
    for (authorization, status) in [
        (HeaderValue::from_static("Bearer"), 200),
        (HeaderValue::from_static("Bearer "), 200),
        (HeaderValue::from_static("Basic eHl6"), 200),
        (HeaderValue::from_static("Bearer wrong"), 401),
        (HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(), 401),
    ] {
        let beside = server
            .http
            .post(server.url("/api/publish"))
            .header("authorization", authorization.clone())
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(beside.status().as_u16(), status, "{authorization:?}");
    }

    for (bad, code) in [
        (json!({"channel": "workspace:acme", "event": "e"}), 400),
        (
            json!({"channel": "workspace:acme", "event": "", "data": 1}),
            400,
        ),
        (
            json!({"channel": "workspace:acme", "event": "e", "data": 1, "surprise": true}),
            400,
        ),
        (json!({"channel": "no such", "event": "e", "data": 1}), 400),
        (
            json!({"channel": "nowhere:x", "event": "e", "data": 1}),
            404,
        ),
        (
            json!({"channel": "workspace:acme", "event": "e", "data": 1, "audience": {"users": "bob"}}),
            400,
        ),
    ] {
        let (status, body) = server.api("/api/publish", bad.clone()).await;
        assert_eq!(status, code, "{bad} → {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let raw = server
        .http
        .post(server.url("/api/publish"))
        .bearer_auth(API_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let huge = server
        .http
        .post(server.url("/api/publish"))
        .bearer_auth(API_KEY)
        .body(format!(
            r#"{{"channel":"workspace:acme","event":"e","data":"{}"}}"#,
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    let err: Value = huge.json().await.unwrap();
    assert_eq!(err["error"]["code"], "limit_exceeded");
}

#[tokio::test]
async fn api_disconnect_and_unsubscribe_by_user() {
    let server = TestServer::start().await;
    let mut a1 = server.connect_user("alice", &["acme"]).await;
    let mut a2 = server.connect_user("alice", &["acme"]).await;
    let mut bob = server.connect_user("bob", &["acme"]).await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.subscribe("workspace:acme").await;
    }
    let (status, body) = server
        .api(
            "/api/unsubscribe",
            json!({"user": "alice", "channel": "workspace:acme"}),
        )
        .await;
    assert_eq!((status, body["unsubscribed"].as_u64()), (200, Some(2)));
    for c in [&mut a1, &mut a2] {
        let notice = c.expect("unsubscribed").await;
        assert_eq!(notice["channel"], "workspace:acme");
        assert!(notice["reason"].is_string());
    }
    server.publish("workspace:acme", "after", json!({})).await;
    assert!(a1.drain_events(QUIET).await.is_empty());
    assert_eq!(bob.drain_events(QUIET).await.len(), 1);

    let (status, body) = server
        .api("/api/disconnect", json!({"user": "alice"}))
        .await;
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(2)));
    for c in [&mut a1, &mut a2] {
        let closed = c.closed(WAIT).await;
        assert_eq!(closed.code, 4502);
        assert_eq!(
            closed.disconnect.unwrap(),
            json!({"type": "disconnect", "code": 4502, "reason": "disconnected by the server", "reconnect": false})
        );
    }
    let (status, _) = server
        .api("/api/disconnect", json!({"user": "bob", "code": 4000}))
        .await;
    assert_eq!(status, 200);
    let closed = bob.closed(WAIT).await;
    assert_eq!(closed.code, 4000);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);
    let (status, _) = server
        .api("/api/disconnect", json!({"user": "bob", "code": 1234}))
        .await;
    assert_eq!(status, 400);

    // A reason longer than a close frame holds (123 bytes) still closes with
    // the code; the `disconnect` message carries the whole reason.
    let mut carol = server.connect_user("carol", &["acme"]).await;
    let reason = "é".repeat(100);
    let (status, _) = server
        .api(
            "/api/disconnect",
            json!({"user": "carol", "code": 4000, "reason": reason}),
        )
        .await;
    assert_eq!(status, 200);
    let closed = carol.closed(WAIT).await;
    assert_eq!(closed.code, 4000);
    assert_eq!(closed.disconnect.unwrap()["reason"], reason.as_str());
}

/// What the server API does for backends, an embedding Rust backend does
/// through `Tidings` directly.
#[tokio::test]
async fn an_embedding_backend_reads_presence_and_history_and_ends_connections() {
    let server = TestServer::start().await;
    let tidings = &server.tidings;
    let channel = ChannelName::parse("workspace:acme").unwrap();
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let mut other = server.connect_user("u2", &["acme"]).await;
    other.subscribe("workspace:acme").await;

    let members = tidings.presence(&channel).await.unwrap();
    let mut users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["u1", "u2"]);

    for i in 1..=3 {
        server
            .publish("workspace:acme", "e", json!({ "i": i }))
            .await;
    }
    let page = tidings
        .history(
            &channel,
            &HistoryQuery {
                after: Some(1),
                limit: None,
                newest_first: false,
            },
        )
        .await
        .unwrap();
    let read: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
    assert_eq!(read, [2, 3]);
    assert_eq!(page.position.offset, 3);
    assert!(page.complete);
    assert_eq!(tidings.nodes().await.unwrap().len(), 1);

    let ended = tidings
        .unsubscribe_user("u1", &channel, "moved out")
        .await
        .unwrap();
    assert_eq!(ended, 1);
    let push = client
        .wait_for("unsubscribed", |m| m["type"] == "unsubscribed")
        .await;
    assert_eq!(push["channel"], "workspace:acme");
    assert_eq!(push["reason"], "moved out");

    // A channel no namespace defines is refused, as the API's 404 does, not
    // read as an empty one (a typo would look like "nobody there").
    let unknown = ChannelName::parse("nope:x").unwrap();
    let query = HistoryQuery {
        after: None,
        limit: None,
        newest_first: false,
    };
    assert!(matches!(
        tidings.history(&unknown, &query).await,
        Err(tidings::ChannelError::UnknownChannel(name)) if name == "nope:x"
    ));
    assert!(matches!(
        tidings.presence(&unknown).await,
        Err(tidings::ChannelError::UnknownChannel(_))
    ));
    assert!(matches!(
        tidings.unsubscribe_user("u1", &unknown, "typo").await,
        Err(tidings::ChannelError::UnknownChannel(_))
    ));
    let too_long = ChannelName::parse("user:u1:x").unwrap();
    assert!(tidings.presence(&too_long).await.is_err());

    let closed = tidings
        .disconnect_user("u2", CloseCode::DisconnectedByApi, Some("bye".into()))
        .await
        .unwrap();
    assert_eq!(closed, 1);
    let closed = other.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, CloseCode::DisconnectedByApi.code());
    assert_eq!(closed.disconnect.unwrap()["reason"], "bye");
    // u1 stays connected, off the channel: it has the three events from
    // before and no more.
    server.publish("workspace:acme", "e", json!({})).await;
    assert_eq!(offsets(&client.drain_events(QUIET).await), [1, 2, 3]);
}

/// README: an embedding backend builds broadcasts and entity changes from
/// the server API's JSON bodies.
#[tokio::test]
async fn an_embedding_backend_broadcasts_and_publishes_entity_changes_from_json() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    client.subscribe("workspace:acme:applications").await;
    let publisher = server.tidings.publisher();

    let broadcast: tidings::publisher::BroadcastRequest = serde_json::from_value(json!({
        "channels": ["workspace:acme", "workspace:acme:applications"],
        "event": "notice", "data": {"text": "maintenance at 18:00"}
    }))
    .unwrap();
    let results = publisher.broadcast(broadcast).await.unwrap();
    assert_eq!(results.len(), 2);
    let change: tidings::publisher::EntityChange = serde_json::from_value(json!({
        "workspace": "acme", "entity": {"type": "applications", "id": "app123", "version": 7},
        "action": "approved", "data": {"status": "approved"}, "actor": "u7"
    }))
    .unwrap();
    publisher.publish_entity_change(change).await.unwrap();

    let events = client.drain_events(QUIET).await;
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["channel"].as_str().unwrap_or_default(),
                e["event"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("workspace:acme", "notice"),
            ("workspace:acme:applications", "notice"),
            ("workspace:acme", "applications.approved"),
            ("workspace:acme:applications", "applications.approved"),
        ]
    );
    assert_eq!(events[3]["meta"]["entity"]["id"], "app123");
    assert_eq!(events[3]["meta"]["actor"], "u7");
}

/// A server built on an engine of the embedder's own goes by the engine's
/// node name when `config.node` is unset: clients and the node list saw two
/// different names.
#[tokio::test]
async fn a_server_on_an_engine_goes_by_the_engines_node_name() {
    let engine =
        tidings::engine::Engine::memory(&tidings::config::EngineSettings::default(), "engine-node");
    let tidings = tidings::Tidings::with_engine(base_config(), engine).unwrap();
    let server = TestServer::with_tidings(tidings).await;
    let client = server.connect_user("u1", &[]).await;
    assert_eq!(client.connected.unwrap()["node"], "engine-node");
    let nodes = server.tidings.nodes().await.unwrap();
    assert_eq!(nodes[0].name, "engine-node");
    let (_, health) = server.api_get("/health").await;
    assert_eq!(health["node"], "engine-node");
}
