//! The Redis Streams consumer: one consumer (named after this node) in a
//! consumer group over the configured stream keys.
//!
//! Order of work on every (re)connection: the entries this consumer was
//! delivered but never acknowledged (a previous run of this node crashed),
//! then the entries other consumers left pending longer than `claim_idle`
//! (`XAUTOCLAIM`), then new entries (`XREADGROUP ... >`), claiming again every
//! `claim_idle`. An entry is acknowledged only after it is placed or added to
//! the dead-letter stream. Stopped by the [`super::ConsumerSet`]'s stop signal,
//! between batches or during a retry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply,
    StreamReadReply,
};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Value};
use tokio::sync::watch;

use super::placement::{Placement, Stopped};
use super::{reconnect_until_stopped, stopped, ConsumerContext};

/// Why a session ended.
enum SessionEnd {
    /// The consumer was told to stop.
    Stopped,
    /// Redis failed; reconnect.
    Lost(RedisError),
}

impl From<RedisError> for SessionEnd {
    fn from(err: RedisError) -> Self {
        Self::Lost(err)
    }
}

impl From<Stopped> for SessionEnd {
    fn from(_: Stopped) -> Self {
        Self::Stopped
    }
}

/// Runs the consumer until `stop`.
pub(crate) async fn run(context: ConsumerContext, mut stop: watch::Receiver<bool>) {
    let name = context.config.name.clone();
    let client = match client(&context) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(consumer = %name, error = %err, "consumer not started: unusable redis_url");
            return;
        }
    };
    let monitor = tokio::spawn(monitor(context.clone(), client.clone()));
    let groups_seen = GroupsSeen::new(context.config.streams.len());
    let (context_ref, client_ref, seen_ref) = (&context, &client, &groups_seen);
    reconnect_until_stopped(&name, "Redis", &mut stop, move |mut stop| async move {
        match session(context_ref, client_ref, seen_ref, &mut stop).await {
            SessionEnd::Stopped => None,
            SessionEnd::Lost(err) => Some(err.to_string()),
        }
    })
    .await;
    monitor.abort();
    tracing::info!(consumer = %name, "consumer stopped");
}

fn client(context: &ConsumerContext) -> Result<redis::Client, RedisError> {
    let engine = &context.tidings.state().config.engine;
    let info = match &context.config.redis_url {
        Some(url) => url.as_str().into_connection_info()?,
        None => {
            // The engine's Redis, with its separate password if any.
            let first = engine
                .redis_url
                .split(',')
                .next()
                .unwrap_or_default()
                .trim();
            let info = first.into_connection_info()?;
            match &engine.redis_password {
                Some(password) => {
                    let settings = info.redis_settings().clone().set_password(password);
                    info.set_redis_settings(settings)
                }
                None => info,
            }
        }
    };
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// For each consumed stream, whether this consumer has found its group (made
/// or already there) in an earlier session.
struct GroupsSeen(Vec<AtomicBool>);

impl GroupsSeen {
    fn new(streams: usize) -> Self {
        Self((0..streams).map(|_| AtomicBool::new(false)).collect())
    }

    fn mark(&self, index: usize) {
        if let Some(seen) = self.0.get(index) {
            seen.store(true, Ordering::Relaxed);
        }
    }

    fn before(&self, index: usize) -> bool {
        self.0
            .get(index)
            .is_some_and(|seen| seen.load(Ordering::Relaxed))
    }
}

async fn session(
    context: &ConsumerContext,
    client: &redis::Client,
    groups_seen: &GroupsSeen,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    match session_inner(context, client, groups_seen, stop).await {
        Ok(()) => SessionEnd::Stopped,
        Err(end) => end,
    }
}

async fn session_inner(
    context: &ConsumerContext,
    client: &redis::Client,
    groups_seen: &GroupsSeen,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let config = &context.config;
    // XREADGROUP blocks for `block`; a response may take that long.
    let mut conn = connect(client, config.block + Duration::from_secs(10)).await?;
    let start = match config.start {
        super::StreamStart::New => "$",
        super::StreamStart::Beginning => "0",
    };
    for (index, stream) in config.streams.iter().enumerate() {
        // A group this consumer had before and that is gone now was lost
        // with Redis's data (a restart without persistence) or deleted:
        // made again at the stream's beginning, so that nothing written
        // since is skipped, whatever `start` says.
        let lost = groups_seen.before(index);
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&config.group)
            .arg(if lost { "0" } else { start })
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) if lost => {
                tracing::warn!(consumer = %config.name, %stream, group = %config.group, "consumer group was gone (Redis lost its data?); made again, reading the stream from its beginning")
            }
            Ok(()) => {
                tracing::info!(consumer = %config.name, %stream, group = %config.group, "consumer group created")
            }
            Err(err) if err.code() == Some("BUSYGROUP") => {}
            Err(err) => return Err(err.into()),
        }
        groups_seen.mark(index);
    }
    let me = context.tidings.state().node.clone();
    tracing::info!(consumer = %config.name, consumer_name = %me, streams = ?config.streams, group = %config.group, "consumer reading");
    // Entries this node was given before it stopped (crash between publish and ack).
    loop {
        let reply = read(&mut conn, context, &me, "0", None).await?;
        if handle(context, &mut conn, reply, stop).await? == 0 {
            break;
        }
    }
    claim_stale(context, &mut conn, &me, stop).await?;
    let mut last_claim = Instant::now();
    loop {
        let reply = tokio::select! {
            () = stopped(stop) => return Ok(()),
            reply = read(&mut conn, context, &me, ">", Some(config.block)) => reply?,
        };
        handle(context, &mut conn, reply, stop).await?;
        if last_claim.elapsed() >= config.claim_idle {
            claim_stale(context, &mut conn, &me, stop).await?;
            last_claim = Instant::now();
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

async fn read(
    conn: &mut MultiplexedConnection,
    context: &ConsumerContext,
    me: &str,
    from: &str,
    block: Option<Duration>,
) -> Result<StreamReadReply, RedisError> {
    let config = &context.config;
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&config.group)
        .arg(me)
        .arg("COUNT")
        .arg(config.batch_size);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(&config.streams);
    for _ in &config.streams {
        cmd.arg(from);
    }
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    Ok(reply.unwrap_or_default())
}

/// Takes over entries pending in other consumers for `claim_idle` or longer.
async fn claim_stale(
    context: &ConsumerContext,
    conn: &mut MultiplexedConnection,
    me: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let config = &context.config;
    for stream in &config.streams {
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&config.group)
                .arg(me)
                .arg(config.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(config.batch_size)
                .query_async(conn)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(consumer = %config.name, %stream, entries = reply.claimed.len(), "claimed entries left pending by another consumer");
            }
            let batch = StreamReadReply {
                keys: vec![redis::streams::StreamKey {
                    key: stream.clone(),
                    ids: reply.claimed,
                }],
            };
            handle(context, conn, batch, stop).await?;
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
    }
    Ok(())
}

/// Places every entry of `reply`, in order, acknowledging each stream's
/// finished entries. Returns how many entries there were.
async fn handle(
    context: &ConsumerContext,
    conn: &mut MultiplexedConnection,
    reply: StreamReadReply,
    stop: &mut watch::Receiver<bool>,
) -> Result<usize, SessionEnd> {
    let mut count = 0;
    for key in reply.keys {
        let mut done: Vec<String> = Vec::with_capacity(key.ids.len());
        // Of `done`, the entries that were messages (not deleted ones).
        let mut messages = 0;
        let mut stopped = false;
        for entry in &key.ids {
            count += 1;
            match place(context, conn, &key.key, entry, stop).await {
                Ok(was_message) => {
                    done.push(entry.id.clone());
                    messages += usize::from(was_message);
                }
                Err(SessionEnd::Stopped) => {
                    stopped = true;
                    break;
                }
                Err(lost) => {
                    // Acknowledge what is done, so a reconnect does not redo it.
                    if ack(context, conn, &key.key, &done).await.is_ok() {
                        context.metrics.processed(messages);
                    }
                    return Err(lost);
                }
            }
        }
        ack(context, conn, &key.key, &done).await?;
        // Counted once acknowledged: an entry read again (a failed
        // dead-letter write, a lost acknowledgement) is not counted twice.
        context.metrics.processed(messages);
        if stopped {
            return Err(SessionEnd::Stopped);
        }
    }
    Ok(count)
}

async fn ack(
    context: &ConsumerContext,
    conn: &mut MultiplexedConnection,
    stream: &str,
    ids: &[String],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(&context.config.group)
        .arg(ids)
        .query_async::<u64>(conn)
        .await?;
    Ok(())
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Places one entry, dead-lettering it where it cannot be; `false` for an
/// entry deleted from the stream, which holds no message.
async fn place(
    context: &ConsumerContext,
    conn: &mut MultiplexedConnection,
    stream: &str,
    entry: &StreamId,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, SessionEnd> {
    if entry.map.is_empty() {
        // A pending entry deleted from the stream (XDEL, trimming): nothing to place.
        return Ok(false);
    }
    let field = &context.config.message_field;
    let source_id = format!("{stream}:{}", entry.id);
    let placement = match entry.map.get(field).and_then(bytes) {
        Some(message) => context.placer.place(&message, &source_id, stop).await?,
        None => Placement::DeadLetter(format!("the entry has no `{field}` field")),
    };
    if let Placement::DeadLetter(reason) = placement {
        let original = match entry.map.get(field).and_then(bytes) {
            Some(message) => message,
            None => {
                let fields: serde_json::Map<String, serde_json::Value> = entry
                    .map
                    .iter()
                    .map(|(k, v)| {
                        let text = bytes(v)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default();
                        (k.clone(), serde_json::Value::String(text))
                    })
                    .collect();
                serde_json::Value::Object(fields).to_string().into_bytes()
            }
        };
        let target = context.config.dead_letter_stream_of(stream);
        redis::cmd("XADD")
            .arg(&target)
            .arg("*")
            .arg("stream")
            .arg(stream)
            .arg("id")
            .arg(&entry.id)
            .arg("consumer")
            .arg(&context.config.name)
            .arg("reason")
            .arg(&reason)
            .arg(field)
            .arg(original)
            .query_async::<String>(conn)
            .await?;
        context.metrics.dead_lettered();
        tracing::warn!(consumer = %context.config.name, %stream, id = %entry.id, dead_letter = %target, %reason, "stream entry dead-lettered");
    }
    Ok(true)
}

/// Updates the lag and oldest-age gauges every second and logs when the
/// consumer falls behind (oldest unprocessed entry older than `lag_warning`)
/// or catches up. Aborted by [`run`] when the consumer stops.
async fn monitor(context: ConsumerContext, client: redis::Client) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut behind = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if conn.is_none() {
            conn = connect(&client, Duration::from_secs(2)).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            context.metrics.source_up(false);
            continue;
        };
        match backlog(&context, c).await {
            Ok((lag, age)) => {
                context.metrics.source_up(true);
                context.metrics.backlog(lag, age);
                let now_behind = age > context.config.lag_warning;
                if now_behind && !behind {
                    tracing::warn!(consumer = %context.config.name, lag, oldest_age = ?age, "consumer is falling behind");
                } else if behind && !now_behind {
                    tracing::info!(consumer = %context.config.name, lag, "consumer caught up");
                }
                behind = now_behind;
            }
            Err(err) => {
                tracing::debug!(consumer = %context.config.name, error = %err, "could not read the stream backlog");
                context.metrics.source_up(false);
                conn = None;
            }
        }
    }
}

/// Milliseconds of an entry id (`1700000000000-0`).
fn id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

async fn backlog(
    context: &ConsumerContext,
    conn: &mut MultiplexedConnection,
) -> Result<(u64, Duration), RedisError> {
    let config = &context.config;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut lag = 0u64;
    let mut oldest: Option<u64> = None;
    for stream in &config.streams {
        let groups: StreamInfoGroupsReply = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(conn)
            .await
        {
            Ok(groups) => groups,
            // The stream does not exist (yet): nothing is waiting.
            Err(err) if err.code().is_some() => continue,
            Err(err) => return Err(err),
        };
        let Some(group) = groups.groups.iter().find(|g| g.name == config.group) else {
            continue;
        };
        let undelivered = group.lag.unwrap_or(0) as u64;
        lag += undelivered + group.pending as u64;
        let first = if group.pending > 0 {
            let pending: StreamPendingReply = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&config.group)
                .query_async(conn)
                .await?;
            match pending {
                StreamPendingReply::Data(data) => Some(data.start_id),
                _ => None,
            }
        } else if undelivered > 0 {
            let next: StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("({}", group.last_delivered_id))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            next.ids.first().map(|e| e.id.clone())
        } else {
            None
        };
        if let Some(ms) = first.as_deref().and_then(id_millis) {
            oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
        }
    }
    let age = oldest.map_or(Duration::ZERO, |ms| {
        Duration::from_millis(now.saturating_sub(ms))
    });
    Ok((lag, age))
}
