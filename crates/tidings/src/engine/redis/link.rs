//! One node's connections to Redis: commands, pub/sub, the function library,
//! key names, and whether Redis is reachable right now.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, PushInfo, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::config::{ConfigError, EngineSettings};
use crate::engine::EngineError;
use crate::protocol::ChannelName;

/// The function library, loaded into Redis by every node.
const LIBRARY: &str = include_str!("tidings.lua");
/// Its version: the library's name and its function names carry it
/// (`tidings_v5_publish`), so a node loading this library (FUNCTION LOAD
/// REPLACE replaces a library of the same name only) leaves the functions an
/// older node calls in place, and the reverse.
const LIBRARY_PREFIX: &str = "tidings_v5_";

/// Names of the keys and pub/sub channels, under the configured prefix.
///
/// Every key of one channel carries the channel as a hash tag (`{…}`), so in a
/// Redis Cluster its offset counter, history and messages live on one shard.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn tagged(&self, channel: &ChannelName, suffix: &str) -> String {
        // Channel names cannot contain braces, so the tag is exactly the name.
        format!("{}:{{{}}}:{suffix}", self.prefix, channel.as_str())
    }

    /// Offset counter, epoch and history TTL (a hash).
    pub fn meta(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "m")
    }
    /// History (a stream whose entry ids are `<offset>-0`).
    pub fn stream(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "h")
    }
    /// One idempotency key's first result.
    pub fn idempotency(&self, channel: &ChannelName, key: &str) -> String {
        self.tagged(channel, &format!("i:{key}"))
    }
    /// Presence entries, by connection id.
    pub fn presence(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "p")
    }
    /// Presence connection counts, by user.
    pub fn presence_users(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "u")
    }
    /// Each user's connections and their statuses (`client status …`), by user.
    pub fn presence_tabs(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "t")
    }
    /// The pub/sub channel carrying the channel's events and presence pushes.
    pub fn pubsub(&self, channel: &ChannelName) -> String {
        self.tagged(channel, "c")
    }
    /// The channel a pub/sub channel name belongs to.
    pub fn channel_of_pubsub(&self, name: &str) -> Option<ChannelName> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let channel = rest.strip_suffix("}:c")?;
        ChannelName::parse(channel).ok()
    }
    /// Node entries (one hash tag, so both node hashes share a shard).
    pub fn nodes(&self) -> String {
        format!("{}:{{nodes}}:info", self.prefix)
    }
    /// Last heartbeat of each node, in Redis time.
    pub fn node_heartbeats(&self) -> String {
        format!("{}:{{nodes}}:seen", self.prefix)
    }
    /// The channels where `node` has presence entries.
    pub fn node_presence(&self, node: &str) -> String {
        format!("{}:node:{node}:presence", self.prefix)
    }
    /// Who is cleaning up after a dead `node`.
    pub fn reaper(&self, node: &str) -> String {
        format!("{}:node:{node}:reaper", self.prefix)
    }
    /// Set when `node` was reaped: if it was alive after all, it finds out.
    pub fn reaped(&self, node: &str) -> String {
        format!("{}:node:{node}:reaped", self.prefix)
    }
    /// Control messages between nodes (API actions).
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Redis Cluster: one key (never written) in the slots of each shard,
    /// given as the slot ranges of each master.
    fn one_per_shard(&self, shards: &[Vec<(u16, u16)>]) -> Vec<String> {
        use redis::cluster_routing::Slot;
        let mut shard_of = std::collections::HashMap::new();
        for (shard, ranges) in shards.iter().enumerate() {
            for &(start, end) in ranges {
                for slot in start..=end {
                    if let Some(slot) = Slot::new(slot) {
                        shard_of.insert(slot, shard);
                    }
                }
            }
        }
        let mut keys: Vec<Option<String>> = vec![None; shards.len()];
        // 16,384 slots: a few hundred tries find every shard of a cluster
        // that is not absurdly uneven; the bound keeps a bad reply cheap.
        for i in 0..100_000u32 {
            if keys.iter().all(Option::is_some) {
                break;
            }
            let key = format!("{}:probe:{{{i}}}", self.prefix);
            if let Some(&shard) = shard_of.get(&Slot::for_key(&key)) {
                if keys[shard].is_none() {
                    keys[shard] = Some(key);
                }
            }
        }
        keys.into_iter().flatten().collect()
    }
}

/// Each master's slot ranges, inclusive.
type SlotLayout = Vec<Vec<(u16, u16)>>;

/// The slot ranges of each master in a `CLUSTER SLOTS` reply (entries
/// `[start, end, [host, port, id, …], replicas…]`), grouped by master.
fn shard_slots(reply: &Value) -> SlotLayout {
    let mut masters: Vec<(String, Vec<(u16, u16)>)> = Vec::new();
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    for entry in entries {
        let Value::Array(fields) = entry else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(master)) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            continue;
        };
        let name = format!("{master:?}");
        match masters.iter_mut().find(|(known, _)| *known == name) {
            Some((_, ranges)) => ranges.push((start, end)),
            None => masters.push((name, vec![(start, end)])),
        }
    }
    masters.into_iter().map(|(_, ranges)| ranges).collect()
}

/// The command connection: one multiplexed connection to a single Redis, or a
/// cluster connection that routes each command to its shard.
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single {
        commands: ConnectionManager,
        client: redis::Client,
    },
    Cluster(redis::cluster::ClusterClient),
}

/// What the pub/sub connection hands the engine: messages and disconnections.
pub(crate) type PushSink = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// Whether Redis answers, with one log line per change (not per request).
///
/// On Redis Cluster one call reaches one shard, so a call that succeeds says
/// nothing of a shard that is down: there, only a check of every shard
/// ([`RedisLink::check_every_shard`]) ends an outage. Otherwise, with one
/// master down, `/health` alternated with whichever shard the last call
/// reached, logging each time.
///
/// A connection refused in the first [`RECOVERY_GRACE`] after Redis answered
/// again does not start a new outage: the command and pub/sub connections
/// reconnect on their own, and one may still hand a caller the outcome of a
/// connection attempt made while Redis was down after the other reached it
/// (each restart of Redis was logged and counted as two outages). Later
/// such leftovers are tried again ([`RedisLink::query_on`]).
#[derive(Debug)]
pub(crate) struct Availability {
    up: AtomicBool,
    outages: AtomicU64,
    sharded: bool,
    recovered_at: std::sync::Mutex<Option<Instant>>,
}

/// See [`Availability`].
const RECOVERY_GRACE: Duration = Duration::from_secs(1);

impl Availability {
    fn new(sharded: bool) -> Self {
        Self {
            up: AtomicBool::new(true),
            outages: AtomicU64::new(0),
            sharded,
            recovered_at: std::sync::Mutex::new(None),
        }
    }

    fn recovered_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.recovered_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.is_up() {
            return;
        }
        // Set before `up`, so that a refusal seen on another thread as soon
        // as `up` is true also sees the grace.
        *self.recovered_at() = Some(Instant::now());
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis is reachable again");
        }
    }

    fn failed(&self, err: &redis::RedisError) {
        if err.is_connection_refusal()
            && self.is_up()
            && self
                .recovered_at()
                .is_some_and(|at| at.elapsed() < RECOVERY_GRACE)
        {
            return;
        }
        if self.up.swap(false, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            if self.sharded {
                tracing::warn!(error = %err, "Redis is unreachable (one shard or the whole cluster): requests on its channels answer 503 until it is back");
            } else {
                tracing::warn!(error = %err, "Redis is unreachable: publishes answer 503 until it is back");
            }
        }
    }
}

/// A node's link to Redis.
pub(crate) struct RedisLink {
    pub keys: Keys,
    pub settings: EngineSettings,
    /// This process in Redis: the node's name and a random suffix
    /// (`n1~7KQ2M9`). Heartbeats, presence entries and control messages
    /// carry it, so a node restarted under the same name right after a
    /// crash is a new member, and the crashed process is reaped as dead.
    pub node: String,
    /// The node's name, as `/api/info` shows it.
    pub name: String,
    target: Target,
    /// Cluster mode: the connection, made on first use. Single: pub/sub.
    lazy: OnceCell<Commands>,
    push: PushSink,
    pub availability: Availability,
    /// Cluster mode: the slot layout last read and one key in each of its
    /// shards, found again only when the layout changes.
    shard_probes: std::sync::Mutex<(SlotLayout, Vec<String>)>,
}

fn config_error(problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: "engine.redis_url".to_owned(),
        problem: problem.into(),
    }
}

impl RedisLink {
    /// Parses the settings and prepares (but does not open) the connections.
    /// `push` receives the pub/sub connection's messages and disconnections.
    pub fn new(settings: &EngineSettings, node: &str, push: PushSink) -> Result<Self, ConfigError> {
        let timeout = settings.redis_timeout;
        let urls = settings.redis_urls();
        if urls.is_empty() {
            return Err(config_error("no Redis address given"));
        }
        let mut infos = Vec::with_capacity(urls.len());
        for url in &urls {
            let info = url
                .into_connection_info()
                .map_err(|e| config_error(format!("not a Redis URL ({e})")))?;
            let tcp = info.tcp_settings().clone().set_nodelay(true);
            let mut redis_settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            if let Some(password) = &settings.redis_password {
                redis_settings = redis_settings.set_password(password);
            }
            infos.push(
                info.set_tcp_settings(tcp)
                    .set_redis_settings(redis_settings),
            );
        }
        let target = if settings.redis_cluster {
            let sender = push.clone();
            let client = ClusterClientBuilder::new(infos)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .push_sender(move |info: PushInfo| -> Result<(), ()> {
                    sender(info);
                    Ok(())
                })
                .build()
                .map_err(|e| config_error(format!("bad cluster settings ({e})")))?;
            Target::Cluster(client)
        } else {
            if infos.len() > 1 {
                return Err(config_error(
                    "several addresses need engine.redis_cluster = true",
                ));
            }
            let info = infos.remove(0);
            let client =
                redis::Client::open(info).map_err(|e| config_error(format!("not usable ({e})")))?;
            let commands =
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
                    .map_err(|e| config_error(format!("not usable ({e})")))?;
            Target::Single { commands, client }
        };
        Ok(Self {
            keys: Keys {
                prefix: settings.redis_prefix.clone(),
            },
            settings: settings.clone(),
            node: format!("{node}~{}", instance_suffix()),
            name: node.to_owned(),
            target,
            lazy: OnceCell::new(),
            push,
            availability: Availability::new(settings.redis_cluster),
            shard_probes: std::sync::Mutex::default(),
        })
    }

    /// The connection for commands.
    pub async fn commands(&self) -> Result<Commands, EngineError> {
        match &self.target {
            Target::Single { commands, .. } => Ok(Commands::Single(commands.clone())),
            Target::Cluster(client) => self
                .lazy
                .get_or_try_init(|| async {
                    client
                        .get_async_connection()
                        .await
                        .map(Commands::Cluster)
                        .map_err(|e| self.unavailable(&e))
                })
                .await
                .cloned(),
        }
    }

    /// The connection that holds this node's subscriptions.
    pub async fn subscriber(&self) -> Result<Commands, EngineError> {
        match &self.target {
            Target::Cluster(_) => self.commands().await,
            Target::Single { client, .. } => self
                .lazy
                .get_or_try_init(|| async {
                    let sender = self.push.clone();
                    let config = manager_config(self.settings.redis_timeout)
                        .set_push_sender(move |info: PushInfo| -> Result<(), ()> {
                            sender(info);
                            Ok(())
                        })
                        .set_automatic_resubscription();
                    ConnectionManager::new_lazy_with_config(client.clone(), config)
                        .map(Commands::Single)
                        .map_err(|e| self.unavailable(&e))
                })
                .await
                .cloned(),
        }
    }

    /// Whether channels use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    pub fn sharded(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Subscribes this node to `channel`'s pub/sub channel.
    pub async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let name = self.keys.pubsub(channel);
        let result = match self.subscriber().await? {
            Commands::Single(mut c) => c.subscribe(&name).await,
            Commands::Cluster(mut c) => c.ssubscribe(&name).await,
        };
        self.observe(result)
    }

    /// Unsubscribes this node from `channel`'s pub/sub channel.
    pub async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let name = self.keys.pubsub(channel);
        let result = match self.subscriber().await? {
            Commands::Single(mut c) => c.unsubscribe(&name).await,
            Commands::Cluster(mut c) => c.sunsubscribe(&name).await,
        };
        self.observe(result)
    }

    /// Subscribes to the control channel (classic pub/sub: every node hears it).
    pub async fn subscribe_control(&self) -> Result<(), EngineError> {
        let name = self.keys.control();
        let result = match self.subscriber().await? {
            Commands::Single(mut c) => c.subscribe(&name).await,
            Commands::Cluster(mut c) => c.subscribe(&name).await,
        };
        self.observe(result)
    }

    /// Checks that the pub/sub connection answers (and reconnects it if not).
    pub async fn ping_subscriber(&self) -> Result<(), EngineError> {
        let mut conn = self.subscriber().await?;
        let result = self.query_on(&mut conn, &redis::cmd("PING")).await;
        self.observe::<()>(result)
    }

    /// Runs `cmd` on `conn`, once more if its connection was refused while
    /// Redis is taken to be up. A connection manager whose reconnection
    /// failed during an outage hands that refusal to the next command on
    /// it, however late (a heartbeat 5 s after Redis came back), and it
    /// would start a new outage; a refused connection sent nothing, so the
    /// command is not run twice, and the second try uses the fresh
    /// connection attempt the refusal started.
    async fn query_on<T: redis::FromRedisValue>(
        &self,
        conn: &mut Commands,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(err) if err.is_connection_refusal() && self.availability.is_up() => {
                cmd.query_async(conn).await
            }
            result => result,
        }
    }

    /// Redis Cluster: checks that every shard answers, and ends an outage if
    /// so. Reads one key of each master's slots (found from `CLUSTER SLOTS`):
    /// a command routed by key reaches its master or fails, whereas `PING`
    /// to all masters skips one the client has dropped its connection to.
    pub async fn check_every_shard(&self) -> Result<(), EngineError> {
        let mut conn = self.commands().await?;
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let layout = shard_slots(&slots);
        let keys = {
            let mut probes = self
                .shard_probes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if probes.0 != layout || probes.1.is_empty() {
                *probes = (layout.clone(), self.keys.one_per_shard(&layout));
            }
            probes.1.clone()
        };
        for key in keys {
            let exists: redis::RedisResult<bool> =
                redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await;
            exists.map_err(|e| self.unavailable(&e))?;
        }
        self.availability.succeeded();
        Ok(())
    }

    /// Calls library function `name` (without its version prefix), loading the
    /// library first when this Redis does not have it (a new or flushed Redis).
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        name: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, EngineError> {
        let mut conn = self.commands().await?;
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("{LIBRARY_PREFIX}{name}")).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        match self.query_on::<T>(&mut conn, &cmd).await {
            Err(err) if is_missing_function(&err) => {
                let load: redis::RedisResult<String> = redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(LIBRARY)
                    .query_async(&mut conn)
                    .await;
                if let Err(err) = load {
                    tracing::error!(error = %err, "could not load the Tidings functions into Redis");
                    return Err(self.unavailable(&err));
                }
                self.observe(cmd.query_async(&mut conn).await)
            }
            result => self.observe(result),
        }
    }

    /// Runs a plain command.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, EngineError> {
        let mut conn = self.commands().await?;
        let result = self.query_on(&mut conn, cmd).await;
        self.observe(result)
    }

    /// Records the outcome of a Redis call and maps its error.
    pub fn observe<T>(&self, result: redis::RedisResult<T>) -> Result<T, EngineError> {
        match result {
            Ok(value) => {
                if !self.availability.sharded {
                    self.availability.succeeded();
                }
                Ok(value)
            }
            Err(err) => Err(self.unavailable(&err)),
        }
    }

    fn unavailable(&self, err: &redis::RedisError) -> EngineError {
        // Errors Redis itself answered (a script error) are not outages, but
        // those that refuse every command are: a password it does not accept,
        // a dataset still loading, a cluster without a quorum, cluster
        // commands sent to a Redis without cluster support. So are the
        // client's own failures to reach it: a TLS handshake refused (an
        // untrusted certificate), no connection to any cluster node. On a
        // Redis Cluster, a redirect the client hands back (MOVED, ASK) or a
        // TRYAGAIN means the shard that owns the slot could not be reached
        // or cannot serve it now: an outage of that shard.
        let refuses_everything = matches!(
            err.kind(),
            redis::ErrorKind::AuthenticationFailed
                | redis::ErrorKind::Client
                | redis::ErrorKind::ClusterConnectionNotFound
        ) || matches!(
            err.code(),
            Some(
                "NOAUTH"
                    | "WRONGPASS"
                    | "LOADING"
                    | "MASTERDOWN"
                    | "CLUSTERDOWN"
                    | "MOVED"
                    | "ASK"
                    | "TRYAGAIN"
            )
        ) || err.to_string().contains("cluster support disabled");
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            || refuses_everything
        {
            self.availability.failed(err);
        } else {
            tracing::error!(error = %err, "Redis refused a command");
        }
        EngineError::Unavailable(err.to_string())
    }
}

/// Six characters that tell this process apart from earlier ones of the
/// same node name.
fn instance_suffix() -> String {
    let id = ulid::Ulid::generate().to_string();
    id[id.len() - 6..].to_owned()
}

fn is_missing_function(err: &redis::RedisError) -> bool {
    err.to_string().contains("Function not found")
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    // Fail fast while Redis is away (publishes answer 503 and are retried by
    // the publisher); the next command tries to reconnect.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;
    use redis::Value;

    use super::{shard_slots, Keys};

    fn master(port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(format!("id{port}").into_bytes()),
        ])
    }

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master(port)])
    }

    #[test]
    fn one_key_lands_in_each_shard_of_a_cluster_slots_reply() {
        // The second master holds two ranges; a malformed entry is skipped.
        let reply = Value::Array(vec![
            range(0, 5460, 7000),
            range(5461, 8000, 7001),
            Value::Int(3),
            range(8001, 10922, 7001),
            range(10923, 16383, 7002),
        ]);
        let shards = shard_slots(&reply);
        assert_eq!(
            shards,
            vec![
                vec![(0, 5460)],
                vec![(5461, 8000), (8001, 10922)],
                vec![(10923, 16383)]
            ]
        );
        let keys = Keys {
            prefix: "tidings".to_owned(),
        }
        .one_per_shard(&shards);
        assert_eq!(keys.len(), 3);
        for (key, ranges) in keys.iter().zip(&shards) {
            let slot = Slot::for_key(key);
            assert!(
                ranges
                    .iter()
                    .any(|&(start, end)| (start..=end).any(|s| Slot::new(s) == Some(slot))),
                "{key} is not in {ranges:?}"
            );
        }
    }

    #[test]
    fn a_reply_that_is_not_a_list_of_ranges_gives_no_shard() {
        assert!(shard_slots(&Value::Nil).is_empty());
        assert!(shard_slots(&Value::Array(vec![range(0, 70000, 7000)])).is_empty());
    }
}
