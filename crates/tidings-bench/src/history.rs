//! `history`: what history costs in the memory of the real server process.
//!
//! Tidings only. Every phase starts a fresh server (so memory one phase freed
//! cannot be reused by the next), with a generated config file whose namespace
//! `bench` (channels `bench:{x}`) has the history settings under test, and reads
//! the server's RSS (VmRSS) before and after:
//!
//! - `channels`: N channels touched once each with one small event (by
//!   `/api/broadcast`, `--broadcast-batch` channels per request), read at each of
//!   `--channel-steps`; then, once `history_ttl` has passed and the sweep has run,
//!   with only the positions left; then, after `engine.position_ttl`, once
//!   `tidings_engine_channels` is back to 0; then N fresh channels touched again
//!   (does the process reuse what it kept?).
//! - `positions`: the same N channels in a namespace with `history_size = 0`,
//!   so each holds only its position from the start: the cost of a remembered
//!   channel without the allocator's leftovers from expired events.
//! - `events`: one channel with a history larger than `--events`, filled with
//!   `--events` events of each of `--payload-sizes` bytes of data.
//! - `events-subscribed`: the same with one WebSocket subscriber on the channel,
//!   so the server also keeps each event's encoded envelope (cached on first
//!   delivery and held as long as the event is in history).
//!
//! With `--malloc-trim-probe`, the tool also calls glibc's `malloc_trim(0)` in
//! the server (through gdb) after the expired and reclaimed readings, to tell
//! memory the allocator keeps free from memory still in use.
//!
//! Every wait and every publishing loop is bounded in count and in time.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{self, Cmd, ConnSpec, Proto, Stats};
use crate::publish::HttpConn;
use crate::server::{Launch, Server};

/// Channels touched before the baseline reading, so the baseline already
/// includes the HTTP path's buffers and the first allocations of the maps.
const WARMUP_CHANNELS: usize = 1000;
/// Events published to the measured channel before the baseline reading.
const WARMUP_EVENTS: usize = 1000;
/// Pause before each RSS reading.
const SETTLE: Duration = Duration::from_secs(1);
/// Most events a subscriber may lag behind the publishers (keeps its send queue
/// far from the server's bound, so it is never closed as a slow consumer).
const MAX_SUBSCRIBER_LAG: u64 = 256;

/// The phases of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Channels touched once, then expired, then reclaimed.
    Channels,
    /// Channels with no history (positions only).
    Positions,
    /// Events in one channel's history, no subscriber.
    Events,
    /// Events in one channel's history, one subscriber.
    EventsSubscribed,
}

/// What to measure.
pub struct Options {
    pub phases: Vec<Phase>,
    pub channel_steps: Vec<usize>,
    pub touch_payload: usize,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub position_ttl: Duration,
    pub sweep_interval: Duration,
    pub events: usize,
    pub payload_sizes: Vec<usize>,
    pub broadcast_batch: usize,
    pub concurrency: usize,
    /// After the `expired` and `reclaimed` readings, call glibc's
    /// `malloc_trim(0)` in the server through gdb and read RSS again.
    pub malloc_trim_probe: bool,
    /// Where the generated config files go.
    pub config_dir: PathBuf,
}

/// RSS after some number of channels.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelStep {
    pub channels: u64,
    pub rss: u64,
    /// (rss − baseline) / channels.
    pub bytes_per_channel: f64,
    /// `tidings_engine_channels` at the reading (includes the warm-up channels).
    pub engine_channels: u64,
    /// Channels touched per second in this step.
    pub touch_rate: f64,
}

/// A reading some time after the last publish.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Later {
    /// Seconds after the last publish.
    pub after_s: f64,
    pub rss: u64,
    pub engine_channels: u64,
    /// (rss − baseline) / channels measured.
    pub bytes_per_channel: f64,
    /// RSS after `malloc_trim(0)` (with `--malloc-trim-probe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_trim: Option<u64>,
}

/// The `channels` phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelsResult {
    pub history_size: usize,
    pub history_ttl_s: f64,
    pub position_ttl_s: f64,
    pub sweep_interval_s: f64,
    pub payload_bytes: usize,
    pub warmup_channels: usize,
    /// RSS right after the server started.
    pub rss_start: u64,
    /// RSS after the warm-up: the baseline.
    pub rss_base: u64,
    pub steps: Vec<ChannelStep>,
    /// After `history_ttl` and a sweep: positions only.
    pub expired: Option<Later>,
    /// After `position_ttl`: every channel reclaimed.
    pub reclaimed: Option<Later>,
    /// The same number of fresh channels touched after the reclaim.
    pub retouched: Option<ChannelStep>,
    /// `retouched.rss` − the `reclaimed` reading (after the trim when probing):
    /// what touching them again added.
    pub retouch_growth: Option<i64>,
}

/// The `positions` phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PositionsResult {
    pub warmup_channels: usize,
    pub rss_start: u64,
    pub rss_base: u64,
    pub steps: Vec<ChannelStep>,
}

/// One `events` / `events-subscribed` run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsResult {
    /// Bytes of each event's `data` (the JSON payload as published).
    pub payload_bytes: usize,
    pub subscribers: u32,
    pub events: u64,
    pub history_size: usize,
    pub rss_start: u64,
    pub rss_base: u64,
    pub rss: u64,
    /// (rss − baseline) / events.
    pub bytes_per_event: f64,
    /// bytes_per_event − payload_bytes.
    pub overhead_per_event: f64,
    pub publish_s: f64,
    /// Events the subscriber received (subscribed runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    /// Events the history read back held at the end (checks nothing was trimmed).
    pub history_len: u64,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryResult {
    /// `/proc/loadavg` when the scenario started and ended.
    pub loadavg_start: String,
    pub loadavg_end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelsResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<PositionsResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventsResult>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A duration as the config file and the environment take it.
fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Runs the selected phases, each against a fresh server.
pub async fn run(opts: &Options, launch: &Launch) -> Result<HistoryResult> {
    let mut result = HistoryResult {
        loadavg_start: loadavg(),
        ..Default::default()
    };
    if opts.channel_steps.is_empty() || opts.channel_steps.contains(&0) {
        bail!("--channel-steps needs channel counts above 0");
    }
    std::fs::create_dir_all(&opts.config_dir)
        .with_context(|| format!("creating {}", opts.config_dir.display()))?;
    for &phase in &opts.phases {
        match phase {
            Phase::Channels => result.channels = Some(channels(opts, launch).await?),
            Phase::Positions => result.positions = Some(positions(opts, launch).await?),
            Phase::Events | Phase::EventsSubscribed => {
                let subscribers = u32::from(phase == Phase::EventsSubscribed);
                for &size in &opts.payload_sizes {
                    result
                        .events
                        .push(events(opts, launch, size, subscribers).await?);
                }
            }
        }
    }
    result.loadavg_end = loadavg();
    Ok(result)
}

/// Starts a server whose `bench` namespace keeps `history_size` events for
/// `history_ttl`, and runs `body` against it; the server is stopped either way.
async fn with_server<T>(
    opts: &Options,
    launch: &Launch,
    name: &str,
    history_size: usize,
    history_ttl: Duration,
    body: impl AsyncFnOnce(&Server) -> Result<T>,
) -> Result<T> {
    let config = opts.config_dir.join(format!("history-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "# Generated by `tidings-bench history` (phase {name}).\n\
             [namespaces.bench]\n\
             min_segments = 2\n\
             max_segments = 2\n\
             subscribe = [{{}}]\n\
             history = [{{}}]\n\
             history_size = {history_size}\n\
             history_ttl = \"{}\"\n",
            ms(history_ttl)
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let mut env = launch.tidings_env.clone();
    env.extend([
        ("TIDINGS_CONFIG".to_owned(), config.display().to_string()),
        (
            "TIDINGS_ENGINE_POSITION_TTL".to_owned(),
            ms(opts.position_ttl),
        ),
        (
            "TIDINGS_ENGINE_SWEEP_INTERVAL".to_owned(),
            ms(opts.sweep_interval),
        ),
        (
            "TIDINGS_API_MAX_BROADCAST_CHANNELS".to_owned(),
            opts.broadcast_batch.max(1).to_string(),
        ),
    ]);
    let launch = Launch {
        tidings_env: env,
        ..launch.clone()
    };
    let server = launch.start(Proto::Tidings).await?;
    println!(
        "[history {name}] server at {} (pid {:?}), history_size {history_size}, history_ttl {}, position_ttl {}, sweep {}",
        server.addr,
        server.pid,
        ms(history_ttl),
        ms(opts.position_ttl),
        ms(opts.sweep_interval)
    );
    let out = body(&server).await;
    server.stop().await;
    // Let the kernel reclaim the closed sockets before the next server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    out
}

/// RSS after the settling pause; an error when it cannot be read.
async fn settled_rss(server: &Server) -> Result<u64> {
    tokio::time::sleep(SETTLE).await;
    server
        .rss_bytes()
        .context("cannot read the server's RSS from /proc (no pid?)")
}

/// Calls `malloc_trim(0)` in the server through gdb (glibc returns the free
/// pages of every arena to the kernel) and reads RSS again.
async fn trimmed_rss(server: &Server) -> Result<u64> {
    let pid = server.pid.context("no server pid")?;
    let run = tokio::process::Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex"])
        .arg("call (int)malloc_trim(0)")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("gdb did not finish within 60 s")?
        .context("running gdb (is it installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("$1 =") {
        bail!(
            "gdb could not call malloc_trim in pid {pid}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    settled_rss(server).await
}

/// With `--malloc-trim-probe`: RSS after `malloc_trim(0)`, printed.
async fn probe(
    opts: &Options,
    server: &Server,
    label: &str,
    rss_base: u64,
    n: usize,
) -> Result<Option<u64>> {
    if !opts.malloc_trim_probe {
        return Ok(None);
    }
    let rss = trimmed_rss(server).await?;
    println!(
        "[history {label}] after malloc_trim(0): RSS {:.1} MiB, {:.0} B/channel over the baseline",
        mib(rss),
        rss.saturating_sub(rss_base) as f64 / n as f64
    );
    Ok(Some(rss))
}

/// `tidings_engine_channels` from `GET /metrics`.
async fn engine_channels(addr: SocketAddr) -> Result<u64> {
    let mut conn = HttpConn::connect(addr).await?;
    let (status, body) = conn.request("GET", "/metrics", None, b"").await?;
    if status != 200 {
        bail!("GET /metrics: HTTP {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("tidings_engine_channels "))
        .context("no tidings_engine_channels in /metrics")?;
    Ok(value.trim().parse::<f64>()? as u64)
}

/// Events `GET /api/history` returns for `channel` (up to `limit`).
async fn history_len(addr: SocketAddr, api_key: &str, channel: &str, limit: u64) -> Result<u64> {
    let mut conn = HttpConn::connect(addr).await?;
    let path = format!("/api/history?channel={channel}&limit={limit}");
    let (status, body) = conn.request("GET", &path, Some(api_key), b"").await?;
    if status != 200 {
        bail!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).context("history response")?;
    Ok(doc["events"].as_array().map_or(0, |e| e.len() as u64))
}

/// A JSON object of exactly `size` bytes when `size` allows (at least 10):
/// `{"pad":"xx…"}`.
fn payload(size: usize) -> String {
    let pad = size.saturating_sub(10);
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad))
}

/// Touches channels `prefix{from}..prefix{to}` once each through
/// `/api/broadcast`, `batch` per request, `concurrency` requests in flight.
/// Returns the seconds it took.
async fn touch(
    opts: &Options,
    addr: SocketAddr,
    api_key: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    data: &str,
) -> Result<f64> {
    let batch = opts.broadcast_batch.max(1);
    // A generous bound: even 20k channels/s finishes far inside it.
    let limit = Duration::from_secs_f64(60.0 + range.len() as f64 / 20_000.0);
    let next = Cell::new(range.start);
    let requests = ApiRequests {
        addr,
        api_key,
        path: "/api/broadcast",
        concurrency: opts.concurrency,
        limit,
        what: "touching channels",
    };
    requests
        .run(|body| {
            let from = next.get();
            if from >= range.end {
                return NextBody::Done;
            }
            let to = (from + batch).min(range.end);
            next.set(to);
            body.push_str(r#"{"channels":["#);
            for i in from..to {
                if i > from {
                    body.push(',');
                }
                body.push('"');
                body.push_str(prefix);
                body.push_str(&i.to_string());
                body.push('"');
            }
            body.push_str(r#"],"event":"touch","data":"#);
            body.push_str(data);
            body.push('}');
            NextBody::Send
        })
        .await
}

/// Which body a worker of [`ApiRequests::run`] sends next.
enum NextBody {
    /// The body was written: send it.
    Send,
    /// Nothing to send yet: ask again in a millisecond.
    Wait,
    /// Everything was sent.
    Done,
}

/// POSTs generated bodies to one server API path from `concurrency` keep-alive
/// connections, within a time limit; any answer but 200 ends the run.
struct ApiRequests<'a> {
    addr: SocketAddr,
    api_key: &'a str,
    path: &'a str,
    concurrency: usize,
    limit: Duration,
    /// Names the run in the time-limit error.
    what: &'a str,
}

impl ApiRequests<'_> {
    /// Runs until `next_body` says [`NextBody::Done`]; returns the seconds it took.
    async fn run(&self, next_body: impl Fn(&mut String) -> NextBody) -> Result<f64> {
        let start = Instant::now();
        let deadline = start + self.limit;
        let failure: RefCell<Option<String>> = RefCell::new(None);
        let fail = |message: String| {
            failure.borrow_mut().get_or_insert(message);
        };
        let worker = || async {
            let mut conn = match HttpConn::connect(self.addr).await {
                Ok(c) => c,
                Err(e) => return fail(format!("{e:#}")),
            };
            let mut body = String::new();
            loop {
                if failure.borrow().is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    return fail(format!("{} hit its time limit", self.what));
                }
                body.clear();
                match next_body(&mut body) {
                    NextBody::Done => return,
                    NextBody::Wait => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    NextBody::Send => {}
                }
                let path = self.path;
                match conn
                    .request("POST", path, Some(self.api_key), body.as_bytes())
                    .await
                {
                    Ok((200, _)) => {}
                    Ok((status, text)) => {
                        let text = String::from_utf8_lossy(&text);
                        return fail(format!("POST {path}: HTTP {status}: {text}"));
                    }
                    Err(e) => return fail(format!("POST {path}: {e:#}")),
                }
            }
        };
        futures_util::future::join_all((0..self.concurrency.max(1)).map(|_| worker())).await;
        if let Some(err) = failure.into_inner() {
            bail!("{err}");
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Touches `prefix{0..n}` in the steps of `--channel-steps`, reading RSS and the
/// engine's channel count after each.
async fn touch_steps(
    opts: &Options,
    server: &Server,
    api_key: &str,
    label: &str,
    prefix: &str,
    rss_base: u64,
    data: &str,
) -> Result<Vec<ChannelStep>> {
    let mut steps = opts.channel_steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let mut done = 0;
    let mut out = Vec::new();
    for n in steps {
        let secs = touch(opts, server.addr, api_key, prefix, done..n, data).await?;
        let touched = n - done;
        done = n;
        let rss = settled_rss(server).await?;
        let step = ChannelStep {
            channels: n as u64,
            rss,
            bytes_per_channel: rss.saturating_sub(rss_base) as f64 / n as f64,
            engine_channels: engine_channels(server.addr).await?,
            touch_rate: touched as f64 / secs.max(1e-9),
        };
        println!(
            "[history {label}] {n} channels ({:.0}/s): RSS {:.1} MiB, {:.0} B/channel over the baseline, engine channels {}",
            step.touch_rate,
            mib(rss),
            step.bytes_per_channel,
            step.engine_channels
        );
        out.push(step);
    }
    Ok(out)
}

/// Waits (bounded) until the engine holds `want` channels or `deadline` passes;
/// returns the last count.
async fn wait_for_channels(addr: SocketAddr, want: u64, deadline: Instant) -> Result<u64> {
    loop {
        let count = engine_channels(addr).await?;
        if count == want || Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn channels(opts: &Options, launch: &Launch) -> Result<ChannelsResult> {
    let n = *opts.channel_steps.iter().max().unwrap_or(&1);
    let data = payload(opts.touch_payload);
    let api_key = launch.api_key.clone();
    with_server(
        opts,
        launch,
        "channels",
        opts.history_size,
        opts.history_ttl,
        async |server: &Server| {
            let mut r = ChannelsResult {
                history_size: opts.history_size,
                history_ttl_s: opts.history_ttl.as_secs_f64(),
                position_ttl_s: opts.position_ttl.as_secs_f64(),
                sweep_interval_s: opts.sweep_interval.as_secs_f64(),
                payload_bytes: data.len(),
                warmup_channels: WARMUP_CHANNELS,
                rss_start: settled_rss(server).await?,
                ..Default::default()
            };
            let first_publish = Instant::now();
            touch(opts, server.addr, &api_key, "bench:w", 0..WARMUP_CHANNELS, &data).await?;
            r.rss_base = settled_rss(server).await?;
            println!(
                "[history channels] baseline after {WARMUP_CHANNELS} warm-up channels: RSS {:.1} MiB (at start {:.1} MiB)",
                mib(r.rss_base),
                mib(r.rss_start)
            );
            r.steps =
                touch_steps(opts, server, &api_key, "channels", "bench:c", r.rss_base, &data)
                    .await?;
            let last_publish = Instant::now() - SETTLE;
            let total = (n + WARMUP_CHANNELS) as u64;

            // History expired and swept; positions still remembered.
            let expired_at = last_publish + opts.history_ttl + opts.sweep_interval * 2 + SETTLE;
            let forget_at = first_publish + opts.position_ttl;
            if expired_at + SETTLE * 3 >= forget_at {
                eprintln!(
                    "warning: position_ttl ({} s) is too close to history_ttl ({} s) plus the publishing time: \
                     some positions may be forgotten before the `expired` reading",
                    opts.position_ttl.as_secs_f64(),
                    opts.history_ttl.as_secs_f64()
                );
            }
            println!(
                "[history channels] waiting {:.0} s for history_ttl to pass and the sweep to run",
                (expired_at - Instant::now()).as_secs_f64().max(0.0)
            );
            tokio::time::sleep_until(expired_at).await;
            let left = history_len(server.addr, &api_key, &format!("bench:c{}", n - 1), 10).await?;
            if left != 0 {
                bail!("history of bench:c{} still holds {left} events after history_ttl", n - 1);
            }
            let rss = settled_rss(server).await?;
            let mut expired = Later {
                after_s: (Instant::now() - last_publish).as_secs_f64(),
                rss,
                engine_channels: engine_channels(server.addr).await?,
                bytes_per_channel: rss.saturating_sub(r.rss_base) as f64 / n as f64,
                rss_after_trim: None,
            };
            println!(
                "[history channels] history expired ({:.0} s after the last publish): RSS {:.1} MiB, {:.0} B/channel over the baseline, engine channels {} (of {total})",
                expired.after_s,
                mib(rss),
                expired.bytes_per_channel,
                expired.engine_channels
            );
            expired.rss_after_trim = probe(opts, server, "channels", r.rss_base, n).await?;
            r.expired = Some(expired);

            // Positions forgotten: every channel reclaimed.
            let reclaim_by = last_publish + opts.position_ttl + opts.sweep_interval * 2;
            let limit = reclaim_by + Duration::from_secs(30);
            println!(
                "[history channels] waiting about {:.0} s for position_ttl to pass and the channels to be reclaimed",
                (reclaim_by - Instant::now()).as_secs_f64().max(0.0)
            );
            tokio::time::sleep_until(reclaim_by).await;
            let count = wait_for_channels(server.addr, 0, limit).await?;
            let rss = settled_rss(server).await?;
            let mut reclaimed = Later {
                after_s: (Instant::now() - last_publish).as_secs_f64(),
                rss,
                engine_channels: count,
                bytes_per_channel: rss.saturating_sub(r.rss_base) as f64 / n as f64,
                rss_after_trim: None,
            };
            println!(
                "[history channels] reclaimed ({:.0} s after the last publish): engine channels {count}, RSS {:.1} MiB ({:.1} MiB over the baseline, {:.0} B per channel once touched)",
                reclaimed.after_s,
                mib(rss),
                mib(rss.saturating_sub(r.rss_base)),
                reclaimed.bytes_per_channel
            );
            if count != 0 {
                bail!("{count} channels were still held {:.0} s after position_ttl", reclaimed.after_s - opts.position_ttl.as_secs_f64());
            }
            reclaimed.rss_after_trim = probe(opts, server, "channels", r.rss_base, n).await?;
            r.reclaimed = Some(reclaimed);

            // The same number of fresh channels again: does the process reuse what it kept?
            let secs = touch(opts, server.addr, &api_key, "bench:r", 0..n, &data).await?;
            let rss = settled_rss(server).await?;
            let again = ChannelStep {
                channels: n as u64,
                rss,
                bytes_per_channel: rss.saturating_sub(r.rss_base) as f64 / n as f64,
                engine_channels: engine_channels(server.addr).await?,
                touch_rate: n as f64 / secs.max(1e-9),
            };
            // Against the reading just before: after the trim when probing.
            let before = r
                .reclaimed
                .as_ref()
                .map_or(0, |x| x.rss_after_trim.unwrap_or(x.rss));
            let growth = rss as i64 - before as i64;
            println!(
                "[history channels] {n} fresh channels touched after the reclaim: RSS {:.1} MiB ({:+.1} MiB), engine channels {}",
                mib(rss),
                growth as f64 / 1048576.0,
                again.engine_channels
            );
            r.retouched = Some(again);
            r.retouch_growth = Some(growth);
            Ok(r)
        },
    )
    .await
}

async fn positions(opts: &Options, launch: &Launch) -> Result<PositionsResult> {
    let data = payload(opts.touch_payload);
    let api_key = launch.api_key.clone();
    // No history at all: each channel holds only its epoch and offset.
    with_server(
        opts,
        launch,
        "positions",
        0,
        opts.history_ttl,
        async |server: &Server| {
            let mut r = PositionsResult {
                warmup_channels: WARMUP_CHANNELS,
                rss_start: settled_rss(server).await?,
                ..Default::default()
            };
            let started = Instant::now();
            touch(opts, server.addr, &api_key, "bench:w", 0..WARMUP_CHANNELS, &data).await?;
            r.rss_base = settled_rss(server).await?;
            println!(
                "[history positions] baseline after {WARMUP_CHANNELS} warm-up channels: RSS {:.1} MiB",
                mib(r.rss_base)
            );
            r.steps =
                touch_steps(opts, server, &api_key, "positions", "bench:c", r.rss_base, &data)
                    .await?;
            if started.elapsed() >= opts.position_ttl {
                eprintln!("warning: the positions phase outlasted position_ttl; early channels may have been reclaimed");
            }
            Ok(r)
        },
    )
    .await
}

/// `{"t":…,"seq":…,"pad":"xx…"}` of exactly `size` bytes (or the shortest
/// possible): the subscriber counts events by `seq`.
fn event_data(size: usize, seq: u64) -> String {
    let head = format!(r#"{{"t":{},"seq":{seq},"pad":""#, client::now_ns());
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Publishes events `seq_from..seq_to` to `channel` through `/api/publish`,
/// `concurrency` at a time. With a subscriber's `stats`, keeps at most
/// [`MAX_SUBSCRIBER_LAG`] events ahead of what it has received.
async fn publish_events(
    opts: &Options,
    addr: SocketAddr,
    api_key: &str,
    channel: &str,
    seqs: std::ops::Range<u64>,
    size: usize,
    subscriber: Option<&Rc<RefCell<Stats>>>,
) -> Result<f64> {
    let limit = Duration::from_secs_f64(60.0 + (seqs.end - seqs.start) as f64 / 2_000.0);
    let next = Cell::new(seqs.start);
    let received0 = subscriber.map_or(0, |s| s.borrow().received);
    let requests = ApiRequests {
        addr,
        api_key,
        path: "/api/publish",
        concurrency: opts.concurrency,
        limit,
        what: "publishing events",
    };
    requests
        .run(|body| {
            let seq = next.get();
            if seq >= seqs.end {
                return NextBody::Done;
            }
            if let Some(stats) = subscriber {
                // Counted when handed to a worker: a request in flight counts as sent.
                let sent = seq - seqs.start;
                if sent > stats.borrow().received - received0 + MAX_SUBSCRIBER_LAG {
                    return NextBody::Wait;
                }
            }
            next.set(seq + 1);
            body.push_str(&format!(
                r#"{{"channel":"{channel}","event":"tick","data":{}}}"#,
                event_data(size, seq)
            ));
            NextBody::Send
        })
        .await
}

/// Waits (bounded) until the subscriber has received `want` events.
async fn wait_received(stats: &Rc<RefCell<Stats>>, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let got = stats.borrow().received;
        if got >= want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events(
    opts: &Options,
    launch: &Launch,
    size: usize,
    subscribers: u32,
) -> Result<EventsResult> {
    let m = opts.events.max(1) as u64;
    let history_size = WARMUP_EVENTS + m as usize;
    let name = format!(
        "events-{size}b{}",
        if subscribers > 0 { "-subscribed" } else { "" }
    );
    let label = name.clone();
    let api_key = launch.api_key.clone();
    let secret = launch.jwt_secret.clone();
    with_server(
        opts,
        launch,
        &name,
        history_size,
        Duration::from_secs(3600),
        async |server: &Server| {
            let channel = "bench:e0";
            let stats = Rc::new(RefCell::new(Stats::new(60_000)));
            let (cmd, _) = watch::channel(Cmd::Idle);
            let mut handle = None;
            if subscribers > 0 {
                let token = tidings_auth::mint_hs256(
                    &secret,
                    &tidings_auth::MintClaims {
                        sub: "history-bench".into(),
                        ttl: Some(Duration::from_secs(3600)),
                        ..Default::default()
                    },
                )?;
                let spec = ConnSpec {
                    proto: Proto::Tidings,
                    server: server.addr,
                    source: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    token,
                    channels: vec![channel.to_owned()],
                    first_seq: 0,
                };
                handle = Some(tokio::task::spawn_local(client::run_connection(
                    spec,
                    stats.clone(),
                    cmd.subscribe(),
                )));
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    {
                        let s = stats.borrow();
                        if s.ready > 0 {
                            break;
                        }
                        if s.connect_errors > 0 || Instant::now() > deadline {
                            bail!("the subscriber could not subscribe: {:?}", s.first_errors);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let sub = (subscribers > 0).then_some(&stats);
            let mut r = EventsResult {
                payload_bytes: event_data(size, m / 2).len(),
                subscribers,
                events: m,
                history_size,
                rss_start: settled_rss(server).await?,
                ..Default::default()
            };
            let warm = WARMUP_EVENTS as u64;
            publish_events(opts, server.addr, &api_key, channel, 0..warm, size, sub).await?;
            if let Some(s) = sub {
                wait_received(s, warm, Duration::from_secs(30)).await;
            }
            r.rss_base = settled_rss(server).await?;
            println!(
                "[history {label}] baseline after {warm} warm-up events: RSS {:.1} MiB; publishing {m} events of {} B",
                mib(r.rss_base),
                r.payload_bytes
            );
            r.publish_s =
                publish_events(opts, server.addr, &api_key, channel, warm..warm + m, size, sub)
                    .await?;
            if let Some(s) = sub {
                let got = wait_received(s, warm + m, Duration::from_secs(60)).await;
                r.received = Some(got.saturating_sub(warm));
                let st = s.borrow();
                if got < warm + m || st.disconnects > 0 {
                    bail!(
                        "the subscriber received {} of {} events, {} disconnects: {:?}",
                        got,
                        warm + m,
                        st.disconnects,
                        st.first_errors
                    );
                }
            }
            r.rss = settled_rss(server).await?;
            r.bytes_per_event = r.rss.saturating_sub(r.rss_base) as f64 / m as f64;
            r.overhead_per_event = r.bytes_per_event - r.payload_bytes as f64;
            r.history_len =
                history_len(server.addr, &api_key, channel, history_size as u64).await?;
            println!(
                "[history {label}] {m} events in {:.1} s: RSS {:.1} MiB, {:.0} B/event ({:.0} B over the {} B payload), history holds {}",
                r.publish_s,
                mib(r.rss),
                r.bytes_per_event,
                r.overhead_per_event,
                r.payload_bytes,
                r.history_len
            );
            let _ = cmd.send(Cmd::Close);
            if let Some(h) = handle {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
            Ok(r)
        },
    )
    .await
}

/// The rows `results.md` shows for a history run.
pub fn markdown(md: &mut String, h: &HistoryResult) {
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "Load average at start / end: {} / {}.\n",
        h.loadavg_start, h.loadavg_end
    );
    if let Some(c) = &h.channels {
        let _ = writeln!(
            md,
            "### Channels touched once ({} B of data each; history_size {}, history_ttl {} s, position_ttl {} s, sweep every {} s)\n",
            c.payload_bytes, c.history_size, c.history_ttl_s, c.position_ttl_s, c.sweep_interval_s
        );
        let _ = writeln!(
            md,
            "Baseline RSS {:.1} MiB after {} warm-up channels (at start {:.1} MiB).\n",
            mib(c.rss_base),
            c.warmup_channels,
            mib(c.rss_start)
        );
        let _ = writeln!(
            md,
            "| state | channels | engine channels | RSS MiB | bytes per channel over the baseline |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for s in &c.steps {
            let _ = writeln!(
                md,
                "| one event in history | {} | {} | {:.1} | {:.0} |",
                s.channels,
                s.engine_channels,
                mib(s.rss),
                s.bytes_per_channel
            );
        }
        let n = c.steps.last().map_or(0, |s| s.channels);
        if let Some(e) = &c.expired {
            let _ = writeln!(
                md,
                "| history expired, positions kept ({:.0} s later) | {n} | {} | {:.1} | {:.0} |",
                e.after_s,
                e.engine_channels,
                mib(e.rss),
                e.bytes_per_channel
            );
            trim_row(md, e, c.rss_base, n);
        }
        if let Some(e) = &c.reclaimed {
            let _ = writeln!(
                md,
                "| reclaimed ({:.0} s later) | {n} | {} | {:.1} | {:.0} |",
                e.after_s,
                e.engine_channels,
                mib(e.rss),
                e.bytes_per_channel
            );
            trim_row(md, e, c.rss_base, n);
        }
        if let (Some(s), Some(g)) = (&c.retouched, c.retouch_growth) {
            let _ = writeln!(
                md,
                "| {} fresh channels touched after the reclaim ({:+.1} MiB) | {} | {} | {:.1} | {:.0} |",
                s.channels,
                g as f64 / 1048576.0,
                s.channels,
                s.engine_channels,
                mib(s.rss),
                s.bytes_per_channel
            );
        }
        let _ = writeln!(md);
    }
    if let Some(p) = &h.positions {
        let _ = writeln!(
            md,
            "### Positions only (history_size 0)\n\nBaseline RSS {:.1} MiB after {} warm-up channels.\n",
            mib(p.rss_base),
            p.warmup_channels
        );
        let _ = writeln!(
            md,
            "| channels | engine channels | RSS MiB | bytes per channel over the baseline |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|");
        for s in &p.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.0} |",
                s.channels,
                s.engine_channels,
                mib(s.rss),
                s.bytes_per_channel
            );
        }
        let _ = writeln!(md);
    }
    if !h.events.is_empty() {
        let _ = writeln!(md, "### Events in one channel's history\n");
        let _ = writeln!(
            md,
            "| data bytes | subscribers | events | RSS before → after MiB | bytes per event | over the data | publish s | history holds |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for e in &h.events {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} → {:.1} | {:.0} | {:.0} | {:.1} | {} |",
                e.payload_bytes,
                e.subscribers,
                e.events,
                mib(e.rss_base),
                mib(e.rss),
                e.bytes_per_event,
                e.overhead_per_event,
                e.publish_s,
                e.history_len
            );
        }
        let _ = writeln!(md);
    }
}

/// The row for a `malloc_trim(0)` probe after a reading, if one was made.
fn trim_row(md: &mut String, e: &Later, rss_base: u64, n: u64) {
    use std::fmt::Write as _;
    if let Some(rss) = e.rss_after_trim {
        let _ = writeln!(
            md,
            "| … then `malloc_trim(0)` | {n} | {} | {:.1} | {:.0} |",
            e.engine_channels,
            mib(rss),
            rss.saturating_sub(rss_base) as f64 / n.max(1) as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size() {
        assert_eq!(payload(40).len(), 40);
        assert_eq!(payload(100).len(), 100);
        assert!(serde_json::from_str::<serde_json::Value>(&payload(40)).is_ok());
        for size in [100, 1024] {
            for seq in [0, 7, 99_999] {
                let data = event_data(size, seq);
                assert_eq!(data.len(), size);
                let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                assert_eq!(v["seq"], seq);
            }
        }
    }
}
