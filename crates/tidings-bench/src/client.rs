//! The load generator's WebSocket clients: one task per connection, speaking
//! the Tidings protocol, Socket.IO v4 (Engine.IO v4 framing over a plain
//! WebSocket) or Centrifugo's JSON protocol, all on one thread sharing one set
//! of counters. The floor targets speak the Tidings protocol.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Which server protocol a client speaks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Tidings wire protocol v1 on `/ws`.
    Tidings,
    /// Socket.IO v4 on `/socket.io/?EIO=4&transport=websocket`.
    Socketio,
    /// The same Socket.IO client against the Tidings server's own `/socket.io/`.
    #[serde(rename = "tidings-socketio")]
    #[value(name = "tidings-socketio")]
    TidingsSocketio,
    /// Centrifugo v6, JSON protocol on `/connection/websocket`, publishing
    /// through its HTTP API.
    Centrifugo,
    /// The floor: `tidings-bench floor-server` writing one pre-built frame to
    /// every socket, one write syscall per socket per publish.
    #[serde(rename = "floor-write")]
    #[value(name = "floor-write")]
    FloorWrite,
    /// The floor, batched: the same frames, written by one sweep over the
    /// sockets with every frame queued for a socket in one `writev`.
    #[serde(rename = "floor-batched")]
    #[value(name = "floor-batched")]
    FloorBatched,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Tidings => "Tidings",
            Proto::Socketio => "Socket.IO",
            Proto::TidingsSocketio => "Tidings /socket.io/",
            Proto::Centrifugo => "Centrifugo",
            Proto::FloorWrite => "floor-write",
            Proto::FloorBatched => "floor-batched",
        }
    }

    /// The name on the command line (`--target`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tidings => "tidings",
            Proto::Socketio => "socketio",
            Proto::TidingsSocketio => "tidings-socketio",
            Proto::Centrifugo => "centrifugo",
            Proto::FloorWrite => "floor-write",
            Proto::FloorBatched => "floor-batched",
        }
    }

    /// The protocol the clients speak (Tidings' `/socket.io/` speaks Socket.IO,
    /// the floor server the Tidings protocol).
    pub fn wire(self) -> Proto {
        match self {
            Proto::TidingsSocketio => Proto::Socketio,
            Proto::FloorWrite | Proto::FloorBatched => Proto::Tidings,
            p => p,
        }
    }

    /// Whether this target is the kernel floor rather than a server.
    pub fn is_floor(self) -> bool {
        matches!(self, Proto::FloorWrite | Proto::FloorBatched)
    }

    /// The channel name this server uses for one of the bench's channels.
    /// Centrifugo limits a channel to one user with `#user` after the name
    /// (`allow_user_limited_channels`), its equivalent of Tidings' rule that only
    /// `u1` may subscribe to `user:u1`.
    pub fn channel(self, name: &str) -> String {
        match (self, name.strip_prefix("user:")) {
            (Proto::Centrifugo, Some(user)) => format!("user:#{user}"),
            _ => name.to_owned(),
        }
    }
}

/// A command broadcast to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Nothing to do.
    Idle,
    /// Send one application-level ping (round number); count the replies.
    Ping(u32),
    /// Close cleanly and end.
    Close,
}

/// Counters shared by every connection (single-threaded runtime: no locking).
pub struct Stats {
    /// Latency of deliveries recorded while `recording`, in microseconds.
    pub hist: Histogram<u64>,
    pub recording: bool,
    pub late_us: u64,
    pub received: u64,
    pub late: u64,
    /// Sequence numbers skipped (events that never arrived on a connection).
    pub gaps: u64,
    /// Sequence numbers seen again with no gap open (duplicates).
    pub dups: u64,
    /// Sequence numbers that arrived after a later one (publishes reordered).
    pub reordered: u64,
    /// Connections fully set up (connected and subscribed).
    pub ready: u64,
    pub connect_errors: u64,
    /// Connections that ended without being asked to.
    pub disconnects: u64,
    pub pongs: u64,
    pub first_errors: Vec<String>,
}

impl Stats {
    pub fn new(late_ms: u64) -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            recording: false,
            late_us: late_ms * 1000,
            received: 0,
            late: 0,
            gaps: 0,
            dups: 0,
            reordered: 0,
            ready: 0,
            connect_errors: 0,
            disconnects: 0,
            pongs: 0,
            first_errors: Vec::new(),
        }
    }

    pub fn error(&mut self, what: String) {
        if self.first_errors.len() < 5 {
            self.first_errors.push(what);
        }
    }

    fn on_event(&mut self, t_ns: u64, seq: u64, next_seq: &mut u64) {
        let now = now_ns();
        let latency_us = now.saturating_sub(t_ns) / 1000;
        self.received += 1;
        if self.recording {
            self.hist.saturating_record(latency_us.max(1));
        }
        if latency_us > self.late_us {
            self.late += 1;
        }
        // Concurrent HTTP publishes may be ordered differently by the server
        // than their sequence numbers: a skipped number counts as a gap until it
        // arrives late, so `gaps` ends as the numbers never seen.
        if seq >= *next_seq {
            self.gaps += seq - *next_seq;
            *next_seq = seq + 1;
        } else if self.gaps > 0 {
            self.gaps -= 1;
            self.reordered += 1;
        } else {
            self.dups += 1;
        }
    }
}

pub type SharedStats = Rc<RefCell<Stats>>;

/// Wall-clock nanoseconds since the Unix epoch (the payload timestamp).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Everything one connection needs.
pub struct ConnSpec {
    pub proto: Proto,
    pub server: SocketAddr,
    pub source: IpAddr,
    pub token: String,
    pub channels: Vec<String>,
    /// Sequence number of the first event this connection expects.
    pub first_seq: u64,
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the generator holds tens of thousands of these.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn tcp_connect(source: IpAddr, server: SocketAddr) -> Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Pick the port at connect time, so each source address gets its own
    // ~28k ephemeral ports towards the server port.
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, with a valid int pointer.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    socket.set_nodelay(true)?;
    let stream = socket.connect(server).await.context("tcp connect")?;
    Ok(stream)
}

type Ws = WebSocketStream<TcpStream>;

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("closed during setup: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("connection ended during setup"),
        }
    }
}

async fn setup_tidings(spec: &ConnSpec, ws: &mut Ws) -> Result<()> {
    let first = next_text(ws).await?;
    if !first.contains("\"connected\"") {
        bail!("expected connected, got {first}");
    }
    for (i, channel) in spec.channels.iter().enumerate() {
        let req = format!(
            r#"{{"type":"subscribe","id":{},"channel":"{}"}}"#,
            i + 1,
            channel
        );
        ws.send(Message::text(req)).await?;
    }
    let mut pending = spec.channels.len();
    while pending > 0 {
        let text = next_text(ws).await?;
        if text.contains("\"subscribed\"") {
            pending -= 1;
        } else if text.starts_with(r#"{"type":"ping""#) {
            ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
        } else if text.contains("\"error\"") {
            bail!("subscribe refused: {text}");
        }
    }
    Ok(())
}

async fn setup_socketio(spec: &ConnSpec, ws: &mut Ws) -> Result<()> {
    let open = next_text(ws).await?;
    if !open.starts_with('0') {
        bail!("expected engine.io open packet, got {open}");
    }
    let token = serde_json::to_string(&spec.token)?;
    ws.send(Message::text(format!(r#"40{{"token":{token}}}"#)))
        .await?;
    loop {
        let text = next_text(ws).await?;
        if text.starts_with("40") {
            break;
        } else if text.starts_with("44") {
            bail!("socket.io connect refused: {text}");
        } else if text == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
    for (i, channel) in spec.channels.iter().enumerate() {
        let req = format!(r#"42{}["subscribe","{}"]"#, i + 1, channel);
        ws.send(Message::text(req)).await?;
    }
    let mut pending = spec.channels.len();
    while pending > 0 {
        let text = next_text(ws).await?;
        if text.starts_with("43") {
            // Tidings' /socket.io/ has already joined `user:` and `workspace:`
            // rooms on connect from the token.
            if !text.contains("true") && !text.contains("already_subscribed") {
                bail!("subscribe refused: {text}");
            }
            pending -= 1;
        } else if text == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
    Ok(())
}

/// Command ids of Centrifugo setup: connect is 1, subscriptions follow.
/// Application pings (the idle scenario's round trips) use ids above this.
const CENTRIFUGO_PING_ID: u64 = 1_000_000;

async fn setup_centrifugo(spec: &ConnSpec, ws: &mut Ws) -> Result<()> {
    let token = serde_json::to_string(&spec.token)?;
    // Connect and subscriptions go in one frame, newline-separated, as
    // centrifuge-js batches them; the server answers each in order.
    let mut batch = format!(r#"{{"id":1,"connect":{{"token":{token}}}}}"#);
    for (i, channel) in spec.channels.iter().enumerate() {
        let channel = serde_json::to_string(&spec.proto.channel(channel))?;
        batch.push_str(&format!(
            "\n{{\"id\":{},\"subscribe\":{{\"channel\":{channel}}}}}",
            i + 2
        ));
    }
    ws.send(Message::text(batch)).await?;
    let mut pending = spec.channels.len() + 1;
    while pending > 0 {
        let text = next_text(ws).await?;
        for line in text.lines() {
            if line.contains("\"error\"") {
                bail!("centrifugo refused: {line}");
            } else if line.contains("\"connect\":") || line.contains("\"subscribe\":") {
                pending = pending.saturating_sub(1);
            } else if line == "{}" {
                ws.send(Message::text("{}")).await?;
            } else if line.contains("\"disconnect\"") {
                bail!("centrifugo disconnect: {line}");
            }
        }
    }
    Ok(())
}

/// The keys the generator looks for in every delivery, each searcher built
/// once: building a `str::find` searcher per lookup cost more than the search
/// (a fifth of the generator's CPU at 600k deliveries/s).
struct Keys {
    data: Finder<'static>,
    t: Finder<'static>,
    seq: Finder<'static>,
    id: Finder<'static>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    data: Finder::new(b"\"data\""),
    t: Finder::new(b"\"t\":"),
    seq: Finder::new(b"\"seq\":"),
    id: Finder::new(b"\"id\":"),
});

/// Finds `key` (e.g. `"seq":`) after `from` and parses the unsigned integer after it.
fn number_after(text: &str, key: &Finder<'_>, from: usize) -> Option<u64> {
    let at = key.find(text.as_bytes().get(from..)?)? + from + key.needle().len();
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `(t, seq)` of an event's payload `{"t":…,"seq":…}`.
/// Tidings' `/socket.io/` emits the data itself as the first argument (no
/// `"data"` key), before the metadata, so the search starts at the beginning.
fn payload_numbers(text: &str) -> Option<(u64, u64)> {
    let keys = &*KEYS;
    let data = keys.data.find(text.as_bytes()).unwrap_or(0);
    let t = number_after(text, &keys.t, data)?;
    Some((t, number_after(text, &keys.seq, data)?))
}

/// Runs one connection: connect, set up, then count deliveries until told to close.
pub async fn run_connection(spec: ConnSpec, stats: SharedStats, mut cmd: watch::Receiver<Cmd>) {
    let setup = async {
        let stream = tcp_connect(spec.source, spec.server).await?;
        let url = match spec.proto.wire() {
            Proto::Socketio => {
                format!("ws://{}/socket.io/?EIO=4&transport=websocket", spec.server)
            }
            Proto::Centrifugo => format!("ws://{}/connection/websocket", spec.server),
            _ => format!("ws://{}/ws?token={}", spec.server, spec.token),
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
                .await
                .context("websocket handshake")?;
        match spec.proto.wire() {
            Proto::Socketio => setup_socketio(&spec, &mut ws).await?,
            Proto::Centrifugo => setup_centrifugo(&spec, &mut ws).await?,
            _ => setup_tidings(&spec, &mut ws).await?,
        }
        Ok::<_, anyhow::Error>(ws)
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(30), setup).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            let mut s = stats.borrow_mut();
            s.connect_errors += 1;
            s.error(format!("{err:#}"));
            return;
        }
        Err(_) => {
            let mut s = stats.borrow_mut();
            s.connect_errors += 1;
            s.error("setup timed out after 30 s".into());
            return;
        }
    };
    stats.borrow_mut().ready += 1;
    let mut next_seq = spec.first_seq;
    let end: Result<()> = async {
        loop {
            tokio::select! {
                biased;
                changed = cmd.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let command = *cmd.borrow_and_update();
                    match command {
                        Cmd::Idle => {}
                        Cmd::Close => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                            return Ok(());
                        }
                        Cmd::Ping(round) => {
                            let msg = match spec.proto.wire() {
                                Proto::Socketio => format!(r#"42{round}["echo"]"#),
                                // Centrifugo's protocol v2 has no client ping
                                // (its `ping` command ends the connection with
                                // 3501 "bad request"). A history request for
                                // the position only (limit 0) is the cheapest
                                // request with a reply: a round trip through
                                // the connection's reader and writer. (Presence
                                // stats would count the channel's 18k members
                                // for every ping.)
                                Proto::Centrifugo => format!(
                                    r#"{{"id":{},"history":{{"channel":"workspace:bench","limit":0}}}}"#,
                                    CENTRIFUGO_PING_ID + u64::from(round)
                                ),
                                _ => format!(r#"{{"type":"ping","id":{round}}}"#),
                            };
                            ws.send(Message::text(msg)).await?;
                        }
                    }
                }
                frame = ws.next() => {
                    on_frame(&mut ws, spec.proto, &stats, &mut next_seq, frame).await?;
                    // Read what else has already arrived before going back to
                    // the select: one command-watch registration per wake-up,
                    // not per frame (5% of the generator at 600k deliveries/s).
                    for _ in 0..FRAMES_PER_WAKE {
                        let Some(frame) = ws.next().now_or_never() else {
                            break;
                        };
                        on_frame(&mut ws, spec.proto, &stats, &mut next_seq, frame).await?;
                    }
                }
            }
        }
    }
    .await;
    if let Err(err) = end {
        let mut s = stats.borrow_mut();
        s.disconnects += 1;
        s.error(format!("{err:#}"));
    }
}

/// Frames handled after a wake-up before the connection looks at its
/// commands again.
const FRAMES_PER_WAKE: usize = 64;

/// Handles one frame of a connection: counts an event, answers a ping, or
/// ends the connection on a close or a server disconnect.
async fn on_frame(
    ws: &mut Ws,
    proto: Proto,
    stats: &SharedStats,
    next_seq: &mut u64,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<()> {
    let text = match frame {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(frame))) => return Err(anyhow!("server closed: {frame:?}")),
        Some(Ok(_)) => return Ok(()),
        Some(Err(err)) => return Err(err.into()),
        None => return Err(anyhow!("connection ended")),
    };
    let text = text.as_str();
    match proto.wire() {
        Proto::Centrifugo => {
            // Several replies may share one frame, one per line.
            for line in text.lines() {
                if line.starts_with(r#"{"push":"#) {
                    if line.contains(r#""pub":"#) {
                        if let Some((t, seq)) = payload_numbers(line) {
                            stats.borrow_mut().on_event(t, seq, next_seq);
                        }
                    } else if line.contains(r#""disconnect":"#) {
                        return Err(anyhow!("server disconnect: {line}"));
                    }
                } else if line == "{}" {
                    ws.send(Message::text("{}")).await?;
                } else if number_after(line, &KEYS.id, 0).is_some_and(|id| id > CENTRIFUGO_PING_ID)
                {
                    stats.borrow_mut().pongs += 1;
                }
            }
        }
        Proto::Tidings | Proto::FloorWrite | Proto::FloorBatched => {
            if text.starts_with(r#"{"type":"event""#) {
                if let Some((t, seq)) = payload_numbers(text) {
                    stats.borrow_mut().on_event(t, seq, next_seq);
                }
            } else if text.starts_with(r#"{"type":"ping""#) {
                ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
            } else if text.starts_with(r#"{"type":"pong""#) {
                stats.borrow_mut().pongs += 1;
            } else if text.starts_with(r#"{"type":"disconnect""#) {
                return Err(anyhow!("server disconnect: {text}"));
            }
        }
        Proto::Socketio | Proto::TidingsSocketio => {
            if text.starts_with("42") {
                if let Some((t, seq)) = payload_numbers(text) {
                    stats.borrow_mut().on_event(t, seq, next_seq);
                }
            } else if text == "2" {
                ws.send(Message::text("3")).await?;
            } else if text.starts_with("43") {
                stats.borrow_mut().pongs += 1;
            } else if text.starts_with("41") || text.starts_with('1') {
                return Err(anyhow!("server disconnect: {text}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payload_numbers_of_both_protocols() {
        let tidings = r#"{"type":"event","channel":"workspace:bench","offset":7,"id":"e_1","event":"tick","ts":"2026-01-01T00:00:00.000Z","data":{"t":123456789,"seq":6,"pad":"xx"}}"#;
        assert_eq!(payload_numbers(tidings), Some((123456789, 6)));
        let sio = r#"42["tick",{"channel":"workspace:bench","data":{"t":42,"seq":0,"pad":""}}]"#;
        assert_eq!(payload_numbers(sio), Some((42, 0)));
        assert_eq!(payload_numbers(r#"{"type":"pong"}"#), None);
        let centrifugo = r#"{"push":{"channel":"workspace:bench","pub":{"data":{"t":77,"seq":3,"pad":"x"},"offset":4}}}"#;
        assert_eq!(payload_numbers(centrifugo), Some((77, 3)));
    }

    #[test]
    fn centrifugo_limits_user_channels_to_their_user() {
        assert_eq!(Proto::Centrifugo.channel("user:u7"), "user:#u7");
        assert_eq!(
            Proto::Centrifugo.channel("workspace:bench"),
            "workspace:bench"
        );
        assert_eq!(Proto::Tidings.channel("user:u7"), "user:u7");
    }
}
