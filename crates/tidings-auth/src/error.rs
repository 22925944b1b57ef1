//! Error types. None of them ever holds a token, a secret or key material.

use std::path::PathBuf;

/// Why a token was refused.
///
/// Messages are safe to show a client and to log: they never contain any part
/// of the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` is in the past, beyond the configured leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the configured leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The signature does not match the key chosen for the token.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is not a well-formed JWT (structure, base64, JSON, claim types,
    /// unsupported critical headers, or too long).
    #[error("token is malformed")]
    Malformed,
    /// `sub` is missing, not a string, or empty.
    #[error("token has no subject")]
    MissingSubject,
    /// `exp` is missing (or not a number) and the server requires it.
    #[error("token has no expiry")]
    MissingExpiry,
    /// The token's `alg` is `none`, unknown, not enabled, or does not fit the
    /// key its `kid` names.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No configured key fits the token (unknown `kid`, or no `kid` when the
    /// key set has several keys).
    #[error("token key is unknown")]
    UnknownKey,
    /// `iss` is missing or is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
}

impl TokenError {
    /// True for [`TokenError::Expired`]: the client may get a fresh token and retry.
    pub fn is_expired(&self) -> bool {
        matches!(self, Self::Expired)
    }

    /// A stable, machine-readable code for the error, e.g. `"token_expired"`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadSignature => "token_bad_signature",
            Self::Malformed => "token_malformed",
            Self::MissingSubject => "token_missing_subject",
            Self::MissingExpiry => "token_missing_expiry",
            Self::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            Self::UnknownKey => "token_unknown_key",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
        }
    }
}

/// A problem with the `[jwt]` settings, found by [`crate::TokenVerifier::new`].
///
/// The message names the setting or file that is wrong, never the secret or
/// any key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// None of `jwt.secret`, `jwt.public_key_file` and `jwt.jwks_file` is set.
    #[error("no JWT key configured: set jwt.secret, jwt.public_key_file or jwt.jwks_file")]
    NoKey,
    /// `jwt.secret` is set but empty.
    #[error(
        "jwt.secret is empty; it must be at least 32 bytes (RFC 7518 §3.2): {}",
        crate::secret::SECRET_HINT
    )]
    EmptySecret,
    /// `jwt.secret` is shorter than [`crate::MIN_SECRET_LEN`] bytes.
    #[error(
        "jwt.secret is {len} bytes; an HMAC secret must be at least 32 bytes (RFC 7518 §3.2): {}",
        crate::secret::SECRET_HINT
    )]
    ShortSecret {
        /// The secret's length in bytes (never the secret).
        len: usize,
    },
    /// A key file could not be read.
    #[error("cannot read {setting} {}", path.display())]
    ReadFile {
        /// The setting that names the file, e.g. `"jwt.public_key_file"`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `jwt.public_key_file` is not a usable PEM public key.
    #[error("jwt.public_key_file {} is not usable: {reason}", path.display())]
    InvalidPublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `jwt.jwks_file` is not a JWK Set.
    #[error("jwt.jwks_file {} is not a JWK Set: {reason}", path.display())]
    InvalidJwks {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (position of a JSON error, never its content).
        reason: String,
    },
    /// One key of `jwt.jwks_file` is unusable.
    #[error("jwt.jwks_file {}: key #{index}{} is not usable: {reason}", path.display(), kid_suffix(kid))]
    InvalidJwk {
        /// The file.
        path: PathBuf,
        /// Position of the key in `keys`, from 0.
        index: usize,
        /// The key's `kid`, if any.
        kid: Option<String>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `jwt.jwks_file` has no key usable for signature verification.
    #[error("jwt.jwks_file {} has no key usable to verify signatures", path.display())]
    NoUsableJwk {
        /// The file.
        path: PathBuf,
    },
    /// `jwt.algorithms` contains `none`.
    #[error("jwt.algorithms must not contain \"none\": unsigned tokens are never accepted")]
    AlgorithmNone,
    /// `jwt.algorithms` contains a name that is not a supported algorithm.
    #[error("jwt.algorithms: unknown algorithm {0:?} (supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")]
    UnknownAlgorithm(String),
    /// `jwt.algorithms` contains an algorithm that no configured key can verify.
    #[error("jwt.algorithms: {0} fits none of the configured keys")]
    AlgorithmWithoutKey(String),
    /// `jwt.leeway` is larger than [`crate::MAX_LEEWAY`].
    #[error("jwt.leeway is too large (at most {} seconds)", crate::MAX_LEEWAY.as_secs())]
    LeewayTooLarge,
    /// A claim-name setting is empty.
    #[error("{0} must not be empty")]
    EmptyClaimName(&'static str),
}

fn kid_suffix(kid: &Option<String>) -> String {
    match kid {
        Some(kid) => format!(" (kid {kid:?})"),
        None => String::new(),
    }
}

/// Why [`crate::mint_hs256`] could not make a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret is empty.
    #[error(
        "the signing secret is empty; it must be at least 32 bytes (RFC 7518 §3.2): {}",
        crate::secret::SECRET_HINT
    )]
    EmptySecret,
    /// The secret is shorter than [`crate::MIN_SECRET_LEN`] bytes.
    #[error(
        "the signing secret is {len} bytes; an HMAC secret must be at least 32 bytes (RFC 7518 §3.2): {}",
        crate::secret::SECRET_HINT
    )]
    ShortSecret {
        /// The secret's length in bytes (never the secret).
        len: usize,
    },
    /// `sub` is empty (or `extra` replaced it with something that is not a
    /// non-empty string); such a token would be refused.
    #[error("the token subject is empty")]
    EmptySubject,
    /// `now + ttl` does not fit in a timestamp.
    #[error("the token lifetime is too large")]
    TtlTooLarge,
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// The JWT library failed to encode or sign.
    #[error("could not encode the token")]
    Encode(#[source] jsonwebtoken::errors::Error),
}
