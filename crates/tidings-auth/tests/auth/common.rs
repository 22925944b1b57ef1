//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{json, Value};
use tidings_auth::{JwtSettings, TokenVerifier};

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard valid claims: `sub` alice, `exp` in ten minutes.
pub fn claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 600 })
}

/// Writes `contents` to a fresh file under the target's temp dir.
pub fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tidings-auth-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// The private key fixture that signs for `alg`.
pub fn private_key_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256_private.pem",
        Algorithm::ES384 => "ec384_private.pem",
        Algorithm::EdDSA => "ed25519_private.pem",
        _ => "rsa_private.pem",
    }
}

/// The public key fixture matching [`private_key_for`].
pub fn public_key_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256_public.pem",
        Algorithm::ES384 => "ec384_public.pem",
        Algorithm::EdDSA => "ed25519_public.pem",
        _ => "rsa_public.pem",
    }
}

/// The JWKS kid of the key matching [`private_key_for`].
pub fn kid_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec256-1",
        Algorithm::ES384 => "ec384-1",
        Algorithm::EdDSA => "ed-1",
        _ => "rsa-1",
    }
}

pub fn encoding_key(alg: Algorithm, private_pem: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem).unwrap(),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem).unwrap(),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem).unwrap(),
        AlgorithmFamily::Hmac => EncodingKey::from_secret(&pem),
    }
}

/// Signs `claims` with a private key fixture.
pub fn sign_pem(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, private_pem)).unwrap()
}

/// Signs `claims` with an HMAC secret.
pub fn sign_hmac(alg: Algorithm, secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with an arbitrary header and payload (raw JSON text), signed
/// with `key` under `alg`.
pub fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

pub fn secret_settings() -> JwtSettings {
    JwtSettings {
        secret: Some(SECRET.to_owned()),
        ..JwtSettings::default()
    }
}

pub fn pem_settings(public_pem: &str) -> JwtSettings {
    JwtSettings {
        public_key_file: Some(fixture(public_pem)),
        ..JwtSettings::default()
    }
}

pub fn jwks_settings() -> JwtSettings {
    JwtSettings {
        jwks_file: Some(fixture("jwks.json")),
        ..JwtSettings::default()
    }
}

pub fn verifier(settings: &JwtSettings) -> TokenVerifier {
    TokenVerifier::new(settings).unwrap()
}

pub fn secret_verifier() -> TokenVerifier {
    verifier(&secret_settings())
}

pub const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
