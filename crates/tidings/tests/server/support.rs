//! Test harness: an in-process server on a free port, real WebSocket clients
//! (tokio-tungstenite) and real HTTP calls (reqwest).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings::auth::{mint_hs256, MintClaims};
use tidings::config::Config;
use tidings::Tidings;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-that-is-long-enough-1234567890";
pub const API_KEY: &str = "test-api-key-0123456789abcdef";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub tidings: Tidings,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The base configuration of every test server. With `TEST_REDIS_URL` set,
/// servers run on the Redis engine (each under a key prefix of its own), so
/// the same suites check both engines.
pub fn base_config() -> Config {
    let mut config = Config::default();
    config.jwt.secret = Some(SECRET.into());
    config.api_key = Some(API_KEY.into());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Ok(url) = std::env::var("TEST_REDIS_URL") {
        config.engine.kind = tidings::config::EngineKind::Redis;
        config.engine.redis_url = url;
        config.engine.redis_prefix = unique_prefix();
    }
    config
}

/// Whether the suites run on the Redis engine (`TEST_REDIS_URL`).
pub fn on_redis() -> bool {
    std::env::var_os("TEST_REDIS_URL").is_some()
}

/// A Redis key prefix no other test server uses.
pub fn unique_prefix() -> String {
    format!("t{}", ulid::Ulid::generate().to_string().to_lowercase())
}

/// A `redis-server` of the test's own, on a free port in a temporary
/// directory; stopped (by its process id) on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// Starts a Redis without persistence.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a Redis; `persistent` turns on the append-only file (fsync always).
    pub async fn start_with(persistent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-redis-{}", unique_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            persistent,
        };
        // A port found free can be taken (by another test's outgoing
        // connection) before redis-server binds it: it exits, and another
        // port is tried.
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server exited before listening, on 5 ports in a row")
    }

    /// Starts redis-server on `self.port`; false if it exited before listening.
    async fn spawn(&mut self) -> bool {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let listening = TcpStream::connect(("127.0.0.1", self.port)).await.is_ok();
            // Something else may listen there: the server must still be running.
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if listening {
                self.child = Some(child);
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process (as a crash would), keeping its directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is
    /// answered, and commands sent meanwhile run once it [resumes](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server exited before listening on {}",
            self.port
        );
    }
}

/// A 3-master Redis Cluster (`redis-server --cluster-enabled yes` and
/// `redis-cli --cluster create`), each master on a free port in a temporary
/// directory; stopped on drop.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

/// A free port whose cluster bus port (port + 10000, which Redis Cluster also
/// listens on) exists and is free too: the kernel hands out ports up to 60999.
fn cluster_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A cluster-enabled redis-server on `port` in `dir`, once it listens.
async fn spawn_cluster_master(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--cluster-config-file")
        .arg(dir.join("nodes.conf"))
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut masters = Vec::new();
        for _ in 0..3 {
            let port = cluster_port();
            let dir = std::env::temp_dir().join(format!("tidings-redis-{}", unique_prefix()));
            std::fs::create_dir_all(&dir).unwrap();
            let child = spawn_cluster_master(port, &dir).await;
            masters.push(RedisServer {
                child: Some(child),
                port,
                dir,
                persistent: false,
            });
        }
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(created.status.success(), "cluster create: {created:?}");
        let cluster = Self { masters };
        cluster.wait_until_ok(Duration::from_secs(15)).await;
        cluster
    }

    /// Waits until every master agrees the cluster is up.
    async fn wait_until_ok(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for master in &self.masters {
            loop {
                let info = std::process::Command::new("redis-cli")
                    .args(["-p", &master.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "cluster not ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills master `i` (as a crash would: its data is lost) and starts it
    /// again on its port with its cluster config file; returns once the
    /// cluster is ok again.
    pub async fn restart_master(&mut self, i: usize, down: Duration) {
        self.masters[i].kill();
        tokio::time::sleep(down).await;
        self.start_master(i).await;
    }

    /// Starts master `i` again (after `kill`) on its port with its cluster
    /// config file; returns once the cluster is ok again.
    pub async fn start_master(&mut self, i: usize) {
        let master = &mut self.masters[i];
        master.child = Some(spawn_cluster_master(master.port, &master.dir).await);
        self.wait_until_ok(Duration::from_secs(20)).await;
    }

    /// The seed list for `engine.redis_url` with `redis_cluster = true`.
    pub fn urls(&self) -> String {
        self.masters
            .iter()
            .map(|m| format!("redis://127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(base_config()).await
    }

    pub async fn with_config(config: Config) -> Self {
        Self::with_tidings(Tidings::new(config).expect("valid test config")).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs JSON to the server API with the API key; returns (status, body).
    pub async fn api(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// GETs a server API route with the API key; returns (status, body).
    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /events?{query}` with `token`; returns (status, body).
    pub async fn poll(&self, token: &str, query: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(&format!("/events?{query}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> Value {
        let (status, body) = self
            .api(
                "/api/publish",
                json!({"channel": channel, "event": event, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body
    }

    /// `POST /request` with `body` and the client `token`, naming the live
    /// connection `client` (`X-Tidings-Client`) when given; returns the status
    /// and the reply.
    pub async fn http_request(
        &self,
        token: &str,
        client: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url("/request"))
            .bearer_auth(token)
            .json(&body);
        if let Some(client) = client {
            request = request.header("x-tidings-client", client);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `/health`'s `status`.
    pub async fn health_status(&self) -> String {
        let health: Value = self
            .http
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["status"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Connects with a token in the Authorization header and reads `connected`.
    pub async fn connect(&self, token: &str) -> Client {
        let mut request = self.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket upgrade");
        let mut client = Client {
            ws,
            pending: Vec::new(),
            connected: None,
        };
        let connected = client.expect("connected").await;
        client.pending.clear();
        assert!(connected["client"].as_str().unwrap().starts_with("c_"));
        client.connected = Some(connected);
        client
    }

    pub async fn connect_user(&self, sub: &str, workspaces: &[&str]) -> Client {
        self.connect(&token(sub, workspaces, &[])).await
    }
}

pub fn token(sub: &str, workspaces: &[&str], roles: &[&str]) -> String {
    token_with_ttl(sub, workspaces, roles, Duration::from_secs(3600))
}

pub fn token_with_ttl(sub: &str, workspaces: &[&str], roles: &[&str], ttl: Duration) -> String {
    let claims = MintClaims {
        sub: sub.into(),
        workspaces: workspaces.iter().map(|s| s.to_string()).collect(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        ttl: Some(ttl),
        ..MintClaims::default()
    };
    mint_hs256(SECRET, &claims).unwrap()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read while looking for something else.
    pending: Vec<Value>,
    pub connected: Option<Value>,
}

/// What a client saw when the server closed.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub disconnect: Option<Value>,
}

impl Client {
    pub async fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Client {
            ws,
            pending: Vec::new(),
            connected: None,
        }
    }

    pub fn client_id(&self) -> String {
        self.connected.as_ref().unwrap()["client"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (answering server pings), or None on close/timeout.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match frame {
                Message::Text(text) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("server sent JSON");
                    if value["type"] == "ping" {
                        let _ = self
                            .ws
                            .send(Message::Text(r#"{"type":"pong"}"#.into()))
                            .await;
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a message matches; the others are kept for later reads.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut skipped = Vec::new();
        let found = loop {
            match self.next(WAIT).await {
                Some(v) if matches(&v) => break v,
                Some(v) => skipped.push(v),
                None => panic!("no {what}; saw {skipped:?}"),
            }
        };
        skipped.append(&mut self.pending);
        self.pending = skipped;
        found
    }

    /// Reads until a message of `kind` arrives.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |v| v["type"] == kind).await
    }

    /// Sends a request and returns its reply (matched by id).
    pub async fn request(&mut self, mut value: Value, id: u64) -> Value {
        value["id"] = json!(id);
        self.send(value).await;
        self.wait_for(&format!("reply to request {id}"), |v| v["id"] == json!(id))
            .await
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .request(json!({"type": "subscribe", "channel": channel}), 900_001)
            .await;
        assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
        reply
    }

    /// Collects events until `quiet` passes with none.
    pub async fn drain_events(&mut self, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(v) = self.next(quiet).await {
            if v["type"] == "event" {
                events.push(v);
            }
        }
        events
    }

    /// Waits for the server to close; returns the close code and the `disconnect`
    /// message that preceded it.
    pub async fn closed(&mut self, wait: Duration) -> Closed {
        let mut disconnect = None;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match tokio::time::timeout(remaining, self.ws.next()).await {
                Err(_) => panic!("server did not close within {wait:?}"),
                Ok(None) => {
                    return Closed {
                        code: 1006,
                        disconnect,
                    }
                }
                Ok(Some(Err(_))) => {
                    return Closed {
                        code: 1006,
                        disconnect,
                    }
                }
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    if v["type"] == "disconnect" {
                        disconnect = Some(v);
                    }
                }
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return Closed { code, disconnect };
                }
                _ => {}
            }
        }
    }
}

// Helpers for the recovery and reclaim tests.

/// `base_config()` with the builtin `workspace` namespace changed by `change`.
pub fn config_with_workspace(change: impl FnOnce(&mut tidings::config::NamespaceConfig)) -> Config {
    let mut config = base_config();
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .expect("builtin workspace namespace");
    change(&mut workspace);
    config.namespaces.insert("workspace".into(), workspace);
    config
}

/// The offsets of `events`, in arrival order.
pub fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("no offset: {e}"))
        })
        .collect()
}

/// This process's resident set size, in bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

impl TestServer {
    /// Polls the unlabelled metric `name` until `done` holds for it; returns the
    /// value then. Panics after `within`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        within: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.metric(name).await;
            if done(value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} still {value} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes over the API with an `audience` of `users`.
    pub async fn publish_to_users(&self, channel: &str, event: &str, data: Value, users: &[&str]) {
        let (status, body) = self
            .api(
                "/api/publish",
                json!({"channel": channel, "event": event, "data": data, "audience": {"users": users}}),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
    }
}

impl Client {
    /// Subscribes with `since` and returns the `subscribed` reply; the replayed
    /// events follow it and are read separately.
    pub async fn subscribe_since(
        &mut self,
        channel: &str,
        offset: u64,
        epoch: &Value,
        id: u64,
    ) -> Value {
        let since = json!({"offset": offset, "epoch": epoch});
        let reply = self
            .request(
                json!({"type": "subscribe", "channel": channel, "since": since}),
                id,
            )
            .await;
        assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
        reply
    }

    /// Reads events until one at `offset` (or beyond) arrives, then keeps reading
    /// until `quiet` passes with nothing, so extra or doubled events show up too.
    pub async fn events_through(&mut self, offset: u64, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let last = events.last().and_then(|e: &Value| e["offset"].as_u64());
            if last.is_some_and(|last| last >= offset) {
                break;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(remaining).await {
                Some(v) if v["type"] == "event" => events.push(v),
                Some(_) => {}
                None => panic!(
                    "offset {offset} did not arrive within {WAIT:?}; got {:?}",
                    offsets(&events)
                ),
            }
        }
        events.extend(self.drain_events(quiet).await);
        events
    }
}

impl TestServer {
    /// Serves an already built `tidings` (e.g. on an engine of the test's own),
    /// the way the binary serves (socket options included).
    pub async fn with_tidings(tidings: Tidings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tidings.clone();
        let task = tokio::spawn(async move {
            let _ = serving.serve(listener, std::future::pending()).await;
        });
        Self {
            addr,
            tidings,
            http: reqwest::Client::new(),
            task,
        }
    }
}
