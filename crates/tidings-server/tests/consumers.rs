//! Consumers against a real `redis-server` and a real PostgreSQL (Debian's
//! packages; scripts/test.sh installs them), with the real `tidings` binary:
//! latency from the source to a WebSocket subscriber, `kill -9` in the middle
//! of 10,000 events, two nodes on one group / one outbox, poison messages and
//! mapping mode.
//!
//! PostgreSQL runs in a temporary data directory on a free port; as root it is
//! run as the `postgres` user (initdb refuses root). The binaries are found in
//! `TEST_POSTGRES_BIN` or `/usr/lib/postgresql/*/bin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{
    free_port, next_json, spawn_tidings, start_redis, start_redis_on, temp_dir, wait_listening,
    Process, Redis, ScratchDir, ScratchFile, Ws,
};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
const SECRET: &str = "consumer-test-secret-0123456789abcdef-xyz";
const API_KEY: &str = "consumer-test-api-key-0123";

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, message: &str) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("message")
        .arg(message)
        .query_async(conn)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- PostgreSQL

struct Postgres {
    pid: u32,
    child: Child,
    port: u16,
    // Dropped after Drop::drop has stopped the server.
    _dir: ScratchDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it stops its own children.
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postgres_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL (Debian package postgresql; scripts/test.sh installs it)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` as the `postgres` user when we are root (initdb and postgres
/// refuse root); `setpriv` execs, so the pid is the program's own.
fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

async fn start_postgres() -> Postgres {
    let bin = postgres_bin();
    let port = free_port();
    let dir = temp_dir("pg");
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&*dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let data = dir.join("data");
    let status = as_postgres_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "initdb failed");
    let child = as_postgres_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&*dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pg = Postgres {
        pid: child.id(),
        child,
        port,
        _dir: dir,
    };
    wait_listening(port).await;
    // Listening comes a moment before accepting queries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = pg.client().await;
    let ddl = Command::new(BIN).arg("outbox-ddl").output().unwrap();
    assert!(ddl.status.success());
    client
        .batch_execute(&String::from_utf8(ddl.stdout).unwrap())
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE invoices (id text PRIMARY KEY, status text)")
        .await
        .unwrap();
    pg
}

impl Postgres {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

// ---------------------------------------------------------------- tidings

struct Node {
    process: Process,
    port: u16,
}

fn write_config(body: &str) -> ScratchFile {
    ScratchFile::write("config", "tidings.toml", body)
}

const NAMESPACES: &str = r#"
[namespaces.workspace]
min_segments = 2
max_segments = 4
subscribe = [{ segment = 1, claim = "workspaces" }]
history = [{ segment = 1, claim = "workspaces" }]
history_size = 20000
history_ttl = "10m"

[namespaces.billing]
min_segments = 2
max_segments = 2
subscribe = [{ segment = 1, claim = "workspaces" }]
"#;

/// The issue's event shape, mapped.
const MAPPING: &str = r#"
[consumers.mapping]
id = "id"
event = "type"
data = "data"
workspace = "tenantId"
entity_type = "data.entityType"
entity_id = "data.id"
entity_version = "version"
actor = "userId"
correlation_id = "correlationId"
channels = ["workspace:{tenantId}", "{source}:{tenantId}"]
"#;

async fn start_node(config: &Path, name: &str, redis_engine: Option<&Redis>) -> Node {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("TIDINGS_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    if let Some(redis) = redis_engine {
        cmd.env("TIDINGS_ENGINE_TYPE", "redis")
            .env("TIDINGS_ENGINE_REDIS_URL", redis.url());
    }
    let log = std::env::var("TEST_TIDINGS_LOG").is_ok();
    cmd.arg("--config")
        .arg(config)
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_API_KEY", API_KEY)
        .env("TIDINGS_NODE", name)
        .env("TIDINGS_LOG_LEVEL", if log { "info" } else { "warn" })
        .stderr(if log { Stdio::inherit() } else { Stdio::null() });
    let (process, port) = spawn_tidings(cmd).await;
    Node { process, port }
}

fn token() -> String {
    tidings_auth::mint_hs256(
        SECRET,
        &tidings_auth::MintClaims {
            sub: "u1".into(),
            workspaces: vec!["acme".into()],
            ttl: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    )
    .unwrap()
}

/// A connected client subscribed to `channels` (with `since` per channel when given).
async fn subscribe(port: u16, channels: &[String], since: &BTreeMap<String, Value>) -> Option<Ws> {
    let url = format!("ws://127.0.0.1:{port}/ws?token={}", token());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let connected = next_json(&mut ws, Duration::from_secs(2)).await?;
    if connected["type"] != "connected" {
        return None;
    }
    for (i, channel) in channels.iter().enumerate() {
        let mut message = json!({"type": "subscribe", "id": i + 1, "channel": channel});
        if let Some(since) = since.get(channel) {
            message["since"] = since.clone();
        }
        ws.send(Message::Text(message.to_string().into()))
            .await
            .ok()?;
    }
    Some(ws)
}

/// Waits for the `subscribed` replies of `count` channels, returning any event that came first.
async fn await_subscribed(ws: &mut Ws, count: usize) -> Vec<Value> {
    let mut early = Vec::new();
    let mut subscribed = 0;
    while subscribed < count {
        let message = next_json(ws, Duration::from_secs(5))
            .await
            .expect("subscribed");
        match message["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            Some("event") => early.push(message),
            _ => panic!("unexpected {message}"),
        }
    }
    early
}

/// Events in arrival order per channel, kept across reconnects.
#[derive(Default)]
struct Seen {
    by_channel: BTreeMap<String, Vec<Value>>,
    positions: BTreeMap<String, Value>,
    reconnects: u32,
}

/// A client that stays subscribed to `channels` on whichever port is current,
/// reconnecting with `since` when its node dies.
async fn follow(
    ports: Arc<Mutex<Vec<u16>>>,
    channels: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut attempt = 0;
    while !stop.load(Ordering::Relaxed) {
        let port = {
            let ports = ports.lock().unwrap();
            ports[attempt % ports.len()]
        };
        attempt += 1;
        let since = seen.lock().unwrap().positions.clone();
        let Some(mut ws) = subscribe(port, &channels, &since).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let Some(message) = next_json(&mut ws, Duration::from_millis(500)).await else {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if ws
                    .send(Message::Text(r#"{"type":"ping"}"#.into()))
                    .await
                    .is_err()
                {
                    break;
                }
                match next_json(&mut ws, Duration::from_secs(1)).await {
                    Some(message) => {
                        record(&seen, message);
                        continue;
                    }
                    None => break,
                }
            };
            record(&seen, message);
        }
        seen.lock().unwrap().reconnects += 1;
    }
}

fn record(seen: &Mutex<Seen>, message: Value) {
    let mut seen = seen.lock().unwrap();
    let channel = message["channel"].as_str().unwrap_or_default().to_owned();
    match message["type"].as_str() {
        Some("subscribed") => {
            let epoch = message["epoch"].clone();
            let offset = message["offset"].clone();
            seen.positions
                .entry(channel)
                .or_insert_with(|| json!({"offset": offset}))["epoch"] = epoch;
        }
        Some("event") => {
            if let Some(position) = seen.positions.get_mut(&channel) {
                position["offset"] = message["offset"].clone();
            }
            seen.by_channel.entry(channel).or_default().push(message);
        }
        _ => {}
    }
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `metric{...consumer="name"...}`.
/// Whether consumer `bus`'s `name` reads `value` within 5 s.
async fn metric_reaches(port: u16, name: &str, value: f64) -> bool {
    for _ in 0..50 {
        if metric(&metrics(port).await, name, "bus") == value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn metric(text: &str, metric: &str, consumer: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{metric}{{")) && l.contains(&format!("consumer=\"{consumer}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn app_event(id: &str, seq: u64, tenant: &str, source: &str) -> String {
    json!({
        "id": id, "type": "approval.granted", "source": source,
        "timestamp": "2026-12-05T08:00:00Z", "correlationId": format!("c-{id}"),
        "tenantId": tenant, "userId": "u9", "version": seq,
        "data": {"entityType": "invoice", "id": "42", "seq": seq}
    })
    .to_string()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().unwrap_or(0))
        .collect()
}

// ---------------------------------------------------------------- Redis Streams tests

fn stream_config(stream: &str, extra: &str) -> String {
    format!(
        r#"{NAMESPACES}
[[consumers]]
name = "bus"
kind = "redis_stream"
streams = ["{stream}"]
batch_size = 200
block = "2s"
claim_idle = "2s"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_event_reaches_a_subscriber_within_100ms() {
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\nmode = \"mapping\"\n{MAPPING}",
        stream_config("events", ""),
        redis.url()
    ));
    let node = start_node(&config, "n1", None).await;
    let mut conn = redis.conn().await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    // The group is created when the consumer starts; wait until it reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for seq in 1..=20u64 {
        let sent = Instant::now();
        xadd(
            &mut conn,
            "events",
            &app_event(&format!("e{seq}"), seq, "acme", "billing"),
        )
        .await;
        let event = next_json(&mut ws, Duration::from_secs(2))
            .await
            .expect("the event");
        latencies.push(sent.elapsed());
        assert_eq!(event["event"], "approval.granted");
        assert_eq!(event["data"]["seq"], seq);
        assert_eq!(
            event["meta"]["entity"],
            json!({"type": "invoice", "id": "42", "version": seq})
        );
        assert_eq!(event["meta"]["actor"], "u9");
        assert_eq!(event["meta"]["correlation_id"], format!("c-e{seq}"));
    }
    assert_within_100ms("stream → subscriber", latencies);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_stream_messages_are_dead_lettered_and_counted() {
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\n",
        stream_config("commands", ""),
        redis.url()
    ));
    let node = start_node(&config, "n1", None).await;
    let mut conn = redis.conn().await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = |n: u64| {
        json!({"method": "publish", "payload": {"channel": "workspace:acme", "event": "tick", "data": {"seq": n}}})
            .to_string()
    };
    xadd(&mut conn, "commands", &good(1)).await;
    xadd(&mut conn, "commands", "{not json").await;
    xadd(&mut conn, "commands", &good(2)).await;
    xadd(
        &mut conn,
        "commands",
        &json!({"method": "publish", "payload": {"channel": "nowhere:x", "event": "tick", "data": 1}})
            .to_string(),
    )
    .await;
    let _: String = redis::cmd("XADD")
        .arg("commands")
        .arg("*")
        .arg("other")
        .arg("field")
        .query_async(&mut conn)
        .await
        .unwrap();
    xadd(
        &mut conn,
        "commands",
        &json!({"method": "events", "payload": {"workspace": "acme", "entity": {"type": "invoice", "id": "7"},
                 "action": "status_changed", "data": {"seq": 3}}})
        .to_string(),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = next_json(&mut ws, Duration::from_secs(3))
            .await
            .expect("the good events arrive");
        got.push(event);
    }
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(got[2]["event"], "invoice.status_changed");
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("commands:dead-letter")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let field = |entry: &redis::streams::StreamId, name: &str| -> String {
        entry.get::<String>(name).unwrap_or_default()
    };
    assert_eq!(dead.ids.len(), 3, "three dead letters");
    assert!(
        field(&dead.ids[0], "reason").contains("invalid body"),
        "{}",
        field(&dead.ids[0], "reason")
    );
    assert_eq!(field(&dead.ids[0], "message"), "{not json");
    assert_eq!(field(&dead.ids[0], "stream"), "commands");
    assert!(
        field(&dead.ids[1], "reason").starts_with("unknown_channel"),
        "{}",
        field(&dead.ids[1], "reason")
    );
    assert!(field(&dead.ids[2], "reason").contains("no `message` field"));
    assert_eq!(field(&dead.ids[2], "message"), r#"{"other":"field"}"#);
    // Everything is acknowledged: nothing pending in the group. A read's
    // entries are acknowledged together once all are handled, so the last
    // dead letter can be seen a moment before the acknowledgement.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg("commands")
            .arg("tidings")
            .query_async(&mut conn)
            .await
            .unwrap();
        if pending.count() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} entries still pending",
            pending.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = metrics(node.port).await;
    assert_eq!(
        metric(&text, "tidings_consumer_dead_lettered_total", "bus"),
        3.0
    );
    assert_eq!(
        metric(&text, "tidings_consumer_processed_total", "bus"),
        6.0
    );
    // The entity change goes to three channels.
    assert_eq!(
        metric(&text, "tidings_consumer_published_total", "bus"),
        5.0
    );
    assert_eq!(metric(&text, "tidings_consumer_lag", "bus"), 0.0);

    // A dead letter that cannot be written leaves its entry pending, to be
    // read again, and it counts as processed once, when it is written.
    let _: () = redis::cmd("RENAME")
        .arg("commands:dead-letter")
        .arg("earlier-dead-letters")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("commands:dead-letter")
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    xadd(&mut conn, "commands", "{still not json").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = metrics(node.port).await;
    assert_eq!(
        metric(&text, "tidings_consumer_processed_total", "bus"),
        6.0,
        "not finished while its dead letter fails"
    );
    let _: () = redis::cmd("DEL")
        .arg("commands:dead-letter")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut written = false;
    for _ in 0..200 {
        let len: u64 = redis::cmd("XLEN")
            .arg("commands:dead-letter")
            .query_async(&mut conn)
            .await
            .unwrap();
        if len == 1 {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "the dead letter is written once the key is free");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = metrics(node.port).await;
    assert_eq!(
        metric(&text, "tidings_consumer_processed_total", "bus"),
        7.0
    );
    assert_eq!(
        metric(&text, "tidings_consumer_dead_lettered_total", "bus"),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_mode_dead_letters_a_missing_field_and_an_unknown_namespace() {
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\nmode = \"mapping\"\nevents = [\"approval.*\"]\n{MAPPING}",
        stream_config("events", ""),
        redis.url()
    ));
    let node = start_node(&config, "n1", None).await;
    let mut conn = redis.conn().await;
    let channels = vec!["workspace:acme".to_owned(), "billing:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    xadd(&mut conn, "events", &app_event("e1", 1, "acme", "billing")).await;
    let mut missing: Value = serde_json::from_str(&app_event("e2", 2, "acme", "billing")).unwrap();
    missing.as_object_mut().unwrap().remove("tenantId");
    xadd(&mut conn, "events", &missing.to_string()).await;
    xadd(&mut conn, "events", &app_event("e3", 3, "acme", "crm")).await;
    let mut skipped: Value = serde_json::from_str(&app_event("e4", 4, "acme", "billing")).unwrap();
    skipped["type"] = json!("invoice.paid");
    xadd(&mut conn, "events", &skipped.to_string()).await;
    xadd(&mut conn, "events", &app_event("e5", 5, "acme", "billing")).await;
    // The same event id again (a producer's retry): published once.
    xadd(&mut conn, "events", &app_event("e5", 5, "acme", "billing")).await;
    let mut got: Vec<Value> = Vec::new();
    while let Some(event) = next_json(&mut ws, Duration::from_millis(1500)).await {
        got.push(event);
    }
    let arrived: Vec<(String, u64)> = got
        .iter()
        .map(|e| {
            (
                e["channel"].as_str().unwrap().to_owned(),
                e["data"]["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        arrived,
        [
            ("workspace:acme".into(), 1),
            ("billing:acme".into(), 1),
            ("workspace:acme".into(), 5),
            ("billing:acme".into(), 5)
        ]
    );
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("events:dead-letter")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reasons: Vec<String> = dead
        .ids
        .iter()
        .map(|e| e.get::<String>("reason").unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0], "missing field `tenantId`");
    assert!(reasons[1].starts_with("unknown_channel"), "{reasons:?}");
    let text = metrics(node.port).await;
    assert_eq!(
        metric(&text, "tidings_consumer_dead_lettered_total", "bus"),
        2.0
    );
    assert_eq!(
        metric(&text, "tidings_consumer_duplicates_total", "bus"),
        2.0
    );
}

#[test]
fn checkconfig_reports_the_consumer_field_and_reason() {
    let config = write_config(&format!(
        "{}\nmode = \"mapping\"\n{}",
        stream_config("events", ""),
        MAPPING.replace("\"{source}:{tenantId}\"", "\"audit:{tenantId}\"")
    ));
    let output = Command::new(BIN)
        .arg("checkconfig")
        .arg(&config)
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("consumers[0].mapping.channels[1]: namespace `audit` is not configured"),
        "{stderr}"
    );
    let config = write_config(&format!(
        "{}\nmode = \"mapping\"\n{}",
        stream_config("events", ""),
        MAPPING.replace("\"{source}:{tenantId}\"", "\"billing:{tenantId\"")
    ));
    let output = Command::new(BIN)
        .arg("checkconfig")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "consumers[0].mapping.channels[1]: `billing:{tenantId` has a `{` without its `}`"
        ),
        "{stderr}"
    );
    let ok = write_config(&format!(
        "{}\nmode = \"mapping\"\n{MAPPING}",
        stream_config("events", "")
    ));
    let output = Command::new(BIN)
        .arg("checkconfig")
        .arg(&ok)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("consumer   bus: redis_stream streams events (group tidings)"),
        "{stdout}"
    );
}

#[test]
fn outbox_ddl_matches_the_docs() {
    let output = Command::new(BIN).arg("outbox-ddl").output().unwrap();
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/outbox.sql"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), docs);
}

/// Polls until `done` or `wait` passes.
async fn wait_until(wait: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// Each channel saw `1..=per_channel` exactly once, in order.
fn assert_once_in_order(seen: &Seen, channels: &[String], per_channel: u64) {
    for channel in channels {
        let got = seqs(
            seen.by_channel
                .get(channel)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        let expected: Vec<u64> = (1..=per_channel).collect();
        if got != expected {
            let at = got
                .iter()
                .zip(1..)
                .position(|(s, n)| *s != n)
                .unwrap_or(got.len());
            panic!(
                "{channel}: {} events for {per_channel}; first difference at {at}: {:?}",
                got.len(),
                &got[at.saturating_sub(3)..(at + 3).min(got.len())]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_consumer_killed_mid_10000_loses_and_doubles_nothing() {
    const EVENTS: u64 = 10_000;
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nmode = \"mapping\"\n{}",
        stream_config("events", ""),
        MAPPING.replace(", \"{source}:{tenantId}\"", "")
    ));
    let node = start_node(&config, "n1", Some(&redis)).await;
    let ports = Arc::new(Mutex::new(vec![node.port]));
    let channels = vec!["workspace:acme".to_owned()];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        ports.clone(),
        channels.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut conn = redis.conn().await;
    let mut pipe = redis::pipe();
    for seq in 1..=EVENTS {
        pipe.cmd("XADD")
            .arg("events")
            .arg("*")
            .arg("message")
            .arg(app_event(&format!("e{seq}"), seq, "acme", "billing"))
            .ignore();
        if seq % 500 == 0 {
            let () = pipe.query_async(&mut conn).await.unwrap();
            pipe = redis::pipe();
        }
    }
    // Kill the node with SIGKILL a few thousand events in.
    let count = |seen: &Mutex<Seen>| {
        seen.lock()
            .unwrap()
            .by_channel
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || count(&seen) >= 2_000).await,
        "consumption did not start"
    );
    drop(node.process);
    let at_kill = count(&seen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = start_node(&config, "n1", Some(&redis)).await;
    *ports.lock().unwrap() = vec![node.port];
    let finished = wait_until(Duration::from_secs(60), || count(&seen) >= EVENTS as usize).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "killed at {at_kill} events; {} reconnects; finished: {finished}",
        seen.reconnects
    );
    assert!(
        at_kill < EVENTS as usize,
        "killed too late to prove anything"
    );
    assert_once_in_order(&seen, &channels, EVENTS);
    let text = metrics(node.port).await;
    eprintln!(
        "after restart: published {} duplicates {}",
        metric(&text, "tidings_consumer_published_total", "bus"),
        metric(&text, "tidings_consumer_duplicates_total", "bus")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_in_one_group_publish_each_event_once() {
    const EVENTS: u64 = 2_000;
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nmode = \"mapping\"\n{}",
        stream_config("events", ""),
        MAPPING.replace(", \"{source}:{tenantId}\"", "")
    ));
    let a = start_node(&config, "a", Some(&redis)).await;
    let b = start_node(&config, "b", Some(&redis)).await;
    let channels = vec!["workspace:acme".to_owned()];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        Arc::new(Mutex::new(vec![a.port])),
        channels.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut conn = redis.conn().await;
    for seq in 1..=EVENTS {
        xadd(
            &mut conn,
            "events",
            &app_event(&format!("e{seq}"), seq, "acme", "billing"),
        )
        .await;
    }
    let total = || {
        seen.lock()
            .unwrap()
            .by_channel
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_until(Duration::from_secs(30), || total() >= EVENTS as usize).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    let mut got = seqs(&seen.lock().unwrap().by_channel["workspace:acme"]);
    got.sort_unstable();
    assert_eq!(got, (1..=EVENTS).collect::<Vec<_>>(), "each event once");
    let published_a = metric(
        &metrics(a.port).await,
        "tidings_consumer_published_total",
        "bus",
    );
    let published_b = metric(
        &metrics(b.port).await,
        "tidings_consumer_published_total",
        "bus",
    );
    eprintln!("node a published {published_a}, node b {published_b}");
    assert_eq!(published_a + published_b, EVENTS as f64);
}

/// The source Redis restarts without its data: the consumer's group is gone.
/// Made again at the stream's beginning (not at `start = "new"`'s end), so a
/// message written before the consumer reconnected is not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lost_with_redis_data_is_made_again_without_skipping() {
    let source = start_redis().await;
    let port = source.port;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\n",
        stream_config("commands", ""),
        source.url()
    ));
    let node = start_node(&config, "n1", None).await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let tick = |seq: u64| {
        json!({"method": "publish", "payload": {"channel": "workspace:acme", "event": "tick", "data": {"seq": seq}}})
            .to_string()
    };
    let mut conn = source.conn().await;
    xadd(&mut conn, "commands", &tick(1)).await;
    let first = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["data"]["seq"], 1);
    assert!(
        metric_reaches(node.port, "tidings_consumer_source_up", 1.0).await,
        "the source is up"
    );
    // Restarted empty; a producer writes at once, before the consumer is back.
    drop(conn);
    drop(source);
    assert!(
        metric_reaches(node.port, "tidings_consumer_source_up", 0.0).await,
        "the monitor sees the source gone"
    );
    let source = start_redis_on(port).await;
    let mut conn = source.conn().await;
    xadd(&mut conn, "commands", &tick(2)).await;
    xadd(&mut conn, "commands", &tick(3)).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = next_json(&mut ws, Duration::from_secs(15))
            .await
            .expect("the messages written while the group was gone");
        got.push(event);
    }
    assert_eq!(seqs(&got), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_engine_is_retried_not_dead_lettered() {
    let source = start_redis().await;
    let engine = start_redis().await;
    let engine_port = engine.port;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\nmax_retry_backoff = \"200ms\"\n",
        stream_config("commands", ""),
        source.url()
    ));
    let node = start_node(&config, "n1", Some(&engine)).await;
    let mut conn = source.conn().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The engine's Redis goes away; a message arrives meanwhile.
    drop(engine);
    tokio::time::sleep(Duration::from_millis(300)).await;
    xadd(
        &mut conn,
        "commands",
        &json!({"method": "publish", "payload": {"channel": "workspace:acme", "event": "tick",
                 "data": {"seq": 1}}})
        .to_string(),
    )
    .await;
    let retried = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let retries = metric(
                &metrics(node.port).await,
                "tidings_consumer_retries_total",
                "bus",
            );
            if retries >= 2.0 || Instant::now() > deadline {
                return retries;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(retried.await >= 2.0, "the publish is retried");
    // The engine comes back on the same port: the event is published, once.
    let _engine = start_redis_on(engine_port).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = metrics(node.port).await;
        if metric(&text, "tidings_consumer_published_total", "bus") >= 1.0
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric(&text, "tidings_consumer_published_total", "bus"),
        1.0
    );
    assert_eq!(
        metric(&text, "tidings_consumer_dead_lettered_total", "bus"),
        0.0
    );
    let dead: u64 = redis::cmd("XLEN")
        .arg("commands:dead-letter")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

// ---------------------------------------------------------------- outbox tests

fn outbox_config(pg: &Postgres, extra: &str) -> String {
    format!(
        r#"{NAMESPACES}
[[consumers]]
name = "outbox"
kind = "postgres_outbox"
postgres_url = "{}"
{extra}
"#,
        pg.url()
    )
}

async fn insert_row(client: &tokio_postgres::Client, partition: &str, message: &Value) {
    client
        .execute(
            "INSERT INTO tidings_outbox (partition_key, message) VALUES ($1, $2::text::jsonb)",
            &[&partition, &message.to_string()],
        )
        .await
        .unwrap();
}

fn outbox_publish(channel: &str, seq: u64) -> Value {
    json!({"method": "publish", "payload": {"channel": channel, "event": "tick", "data": {"seq": seq}}})
}

/// At least 90% of `latencies` under 100 ms and every one under 1 s: one late
/// event on a loaded 2-core CI machine (a compiler or another test on the
/// cores) does not fail the run, a consumer that waits for its polling
/// interval or batches does.
fn assert_within_100ms(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let p90 = latencies[latencies.len() * 9 / 10 - 1];
    let worst = latencies[latencies.len() - 1];
    eprintln!(
        "{what} latency over {} events: p90 {p90:?}, worst {worst:?}",
        latencies.len()
    );
    assert!(
        p90 < Duration::from_millis(100),
        "p90 {p90:?}: {latencies:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "worst {worst:?}: {latencies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_row_committed_arrives_within_100ms_and_a_rollback_publishes_nothing() {
    let pg = start_postgres().await;
    // A long polling interval: only NOTIFY can be this fast.
    let config = write_config(&outbox_config(&pg, "poll_interval = \"30s\""));
    let node = start_node(&config, "n1", None).await;
    let mut client = pg.client().await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut latencies = Vec::new();
    for seq in 1..=10u64 {
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO invoices (id, status) VALUES ($1, 'approved')",
            &[&format!("inv-{seq}")],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO tidings_outbox (partition_key, message) VALUES ('invoice', $1::text::jsonb)",
            &[&outbox_publish("workspace:acme", seq).to_string()],
        )
        .await
        .unwrap();
        let sent = Instant::now();
        tx.commit().await.unwrap();
        let event = next_json(&mut ws, Duration::from_secs(2))
            .await
            .expect("the event");
        latencies.push(sent.elapsed());
        assert_eq!(event["data"]["seq"], seq);
    }
    // Every row well under the 30 s polling interval: NOTIFY woke the consumer.
    assert_within_100ms("commit → subscriber", latencies);
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO tidings_outbox (message) VALUES ($1::text::jsonb)",
        &[&outbox_publish("workspace:acme", 999).to_string()],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    insert_row(&client, "invoice", &outbox_publish("workspace:acme", 11)).await;
    let event = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        event["data"]["seq"], 11,
        "the rolled-back row published nothing"
    );
    assert!(next_json(&mut ws, Duration::from_millis(300))
        .await
        .is_none());
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE processed_at IS NULL), count(*) FROM tidings_outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 11));
}

/// A notify channel with capitals wakes the consumer too: the trigger's
/// `pg_notify` names it case-sensitively, so the consumer's LISTEN must not
/// fold it to lower case (it did, and every row waited for the next poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_channel_with_capitals_wakes_the_consumer() {
    let pg = start_postgres().await;
    let ddl = Command::new(BIN)
        .args([
            "outbox-ddl",
            "--table",
            "app_events",
            "--notify-channel",
            "AppEvents",
        ])
        .output()
        .unwrap();
    assert!(ddl.status.success());
    let client = pg.client().await;
    client
        .batch_execute(&String::from_utf8(ddl.stdout).unwrap())
        .await
        .unwrap();
    let config = write_config(&outbox_config(
        &pg,
        "table = \"app_events\"\nnotify_channel = \"AppEvents\"\npoll_interval = \"30s\"",
    ));
    let node = start_node(&config, "n1", None).await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    client
        .execute(
            "INSERT INTO app_events (partition_key, message) VALUES ('a', $1::text::jsonb)",
            &[&outbox_publish("workspace:acme", 1).to_string()],
        )
        .await
        .unwrap();
    let event = next_json(&mut ws, Duration::from_secs(5))
        .await
        .expect("woken by NOTIFY, well before the 30 s poll");
    assert_eq!(event["data"]["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_poison_rows_are_dead_lettered_and_counted() {
    let pg = start_postgres().await;
    let config = write_config(&outbox_config(
        &pg,
        &format!("mode = \"mapping\"\nevents = [\"approval.*\"]\n{MAPPING}"),
    ));
    let node = start_node(&config, "n1", None).await;
    let client = pg.client().await;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let event = |id: &str, seq: u64, source: &str| -> Value {
        serde_json::from_str(&app_event(id, seq, "acme", source)).unwrap()
    };
    insert_row(&client, "acme", &event("e1", 1, "billing")).await;
    let mut missing = event("e2", 2, "billing");
    missing.as_object_mut().unwrap().remove("tenantId");
    insert_row(&client, "acme", &missing).await;
    insert_row(&client, "acme", &event("e3", 3, "crm")).await;
    insert_row(&client, "acme", &json!([1, 2, 3])).await;
    insert_row(&client, "acme", &event("e5", 5, "billing")).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            next_json(&mut ws, Duration::from_secs(3))
                .await
                .expect("good rows arrive"),
        );
    }
    assert_eq!(seqs(&got), [1, 5]);
    // The marks are committed after the batch's last row is placed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let unprocessed: i64 = client
            .query_one(
                "SELECT count(*) FROM tidings_outbox WHERE processed_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if unprocessed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = client
        .query(
            "SELECT id, dead_letter_reason, processed_at IS NOT NULL FROM tidings_outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(2)),
        "every row processed"
    );
    assert_eq!(reasons[0], None);
    assert_eq!(reasons[1].as_deref(), Some("missing field `tenantId`"));
    assert!(
        reasons[2]
            .as_deref()
            .unwrap_or("")
            .starts_with("unknown_channel"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[3].as_deref(),
        Some("the message is not a JSON object")
    );
    assert_eq!(reasons[4], None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = metrics(node.port).await;
    assert_eq!(
        metric(&text, "tidings_consumer_dead_lettered_total", "outbox"),
        3.0
    );
    assert_eq!(
        metric(&text, "tidings_consumer_processed_total", "outbox"),
        5.0
    );
    assert_eq!(metric(&text, "tidings_consumer_lag", "outbox"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_shared_by_two_nodes_publishes_each_row_once_in_order_per_partition() {
    const PER_PARTITION: u64 = 500;
    let pg = start_postgres().await;
    let redis = start_redis().await;
    // Two partitions per batch: each node holds some partitions at a time.
    let config = write_config(&outbox_config(&pg, "batch_size = 2"));
    let a = start_node(&config, "a", Some(&redis)).await;
    let b = start_node(&config, "b", Some(&redis)).await;
    let channels: Vec<String> = (0..4).map(|p| format!("workspace:acme:p{p}")).collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        Arc::new(Mutex::new(vec![a.port])),
        channels.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let client = pg.client().await;
    for seq in 1..=PER_PARTITION {
        // One statement, one NOTIFY, four rows: one per partition.
        let values: Vec<String> = channels
            .iter()
            .enumerate()
            .map(|(p, channel)| format!("('p{p}', '{}'::jsonb)", outbox_publish(channel, seq)))
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO tidings_outbox (partition_key, message) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
    }
    let total = || {
        seen.lock()
            .unwrap()
            .by_channel
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_until(Duration::from_secs(60), || {
        total() >= 4 * PER_PARTITION as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    assert_once_in_order(&seen.lock().unwrap(), &channels, PER_PARTITION);
    let published_a = metric(
        &metrics(a.port).await,
        "tidings_consumer_published_total",
        "outbox",
    );
    let published_b = metric(
        &metrics(b.port).await,
        "tidings_consumer_published_total",
        "outbox",
    );
    eprintln!("node a published {published_a}, node b {published_b}");
    assert_eq!(published_a + published_b, (4 * PER_PARTITION) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_consumer_killed_mid_10000_loses_and_doubles_nothing() {
    const EVENTS: u64 = 10_000;
    let pg = start_postgres().await;
    let redis = start_redis().await;
    let config = write_config(&outbox_config(
        &pg,
        &format!(
            "mode = \"mapping\"\n{}",
            MAPPING.replace(", \"{source}:{tenantId}\"", "")
        ),
    ));
    let node = start_node(&config, "n1", Some(&redis)).await;
    let ports = Arc::new(Mutex::new(vec![node.port]));
    let channels = vec!["workspace:acme".to_owned()];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        ports.clone(),
        channels.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let client = pg.client().await;
    for chunk in (1..=EVENTS).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|seq| {
                format!(
                    "('acme', '{}'::jsonb)",
                    app_event(&format!("e{seq}"), *seq, "acme", "billing")
                )
            })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO tidings_outbox (partition_key, message) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
    }
    let count = |seen: &Mutex<Seen>| {
        seen.lock()
            .unwrap()
            .by_channel
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || count(&seen) >= 2_000).await,
        "consumption did not start"
    );
    drop(node.process);
    let at_kill = count(&seen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = start_node(&config, "n1", Some(&redis)).await;
    *ports.lock().unwrap() = vec![node.port];
    let finished = wait_until(Duration::from_secs(60), || count(&seen) >= EVENTS as usize).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "killed at {at_kill} events; {} reconnects; finished: {finished}",
        seen.reconnects
    );
    assert!(
        at_kill < EVENTS as usize,
        "killed too late to prove anything"
    );
    assert_once_in_order(&seen, &channels, EVENTS);
    let unprocessed: i64 = client
        .query_one(
            "SELECT count(*) FROM tidings_outbox WHERE processed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unprocessed, 0);
}

// ---------------------------------------------------------------- throughput (measuring, not a check)

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn timed_event(seq: u64) -> String {
    json!({
        "id": format!("t{seq}"), "type": "approval.granted", "source": "bench",
        "tenantId": "acme", "userId": "u9", "correlationId": "c",
        "data": {"entityType": "invoice", "id": "42", "seq": seq, "sent": micros_now()}
    })
    .to_string()
}

/// Where the measured events come from.
enum Source {
    Stream(redis::aio::MultiplexedConnection),
    Outbox(tokio_postgres::Client),
}

impl Source {
    async fn add(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        match self {
            Self::Stream(conn) => {
                let mut pipe = redis::pipe();
                for seq in seqs {
                    pipe.cmd("XADD")
                        .arg("bench")
                        .arg("*")
                        .arg("message")
                        .arg(timed_event(seq))
                        .ignore();
                }
                let () = pipe.query_async(conn).await.unwrap();
            }
            Self::Outbox(client) => {
                let values: Vec<String> = seqs
                    .map(|seq| format!("('acme', '{}'::jsonb)", timed_event(seq)))
                    .collect();
                client
                    .batch_execute(&format!(
                        "INSERT INTO tidings_outbox (partition_key, message) VALUES {}",
                        values.join(", ")
                    ))
                    .await
                    .unwrap();
            }
        }
    }
}

/// Receives `count` events; returns each one's latency (receive − `data.sent`)
/// and the time the last one arrived.
async fn receive(ws: &mut Ws, count: u64) -> (Vec<u64>, Instant) {
    let mut latencies = Vec::with_capacity(count as usize);
    while (latencies.len() as u64) < count {
        let Some(event) = next_json(ws, Duration::from_secs(20)).await else {
            panic!("only {} of {count} events arrived", latencies.len());
        };
        let sent = event["data"]["sent"].as_u64().unwrap_or(0);
        latencies.push(micros_now().saturating_sub(sent));
    }
    (latencies, Instant::now())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at] as f64 / 1000.0
}

async fn measure(name: &str, node: &Node, mut source: Source) {
    const BURST: u64 = 20_000;
    let channels = vec!["workspace:acme".to_owned()];
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // 1. A burst far faster than the consumer: its drain rate is the throughput.
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        let result = receive(&mut ws, BURST).await;
        (ws, result)
    });
    for first in (1..=BURST).step_by(500) {
        source.add(first..=first + 499).await;
    }
    let (mut ws, (_, last)) = receiving.await.unwrap();
    let throughput = BURST as f64 / (last - started).as_secs_f64();
    eprintln!("{name}: burst of {BURST}: {throughput:.0} events/s");
    // 2. Steady rates below it, 5 s each: the latency of each event.
    let mut next = BURST + 1;
    for fraction in [0.1, 0.25, 0.5] {
        let rate = (throughput * fraction).max(100.0);
        let per_tick = (rate / 100.0).ceil() as u64;
        let ticks = 500u64;
        let total = per_tick * ticks;
        let receiving = tokio::spawn(async move {
            let result = receive(&mut ws, total).await;
            (ws, result)
        });
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for _ in 0..ticks {
            tick.tick().await;
            source.add(next..=next + per_tick - 1).await;
            next += per_tick;
        }
        let (returned, (mut latencies, _)) = receiving.await.unwrap();
        ws = returned;
        latencies.sort_unstable();
        eprintln!(
            "{name}: steady {:.0} events/s for 5 s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            per_tick as f64 * 100.0,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    }
}

/// `cargo test --release -p tidings-server --test consumers -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/benchmarks.md; run it in release mode"]
async fn throughput_of_one_node_from_a_stream_and_from_the_outbox() {
    let mapping = format!(
        "mode = \"mapping\"\n{}",
        MAPPING.replace(", \"{source}:{tenantId}\"", "")
    );
    let redis = start_redis().await;
    let config = write_config(&format!(
        "{}\nredis_url = \"{}\"\n{mapping}",
        stream_config("bench", ""),
        redis.url()
    ));
    let node = start_node(&config, "n1", None).await;
    measure(
        "Redis Stream → memory engine → WebSocket",
        &node,
        Source::Stream(redis.conn().await),
    )
    .await;
    drop(node);
    let pg = start_postgres().await;
    let config = write_config(&outbox_config(&pg, &mapping));
    let node = start_node(&config, "n1", None).await;
    measure(
        "PostgreSQL outbox → memory engine → WebSocket",
        &node,
        Source::Outbox(pg.client().await),
    )
    .await;
}

/// The README's two examples, as written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_work_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = &readme[readme.find("## Publishing from your event bus").unwrap()..];
    let block = |lang: &str, nth: usize| -> String {
        let fence = format!("```{lang}\n");
        let start = section.match_indices(&fence).nth(nth).unwrap().0 + fence.len();
        section[start..start + section[start..].find("```").unwrap()].to_owned()
    };
    let redis = start_redis().await;
    let config = write_config(&block("toml", 0).replace("redis://127.0.0.1:6379/0", &redis.url()));
    let node = start_node(&config, "n1", None).await;
    let mut ws = subscribe(node.port, &["workspace:acme".to_owned()], &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let command = block("sh", 0);
    let message = command
        .split("message '")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches('\'');
    xadd(&mut redis.conn().await, "events", message).await;
    let event = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
    assert_eq!(event["event"], "approval.granted");
    assert_eq!(
        event["data"],
        json!({"entityType":"invoice","id":"42","status":"approved"})
    );
    assert_eq!(
        event["meta"],
        json!({"actor":"u7","correlation_id":"req-9","entity":{"type":"invoice","id":"42","version":3}})
    );
    drop(node);

    let pg = start_postgres().await;
    let config =
        write_config(&block("toml", 1).replace("postgres://app@127.0.0.1:5432/app", &pg.url()));
    let node = start_node(&config, "n1", None).await;
    let channels: Vec<String> = [
        "workspace:acme",
        "workspace:acme:invoice",
        "workspace:acme:invoice:42",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut ws = subscribe(node.port, &channels, &BTreeMap::new())
        .await
        .unwrap();
    await_subscribed(&mut ws, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.client()
        .await
        .batch_execute(&block("sql", 0))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next_json(&mut ws, Duration::from_secs(3)).await.unwrap();
        assert_eq!(event["event"], "invoice.approved");
        got.push(event["channel"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, channels);
}
