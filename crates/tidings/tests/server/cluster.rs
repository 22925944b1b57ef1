//! Several nodes on one real Redis (the Redis engine): delivery across nodes,
//! recovery on another node, idempotency, presence, API actions and Redis
//! outages. Each test starts its own `redis-server` on a free port.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// `n` in-process nodes sharing `redis` under one key prefix.
async fn nodes(
    redis: &RedisServer,
    n: usize,
    change: impl Fn(&mut tidings::config::Config),
) -> Vec<TestServer> {
    let prefix = unique_prefix();
    let mut servers = Vec::new();
    for i in 0..n {
        let mut config = base_config();
        config.engine.kind = tidings::config::EngineKind::Redis;
        config.engine.redis_url = redis.url();
        config.engine.redis_prefix = prefix.clone();
        config.engine.node_ttl = Duration::from_secs(2);
        config.node = Some(format!("node-{i}"));
        change(&mut config);
        servers.push(TestServer::with_config(config).await);
    }
    servers
}

/// The builtin `workspace` namespace with presence pushes on.
fn with_presence_events(config: &mut tidings::config::Config) {
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .unwrap();
    workspace.presence_events = true;
    config.namespaces.insert("workspace".into(), workspace);
}

#[tokio::test]
async fn an_event_published_on_one_node_reaches_every_node_once_with_one_offset() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 3, |_| {}).await;
    let mut on_a = n[0].connect_user("u1", &["acme"]).await;
    let mut on_c = n[2].connect_user("u2", &["acme"]).await;
    on_a.subscribe("workspace:acme").await;
    on_c.subscribe("workspace:acme").await;
    for i in 0..20 {
        n[1].publish("workspace:acme", "x.updated", json!({ "i": i }))
            .await;
    }
    for client in [&mut on_a, &mut on_c] {
        let events = client.events_through(20, Duration::from_millis(300)).await;
        assert_eq!(offsets(&events), (1..=20).collect::<Vec<u64>>());
        assert_eq!(events[7]["data"]["i"], 7);
    }
}

#[tokio::test]
async fn audience_exclusion_and_idempotency_hold_across_nodes() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 3, |_| {}).await;
    let mut alice = n[0].connect_user("alice", &["acme"]).await;
    let mut bob = n[2].connect_user("bob", &["acme"]).await;
    alice.subscribe("workspace:acme").await;
    bob.subscribe("workspace:acme").await;
    n[1].publish_to_users("workspace:acme", "secret", json!({}), &["bob"])
        .await;
    let (status, body) = n[1]
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "mine", "data": {},
                   "exclude_client": bob.client_id()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let keyed = json!({"channel": "workspace:acme", "event": "once", "data": {},
                       "idempotency_key": "k-1"});
    let (_, first) = n[0].api("/api/publish", keyed.clone()).await;
    let (_, again) = n[1].api("/api/publish", keyed).await;
    assert_eq!(first, again, "the same key through two nodes is one event");

    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    };
    let seen_by_bob = bob.drain_events(Duration::from_millis(500)).await;
    let seen_by_alice = alice.drain_events(Duration::from_millis(200)).await;
    assert_eq!(names(&seen_by_bob), ["secret", "once"]);
    assert_eq!(names(&seen_by_alice), ["mine", "once"]);
    assert_eq!(offsets(&seen_by_alice), [2, 3]);
}

#[tokio::test]
async fn a_client_that_leaves_one_node_recovers_on_another() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 3, |_| {}).await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    let subscribed = client.subscribe("workspace:acme").await;
    n[1].publish("workspace:acme", "before", json!({})).await;
    let seen = client.events_through(1, Duration::from_millis(100)).await;
    assert_eq!(offsets(&seen), [1]);
    drop(client);
    for i in 0..7 {
        n[1].publish("workspace:acme", "missed", json!({ "i": i }))
            .await;
    }
    let mut back = n[2].connect_user("u1", &["acme"]).await;
    let epoch = &subscribed["epoch"];
    let reply = back.subscribe_since("workspace:acme", 1, epoch, 77).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    n[0].publish("workspace:acme", "live", json!({})).await;
    let events = back.events_through(9, Duration::from_millis(300)).await;
    assert_eq!(offsets(&events), (2..=9).collect::<Vec<u64>>());
    assert_eq!(events.last().unwrap()["event"], "live");
}

#[tokio::test]
async fn presence_and_api_actions_reach_every_node() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 2, with_presence_events).await;
    let mut watcher = n[0].connect_user("watcher", &["acme"]).await;
    watcher.subscribe("workspace:acme").await;
    let mut other = n[1].connect_user("other", &["acme"]).await;
    other.subscribe("workspace:acme").await;
    let join = watcher
        .wait_for("other's join", |v| {
            v["type"] == "presence" && v["member"]["user"] == "other"
        })
        .await;
    assert_eq!(join["action"], "join");

    assert_eq!(
        listed_users(&n[0]).await.unwrap_or_default(),
        ["other", "watcher"]
    );

    let (status, _) = n[0].api("/api/disconnect", json!({"user": "other"})).await;
    assert_eq!(status, 200);
    let closed = other.closed(WAIT).await;
    assert_eq!(closed.code, 4502, "{closed:?}");
    let leave = watcher
        .wait_for("other's leave", |v| {
            v["type"] == "presence" && v["action"] == "leave"
        })
        .await;
    assert_eq!(leave["member"]["user"], "other");

    let (_, info) = n[1].api_get("/api/info").await;
    assert_eq!(info["engine"], "redis");
    let names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{info}");
    assert_eq!(names[0], "node-1", "this node first");
}

/// The channels of a node's index of its presence entries (what the reaper
/// reads when the node dies).
async fn presence_index(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:node:*:presence")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut channels = Vec::new();
    for key in keys {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        channels.extend(members);
    }
    channels.sort();
    channels
}

/// A channel stays in the node's presence index while the node has an entry
/// on it, and leaves it with the last one: the index used to keep every
/// channel the node ever had presence on.
#[tokio::test]
async fn a_nodes_presence_index_holds_only_channels_it_has_entries_on() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |_| {}).await;
    let mut alice = n[0].connect_user("alice", &["acme"]).await;
    let mut bob = n[0].connect_user("bob", &["acme"]).await;
    for i in 0..20 {
        alice.subscribe(&format!("workspace:acme:doc{i}")).await;
    }
    bob.subscribe("workspace:acme:doc0").await;
    assert_eq!(presence_index(&redis).await.len(), 20);
    for i in 0..20 {
        alice
            .request(
                json!({"type": "unsubscribe", "channel": format!("workspace:acme:doc{i}")}),
                100 + i,
            )
            .await;
    }
    assert_eq!(presence_index(&redis).await, ["workspace:acme:doc0"]);
    drop(bob);
    eventually(
        "the index kept its channel",
        WAIT,
        || presence_index(&redis),
        Vec::is_empty,
    )
    .await;
}

/// A channel stays in the node's index while one of its clients may have an
/// entry, and leaves it with the last, however often each left: a leave of
/// an entry that is not there (a second leave of one, when the first was cut
/// short, or its answer lost, and the connection's close finishes it) takes
/// that client off, and only that one. (Counted rather than kept by client,
/// a second leave once took another entry's count, and the channel left the
/// index while that entry remained, unreaped if the node then died; and a
/// leave whose entry was already gone left the channel in the index for
/// good.)
#[tokio::test]
async fn a_channel_leaves_the_index_with_its_last_client_however_often_it_left() {
    let redis = RedisServer::start().await;
    let settings = tidings::config::EngineSettings {
        redis_url: redis.url(),
        ..tidings::config::EngineSettings::default()
    };
    let engine = tidings::engine::Engine::redis(&settings, "leaving").expect("valid settings");
    let channel = tidings::protocol::ChannelName::parse("workspace:acme").unwrap();
    for (client, user) in [("c1", "alice"), ("c2", "bob")] {
        let me = tidings::engine::presence::ClientPresence {
            client: client.into(),
            user: user.into(),
            status: tidings::protocol::PresenceStatus::Online,
            info: None,
        };
        engine.presence.join(&channel, me).await.unwrap();
    }
    for _ in 0..2 {
        engine
            .presence
            .leave(&channel, "alice", "c1")
            .await
            .unwrap();
    }
    assert_eq!(presence_index(&redis).await, ["workspace:acme"]);
    engine.presence.leave(&channel, "bob", "c2").await.unwrap();
    assert!(presence_index(&redis).await.is_empty());

    // A leave whose answer was lost: the entry is gone (removed here by
    // another engine of the same node) when the node leaves it again.
    let carol = tidings::engine::presence::ClientPresence {
        client: "c3".into(),
        user: "carol".into(),
        status: tidings::protocol::PresenceStatus::Online,
        info: None,
    };
    engine.presence.join(&channel, carol).await.unwrap();
    assert_eq!(presence_index(&redis).await, ["workspace:acme"]);
    let same_node = tidings::engine::Engine::redis(&settings, "leaving").expect("valid settings");
    let left = same_node.presence.leave(&channel, "carol", "c3").await;
    assert!(matches!(left, Ok(Some(_))), "{left:?}");
    assert_eq!(
        engine
            .presence
            .leave(&channel, "carol", "c3")
            .await
            .unwrap(),
        None
    );
    assert!(
        presence_index(&redis).await.is_empty(),
        "the index kept a channel with no entry of the node"
    );
}

#[tokio::test]
async fn a_subscribe_whose_presence_join_fails_is_refused_and_can_be_retried() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |_| {}).await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    // Redis refuses the presence keys' writes (an ACL: everything may be
    // read, every other key also written), so the subscribe's reads pass and its
    // presence join fails: the subscribe must not succeed with the user
    // left unlisted.
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("resetkeys")
        .arg("%R~*")
        .arg("~*:m")
        .arg("~*:h")
        .arg("~*:i:*")
        .arg("~*:node:*")
        .arg("~*{nodes}*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reply = client
        .request(json!({"type": "subscribe", "channel": "workspace:acme"}), 1)
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "engine_unavailable", "{reply}");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("allkeys")
        .query_async(&mut conn)
        .await
        .unwrap();
    client.subscribe("workspace:acme").await;
    assert_eq!(listed_users(&n[0]).await.unwrap_or_default(), ["u1"]);
}

#[tokio::test]
async fn publishing_while_redis_is_down_answers_503_and_clients_learn_what_they_missed() {
    let mut redis = RedisServer::start().await;
    let n = nodes(&redis, 2, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    let subscribed = client.subscribe("workspace:acme").await;
    n[1].publish("workspace:acme", "before", json!({})).await;
    assert_eq!(
        offsets(&client.events_through(1, Duration::from_millis(100)).await),
        [1]
    );

    redis.kill();
    let (status, body) = n[1]
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "x", "data": {}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("engine_unavailable")),
        "{body}"
    );
    assert_eq!(n[1].health_status().await, "degraded");
    assert_eq!(n[1].metric("tidings_engine_available").await, 0.0);
    // Five seconds away, with a publisher retrying all along: the client stays
    // connected and nothing reaches it half-published.
    let outage = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    while tokio::time::Instant::now() < outage {
        let (status, _) = n[1]
            .api(
                "/api/publish",
                json!({"channel": "workspace:acme", "event": "x", "data": {},
                       "idempotency_key": "during-outage"}),
            )
            .await;
        assert_eq!(status, 503);
        refused += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused >= 5);
    assert!(client
        .drain_events(Duration::from_millis(10))
        .await
        .is_empty());

    // Back without its data: the channel's history is gone, so the client is
    // told to resubscribe and learns it must reload (never a silent gap).
    redis.restart().await;
    let notice = client.expect("unsubscribed").await;
    assert_eq!(notice["reason"], "resubscribe", "{notice}");
    let epoch = &subscribed["epoch"];
    let reply = client.subscribe_since("workspace:acme", 1, epoch, 77).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    // The publishing node reconnects on its own, on its own schedule: a
    // publisher retries its 503s until then, as this one does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = n[1]
            .api(
                "/api/publish",
                json!({"channel": "workspace:acme", "event": "after", "data": {},
                       "idempotency_key": "after-outage"}),
            )
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "still {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = client.drain_events(Duration::from_millis(500)).await;
    assert_eq!(
        offsets(&events),
        [1],
        "offsets start again in the new epoch"
    );
    assert_eq!(n[1].health_status().await, "ok");
}

/// Each time Redis is killed and started again is one outage in
/// `tidings_engine_outages_total` (and one warning): a connection attempt
/// made while it was down, handed to the next heartbeat (every 5 s, the
/// default) once the other connection had reached Redis again, counted a
/// second outage at most restarts.
#[tokio::test]
async fn each_redis_restart_is_one_outage() {
    let mut redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
        config.engine.node_ttl = Duration::from_secs(15);
    })
    .await;
    for round in 1..=2 {
        redis.kill();
        let (status, _) = n[0]
            .api(
                "/api/publish",
                json!({"channel": "workspace:acme", "event": "x", "data": {}}),
            )
            .await;
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.restart().await;
        // Back by the heartbeat alone (no request meanwhile), then one
        // heartbeat more, when the second outage showed.
        wait_for_health(&n[0], "ok", Duration::from_secs(8)).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(n[0].health_status().await, "ok");
        assert_eq!(
            n[0].metric("tidings_engine_outages_total").await,
            f64::from(round),
            "after restart {round}"
        );
    }
}

/// A restart that no request saw while it lasted, with a client subscribed
/// (the node follows a channel) and the default 5 s heartbeat: a connection
/// failure that the outage left behind, met on the first use after it,
/// counted a second outage at every restart but the first.
#[tokio::test]
async fn an_unseen_redis_restart_is_at_most_one_outage() {
    let mut redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
        config.engine.node_ttl = Duration::from_secs(15);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let mut outages = 0.0;
    for round in 0..3 {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis.restart().await;
        // Over a heartbeat (every 5 s) with no request.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = n[0].metric("tidings_engine_outages_total").await;
        assert!(now - outages <= 1.0, "round {round}: {outages} -> {now}");
        outages = now;
        assert_eq!(n[0].health_status().await, "ok");
    }
}

#[tokio::test]
async fn a_restart_with_persistence_still_never_reuses_offsets_in_an_epoch() {
    let mut redis = RedisServer::start_with(true).await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    let subscribed = client.subscribe("workspace:acme").await;
    for _ in 0..3 {
        n[0].publish("workspace:acme", "before", json!({})).await;
    }
    assert_eq!(
        client
            .events_through(3, Duration::from_millis(100))
            .await
            .len(),
        3
    );
    // Stopped for five seconds mid-stream, then back from its append-only file.
    redis.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart().await;
    let notice = client.expect("unsubscribed").await;
    assert_eq!(notice["reason"], "resubscribe");
    let epoch = &subscribed["epoch"];
    let reply = client.subscribe_since("workspace:acme", 3, epoch, 77).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], subscribed["epoch"]);
}

/// Sets Redis's `client-output-buffer-limit` for pub/sub clients. With
/// `"64 64 0"` a subscriber whose output buffer passes 64 bytes beyond its
/// fixed 16 KiB is disconnected, so each 20 KiB message cuts every node's
/// pub/sub connection; `"32mb 8mb 60"` is Redis's default.
async fn set_pubsub_output_limit(redis: &RedisServer, value: &str) {
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg(format!("pubsub {value}"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn messages_lost_between_nodes_are_filled_from_history_in_order() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 2, |_| {}).await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    n[1].publish("workspace:acme", "x", json!({})).await;
    assert_eq!(
        offsets(&client.events_through(1, Duration::from_millis(100)).await),
        [1]
    );
    // What is published meanwhile never reaches node 0 over pub/sub.
    set_pubsub_output_limit(&redis, "64 64 0").await;
    let pad = "x".repeat(20_000);
    for _ in 0..29 {
        n[1].publish("workspace:acme", "x", json!({ "pad": pad }))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    set_pubsub_output_limit(&redis, "32mb 8mb 60").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    n[1].publish("workspace:acme", "x", json!({})).await;
    let events = client.events_through(31, Duration::from_millis(500)).await;
    assert_eq!(offsets(&events), (2..=31).collect::<Vec<u64>>());
    assert!(
        n[0].metric("tidings_engine_gaps_filled_total").await >= 1.0,
        "the gap was filled from history"
    );
    assert_eq!(n[0].metric("tidings_engine_resubscribes_total").await, 0.0);
}

#[tokio::test]
async fn after_a_cut_pubsub_connection_every_followed_channel_is_filled_in_order() {
    // The node checks its followed channels several at a time after its
    // pub/sub connection comes back: each channel must still get exactly its
    // own missed events, in order.
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 2, |_| {}).await;
    let channels: Vec<String> = (0..40)
        .map(|i| format!("workspace:acme:item:{i}"))
        .collect();
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    for channel in &channels {
        client.subscribe(channel).await;
        n[1].publish(channel, "x", json!({})).await;
    }
    assert_eq!(
        client.drain_events(Duration::from_millis(300)).await.len(),
        channels.len()
    );
    set_pubsub_output_limit(&redis, "64 64 0").await;
    let pad = "x".repeat(20_000);
    for round in 0..2 {
        for channel in &channels {
            n[1].publish(channel, "x", json!({ "pad": pad, "round": round }))
                .await;
        }
    }
    set_pubsub_output_limit(&redis, "32mb 8mb 60").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for channel in &channels {
        n[1].publish(channel, "x", json!({})).await;
    }
    // Until every channel's last event is in (the pub/sub connection may
    // still be reconnecting), then a quiet spell so doubles show up too.
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.iter().filter(|e: &&Value| e["offset"] == 4).count() < channels.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing: {:?}",
            offsets(&events)
        );
        events.extend(client.drain_events(Duration::from_millis(200)).await);
    }
    events.extend(client.drain_events(Duration::from_millis(300)).await);
    for channel in &channels {
        let own: Vec<Value> = events
            .iter()
            .filter(|e| e["channel"] == channel.as_str())
            .cloned()
            .collect();
        assert_eq!(offsets(&own), [2, 3, 4], "{channel}");
    }
    assert_eq!(events.len(), channels.len() * 3);
    assert!(n[0].metric("tidings_engine_gaps_filled_total").await >= 1.0);
    assert_eq!(n[0].metric("tidings_engine_resubscribes_total").await, 0.0);
}

#[tokio::test]
async fn a_redis_cluster_shards_channels_and_delivers_across_nodes() {
    let cluster = RedisCluster::start().await;
    let prefix = unique_prefix();
    let mut n = Vec::new();
    for i in 0..2 {
        let mut config = base_config();
        config.engine.kind = tidings::config::EngineKind::Redis;
        config.engine.redis_cluster = true;
        config.engine.redis_url = cluster.urls();
        config.engine.redis_prefix = prefix.clone();
        config.node = Some(format!("node-{i}"));
        with_presence_events(&mut config);
        n.push(TestServer::with_config(config).await);
    }
    // Channels whose hash tags land on different shards.
    let channels: Vec<String> = (0..12).map(|i| format!("workspace:acme:t{i}")).collect();
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    for channel in &channels {
        client.subscribe(channel).await;
    }
    for round in 0..3 {
        for channel in &channels {
            n[1].publish(channel, "x", json!({ "round": round })).await;
        }
    }
    let events = client.drain_events(Duration::from_millis(700)).await;
    assert_eq!(events.len(), 36, "{events:?}");
    for channel in &channels {
        let offsets: Vec<u64> = events
            .iter()
            .filter(|e| e["channel"] == channel.as_str())
            .map(|e| e["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [1, 2, 3], "{channel}");
    }
    // Recovery on the other node reads the right shard's history.
    let first = &channels[5];
    drop(client);
    n[1].publish(first, "missed", json!({})).await;
    let mut back = n[1].connect_user("u1", &["acme"]).await;
    let epoch = back.subscribe(first).await["epoch"].clone();
    back.request(json!({"type": "unsubscribe", "channel": first}), 5)
        .await;
    let reply = back.subscribe_since(first, 3, &epoch, 6).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed = back.events_through(4, Duration::from_millis(200)).await;
    assert_eq!(offsets(&replayed), [4]);
    // Keys of one channel share a shard: every master holds some channels.
    let mut per_master = Vec::new();
    for master in &cluster.masters {
        let keys = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &master.port.to_string(),
                "--scan",
                "--pattern",
                &format!("{prefix}:*:m"),
            ])
            .output()
            .unwrap();
        per_master.push(String::from_utf8_lossy(&keys.stdout).lines().count());
    }
    assert_eq!(per_master.iter().sum::<usize>(), 12, "{per_master:?}");
    assert!(per_master.iter().all(|&k| k > 0), "{per_master:?}");

    // Presence pushes go out through each channel's shard too (a function
    // publishes them), from either node.
    for channel in &channels[..3] {
        let mut watcher = n[0].connect_user("watcher", &["acme"]).await;
        watcher.subscribe(channel).await;
        let mut tab1 = n[1].connect_user("alice", &["acme"]).await;
        tab1.subscribe(channel).await;
        let mut tab2 = n[0].connect_user("alice", &["acme"]).await;
        tab2.subscribe(channel).await;
        tab1.request(json!({"type": "status", "status": "away"}), 1)
            .await;
        tab2.request(json!({"type": "status", "status": "busy"}), 1)
            .await;
        drop((tab1, tab2));
        let pushes = presence_pushes(&mut watcher, "alice").await;
        // The tabs close together: which leaves last decides the leave's status.
        assert_eq!(
            pushes[..2],
            ["join:online", "status:busy"],
            "{channel}: {pushes:?}"
        );
        assert!(
            pushes.last().is_some_and(|p| p.starts_with("leave:")),
            "{channel}: {pushes:?}"
        );
    }
}

#[tokio::test]
async fn a_followed_channel_keeps_its_position_past_position_ttl() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.position_ttl = Duration::from_millis(1000);
        let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
            .remove("workspace")
            .unwrap();
        workspace.history_ttl = Duration::from_millis(100);
        config.namespaces.insert("workspace".into(), workspace);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    let epoch = client.subscribe("workspace:acme").await["epoch"].clone();
    n[0].publish("workspace:acme", "x", json!({})).await;
    assert_eq!(
        offsets(&client.events_through(1, Duration::from_millis(100)).await),
        [1]
    );
    // Quiet for well past position_ttl, but a subscriber stays: the node keeps
    // the position alive, so nobody is told to reload.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    n[0].publish("workspace:acme", "x", json!({})).await;
    let events = client.drain_events(Duration::from_millis(300)).await;
    assert_eq!(offsets(&events), [2], "{events:?}");
    let mut other = n[0].connect_user("u2", &["acme"]).await;
    let reply = other.subscribe_since("workspace:acme", 2, &epoch, 3).await;
    assert_eq!(reply["recovered"], true, "{reply}");
}

/// A presence leave that could not reach Redis (it was down when the client
/// left) is tried again once Redis is back, so the user does not stay listed
/// until the node stops.
#[tokio::test]
async fn a_presence_leave_that_failed_is_tried_again() {
    let mut redis = RedisServer::start_with(true).await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut staying = n[0].connect_user("staying", &["acme"]).await;
    staying.subscribe("workspace:acme").await;
    let mut leaving = n[0].connect_user("leaving", &["acme"]).await;
    leaving.subscribe("workspace:acme").await;
    assert_eq!(
        listed_users(&n[0]).await.unwrap_or_default(),
        ["leaving", "staying"]
    );

    redis.kill();
    drop(leaving);
    n[0].wait_for_metric("tidings_connections", WAIT, |c| c == 1.0)
        .await;
    // Down longer than redis_timeout: the leave has failed, not waited.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Back with its data (append-only file): the entry is still there until
    // the leave is tried again. (The restart also changes every channel's
    // epoch, so `staying` is asked to resubscribe and leaves too: only
    // `leaving`'s entry matters here.)
    redis.restart().await;
    eventually(
        "the failed leave was never tried again",
        Duration::from_secs(20),
        || listed_users(&n[0]),
        |users| {
            users
                .as_ref()
                .is_some_and(|u| !u.iter().any(|u| u == "leaving"))
        },
    )
    .await;
}

/// A channel whose last client left while Redis was down is unsubscribed
/// once Redis is back: the client library renews every subscription it
/// knows of when it reconnects, and the failed unsubscribe had not reached
/// Redis.
#[tokio::test]
async fn a_channel_left_while_redis_was_down_is_not_followed_once_it_is_back() {
    let mut redis = RedisServer::start_with(true).await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut leaving = n[0].connect_user("leaving", &["acme"]).await;
    leaving.subscribe("workspace:acme:left").await;
    assert_eq!(pubsub_channels(&redis, "*acme:left*").await.len(), 1);

    redis.kill();
    drop(leaving);
    n[0].wait_for_metric("tidings_connections", WAIT, |c| c == 0.0)
        .await;
    // Down longer than redis_timeout: the unsubscribe has failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;
    // Once the node's pub/sub connection is back (it renews its
    // subscriptions then, the control channel's among them), the channel
    // must go.
    eventually(
        "the node never subscribed again",
        Duration::from_secs(20),
        || pubsub_channels(&redis, "*control*"),
        |channels| !channels.is_empty(),
    )
    .await;
    until_no_pubsub_channel(&redis, "*acme:left*").await;
}

/// Channels left or subscribed while Redis was frozen are not followed once
/// it runs again (it then carries out the commands it held, the subscribes
/// among them): one whose last client left, one whose client left before
/// its subscribe was answered (the undo timed out too), and one whose
/// subscribe timed out.
#[tokio::test]
async fn subscribes_sent_while_redis_was_frozen_are_undone() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut early = n[0].connect_user("early", &["acme"]).await;
    early.subscribe("workspace:acme:early").await;
    redis.pause();
    // Its unsubscribe waits for Redis too.
    drop(early);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut gone = n[0].connect_user("gone", &["acme"]).await;
    gone.send(json!({"type": "subscribe", "id": 1, "channel": "workspace:acme:gone"}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(gone);
    let mut late = n[0].connect_user("late", &["acme"]).await;
    let reply = late
        .request(
            json!({"type": "subscribe", "channel": "workspace:acme:late"}),
            1,
        )
        .await;
    assert_eq!(reply["code"], "engine_unavailable", "{reply}");
    drop(late);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    // Redis runs the subscribes it held as it resumes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_no_pubsub_channel(&redis, "*acme:gone*").await;
    until_no_pubsub_channel(&redis, "*acme:late*").await;
    until_no_pubsub_channel(&redis, "*acme:early*").await;
}

/// A connection that closes while Redis is frozen takes a while to: each of
/// its presence leaves, then each hub removal, waits for Redis. Its failed
/// leaves are tried again meanwhile, while it is still listed on the
/// channels: they must not take that for a client back on the channel (and
/// give up), or the node's index keeps the channels once Redis is back.
#[tokio::test]
async fn leaves_of_a_connection_closed_while_redis_was_frozen_are_tried_again() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = n[0].connect_user("frozen", &["acme"]).await;
    let channels = ["a", "b", "c", "d"].map(|c| format!("workspace:acme:{c}"));
    for channel in &channels {
        client.subscribe(channel).await;
    }
    assert_eq!(presence_index(&redis).await, channels);
    redis.pause();
    drop(client);
    // Four leaves and four hub removals, each timing out: longer than the
    // first retry's delay.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    redis.resume();
    eventually(
        "the index kept channels nobody is on",
        Duration::from_secs(20),
        || presence_index(&redis),
        Vec::is_empty,
    )
    .await;
}

/// A status the engine cannot store is refused with `engine_unavailable`
/// (over a WebSocket and `POST /request` alike), not answered as if set.
#[tokio::test]
async fn a_status_redis_cannot_store_is_refused() {
    let mut redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    let token = token("u1", &["acme"], &[]);
    let mut stream =
        crate::http_transports::SseStream::open(&n[0], "channel=workspace:acme", &token).await;
    let sse_client = stream.expect("connected").await.json()["client"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.expect("subscribed").await;

    redis.kill();
    let reply = client
        .request(json!({"type": "status", "status": "away"}), 7)
        .await;
    assert_eq!(
        (&reply["type"], &reply["code"], &reply["id"]),
        (&json!("error"), &json!("engine_unavailable"), &json!(7)),
        "{reply}"
    );
    let (status, reply) = n[0]
        .http_request(
            &token,
            Some(&sse_client),
            json!({"type": "status", "id": 8, "status": "away"}),
        )
        .await;
    assert_eq!(
        (status, &reply["code"], &reply["id"]),
        (503, &json!("engine_unavailable"), &json!(8)),
        "{reply}"
    );
}

/// The pub/sub channels matching `pattern` that Redis has subscribers for.
async fn pubsub_channels(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn until_no_pubsub_channel(redis: &RedisServer, pattern: &str) {
    eventually(
        "still subscribed",
        Duration::from_secs(20),
        || pubsub_channels(redis, pattern),
        Vec::is_empty,
    )
    .await;
}

/// Reads `probe` every 100 ms until `holds` accepts what it gives, which it
/// returns; fails with `what` and the last reading once `within` has passed.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> F,
    holds: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = probe().await;
        if holds(&seen) {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The users `GET /api/presence` lists on `workspace:acme`, or `None` while
/// the engine does not answer.
async fn listed_users(server: &TestServer) -> Option<Vec<String>> {
    let (_, listed) = server.api_get("/api/presence?channel=workspace:acme").await;
    let members = listed["members"].as_array()?;
    Some(
        members
            .iter()
            .filter_map(|m| m["user"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Presence pushes of `user` that `watcher` receives until it has been quiet
/// for a while, as `action:status`.
async fn presence_pushes(watcher: &mut Client, user: &str) -> Vec<String> {
    let mut pushes = Vec::new();
    while let Some(v) = watcher.next(Duration::from_millis(400)).await {
        if v["type"] == "presence" && v["member"]["user"] == user {
            pushes.push(format!(
                "{}:{}",
                v["action"].as_str().unwrap_or_default(),
                v["member"]["status"].as_str().unwrap_or_default()
            ));
        }
    }
    pushes
}

/// Two tabs of one user, on two nodes, changing at the same moment: an
/// observer's last push for the user says what a listing says. (A push
/// computed from a view read around the other tab's change, or published
/// after a later one, left observers wrong: a user shown away while online,
/// or back after their `leave`.)
#[tokio::test]
async fn simultaneous_changes_of_two_tabs_end_in_the_listed_state() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 2, with_presence_events).await;
    let mut watcher = n[0].connect_user("watcher", &["acme"]).await;
    watcher.subscribe("workspace:acme").await;
    let status = |status: &str| json!({"type": "status", "status": status});
    for round in 0..6 {
        let mut tab1 = n[0].connect_user("alice", &["acme"]).await;
        let mut tab2 = n[1].connect_user("alice", &["acme"]).await;
        tab1.subscribe("workspace:acme").await;
        tab2.subscribe("workspace:acme").await;
        tab2.request(status("away"), 1).await;
        presence_pushes(&mut watcher, "alice").await;

        // They swap: alice stays online, through the other tab.
        let (one, two) = tokio::join!(
            tab1.request(status("away"), 2),
            tab2.request(status("online"), 2)
        );
        assert_eq!(
            (&one["status"], &two["status"]),
            (&json!("away"), &json!("online"))
        );
        let pushes = presence_pushes(&mut watcher, "alice").await;
        let (_, listed) = n[0].api_get("/api/presence?channel=workspace:acme").await;
        let alice = listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user"] == "alice")
            .cloned()
            .unwrap();
        assert_eq!(alice["status"], "online", "round {round}: {listed}");
        assert!(
            pushes.last().is_none_or(|last| last == "status:online"),
            "round {round}: the watcher last heard {pushes:?}, the listing says online"
        );

        // Both close at once: the last push is the leave.
        drop(tab1);
        drop(tab2);
        let pushes = presence_pushes(&mut watcher, "alice").await;
        assert!(
            pushes.last().is_some_and(|last| last.starts_with("leave:")),
            "round {round}: after both tabs closed the watcher last heard {pushes:?}"
        );
    }
}

/// A followed channel's position is extended once per touch interval (here
/// every heartbeat), well before the two intervals it lives: its time to live
/// never runs low. (Extended every other heartbeat, it came within
/// milliseconds of expiring, and a slow moment made a subscriber reload.)
#[tokio::test]
async fn a_followed_position_is_extended_every_touch_interval() {
    let redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.position_ttl = Duration::from_millis(1000);
        config.engine.node_ttl = Duration::from_secs(3);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    // No event, so no history keeps the key longer than the touches do.
    client.subscribe("workspace:acme").await;
    // Heartbeat 1 s, so a touch every 1 s giving 2 s to live.
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let key = redis_cli(&["--scan", "--pattern", "*:{workspace:acme}:m"]);
    assert!(key.ends_with(":{workspace:acme}:m"), "{key:?}");
    let mut lowest = i64::MAX;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let pttl: i64 = redis_cli(&["PTTL", &key]).parse().unwrap();
        lowest = lowest.min(pttl);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lowest > 600,
        "the position came within {lowest} ms of expiring"
    );
}

/// With Redis unreachable, `/api/unsubscribe` and `/api/disconnect` answer
/// 503 (no other node was told) but act on the answering node's own
/// connections, which need no Redis.
#[tokio::test]
async fn api_actions_during_an_outage_still_act_on_the_local_connections() {
    let mut redis = RedisServer::start().await;
    let n = nodes(&redis, 1, |config| {
        config.engine.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = n[0].connect_user("u1", &["acme"]).await;
    client.subscribe("workspace:acme").await;
    redis.kill();
    let (status, body) = n[0]
        .api(
            "/api/unsubscribe",
            json!({"user": "u1", "channel": "workspace:acme", "reason": "gone"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let push = client
        .wait_for("unsubscribed", |m| m["type"] == "unsubscribed")
        .await;
    assert_eq!(push["reason"], "gone");
    let (status, body) = n[0].api("/api/disconnect", json!({"user": "u1"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(client.closed(Duration::from_secs(5)).await.code, 4502);
}

/// A Redis Cluster master that crashes and comes back empty: its channels'
/// subscribers are told to resubscribe, and the channels of the masters that
/// never went down keep delivering (the cluster client's own resubscription
/// lost their sharded subscriptions, silently, on a node seeded with the
/// other masters).
#[tokio::test]
async fn after_a_cluster_master_restarts_every_shard_keeps_delivering() {
    let mut cluster = RedisCluster::start().await;
    let mut config = base_config();
    config.engine.kind = tidings::config::EngineKind::Redis;
    config.engine.redis_cluster = true;
    // Seeded with the masters that stay up, as the node that lost them was.
    config.engine.redis_url = cluster.masters[1..]
        .iter()
        .map(|m| format!("redis://127.0.0.1:{}", m.port))
        .collect::<Vec<_>>()
        .join(",");
    config.engine.redis_prefix = unique_prefix();
    config.engine.redis_timeout = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;
    let channels: Vec<String> = (0..12).map(|i| format!("workspace:acme:r{i}")).collect();
    let mut client = server.connect_user("u1", &["acme"]).await;
    for channel in &channels {
        client.subscribe(channel).await;
    }
    for channel in &channels {
        server.publish(channel, "before", json!({})).await;
    }
    assert_eq!(
        client.drain_events(Duration::from_millis(500)).await.len(),
        12
    );

    cluster.restart_master(0, Duration::from_secs(2)).await;
    // Publishes succeed again on every shard (the cluster client has
    // reconnected), and the restarted master's channels said `resubscribe`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for channel in &channels {
        loop {
            let (status, _) = server
                .api(
                    "/api/publish",
                    json!({"channel": channel, "event": "probe", "data": {}}),
                )
                .await;
            if status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(message) = client.next(Duration::from_millis(300)).await {
        if message["type"] == "unsubscribed" {
            assert_eq!(message["reason"], "resubscribe", "{message}");
            let channel = message["channel"].as_str().unwrap().to_owned();
            client.subscribe(&channel).await;
        }
    }
    for channel in &channels {
        server.publish(channel, "after", json!({})).await;
    }
    let after: Vec<String> = client
        .drain_events(Duration::from_millis(1000))
        .await
        .iter()
        .filter(|e| e["event"] == "after")
        .map(|e| e["channel"].as_str().unwrap().to_owned())
        .collect();
    let mut missing: Vec<&String> = channels.iter().filter(|c| !after.contains(c)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "no event after the restart on {missing:?}"
    );
}

/// Waits until `/health` says `wanted`; panics after `within`.
async fn wait_for_health(server: &TestServer, wanted: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while server.health_status().await != wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health not {wanted} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With one Redis Cluster master down, `/health` says `degraded` within a
/// check (every 2 s) even with no request reaching it, publishes on its
/// channels answer 503 and those on the other masters 200, and `/health`
/// stays `degraded` (a call that reaches a master still up does not end the
/// outage: before, it said `ok` and `degraded` in turn, logging each change)
/// until every master answers again.
#[tokio::test]
async fn with_one_cluster_master_down_health_stays_degraded_until_it_returns() {
    let mut cluster = RedisCluster::start().await;
    let mut config = base_config();
    config.engine.kind = tidings::config::EngineKind::Redis;
    config.engine.redis_cluster = true;
    config.engine.redis_url = cluster.urls();
    config.engine.redis_prefix = unique_prefix();
    config.engine.redis_timeout = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;
    // `redis-cli --cluster create` gives the first master slots 0 to 5460.
    let up_port = cluster.masters[1].port.to_string();
    let slot = |channel: &str| -> u16 {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &up_port, "CLUSTER", "KEYSLOT", channel])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let channel_where = |on_first: bool| {
        (0..1000)
            .map(|i| format!("workspace:acme:s{i}"))
            .find(|c| (slot(c) <= 5460) == on_first)
            .unwrap()
    };
    let (on_down, on_up) = (channel_where(true), channel_where(false));
    let publish = |channel: &str| {
        server.api(
            "/api/publish",
            json!({"channel": channel, "event": "e", "data": {}}),
        )
    };
    assert_eq!(publish(&on_down).await.0, 200);
    assert_eq!(publish(&on_up).await.0, 200);
    assert_eq!(server.health_status().await, "ok");

    cluster.masters[0].kill();
    // No request reaches the dead master: the node's own check finds it.
    wait_for_health(&server, "degraded", Duration::from_secs(5)).await;
    let (status, body) = publish(&on_down).await;
    assert_eq!(status, 503, "{body}");
    // Well within the cluster's node timeout (15 s), after which the other
    // masters refuse every command too (full coverage required).
    for _ in 0..6 {
        let (status, body) = publish(&on_up).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(server.health_status().await, "degraded");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    cluster.start_master(0).await;
    wait_for_health(&server, "ok", Duration::from_secs(15)).await;
    assert_eq!(publish(&on_down).await.0, 200);
}
