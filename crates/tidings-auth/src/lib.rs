//! Authentication for Tidings.
//!
//! - [`TokenVerifier`] checks the JWTs that browsers present when they connect
//!   and turns them into an [`Identity`].
//! - [`ApiKey`] checks the keys that backends present, in constant time.
//! - [`mint_hs256`] makes tokens, for the `tidings gentoken` command and for tests.
//! - [`generate_secret`] makes random secrets and keys for development mode.
//!
//! No error type of this crate ever carries a token, a secret or key material
//! in its message, so every error can be logged and every [`TokenError`] can
//! be shown to the client that presented the token.
//!
//! ```
//! use std::time::Duration;
//! use tidings_auth::{mint_hs256, JwtSettings, MintClaims, TokenVerifier};
//!
//! // At least 32 bytes (RFC 7518 §3.2), e.g. from `openssl rand -base64 32`.
//! let secret = "a-long-random-secret-of-32-bytes!";
//! let settings = JwtSettings { secret: Some(secret.into()), ..JwtSettings::default() };
//! let verifier = TokenVerifier::new(&settings)?;
//!
//! let token = mint_hs256(secret, &MintClaims {
//!     sub: "alice".into(),
//!     workspaces: vec!["acme".into()],
//!     ttl: Some(Duration::from_secs(3600)),
//!     ..MintClaims::default()
//! })?;
//!
//! let identity = verifier.verify(&token)?;
//! assert_eq!(&*identity.user, "alice");
//! assert!(identity.claim_contains(verifier.workspaces_claim(), "acme"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod api_key;
mod error;
mod identity;
mod keys;
mod mint;
mod secret;
mod settings;
mod verifier;

pub use api_key::ApiKey;
pub use error::{ConfigError, MintError, TokenError};
pub use identity::Identity;
pub use mint::{mint_hs256, MintClaims};
pub use secret::{generate_secret, MIN_SECRET_LEN};
pub use settings::{JwtSettings, MAX_LEEWAY};
pub use verifier::{TokenVerifier, MAX_TOKEN_LEN};
