//! Several `tidings` processes on one real `redis-server`, killed with
//! SIGKILL while events keep coming: every client sees every offset exactly
//! once and in order (or an explicit `recovered: false`, which must not happen
//! while history holds everything), and a killed node's presence disappears
//! within `engine.node_ttl`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{
    next_json, spawn_tidings, start_redis, start_redis_with, Process, Redis, ScratchFile, Ws,
};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
const SECRET: &str = "cluster-test-secret-0123456789abcdef-xyz";
const API_KEY: &str = "cluster-test-api-key-0123";
const CHANNEL: &str = "workspace:acme";

/// One `tidings` node on the Redis engine.
struct Node {
    process: Process,
    port: u16,
}

async fn start_node(redis: &Redis, name: &str, config: &std::path::Path) -> Node {
    start_node_with(redis, name, config, &[]).await
}

/// A node with `env` added to its environment.
async fn start_node_with(
    redis: &Redis,
    name: &str,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> Node {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("TIDINGS_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_API_KEY", API_KEY)
        .env("TIDINGS_NODE", name)
        .env("TIDINGS_ENGINE_TYPE", "redis")
        .env(
            "TIDINGS_ENGINE_REDIS_URL",
            format!("redis://127.0.0.1:{}/0", redis.port),
        )
        .env("TIDINGS_ENGINE_NODE_TTL", "2s")
        .env("TIDINGS_LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .stderr(Stdio::null());
    let (process, port) = spawn_tidings(cmd).await;
    Node { process, port }
}

fn write_config(history_size: usize, presence_events: bool) -> ScratchFile {
    ScratchFile::write(
        "cluster-config",
        "tidings.toml",
        &format!(
            r#"
[namespaces.workspace]
min_segments = 2
max_segments = 4
subscribe = [{{ segment = 1, claim = "workspaces" }}]
presence = [{{ segment = 1, claim = "workspaces" }}]
history = [{{ segment = 1, claim = "workspaces" }}]
presence_events = {presence_events}
history_size = {history_size}
history_ttl = "10m"
"#
        ),
    )
}

fn token(sub: &str) -> String {
    tidings_auth::mint_hs256(
        SECRET,
        &tidings_auth::MintClaims {
            sub: sub.into(),
            workspaces: vec!["acme".into()],
            ttl: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn connect(port: u16, user: &str) -> Option<Ws> {
    let url = format!("ws://127.0.0.1:{port}/ws?token={}", token(user));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let connected = next_json(&mut ws, Duration::from_secs(2)).await?;
    (connected["type"] == "connected").then_some(ws)
}

/// What one client saw: offsets in arrival order, and each subscribe's reply.
#[derive(Default)]
struct Seen {
    offsets: Vec<u64>,
    replies: Vec<Value>,
    reconnects: u32,
}

/// A client that stays subscribed to `CHANNEL` through node deaths: when its
/// node goes away it connects to another live node and resubscribes with the
/// last offset it saw.
async fn follow(
    user: String,
    ports: Arc<Mutex<Vec<u16>>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    start: usize,
) {
    let mut epoch: Option<Value> = None;
    let mut attempt = start;
    while !stop.load(Ordering::Relaxed) {
        let port = {
            let ports = ports.lock().unwrap();
            ports[attempt % ports.len()]
        };
        attempt += 1;
        let Some(mut ws) = connect(port, &user).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let last = seen.lock().unwrap().offsets.last().copied();
        let mut subscribe = json!({"type": "subscribe", "id": 1, "channel": CHANNEL});
        if let (Some(offset), Some(epoch)) = (last, &epoch) {
            subscribe["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if ws
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let Some(message) = next_json(&mut ws, Duration::from_millis(500)).await else {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // Silence is normal between bursts; a dead socket is not.
                if ws
                    .send(Message::Text(r#"{"type":"ping"}"#.into()))
                    .await
                    .is_err()
                {
                    break;
                }
                match next_json(&mut ws, Duration::from_secs(1)).await {
                    Some(message) => {
                        record(&seen, &mut epoch, message);
                        continue;
                    }
                    None => break,
                }
            };
            record(&seen, &mut epoch, message);
        }
        seen.lock().unwrap().reconnects += 1;
    }
}

fn record(seen: &Mutex<Seen>, epoch: &mut Option<Value>, message: Value) {
    let mut seen = seen.lock().unwrap();
    match message["type"].as_str() {
        Some("subscribed") => {
            *epoch = Some(message["epoch"].clone());
            seen.replies.push(message);
        }
        Some("event") => seen.offsets.push(message["offset"].as_u64().unwrap_or(0)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_killed_one_after_another_lose_and_double_nothing() {
    const KILLS: usize = 10;
    let redis = start_redis().await;
    let config = write_config(50_000, false);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(start_node(&redis, &format!("n{i}"), &config).await));
    }
    let ports = Arc::new(Mutex::new(
        nodes.iter().flatten().map(|n| n.port).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Arc<Mutex<Seen>>> = (0..4).map(|_| Arc::default()).collect();
    let followers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, seen)| {
            tokio::spawn(follow(
                format!("u{i}"),
                ports.clone(),
                seen.clone(),
                stop.clone(),
                i,
            ))
        })
        .collect();
    // Give every client time to subscribe before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A publisher at a few hundred events/s through any live node, retrying a
    // failed publish with the same idempotency key on another node.
    let published = Arc::new(AtomicU64::new(0));
    let publishing = tokio::spawn({
        let ports = ports.clone();
        let stop = stop.clone();
        let published = published.clone();
        async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut seq = 0u64;
            let mut attempt = 0usize;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let body = json!({"channel": CHANNEL, "event": "tick", "data": {"seq": seq},
                                  "idempotency_key": format!("seq-{seq}")});
                loop {
                    let port = {
                        let ports = ports.lock().unwrap();
                        ports[attempt % ports.len()]
                    };
                    attempt += 1;
                    let sent = http
                        .post(format!("http://127.0.0.1:{port}/api/publish"))
                        .bearer_auth(API_KEY)
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(response) = sent {
                        if response.status().is_success() {
                            let reply: Value = response.json().await.unwrap_or_default();
                            assert_eq!(reply["offset"], seq, "one offset per logical publish");
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                published.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    // Kill a node with SIGKILL, start a fresh one, ten times over.
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let victim = kill % nodes.len();
        if let Some(node) = nodes[victim].take() {
            ports.lock().unwrap().retain(|p| *p != node.port);
            drop(node.process);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let node = start_node(&redis, &format!("n{victim}-{kill}"), &config).await;
        ports.lock().unwrap().push(node.port);
        nodes[victim] = Some(node);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    let total = published.load(Ordering::Relaxed);
    // Let every client catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients
        .iter()
        .any(|c| c.lock().unwrap().offsets.last().copied().unwrap_or(0) < total)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for follower in followers {
        follower.abort();
    }
    assert!(total > 1000, "published only {total} events");
    for (i, client) in clients.iter().enumerate() {
        let seen = client.lock().unwrap();
        assert!(
            seen.reconnects >= 3,
            "client {i} moved only {} times",
            seen.reconnects
        );
        for reply in &seen.replies[1..] {
            assert_eq!(
                reply["recovered"], true,
                "client {i}: history held everything: {reply}"
            );
        }
        let expected: Vec<u64> = (1..=total).collect();
        if seen.offsets != expected {
            let at = seen
                .offsets
                .iter()
                .zip(1..)
                .position(|(s, n)| *s != n)
                .unwrap_or(seen.offsets.len());
            panic!(
                "client {i}: {} events for {total} published; first difference at index {at}: {:?}",
                seen.offsets.len(),
                &seen.offsets[at.saturating_sub(3)..(at + 3).min(seen.offsets.len())]
            );
        }
        eprintln!(
            "client {i}: {total} events once and in order across {} reconnects",
            seen.reconnects
        );
    }
}

/// `GET` of a server API route on the node at `port`, as JSON.
async fn api_get(port: u16, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The first message within 8 s that `wanted` accepts, skipping the others.
async fn wait_message(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = next_json(ws, left).await.expect(what);
        if wanted(&message) {
            return message;
        }
    }
}

/// Subscribes to `CHANNEL` with request `id`; panics unless subscribed.
async fn subscribe(ws: &mut Ws, id: u64) {
    ws.send(Message::Text(
        json!({"type": "subscribe", "id": id, "channel": CHANNEL})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = wait_message(ws, "the subscribe reply", |m| m["id"] == id).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// The users `/api/presence` lists on `CHANNEL` through the node on `port`, sorted.
async fn listed_users(port: u16) -> Vec<String> {
    let listed = api_get(port, &format!("/api/presence?channel={CHANNEL}")).await;
    let mut users: Vec<String> = listed["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["user"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    users.sort();
    users
}

/// Waits for a presence push about `doomed` with `action`.
async fn wait_presence(ws: &mut Ws, action: &str) {
    wait_message(ws, "a presence push", |message| {
        message["type"] == "presence"
            && message["action"] == action
            && message["member"]["user"] == "doomed"
    })
    .await;
}

#[tokio::test]
async fn a_killed_nodes_presence_is_gone_within_node_ttl_even_if_it_restarts_at_once() {
    let redis = start_redis().await;
    let config = write_config(100, true);
    let a = start_node(&redis, "a", &config).await;
    let b = start_node(&redis, "b", &config).await;
    let mut watcher = connect(a.port, "watcher").await.unwrap();
    let mut doomed = connect(b.port, "doomed").await.unwrap();
    // The watcher is subscribed (node A placed on the channel) before the
    // doomed user joins: a join that comes first reaches the watcher as no
    // push (only a `presence` request would list it).
    for ws in [&mut watcher, &mut doomed] {
        subscribe(ws, 1).await;
    }
    wait_presence(&mut watcher, "join").await;
    let killed = Instant::now();
    drop(b.process);
    // Restarted at once under the same name (a fixed TIDINGS_NODE, a
    // StatefulSet pod): the crashed process is still reaped as dead.
    let _b_again = start_node(&redis, "b", &config).await;
    wait_presence(&mut watcher, "leave").await;
    let took = killed.elapsed();
    // node_ttl is 2 s; heartbeats every third of it, so the bound is ~2.7 s.
    assert!(took < Duration::from_secs(4), "leave after {took:?}");
    assert_eq!(listed_users(a.port).await, ["watcher"]);
    drop(doomed);
}

/// A user with an away tab on A and an online tab on B is online; when B is
/// killed and its entries reaped, observers get a `status` push: the user is
/// away now, with the one tab left (no `leave`: a tab is still there).
#[tokio::test]
async fn a_killed_nodes_tab_is_reaped_with_a_status_push() {
    let redis = start_redis().await;
    let config = write_config(100, true);
    let a = start_node(&redis, "a", &config).await;
    let b = start_node(&redis, "b", &config).await;
    let mut watcher = connect(a.port, "watcher").await.unwrap();
    subscribe(&mut watcher, 1).await;
    let mut away_tab = connect(a.port, "doomed").await.unwrap();
    away_tab
        .send(Message::Text(
            json!({"type": "status", "status": "away"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    wait_message(&mut away_tab, "the status reply", |m| m["type"] == "status").await;
    subscribe(&mut away_tab, 1).await;
    wait_presence(&mut watcher, "join").await;
    let mut online_tab = connect(b.port, "doomed").await.unwrap();
    subscribe(&mut online_tab, 1).await;
    let online = wait_message(&mut watcher, "the online push", |m| {
        m["type"] == "presence" && m["member"]["user"] == "doomed"
    })
    .await;
    assert_eq!(
        (&online["action"], &online["member"]["status"]),
        (&json!("status"), &json!("online")),
        "{online}"
    );
    drop(b.process);
    let reaped = wait_message(&mut watcher, "the push after the reap", |m| {
        m["type"] == "presence" && m["member"]["user"] == "doomed"
    })
    .await;
    assert_eq!(
        (&reaped["action"], &reaped["member"]["status"]),
        (&json!("status"), &json!("away")),
        "{reaped}"
    );
    assert_eq!(
        reaped["member"]["clients"].as_array().map(Vec::len),
        Some(1),
        "{reaped}"
    );
    assert_eq!(listed_users(a.port).await, ["doomed", "watcher"]);
    drop(online_tab);
}

/// A Redis that refuses the node's password (or its lack of one), or its
/// cluster commands, refuses every command: `/health` says `degraded` and a
/// publish answers 503, as in any other outage, rather than `ok` with every
/// publish failing.
#[tokio::test]
async fn a_refused_password_or_cluster_mode_is_an_outage() {
    const PASSWORD: &str = "the-right-password-0123";
    let redis = start_redis_with(&["--requirepass", PASSWORD]).await;
    let config = write_config(100, false);
    let none = start_node(&redis, "none", &config).await;
    let wrong = start_node_with(
        &redis,
        "wrong",
        &config,
        &[("TIDINGS_ENGINE_REDIS_PASSWORD", "not-the-password")],
    )
    .await;
    let right = start_node_with(
        &redis,
        "right",
        &config,
        &[("TIDINGS_ENGINE_REDIS_PASSWORD", PASSWORD)],
    )
    .await;
    // Cluster commands to a Redis without cluster support fail the same way.
    let not_a_cluster = start_node_with(
        &redis,
        "not-a-cluster",
        &config,
        &[
            ("TIDINGS_ENGINE_REDIS_PASSWORD", PASSWORD),
            ("TIDINGS_ENGINE_REDIS_CLUSTER", "true"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    for (node, healthy) in [
        (&none, false),
        (&wrong, false),
        (&not_a_cluster, false),
        (&right, true),
    ] {
        let publish = http
            .post(format!("http://127.0.0.1:{}/api/publish", node.port))
            .bearer_auth(API_KEY)
            .json(&json!({"channel": CHANNEL, "event": "e", "data": 1}))
            .send()
            .await
            .unwrap();
        let status = publish.status().as_u16();
        let body: Value = publish.json().await.unwrap();
        if healthy {
            assert_eq!(status, 200, "{body}");
        } else {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "engine_unavailable");
        }
        let health: Value = http
            .get(format!("http://127.0.0.1:{}/health", node.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected = if healthy { "ok" } else { "degraded" };
        assert_eq!(health["status"], expected, "{health}");
        assert_eq!(health["engine"]["available"], healthy, "{health}");
    }
}

/// A node stopped with SIGTERM leaves the node list at once; one that dies
/// is dropped after `node_ttl` (here 10 s, far longer than the wait below).
#[tokio::test]
async fn a_node_stopped_cleanly_leaves_the_node_list_at_once() {
    let redis = start_redis().await;
    let config = write_config(100, false);
    let slow_ttl = [("TIDINGS_ENGINE_NODE_TTL", "10s")];
    let staying = start_node_with(&redis, "staying", &config, &slow_ttl).await;
    let leaving = start_node_with(&redis, "leaving", &config, &slow_ttl).await;
    let http = reqwest::Client::new();
    let names = || async {
        let info = api_get(staying.port, "/api/info").await;
        let mut names: Vec<String> = info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while names().await != ["leaving", "staying"] {
        assert!(Instant::now() < deadline, "both nodes never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http
        .get(format!("http://127.0.0.1:{}/health", leaving.port))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let pid = leaving.process.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let stopped = Instant::now();
    while names().await != ["staying"] {
        assert!(
            stopped.elapsed() < Duration::from_secs(4),
            "the stopped node is still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Presence outlives a Redis outage longer than `node_ttl` (no node could
/// beat, so none is dead), and a node that stalled that long, taken for dead
/// by the others, has its subscribers enter again.
#[tokio::test]
async fn presence_outlives_a_redis_outage_and_a_stall_longer_than_node_ttl() {
    let redis = start_redis().await;
    let config = write_config(100, true);
    let a = start_node(&redis, "a", &config).await;
    let b = start_node(&redis, "b", &config).await;
    let mut on_a = connect(a.port, "on-a").await.unwrap();
    let mut on_b = connect(b.port, "on-b").await.unwrap();
    for ws in [&mut on_a, &mut on_b] {
        subscribe(ws, 1).await;
    }
    let listed = || listed_users(a.port);
    let both = ["on-a", "on-b"];
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed().await != both {
        assert!(Instant::now() < deadline, "both users never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis away for 5 s; node_ttl is 2 s.
    signal(redis.pid(), "-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(redis.pid(), "-CONT");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(listed().await, both, "after Redis came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node b stalls for 3.5 s: a takes it for dead and removes its entry…
    signal(b.process.0.id(), "-STOP");
    let deadline = Instant::now() + Duration::from_secs(6);
    while listed().await != ["on-a"] {
        assert!(
            Instant::now() < deadline,
            "the stalled node was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(b.process.0.id(), "-CONT");
    // …b finds out and has its subscriber subscribe again, which enters it again.
    let push = wait_message(&mut on_b, "the resubscribe push", |m| {
        m["type"] == "unsubscribed"
    })
    .await;
    assert_eq!(push["reason"], "resubscribe", "{push}");
    subscribe(&mut on_b, 2).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed().await != both {
        assert!(
            Instant::now() < deadline,
            "the stalled node's user never listed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
