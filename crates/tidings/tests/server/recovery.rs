//! `history` and `subscribe` with `since` (the recovery protocol's basics; the
//! full guarantees are exercised with the recovery work).

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn history_returns_events_in_order_with_limit_and_since() {
    let server = TestServer::start().await;
    for i in 1..=5 {
        server.publish("workspace:acme", "tick", json!(i)).await;
    }
    let mut client = server.connect_user("u1", &["acme"]).await;
    let all = client
        .request(json!({"type": "history", "channel": "workspace:acme"}), 1)
        .await;
    assert_eq!(all["type"], "history");
    assert_eq!(all["offset"], 5);
    let offsets: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert_eq!(all["events"][0]["type"], "event");
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    let page = client
        .request(json!({"type": "history", "channel": "workspace:acme", "since": {"offset": 2, "epoch": epoch}, "limit": 2}), 2)
        .await;
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4]);
    let denied = client
        .request(json!({"type": "history", "channel": "workspace:globex"}), 3)
        .await;
    assert_eq!(denied["code"], "permission_denied");
}

#[tokio::test]
async fn resubscribe_with_since_recovers_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe("workspace:acme").await;
    server.publish("workspace:acme", "seen", json!(1)).await;
    assert_eq!(client.expect("event").await["offset"], 1);
    drop(client);

    for i in 2..=4 {
        server.publish("workspace:acme", "missed", json!(i)).await;
    }
    let mut again = server.connect_user("u1", &["acme"]).await;
    let since = json!({"offset": 1, "epoch": first["epoch"]});
    let reply = again
        .request(
            json!({"type": "subscribe", "channel": "workspace:acme", "since": since}),
            7,
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 4);
    server.publish("workspace:acme", "live", json!(5)).await;
    let events = again.drain_events(Duration::from_millis(300)).await;
    let seen: Vec<(u64, &str)> = events
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [(2, "missed"), (3, "missed"), (4, "missed"), (5, "live")]
    );
}

#[tokio::test]
async fn wrong_epoch_or_trimmed_history_is_not_recovered() {
    let mut config = base_config();
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .unwrap();
    workspace.history_size = 3;
    config.namespaces.insert("workspace".into(), workspace);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe("workspace:acme").await;
    for i in 1..=6 {
        server.publish("workspace:acme", "e", json!(i)).await;
    }
    let mut other = server.connect_user("u1", &["acme"]).await;
    let wrong = other
        .request(json!({"type": "subscribe", "channel": "workspace:acme", "since": {"offset": 5, "epoch": "not-the-epoch"}}), 1)
        .await;
    assert_eq!(wrong["recovered"], false);
    let mut third = server.connect_user("u1", &["acme"]).await;
    let trimmed = third
        .request(json!({"type": "subscribe", "channel": "workspace:acme", "since": {"offset": 1, "epoch": first["epoch"]}}), 2)
        .await;
    assert_eq!(trimmed["recovered"], false, "events 2 and 3 were trimmed");
    for c in [&mut other, &mut third] {
        assert!(
            c.drain_events(Duration::from_millis(200)).await.is_empty(),
            "no partial replay"
        );
    }
}
