//! Dev mode: with no JWT key configured, generate a secret and an API key for
//! this run and print everything needed to try Tidings in five minutes.

use std::path::Path;
use std::time::Duration;

use tidings::auth::{generate_secret, mint_hs256, MintClaims};
use tidings::config::Config;

/// What dev mode generated.
pub struct DevCredentials {
    token: String,
}

/// Whether `config` has no way to verify tokens (then dev mode applies).
pub fn needed(config: &Config) -> bool {
    let jwt = &config.jwt;
    jwt.secret.is_none() && jwt.public_key_file.is_none() && jwt.jwks_file.is_none()
}

/// Fills in a generated secret and API key, and mints a demo token.
pub fn apply(config: &mut Config) -> anyhow::Result<DevCredentials> {
    let secret = generate_secret();
    config.jwt.secret = Some(secret.clone());
    if config.api_key.is_none() {
        config.api_key = Some(generate_secret());
    }
    let claims = MintClaims {
        sub: "dev".into(),
        workspaces: vec!["demo".into()],
        roles: vec!["admin".into()],
        ttl: Some(Duration::from_secs(24 * 3600)),
        ..MintClaims::default()
    }
    .for_settings(&config.jwt);
    let token = mint_hs256(&secret, &claims)?;
    Ok(DevCredentials { token })
}

/// Prints the banner (stdout, not the log: these are meant for the developer).
pub fn print_banner(config: &Config, credentials: &DevCredentials, address: &str) {
    let secret = config.jwt.secret.as_deref().unwrap_or_default();
    let api_key = config.api_key.as_deref().unwrap_or_default();
    let token = &credentials.token;
    println!(
        "\n  Tidings is running in DEV MODE: no JWT key was configured, so these were generated for this run.\n\
         \n  JWT secret : {secret}\
         \n  API key    : {api_key}\
         \n  Token      : {token}\
         \n               (sub=dev, workspaces=[demo], roles=[admin], valid 24h)\
         \n\
         {no_workspace}\
         {console}\
         \n  Publish one:\
         \n    curl -s -X POST http://{address}/api/publish -H 'Authorization: Bearer {api_key}' \\\
         \n      -H 'Content-Type: application/json' \\\
         \n      -d '{{\"channel\":\"workspace:demo\",\"event\":\"hello\",\"data\":{{\"text\":\"Hello from curl\"}}}}'\
         \n\
         \n  Connect with any WebSocket client:  ws://{address}/ws?token={token}\
         \n  then send:  {{\"type\":\"subscribe\",\"channel\":\"workspace:demo\"}}\
         \n  and answer each {{\"type\":\"ping\"}} (every {heartbeat}) with {{\"type\":\"pong\"}} within {pong_timeout}, or be closed (4001)\
         \n\
         \n  More tokens:  TIDINGS_JWT_SECRET={secret} {command} gentoken --sub u1 --workspaces demo\n",
        // The console page is served only when `console` is on.
        console = if config.console {
            format!("\n  Watch events live:  http://{address}/#token={token}&channel=workspace:demo\n")
        } else {
            String::new()
        },
        no_workspace = no_workspace_note(config).unwrap_or_default(),
        command = own_command(),
        heartbeat = humantime::format_duration(config.connection.heartbeat),
        pong_timeout = humantime::format_duration(config.connection.pong_timeout),
    );
}

/// A warning for the banner when `workspace:demo`, which it uses, is not a
/// channel of this configuration (`builtin_namespaces = false` and no
/// `workspace` namespace of its own).
fn no_workspace_note(config: &Config) -> Option<&'static str> {
    (!config.effective_namespaces().contains_key("workspace")).then_some(
        "\n  Note: no `workspace` namespace is configured (builtin_namespaces = false), so the\
         \n  `workspace:demo` channel used below does not exist: use a channel of your own namespaces.\n",
    )
}

/// How to run this binary again from the user's shell: `tidings` when that
/// name on the PATH is this binary, the `cargo run` line when cargo started it
/// (after `cargo run` there is no `tidings` on the PATH), else its own path.
fn own_command() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tidings"))
            .find(|candidate| candidate.is_file())
    });
    if let (Some(exe), Some(on_path)) = (&exe, on_path) {
        if same_file(exe, &on_path) {
            return "tidings".to_owned();
        }
    }
    let run_by_cargo = std::env::var_os("CARGO").is_some()
        && std::env::var("CARGO_PKG_NAME").as_deref() == Ok("tidings-server");
    if run_by_cargo {
        let release = exe
            .as_ref()
            .and_then(|exe| exe.parent())
            .and_then(|dir| dir.file_name())
            .is_some_and(|name| name == "release");
        let profile = if release { " --release" } else { "" };
        return format!("cargo run{profile} -p tidings-server --");
    }
    match exe {
        Some(exe) => shell_quoted(&exe.to_string_lossy()),
        None => "tidings".to_owned(),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `text` as one shell word.
fn shell_quoted(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if plain && !text.is_empty() {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_warns_when_its_demo_channel_does_not_exist() {
        let mut config = Config::default();
        assert_eq!(no_workspace_note(&config), None);
        config.builtin_namespaces = false;
        assert!(no_workspace_note(&config).is_some_and(|note| note.contains("workspace:demo")));
        config.namespaces.insert(
            "workspace".into(),
            tidings::config::NamespaceConfig::default(),
        );
        assert_eq!(no_workspace_note(&config), None);
    }
}
