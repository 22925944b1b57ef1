//! Tests of the `tidings` binary as a user runs it: dev mode, signals, logs,
//! and the `gentoken` / `checkconfig` commands.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
const SECRET: &str = "process-test-secret-0123456789abcdef";
const API_KEY: &str = "process-test-api-key-0123";

/// A running `tidings` process; killed on drop.
struct Server {
    child: Child,
    addr: String,
    /// Everything printed to stdout up to and including `listening on`.
    banner: String,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    // The test's own environment must not configure the server, nor make it
    // look started by `cargo run` (cargo test sets CARGO and CARGO_PKG_*).
    for (key, _) in std::env::vars() {
        if key.starts_with("TIDINGS_") || key == "RUST_LOG" || key.starts_with("CARGO") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Starts the server and waits until it is listening: the `listening on` line
/// on stdout, or with JSON logs the `tidings listening` entry on stderr.
fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = command();
    cmd.args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tidings");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout_ready = tx.clone();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = stdout_ready.send((addr.to_owned(), text.clone()));
            }
        }
        text
    });
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if entry["message"] == "tidings listening" {
                if let Some(addr) = entry["address"].as_str() {
                    let _ = tx.send((addr.to_owned(), String::new()));
                }
            }
        }
        text
    });
    let (addr, banner) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server said it is listening");
    Server {
        child,
        addr,
        banner,
        stdout: Some(stdout),
        stderr: Some(stderr),
    }
}

impl Server {
    fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().unwrap().join().unwrap()
    }

    /// All of stdout; call after the process ended.
    fn stdout(&mut self) -> String {
        self.stdout.take().unwrap().join().unwrap()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .unwrap();
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

fn token(sub: &str, workspaces: &[&str]) -> String {
    tidings_auth::mint_hs256(
        SECRET,
        &tidings_auth::MintClaims {
            sub: sub.into(),
            workspaces: workspaces.iter().map(|s| s.to_string()).collect(),
            ttl: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    )
    .unwrap()
}

fn banner_value<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim())
        .unwrap_or_else(|| panic!("banner has no {label}:\n{banner}"))
}

#[tokio::test]
async fn dev_mode_prints_a_token_that_connects_and_a_curl_that_delivers() {
    let server = start(&[], &[]);
    let token = banner_value(&server.banner, "Token");
    assert!(banner_value(&server.banner, "API key").len() >= 16);
    let mut ws = connect(&server.addr, token).await;
    ws.send(Message::Text(
        r#"{"type":"subscribe","id":1,"channel":"workspace:demo"}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    // Run the printed curl command exactly as a user would paste it.
    let curl: String = server
        .banner
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("curl "))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        curl.contains("/api/publish"),
        "no curl command in:\n{}",
        server.banner
    );
    let started = Instant::now();
    let output = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    assert!(output.status.success(), "curl failed: {output:?}");
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["offset"], 1, "{reply}");
    let event = next_json(&mut ws).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(event["type"], "event");
    assert_eq!(event["data"]["text"], "Hello from curl");

    // The console page is served.
    let page = reqwest::get(format!("http://{}/", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Tidings console"));
}

#[tokio::test]
async fn sigterm_sends_1012_to_every_client_and_exits() {
    let mut server = start(
        &[],
        &[
            ("TIDINGS_JWT_SECRET", SECRET),
            ("TIDINGS_API_KEY", API_KEY),
            ("TIDINGS_CONNECTION_SHUTDOWN_DRAIN", "5s"),
        ],
    );
    assert!(!server.banner.contains("DEV MODE"));
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect(&server.addr, &token(&format!("u{i}"), &[])).await);
    }
    // Upgraded without a token and not authenticated yet: told as well.
    let (unauthenticated, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    clients.push(unauthenticated);
    let (status, took) = tokio::task::spawn_blocking(move || {
        let result = server.terminate();
        drop(server);
        result
    })
    .await
    .unwrap();
    for ws in &mut clients {
        let notice = next_json(ws).await;
        assert_eq!(
            notice,
            json!({"type": "disconnect", "code": 1012, "reason": "server restarting", "reconnect": true})
        );
        let close = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match close {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1012),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "drained in {took:?}");
}

#[tokio::test]
async fn json_logs_carry_ids_and_never_tokens_or_keys() {
    // At TRACE too: the WebSocket library logs whole messages at that level,
    // and an `auth` or `refresh` message holds a token.
    let mut server = start(
        &["--log-format", "json", "--log-level", "trace"],
        &[("TIDINGS_JWT_SECRET", SECRET), ("TIDINGS_API_KEY", API_KEY)],
    );
    let good = token("loguser", &["acme"]);
    let mut ws = connect(&server.addr, &good).await;
    ws.send(Message::Text(
        r#"{"type":"subscribe","id":1,"channel":"workspace:acme"}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let (mut by_message, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    for (request, reply) in [
        (json!({"type": "auth", "token": good}), "connected"),
        (json!({"type": "refresh", "token": good}), "refreshed"),
    ] {
        by_message
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        assert_eq!(next_json(&mut by_message).await["type"], reply);
    }
    drop(by_message);
    let bad = format!("{good}tampered");
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={bad}", server.addr)).await;
    assert!(refused.is_err());
    let wrong_key = reqwest::Client::new()
        .post(format!("http://{}/api/publish", server.addr))
        .header("x-api-key", "not-the-key-but-long-enough")
        .json(&json!({"channel": "workspace:acme", "event": "e", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status().as_u16(), 401);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || {
        server.terminate();
        let logs = server.stderr();
        assert!(!logs.trim().is_empty());
        let stdout = server.stdout();
        assert!(stdout.is_empty(), "JSON logs, yet stdout has: {stdout}");
        for line in logs.lines() {
            let entry: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(entry.get("level").is_some(), "{line}");
            for secret in [
                good.as_str(),
                bad.as_str(),
                SECRET,
                API_KEY,
                "not-the-key-but-long-enough",
            ] {
                assert!(!line.contains(secret), "a secret leaked into: {line}");
            }
        }
        let with_ids = logs
            .lines()
            .filter(|l| l.contains("\"client\":\"c_") && l.contains("\"user\":\"loguser\""))
            .count();
        assert!(
            with_ids > 0,
            "no log line carries the connection and user ids:\n{logs}"
        );
        assert!(
            logs.contains("token refused"),
            "refusal not logged:\n{logs}"
        );
    })
    .await
    .unwrap();
}

#[test]
fn gentoken_mints_a_verifiable_token() {
    let output = command()
        .args([
            "gentoken",
            "--sub",
            "u1",
            "--workspaces",
            "acme,beta",
            "--roles",
            "admin",
            "--ttl",
            "1h",
        ])
        .env("TIDINGS_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = tidings_auth::TokenVerifier::new(&tidings_auth::JwtSettings {
        secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let identity = verifier.verify(token.trim()).unwrap();
    assert_eq!(&*identity.user, "u1");
    assert!(identity.claim_contains("workspaces", "beta"));
    assert_eq!(&*identity.roles, ["admin".to_owned()]);
    let ttl = identity.expires_at.unwrap()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
    assert!((3590..=3600).contains(&ttl), "{ttl}");

    let no_secret = command()
        .args(["gentoken", "--sub", "u1"])
        .output()
        .unwrap();
    assert!(!no_secret.status.success());
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("TIDINGS_JWT_SECRET"));
}

/// A token from `gentoken` passes the configured server's checks: its issuer,
/// audience and claim names, not only the defaults.
#[test]
fn gentoken_follows_the_configured_issuer_audience_and_claim_names() {
    let vars = [
        ("TIDINGS_JWT_SECRET", SECRET),
        ("TIDINGS_JWT_ISSUER", "https://auth.example.com/"),
        ("TIDINGS_JWT_AUDIENCE", "tidings"),
        ("TIDINGS_JWT_WORKSPACES_CLAIM", "ws"),
        ("TIDINGS_JWT_ROLES_CLAIM", "r"),
    ];
    let output = command()
        .args([
            "gentoken",
            "--sub",
            "u1",
            "--workspaces",
            "acme",
            "--roles",
            "admin",
        ])
        .envs(vars)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = tidings_auth::TokenVerifier::new(&tidings_auth::JwtSettings {
        secret: Some(SECRET.into()),
        issuer: Some("https://auth.example.com/".into()),
        audience: Some("tidings".into()),
        workspaces_claim: "ws".into(),
        roles_claim: "r".into(),
        ..Default::default()
    })
    .unwrap();
    let identity = verifier.verify(token.trim()).unwrap();
    assert!(identity.claim_contains("ws", "acme"));
    assert!(!identity.claims.contains_key("workspaces"));
    assert_eq!(&*identity.roles, ["admin".to_owned()]);

    let refused = command()
        .args(["gentoken", "--sub", "u1"])
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_JWT_ALGORITHMS", r#"["HS512"]"#)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("jwt.algorithms (HS512)"),
        "{refused:?}"
    );
}

#[test]
fn checkconfig_accepts_the_example_and_names_mistakes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tidings.example.toml");
    let ok = command().args(["checkconfig", example]).output().unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let text = String::from_utf8(ok.stdout).unwrap();
    assert!(
        text.contains("namespace  workspace") && text.contains("namespace  user"),
        "{text}"
    );
    // No key in the example: dev mode, whose generated key and API key it names.
    assert!(
        text.contains("jwt        a generated HMAC secret (dev mode); algorithms HS256")
            && text.contains("server API enabled (dev mode generates an api_key)"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("tidings-checkconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body, expected) in [
        ("typo.toml", "listen = \"127.0.0.1:1\"\nheartbeat = \"1s\"\n", "heartbeat"),
        ("rule.toml", "[jwt]\nsecret = \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\"\n[namespaces.orders]\nsubscribe = [{ segment = 1 }]\n", "namespaces.orders.subscribe[0]"),
        ("key.toml", "[jwt]\npublic_key_file = \"/nonexistent/key.pem\"\n", "/nonexistent/key.pem"),
        ("zero.toml", "[jwt]\nsecret = \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\"\n[connection]\nheartbeat = \"0s\"\n", "connection.heartbeat"),
        ("huge.toml", "[jwt]\nsecret = \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\"\n[connection]\nheartbeat = \"500000000000y\"\n", "invalid configuration: connection.heartbeat: must be at most 1 day"),
        ("redis.toml", "[engine]\ntype = \"redis\"\nredis_url = \"redis://:s3cr3t@127.0.0.1:6379/db\"\n", "engine.redis_url"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let out = command().arg("checkconfig").arg(&path).output().unwrap();
        assert!(!out.status.success(), "{name} passed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("s3cr3t"), "{name} leaked the secret: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn environment_configures_listen_and_keys() {
    let mut cmd = command();
    // Text options that look like numbers or booleans stay text; numbers,
    // booleans and lists are still read as such.
    let digits_key = "1234567890123456";
    cmd.env("TIDINGS_LISTEN", "127.0.0.1:0")
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_API_KEY", digits_key)
        .env("TIDINGS_NODE", "1")
        .env("TIDINGS_TRANSPORTS_TOKEN_COOKIE", "true")
        .env("TIDINGS_CONNECTION_HEARTBEAT", "7s")
        .env("TIDINGS_CONNECTION_MAX_CHANNELS", "3")
        .env("TIDINGS_WEBSOCKET_COMPRESSION", "false")
        .env("TIDINGS_ALLOWED_ORIGINS", r#"["http://app.example"]"#)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("listening on"))
        .unwrap();
    let addr = line.trim_start_matches("listening on ").to_owned();
    let mut ws = connect_raw(&addr, &token("u1", &["acme"])).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["heartbeat"], 7000);
    assert_eq!(connected["node"], "1");
    let channels = [
        "user:u1",
        "workspace:acme",
        "workspace:acme:a",
        "workspace:acme:b",
    ];
    for (n, channel) in channels.iter().enumerate() {
        let subscribe = json!({"type": "subscribe", "id": n, "channel": channel});
        ws.send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
    }
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(next_json(&mut ws).await);
    }
    assert_eq!(replies[3]["code"], "limit_exceeded", "{replies:?}");
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/api/publish"))
        .bearer_auth(digits_key)
        .json(&json!({"channel": "user:u1", "event": "e", "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    // The origin list was read as a list: its origin connects, another not.
    for (origin, allowed) in [
        ("http://app.example", true),
        ("http://elsewhere.example", false),
    ] {
        let mut request = format!("ws://{addr}/ws?token={}", token("u1", &[]))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => assert!(allowed, "{origin} connected"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert!(!allowed, "{origin} refused");
                assert_eq!(response.status().as_u16(), 403);
            }
            Err(err) => panic!("{origin}: {err}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn connect_raw(addr: &str, token: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .unwrap()
        .0
}

/// The `More tokens:` command of the dev-mode banner.
fn banner_gentoken_command(banner: &str) -> String {
    banner_value(banner, "More tokens").to_owned()
}

#[test]
fn dev_mode_banner_gentoken_command_works_as_printed_and_logs_have_no_colour() {
    let mut server = start(&[], &[]);
    let command_line = banner_gentoken_command(&server.banner);
    assert!(
        !command_line.contains(" tidings gentoken"),
        "`tidings` is not on the PATH: {command_line}"
    );
    let secret = banner_value(&server.banner, "JWT secret").to_owned();
    let output = Command::new("sh")
        .arg("-c")
        .arg(&command_line)
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{command_line}: {output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = tidings_auth::TokenVerifier::new(&tidings_auth::JwtSettings {
        secret: Some(secret),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&*verifier.verify(token.trim()).unwrap().user, "u1");

    server.terminate();
    let logs = server.stderr();
    assert!(logs.contains("tidings listening"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in logs that go to a pipe: {logs:?}"
    );
}

#[test]
fn dev_mode_banner_under_cargo_run_prints_the_cargo_command() {
    let server = start(
        &[],
        &[("CARGO", "cargo"), ("CARGO_PKG_NAME", "tidings-server")],
    );
    let command_line = banner_gentoken_command(&server.banner);
    // The test binary is a debug build.
    assert!(
        command_line.contains(" cargo run -p tidings-server -- gentoken --sub u1"),
        "{command_line}"
    );
}

#[test]
fn short_jwt_secret_is_refused_with_how_to_make_one() {
    let check = |output: std::process::Output, what: &str| {
        assert!(!output.status.success(), "{what} accepted a 1-byte secret");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            err.contains("at least 32 bytes") && err.contains("openssl rand -base64 32"),
            "{what}: {err}"
        );
        assert!(!err.contains("=x"), "{what}: {err}");
    };
    let mut serve = command()
        .args(["--listen", "127.0.0.1:0"])
        .env("TIDINGS_JWT_SECRET", "x")
        .env("TIDINGS_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a server that accepts the secret would run until killed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while serve.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!("serve started with a 1-byte secret");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check(serve.wait_with_output().unwrap(), "serve");
    let gentoken = command()
        .args(["gentoken", "--sub", "u1"])
        .env("TIDINGS_JWT_SECRET", "x")
        .output()
        .unwrap();
    check(gentoken, "gentoken");
}

#[test]
fn config_errors_name_the_variable_or_the_file_and_the_format() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tidings.example.toml");
    let run = |args: &[&str], env: &[(&str, &str)], dir: &std::path::Path| {
        let mut cmd = command();
        cmd.args(args).current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} passed");
        String::from_utf8(output.stderr).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("tidings-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A bad environment value: the variable and the format, and not the file.
    let err = run(
        &["checkconfig", example],
        &[("TIDINGS_CONNECTION_HEARTBEAT", "banana")],
        &dir,
    );
    assert!(err.contains("TIDINGS_CONNECTION_HEARTBEAT"), "{err}");
    assert!(err.contains("such as `30s`"), "{err}");
    assert!(!err.contains("tidings.example.toml"), "{err}");
    let err = run(
        &["--listen", "127.0.0.1:0"],
        &[("TIDINGS_CONNECTION_MAX_CHANNELS", "lots")],
        &dir,
    );
    assert!(
        err.contains("TIDINGS_CONNECTION_MAX_CHANNELS") && err.contains("a whole number"),
        "{err}"
    );

    // A log filter that does not parse stops the start, whatever RUST_LOG says.
    let err = run(
        &["--listen", "127.0.0.1:0", "--log-level", "tidings=bogus["],
        &[("RUST_LOG", "info")],
        &dir,
    );
    assert!(err.contains("invalid log filter"), "{err}");

    // A bad file value: the absolute path and the key as written in the file.
    std::fs::write(
        dir.join("bad.toml"),
        "[connection]\nheartbeat = \"banana\"\n",
    )
    .unwrap();
    let err = run(&["checkconfig", "bad.toml"], &[], &dir);
    let absolute = dir.join("bad.toml");
    assert!(
        err.contains(&format!("{}: connection.heartbeat:", absolute.display())),
        "{err}"
    );
    assert!(!err.contains("default."), "{err}");

    // An unknown key: named once, the known keys listed without nested backticks.
    std::fs::write(dir.join("typo.toml"), "[connection]\nheartbeet = \"1s\"\n").unwrap();
    let err = run(&["checkconfig", "typo.toml"], &[], &dir);
    assert!(
        err.contains("unknown key `heartbeet` in [connection]"),
        "{err}"
    );
    assert!(err.contains("heartbeat, pong_timeout"), "{err}");
    assert!(!err.contains("``") && !err.contains("`one of"), "{err}");

    // A bad setting stops `serve` with its one line and nothing before it
    // (the missing API key's warning waited until the start could not fail).
    for format in ["text", "json"] {
        let err = run(
            &["--listen", "127.0.0.1:0", "--log-format", format],
            &[("TIDINGS_JWT_SECRET", "short")],
            &dir,
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{format}: {err}");
        assert!(
            err.starts_with("tidings: invalid configuration: jwt.secret"),
            "{format}: {err}"
        );
    }

    // A file that is not TOML: one line, with the parse error's position and
    // words but not its snippet of the file.
    std::fs::write(dir.join("syntax.toml"), "listen = \n").unwrap();
    let err = run(&["checkconfig", "syntax.toml"], &[], &dir);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("TOML parse error at line 1, column 10: invalid string"),
        "{err}"
    );
    assert!(!err.contains(" | "), "{err}");

    // A missing file: one line.
    let err = run(&["checkconfig", "missing.toml"], &[], &dir);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&dir.join("missing.toml").display().to_string()),
        "{err}"
    );
    // A bad setting is reported even when the port is taken: it is checked
    // before the server binds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let err = run(
        &["--listen", &busy],
        &[("TIDINGS_CONNECTION_HEARTBEAT", "2d")],
        &dir,
    );
    assert!(
        err.contains("invalid configuration: connection.heartbeat: must be at most 1 day"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
