//! The PostgreSQL transactional outbox consumer.
//!
//! Applications insert rows into the outbox table in the same transaction as
//! their change; the table's trigger sends a `NOTIFY` on commit (a rolled-back
//! transaction sends nothing), which wakes this consumer at once; it also reads
//! the table every `poll_interval` in case a notification was lost with a
//! connection.
//!
//! Several nodes share the table without publishing a row twice and keep the
//! order of rows per `partition_key`: a node locks the *oldest unprocessed row*
//! of each partition it takes (`FOR UPDATE SKIP LOCKED`), then the following
//! rows of those partitions. Another node skips a partition whose oldest row
//! is locked and never looks past it, so one partition is worked on by one node
//! at a time, in `id` order. Rows are marked (`processed_at`) or deleted in the
//! transaction that locked them, after they were placed; a crash in between
//! rolls the marks back and the rows are read again, and their idempotency keys
//! (event ids) make the second publish a no-op. Stopped by the
//! [`super::ConsumerSet`]'s stop signal, between batches or during a retry.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{oneshot, watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

use super::placement::{Placement, Stopped};
use super::{reconnect_until_stopped, stopped, ConsumerContext};

/// The DDL of an outbox table named `table` whose trigger notifies
/// `notify_channel`: what `tidings outbox-ddl` prints (`docs/outbox.sql` holds
/// it with the default names).
pub fn outbox_ddl(table: &str, notify_channel: &str) -> String {
    let bare = table.rsplit('.').next().unwrap_or(table);
    include_str!("outbox.sql")
        .replace("{table}", table)
        .replace("{bare}", bare)
        .replace("{channel}", notify_channel)
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

impl From<tokio_postgres::Error> for SessionEnd {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Lost(err.to_string())
    }
}

/// Runs the consumer until `stop`.
pub(crate) async fn run(context: ConsumerContext, mut stop: watch::Receiver<bool>) {
    let name = context.config.name.clone();
    let url = context.config.postgres_url.clone().unwrap_or_default();
    let pg: tokio_postgres::Config = match url.parse() {
        Ok(pg) => pg,
        Err(err) => {
            tracing::error!(consumer = %name, error = %err, "consumer not started: unusable postgres_url");
            return;
        }
    };
    let monitor = tokio::spawn(monitor(context.clone(), pg.clone()));
    let (context_ref, pg_ref) = (&context, &pg);
    reconnect_until_stopped(&name, "PostgreSQL", &mut stop, move |mut stop| async move {
        match session(context_ref, pg_ref, &mut stop).await {
            SessionEnd::Stopped => None,
            SessionEnd::Lost(err) => Some(err),
        }
    })
    .await;
    monitor.abort();
    tracing::info!(consumer = %name, "consumer stopped");
}

/// Aborts the connection task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    context: &ConsumerContext,
    pg: &tokio_postgres::Config,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (mut client, mut connection) = match pg.connect(NoTls).await {
        Ok(pair) => pair,
        Err(err) => return err.into(),
    };
    let wake = Arc::new(Notify::new());
    let (lost_tx, mut lost) = oneshot::channel::<String>();
    // The connection must be polled for queries to make progress; polling it
    // as a stream of messages is also how notifications arrive.
    let _driver = AbortOnDrop(tokio::spawn({
        let wake = wake.clone();
        async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(err) => {
                        let _ = lost_tx.send(err.to_string());
                        return;
                    }
                }
            }
            let _ = lost_tx.send("connection closed".to_owned());
        }
    }));
    let config = &context.config;
    if let Err(err) = client
        // Quoted: `pg_notify` names the channel case-sensitively, and an
        // unquoted LISTEN would fold it to lower case. The name is letters,
        // digits and `_` (checked with the configuration).
        .batch_execute(&format!("LISTEN \"{}\"", config.notify_channel))
        .await
    {
        return err.into();
    }
    let statements = match Statements::prepare(&client, config).await {
        Ok(statements) => statements,
        Err(err) => return err.into(),
    };
    tracing::info!(consumer = %config.name, table = %config.table, "consumer reading the outbox");
    loop {
        match drain_once(context, &mut client, &statements, stop).await {
            Ok(count) if count >= config.batch_size => continue,
            Ok(_) => {}
            Err(end) => return end,
        }
        tokio::select! {
            () = stopped(stop) => return SessionEnd::Stopped,
            () = wake.notified() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
            reason = &mut lost => return SessionEnd::Lost(reason.unwrap_or_default()),
        }
    }
}

/// The statements of one batch, prepared once per connection (each saves a
/// round trip per batch).
struct Statements {
    oldest_heads: tokio_postgres::Statement,
    heads: tokio_postgres::Statement,
    lock_heads: tokio_postgres::Statement,
    rows: tokio_postgres::Statement,
    mark: tokio_postgres::Statement,
    dead_letter: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(
        client: &tokio_postgres::Client,
        config: &super::ConsumerConfig,
    ) -> Result<Self, tokio_postgres::Error> {
        let table = &config.table;
        // Among the oldest unprocessed rows, the first of each partition is
        // that partition's oldest unprocessed row: found without reading the
        // whole backlog.
        let oldest_heads = format!(
            "SELECT min(id) FROM (SELECT id, partition_key FROM {table} \
             WHERE processed_at IS NULL ORDER BY id LIMIT $1) oldest \
             GROUP BY partition_key"
        );
        // The oldest unprocessed row of every partition, oldest partitions
        // first: when other nodes hold the partitions of the oldest rows.
        let heads = format!(
            "SELECT min(id) FROM {table} WHERE processed_at IS NULL \
             GROUP BY partition_key ORDER BY 1 LIMIT $1"
        );
        // Partitions whose head no other node holds. The recheck of
        // `processed_at IS NULL` drops heads another node finished meanwhile.
        let lock_heads = format!(
            "SELECT partition_key FROM {table} WHERE id = ANY($1) AND processed_at IS NULL \
             FOR UPDATE SKIP LOCKED"
        );
        // No other node locks rows of a partition whose head we hold. One
        // index scan per partition, in `id` order: with `partition_key =
        // ANY(...)` PostgreSQL read every unprocessed row of the partitions
        // and sorted them, 40 ms a batch with a backlog of 20,000.
        let rows = format!(
            "SELECT batch.id, batch.message::text FROM unnest($1::text[]) AS p(key) \
             CROSS JOIN LATERAL (SELECT id, message FROM {table} \
                 WHERE processed_at IS NULL AND partition_key = p.key \
                 ORDER BY id LIMIT $2 FOR UPDATE) AS batch \
             ORDER BY batch.id LIMIT $2"
        );
        let mark = if config.delete_published {
            format!("DELETE FROM {table} WHERE id = ANY($1)")
        } else {
            format!("UPDATE {table} SET processed_at = now() WHERE id = ANY($1)")
        };
        let dead_letter = format!(
            "UPDATE {table} SET processed_at = now(), dead_letter_reason = $2 WHERE id = $1"
        );
        Ok(Self {
            oldest_heads: client.prepare(&oldest_heads).await?,
            heads: client.prepare(&heads).await?,
            lock_heads: client.prepare(&lock_heads).await?,
            rows: client.prepare(&rows).await?,
            mark: client.prepare(&mark).await?,
            dead_letter: client.prepare(&dead_letter).await?,
        })
    }
}

/// Locks, places and marks one batch. Returns how many rows it held.
async fn drain_once(
    context: &ConsumerContext,
    client: &mut tokio_postgres::Client,
    statements: &Statements,
    stop: &mut watch::Receiver<bool>,
) -> Result<usize, SessionEnd> {
    let config = &context.config;
    let table = &config.table;
    let limit = config.batch_size as i64;
    let tx = client.transaction().await?;
    let mut partitions = Vec::new();
    for heads in [&statements.oldest_heads, &statements.heads] {
        let heads: Vec<i64> = tx
            .query(heads, &[&limit])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if heads.is_empty() {
            break;
        }
        partitions = tx
            .query(&statements.lock_heads, &[&heads])
            .await?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
        if !partitions.is_empty() {
            break;
        }
    }
    if partitions.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let rows = tx.query(&statements.rows, &[&partitions, &limit]).await?;
    let mut done: Vec<i64> = Vec::with_capacity(rows.len());
    let mut dead: Vec<(i64, String)> = Vec::new();
    let mut was_stopped = false;
    for row in &rows {
        let id: i64 = row.get(0);
        let message: String = row.get(1);
        let source_id = format!("{table}:{id}");
        match context
            .placer
            .place(message.as_bytes(), &source_id, stop)
            .await
        {
            Ok(Placement::Placed | Placement::Skipped) => done.push(id),
            Ok(Placement::DeadLetter(reason)) => dead.push((id, reason)),
            Err(Stopped) => {
                was_stopped = true;
                break;
            }
        }
    }
    if !done.is_empty() {
        tx.execute(&statements.mark, &[&done]).await?;
    }
    for (id, reason) in &dead {
        tx.execute(&statements.dead_letter, &[id, reason]).await?;
    }
    tx.commit().await?;
    context.metrics.processed(done.len() + dead.len());
    for (id, reason) in &dead {
        context.metrics.dead_lettered();
        tracing::warn!(consumer = %config.name, %table, id, %reason, "outbox row dead-lettered");
    }
    if was_stopped {
        return Err(SessionEnd::Stopped);
    }
    Ok(rows.len())
}

/// Updates the lag and oldest-age gauges every second and logs when the
/// consumer falls behind or catches up. Aborted by [`run`] when it stops.
async fn monitor(context: ConsumerContext, pg: tokio_postgres::Config) {
    let config = &context.config;
    let query = format!(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
         FROM {} WHERE processed_at IS NULL",
        config.table
    );
    let mut client: Option<(tokio_postgres::Client, AbortOnDrop)> = None;
    let mut behind = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if client.is_none() {
            if let Ok((c, connection)) = pg.connect(NoTls).await {
                let driver = AbortOnDrop(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                client = Some((c, driver));
            }
        }
        let Some((c, _)) = client.as_ref() else {
            context.metrics.source_up(false);
            continue;
        };
        match c.query_one(&query, &[]).await {
            Ok(row) => {
                context.metrics.source_up(true);
                let lag: i64 = row.get(0);
                let age: f64 = row.get(1);
                let age = Duration::from_secs_f64(age.max(0.0));
                context.metrics.backlog(lag.max(0) as u64, age);
                let now_behind = age > config.lag_warning;
                if now_behind && !behind {
                    tracing::warn!(consumer = %config.name, lag, oldest_age = ?age, "consumer is falling behind");
                } else if behind && !now_behind {
                    tracing::info!(consumer = %config.name, lag, "consumer caught up");
                }
                behind = now_behind;
            }
            Err(err) => {
                tracing::debug!(consumer = %config.name, error = %err, "could not read the outbox backlog");
                context.metrics.source_up(false);
                client = None;
            }
        }
    }
}
