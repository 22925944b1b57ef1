//! What the process tests share: free ports, scratch directories, processes
//! killed on drop, a `redis-server` of the test's own, and a WebSocket reader.
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty scratch directory named after `what`, removed with its contents
/// on drop (so the test suites leave nothing behind in the temp directory).
pub struct ScratchDir(PathBuf);

impl Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty scratch directory named after `what`.
pub fn temp_dir(what: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("tidings-test-{what}-{}", free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// A file written in a scratch directory of its own; both go on drop.
pub struct ScratchFile {
    path: PathBuf,
    _dir: ScratchDir,
}

impl ScratchFile {
    /// Writes `body` to `name` in a new scratch directory named after `what`.
    pub fn write(what: &str, name: &str, body: &str) -> Self {
        let dir = temp_dir(what);
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        Self { path, _dir: dir }
    }
}

impl Deref for ScratchFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for ScratchFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// Waits until something accepts connections on `port` (30 s at most).
pub async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process stopped with SIGKILL on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` without persistence in a scratch directory, stopped and
/// removed on drop.
pub struct Redis {
    _process: Process,
    pub port: u16,
    // Declared after the process, so it is removed once redis-server is gone.
    _dir: ScratchDir,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// A `redis-server` on a free port.
pub async fn start_redis() -> Redis {
    start_redis_on(free_port()).await
}

/// A `redis-server` on `port` (a restart on the port a stopped one had).
pub async fn start_redis_on(port: u16) -> Redis {
    start_redis_with(port, &[]).await
}

/// A `redis-server` on `port` with `extra` arguments (`--requirepass …`).
pub async fn start_redis_with(port: u16, extra: &[&str]) -> Redis {
    let dir = temp_dir("redis");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(&*dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
    let redis = Redis {
        _process: Process(child),
        port,
        _dir: dir,
    };
    wait_listening(port).await;
    redis
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message, answering pings; None on close, error or timeout.
pub async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).ok()?;
                if value["type"] == "ping" {
                    ws.send(Message::Text(r#"{"type":"pong"}"#.into()))
                        .await
                        .ok()?;
                    continue;
                }
                return Some(value);
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}
