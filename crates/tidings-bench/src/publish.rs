//! Publishing at a fixed rate through the server's HTTP API, over a few
//! keep-alive HTTP/1.1 connections (a minimal client: fixed request, response
//! with Content-Length).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::{now_ns, Proto};

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    server: SocketAddr,
    line: String,
}

impl HttpConn {
    pub async fn connect(server: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(server).await.context("http connect")?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            server,
            line: String::new(),
        })
    }

    /// Sends a request and reads the whole response; returns status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let auth = bearer.map(|key| ("Authorization", format!("Bearer {key}")));
        self.request_with(method, path, auth.as_ref(), body).await
    }

    /// Like `request`, with the credentials in a header of the caller's choice
    /// (Centrifugo's API reads `X-API-Key`).
    pub async fn request_with(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&(&str, String)>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.server,
            body.len()
        );
        if let Some((name, value)) = auth {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut buf = head.into_bytes();
        buf.extend_from_slice(body);
        let stream = self.stream.get_mut();
        stream.write_all(&buf).await?;
        // Status line.
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            bail!("http connection closed");
        }
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {:?}", self.line))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                bail!("http connection closed in headers");
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported by the bench client");
                }
            }
        }
        let mut body = vec![0; length.unwrap_or(0)];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// Where and how to publish.
#[derive(Clone)]
pub struct PublishTarget {
    pub proto: Proto,
    pub server: SocketAddr,
    pub api_key: String,
    pub pad: String,
}

impl PublishTarget {
    fn path(&self, batch: bool) -> &'static str {
        match (self.proto, batch) {
            (Proto::Socketio, false) => "/publish",
            (Proto::Socketio, true) => "/broadcast",
            (_, false) => "/api/publish",
            (_, true) => "/api/broadcast",
        }
    }

    fn auth(&self) -> (&'static str, String) {
        match self.proto {
            Proto::Centrifugo => ("X-API-Key", self.api_key.clone()),
            _ => ("Authorization", format!("Bearer {}", self.api_key)),
        }
    }

    fn data(&self, seq: u64) -> String {
        format!(r#"{{"t":{},"seq":{seq},"pad":"{}"}}"#, now_ns(), self.pad)
    }

    fn body(&self, channel: &str, seq: u64) -> String {
        let channel = self.proto.channel(channel);
        let data = self.data(seq);
        match self.proto {
            // Centrifugo publications have no event name: the data is all.
            Proto::Centrifugo => format!(r#"{{"channel":"{channel}","data":{data}}}"#),
            _ => format!(r#"{{"channel":"{channel}","event":"tick","data":{data}}}"#),
        }
    }

    /// One broadcast of the same data (one timestamp, one sequence number) to
    /// several channels: each server's own batch API (`/api/broadcast` of
    /// Tidings and Centrifugo, the peer's `/broadcast`).
    fn broadcast_body(&self, channels: &[String], seq: u64) -> String {
        let names: Vec<String> = channels.iter().map(|c| self.proto.channel(c)).collect();
        let names = serde_json::to_string(&names).unwrap_or_default();
        let data = self.data(seq);
        match self.proto {
            Proto::Centrifugo => format!(r#"{{"channels":{names},"data":{data}}}"#),
            _ => format!(r#"{{"channels":{names},"event":"tick","data":{data}}}"#),
        }
    }
}

/// Publisher-side counters.
#[derive(Default, Debug, Clone)]
pub struct PublishStats {
    pub sent: u64,
    pub errors: u64,
    /// Largest delay between a publish's scheduled time and its sending.
    pub max_lag: Duration,
    pub first_error: Option<String>,
}

/// A batch of publishes: `count` events at `rate` per second, round-robin over
/// `channels`; event `i` goes to `channels[i % n]` with sequence number
/// `seq_base + i / n`.
pub struct Plan {
    pub channels: Rc<Vec<String>>,
    pub rate: f64,
    pub count: u64,
    pub seq_base: u64,
    pub workers: usize,
    /// Events per HTTP request: above 1, `batch` consecutive events (the same
    /// sequence number on consecutive channels) go out as one broadcast,
    /// sent when the first of them is due. Must divide the channel count.
    pub batch: u64,
    /// Hard stop, whatever is left.
    pub deadline: Instant,
}

/// Runs `plan` to completion (or its deadline) and returns the counters.
pub async fn run(target: &PublishTarget, plan: Plan) -> Result<PublishStats> {
    let next = Rc::new(Cell::new(0u64));
    let stats = Rc::new(RefCell::new(PublishStats::default()));
    let start = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..plan.workers.max(1) {
        conns.push(HttpConn::connect(target.server).await?);
    }
    let n = plan.channels.len() as u64;
    // A batch never spans two rounds over the channels (two sequence numbers).
    let batch = if plan.batch > 1 && n.is_multiple_of(plan.batch) {
        plan.batch
    } else {
        1
    };
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let auth = target.auth();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let stats = stats.clone();
        let channels = plan.channels.clone();
        let target = target.clone();
        let auth = auth.clone();
        let (count, seq_base, deadline) = (plan.count, plan.seq_base, plan.deadline);
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= count {
                    break;
                }
                let events = batch.min(count - i);
                next.set(i + events);
                let at = start + interval.mul_f64(i as f64);
                if at >= deadline {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    tokio::time::sleep_until(at).await;
                } else {
                    let lag = now - at;
                    let mut s = stats.borrow_mut();
                    if lag > s.max_lag {
                        s.max_lag = lag;
                    }
                }
                let first = (i % n) as usize;
                let body = if batch > 1 {
                    target
                        .broadcast_body(&channels[first..first + events as usize], seq_base + i / n)
                } else {
                    target.body(&channels[first], seq_base + i / n)
                };
                let result = conn
                    .request_with("POST", target.path(batch > 1), Some(&auth), body.as_bytes())
                    .await;
                let reconnect = {
                    let mut s = stats.borrow_mut();
                    match result {
                        // Centrifugo reports a refused publish as 200 with an
                        // `error` object in the body.
                        Ok((200..=299, body))
                            if target.proto == Proto::Centrifugo
                                && body.starts_with(br#"{"error""#) =>
                        {
                            s.errors += events;
                            if s.first_error.is_none() {
                                s.first_error = Some(String::from_utf8_lossy(&body).into_owned());
                            }
                            false
                        }
                        Ok((200..=299, _)) => {
                            s.sent += events;
                            false
                        }
                        Ok((status, body)) => {
                            s.errors += events;
                            if s.first_error.is_none() {
                                s.first_error = Some(format!(
                                    "HTTP {status}: {}",
                                    String::from_utf8_lossy(&body)
                                ));
                            }
                            false
                        }
                        Err(err) => {
                            s.errors += events;
                            if s.first_error.is_none() {
                                s.first_error = Some(format!("{err:#}"));
                            }
                            true
                        }
                    }
                };
                if reconnect {
                    // Reconnect and go on.
                    match HttpConn::connect(target.server).await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let out = stats.borrow().clone();
    Ok(out)
}
