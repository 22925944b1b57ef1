//! The floor: what the kernel alone costs to deliver one frame to N loopback
//! sockets from one core, with no server logic, so every server's fan-out
//! latency can be read as "× the floor".
//!
//! `tidings-bench floor-server` (hidden) is started pinned to the servers' core.
//! It accepts WebSocket connections (a real RFC 6455 handshake), answers the
//! Tidings protocol's setup (`connected`, `subscribed`, `pong`) so the same
//! generator drives it, and on each `POST /api/publish` builds one text frame
//! shaped like a Tidings publication (same fields, so the same size) and writes
//! those identical bytes to every subscriber of the channel:
//!
//! - `floor-write`: one `write` per socket, in a loop, right after the publish.
//! - `floor-batched`: the frame is queued on every socket and one sweep task
//!   writes each dirty socket once with `writev`, carrying every frame queued
//!   for it since its last write. The sweep yields to the HTTP reader every
//!   256 sockets, so publishes that arrive during a sweep join the queues and
//!   go out in the same syscall. Linux has no syscall that writes to many TCP
//!   sockets at once (short of io_uring), so coalescing per socket is the most
//!   one core can batch.
//!
//! A socket that cannot take a whole frame keeps the rest queued and its own
//! task finishes it when the socket is writable. Single-threaded (one core):
//! the state is `Rc`/`RefCell`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::client::Proto;
use crate::server::{free_port, Launch, Server};

/// How the floor server writes a publication to its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One write syscall per socket per publication.
    Write,
    /// One `writev` per dirty socket per sweep, with every frame queued for it.
    Batched,
}

/// Starts `tidings-bench floor-server` (this binary) pinned like the servers.
pub async fn start(launch: &Launch, proto: Proto) -> Result<Server> {
    let exe = std::env::current_exe().context("finding the tidings-bench binary")?;
    let addr = free_port()?;
    let mode = match proto {
        Proto::FloorBatched => "batched",
        _ => "write",
    };
    let mut command = launch.pinned(&exe);
    command
        .args(["floor-server", "--floor-mode", mode, "--floor-addr"])
        .arg(addr.to_string());
    launch.spawn_and_wait(proto, command, addr, None).await
}

/// One subscriber socket.
struct Conn {
    stream: TcpStream,
    /// Frames not yet fully written; `head` bytes of the first are written.
    out: RefCell<VecDeque<Rc<[u8]>>>,
    head: Cell<usize>,
    /// In the sweep's dirty list (batched mode).
    queued: Cell<bool>,
    closed: Cell<bool>,
    /// Tells the socket's task that frames wait for the socket to be writable.
    wake: Notify,
}

impl Conn {
    /// Writes as much of the queue as the socket takes in one `writev`.
    /// Returns whether anything is left.
    fn flush(&self) -> bool {
        let mut out = self.out.borrow_mut();
        if out.is_empty() || self.closed.get() {
            return false;
        }
        let head = self.head.get();
        let slices: Vec<IoSlice<'_>> = out
            .iter()
            .take(64)
            .enumerate()
            .map(|(i, f)| IoSlice::new(if i == 0 { &f[head..] } else { f }))
            .collect();
        match self.stream.try_write_vectored(&slices) {
            Ok(mut n) => {
                drop(slices);
                let mut head = head;
                while let Some(front) = out.front() {
                    let left = front.len() - head;
                    if n >= left {
                        n -= left;
                        head = 0;
                        out.pop_front();
                    } else {
                        head += n;
                        break;
                    }
                }
                self.head.set(head);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.closed.set(true);
                out.clear();
            }
        }
        !out.is_empty()
    }

    /// Queues `frame` and writes it now (write mode, replies).
    fn send(&self, frame: Rc<[u8]>) {
        if self.closed.get() {
            return;
        }
        let idle = self.out.borrow().is_empty();
        if idle {
            // The common case: one write syscall for this socket.
            match self.stream.try_write(&frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => {
                    self.head.set(n);
                    self.out.borrow_mut().push_back(frame);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.head.set(0);
                    self.out.borrow_mut().push_back(frame);
                }
                Err(_) => {
                    self.closed.set(true);
                    return;
                }
            }
        } else {
            self.out.borrow_mut().push_back(frame);
        }
        self.wake.notify_one();
    }
}

/// The whole server's state.
struct Floor {
    mode: Mode,
    channels: RefCell<HashMap<String, Vec<Rc<Conn>>>>,
    offsets: RefCell<HashMap<String, u64>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    sweep: Notify,
    next_client: Cell<u64>,
}

/// A server → client text frame (unmasked).
fn text_frame(payload: &[u8]) -> Rc<[u8]> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f.into()
}

/// The frame of one publication: the fields of a Tidings event, in its order,
/// so the frame has a Tidings publication's size.
fn event_frame(channel: &str, offset: u64, event: &str, data: &str) -> Rc<[u8]> {
    let now = crate::report::now_utc();
    let ts = format!("{}.000Z", now.trim_end_matches('Z'));
    let payload = format!(
        r#"{{"type":"event","channel":{},"offset":{offset},"id":"e_{offset}","event":{},"ts":"{ts}","data":{data}}}"#,
        serde_json::Value::from(channel),
        serde_json::Value::from(event),
    );
    text_frame(payload.as_bytes())
}

/// Runs the floor server until killed.
pub fn serve(addr: SocketAddr, mode: Mode) -> Result<()> {
    crate::server::raise_fd_limit(1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("listening on {}", listener.local_addr()?);
        let floor = Rc::new(Floor {
            mode,
            channels: RefCell::new(HashMap::new()),
            offsets: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            sweep: Notify::new(),
            next_client: Cell::new(0),
        });
        if mode == Mode::Batched {
            tokio::task::spawn_local(sweeper(floor.clone()));
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                // EMFILE and the like: wait and go on rather than end the floor.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let floor = floor.clone();
            tokio::task::spawn_local(async move {
                let _ = accept(floor, stream).await;
            });
        }
    })
}

/// The batched mode's writer: one `writev` per dirty socket, yielding every
/// 256 sockets so publishes read meanwhile join the queues.
async fn sweeper(floor: Rc<Floor>) {
    loop {
        floor.sweep.notified().await;
        loop {
            let dirty = std::mem::take(&mut *floor.dirty.borrow_mut());
            if dirty.is_empty() {
                break;
            }
            for (i, conn) in dirty.iter().enumerate() {
                conn.queued.set(false);
                if conn.flush() {
                    conn.wake.notify_one();
                }
                if i % 256 == 255 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Reads an HTTP request head; routes to the WebSocket or the publish handler.
async fn accept(floor: Rc<Floor>, stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(());
    }
    if line.starts_with("GET ") {
        let headers = read_headers(&mut reader).await?;
        let key = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|(_, v)| v.clone())
            .context("no Sec-WebSocket-Key")?;
        let leftover = reader.buffer().to_vec();
        let mut stream = reader.into_inner();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await?;
        websocket(floor, stream, leftover).await
    } else {
        publishes(floor, reader, line).await
    }
}

async fn read_headers(reader: &mut BufReader<TcpStream>) -> Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("connection closed in headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(headers);
        }
        if headers.len() > 100 {
            bail!("too many headers");
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// Keep-alive `POST /api/publish` requests: answer, then fan out.
async fn publishes(
    floor: Rc<Floor>,
    mut reader: BufReader<TcpStream>,
    mut line: String,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        channel: Option<String>,
        /// `/api/broadcast`: the same data to each.
        #[serde(default)]
        channels: Vec<String>,
        #[serde(default)]
        event: Option<String>,
        data: serde_json::Value,
    }
    loop {
        let headers = read_headers(&mut reader).await?;
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(1 << 20);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        match serde_json::from_slice::<Body>(&body) {
            Ok(mut b) if line.starts_with("POST ") => {
                let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                reader.get_mut().write_all(reply.as_bytes()).await?;
                let data = b.data.to_string();
                let event = b.event.as_deref().unwrap_or("tick");
                b.channels.extend(b.channel.take());
                for channel in &b.channels {
                    let offset = {
                        let mut offsets = floor.offsets.borrow_mut();
                        let o = offsets.entry(channel.clone()).or_insert(0);
                        *o += 1;
                        *o
                    };
                    fan_out(&floor, channel, event_frame(channel, offset, event, &data));
                }
            }
            _ => {
                let reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
                reader.get_mut().write_all(reply.as_bytes()).await?;
            }
        }
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
    }
}

/// Hands one frame to every subscriber of `channel`.
fn fan_out(floor: &Floor, channel: &str, frame: Rc<[u8]>) {
    let mut channels = floor.channels.borrow_mut();
    let Some(subs) = channels.get_mut(channel) else {
        return;
    };
    subs.retain(|c| !c.closed.get());
    match floor.mode {
        Mode::Write => {
            for conn in subs.iter() {
                conn.send(frame.clone());
            }
        }
        Mode::Batched => {
            let mut dirty = floor.dirty.borrow_mut();
            for conn in subs.iter() {
                conn.out.borrow_mut().push_back(frame.clone());
                if !conn.queued.replace(true) {
                    dirty.push(conn.clone());
                }
            }
            floor.sweep.notify_one();
        }
    }
}

/// One WebSocket: the Tidings setup replies, then only pings, pongs and close;
/// also finishes writes the socket could not take at once.
async fn websocket(floor: Rc<Floor>, stream: TcpStream, mut buf: Vec<u8>) -> Result<()> {
    let client = floor.next_client.get();
    floor.next_client.set(client + 1);
    let conn = Rc::new(Conn {
        stream,
        out: RefCell::new(VecDeque::new()),
        head: Cell::new(0),
        queued: Cell::new(false),
        closed: Cell::new(false),
        wake: Notify::new(),
    });
    conn.send(text_frame(
        format!(r#"{{"type":"connected","client":"c{client}"}}"#).as_bytes(),
    ));
    let mut chunk = [0u8; 4096];
    while !conn.closed.get() {
        let pending = !conn.out.borrow().is_empty();
        tokio::select! {
            r = conn.stream.readable() => {
                r?;
                match conn.stream.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > 1 << 20 {
                            break;
                        }
                        while let Some((opcode, payload, used)) = parse_client_frame(&buf) {
                            buf.drain(..used);
                            on_frame(&floor, &conn, opcode, &payload);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            w = conn.stream.writable(), if pending => {
                w?;
                conn.flush();
            }
            _ = conn.wake.notified() => {}
        }
    }
    conn.closed.set(true);
    Ok(())
}

/// One masked client frame at the start of `buf`: opcode, unmasked payload,
/// bytes used. `None` until the frame is complete.
fn parse_client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)?;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = if masked {
        let m = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        m
    } else {
        [0; 4]
    };
    let end = at.checked_add(len)?;
    let payload = buf
        .get(at..end)?
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((b0 & 0x0f, payload, end))
}

/// The Tidings protocol, as far as the generator uses it outside publications.
fn on_frame(floor: &Floor, conn: &Rc<Conn>, opcode: u8, payload: &[u8]) {
    match opcode {
        // Text: subscribe, ping, pong.
        0x1 => {
            let Ok(msg) = serde_json::from_slice::<serde_json::Value>(payload) else {
                return;
            };
            let id = msg.get("id").cloned().unwrap_or(serde_json::Value::Null);
            match msg.get("type").and_then(|t| t.as_str()) {
                Some("subscribe") => {
                    let Some(channel) = msg.get("channel").and_then(|c| c.as_str()) else {
                        return;
                    };
                    floor
                        .channels
                        .borrow_mut()
                        .entry(channel.to_owned())
                        .or_default()
                        .push(conn.clone());
                    let reply = serde_json::json!({
                        "type": "subscribed", "id": id, "channel": channel, "offset": 0,
                    });
                    conn.send(text_frame(reply.to_string().as_bytes()));
                }
                Some("ping") => {
                    let reply = serde_json::json!({ "type": "pong", "id": id });
                    conn.send(text_frame(reply.to_string().as_bytes()));
                }
                _ => {}
            }
        }
        // Close: answer and end.
        0x8 => {
            conn.send(Rc::from(&[0x88u8, 0x00][..]));
            conn.closed.set(true);
        }
        // Ping: pong with the same payload.
        0x9 if payload.len() < 126 => {
            let mut f = vec![0x8a, payload.len() as u8];
            f.extend_from_slice(payload);
            conn.send(f.into());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masked_client_frames() {
        let payload = br#"{"type":"ping","id":1}"#;
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        assert_eq!(parse_client_frame(&f[..f.len() - 1]), None);
        let (op, p, used) = parse_client_frame(&f).expect("a whole frame");
        assert_eq!((op, p.as_slice(), used), (1, &payload[..], f.len()));
    }

    #[test]
    fn event_frames_have_the_tidings_fields() {
        let f = event_frame("workspace:bench", 7, "tick", r#"{"t":1,"seq":0}"#);
        assert_eq!(f[0], 0x81);
        // Over 125 bytes: a 16-bit extended length.
        assert_eq!(f[1], 126);
        let text = std::str::from_utf8(&f[4..]).expect("utf-8");
        assert!(text.starts_with(r#"{"type":"event","channel":"workspace:bench","offset":7,"id":"e_7","event":"tick","ts":""#));
        assert!(text.ends_with(r#""data":{"t":1,"seq":0}}"#));
        assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, text.len());
    }
}
