//! Dev mode: with no JWT key configured, generate a secret and an API key for
//! this run and print everything needed to try Tidings in five minutes.

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
    };
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
         \n  Watch events live:  http://{address}/#token={token}&channel=workspace:demo\
         \n\
         \n  Publish one:\
         \n    curl -s -X POST http://{address}/api/publish -H 'Authorization: Bearer {api_key}' \\\
         \n      -H 'Content-Type: application/json' \\\
         \n      -d '{{\"channel\":\"workspace:demo\",\"event\":\"hello\",\"data\":{{\"text\":\"Hello from curl\"}}}}'\
         \n\
         \n  Connect with any WebSocket client:  ws://{address}/ws?token={token}\
         \n  then send:  {{\"type\":\"subscribe\",\"channel\":\"workspace:demo\"}}\
         \n\
         \n  More tokens:  TIDINGS_JWT_SECRET={secret} tidings gentoken --sub u1 --workspaces demo\n"
    );
}
