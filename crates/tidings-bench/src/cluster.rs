//! Scenarios on several nodes sharing one redis-server that the bench starts on
//! a free port in a temporary directory:
//!
//! - `scale`: `--connections` spread over `--nodes` Tidings nodes, each
//!   connection on its user channel and `workspace:bench`; one `/api/broadcast`
//!   to every user channel, then one publish to `workspace:bench`. Delivery
//!   latency (from just before the request), losses and server RSS per connection.
//! - `cross-node`: publishes into node 0, subscribers on the other nodes, rising
//!   rates; Tidings and Socket.IO with `@socket.io/redis-adapter`, same generator.
//! - `redis-cost`: Redis commands, network bytes and CPU per published event,
//!   without and with history.
//!
//! One process may open only so many files (20,000 here), so connections are held
//! by generator processes (this binary's hidden `cluster-worker` scenario), each
//! at most `--worker-connections`, driven over stdin/stdout lines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{now_ns, Proto};
use crate::publish::{HttpConn, Plan, PublishTarget};
use crate::server::{self, Launch, Server};
use crate::{Cli, Fleet, Scenario};

/// Entry point for the cluster scenarios (and the worker processes).
pub fn main(cli: Cli) -> Result<()> {
    // As far as the hard limit allows: the nodes and workers inherit it.
    let fd_limit = server::raise_fd_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    if cli.scenario == Scenario::ClusterWorker {
        return local.block_on(&runtime, worker(&cli));
    }
    let code = local.block_on(&runtime, run(cli, fd_limit))?;
    std::process::exit(code);
}

async fn run(cli: Cli, fd_limit: u64) -> Result<i32> {
    let root = server::workspace_root();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench/results/redis"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Several servers and generators share the cores: the OS places them.
    let launch = crate::launch_from_cli(&cli, &root, None)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut failed = false;
    for round in 1..=cli.runs.max(1) {
        let limit = Duration::from_secs_f64(cli.timeout);
        let result = match cli.scenario {
            Scenario::Scale => tokio::time::timeout(limit, scale(&cli, &launch)).await,
            Scenario::CrossNode => tokio::time::timeout(limit, cross_node(&cli, &launch)).await,
            Scenario::RedisCost => tokio::time::timeout(limit, redis_cost(&cli, &launch)).await,
            other => bail!("{} is not a cluster scenario", other.name()),
        };
        let (results, ok) = match result {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => {
                eprintln!("error: {} run {round}: {err:#}", cli.scenario.name());
                failed = true;
                continue;
            }
            Err(_) => {
                eprintln!(
                    "error: {} run {round} hit the {} s limit",
                    cli.scenario.name(),
                    cli.timeout
                );
                failed = true;
                continue;
            }
        };
        failed |= !ok;
        let record = serde_json::json!({
            "scenario": cli.scenario.name(),
            "run": round,
            "date": crate::report::now_utc(),
            "commit": commit(&root),
            "command": command,
            "fd_limit": fd_limit,
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "results": results,
        });
        append_record(&out, &record)?;
        // Let the kernel reclaim the closed sockets before the next run.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("wrote {}/cluster.json", out.display());
    Ok(if failed { 1 } else { 0 })
}

fn commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Appends one run to `<out>/cluster.json` (every run is kept).
fn append_record(out: &Path, record: &serde_json::Value) -> Result<()> {
    let path = out.join("cluster.json");
    let mut doc: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({ "runs": [] }));
    doc["machine"] = crate::report::machine();
    match doc["runs"].as_array_mut() {
        Some(runs) => runs.push(record.clone()),
        None => doc["runs"] = serde_json::json!([record]),
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A redis-server of one run, in its own temporary directory, without persistence.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl RedisServer {
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tidings-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (Debian: apt-get install redis-server)")?;
        let redis = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(reply) = redis.cli(&["PING"]).await {
                if reply.trim() == "PONG" {
                    return Ok(redis);
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// One command through `redis-cli`; its reply as text.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `INFO <section>` as name → value.
    pub async fn info(&self, section: &str) -> Result<BTreeMap<String, String>> {
        let text = self.cli(&["INFO", section]).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `count` Tidings nodes on `redis`, with `extra` settings.
async fn start_nodes(
    launch: &Launch,
    redis: &RedisServer,
    count: usize,
    extra: &[(String, String)],
) -> Result<Vec<Server>> {
    let mut nodes = Vec::new();
    for k in 0..count {
        let mut env = launch.tidings_env.clone();
        env.extend([
            ("TIDINGS_ENGINE_TYPE".to_owned(), "redis".to_owned()),
            ("TIDINGS_ENGINE_REDIS_URL".to_owned(), redis.url()),
            ("TIDINGS_NODE".to_owned(), format!("bench-node-{k}")),
        ]);
        env.extend(extra.iter().cloned());
        let node = Launch {
            tidings_env: env,
            ..launch.clone()
        };
        match node.start(Proto::Tidings).await {
            Ok(server) => nodes.push(server),
            Err(err) => {
                stop_all(nodes).await;
                return Err(err);
            }
        }
    }
    Ok(nodes)
}

/// Starts `count` Socket.IO peers with the Redis adapter on `redis`.
async fn start_peers(launch: &Launch, redis: &RedisServer, count: usize) -> Result<Vec<Server>> {
    let mut peers = Vec::new();
    let launch = Launch {
        peer_env: vec![("BENCH_REDIS_URL".to_owned(), redis.url())],
        ..launch.clone()
    };
    for _ in 0..count {
        match launch.start(Proto::Socketio).await {
            Ok(server) => peers.push(server),
            Err(err) => {
                stop_all(peers).await;
                return Err(err);
            }
        }
    }
    Ok(peers)
}

async fn stop_all(servers: Vec<Server>) {
    for server in servers {
        server.stop().await;
    }
}

fn rss_total(servers: &[Server]) -> Option<u64> {
    servers.iter().map(Server::rss_bytes).sum()
}

/// Counters of one worker (or their sum), as sent over its stdout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WorkerReport {
    ready: u64,
    connect_errors: u64,
    received: u64,
    gaps: u64,
    dups: u64,
    late: u64,
    disconnects: u64,
    /// Latencies recorded since the last report: (microseconds, count).
    hist: Vec<(u64, u64)>,
    errors: Vec<String>,
    rss: Option<u64>,
}

impl WorkerReport {
    fn of(fleet: &Fleet) -> Self {
        let s = fleet.stats.borrow();
        Self {
            ready: s.ready,
            connect_errors: s.connect_errors,
            received: s.received,
            gaps: s.gaps,
            dups: s.dups,
            late: s.late,
            disconnects: s.disconnects,
            hist: s
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            errors: s.first_errors.clone(),
            rss: server::rss_of(std::process::id()),
        }
    }

    /// The sum of `reports`, and their latencies in one histogram.
    fn merge(reports: &[WorkerReport]) -> (Self, Histogram<u64>) {
        let mut hist = new_histogram();
        let mut sum = Self::default();
        for r in reports {
            sum.ready += r.ready;
            sum.connect_errors += r.connect_errors;
            sum.received += r.received;
            sum.gaps += r.gaps;
            sum.dups += r.dups;
            sum.late += r.late;
            sum.disconnects += r.disconnects;
            sum.rss = Some(sum.rss.unwrap_or(0) + r.rss.unwrap_or(0));
            for e in &r.errors {
                if sum.errors.len() < 5 {
                    sum.errors.push(e.clone());
                }
            }
            for &(value, count) in &r.hist {
                hist.saturating_record_n(value.max(1), count);
            }
        }
        (sum, hist)
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants: 1 µs to 120 s, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// The hidden `cluster-worker` scenario: holds connections
/// `--worker-from..--worker-to` over `--worker-servers`, prints `READY {json}`,
/// then answers `COLLECT <events per connection> <timeout ms>` with
/// `REPORT {json}` once that many deliveries arrived (or at the timeout), until
/// `CLOSE` or the end of stdin.
async fn worker(cli: &Cli) -> Result<()> {
    let proto = *cli.target.first().context("--target")?;
    let (from, to) = (cli.worker_from, cli.worker_to.max(cli.worker_from));
    let count = to - from;
    let mut fleet = Fleet::spread(
        cli,
        proto,
        cli.worker_servers.clone(),
        from,
        count,
        &format!("worker {from}..{to}"),
    );
    fleet.stats.borrow_mut().recording = true;
    let workspace_only = cli.worker_channels == "workspace";
    fleet
        .ramp(cli, count, &|i| {
            if workspace_only {
                vec!["workspace:bench".to_owned()]
            } else {
                vec![format!("user:u{i}"), "workspace:bench".to_owned()]
            }
        })
        .await?;
    println!(
        "READY {}",
        serde_json::to_string(&WorkerReport::of(&fleet))?
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("COLLECT") => {
                let per_conn: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let wait: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(5000);
                let deadline = Instant::now() + Duration::from_millis(wait);
                loop {
                    let (received, alive) = {
                        let s = fleet.stats.borrow();
                        (s.received, s.ready.saturating_sub(s.disconnects))
                    };
                    if received >= per_conn * alive || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                println!(
                    "REPORT {}",
                    serde_json::to_string(&WorkerReport::of(&fleet))?
                );
                fleet.stats.borrow_mut().hist.reset();
            }
            Some("CLOSE") => break,
            _ => {}
        }
    }
    fleet.close().await;
    Ok(())
}

/// The generator processes of one run.
struct Workers {
    stdins: Vec<ChildStdin>,
    children: Vec<Child>,
    replies: mpsc::UnboundedReceiver<(usize, String, String)>,
}

impl Workers {
    /// Starts workers for `total` connections over `servers`.
    async fn start(
        cli: &Cli,
        proto: Proto,
        servers: &[SocketAddr],
        total: usize,
        channels: &str,
    ) -> Result<Self> {
        let per = cli.worker_connections.max(1);
        let count = total.div_ceil(per).max(1);
        let exe = std::env::current_exe().context("locating tidings-bench")?;
        let servers = servers
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let (tx, replies) = mpsc::unbounded_channel();
        let mut stdins = Vec::new();
        let mut children = Vec::new();
        for w in 0..count {
            let from = w * total / count;
            let to = (w + 1) * total / count;
            let target = proto.name();
            let mut child = Command::new(&exe)
                .args(["cluster-worker", "--target", target, "--no-pin"])
                .args(["--worker-servers", &servers])
                .args(["--worker-from", &from.to_string()])
                .args(["--worker-to", &to.to_string()])
                .args(["--worker-channels", channels])
                .args([
                    "--connect-rate",
                    &(cli.connect_rate / count as f64).to_string(),
                ])
                .args([
                    "--connect-concurrency",
                    &(cli.connect_concurrency / count).max(8).to_string(),
                ])
                .args(["--jwt-secret", &cli.jwt_secret])
                .args(["--late-ms", &cli.late_ms.to_string()])
                .args(["--sources", &cli.sources.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a generator process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match line.split_once(' ') {
                        Some((kind @ ("READY" | "REPORT"), json)) => {
                            let _ = tx.send((w, kind.to_owned(), json.to_owned()));
                        }
                        _ => println!("  [w{w}] {line}"),
                    }
                }
                let _ = tx.send((w, "EXIT".to_owned(), String::new()));
            });
            stdins.push(stdin);
            children.push(child);
        }
        Ok(Self {
            stdins,
            children,
            replies,
        })
    }

    /// Waits for one `kind` line from every worker.
    async fn gather(&mut self, kind: &str, limit: Duration) -> Result<Vec<WorkerReport>> {
        let mut got: Vec<Option<WorkerReport>> = vec![None; self.stdins.len()];
        let deadline = Instant::now() + limit;
        while got.iter().any(Option::is_none) {
            let next = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .with_context(|| format!("workers did not all answer {kind} in {limit:?}"))?;
            let Some((w, what, json)) = next else {
                bail!("workers ended");
            };
            if what == "EXIT" {
                bail!("generator process {w} ended early");
            }
            if what == kind {
                got[w] = Some(serde_json::from_str(&json).context("worker report")?);
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        for stdin in &mut self.stdins {
            stdin.write_all(format!("{line}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Collects reports once every live connection has `per_conn` events.
    async fn collect(&mut self, per_conn: u64, wait: Duration) -> Result<Vec<WorkerReport>> {
        self.send(&format!("COLLECT {per_conn} {}", wait.as_millis()))
            .await?;
        self.gather("REPORT", wait + Duration::from_secs(30)).await
    }

    async fn close(mut self) {
        let _ = self.send("CLOSE").await;
        drop(self.stdins);
        for mut child in self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    if hist.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "samples": hist.len(),
        "p50_ms": ms(hist.value_at_quantile(0.50)),
        "p90_ms": ms(hist.value_at_quantile(0.90)),
        "p99_ms": ms(hist.value_at_quantile(0.99)),
        "p999_ms": ms(hist.value_at_quantile(0.999)),
        "max_ms": ms(hist.max()),
    })
}

/// Ramp time allowed for `count` connections at `rate`/s.
fn ramp_limit(count: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(count as f64 / rate.max(1.0) * 3.0 + 120.0)
}

/// One HTTP request to a node's API, timed; fails on a non-2xx status.
async fn api(cli: &Cli, addr: SocketAddr, path: &str, body: &str) -> Result<(Duration, Vec<u8>)> {
    let mut conn = HttpConn::connect(addr).await?;
    let started = Instant::now();
    let (status, reply) = tokio::time::timeout(
        Duration::from_secs(120),
        conn.request("POST", path, Some(&cli.api_key), body.as_bytes()),
    )
    .await
    .with_context(|| format!("{path} took over 120 s"))??;
    let took = started.elapsed();
    if !(200..300).contains(&status) {
        bail!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(500)])
        );
    }
    Ok((took, reply))
}

/// The `scale` scenario. Returns its results and whether nothing was lost.
async fn scale(cli: &Cli, launch: &Launch) -> Result<(serde_json::Value, bool)> {
    let nodes_wanted = cli.nodes.unwrap_or(6).max(1);
    let total = cli.connections.first().copied().unwrap_or(100_000);
    let redis = RedisServer::start().await?;
    println!(
        "== scale: {total} connections on {nodes_wanted} Tidings nodes, redis-server pid {:?} at {} ==",
        redis.pid(),
        redis.url()
    );
    let limits = [
        (
            "TIDINGS_API_MAX_BROADCAST_CHANNELS".to_owned(),
            total.max(1000).to_string(),
        ),
        (
            "TIDINGS_API_MAX_BODY_SIZE".to_owned(),
            (total * 24 + (1 << 20)).to_string(),
        ),
    ];
    let nodes = match start_nodes(launch, &redis, nodes_wanted, &limits).await {
        Ok(nodes) => nodes,
        Err(err) => {
            redis.stop().await;
            return Err(err);
        }
    };
    let result = scale_on(cli, &redis, &nodes, total).await;
    stop_all(nodes).await;
    redis.stop().await;
    result
}

async fn scale_on(
    cli: &Cli,
    redis: &RedisServer,
    nodes: &[Server],
    total: usize,
) -> Result<(serde_json::Value, bool)> {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_total(nodes);
    let redis_mem0 = redis_used_memory(redis).await;
    let ramp_started = Instant::now();
    let mut workers = Workers::start(cli, Proto::Tidings, &addrs, total, "user-workspace").await?;
    let ready = workers
        .gather("READY", ramp_limit(total, cli.connect_rate))
        .await;
    let ready = match ready {
        Ok(r) => r,
        Err(err) => {
            workers.close().await;
            return Err(err);
        }
    };
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let (up, _) = WorkerReport::merge(&ready);
    println!(
        "[scale] {} connections ready in {ramp_secs:.1} s, {} failed{}",
        up.ready,
        up.connect_errors,
        up.errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    // Let the nodes finish their subscriptions and the allocator settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_loaded = rss_total(nodes);
    let per_node: Vec<Option<u64>> = nodes.iter().map(Server::rss_bytes).collect();
    let redis_mem1 = redis_used_memory(redis).await;
    let rss_per_conn = match (rss_idle, rss_loaded) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / up.ready.max(1) as f64),
        _ => None,
    };
    // Other work on the shared machine skews the phases: wait for it to calm
    // down (up to --quiet-wait seconds) and record what was left.
    let other_cpu_pct = if cli.quiet_wait > 0.0 {
        Some(server::wait_for_quiet(Duration::from_secs_f64(cli.quiet_wait), 25.0).await)
    } else {
        None
    };
    let mut phases = Vec::new();
    let mut ok = up.connect_errors == 0;
    let mut received_before = up.received;
    let wait = Duration::from_secs(30);

    // Phase 1: broadcasts to every user channel, through node 0, one after
    // another.
    let channels: Vec<String> = (0..total).map(|i| format!("user:u{i}")).collect();
    let channels = serde_json::to_string(&channels)?;
    let broadcasts = cli.scale_publishes.max(1);
    let mut all_broadcasts = new_histogram();
    let mut broadcast_cpu = PhaseCpu::default();
    let mut broadcast_api = Vec::new();
    for k in 0..broadcasts {
        let body = format!(
            r#"{{"channels":{channels},"event":"tick","data":{{"t":{},"seq":{k},"pad":"{}"}}}}"#,
            now_ns(),
            crate::pad(cli)
        );
        let cpu0 = PhaseCpu::read(redis, nodes);
        let phase = async {
            let (took, _) = api(cli, addrs[0], "/api/broadcast", &body).await?;
            let reports = workers.collect(k as u64 + 1, wait).await?;
            Ok::<_, anyhow::Error>((took, reports))
        }
        .await;
        let cpu = PhaseCpu::read(redis, nodes).since(&cpu0);
        let (took, reports) = match phase {
            Ok(done) => done,
            Err(err) => {
                workers.close().await;
                return Err(err);
            }
        };
        broadcast_cpu = broadcast_cpu.plus(&cpu);
        broadcast_api.push(took.as_secs_f64() * 1000.0);
        let (sum, hist) = WorkerReport::merge(&reports);
        // Same bounds on both: adding cannot fail.
        let _ = all_broadcasts.add(&hist);
        let name = if broadcasts == 1 {
            "broadcast to every user channel".to_owned()
        } else {
            format!("broadcast to every user channel ({}/{broadcasts})", k + 1)
        };
        phases.push(phase_json(
            &name,
            total,
            took,
            &reports,
            received_before,
            cpu,
            &mut ok,
        ));
        received_before = sum.received;
        // A pause between broadcasts, so one's tail does not overlap the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let broadcasts_json = serde_json::json!({
        "broadcasts": broadcasts,
        "api_ms": broadcast_api,
        "latency": latency_json(&all_broadcasts),
        "p99_within_target": !all_broadcasts.is_empty()
            && ms(all_broadcasts.value_at_quantile(0.99)) <= 1000.0,
        "redis_cpu_s": broadcast_cpu.redis_s,
        "nodes_cpu_s": broadcast_cpu.nodes_s,
        "per_node_cpu_s": broadcast_cpu.per_node_s,
    });
    if broadcasts > 1 {
        println!(
            "[scale] {broadcasts} broadcasts together: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; CPU seconds: redis-server {:.2}, nodes {:.2}",
            ms(all_broadcasts.value_at_quantile(0.5)),
            ms(all_broadcasts.value_at_quantile(0.99)),
            ms(all_broadcasts.max()),
            broadcast_cpu.redis_s,
            broadcast_cpu.nodes_s
        );
    }

    // Phase 2: one publish to workspace:bench, through another node.
    let body = format!(
        r#"{{"channel":"workspace:bench","event":"tick","data":{{"t":{},"seq":{broadcasts},"pad":"{}"}}}}"#,
        now_ns(),
        crate::pad(cli)
    );
    let cpu0 = PhaseCpu::read(redis, nodes);
    let phase = async {
        let (took, _) = api(cli, addrs[1 % addrs.len()], "/api/publish", &body).await?;
        let reports = workers.collect(broadcasts as u64 + 1, wait).await?;
        Ok::<_, anyhow::Error>((took, reports))
    }
    .await;
    let cpu2 = PhaseCpu::read(redis, nodes).since(&cpu0);
    let generator_rss = match &phase {
        Ok((_, reports)) => WorkerReport::merge(reports).0.rss,
        Err(_) => None,
    };
    // Phase 3: every connection closes at once; the nodes' presence leaves
    // drain into Redis. Timed until the presence hash of workspace:bench is
    // empty (leaves that failed leave their entries behind until their node's
    // heartbeat expires).
    let presence_key = "tidings:{workspace:bench}:p";
    let presence_before: Option<u64> = redis
        .cli(&["HLEN", presence_key])
        .await
        .ok()
        .and_then(|n| n.trim().parse().ok());
    let cpu0 = PhaseCpu::read(redis, nodes);
    let closed_at = Instant::now();
    workers.close().await;
    let mut presence_left: Option<u64> = None;
    while closed_at.elapsed() < Duration::from_secs(60) {
        presence_left = redis
            .cli(&["HLEN", presence_key])
            .await
            .ok()
            .and_then(|n| n.trim().parse().ok());
        if presence_left == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_s = closed_at.elapsed().as_secs_f64();
    let close_cpu = PhaseCpu::read(redis, nodes).since(&cpu0);
    println!(
        "[scale] close: presence entries of workspace:bench: {} before, {} left after {drain_s:.1} s; CPU seconds: redis-server {:.2}, nodes {:.2}",
        presence_before.map_or("?".to_owned(), |n| n.to_string()),
        presence_left.map_or("?".to_owned(), |n| n.to_string()),
        close_cpu.redis_s,
        close_cpu.nodes_s
    );
    let (took, reports) = phase?;
    phases.push(phase_json(
        "publish to workspace:bench",
        total,
        took,
        &reports,
        received_before,
        cpu2,
        &mut ok,
    ));
    let close_json = serde_json::json!({
        "presence_entries_before": presence_before,
        "presence_entries_left": presence_left,
        "seconds_until_empty_or_timeout": drain_s,
        "redis_cpu_s": close_cpu.redis_s,
        "nodes_cpu_s": close_cpu.nodes_s,
    });
    let results = serde_json::json!({
        "nodes": nodes.len(),
        "connections_requested": total,
        "connections": up.ready,
        "connect_errors": up.connect_errors,
        "first_errors": up.errors,
        "generator_processes": ready.len(),
        "ramp_s": ramp_secs,
        "server_rss_idle_bytes": rss_idle,
        "server_rss_loaded_bytes": rss_loaded,
        "server_rss_per_node_bytes": per_node,
        "server_rss_per_connection_bytes": rss_per_conn,
        "redis_used_memory_idle_bytes": redis_mem0,
        "redis_used_memory_loaded_bytes": redis_mem1,
        "generator_rss_bytes": generator_rss,
        "phases": phases,
        "broadcasts": broadcasts_json,
        "close": close_json,
        "target_p99_ms": 1000,
        "other_cpu_pct_before_phases": other_cpu_pct,
    });
    println!(
        "[scale] server RSS per connection: {:.1} KiB over {} nodes",
        rss_per_conn.unwrap_or(0.0) / 1024.0,
        nodes.len()
    );
    Ok((results, ok))
}

/// CPU seconds used by redis-server and by the nodes (together and each).
#[derive(Debug, Clone, Default)]
struct PhaseCpu {
    redis_s: f64,
    nodes_s: f64,
    per_node_s: Vec<f64>,
}

impl PhaseCpu {
    fn read(redis: &RedisServer, nodes: &[Server]) -> Self {
        let per_node_s: Vec<f64> = nodes
            .iter()
            .map(|n| n.cpu_seconds().unwrap_or(0.0))
            .collect();
        Self {
            redis_s: redis.pid().and_then(server::cpu_of).unwrap_or(0.0),
            nodes_s: per_node_s.iter().sum(),
            per_node_s,
        }
    }

    fn plus(&self, other: &Self) -> Self {
        let mut per_node_s = self.per_node_s.clone();
        per_node_s.resize(other.per_node_s.len().max(per_node_s.len()), 0.0);
        for (sum, add) in per_node_s.iter_mut().zip(&other.per_node_s) {
            *sum += add;
        }
        Self {
            redis_s: self.redis_s + other.redis_s,
            nodes_s: self.nodes_s + other.nodes_s,
            per_node_s,
        }
    }

    fn since(self, before: &Self) -> Self {
        Self {
            redis_s: self.redis_s - before.redis_s,
            nodes_s: self.nodes_s - before.nodes_s,
            per_node_s: self
                .per_node_s
                .iter()
                .zip(&before.per_node_s)
                .map(|(after, before)| after - before)
                .collect(),
        }
    }
}

async fn redis_used_memory(redis: &RedisServer) -> Option<u64> {
    redis
        .info("memory")
        .await
        .ok()?
        .get("used_memory")?
        .parse()
        .ok()
}

/// One delivery phase of `scale`: every connection should get one event.
fn phase_json(
    name: &str,
    requested: usize,
    api_time: Duration,
    reports: &[WorkerReport],
    received_before: u64,
    cpu: PhaseCpu,
    ok: &mut bool,
) -> serde_json::Value {
    let (sum, hist) = WorkerReport::merge(reports);
    let alive = sum.ready.saturating_sub(sum.disconnects);
    let received = sum.received - received_before;
    let lost = alive.saturating_sub(received);
    let p99_ms = (!hist.is_empty()).then(|| ms(hist.value_at_quantile(0.99)));
    *ok &= lost == 0 && sum.dups == 0 && sum.disconnects == 0 && sum.ready == requested as u64;
    println!(
        "[scale] {name}: CPU seconds: redis-server {:.2}, nodes {:.2} ({:.2?})",
        cpu.redis_s, cpu.nodes_s, cpu.per_node_s
    );
    println!(
        "[scale] {name}: API answered in {:.0} ms; {received} of {alive} delivered, {lost} lost, {} dup; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        api_time.as_secs_f64() * 1000.0,
        sum.dups,
        if hist.is_empty() { 0.0 } else { ms(hist.value_at_quantile(0.5)) },
        p99_ms.unwrap_or(0.0),
        if hist.is_empty() { 0.0 } else { ms(hist.max()) },
    );
    serde_json::json!({
        "phase": name,
        "api_ms": api_time.as_secs_f64() * 1000.0,
        "expected": alive,
        "received": received,
        "lost": lost,
        "gaps": sum.gaps,
        "dups": sum.dups,
        "late": sum.late,
        "disconnects": sum.disconnects,
        "latency": latency_json(&hist),
        "p99_within_target": p99_ms.is_some_and(|p| p <= 1000.0),
        "redis_cpu_s": cpu.redis_s,
        "nodes_cpu_s": cpu.nodes_s,
        "per_node_cpu_s": cpu.per_node_s,
        "errors": sum.errors,
    })
}

/// The `cross-node` scenario: for each target, its own redis-server and nodes;
/// publishes into node 0, subscribers on the others; rates rise until a step is
/// not sustained.
async fn cross_node(cli: &Cli, launch: &Launch) -> Result<(serde_json::Value, bool)> {
    let count = cli.nodes.unwrap_or(3).max(2);
    let total = cli.connections.first().copied().unwrap_or(3000);
    let mut out = serde_json::Map::new();
    let mut ok = true;
    for &proto in &cli.target {
        let redis = RedisServer::start().await?;
        println!(
            "== cross-node against {}: {total} connections on {} of {count} nodes, publishing into the other; redis-server at {} ==",
            proto.label(),
            count - 1,
            redis.url()
        );
        let nodes = match proto {
            Proto::Tidings | Proto::TidingsSocketio => {
                start_nodes(launch, &redis, count, &[]).await
            }
            Proto::Socketio => start_peers(launch, &redis, count).await,
            other => Err(anyhow::anyhow!(
                "cross-node runs against Tidings and Socket.IO only, not {}",
                other.label()
            )),
        };
        let nodes = match nodes {
            Ok(n) => n,
            Err(err) => {
                redis.stop().await;
                return Err(err);
            }
        };
        let result = cross_node_on(cli, proto, &nodes, redis.pid(), total).await;
        stop_all(nodes).await;
        redis.stop().await;
        match result {
            Ok(r) => {
                out.insert(proto.label().to_owned(), r);
            }
            Err(err) => {
                eprintln!("error: cross-node against {}: {err:#}", proto.label());
                ok = false;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let best = |label: &str| {
        out.get(label)
            .and_then(|r| r["max_sustained_deliveries_per_s"].as_f64())
    };
    if let (Some(t), Some(s)) = (best("Tidings"), best("Socket.IO")) {
        let ratio = t / s.max(1.0);
        println!(
            "[cross-node] sustained deliveries/s: Tidings {t:.0}, Socket.IO {s:.0}: {ratio:.1}×"
        );
        out.insert("ratio".to_owned(), serde_json::json!(ratio));
    }
    Ok((serde_json::Value::Object(out), ok))
}

async fn cross_node_on(
    cli: &Cli,
    proto: Proto,
    nodes: &[Server],
    redis_pid: Option<u32>,
    total: usize,
) -> Result<serde_json::Value> {
    let subscriber_nodes: Vec<SocketAddr> = nodes[1..].iter().map(|n| n.addr).collect();
    let mut workers = Workers::start(cli, proto, &subscriber_nodes, total, "workspace").await?;
    let result = async {
        let ready = workers
            .gather("READY", ramp_limit(total, cli.connect_rate))
            .await?;
        let (up, _) = WorkerReport::merge(&ready);
        if up.ready == 0 {
            bail!("no connection could be set up: {:?}", up.errors);
        }
        let subs = up.ready;
        println!("[cross-node {}] {subs} connections ready", proto.label());
        let target = PublishTarget {
            proto,
            server: nodes[0].addr,
            api_key: cli.api_key.clone(),
            pad: crate::pad(cli),
        };
        let channels = Rc::new(vec!["workspace:bench".to_owned()]);
        let mut seq_base = 0u64;
        let mut sent_total = 0u64;
        let mut received_before = 0u64;
        let mut steps = Vec::new();
        let warmup = cli.warmup.unwrap_or(2.0);
        let mut rates: Vec<(f64, f64, bool)> = Vec::new();
        if let Some(&first) = cli.max_rates.first() {
            if warmup > 0.0 {
                rates.push((first, warmup, false));
            }
        }
        rates.extend(cli.max_rates.iter().map(|&r| (r, cli.step_secs, true)));
        for (rate, secs, judged) in rates {
            let publish_rate = rate / subs as f64;
            let count = (publish_rate * secs).round().max(1.0) as u64;
            let plan = Plan {
                channels: channels.clone(),
                rate: publish_rate,
                count,
                seq_base,
                workers: ((publish_rate / 400.0).ceil() as usize).clamp(2, 48),
                batch: 1,
                deadline: Instant::now() + Duration::from_secs_f64(secs * 2.0 + 5.0),
            };
            let started = Instant::now();
            let cpu0: Vec<Option<f64>> = nodes.iter().map(Server::cpu_seconds).collect();
            let redis_cpu0 = redis_pid.and_then(server::cpu_of);
            let stats = crate::publish::run(&target, plan).await?;
            seq_base += count;
            sent_total += stats.sent;
            // Measure the planned step, as `max` does.
            tokio::time::sleep_until(started + Duration::from_secs_f64(secs)).await;
            let reports = workers.collect(sent_total, Duration::from_secs(5)).await?;
            let window = started.elapsed().as_secs_f64();
            let (sum, hist) = WorkerReport::merge(&reports);
            let received = sum.received - received_before;
            received_before = sum.received;
            if !judged {
                println!("[cross-node {}] warm-up: {secs:.0} s at {rate:.0}/s", proto.label());
                continue;
            }
            let cpu: Vec<Option<f64>> = nodes
                .iter()
                .zip(&cpu0)
                .map(|(n, c0)| Some((n.cpu_seconds()? - (*c0)?) / window * 100.0))
                .collect();
            let redis_cpu = redis_pid
                .and_then(server::cpu_of)
                .zip(redis_cpu0)
                .map(|(now, before)| (now - before) / window * 100.0);
            let expected_total = sent_total * subs;
            let lost = expected_total.saturating_sub(sum.received);
            // Deliveries over the planned step (late ones still count: the
            // window ends when they all arrived or the wait ran out).
            let per_s = received as f64 / secs.max(window.min(secs + 5.0)).max(1e-9);
            let p99 = (!hist.is_empty()).then(|| ms(hist.value_at_quantile(0.99)));
            let sustained = p99.is_some_and(|p| p <= cli.p99_bound_ms)
                && lost == 0
                && sum.disconnects == 0
                && stats.errors == 0
                && received as f64 >= 0.95 * rate * secs;
            let nodes_cpu: f64 = cpu.iter().flatten().sum();
            println!(
                "[cross-node {}] offered {rate:.0}/s: {per_s:.0}/s delivered, p99 {:.1} ms, {lost} lost -> {}; CPU % nodes {nodes_cpu:.0} ({}), redis-server {:.0}",
                proto.label(),
                p99.unwrap_or(0.0),
                if sustained { "sustained" } else { "NOT sustained" },
                cpu.iter()
                    .map(|c| c.map_or("?".to_owned(), |c| format!("{c:.0}")))
                    .collect::<Vec<_>>()
                    .join("/"),
                redis_cpu.unwrap_or(0.0)
            );
            steps.push(serde_json::json!({
                "offered_deliveries_per_s": rate,
                "publishes_per_s": publish_rate,
                "publishes": stats.sent,
                "publish_errors": stats.errors,
                "publish_first_error": stats.first_error,
                "deliveries_per_s": per_s,
                "received": received,
                "lost": lost,
                "gaps": sum.gaps,
                "dups": sum.dups,
                "disconnects": sum.disconnects,
                "latency": latency_json(&hist),
                "node_cpu_pct": cpu,
                "redis_cpu_pct": redis_cpu,
                "sustained": sustained,
                "errors": sum.errors,
            }));
            if !sustained {
                break;
            }
        }
        let best = steps
            .iter()
            .filter(|s| s["sustained"] == true)
            .filter_map(|s| s["deliveries_per_s"].as_f64())
            .fold(0.0, f64::max);
        Ok(serde_json::json!({
            "nodes": nodes.len(),
            "subscriber_nodes": nodes.len() - 1,
            "connections": subs,
            "step_s": cli.step_secs,
            "p99_bound_ms": cli.p99_bound_ms,
            "steps": steps,
            "max_sustained_deliveries_per_s": best,
        }))
    }
    .await;
    workers.close().await;
    result
}

/// Sums of INFO counters at one instant.
#[derive(Debug, Clone, Default)]
struct RedisCounters {
    cpu_s: f64,
    net_in: u64,
    net_out: u64,
    used_memory: u64,
    /// Command → (calls, microseconds), since the last CONFIG RESETSTAT.
    commands: BTreeMap<String, (u64, u64)>,
}

async fn redis_counters(redis: &RedisServer) -> Result<RedisCounters> {
    let info = redis.info("all").await?;
    let num = |k: &str| {
        info.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut commands = BTreeMap::new();
    for (k, v) in &info {
        let Some(name) = k.strip_prefix("cmdstat_") else {
            continue;
        };
        let field = |f: &str| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        };
        commands.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    Ok(RedisCounters {
        cpu_s: num("used_cpu_sys") + num("used_cpu_user"),
        net_in: num("total_net_input_bytes") as u64,
        net_out: num("total_net_output_bytes") as u64,
        used_memory: num("used_memory") as u64,
        commands,
    })
}

/// What a window cost Redis: deltas of `after` over `before` (commands since reset).
fn cost_json(before: &RedisCounters, after: &RedisCounters, per: f64) -> serde_json::Value {
    let per = per.max(1.0);
    let commands: BTreeMap<String, serde_json::Value> = after
        .commands
        .iter()
        .map(|(name, (calls, usec))| {
            (
                name.clone(),
                serde_json::json!({
                    "calls": calls,
                    "per_unit": *calls as f64 / per,
                    "usec_per_unit": *usec as f64 / per,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "cpu_us_per_unit": (after.cpu_s - before.cpu_s) * 1e6 / per,
        "net_in_bytes_per_unit": after.net_in.saturating_sub(before.net_in) as f64 / per,
        "net_out_bytes_per_unit": after.net_out.saturating_sub(before.net_out) as f64 / per,
        "used_memory_delta_bytes": after.used_memory as i64 - before.used_memory as i64,
        "commands": commands,
    })
}

/// The `redis-cost` scenario: per mode (no history, history), a fresh
/// redis-server and nodes; an idle window as a baseline, then `--cost-events`
/// publishes through node 0 to `--cost-channels` channels each with one
/// subscriber on node 1.
async fn redis_cost(cli: &Cli, launch: &Launch) -> Result<(serde_json::Value, bool)> {
    let mut modes = serde_json::Map::new();
    let mut ok = true;
    for history in [0, cli.cost_history_size] {
        let name = if history == 0 {
            "without history".to_owned()
        } else {
            format!("with history (history_size {history})")
        };
        let config = std::env::temp_dir().join(format!(
            "tidings-bench-cost-{}-{history}.toml",
            std::process::id()
        ));
        std::fs::write(
            &config,
            format!(
                "# Generated by `tidings-bench redis-cost`.\n\
                 [namespaces.bench]\n\
                 min_segments = 2\n\
                 max_segments = 2\n\
                 subscribe = [{{}}]\n\
                 history = [{{}}]\n\
                 history_size = {history}\n\
                 history_ttl = \"10m\"\n"
            ),
        )?;
        let redis = RedisServer::start().await?;
        let extra = [("TIDINGS_CONFIG".to_owned(), config.display().to_string())];
        let nodes = match start_nodes(launch, &redis, cli.nodes.unwrap_or(2).max(2), &extra).await {
            Ok(n) => n,
            Err(err) => {
                redis.stop().await;
                return Err(err);
            }
        };
        println!("== redis-cost {name}: redis-server at {} ==", redis.url());
        let result = cost_mode(cli, &redis, &nodes).await;
        stop_all(nodes).await;
        redis.stop().await;
        let _ = std::fs::remove_file(&config);
        match result {
            Ok((r, mode_ok)) => {
                ok &= mode_ok;
                modes.insert(name, r);
            }
            Err(err) => {
                eprintln!("error: redis-cost {name}: {err:#}");
                ok = false;
            }
        }
    }
    Ok((serde_json::Value::Object(modes), ok))
}

async fn cost_mode(
    cli: &Cli,
    redis: &RedisServer,
    nodes: &[Server],
) -> Result<(serde_json::Value, bool)> {
    let n = cli.cost_channels.max(1);
    let mut fleet = Fleet::spread(cli, Proto::Tidings, vec![nodes[1].addr], 0, n, "redis-cost");
    let channels: Rc<Vec<String>> = Rc::new((0..n).map(|i| format!("bench:c{i}")).collect());
    let names = channels.clone();
    fleet
        .ramp(cli, n, &move |i| vec![names[i % names.len()].clone()])
        .await?;
    let secs = cli.cost_events as f64 / cli.cost_rate.max(1.0);
    // Baseline: the same length of time without publishing (heartbeats,
    // presence and node bookkeeping), subtracted below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]).await?;
    let idle0 = redis_counters(redis).await?;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let idle1 = redis_counters(redis).await?;
    redis.cli(&["CONFIG", "RESETSTAT"]).await?;
    let before = redis_counters(redis).await?;
    let target = PublishTarget {
        proto: Proto::Tidings,
        server: nodes[0].addr,
        api_key: cli.api_key.clone(),
        pad: crate::pad(cli),
    };
    let plan = Plan {
        channels: channels.clone(),
        rate: cli.cost_rate,
        count: cli.cost_events as u64,
        seq_base: 0,
        workers: 4,
        batch: 1,
        deadline: Instant::now() + Duration::from_secs_f64(secs * 2.0 + 10.0),
    };
    let stats = crate::publish::run(&target, plan).await?;
    crate::drain(&fleet, stats.sent, Duration::from_secs(10)).await;
    let after = redis_counters(redis).await?;
    let received = fleet.stats.borrow().received;
    fleet.close().await;
    let events = stats.sent as f64;
    let ok = stats.errors == 0 && received == stats.sent;
    let measured = cost_json(&before, &after, events);
    let idle = cost_json(&idle0, &idle1, events);
    let net = |k: &str| measured[k].as_f64().unwrap_or(0.0) - idle[k].as_f64().unwrap_or(0.0);
    let fcall = after.commands.get("fcall").map(|c| c.0).unwrap_or(0);
    // The bench's own INFO and CONFIG RESETSTAT are not the engine's.
    let engine_commands: u64 = after
        .commands
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
        .map(|(_, (calls, _))| calls)
        .sum();
    println!(
        "[redis-cost] {} events ({} received): per event {:.0} µs Redis CPU, {:.0} B in, {:.0} B out (idle baseline subtracted); {} engine commands, FCALL {:.2}/event",
        stats.sent,
        received,
        net("cpu_us_per_unit"),
        net("net_in_bytes_per_unit"),
        net("net_out_bytes_per_unit"),
        engine_commands,
        fcall as f64 / events.max(1.0)
    );
    Ok((
        serde_json::json!({
            "events": stats.sent,
            "publish_errors": stats.errors,
            "received": received,
            "channels": n,
            "subscribers_per_channel": 1,
            "payload_pad_bytes": cli.payload_pad,
            "rate": cli.cost_rate,
            "per_event": measured,
            "idle_baseline_per_event": idle,
            "engine_commands_per_event": engine_commands as f64 / events.max(1.0),
            "net_per_event": {
                "cpu_us": net("cpu_us_per_unit"),
                "net_in_bytes": net("net_in_bytes_per_unit"),
                "net_out_bytes": net("net_out_bytes_per_unit"),
            },
            "used_memory_per_event_bytes":
                (after.used_memory as f64 - before.used_memory as f64) / events.max(1.0),
        }),
        ok,
    ))
}
