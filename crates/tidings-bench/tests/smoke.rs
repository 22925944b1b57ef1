//! A few seconds of `tidings-bench smoke` against a Tidings server, the
//! Socket.IO peer, the kernel floor and (when built) Centrifugo, so the tool
//! cannot rot. Builds nothing itself: the Tidings binary must exist (`cargo build
//! -p tidings-server`) and the peer's node_modules must be installed (`npm ci
//! --prefix bench/peers/socketio`). Centrifugo takes minutes to build from the Go
//! module proxy, so its test runs only when `TEST_CENTRIFUGO_BIN` names a binary
//! (`bench/peers/centrifugo/build.sh` builds one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

fn tidings_binary() -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let path = target.join(profile).join("tidings");
        if path.exists() {
            return path;
        }
    }
    panic!(
        "no Tidings server binary under {}/{{debug,release}}/tidings: run `cargo build -p tidings-server` first",
        target.display()
    );
}

fn run_smoke(target: &str, extra: &[&str]) -> serde_json::Value {
    let out = std::env::temp_dir().join(format!(
        "tidings-bench-smoke-{target}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["smoke", "--target", target, "--no-pin"])
        .args(["--connections", "300", "--rate", "3000"])
        .args(["--duration", "3", "--warmup", "1", "--timeout", "60"])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .output()
        .expect("running tidings-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tidings-bench smoke against {target} failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "smoke took {:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert!(out.join("results.md").exists(), "results.md written");
    let _ = std::fs::remove_dir_all(&out);
    let run = doc["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["target"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("no {target} run in results.json:\n{stdout}\n{stderr}"));
    let step = run["steps"][0].clone();
    assert_eq!(step["connections"], 300, "all connections up: {step}");
    assert_eq!(step["lost"], 0, "nothing lost: {step}");
    assert_eq!(step["gaps"], 0, "no sequence gaps: {step}");
    assert_eq!(step["disconnects"], 0, "no drops: {step}");
    assert!(
        step["received"].as_u64().unwrap_or(0) > 0,
        "events delivered: {step}"
    );
    assert_eq!(
        step["received"], step["expected"],
        "every event delivered: {step}"
    );
    step
}

#[test]
fn smoke_against_tidings() {
    let bin = tidings_binary();
    let bin = bin.to_str().expect("utf-8 path");
    let step = run_smoke("tidings", &["--tidings-bin", bin]);
    assert!(
        step["p99_ms"].as_f64().is_some(),
        "latency measured: {step}"
    );
}

#[test]
fn smoke_against_tidings_socketio_endpoint() {
    let bin = tidings_binary();
    let bin = bin.to_str().expect("utf-8 path");
    run_smoke("tidings-socketio", &["--tidings-bin", bin]);
}

#[test]
fn smoke_against_socketio_peer() {
    let peer = workspace_root().join("bench/peers/socketio");
    assert!(
        peer.join("node_modules/socket.io").exists(),
        "{}/node_modules is missing: run `npm ci --prefix bench/peers/socketio` first",
        peer.display()
    );
    let peer = peer.to_str().expect("utf-8 path");
    run_smoke("socketio", &["--peer-dir", peer]);
}

/// The floor server (this binary, `floor-server`) in both modes: the same
/// generator connects, subscribes and receives every frame.
#[test]
fn smoke_against_the_floor() {
    for target in ["floor-write", "floor-batched"] {
        let step = run_smoke(target, &[]);
        assert!(
            step["p99_ms"].as_f64().is_some(),
            "latency measured: {step}"
        );
    }
}

#[test]
fn smoke_against_centrifugo() {
    let Some(bin) = std::env::var_os("TEST_CENTRIFUGO_BIN") else {
        eprintln!(
            "SKIPPED smoke_against_centrifugo: set TEST_CENTRIFUGO_BIN to a Centrifugo v6 binary \
             (bench/peers/centrifugo/build.sh builds bench/peers/centrifugo/bin/centrifugo)"
        );
        return;
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.exists(),
        "TEST_CENTRIFUGO_BIN={} does not exist",
        bin.display()
    );
    let bin = bin.to_str().expect("utf-8 path");
    let step = run_smoke("centrifugo", &["--centrifugo-bin", bin]);
    assert!(
        step["p99_ms"].as_f64().is_some(),
        "latency measured: {step}"
    );
}

/// `history` with tiny counts and TTLs: every phase runs, the channels are
/// reclaimed after position_ttl, and the history holds every event published.
#[test]
fn history_smoke_against_tidings() {
    let bin = tidings_binary();
    let out = std::env::temp_dir().join(format!("tidings-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["history", "--target", "tidings", "--no-pin"])
        .args(["--history-phases", "channels,positions,events-subscribed"])
        .args(["--channel-steps", "1000,3000", "--events", "2000"])
        .args(["--payload-sizes", "100", "--history-ttl", "1"])
        .args(["--position-ttl", "6", "--sweep-interval", "0.5"])
        .args(["--timeout", "90", "--tidings-bin"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running tidings-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tidings-bench history failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "history took {:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let _ = std::fs::remove_dir_all(&out);
    let run = doc["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["scenario"] == "history")
        .cloned()
        .unwrap_or_else(|| panic!("no history run:\n{stdout}\n{stderr}"));
    let h = &run["history"];
    let channels = &h["channels"];
    assert_eq!(channels["steps"][1]["engine_channels"], 4000, "{channels}");
    assert!(
        channels["steps"][1]["bytes_per_channel"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{channels}"
    );
    assert_eq!(channels["reclaimed"]["engine_channels"], 0, "{channels}");
    assert_eq!(h["positions"]["steps"][1]["engine_channels"], 4000, "{h}");
    let events = &h["events"][0];
    assert_eq!(events["subscribers"], 1, "{events}");
    assert_eq!(events["received"], 2000, "{events}");
    assert_eq!(
        events["history_len"], 3000,
        "warm-up and measured events kept: {events}"
    );
}

fn redis_server_present() -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("redis-server").exists()))
        .unwrap_or(false)
}

/// `scale` with tiny numbers: 3 Tidings nodes on a redis-server the bench
/// starts itself, 300 connections in 2 generator processes, a broadcast to every
/// user channel and a publish to the workspace channel, nothing lost.
#[test]
fn scale_smoke_on_redis() {
    if !redis_server_present() {
        eprintln!("SKIPPED scale_smoke_on_redis: redis-server is not installed (apt-get install redis-server)");
        return;
    }
    let bin = tidings_binary();
    let out = std::env::temp_dir().join(format!("tidings-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["scale", "--nodes", "3", "--connections", "300"])
        .args(["--worker-connections", "150", "--timeout", "60"])
        .arg("--tidings-bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running tidings-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tidings-bench scale failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "scale took {:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(out.join("cluster.json")).expect("cluster.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("cluster.json is JSON");
    let _ = std::fs::remove_dir_all(&out);
    let results = &doc["runs"][0]["results"];
    assert_eq!(results["nodes"], 3, "{results}");
    assert_eq!(results["connections"], 300, "{results}");
    assert_eq!(results["generator_processes"], 2, "{results}");
    assert!(
        results["server_rss_per_connection_bytes"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{results}"
    );
    let phases = results["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "{results}");
    for phase in phases {
        assert_eq!(phase["expected"], 300, "{phase}");
        assert_eq!(phase["received"], 300, "{phase}");
        assert_eq!(phase["lost"], 0, "{phase}");
        assert_eq!(phase["dups"], 0, "{phase}");
        assert!(phase["latency"]["p99_ms"].as_f64().is_some(), "{phase}");
    }
}
