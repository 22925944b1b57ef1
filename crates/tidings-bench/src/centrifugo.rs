//! Centrifugo v6 as a peer: a generated JSON config equivalent to the Tidings
//! server the bench starts (HS256 tokens with the same secret, an HTTP API key,
//! the bench's two namespaces with Tidings' default history and recovery, the
//! same heartbeat), and the process pinned like the other servers.
//!
//! Key names are those of Centrifugo v6.9.1's `internal/configtypes`; a key it
//! does not know is only a warning in its log, so a typo would silently change
//! the setup: `config` is unit-tested for the names that matter.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::Proto;
use crate::server::{free_port, Launch, Server};

/// Tidings' default history per channel (`history_size`, `history_ttl`).
const HISTORY_SIZE: u64 = 100;
const HISTORY_TTL: Duration = Duration::from_secs(600);
/// Tidings' default `connection.pong_timeout`; Centrifugo requires it to be
/// shorter than the ping interval.
const PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// One namespace of the bench: clients may subscribe (the generator's tokens
/// carry no channel claims), with history and forced recovery as Tidings keeps
/// history for every channel by default and recovers on resubscribe.
/// `presence` as Tidings tracks presence on `workspace:` channels but not on
/// `user:` ones. Subscribers may read history: the generator's application
/// ping is a history request for the position only.
fn namespace(name: &str, user_limited: bool, presence: bool) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "allow_subscribe_for_client": true,
        "allow_user_limited_channels": user_limited,
        "history_size": HISTORY_SIZE,
        "history_ttl": format!("{}s", HISTORY_TTL.as_secs()),
        "force_recovery": true,
        "presence": presence,
        "allow_history_for_subscriber": true,
    })
}

/// The config for a Centrifugo listening on `port`.
pub fn config(launch: &Launch, port: u16) -> serde_json::Value {
    let ping = launch.heartbeat.as_secs().max(1);
    serde_json::json!({
        "http_server": { "address": "127.0.0.1", "port": port },
        "log": { "level": "warn" },
        "client": {
            "token": { "hmac_secret_key": launch.jwt_secret },
            "ping_interval": format!("{ping}s"),
            "pong_timeout": format!("{}s", PONG_TIMEOUT.as_secs().min(ping.saturating_sub(1)).max(1)),
        },
        "channel": {
            "namespaces": [
                namespace("user", true, false),
                namespace("workspace", false, true),
            ],
        },
        "http_api": { "key": launch.api_key },
        "usage_stats": { "disabled": true },
    })
}

/// Starts Centrifugo with a generated config in the temp directory (removed
/// when the server stops) and waits until it listens.
pub async fn start(launch: &Launch) -> Result<Server> {
    let bin = &launch.centrifugo_bin;
    if !bin.exists() {
        bail!(
            "Centrifugo binary {} not found: run bench/peers/centrifugo/build.sh (or pass --centrifugo-bin)",
            bin.display()
        );
    }
    let addr = free_port()?;
    let path: PathBuf = std::env::temp_dir().join(format!(
        "tidings-bench-centrifugo-{}-{}.json",
        std::process::id(),
        addr.port()
    ));
    let text = serde_json::to_string_pretty(&config(launch, addr.port()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let mut command = launch.pinned(bin);
    command.arg("--config").arg(&path);
    launch
        .spawn_and_wait(Proto::Centrifugo, command, addr, Some(path))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_uses_centrifugo_v6_key_names() {
        let launch = Launch {
            tidings_bin: PathBuf::new(),
            peer_dir: PathBuf::new(),
            node: String::new(),
            cpu: None,
            jwt_secret: "s".into(),
            api_key: "k".into(),
            tidings_env: Vec::new(),
            peer_env: Vec::new(),
            centrifugo_bin: PathBuf::new(),
            heartbeat: Duration::from_secs(25),
        };
        let c = config(&launch, 8000);
        assert_eq!(c["client"]["token"]["hmac_secret_key"], "s");
        assert_eq!(c["client"]["ping_interval"], "25s");
        assert_eq!(c["client"]["pong_timeout"], "10s");
        assert_eq!(c["http_api"]["key"], "k");
        let ns = &c["channel"]["namespaces"];
        assert_eq!(ns[0]["name"], "user");
        assert_eq!(ns[0]["allow_user_limited_channels"], true);
        assert_eq!(ns[1]["history_size"], 100);
        assert_eq!(ns[1]["history_ttl"], "600s");
        assert_eq!(ns[1]["force_recovery"], true);
        assert_eq!(ns[1]["presence"], true);
        assert_eq!(ns[0]["presence"], false);
        assert_eq!(ns[1]["allow_history_for_subscriber"], true);
    }
}
