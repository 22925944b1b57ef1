//! `tidings-bench`: a load generator for Tidings that runs the same scenarios
//! against its peers (Centrifugo v6, a Socket.IO v4 server) and the kernel
//! floor (`floor-write`, `floor-batched`: one frame written to every socket with
//! no server logic) in the same run, and reports them side by side.
//!
//! Scenarios: `idle` (connections and memory), `fanout` (one channel, many
//! subscribers), `channels` (one channel per connection), `max` (raise the rate
//! until p99 crosses a bound), `smoke` (a few seconds, for the test suite),
//! `all`, and `history` (what history costs in server memory; Tidings only).
//! Results go to `<out>/results.json`, `<out>/results.md` and SVG charts.

mod centrifugo;
mod client;
mod cluster;
mod floor;
mod history;
mod process_cpu;
mod publish;
mod report;
mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use client::{Cmd, ConnSpec, Proto, SharedStats, Stats};
use report::{Run, Step};
use server::{Launch, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Idle,
    Fanout,
    Channels,
    Max,
    Smoke,
    /// idle, fanout, channels and max in turn.
    All,
    /// What history costs in server memory: per channel touched once, per
    /// remembered position, per event (Tidings only; starts its own servers).
    History,
    /// Only regenerate results.md and the charts from results.json.
    Report,
    /// Several Tidings nodes sharing one redis-server (started by the bench):
    /// `--connections` across `--nodes` (default 6), each connection on its user
    /// channel and `workspace:bench`; one broadcast to every user channel, then
    /// one publish to the workspace channel.
    Scale,
    /// Fan-out through Redis: publishes into one node, subscribers on the other
    /// nodes (3 in all), rising rates as in `max`; Socket.IO runs with
    /// @socket.io/redis-adapter on its own redis-server.
    CrossNode,
    /// Redis commands, bytes and CPU per published event, without and with history.
    RedisCost,
    /// Internal: a process holding a share of a cluster scenario's connections.
    #[value(hide = true)]
    ClusterWorker,
    /// Internal: the floor server (`--target floor-write,floor-batched` starts it).
    #[value(hide = true)]
    FloorServer,
}

impl Scenario {
    /// Scenarios on several nodes and a redis-server (module `cluster`).
    fn is_cluster(self) -> bool {
        matches!(
            self,
            Scenario::Scale | Scenario::CrossNode | Scenario::RedisCost | Scenario::ClusterWorker
        )
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Channels => "channels",
            Scenario::Max => "max",
            Scenario::Smoke => "smoke",
            Scenario::All => "all",
            Scenario::History => "history",
            Scenario::Report => "report",
            Scenario::Scale => "scale",
            Scenario::CrossNode => "cross-node",
            Scenario::RedisCost => "redis-cost",
            Scenario::ClusterWorker => "cluster-worker",
            Scenario::FloorServer => "floor-server",
        }
    }
}

/// Load generator for Tidings, side by side with Centrifugo, a Socket.IO v4
/// peer and the kernel floor.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// What to run.
    scenario: Scenario,
    /// Servers to run against, in order (comma separated): tidings, centrifugo,
    /// socketio, tidings-socketio, and the floor: floor-write, floor-batched.
    #[arg(long, value_delimiter = ',', default_value = "tidings,socketio")]
    target: Vec<Proto>,
    /// Centrifugo binary [default: bench/peers/centrifugo/bin/centrifugo, built
    /// by bench/peers/centrifugo/build.sh].
    #[arg(long)]
    centrifugo_bin: Option<PathBuf>,
    /// Internal (floor-server): how the floor writes.
    #[arg(long, hide = true, value_enum, default_value = "write")]
    floor_mode: floor::Mode,
    /// Internal (floor-server): where it listens.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    floor_addr: SocketAddr,
    /// Tidings server binary started for each run.
    #[arg(long)]
    tidings_bin: Option<PathBuf>,
    /// Directory of the Socket.IO peer (server.js, node_modules).
    #[arg(long)]
    peer_dir: Option<PathBuf>,
    /// Node.js executable for the peer.
    #[arg(long, default_value = "node")]
    node: String,
    /// Use an already running Tidings server at this address instead of starting one.
    #[arg(long)]
    tidings_addr: Option<SocketAddr>,
    /// Its pid, for RSS and CPU readings.
    #[arg(long)]
    tidings_pid: Option<u32>,
    /// Use an already running Socket.IO peer at this address.
    #[arg(long)]
    socketio_addr: Option<SocketAddr>,
    /// Its pid, for RSS and CPU readings.
    #[arg(long)]
    socketio_pid: Option<u32>,
    /// HS256 secret shared with the servers (only for servers started elsewhere).
    #[arg(long, default_value = "tidings-bench-secret-0123456789abcdef")]
    jwt_secret: String,
    /// API key for publishing.
    #[arg(long, default_value = "tidings-bench-api-key-0123456789")]
    api_key: String,
    /// Extra Tidings settings for started servers, e.g. CONNECTION_HEARTBEAT=25s
    /// (becomes TIDINGS_CONNECTION_HEARTBEAT).
    #[arg(long = "tidings-set", value_name = "KEY=VALUE")]
    tidings_set: Vec<String>,
    /// Connections. idle: the steps at which RSS is read; other scenarios: the first value.
    #[arg(long, value_delimiter = ',')]
    connections: Vec<usize>,
    /// Target deliveries per second (fanout, channels, smoke).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured (fanout, channels, smoke), after the warm-up.
    /// [default: 10, smoke 3]
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of publishing before measuring (max: at the first rate, before the
    /// first step). [default: 2, smoke 1]
    #[arg(long)]
    warmup: Option<f64>,
    /// max, cross-node: offered deliveries/s per step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,40000,60000,80000,100000,150000,200000,300000,400000,500000,700000,1000000"
    )]
    max_rates: Vec<f64>,
    /// max: seconds per step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// max: a step is sustained only with p99 at or under this (ms), nothing lost,
    /// and at least 95% of the offered rate delivered.
    #[arg(long, default_value_t = 20.0)]
    p99_bound_ms: f64,
    /// A delivery later than this (ms) counts as late.
    #[arg(long, default_value_t = 1000)]
    late_ms: u64,
    /// Events per publish request (channels): above 1, consecutive events go
    /// out as one broadcast to that many channels (`/api/broadcast`; the
    /// Socket.IO peer's `/broadcast`), with one timestamp. Must divide the
    /// channel count, else 1.
    #[arg(long, default_value_t = 1)]
    publish_batch: usize,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 64)]
    payload_pad: usize,
    /// Most new connections per second while ramping.
    #[arg(long, default_value_t = 4000.0)]
    connect_rate: f64,
    /// Most connection setups in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Source addresses 127.0.0.1..=127.0.0.K (0 = one per 25k connections).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// idle: seconds to hold the last step before a final ping round (longer
    /// than the server heartbeat shows heartbeats are answered).
    #[arg(long, default_value_t = 0.0)]
    hold_secs: f64,
    /// Core for the servers (taskset -c).
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// Core for the generator.
    #[arg(long, default_value_t = 1)]
    bench_cpu: usize,
    /// Do not pin anything to cores.
    #[arg(long)]
    no_pin: bool,
    /// Output directory (results.json is merged, so runs can be made one by one).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Before each run, wait up to this many seconds for other processes on the
    /// machine to go quiet (under 25% of a core).
    #[arg(long, default_value_t = 0.0)]
    quiet_wait: f64,
    /// Hard limit on each scenario run per target, in seconds.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// history: the phases to run, each against a fresh server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "channels,positions,events,events-subscribed"
    )]
    history_phases: Vec<history::Phase>,
    /// history: channels touched once each; RSS is read at every step.
    #[arg(long, value_delimiter = ',', default_value = "25000,50000,100000")]
    channel_steps: Vec<usize>,
    /// history: bytes of `data` in the event that touches each channel.
    #[arg(long, default_value_t = 40)]
    touch_payload: usize,
    /// history: `history_size` of the namespace in the channels phase.
    #[arg(long, default_value_t = 100)]
    history_size: usize,
    /// history: `history_ttl` in the channels phase, in seconds.
    #[arg(long, default_value_t = 20.0)]
    history_ttl: f64,
    /// history: `engine.position_ttl`, in seconds (longer than history-ttl plus
    /// the time it takes to touch the channels).
    #[arg(long, default_value_t = 45.0)]
    position_ttl: f64,
    /// history: `engine.sweep_interval`, in seconds.
    #[arg(long, default_value_t = 1.0)]
    sweep_interval: f64,
    /// history: events published into one channel's history per payload size.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// history: bytes of `data` per event in the events phases.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    payload_sizes: Vec<usize>,
    /// history: channels per `/api/broadcast` request.
    #[arg(long, default_value_t = 1000)]
    broadcast_batch: usize,
    /// history: HTTP requests in flight while publishing.
    #[arg(long, default_value_t = 4)]
    publish_concurrency: usize,
    /// history: after the `expired` and `reclaimed` readings, call glibc's
    /// malloc_trim(0) in the server through gdb (needs gdb and ptrace) and read
    /// RSS again, to tell memory the allocator keeps free from memory in use.
    #[arg(long)]
    malloc_trim_probe: bool,
    /// scale, cross-node: Tidings nodes (Socket.IO peers) sharing the redis-server.
    /// [default: scale 6, cross-node 3, redis-cost 2]
    #[arg(long)]
    nodes: Option<usize>,
    /// scale, cross-node: most connections one generator process holds (the
    /// open-files limit is per process).
    #[arg(long, default_value_t = 16_000)]
    worker_connections: usize,
    /// scale, cross-node, redis-cost: runs of the scenario, one after another
    /// (each a fresh redis-server and nodes); all are kept in cluster.json.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// scale: broadcasts to every user channel, one after another (each once
    /// the previous one is delivered); the p99 is also reported over all.
    #[arg(long, default_value_t = 1)]
    scale_publishes: usize,
    /// redis-cost: events published in each mode.
    #[arg(long, default_value_t = 5000)]
    cost_events: usize,
    /// redis-cost: channels they are spread over (one subscriber each, on
    /// another node than the publishing one).
    #[arg(long, default_value_t = 100)]
    cost_channels: usize,
    /// redis-cost: publishes per second.
    #[arg(long, default_value_t = 1000.0)]
    cost_rate: f64,
    /// redis-cost: `history_size` in the mode with history.
    #[arg(long, default_value_t = 100)]
    cost_history_size: usize,
    #[arg(long, hide = true, value_delimiter = ',')]
    worker_servers: Vec<SocketAddr>,
    #[arg(long, hide = true, default_value_t = 0)]
    worker_from: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    worker_to: usize,
    /// Internal: the channels of worker connection i: `user-workspace`
    /// (user:u{i} and workspace:bench) or `workspace`.
    #[arg(long, hide = true, default_value = "user-workspace")]
    worker_channels: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.scenario == Scenario::FloorServer {
        return floor::serve(cli.floor_addr, cli.floor_mode);
    }
    if cli.scenario.is_cluster() {
        return cluster::main(cli);
    }
    let root = server::workspace_root();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench/results/latest"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if cli.scenario == Scenario::Report {
        let runs = report::load(&out)?;
        report::write(&out, &runs)?;
        println!("wrote {}/results.md", out.display());
        return Ok(());
    }
    let most = cli.connections.iter().copied().max().unwrap_or(1000);
    let fd_limit = server::raise_fd_limit((most as u64) * 2 + 4096);
    if (fd_limit as usize) < most + 256 {
        eprintln!(
            "warning: open-file limit is {fd_limit}, below {most} connections + headroom; \
             the run will hit EMFILE (the hard limit needs raising by root/CAP_SYS_RESOURCE)"
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pin = !cli.no_pin && cores >= 2;
    if pin && !server::pin_self(cli.bench_cpu) {
        eprintln!(
            "warning: could not pin the generator to core {}",
            cli.bench_cpu
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async_main(cli, root, out, pin, fd_limit))?;
    std::process::exit(code);
}

/// How to start servers, as the command line says; `cpu` pins them to a core
/// (`None`: the OS places them).
fn launch_from_cli(cli: &Cli, root: &Path, cpu: Option<usize>) -> Result<Launch> {
    let mut tidings_env = Vec::new();
    for kv in &cli.tidings_set {
        let (k, v) = kv
            .split_once('=')
            .context("--tidings-set wants KEY=VALUE")?;
        tidings_env.push((format!("TIDINGS_{}", k.to_uppercase()), v.to_owned()));
    }
    Ok(Launch {
        tidings_bin: cli
            .tidings_bin
            .clone()
            .unwrap_or_else(|| root.join("target/release/tidings")),
        peer_dir: cli
            .peer_dir
            .clone()
            .unwrap_or_else(|| root.join("bench/peers/socketio")),
        node: cli.node.clone(),
        cpu,
        jwt_secret: cli.jwt_secret.clone(),
        api_key: cli.api_key.clone(),
        tidings_env,
        peer_env: Vec::new(),
        centrifugo_bin: cli
            .centrifugo_bin
            .clone()
            .unwrap_or_else(|| root.join("bench/peers/centrifugo/bin/centrifugo")),
        // Tidings' default `connection.heartbeat`.
        heartbeat: Duration::from_secs(25),
    })
}

async fn async_main(
    cli: Cli,
    root: PathBuf,
    out: PathBuf,
    pin: bool,
    fd_limit: u64,
) -> Result<i32> {
    let launch = launch_from_cli(&cli, &root, pin.then_some(cli.server_cpu))?;
    let scenarios: Vec<Scenario> = match cli.scenario {
        Scenario::All => vec![
            Scenario::Idle,
            Scenario::Fanout,
            Scenario::Channels,
            Scenario::Max,
        ],
        s => vec![s],
    };
    let mut runs = report::load(&out).unwrap_or_default();
    let mut failed = false;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    for scenario in scenarios {
        for &proto in &cli.target {
            if scenario == Scenario::History {
                if proto != Proto::Tidings {
                    println!(
                        "(history runs against Tidings only; skipping {})",
                        proto.label()
                    );
                    continue;
                }
                println!("== history against Tidings ==");
                match run_history(&cli, &launch, &out).await {
                    Ok(mut run) => {
                        run.command = command_line.clone();
                        run.pinned = pin;
                        run.fd_limit = fd_limit;
                        runs.retain(|r| !(r.scenario == run.scenario && r.target == run.target));
                        runs.push(run);
                    }
                    Err(err) => {
                        eprintln!("error: history against Tidings: {err:#}");
                        failed = true;
                    }
                }
                continue;
            }
            if scenario == Scenario::Idle && proto.is_floor() {
                // The floor keeps no per-connection state worth comparing.
                println!("(idle has no floor; skipping {})", proto.label());
                continue;
            }
            println!("== {} against {} ==", scenario.name(), proto.label());
            let server = match start_server(&cli, &launch, proto).await {
                Ok(s) => s,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    failed = true;
                    continue;
                }
            };
            if cli.quiet_wait > 0.0 {
                let other =
                    server::wait_for_quiet(Duration::from_secs_f64(cli.quiet_wait), 25.0).await;
                if other >= 25.0 {
                    eprintln!(
                        "warning: other processes use {other:.0}% CPU; results will be noisy"
                    );
                }
            }
            let limit = Duration::from_secs_f64(cli.timeout);
            let result = tokio::time::timeout(limit, run_scenario(&cli, scenario, &server)).await;
            server.stop().await;
            let mut run = match result {
                Ok(Ok(run)) => run,
                Ok(Err(err)) => {
                    eprintln!(
                        "error: {} against {}: {err:#}",
                        scenario.name(),
                        proto.label()
                    );
                    failed = true;
                    continue;
                }
                Err(_) => {
                    eprintln!(
                        "error: {} against {} hit the {} s limit",
                        scenario.name(),
                        proto.label(),
                        cli.timeout
                    );
                    failed = true;
                    continue;
                }
            };
            run.command = command_line.clone();
            run.pinned = pin;
            run.fd_limit = fd_limit;
            if scenario == Scenario::Smoke && !run.ok() {
                eprintln!(
                    "smoke against {} FAILED: {}",
                    proto.label(),
                    run.problems().join("; ")
                );
                failed = true;
            }
            runs.retain(|r| !(r.scenario == run.scenario && r.target == run.target));
            runs.push(run);
            // Let the kernel reclaim the closed sockets before the next server.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    report::write(&out, &runs)?;
    println!(
        "wrote {}/results.json, results.md and charts",
        out.display()
    );
    Ok(if failed { 1 } else { 0 })
}

/// The `history` scenario: its own servers, one per phase, within `--timeout`.
async fn run_history(cli: &Cli, launch: &Launch, out: &std::path::Path) -> Result<Run> {
    if cli.tidings_addr.is_some() {
        bail!(
            "history starts its own servers with its own config; --tidings-addr is not supported"
        );
    }
    let secs = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            bail!("--{what} must be a positive number of seconds")
        }
    };
    let opts = history::Options {
        phases: cli.history_phases.clone(),
        channel_steps: cli.channel_steps.clone(),
        touch_payload: cli.touch_payload,
        history_size: cli.history_size,
        history_ttl: secs(cli.history_ttl, "history-ttl")?,
        position_ttl: secs(cli.position_ttl, "position-ttl")?,
        sweep_interval: secs(cli.sweep_interval, "sweep-interval")?,
        events: cli.events,
        payload_sizes: cli.payload_sizes.clone(),
        broadcast_batch: cli.broadcast_batch,
        concurrency: cli.publish_concurrency,
        malloc_trim_probe: cli.malloc_trim_probe,
        config_dir: out.join("history-config"),
    };
    let mut run = Run::new("history", Proto::Tidings);
    run.params = serde_json::json!({
        "phases": cli.history_phases.iter()
            .filter_map(|p| p.to_possible_value().map(|v| v.get_name().to_owned()))
            .collect::<Vec<_>>(),
        "channel_steps": opts.channel_steps, "touch_payload_bytes": opts.touch_payload,
        "history_size": opts.history_size, "history_ttl_s": cli.history_ttl,
        "position_ttl_s": cli.position_ttl, "sweep_interval_s": cli.sweep_interval,
        "events": opts.events, "payload_sizes": opts.payload_sizes,
        "broadcast_batch": opts.broadcast_batch, "publish_concurrency": opts.concurrency,
        "malloc_trim_probe": opts.malloc_trim_probe,
    });
    let limit = Duration::from_secs_f64(cli.timeout);
    let result = tokio::time::timeout(limit, history::run(&opts, launch))
        .await
        .with_context(|| format!("history hit the {} s limit", cli.timeout))??;
    run.history = Some(result);
    run.generator_rss = server::rss_of(std::process::id());
    Ok(run)
}

async fn start_server(cli: &Cli, launch: &Launch, proto: Proto) -> Result<Server> {
    let external = match proto {
        Proto::Tidings | Proto::TidingsSocketio => cli.tidings_addr.map(|a| (a, cli.tidings_pid)),
        Proto::Socketio => cli.socketio_addr.map(|a| (a, cli.socketio_pid)),
        Proto::Centrifugo | Proto::FloorWrite | Proto::FloorBatched => None,
    };
    let server = match external {
        Some((addr, pid)) => Server::external(proto, addr, pid),
        None => launch.start(proto).await?,
    };
    println!(
        "{} at {} (pid {:?})",
        proto.label(),
        server.addr,
        server.pid
    );
    Ok(server)
}

/// The connections of one run, all sharing one set of counters.
struct Fleet {
    proto: Proto,
    /// Connection i goes to `servers[i % len]`.
    servers: Vec<SocketAddr>,
    /// Added to a connection's index for its user id (a worker's share).
    first_user: usize,
    secret: String,
    stats: SharedStats,
    cmd: watch::Sender<Cmd>,
    handles: Vec<JoinHandle<()>>,
    sources: Vec<IpAddr>,
    label: String,
}

struct RampResult {
    ready: u64,
    errors: u64,
    secs: f64,
}

impl Fleet {
    fn new(cli: &Cli, proto: Proto, server: SocketAddr, total: usize, label: &str) -> Self {
        Self::spread(cli, proto, vec![server], 0, total, label)
    }

    /// Connections spread over `servers`, users numbered from `first_user`.
    fn spread(
        cli: &Cli,
        proto: Proto,
        servers: Vec<SocketAddr>,
        first_user: usize,
        total: usize,
        label: &str,
    ) -> Self {
        let count = if cli.sources > 0 {
            cli.sources
        } else {
            total.div_ceil(25_000).max(1)
        };
        let sources = (0..count.min(250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
            .collect();
        let (cmd, _) = watch::channel(Cmd::Idle);
        Self {
            proto,
            servers,
            first_user,
            secret: cli.jwt_secret.clone(),
            stats: Rc::new(std::cell::RefCell::new(Stats::new(cli.late_ms))),
            cmd,
            handles: Vec::new(),
            sources,
            label: label.to_owned(),
        }
    }

    fn token(&self, i: usize) -> Result<String> {
        let claims = tidings_auth::MintClaims {
            sub: format!("u{i}"),
            workspaces: vec!["bench".into()],
            ttl: Some(Duration::from_secs(6 * 3600)),
            ..Default::default()
        };
        Ok(tidings_auth::mint_hs256(&self.secret, &claims)?)
    }

    /// Opens connections up to `to`, paced and bounded, printing progress.
    async fn ramp(
        &mut self,
        cli: &Cli,
        to: usize,
        channels: &dyn Fn(usize) -> Vec<String>,
    ) -> Result<RampResult> {
        let from = self.handles.len();
        let start = Instant::now();
        let (ready0, errors0) = {
            let s = self.stats.borrow();
            (s.ready, s.connect_errors)
        };
        let interval = Duration::from_secs_f64(1.0 / cli.connect_rate.max(1.0));
        let mut last_print = Instant::now();
        let deadline = start
            + Duration::from_secs_f64((to - from) as f64 / cli.connect_rate.max(1.0) * 3.0 + 60.0);
        for i in from..to {
            let at = start + interval.mul_f64((i - from) as f64);
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            loop {
                let (done, in_flight) = {
                    let s = self.stats.borrow();
                    let done = (s.ready - ready0) + (s.connect_errors - errors0);
                    (done, (i - from) as u64 - done)
                };
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    self.progress(from, to, start, done);
                }
                if in_flight < cli.connect_concurrency as u64 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("ramp did not finish in time");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let user = self.first_user + i;
            let spec = ConnSpec {
                proto: self.proto,
                server: self.servers[i % self.servers.len().max(1)],
                source: self.sources[i % self.sources.len()],
                token: self.token(user)?,
                channels: channels(user),
                first_seq: 0,
            };
            let stats = self.stats.clone();
            let cmd = self.cmd.subscribe();
            self.handles
                .push(tokio::task::spawn_local(client::run_connection(
                    spec, stats, cmd,
                )));
        }
        loop {
            let done = {
                let s = self.stats.borrow();
                (s.ready - ready0) + (s.connect_errors - errors0)
            };
            if done >= (to - from) as u64 {
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                self.progress(from, to, start, done);
            }
            if Instant::now() > deadline {
                bail!("ramp did not finish in time ({done} of {} done)", to - from);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let s = self.stats.borrow();
        let result = RampResult {
            ready: s.ready - ready0,
            errors: s.connect_errors - errors0,
            secs,
        };
        println!(
            "[{}] {} connections ready ({} new in {:.1} s, {:.0}/s), {} failed{}",
            self.label,
            s.ready,
            result.ready,
            secs,
            result.ready as f64 / secs.max(1e-9),
            s.connect_errors,
            s.first_errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        Ok(result)
    }

    fn progress(&self, from: usize, to: usize, start: Instant, done: u64) {
        let s = self.stats.borrow();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "[{}] ramp {}/{} ({:.0}/s), {} failed",
            self.label,
            from as u64 + done,
            to,
            done as f64 / secs.max(1e-9),
            s.connect_errors
        );
    }

    /// One ping round on every ready connection; returns how many answered.
    async fn ping_all(&self, round: u32, wait: Duration) -> u64 {
        let (before, want) = {
            let s = self.stats.borrow();
            (s.pongs, s.ready - s.disconnects)
        };
        let _ = self.cmd.send(Cmd::Ping(round));
        let deadline = Instant::now() + wait;
        loop {
            let got = self.stats.borrow().pongs - before;
            if got >= want || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn close(self) {
        let _ = self.cmd.send(Cmd::Close);
        let deadline = Instant::now() + Duration::from_secs(10);
        for handle in &self.handles {
            if handle.is_finished() {
                continue;
            }
            if Instant::now() > deadline {
                break;
            }
            while !handle.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for handle in &self.handles {
            handle.abort();
        }
    }
}

fn pad(cli: &Cli) -> String {
    "x".repeat(cli.payload_pad)
}

async fn run_scenario(cli: &Cli, scenario: Scenario, server: &Server) -> Result<Run> {
    let mut run = Run::new(scenario.name(), server.proto);
    // Let the server settle before the baseline reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_bytes();
    run.rss_idle_server = rss0;
    match scenario {
        Scenario::Idle => idle(cli, server, &mut run, rss0).await?,
        Scenario::Fanout | Scenario::Channels | Scenario::Smoke => {
            steady(cli, scenario, server, &mut run, rss0).await?
        }
        Scenario::Max => max(cli, server, &mut run, rss0).await?,
        Scenario::All
        | Scenario::Report
        | Scenario::History
        | Scenario::Scale
        | Scenario::CrossNode
        | Scenario::RedisCost
        | Scenario::ClusterWorker
        | Scenario::FloorServer => unreachable!(),
    }
    Ok(run)
}

fn label(scenario: &str, proto: Proto) -> String {
    format!("{scenario} {}", proto.label())
}

async fn idle(cli: &Cli, server: &Server, run: &mut Run, rss0: Option<u64>) -> Result<()> {
    let mut steps = cli.connections.clone();
    if steps.is_empty() {
        steps = vec![1000, 5000, 10000];
    }
    steps.sort_unstable();
    let total = *steps.last().unwrap_or(&1000);
    let mut fleet = Fleet::new(
        cli,
        server.proto,
        server.addr,
        total,
        &label("idle", server.proto),
    );
    run.params = serde_json::json!({
        "steps": steps, "connect_rate": cli.connect_rate, "sources": fleet.sources.len(),
        "channels_per_connection": ["user:u{i}", "workspace:bench"], "hold_secs": cli.hold_secs,
    });
    for (round, &n) in steps.iter().enumerate() {
        let ramp = fleet
            .ramp(cli, n, &|i| {
                vec![format!("user:u{i}"), "workspace:bench".to_owned()]
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = server.rss_bytes();
        let pongs = fleet
            .ping_all(round as u32 + 1, Duration::from_secs(15))
            .await;
        let s = fleet.stats.borrow();
        let mut step = connection_step(&s, &ramp, rss, rss0);
        step.pongs = Some(pongs);
        step.disconnects = Some(s.disconnects);
        step.errors = s.first_errors.clone();
        println!(
            "[{}] {} connections: RSS {:.1} MiB, {:.2} KiB/conn, {} of {} answered ping, {} disconnected",
            fleet.label,
            s.ready,
            rss.unwrap_or(0) as f64 / 1048576.0,
            step.rss_per_conn.unwrap_or(0.0) / 1024.0,
            pongs,
            s.ready,
            s.disconnects
        );
        drop(s);
        run.steps.push(step);
        if ramp.errors > 0 && ramp.ready == 0 {
            break;
        }
    }
    if cli.hold_secs > 0.0 {
        println!("[{}] holding for {:.0} s", fleet.label, cli.hold_secs);
        let end = Instant::now() + Duration::from_secs_f64(cli.hold_secs);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(5).min(end - Instant::now())).await;
            let s = fleet.stats.borrow();
            println!(
                "[{}] holding: {} connections, {} disconnected",
                fleet.label,
                s.ready - s.disconnects,
                s.disconnects
            );
        }
        let pongs = fleet.ping_all(1000, Duration::from_secs(15)).await;
        let rss = server.rss_bytes();
        let s = fleet.stats.borrow();
        run.held = Some(report::Held {
            secs: cli.hold_secs,
            connections: s.ready,
            disconnects: s.disconnects,
            pongs,
            rss,
        });
        println!(
            "[{}] after hold: {} of {} answered ping, {} disconnected",
            fleet.label, pongs, s.ready, s.disconnects
        );
    }
    run.generator_rss = server::rss_of(std::process::id());
    fleet.close().await;
    Ok(())
}

/// Counters at one instant.
#[derive(Clone, Copy)]
struct Snap {
    received: u64,
    at: Instant,
    cpu: Option<f64>,
    gen_cpu: Option<f64>,
    machine: Option<f64>,
}

fn snap(fleet: &Fleet, server: &Server) -> Snap {
    Snap {
        received: fleet.stats.borrow().received,
        at: Instant::now(),
        cpu: server.cpu_seconds(),
        gen_cpu: server::cpu_of(std::process::id()),
        machine: server::machine_busy_seconds(),
    }
}

/// Publishes `count` events at `rate`/s over `channels`; returns publisher stats.
async fn publish(
    cli: &Cli,
    server: &Server,
    channels: &Rc<Vec<String>>,
    rate: f64,
    secs: f64,
    seq_base: u64,
) -> Result<publish::PublishStats> {
    let target = publish::PublishTarget {
        proto: server.proto,
        server: server.addr,
        api_key: cli.api_key.clone(),
        pad: pad(cli),
    };
    let count = (rate * secs).round().max(1.0) as u64;
    let batch = cli.publish_batch.max(1);
    let workers = ((rate / batch as f64 / 400.0).ceil() as usize).clamp(2, 48);
    let plan = publish::Plan {
        channels: channels.clone(),
        rate,
        count,
        seq_base,
        workers,
        batch: batch as u64,
        deadline: Instant::now() + Duration::from_secs_f64(secs * 2.0 + 5.0),
    };
    publish::run(&target, plan).await
}

/// Waits until `expected` deliveries arrived or `limit` passes.
async fn drain(fleet: &Fleet, expected: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while fleet.stats.borrow().received < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A step with the connection figures filled in: count, connect errors and rate,
/// server RSS and RSS per connection over the baseline `rss0`.
fn connection_step(s: &Stats, ramp: &RampResult, rss: Option<u64>, rss0: Option<u64>) -> Step {
    let mut step = Step {
        connections: s.ready,
        ..Default::default()
    };
    step.connect_errors = Some(s.connect_errors);
    step.connect_rate = Some(ramp.ready as f64 / ramp.secs.max(1e-9));
    step.rss = rss;
    if let (Some(rss), Some(rss0)) = (rss, rss0) {
        step.rss_per_conn = Some(rss.saturating_sub(rss0) as f64 / s.ready.max(1) as f64);
    }
    step
}

/// CPU shares over a window of `secs`: the server's, the generator's, and
/// everything else on the machine (which should be ~0 for a clean run).
fn fill_cpu(step: &mut Step, before: &Snap, after: &Snap, secs: f64) {
    let pct = |a: Option<f64>, b: Option<f64>| Some((a? - b?) / secs.max(1e-9) * 100.0);
    step.server_cpu_pct = pct(after.cpu, before.cpu);
    step.generator_cpu_pct = pct(after.gen_cpu, before.gen_cpu);
    if let Some(total) = pct(after.machine, before.machine) {
        let others =
            total - step.server_cpu_pct.unwrap_or(0.0) - step.generator_cpu_pct.unwrap_or(0.0);
        step.other_cpu_pct = Some(others.max(0.0));
    }
}

fn fill_latency(step: &mut Step, stats: &Stats) {
    let h = &stats.hist;
    if h.is_empty() {
        return;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    step.p50_ms = Some(ms(h.value_at_quantile(0.50)));
    step.p90_ms = Some(ms(h.value_at_quantile(0.90)));
    step.p99_ms = Some(ms(h.value_at_quantile(0.99)));
    step.p999_ms = Some(ms(h.value_at_quantile(0.999)));
    step.max_ms = Some(ms(h.max()));
    step.mean_ms = Some(h.mean() / 1000.0);
    step.samples = Some(h.len());
}

/// fanout / channels / smoke: a fixed rate for a fixed time.
async fn steady(
    cli: &Cli,
    scenario: Scenario,
    server: &Server,
    run: &mut Run,
    rss0: Option<u64>,
) -> Result<()> {
    let (default_n, default_rate) = match scenario {
        Scenario::Fanout => (10_000, 100_000.0),
        Scenario::Channels => (10_000, 5_000.0),
        _ => (300, 3_000.0),
    };
    let n = cli.connections.first().copied().unwrap_or(default_n);
    let rate = cli.rate.unwrap_or(default_rate);
    let smoke = scenario == Scenario::Smoke;
    let duration = cli.duration.unwrap_or(if smoke { 3.0 } else { 10.0 });
    let warmup = cli.warmup.unwrap_or(if smoke { 1.0 } else { 2.0 });
    let per_channel = scenario != Scenario::Channels;
    let channels: Rc<Vec<String>> = Rc::new(if per_channel {
        vec!["workspace:bench".to_owned()]
    } else {
        (0..n).map(|i| format!("user:u{i}")).collect()
    });
    let subs_per_channel = if per_channel { n as u64 } else { 1 };
    let publish_rate = rate / subs_per_channel as f64;
    let mut fleet = Fleet::new(
        cli,
        server.proto,
        server.addr,
        n,
        &label(scenario.name(), server.proto),
    );
    run.params = serde_json::json!({
        "connections": n, "channels": channels.len(), "offered_deliveries_per_s": rate,
        "publishes_per_s": publish_rate, "duration_s": duration, "warmup_s": warmup,
        "payload_pad_bytes": cli.payload_pad, "sources": fleet.sources.len(),
        "publish_batch": cli.publish_batch,
    });
    let ramp = if per_channel {
        fleet
            .ramp(cli, n, &|_| vec!["workspace:bench".to_owned()])
            .await?
    } else {
        fleet.ramp(cli, n, &|i| vec![format!("user:u{i}")]).await?
    };
    if ramp.ready == 0 {
        bail!(
            "no connection could be set up: {:?}",
            fleet.stats.borrow().first_errors
        );
    }
    let rss_conn = server.rss_bytes();
    println!(
        "[{}] publishing {:.1}/s to {} channel(s) for {:.0} s warm-up + {:.0} s",
        fleet.label,
        publish_rate,
        channels.len(),
        warmup,
        duration
    );
    // One publishing run; the measurement starts when the warm-up ends.
    let start_snap: Rc<std::cell::Cell<Option<Snap>>> = Rc::new(std::cell::Cell::new(None));
    let flip = {
        let stats = fleet.stats.clone();
        let start_snap = start_snap.clone();
        let pid = server.pid;
        let warmup = Duration::from_secs_f64(warmup);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(warmup).await;
            let mut s = stats.borrow_mut();
            s.hist.reset();
            s.recording = true;
            start_snap.set(Some(Snap {
                received: s.received,
                at: Instant::now(),
                cpu: pid.and_then(server::cpu_of),
                gen_cpu: server::cpu_of(std::process::id()),
                machine: server::machine_busy_seconds(),
            }));
        })
    };
    let measured = publish(cli, server, &channels, publish_rate, warmup + duration, 0).await?;
    if let Some(before) = start_snap.get() {
        // The last publish goes out one interval before the window ends; let the
        // window run its planned length so that publish's deliveries are in it.
        tokio::time::sleep_until(before.at + Duration::from_secs_f64(duration)).await;
    }
    let after = snap(&fleet, server);
    let _ = flip.await;
    let before = start_snap.get().context("measurement never started")?;
    let warm = publish::PublishStats::default();
    let sent = warm.sent + measured.sent;
    let expected = sent * subs_per_channel;
    drain(&fleet, expected, Duration::from_secs(5)).await;
    fleet.stats.borrow_mut().recording = false;
    let step = {
        let s = fleet.stats.borrow();
        let mut step = connection_step(&s, &ramp, rss_conn, rss0);
        step.offered_rate = Some(rate);
        step.publish_rate = Some(publish_rate);
        step.publishes = Some(sent);
        step.publish_errors = Some(warm.errors + measured.errors);
        step.publish_max_lag_ms = Some(warm.max_lag.max(measured.max_lag).as_secs_f64() * 1000.0);
        // The window ends at the last publish; never count it shorter than planned.
        let secs = (after.at - before.at).as_secs_f64().max(duration);
        step.deliveries_per_s = Some((after.received - before.received) as f64 / secs.max(1e-9));
        fill_cpu(&mut step, &before, &after, secs);
        step.expected = Some(expected);
        step.received = Some(s.received);
        step.lost = Some(expected.saturating_sub(s.received));
        step.late = Some(s.late);
        step.gaps = Some(s.gaps);
        step.dups = Some(s.dups);
        step.reordered = Some(s.reordered);
        step.disconnects = Some(s.disconnects);
        fill_latency(&mut step, &s);
        step.errors = s.first_errors.clone();
        if let Some(e) = measured.first_error.or(warm.first_error) {
            step.errors.push(format!("publish: {e}"));
        }
        println!("[{}] {}", fleet.label, step.summary());
        step
    };
    run.steps.push(step);
    run.generator_rss = server::rss_of(std::process::id());
    fleet.close().await;
    Ok(())
}

/// max: raise the rate step by step until a step is not sustained.
async fn max(cli: &Cli, server: &Server, run: &mut Run, rss0: Option<u64>) -> Result<()> {
    let n = cli.connections.first().copied().unwrap_or(1000);
    let channels = Rc::new(vec!["workspace:bench".to_owned()]);
    let mut fleet = Fleet::new(
        cli,
        server.proto,
        server.addr,
        n,
        &label("max", server.proto),
    );
    run.params = serde_json::json!({
        "connections": n, "step_s": cli.step_secs, "p99_bound_ms": cli.p99_bound_ms,
        "rates": cli.max_rates, "payload_pad_bytes": cli.payload_pad,
        "warmup_s": cli.warmup.unwrap_or(2.0),
    });
    let ramp = fleet
        .ramp(cli, n, &|_| vec!["workspace:bench".to_owned()])
        .await?;
    if ramp.ready == 0 {
        bail!(
            "no connection could be set up: {:?}",
            fleet.stats.borrow().first_errors
        );
    }
    let _ = rss0;
    let subs = ramp.ready;
    let mut seq_base = 0u64;
    let mut expected_total = 0u64;
    // An unjudged warm-up at the first rate, as in the steady scenarios: the
    // first step should not pay for cold caches or a JIT that has not run yet.
    let warmup = cli.warmup.unwrap_or(2.0);
    if let (Some(&rate), true) = (cli.max_rates.first(), warmup > 0.0) {
        let publish_rate = rate / subs as f64;
        let stats = publish(cli, server, &channels, publish_rate, warmup, seq_base).await?;
        seq_base += (publish_rate * warmup).round().max(1.0) as u64;
        expected_total += stats.sent * subs;
        drain(&fleet, expected_total, Duration::from_secs(3)).await;
        println!("[{}] warm-up: {:.0} s at {rate:.0}/s", fleet.label, warmup);
    }
    for &rate in &cli.max_rates {
        let publish_rate = rate / subs as f64;
        {
            let mut s = fleet.stats.borrow_mut();
            s.hist.reset();
            s.recording = true;
        }
        let (received0, gaps0, late0, disc0) = {
            let s = fleet.stats.borrow();
            (s.received, s.gaps, s.late, s.disconnects)
        };
        let before = snap(&fleet, server);
        let stats = publish(
            cli,
            server,
            &channels,
            publish_rate,
            cli.step_secs,
            seq_base,
        )
        .await?;
        // Publishes are spread over the step, the last one an interval before its
        // end: measure the planned step, so at low rates (e.g. 2 publishes/s) the
        // last publish's deliveries are counted and the window is not cut short.
        tokio::time::sleep_until(before.at + Duration::from_secs_f64(cli.step_secs)).await;
        let after = snap(&fleet, server);
        let planned = (publish_rate * cli.step_secs).round().max(1.0) as u64;
        seq_base += planned;
        expected_total += stats.sent * subs;
        drain(&fleet, expected_total, Duration::from_secs(3)).await;
        let s = fleet.stats.borrow();
        let mut step = Step {
            connections: s.ready - s.disconnects,
            ..Default::default()
        };
        let secs = (after.at - before.at).as_secs_f64().max(cli.step_secs);
        step.offered_rate = Some(rate);
        step.publish_rate = Some(publish_rate);
        step.publishes = Some(stats.sent);
        step.publish_errors = Some(stats.errors);
        step.publish_max_lag_ms = Some(stats.max_lag.as_secs_f64() * 1000.0);
        step.deliveries_per_s = Some((after.received - received0) as f64 / secs.max(1e-9));
        fill_cpu(&mut step, &before, &after, secs);
        let expected = stats.sent * subs;
        step.expected = Some(expected);
        step.received = Some(s.received - received0);
        step.lost = Some(expected_total.saturating_sub(s.received));
        step.gaps = Some(s.gaps - gaps0);
        step.late = Some(s.late - late0);
        step.disconnects = Some(s.disconnects - disc0);
        fill_latency(&mut step, &s);
        step.errors = s.first_errors.clone();
        let sustained = step.p99_ms.is_some_and(|p| p <= cli.p99_bound_ms)
            && step.lost == Some(0)
            && step.disconnects == Some(0)
            && stats.errors == 0
            && step.deliveries_per_s.unwrap_or(0.0) >= 0.95 * rate;
        step.sustained = Some(sustained);
        println!(
            "[{}] offered {:.0}/s: {} -> {}",
            fleet.label,
            rate,
            step.summary(),
            if sustained {
                "sustained"
            } else {
                "NOT sustained"
            }
        );
        drop(s);
        run.steps.push(step);
        if !sustained {
            break;
        }
    }
    run.max_sustained = Some(
        run.steps
            .iter()
            .filter(|s| s.sustained == Some(true))
            .filter_map(|s| s.deliveries_per_s)
            .fold(0.0, f64::max),
    );
    run.generator_rss = server::rss_of(std::process::id());
    fleet.close().await;
    Ok(())
}
