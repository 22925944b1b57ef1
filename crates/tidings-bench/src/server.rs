//! Starting the servers under test (pinned with `taskset`) and reading their
//! memory and CPU from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Proto;
pub use crate::process_cpu::cpu_of;

/// A server process under test (or an external one).
pub struct Server {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    /// A file or directory the launcher wrote for this server (a generated
    /// config), removed when the server stops.
    scratch: Option<PathBuf>,
}

/// How to start servers.
#[derive(Clone)]
pub struct Launch {
    pub tidings_bin: PathBuf,
    pub peer_dir: PathBuf,
    pub node: String,
    /// Core to pin the server to (`taskset -c`), if pinning.
    pub cpu: Option<usize>,
    pub jwt_secret: String,
    pub api_key: String,
    /// Extra `TIDINGS_*` settings.
    pub tidings_env: Vec<(String, String)>,
    /// Extra environment of the Socket.IO peer (e.g. `BENCH_REDIS_URL`).
    pub peer_env: Vec<(String, String)>,
    /// Centrifugo binary (`bench/peers/centrifugo/build.sh` builds it).
    pub centrifugo_bin: PathBuf,
    /// Tidings' default `connection.heartbeat`, given to the peers that have
    /// one, so every server pings idle clients equally often.
    pub heartbeat: Duration,
}

impl Launch {
    /// A command for `program`, pinned to `self.cpu` with taskset when pinning.
    pub(crate) fn pinned(&self, program: &Path) -> Command {
        match self.cpu {
            Some(cpu) if which("taskset") => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            _ => Command::new(program),
        }
    }

    /// Starts the server of `proto` and waits until it accepts connections.
    pub async fn start(&self, proto: Proto) -> Result<Server> {
        match proto {
            Proto::Centrifugo => return crate::centrifugo::start(self).await,
            Proto::FloorWrite | Proto::FloorBatched => {
                return crate::floor::start(self, proto).await
            }
            _ => {}
        }
        let (program, args, envs): (String, Vec<String>, Vec<(String, String)>) = match proto {
            Proto::Tidings | Proto::TidingsSocketio => {
                if !self.tidings_bin.exists() {
                    bail!(
                        "Tidings server binary {} not found: run `cargo build --release -p tidings-server` (or pass --tidings-bin)",
                        self.tidings_bin.display()
                    );
                }
                let mut envs = vec![
                    ("TIDINGS_JWT_SECRET".to_owned(), self.jwt_secret.clone()),
                    ("TIDINGS_API_KEY".to_owned(), self.api_key.clone()),
                    ("TIDINGS_LOG_LEVEL".to_owned(), "warn".to_owned()),
                    (
                        "TIDINGS_CONNECTION_MAX_CONNECTIONS_PER_USER".to_owned(),
                        "1000000".to_owned(),
                    ),
                    (
                        "TIDINGS_CONNECTION_MAX_CONNECTIONS".to_owned(),
                        "0".to_owned(),
                    ),
                ];
                envs.extend(self.tidings_env.iter().cloned());
                (
                    self.tidings_bin.display().to_string(),
                    vec!["--listen".into(), "127.0.0.1:0".into()],
                    envs,
                )
            }
            Proto::Socketio => {
                let script = self.peer_dir.join("server.js");
                if !self
                    .peer_dir
                    .join("node_modules")
                    .join("socket.io")
                    .exists()
                {
                    bail!(
                        "{}/node_modules is missing: run `npm ci --prefix {}`",
                        self.peer_dir.display(),
                        self.peer_dir.display()
                    );
                }
                let mut envs = vec![
                    ("BENCH_JWT_SECRET".to_owned(), self.jwt_secret.clone()),
                    ("BENCH_API_KEY".to_owned(), self.api_key.clone()),
                    ("HOST".to_owned(), "127.0.0.1".to_owned()),
                    ("PORT".to_owned(), "0".to_owned()),
                    ("NODE_ENV".to_owned(), "production".to_owned()),
                ];
                envs.extend(self.peer_env.iter().cloned());
                (self.node.clone(), vec![script.display().to_string()], envs)
            }
            Proto::Centrifugo | Proto::FloorWrite | Proto::FloorBatched => {
                unreachable!("started above")
            }
        };
        let mut command = self.pinned(Path::new(&program));
        command
            .args(&args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.trim().strip_prefix("listening on ") {
                    let addr = rest.split_whitespace().next().unwrap_or(rest);
                    let addr = addr.trim_start_matches("http://");
                    return addr.parse::<SocketAddr>().context("parsing listen address");
                }
            }
            bail!("{program} exited before printing its address")
        })
        .await
        .context("server did not print `listening on` within 30 s")??;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            proto,
            addr,
            pid,
            child: Some(child),
            scratch: None,
        })
    }

    /// Spawns `command` (built with `pinned`) for a server that prints nothing
    /// useful, then waits until `addr` accepts TCP connections.
    pub(crate) async fn spawn_and_wait(
        &self,
        proto: Proto,
        mut command: Command,
        addr: SocketAddr,
        scratch: Option<PathBuf>,
    ) -> Result<Server> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", proto.label()))?;
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{} exited before listening: {status}", proto.label());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 30 s", proto.label());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            proto,
            addr,
            pid,
            child: Some(child),
            scratch,
        })
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for servers that cannot
/// report the port they were given.
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

impl Server {
    pub fn external(proto: Proto, addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            proto,
            addr,
            pid,
            child: None,
            scratch: None,
        }
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        self.pid.and_then(rss_of)
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid.and_then(cpu_of)
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        if let Some(path) = self.scratch.take() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).exists()))
        .unwrap_or(false)
}

/// Resident set size of `pid` (VmRSS), in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Busy CPU time of the whole machine (all cores, from `/proc/stat`), in seconds.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum::<f64>();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(busy / ticks.max(1.0))
}

/// Waits (up to `limit`) until processes other than ours use under `pct`% of
/// one core for two seconds in a row, so other work on the machine does not
/// skew the run. Returns the last reading.
pub async fn wait_for_quiet(limit: std::time::Duration, pct: f64) -> f64 {
    let start = std::time::Instant::now();
    let mut calm = 0;
    loop {
        let a = machine_busy_seconds().unwrap_or(0.0);
        let me_a = cpu_of(std::process::id()).unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = machine_busy_seconds().unwrap_or(0.0);
        let me_b = cpu_of(std::process::id()).unwrap_or(0.0);
        let last = ((b - a) - (me_b - me_a)).max(0.0) * 100.0;
        calm = if last < pct { calm + 1 } else { 0 };
        if calm >= 2 || start.elapsed() >= limit {
            return last;
        }
    }
}

/// The workspace root (two levels above this crate's manifest), for default paths.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Raises this process's open-file limit as far as allowed; returns the soft limit.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        // Try to raise the hard limit too (works with CAP_SYS_RESOURCE).
        if wanted > lim.rlim_max {
            let try_lim = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &try_lim) == 0 {
                return wanted;
            }
        }
        let new = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// Pins this process to one core.
pub fn pin_self(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on our own pid (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}
