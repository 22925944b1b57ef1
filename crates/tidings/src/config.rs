//! Server configuration: the typed form of `tidings.toml`.
//!
//! Loading (file, `TIDINGS_*` variables, flags) is the binary's job; an embedding
//! backend can build a [`Config`] in code. Every field has a default, so
//! `Config::default()` plus a JWT key and an API key is a working server.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use tidings_auth::JwtSettings;

pub use crate::consumers::{ConsumerConfig, ConsumerKind, MappingConfig, MessageMode, StreamStart};

/// The whole configuration. `Debug` shows every secret (the API key, the
/// JWT secret, Redis and PostgreSQL passwords) as `***`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (the binary's; an application that embeds the
    /// router binds its own listener).
    pub listen: SocketAddr,
    /// This node's id, sent in `connected`; random when unset.
    pub node: Option<String>,
    /// Key backends present to the server API (`Authorization: Bearer` or `X-API-Key`).
    pub api_key: Option<String>,
    /// Browser origins allowed to open connections; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Serve the live event console at `/`.
    pub console: bool,
    /// How browser tokens are verified.
    pub jwt: JwtSettings,
    /// Per-connection behaviour and limits.
    pub connection: ConnectionSettings,
    /// Server API limits.
    pub api: ApiSettings,
    /// Which client transports are served, and their settings.
    pub transports: TransportSettings,
    /// WebSocket (`/ws`) options: permessage-deflate.
    pub websocket: WebSocketSettings,
    /// How the engine keeps channel state.
    pub engine: EngineSettings,
    /// Add the conventional `workspace` and `user` namespaces unless defined below.
    pub builtin_namespaces: bool,
    /// Namespaces by name (the part of a channel before the first `:`).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Consumers that publish what they read from an event bus (`[[consumers]]`).
    pub consumers: Vec<ConsumerConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("node", &self.node)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("allowed_origins", &self.allowed_origins)
            .field("console", &self.console)
            .field("jwt", &self.jwt)
            .field("connection", &self.connection)
            .field("api", &self.api)
            .field("transports", &self.transports)
            .field("websocket", &self.websocket)
            .field("engine", &self.engine)
            .field("builtin_namespaces", &self.builtin_namespaces)
            .field("namespaces", &self.namespaces)
            .field("consumers", &self.consumers)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            node: None,
            api_key: None,
            allowed_origins: Vec::new(),
            console: true,
            jwt: JwtSettings::default(),
            connection: ConnectionSettings::default(),
            api: ApiSettings::default(),
            transports: TransportSettings::default(),
            websocket: WebSocketSettings::default(),
            engine: EngineSettings::default(),
            builtin_namespaces: true,
            namespaces: BTreeMap::new(),
            consumers: Vec::new(),
        }
    }
}

/// Per-connection behaviour and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Interval of server `ping`s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a client has to answer a `ping` before close 4001.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long an unauthenticated socket may wait before sending `auth`.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Largest client message, in bytes; larger closes with 4501.
    pub max_message_size: usize,
    /// Most channels one connection may be subscribed to.
    pub max_channels: usize,
    /// Most simultaneous connections of one user (4503 beyond).
    pub max_connections_per_user: usize,
    /// Most connections on this node (4503 beyond); 0 = unlimited.
    pub max_connections: usize,
    /// Most messages waiting in one connection's send queue (4002 beyond).
    pub send_queue_messages: usize,
    /// Most bytes waiting in one connection's send queue (4002 beyond; one
    /// event larger than this closes even a client that keeps up).
    pub send_queue_bytes: usize,
    /// Bad requests in a row before close 4501.
    pub max_bad_requests: u32,
    /// Sustained requests per second one connection may send (0 = unlimited).
    /// Beyond it requests get `rate_limited`; a client that keeps sending
    /// `request_burst` more while limited is closed with 4004.
    pub requests_per_second: u32,
    /// Requests a connection may send in a burst above `requests_per_second`.
    pub request_burst: u32,
    /// WebSocket read buffer per connection, in bytes. It is allocated up
    /// front and kept, and it is also the most read from the socket at once;
    /// a larger message still works (the buffer grows to hold it).
    pub read_buffer_size: usize,
    /// WebSocket write buffer per connection, in bytes.
    pub write_buffer_size: usize,
    /// How long shutdown waits for clients to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
    /// How long a WebSocket close handshake may take: writing what the client
    /// has not read yet and the Close frame, then waiting for the client's
    /// Close. Longer than `heartbeat`, so that a slow consumer that resumes
    /// reading within a heartbeat still reads its 4002.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// How long a client may take to send an HTTP request's headers, and
    /// how long its body may pause between pieces; an idle keep-alive
    /// connection is closed after it too. A client that stops mid-request
    /// must not hold its socket forever.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            max_channels: 256,
            max_connections_per_user: 64,
            max_connections: 0,
            send_queue_messages: 1024,
            send_queue_bytes: 4 * 1024 * 1024,
            max_bad_requests: 20,
            requests_per_second: 100,
            request_burst: 200,
            read_buffer_size: 256,
            write_buffer_size: 4 * 1024,
            shutdown_drain: Duration::from_secs(10),
            close_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Server API limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest request body, in bytes.
    pub max_body_size: usize,
    /// How long an `idempotency_key` is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most channels in one `/api/broadcast`.
    pub max_broadcast_channels: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body_size: 1024 * 1024,
            idempotency_window: Duration::from_secs(300),
            max_broadcast_channels: 1000,
        }
    }
}

/// Which client transports are served, and their settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// Serve WebSocket at `/ws` and `/api/ws`.
    pub websocket: bool,
    /// Serve Server-Sent Events at `/sse`.
    pub sse: bool,
    /// Serve HTTP polling at `/events`.
    pub polling: bool,
    /// Serve the client request endpoint at `POST /request` (publish, status,
    /// history, presence, refresh for clients on SSE or polling).
    pub http_requests: bool,
    /// Cookie that may carry the JWT for SSE, polling and `/request`.
    pub token_cookie: String,
    /// Reconnect delay suggested to EventSource clients (`retry:`).
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
    /// Longest long-poll `wait` accepted; longer waits are shortened to it.
    #[serde(with = "humantime_serde")]
    pub max_poll_wait: Duration,
    /// Serve Socket.IO v4 clients (Engine.IO v4, Socket.IO v5) at `socketio_path`.
    pub socketio: bool,
    /// Where the Socket.IO endpoint is mounted (socket.io-client's `path`).
    pub socketio_path: String,
    /// Whether a Socket.IO connection joins the `workspace:{w}` channel of every
    /// workspace in its token (it always joins `user:{sub}`).
    pub socketio_join_workspaces: bool,
    /// Most Socket.IO sessions at once whose socket has not connected (`None`:
    /// the built-in cap, `MAX_PENDING_SESSIONS` in `transport::socketio::engineio`).
    /// Not a setting: tests lower it.
    #[doc(hidden)]
    #[serde(skip)]
    pub socketio_max_pending: Option<usize>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            websocket: true,
            sse: true,
            polling: true,
            http_requests: true,
            token_cookie: "tidings_token".to_owned(),
            sse_retry: Duration::from_secs(2),
            max_poll_wait: Duration::from_secs(60),
            socketio: true,
            socketio_path: "/socket.io/".to_owned(),
            socketio_join_workspaces: true,
            socketio_max_pending: None,
        }
    }
}

/// WebSocket options of `/ws` (and `/api/ws`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Accept permessage-deflate (RFC 7692) when a client offers it. Each event
    /// is compressed once, without context takeover, and the same frame goes
    /// to every connection that negotiated it.
    pub compression: bool,
    /// Events smaller than this many bytes go uncompressed even on a
    /// connection that negotiated compression: deflate saves nothing on them.
    /// Replies and other messages always go plain.
    pub compression_min_size: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            compression: true,
            compression_min_size: 256,
        }
    }
}

/// How the engine keeps channel state. `Debug` shows passwords as `***`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// `memory` (one node) or `redis` (several nodes sharing one Redis).
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// The Redis to use with `type = "redis"`: `redis://[:password@]host:port/db`
    /// or `rediss://` for TLS. With `redis_cluster`, a comma-separated list of
    /// the cluster's nodes to start from.
    pub redis_url: String,
    /// The Redis password, when it is not in `redis_url`.
    pub redis_password: Option<String>,
    /// `redis_url` names a Redis Cluster (sharded pub/sub, hash-tagged keys).
    pub redis_cluster: bool,
    /// Prefix of every Redis key and pub/sub channel, so several Tidings
    /// clusters can share one Redis.
    pub redis_prefix: String,
    /// How long one Redis command may take before the engine counts Redis as
    /// unavailable.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// How long a node that stopped without cleaning up (killed, cut off) stays
    /// listed, with its presence entries, after its last heartbeat.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How long a channel remembers its epoch and last offset after its last
    /// event or its last subscriber left, once its history has expired. A client
    /// that comes back within it to a channel where nothing happened recovers
    /// instead of reloading; after it the channel is forgotten (and gets a new
    /// epoch when used again).
    #[serde(with = "humantime_serde")]
    pub position_ttl: Duration,
    /// How often expired history is dropped and idle channels are reclaimed.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl EngineSettings {
    /// The addresses in `redis_url` (one, or a cluster's comma-separated seeds).
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

impl fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineSettings")
            .field("kind", &self.kind)
            .field("redis_url", &without_password(&self.redis_url))
            .field(
                "redis_password",
                &self.redis_password.as_ref().map(|_| "***"),
            )
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_timeout", &self.redis_timeout)
            .field("node_ttl", &self.node_ttl)
            .field("position_ttl", &self.position_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            redis_password: None,
            redis_cluster: false,
            redis_prefix: "tidings".to_owned(),
            redis_timeout: Duration::from_secs(2),
            node_ttl: Duration::from_secs(15),
            position_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// Which engine a server runs on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-memory: one node.
    #[default]
    Memory,
    /// Redis: several nodes share offsets, history, presence and delivery.
    Redis,
}

impl EngineKind {
    /// The name used in configuration and `/api/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// One namespace: who may do what, and how much history it keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Fewest `:`-separated segments a channel may have (the namespace counts).
    pub min_segments: usize,
    /// Most segments a channel may have.
    pub max_segments: usize,
    /// Who may subscribe. Any matching rule grants; an empty list denies.
    pub subscribe: Vec<Rule>,
    /// Who may publish from a client connection.
    pub publish: Vec<Rule>,
    /// Who may list presence. A namespace with presence rules tracks its
    /// subscribers' presence.
    pub presence: Vec<Rule>,
    /// Push `presence` join/leave/status messages to subscribers that may see
    /// presence. Off by default: on a busy channel every join reaches everyone.
    pub presence_events: bool,
    /// Who may send `history` requests (recovery on subscribe needs only
    /// `subscribe`).
    pub history: Vec<Rule>,
    /// Events kept per channel for recovery and history (0 = none).
    pub history_size: usize,
    /// How long events stay in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            min_segments: 1,
            max_segments: 255,
            subscribe: Vec::new(),
            publish: Vec::new(),
            presence: Vec::new(),
            presence_events: false,
            history: Vec::new(),
            history_size: 100,
            history_ttl: Duration::from_secs(600),
        }
    }
}

/// One access rule. Every condition it sets must hold; a rule with no condition
/// (`{}`) holds for every authenticated connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// With `claim`: channel segment `segment` (0 = namespace) must equal the string
    /// claim or be an element of the array claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<usize>,
    /// The claim a `segment` or a `value` is checked against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// With `claim`: the claim must equal or contain this value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The roles claim must contain this role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Rule {
    /// Segment `segment` must be in claim `claim`.
    pub fn segment_in_claim(segment: usize, claim: &str) -> Self {
        Self {
            segment: Some(segment),
            claim: Some(claim.to_owned()),
            ..Self::default()
        }
    }
}

/// The conventional scopes of the contract: `workspace:{w}[:{type}[:{id}]]` for
/// members of `w`, `user:{u}` for `u` itself.
pub fn builtin_namespaces(jwt: &JwtSettings) -> BTreeMap<String, NamespaceConfig> {
    let member = vec![Rule::segment_in_claim(1, &jwt.workspaces_claim)];
    let workspace = NamespaceConfig {
        min_segments: 2,
        max_segments: 4,
        subscribe: member.clone(),
        presence: member.clone(),
        history: member,
        ..NamespaceConfig::default()
    };
    // No presence on `user:` channels: only the user's own tabs could be members,
    // and tracking them would cost every connection memory for nothing.
    let own = vec![Rule::segment_in_claim(1, "sub")];
    let user = NamespaceConfig {
        min_segments: 2,
        max_segments: 2,
        subscribe: own.clone(),
        history: own,
        ..NamespaceConfig::default()
    };
    BTreeMap::from([
        ("workspace".to_owned(), workspace),
        ("user".to_owned(), user),
    ])
}

/// A configuration mistake found by [`Config::validate`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has an unusable value.
    #[error("{setting}: {problem}")]
    Invalid {
        /// Dotted path of the setting.
        setting: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The JWT settings do not give a usable key (the message names the
    /// `jwt.*` setting).
    #[error(transparent)]
    Jwt(#[from] tidings_auth::ConfigError),
}

fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// The namespaces in force: the configured ones plus, when enabled, the builtin
    /// ones not overridden.
    pub fn effective_namespaces(&self) -> BTreeMap<String, NamespaceConfig> {
        let mut all = if self.builtin_namespaces {
            builtin_namespaces(&self.jwt)
        } else {
            BTreeMap::new()
        };
        all.extend(self.namespaces.clone());
        all
    }

    /// Checks values serde cannot: ranges, names, rule shapes. Does not read key files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.connection;
        let (t, e) = (&self.transports, &self.engine);
        for (name, value, max) in [
            ("connection.heartbeat", c.heartbeat, MAX_CLIENT_DURATION),
            (
                "connection.pong_timeout",
                c.pong_timeout,
                MAX_CLIENT_DURATION,
            ),
            (
                "connection.auth_timeout",
                c.auth_timeout,
                MAX_CLIENT_DURATION,
            ),
            (
                "connection.close_timeout",
                c.close_timeout,
                MAX_CLIENT_DURATION,
            ),
            (
                "connection.request_timeout",
                c.request_timeout,
                MAX_CLIENT_DURATION,
            ),
            ("engine.sweep_interval", e.sweep_interval, MAX_DURATION),
            ("engine.redis_timeout", e.redis_timeout, MAX_DURATION),
            ("engine.node_ttl", e.node_ttl, MAX_DURATION),
            ("engine.position_ttl", e.position_ttl, MAX_DURATION),
        ] {
            if value.is_zero() {
                return Err(invalid(name, "must be greater than zero"));
            }
            check_at_most(name, value, max)?;
        }
        for (name, value, max) in [
            (
                "connection.shutdown_drain",
                c.shutdown_drain,
                MAX_CLIENT_DURATION,
            ),
            ("transports.sse_retry", t.sse_retry, MAX_CLIENT_DURATION),
            (
                "transports.max_poll_wait",
                t.max_poll_wait,
                MAX_CLIENT_DURATION,
            ),
            (
                "api.idempotency_window",
                self.api.idempotency_window,
                MAX_DURATION,
            ),
        ] {
            check_at_most(name, value, max)?;
        }
        for (name, value) in [
            ("connection.read_buffer_size", c.read_buffer_size),
            ("connection.write_buffer_size", c.write_buffer_size),
            ("connection.max_message_size", c.max_message_size),
        ] {
            if value > MAX_SOCKET_BUFFER {
                return Err(invalid(
                    name,
                    format!("must be at most {MAX_SOCKET_BUFFER} bytes (64 MiB)"),
                ));
            }
        }
        for (name, value) in [
            ("connection.max_message_size", c.max_message_size),
            ("connection.max_channels", c.max_channels),
            (
                "connection.max_connections_per_user",
                c.max_connections_per_user,
            ),
            ("connection.send_queue_messages", c.send_queue_messages),
            ("connection.send_queue_bytes", c.send_queue_bytes),
            ("connection.read_buffer_size", c.read_buffer_size),
            ("connection.write_buffer_size", c.write_buffer_size),
            ("api.max_body_size", self.api.max_body_size),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be greater than zero"));
            }
        }
        if self.transports.token_cookie.is_empty()
            || !self
                .transports
                .token_cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "transports.token_cookie",
                "must be a non-empty cookie name of letters, digits, `-`, `_` or `.`",
            ));
        }
        let path = &self.transports.socketio_path;
        if !path.starts_with('/')
            || path.len() < 2
            || path.contains("//")
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        {
            return Err(invalid(
                "transports.socketio_path",
                "must be a path like /socket.io/ (letters, digits, `/`, `-`, `_`, `.`; no empty segment)",
            ));
        }
        // One of Tidings' own routes there would be silently shadowed.
        let bare = path.trim_end_matches('/');
        if OWN_ROUTES.contains(&bare) || bare.starts_with("/api/") || bare == "/api" {
            return Err(invalid(
                "transports.socketio_path",
                format!("{path} is one of Tidings' own endpoints"),
            ));
        }
        if let Some(key) = &self.api_key {
            if key.len() < 16 {
                return Err(invalid("api_key", "must be at least 16 bytes"));
            }
        }
        if self.engine.kind == EngineKind::Redis {
            // Checked here too, so `checkconfig` refuses what `serve` would.
            let urls = self.engine.redis_urls();
            if urls.is_empty() {
                return Err(invalid("engine.redis_url", "no Redis address given"));
            }
            for url in urls {
                if let Err(err) = redis::IntoConnectionInfo::into_connection_info(url) {
                    return Err(invalid(
                        "engine.redis_url",
                        format!("not a Redis URL ({err})"),
                    ));
                }
            }
        }
        if self.api.max_broadcast_channels == 0 {
            return Err(invalid(
                "api.max_broadcast_channels",
                "must be greater than zero",
            ));
        }
        if self.node.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid(
                "node",
                "must not be empty (leave it unset for a random id)",
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if !is_origin(origin) {
                return Err(invalid(
                    format!("allowed_origins[{i}]"),
                    format!(
                        "`{origin}` is not an origin: write \"*\" or scheme://host[:port] \
                         as browsers send it: lowercase, the host in ASCII (punycode), no \
                         default port, no path or trailing `/`"
                    ),
                ));
            }
        }
        for (name, ns) in &self.namespaces {
            let prefix = format!("namespaces.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.@/=-".contains(&b))
            {
                return Err(invalid(prefix, "not a valid namespace name"));
            }
            if ns.max_segments > 255 {
                return Err(invalid(
                    format!("{prefix}.max_segments"),
                    "must be at most 255 (a channel name is at most 255 bytes)",
                ));
            }
            check_at_most(
                format!("{prefix}.history_ttl"),
                ns.history_ttl,
                MAX_DURATION,
            )?;
            if ns.min_segments == 0 || ns.min_segments > ns.max_segments {
                return Err(invalid(
                    format!("{prefix}.min_segments"),
                    "must be at least 1 and at most max_segments",
                ));
            }
            for (action, rules) in [
                ("subscribe", &ns.subscribe),
                ("publish", &ns.publish),
                ("presence", &ns.presence),
                ("history", &ns.history),
            ] {
                for (i, rule) in rules.iter().enumerate() {
                    validate_rule(rule)
                        .map_err(|p| invalid(format!("{prefix}.{action}[{i}]"), p))?;
                }
            }
        }
        let namespaces = self.effective_namespaces();
        for (i, consumer) in self.consumers.iter().enumerate() {
            consumer
                .validate(&namespaces)
                .map_err(|(field, p)| invalid(format!("consumers[{i}].{field}"), p))?;
        }
        let mut names: Vec<&str> = self.consumers.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(
                "consumers",
                format!("two consumers are named `{}`", pair[0]),
            ));
        }
        Ok(())
    }
}

/// The longest a duration setting of `[connection]` or `[transports]` may be:
/// clients time the heartbeat and the SSE retry with timers that hold about
/// 24.8 days in browsers, and a day is already far beyond any sensible value.
pub const MAX_CLIENT_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The paths Tidings serves besides `/socket.io/` and the server API's `/api/…`.
const OWN_ROUTES: [&str; 6] = ["/ws", "/sse", "/events", "/request", "/health", "/metrics"];

/// The longest any other duration setting may be. Deadlines are clock
/// readings plus a setting; a bound keeps every such sum representable.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest WebSocket read or write buffer (the read buffer is allocated
/// up front for every connection), and the largest client message.
pub const MAX_SOCKET_BUFFER: usize = 64 * 1024 * 1024;

/// Refuses `value` over `max`, naming the setting and the bound.
pub(crate) fn check_at_most(
    name: impl Into<String>,
    value: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    match at_most_problem(value, max) {
        None => Ok(()),
        Some(problem) => Err(invalid(name, problem)),
    }
}

/// What is wrong with `value` over `max` (a whole number of days), if it is.
pub(crate) fn at_most_problem(value: Duration, max: Duration) -> Option<String> {
    let days = max.as_secs() / (24 * 3600);
    let unit = if days == 1 { "day" } else { "days" };
    (value > max).then(|| format!("must be at most {days} {unit}"))
}

/// `*`, or what a browser sends in `Origin`: `scheme://host[:port]`, nothing
/// after (an entry with a path or a trailing `/` could never match).
fn is_origin(origin: &str) -> bool {
    if origin == "*" || origin == "null" {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    // As a browser serializes it: lowercase, the host in ASCII (an
    // internationalized name as punycode), no default port.
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    scheme_ok
        && authority_as_serialized(authority)
        && !default_port(scheme).is_some_and(|port| authority.ends_with(port))
}

/// The port a browser leaves out of an origin with this scheme, as `:port`.
pub(crate) fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "https" | "wss" => Some(":443"),
        "http" | "ws" => Some(":80"),
        _ => None,
    }
}

/// `host[:port]` as a browser serializes it: a lowercase name of non-empty
/// labels (a final `.` allowed) or an `[IPv6]` literal, then a port of 1 to
/// 65535 without leading zeros.
fn authority_as_serialized(authority: &str) -> bool {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let port_ok =
        port.is_none_or(|port| !port.starts_with('0') && port.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            let name = host.strip_suffix('.').unwrap_or(host);
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                        })
                })
        }
    };
    port_ok && host_ok
}

fn validate_rule(rule: &Rule) -> Result<(), &'static str> {
    match (&rule.segment, &rule.claim, &rule.value) {
        (Some(_), None, _) => Err("`segment` needs a `claim`"),
        (None, None, Some(_)) => Err("`value` needs a `claim`"),
        (Some(_), Some(_), Some(_)) => Err("use either `segment` or `value` with a `claim`"),
        (None, Some(_), None) => Err("`claim` needs a `segment` or a `value`"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_have_builtin_scopes() {
        let config = Config::default();
        config.validate().unwrap();
        let ns = config.effective_namespaces();
        assert!(ns.contains_key("workspace") && ns.contains_key("user"));
    }

    #[test]
    fn rule_shapes_are_checked() {
        let mut config = Config::default();
        config.namespaces.insert(
            "orders".into(),
            NamespaceConfig {
                subscribe: vec![Rule {
                    segment: Some(1),
                    ..Rule::default()
                }],
                ..NamespaceConfig::default()
            },
        );
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("namespaces.orders.subscribe[0]"), "{err}");
    }

    /// Every duration and buffer setting has an upper bound: deadlines are
    /// clock readings plus a setting, and a huge one (`500000000000y`, which
    /// humantime reads) panicked the server at its first connection.
    #[test]
    fn durations_and_buffers_are_bounded() {
        let refusal = |change: &dyn Fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.validate().err().map(|e| e.to_string())
        };
        let day = Duration::from_secs(24 * 3600);
        let year = 365 * day;
        type SetTo<'a> = &'a dyn Fn(&mut Config, Duration);
        let too_long: [(&str, SetTo, Duration); 15] = [
            (
                "connection.heartbeat",
                &|c, d| c.connection.heartbeat = d,
                day,
            ),
            (
                "connection.pong_timeout",
                &|c, d| c.connection.pong_timeout = d,
                day,
            ),
            (
                "connection.auth_timeout",
                &|c, d| c.connection.auth_timeout = d,
                day,
            ),
            (
                "connection.close_timeout",
                &|c, d| c.connection.close_timeout = d,
                day,
            ),
            (
                "connection.request_timeout",
                &|c, d| c.connection.request_timeout = d,
                day,
            ),
            (
                "connection.shutdown_drain",
                &|c, d| c.connection.shutdown_drain = d,
                day,
            ),
            (
                "transports.sse_retry",
                &|c, d| c.transports.sse_retry = d,
                day,
            ),
            (
                "transports.max_poll_wait",
                &|c, d| c.transports.max_poll_wait = d,
                day,
            ),
            (
                "api.idempotency_window",
                &|c, d| c.api.idempotency_window = d,
                year,
            ),
            (
                "engine.sweep_interval",
                &|c, d| c.engine.sweep_interval = d,
                year,
            ),
            (
                "engine.redis_timeout",
                &|c, d| c.engine.redis_timeout = d,
                year,
            ),
            ("engine.node_ttl", &|c, d| c.engine.node_ttl = d, year),
            (
                "engine.position_ttl",
                &|c, d| c.engine.position_ttl = d,
                year,
            ),
            (
                "namespaces.orders.history_ttl",
                &|c, d| {
                    let orders = NamespaceConfig {
                        history_ttl: d,
                        ..NamespaceConfig::default()
                    };
                    c.namespaces.insert("orders".into(), orders);
                },
                year,
            ),
            (
                "consumers[0].block",
                &|c, d| {
                    c.consumers.push(crate::consumers::ConsumerConfig {
                        name: "bus".into(),
                        streams: vec!["s".into()],
                        block: d,
                        ..Default::default()
                    });
                },
                year,
            ),
        ];
        for (name, set, max) in too_long {
            assert_eq!(refusal(&|c| set(c, max)), None, "{name} at its bound");
            let err = refusal(&|c| set(c, max + Duration::from_secs(1))).unwrap_or_default();
            let bound = if max == day { "1 day" } else { "365 days" };
            assert!(
                err.contains(name) && err.contains(&format!("must be at most {bound}")),
                "{name}: {err}"
            );
        }
        type Change = fn(&mut Config);
        let zeros: [(&str, Change); 3] = [
            ("engine.redis_timeout", |c| {
                c.engine.redis_timeout = Duration::ZERO
            }),
            ("engine.node_ttl", |c| c.engine.node_ttl = Duration::ZERO),
            ("engine.position_ttl", |c| {
                c.engine.position_ttl = Duration::ZERO
            }),
        ];
        for (name, zero) in zeros {
            let err = refusal(&zero).unwrap_or_default();
            assert!(
                err.contains(name) && err.contains("greater than zero"),
                "{err}"
            );
        }
        let err = refusal(&|c| c.connection.read_buffer_size = 64 * 1024 * 1024 + 1);
        assert!(err
            .unwrap_or_default()
            .contains("connection.read_buffer_size"));
        let err = refusal(&|c| c.connection.write_buffer_size = usize::MAX);
        assert!(err
            .unwrap_or_default()
            .contains("connection.write_buffer_size"));
        // It broke every compressed message (the inflate bound is one more).
        let err = refusal(&|c| c.connection.max_message_size = usize::MAX);
        assert!(err
            .unwrap_or_default()
            .contains("connection.max_message_size: must be at most 67108864 bytes"));
        assert_eq!(
            refusal(&|c| c.connection.max_message_size = 64 * 1024 * 1024),
            None
        );
    }

    #[test]
    fn the_socketio_path_is_not_one_of_the_servers_own() {
        let check = |path: &str| {
            let mut config = Config::default();
            config.transports.socketio_path = path.into();
            config.validate().err().map(|e| e.to_string())
        };
        for own in [
            "/health",
            "/ws/",
            "/api/",
            "/api/publish",
            "/events",
            "/sse",
        ] {
            let err = check(own).unwrap_or_default();
            assert!(
                err.contains("transports.socketio_path") && err.contains("own endpoints"),
                "{own}: {err}"
            );
        }
        // An empty segment made the router panic when it was built.
        for broken in ["//", "/a//b/"] {
            assert!(
                check(broken).is_some_and(|e| e.contains("must be a path")),
                "{broken}"
            );
        }
        for fine in ["/socket.io/", "/rt/socket.io/", "/wsx/", "/apix/"] {
            assert_eq!(check(fine), None, "{fine}");
        }
    }

    #[test]
    fn segment_counts_are_checked() {
        let with_segments = |min_segments, max_segments| {
            let mut config = Config::default();
            config.namespaces.insert(
                "orders".into(),
                NamespaceConfig {
                    min_segments,
                    max_segments,
                    ..NamespaceConfig::default()
                },
            );
            config.validate().err().map(|e| e.to_string())
        };
        assert_eq!(with_segments(1, 255), None);
        let err = with_segments(1, 256).unwrap_or_default();
        assert!(err.contains("namespaces.orders.max_segments"), "{err}");
        let err = with_segments(3, 2).unwrap_or_default();
        assert!(err.contains("namespaces.orders.min_segments"), "{err}");
    }

    #[test]
    fn origins_node_and_broadcast_size_are_checked() {
        let check = |change: &dyn Fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.validate().err().map(|e| e.to_string())
        };
        for good in [
            "*",
            "https://app.example.com",
            "http://127.0.0.1:5173",
            "https://app.example.com:8443",
            "http://[::1]:3000",
            "https://xn--bcher-kva.de",
            "http://localhost:3000",
            "https://a_b.example.com",
            "chrome-extension://abcdefghijklmnop",
            "null",
        ] {
            assert_eq!(
                check(&|c| c.allowed_origins = vec![good.into()]),
                None,
                "{good}"
            );
        }
        for bad in [
            "https://app.example.com/",
            "app.example.com",
            "https://a.com/x",
            "",
            "HTTPS://app.example.com",
            "https://APP.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://bücher.de",
            "https://user@app.example.com",
            "http://[::1",
            "https://a.com:65536",
            "https://a.com:0",
            "https://a.com:08080",
            "http://1.2.3.4:",
            "https://*.a.com",
            "https://a..com",
            "http://[::1]:80",
        ] {
            let err = check(&|c| c.allowed_origins = vec!["*".into(), bad.into()]);
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("allowed_origins[1]")),
                "{bad}: {err:?}"
            );
        }
        let err = check(&|c| c.node = Some(" ".into())).unwrap();
        assert!(err.contains("node"), "{err}");
        let err = check(&|c| c.api.max_broadcast_channels = 0).unwrap();
        assert!(err.contains("api.max_broadcast_channels"), "{err}");
    }
}

/// `url` (or a comma-separated list of URLs, or a PostgreSQL key-value
/// string) with any password replaced by `***`.
pub fn without_password(url: &str) -> String {
    if !url.contains("://") {
        return without_password_parameter(url);
    }
    // A list of URLs is split where the next one starts: a comma inside a
    // password is not a separator.
    let mut urls: Vec<String> = Vec::new();
    for piece in url.split(',') {
        match urls.last_mut() {
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.iter()
        .map(|one| {
            let one = one.trim();
            match (one.find("://"), one.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let credentials = &one[scheme + 3..at];
                    match credentials.split_once(':') {
                        Some((user, _)) => {
                            format!("{}{user}:***{}", &one[..scheme + 3], &one[at..])
                        }
                        // A user name alone: nothing to hide.
                        None => one.to_owned(),
                    }
                }
                _ => one.to_owned(),
            }
        })
        .map(|one| without_password_parameter(&one))
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with the value of each `password` parameter (PostgreSQL's
/// key-value form, spaces around `=` and `password='a b'` quoting allowed,
/// or a URL's `?password=`) and each `pass` parameter (`redis+unix://…?pass=`)
/// replaced by `***`.
fn without_password_parameter(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("pass") {
        let starts_parameter = rest[..found]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '?' || c == '&');
        let after_key = &rest[found..];
        let key_len = if after_key.starts_with("password") {
            8
        } else {
            4
        };
        let after_key = &after_key[key_len..];
        let spaced = after_key.trim_start();
        let value = match spaced.strip_prefix('=') {
            Some(value) if starts_parameter => value.trim_start(),
            // Not a parameter (`mypassword=`, `passage`): keep looking after it.
            _ => {
                masked.push_str(&rest[..found + key_len]);
                rest = &rest[found + key_len..];
                continue;
            }
        };
        let value_start = rest.len() - value.len();
        masked.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let value_end = if let Some(quoted) = rest.strip_prefix('\'') {
            // Up to the closing quote; `\'` and `\\` are escapes inside.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(rest.len(), |(i, _)| i + 2)
        } else {
            rest.find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(rest.len())
        };
        masked.push_str("***");
        rest = &rest[value_end..];
    }
    masked.push_str(rest);
    masked
}

#[cfg(test)]
mod password_masking_tests {
    use super::{without_password, Config};
    use crate::consumers::{ConsumerConfig, ConsumerKind};

    #[test]
    fn debug_shows_no_secret() {
        let mut config = Config {
            api_key: Some("api-key-secret-0123456789".into()),
            ..Config::default()
        };
        config.jwt.secret = Some("jwt-secret-0123456789".into());
        config.engine.redis_url = "redis://:redis-secret@h:6379/0".into();
        config.engine.redis_password = Some("other-redis-secret".into());
        config.consumers = vec![
            ConsumerConfig {
                redis_url: Some("redis://u:stream-secret@h/0".into()),
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                kind: ConsumerKind::PostgresOutbox,
                postgres_url: Some("host=db password=pg-secret".into()),
                ..ConsumerConfig::default()
            },
        ];
        let shown = format!("{config:?}");
        assert!(!shown.contains("-secret"), "{shown}");
        assert!(shown.contains("api_key: Some(\"***\")"), "{shown}");
        assert!(shown.contains("redis://:***@h:6379/0"), "{shown}");
        assert!(shown.contains("host=db password=***"), "{shown}");
        assert!(shown.contains("redis_prefix"), "{shown}");
    }

    #[test]
    fn passwords_are_masked_in_the_less_common_forms() {
        assert_eq!(
            without_password("redis://u:pa,ss@h:6379/0,redis://:x,y@h2/0"),
            "redis://u:***@h:6379/0,redis://:***@h2/0"
        );
        assert_eq!(
            without_password("redis+unix:///run/redis.sock?db=0&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=0&pass=***"
        );
        assert_eq!(
            without_password("host=db password = s3cret dbname=app"),
            "host=db password = *** dbname=app"
        );
        assert_eq!(
            without_password("host=db passage=ok password= 'a b'"),
            "host=db passage=ok password= ***"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            without_password("redis://:s3cret@h:6379/0,rediss://u:p@h2"),
            "redis://:***@h:6379/0,rediss://u:***@h2"
        );
        assert_eq!(without_password("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            without_password("host=db user=x password=kw dbname=app"),
            "host=db user=x password=*** dbname=app"
        );
        assert_eq!(
            without_password(r"password='a \' b' host=db"),
            "password=*** host=db"
        );
        assert_eq!(
            without_password("postgres://db/app?sslmode=disable&password=kw"),
            "postgres://db/app?sslmode=disable&password=***"
        );
        assert_eq!(
            without_password("host=db mypassword=x"),
            "host=db mypassword=x"
        );
        assert_eq!(
            without_password("postgres://app@db/app"),
            "postgres://app@db/app"
        );
    }
}
