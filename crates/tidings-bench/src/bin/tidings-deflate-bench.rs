//! `tidings-deflate-bench`: bytes on the wire and server CPU per delivery on
//! `/ws`, without and with permessage-deflate (issue 16, item 3).
//!
//! For each run and mode it starts the release server pinned to core 0
//! (`taskset -c 0`), opens `--connections` WebSocket connections from this
//! process (pinned to core 1) that offer permessage-deflate (`deflate`) or not
//! (`plain`), subscribes each to `workspace:bench`, publishes `--events`
//! events at `--rate` through `POST /api/publish`, and waits until every
//! connection has every event. It reports the bytes the clients read from
//! their sockets per delivery (frame headers included), the server's CPU time
//! (user + system, `/proc/<pid>/stat`) per delivery over the publish window
//! and the drain, and the server's `tidings_ws_deflate_*` counters.
//!
//! The clients are written by hand over `TcpStream` (tokio-tungstenite has no
//! permessage-deflate); against Tidings they count frames and bytes and do not
//! inflate (one event per frame; the server tests check the content).
//!
//! `--target centrifugo` measures Centrifugo v6 the same way, with its
//! `websocket.compression` on (level 1, its default) and the same minimum size:
//! its JSON protocol over `/connection/websocket`, publishing through its HTTP
//! API. Centrifugo may put several publications in one frame (one JSON per
//! line), so there the clients inflate compressed frames and count the
//! publications in each.
//!
//! ```sh
//! cargo build --release -p tidings-server -p tidings-bench
//! target/release/tidings-deflate-bench --runs 3 --payload entity
//! bench/peers/centrifugo/build.sh
//! target/release/tidings-deflate-bench --runs 3 --payload entity --target centrifugo
//! ```

use std::cell::Cell;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use flate2::{Decompress, FlushDecompress, Status};

#[path = "../process_cpu.rs"]
mod process_cpu;
use process_cpu::cpu_of;

const SECRET: &str = "tidings-bench-secret-0123456789abcdef";
const API_KEY: &str = "tidings-bench-api-key-0123456789";
const CHANNEL: &str = "workspace:bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Payload {
    /// One entity change of about 1 KB (an application's status, assignee,
    /// applicant, reviewers' scores), different ids and values per event.
    Entity,
    /// A page of 25 rows of a table, about 3 KB.
    Rows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Plain,
    Deflate,
}

/// The server measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Tidings,
    /// Centrifugo v6 (`bench/peers/centrifugo/build.sh`).
    Centrifugo,
}

/// Bytes and CPU per delivery on /ws, without and with permessage-deflate.
#[derive(Debug, Parser)]
struct Cli {
    /// Subscribed connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Events published per run.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Events published per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Runs per mode (the modes alternate: plain, deflate, plain, …).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, value_enum, default_value = "entity")]
    payload: Payload,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "plain,deflate"
    )]
    modes: Vec<Mode>,
    #[arg(long, value_enum, default_value = "tidings")]
    target: Target,
    /// The server binary (default: target/release/tidings, or
    /// bench/peers/centrifugo/bin/centrifugo with `--target centrifugo`).
    #[arg(long)]
    tidings_bin: Option<PathBuf>,
    /// Core for the server (`taskset -c`); this process takes `--bench-cpu`.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    bench_cpu: usize,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Measured {
    mode: Mode,
    deliveries: u64,
    /// Deliveries published; a server that falls behind delivers fewer within
    /// 30 s of the last publish, and the run reports what did arrive.
    expected: u64,
    compressed_frames: u64,
    wire_bytes_per_delivery: f64,
    cpu_us_per_delivery: f64,
    deflates: f64,
    event_bytes: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    pin_self(cli.bench_cpu);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run_all(cli))
}

async fn run_all(cli: Cli) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = cli.tidings_bin.clone().unwrap_or_else(|| match cli.target {
        Target::Tidings => root.join("target/release/tidings"),
        Target::Centrifugo => root.join("bench/peers/centrifugo/bin/centrifugo"),
    });
    let mut results = Vec::new();
    for run in 1..=cli.runs {
        for &mode in &cli.modes {
            let measured = measure(&cli, &bin, mode).await?;
            let shortfall = if measured.deliveries < measured.expected {
                format!(
                    " (of {}: the rest had not arrived 30 s after the last publish)",
                    measured.expected
                )
            } else {
                String::new()
            };
            println!(
                "run {run} {mode:?}: {} deliveries{shortfall} ({} compressed frames), event {} B, \
                 {:.1} wire B/delivery, {:.3} µs server CPU/delivery, {} deflates",
                measured.deliveries,
                measured.compressed_frames,
                measured.event_bytes,
                measured.wire_bytes_per_delivery,
                measured.cpu_us_per_delivery,
                measured.deflates
            );
            results.push(measured);
        }
    }
    println!(
        "\nsummary ({:?}, {} connections, {} events at {}/s, payload {:?}), min / median / max:",
        cli.target, cli.connections, cli.events, cli.rate, cli.payload
    );
    for &mode in &cli.modes {
        let of_mode: Vec<&Measured> = results.iter().filter(|m| m.mode == mode).collect();
        let bytes = spread(of_mode.iter().map(|m| m.wire_bytes_per_delivery));
        let cpu = spread(of_mode.iter().map(|m| m.cpu_us_per_delivery));
        let complete = of_mode
            .iter()
            .filter(|m| m.deliveries == m.expected)
            .count();
        println!(
            "  {mode:?}: wire B/delivery {:.1} / {:.1} / {:.1}; server CPU µs/delivery {:.3} / {:.3} / {:.3}; \
             every delivery arrived in {complete} of {} runs",
            bytes[0], bytes[1], bytes[2], cpu[0], cpu[1], cpu[2], of_mode.len()
        );
    }
    Ok(())
}

/// Min, median, max.
fn spread(values: impl Iterator<Item = f64>) -> [f64; 3] {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    [v[0], v[v.len() / 2], v[v.len() - 1]]
}

/// Counters shared by every client of a run.
#[derive(Default)]
struct Counts {
    bytes: Cell<u64>,
    text_frames: Cell<u64>,
    compressed: Cell<u64>,
}

async fn measure(cli: &Cli, bin: &PathBuf, mode: Mode) -> Result<Measured> {
    let (mut child, addr, pid) = match cli.target {
        Target::Tidings => start_server(bin, cli.server_cpu).await?,
        Target::Centrifugo => start_centrifugo(bin, cli.server_cpu).await?,
    };
    let counts = Rc::new(Counts::default());
    let mut tasks = Vec::new();
    for i in 0..cli.connections {
        let mut client = connect(&addr, cli.target, i, mode == Mode::Deflate).await?;
        client.subscribe(cli.target).await?;
        let counts = counts.clone();
        let per_line = cli.target == Target::Centrifugo;
        tasks.push(tokio::task::spawn_local(async move {
            let _ = client.count_frames(&counts, per_line).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bytes0, frames0) = (counts.bytes.get(), counts.text_frames.get());
    let cpu0 = cpu_of(pid).context("reading the server's CPU time")?;
    let mut http = BufReader::new(TcpStream::connect(&addr).await?);
    let interval = Duration::from_secs_f64(1.0 / cli.rate);
    let start = Instant::now();
    let mut event_bytes = 0;
    for seq in 0..cli.events {
        tokio::time::sleep_until(start + interval * seq as u32).await;
        let data = match cli.payload {
            Payload::Entity => entity_change(seq),
            Payload::Rows => rows_page(seq),
        };
        event_bytes = data.to_string().len();
        let body = match cli.target {
            Target::Tidings => {
                json!({"channel": CHANNEL, "event": "applications.updated", "data": data})
            }
            Target::Centrifugo => json!({"channel": CHANNEL, "data": data}),
        };
        http_post(&mut http, &addr, cli.target, &body.to_string()).await?;
    }
    let expected = cli.events * cli.connections as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.text_frames.get() - frames0 < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = cpu_of(pid).context("reading the server's CPU time")?;
    let deliveries = counts.text_frames.get() - frames0;
    if deliveries == 0 {
        bail!("{mode:?}: no delivery arrived");
    }
    let metrics = http_get(&addr, "/metrics").await?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let measured = Measured {
        mode,
        deliveries,
        expected,
        compressed_frames: counts.compressed.get(),
        wire_bytes_per_delivery: (counts.bytes.get() - bytes0) as f64 / deliveries as f64,
        cpu_us_per_delivery: (cpu1 - cpu0) * 1e6 / deliveries as f64,
        deflates: metric("tidings_ws_deflate_total "),
        event_bytes,
    };
    for task in tasks {
        task.abort();
    }
    let _ = child.kill().await;
    Ok(measured)
}

/// A realistic entity-change event of about 1 KB; ids, versions and values
/// vary with `seq`.
fn entity_change(seq: u64) -> Value {
    let status = ["under_review", "approved", "needs_changes"][seq as usize % 3];
    json!({
        "entity": {"type": "applications", "id": format!("app_{:06}", seq * 7919 % 1_000_000), "version": seq + 3},
        "changes": {
            "status": {"from": "submitted", "to": status},
            "assignee": {"from": null, "to": {"id": format!("u_{}", 1000 + seq % 97), "name": "Dana Whitfield", "email": "dana.whitfield@example.com"}},
            "updated_at": format!("2026-12-05T20:{:02}:{:02}.{:03}Z", seq / 60 % 60, seq % 60, seq * 37 % 1000)
        },
        "applicant": {"id": format!("p_{}", 50_000 + seq * 13 % 9999), "name": "Marguerite Oyelaran-Castillo", "email": "m.oyelaran@example.org", "phone": "+44 20 7946 0958"},
        "program": {"id": "prg_42", "name": "Early Career Research Fellowship 2027", "cycle": "2027-spring"},
        "scores": [
            {"reviewer": "u_1201", "score": (seq % 9) as f64 / 2.0, "comment": "Strong methodology and clear milestones."},
            {"reviewer": "u_3307", "score": 3.75, "comment": "Budget justification needs more detail."}
        ],
        "tags": ["priority", "resubmission", "international"],
        "actor": {"id": "u_0042", "name": "Priya Raman", "role": "program_manager"}
    })
}

/// A page of 25 table rows (about 3 KB), as a list view's refresh would carry.
fn rows_page(seq: u64) -> Value {
    let rows: Vec<Value> = (0..25)
        .map(|i| {
            let n = seq * 25 + i;
            let status =
                ["submitted", "under_review", "approved", "needs_changes"][(n % 4) as usize];
            json!({
                "id": format!("app_{:06}", n * 7919 % 1_000_000),
                "status": status,
                "applicant": format!("Applicant {}", n * 31 % 977),
                "program": "prg_42",
                "score": (n % 9) as f64 / 2.0,
                "updated_at": format!("2026-12-05T20:{:02}:{:02}Z", n / 60 % 60, n % 60)
            })
        })
        .collect();
    json!({"page": seq, "total": 4210, "rows": rows})
}

/// A hand-written WebSocket client: handshake, one subscribe, then frame
/// counting.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Reset before each message: Centrifugo (gorilla/websocket) takes no
    /// context over between messages.
    inflater: Decompress,
}

async fn connect(addr: &str, target: Target, i: usize, offer_deflate: bool) -> Result<Client> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let token = tidings_auth::mint_hs256(
        SECRET,
        &tidings_auth::MintClaims {
            sub: format!("u{i}"),
            workspaces: vec!["bench".into()],
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    )?;
    // Tidings reads the token from the upgrade; Centrifugo from `connect`.
    let (path, authorization) = match target {
        Target::Tidings => ("/ws", format!("Authorization: Bearer {token}\r\n")),
        Target::Centrifugo => ("/connection/websocket", String::new()),
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {authorization}"
    );
    if offer_deflate {
        request
            .push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
    if !head.starts_with("http/1.1 101") {
        bail!("upgrade refused: {head}");
    }
    if head.contains("permessage-deflate") != offer_deflate {
        bail!("permessage-deflate negotiation differs from the offer: {head}");
    }
    if target == Target::Centrifugo {
        let command = json!({"id": 1, "connect": {"token": token}}).to_string();
        stream.write_all(&masked_text_frame(&command)).await?;
    }
    Ok(Client {
        stream,
        buffer: buffer[end..].to_vec(),
        inflater: Decompress::new(false),
    })
}

impl Client {
    /// Sends `subscribe` and reads until its reply (on Centrifugo, after the
    /// reply to the `connect` that `connect` sent).
    async fn subscribe(&mut self, target: Target) -> Result<()> {
        let (request, reply): (String, &[u8]) = match target {
            Target::Tidings => (
                json!({"type": "subscribe", "channel": CHANNEL, "id": 1}).to_string(),
                b"\"subscribed\"",
            ),
            Target::Centrifugo => (
                json!({"id": 2, "subscribe": {"channel": CHANNEL}}).to_string(),
                b"\"id\":2,",
            ),
        };
        self.stream.write_all(&masked_text_frame(&request)).await?;
        loop {
            let (_, compressed, payload) = self.frame().await?;
            let payload = if compressed {
                self.inflate(&payload)?
            } else {
                payload
            };
            if payload.windows(reply.len()).any(|w| w == reply) {
                return Ok(());
            }
            if payload
                .windows(8)
                .any(|w| w == b"\"error\":" || w == b"disconne")
            {
                bail!("refused: {}", String::from_utf8_lossy(&payload));
            }
        }
    }

    /// The payload of a compressed message (RFC 7692 §7.2.2: the sender
    /// dropped the final empty block's 0x00 0x00 0xff 0xff).
    fn inflate(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        self.inflater.reset(false);
        let mut input = Vec::with_capacity(payload.len() + 4);
        input.extend_from_slice(payload);
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(payload.len() * 4 + 64);
        loop {
            let (consumed, produced) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self.inflater.decompress_vec(
                &input[consumed as usize..],
                &mut out,
                FlushDecompress::Sync,
            )?;
            if self.inflater.total_in() as usize >= input.len() || status == Status::StreamEnd {
                return Ok(out);
            }
            if out.len() < out.capacity()
                && (consumed, produced) == (self.inflater.total_in(), self.inflater.total_out())
            {
                bail!("the compressed message ends early");
            }
            out.reserve(out.capacity().max(1024));
        }
    }

    async fn fill(&mut self, n: usize) -> Result<()> {
        while self.buffer.len() < n {
            let mut chunk = [0; 8192];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("connection closed");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok(())
    }

    /// One frame: opcode, RSV1, payload.
    async fn frame(&mut self) -> Result<(u8, bool, Vec<u8>)> {
        self.fill(2).await?;
        let (header, len) = match self.buffer[1] & 0x7f {
            126 => {
                self.fill(4).await?;
                (
                    4,
                    u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                )
            }
            127 => {
                self.fill(10).await?;
                let mut b = [0; 8];
                b.copy_from_slice(&self.buffer[2..10]);
                (10, u64::from_be_bytes(b) as usize)
            }
            n => (2, n as usize),
        };
        self.fill(header + len).await?;
        let first = self.buffer[0];
        let payload = self.buffer[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        Ok((first & 0x0f, first & 0x40 != 0, payload))
    }

    /// Counts the bytes read and the text frames (compressed or not) until the
    /// connection ends. Parses headers in place without copying payloads;
    /// with `per_line` (Centrifugo) it counts the publications in each frame
    /// instead, inflating the compressed ones.
    async fn count_frames(mut self, counts: &Counts, per_line: bool) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buffer);
        let mut chunk = vec![0; 64 * 1024];
        loop {
            // Whole frames at the front of `buf`.
            let mut at = 0;
            loop {
                let rest = &buf[at..];
                if rest.len() < 2 {
                    break;
                }
                let (header, len) = match rest[1] & 0x7f {
                    126 if rest.len() >= 4 => (4, u16::from_be_bytes([rest[2], rest[3]]) as usize),
                    127 if rest.len() >= 10 => {
                        let mut b = [0; 8];
                        b.copy_from_slice(&rest[2..10]);
                        (10, u64::from_be_bytes(b) as usize)
                    }
                    126 | 127 => break,
                    n => (2, n as usize),
                };
                if rest.len() < header + len {
                    break;
                }
                if rest[0] & 0x0f == 1 {
                    let compressed = rest[0] & 0x40 != 0;
                    let messages = if per_line {
                        let payload = &rest[header..header + len];
                        let publications = |text: &[u8]| {
                            text.windows(6).filter(|w| w == b"\"pub\":").count() as u64
                        };
                        if compressed {
                            publications(&self.inflate(payload)?)
                        } else {
                            publications(payload)
                        }
                    } else {
                        1
                    };
                    counts.text_frames.set(counts.text_frames.get() + messages);
                    if compressed {
                        counts.compressed.set(counts.compressed.get() + 1);
                    }
                }
                at += header + len;
            }
            buf.drain(..at);
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            counts.bytes.set(counts.bytes.get() + n as u64);
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn start_server(bin: &PathBuf, cpu: usize) -> Result<(Child, String, u32)> {
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p tidings-server",
            bin.display()
        );
    }
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(cpu.to_string())
        .arg(bin)
        .args(["--listen", "127.0.0.1:0"])
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_API_KEY", API_KEY)
        .env("TIDINGS_LOG_LEVEL", "warn")
        .env("TIDINGS_CONNECTION_MAX_CONNECTIONS_PER_USER", "1000000")
        .env("TIDINGS_CONNECTION_MAX_CONNECTIONS", "0")
        // No application pings during a run: the clients do not answer them.
        .env("TIDINGS_CONNECTION_HEARTBEAT", "10m")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().context("starting the server")?;
    let pid = child.id().context("no server pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                let addr = rest.split_whitespace().next().unwrap_or(rest);
                return Ok::<_, anyhow::Error>(addr.trim_start_matches("http://").to_owned());
            }
        }
        bail!("the server exited before printing its address")
    })
    .await
    .context("the server did not start within 30 s")??;
    tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // The server pid is taskset's, which execs the server.
    Ok((child, addr, pid))
}

/// A client's text frame (masked, as RFC 6455 requires of clients).
fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81];
    match text.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Publishes one event through the server's HTTP API.
async fn http_post(
    http: &mut BufReader<TcpStream>,
    addr: &str,
    target: Target,
    body: &str,
) -> Result<()> {
    let authorization = match target {
        Target::Tidings => format!("Authorization: Bearer {API_KEY}"),
        Target::Centrifugo => format!("X-API-Key: {API_KEY}"),
    };
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\n{authorization}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    http.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("publish answered {line}");
    }
    let mut length = 0;
    loop {
        line.clear();
        http.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    http.read_exact(&mut body).await?;
    Ok(())
}

/// Starts Centrifugo pinned to `cpu`, configured as the bench's Tidings is:
/// the same HS256 secret and API key, a `workspace` namespace clients may
/// subscribe to with Tidings' default history (100 events, 10 minutes) and
/// recovery, and permessage-deflate at its default level above the same
/// minimum size as Tidings' default (256 bytes).
async fn start_centrifugo(bin: &PathBuf, cpu: usize) -> Result<(Child, String, u32)> {
    if !bin.exists() {
        bail!(
            "{} not found: bench/peers/centrifugo/build.sh",
            bin.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "warn"},
        "client": {
            "token": {"hmac_secret_key": SECRET},
            // No pings during a run: the clients do not answer them.
            "ping_interval": "10m",
            "pong_timeout": "10s",
        },
        "websocket": {"compression": true, "compression_min_size": 256, "compression_level": 1},
        "channel": {"namespaces": [{
            "name": "workspace",
            "allow_subscribe_for_client": true,
            "history_size": 100,
            "history_ttl": "600s",
            "force_recovery": true,
        }]},
        "http_api": {"key": API_KEY},
        "usage_stats": {"disabled": true},
    });
    let path = std::env::temp_dir().join(format!(
        "tidings-deflate-bench-centrifugo-{}-{port}.json",
        std::process::id()
    ));
    std::fs::write(&path, config.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(cpu.to_string())
        .arg(bin)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = command.spawn().context("starting centrifugo")?;
    let pid = child.id().context("no centrifugo pid")?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("centrifugo did not listen on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read at start; listening means it has been.
    let _ = std::fs::remove_file(&path);
    Ok((child, addr, pid))
}

async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn pin_self(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on our own pid (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
