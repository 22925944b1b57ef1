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

/// Spawns `tidings` (a command with its arguments, without `--listen`) on a
/// port the kernel picks, and returns it once it listens there, with the port.
/// The port is read from its `listening on` line: a port found free
/// beforehand could be taken (by another test's outgoing connection) before
/// the server binds it, and the server would exit.
pub async fn spawn_tidings(mut cmd: Command) -> (Process, u16) {
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tidings");
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process(child);
    let address = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let address = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("listening on ")
                .map(|address| address.trim().to_owned())
        });
        // Drained to the end, so the server never blocks writing to stdout.
        std::thread::spawn(move || lines.for_each(drop));
        address
    });
    let address = tokio::time::timeout(Duration::from_secs(30), address)
        .await
        .expect("tidings said it is listening within 30 s")
        .expect("stdout reader")
        .expect("tidings printed `listening on` before exiting");
    let port = address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("a port in {address:?}"));
    (process, port)
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
    /// The redis-server's process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self._process.0.id()
    }

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
    start_redis_with(&[]).await
}

/// A `redis-server` on a free port with `extra` arguments (`--requirepass …`).
/// A port found free can be taken (by another test's outgoing connection)
/// before redis-server binds it; it then exits and another port is tried.
pub async fn start_redis_with(extra: &[&str]) -> Redis {
    for _ in 0..5 {
        if let Some(redis) = try_start_redis(free_port(), extra).await {
            return redis;
        }
    }
    panic!("redis-server exited before listening, on 5 ports in a row")
}

/// A `redis-server` on `port` (a restart on the port a stopped one had).
pub async fn start_redis_on(port: u16) -> Redis {
    try_start_redis(port, &[])
        .await
        .unwrap_or_else(|| panic!("redis-server exited before listening on {port}"))
}

/// A `redis-server` on `port` once it listens; None if it exited first.
async fn try_start_redis(port: u16, extra: &[&str]) -> Option<Redis> {
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
    let mut redis = Redis {
        _process: Process(child),
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        // Something else may listen there: the server must still be running.
        if !matches!(redis._process.0.try_wait(), Ok(None)) {
            return None;
        }
        if listening {
            return Some(redis);
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
