//! Random secrets for development mode.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// The shortest HMAC secret accepted, in bytes: RFC 7518 §3.2 requires a key
/// at least as long as the hash output, 32 bytes for HS256.
pub const MIN_SECRET_LEN: usize = 32;

/// How to make a secret long enough, for error messages.
pub(crate) const SECRET_HINT: &str = "generate one with `openssl rand -base64 32` (44 characters)";

/// A new random secret: 32 bytes from a cryptographically secure generator
/// (the thread-local generator of `rand`, seeded from the OS), as URL-safe
/// base64 without padding (43 characters of `A-Z a-z 0-9 - _`).
///
/// Good for an HMAC JWT secret or an API key.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
