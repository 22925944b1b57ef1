//! The `[jwt]` section of the server configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest clock-skew allowance [`JwtSettings::leeway`] may be set to.
///
/// A larger leeway would make `exp` and `nbf` close to meaningless, so
/// [`crate::TokenVerifier::new`] refuses it.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60 * 60);

/// JWT settings, part of the server's TOML config (section `[jwt]`).
///
/// At least one of [`secret`](Self::secret),
/// [`public_key_file`](Self::public_key_file) and
/// [`jwks_file`](Self::jwks_file) must be set; several may be set at once,
/// and a token is then checked against the key that fits its `alg` and `kid`.
///
/// `Debug` never prints the secret.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// HMAC secret for HS256, HS384 and HS512 (its UTF-8 bytes are the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`): RSA (RS256/384/512,
    /// PS256/384/512, at least 2048 bits), EC P-256 (ES256), EC P-384 (ES384)
    /// or Ed25519 (EdDSA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// A JWK Set (JSON) file. The key is chosen by the token's `kid`, or is the
    /// set's only key when the set has a single usable key and the token no `kid`.
    /// Keys marked `"use": "enc"`, keys of unsupported types or curves, and keys
    /// whose `alg` is not a signature algorithm are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted algorithms, by JOSE name (`"HS256"`, `"RS256"`, `"EdDSA"`, ...).
    /// Empty (the default) means every algorithm that fits a configured key;
    /// when given it restricts further. `"none"` is never accepted and is a
    /// configuration error, as is a name that fits no configured key.
    pub algorithms: Vec<String>,
    /// When set, a token's `iss` must equal it (a token without `iss` is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, a token's `aud` must be or contain it (a token without `aud`
    /// is refused). When unset, `aud` is not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`, e.g. `"5s"`. Default 5 s,
    /// at most [`MAX_LEEWAY`]; whole seconds (a fraction is rounded up).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Whether a token must carry `exp`. Default `true`.
    pub require_exp: bool,
    /// The claim that lists the user's roles. Default `"roles"`.
    pub roles_claim: String,
    /// The claim that lists the workspaces the user may use. Default `"workspaces"`.
    pub workspaces_claim: String,
    /// The claim holding free-form user info shown to others in presence.
    /// Default `"info"`.
    pub info_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            secret: None,
            public_key_file: None,
            jwks_file: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: true,
            roles_claim: "roles".to_owned(),
            workspaces_claim: "workspaces".to_owned(),
            info_claim: "info".to_owned(),
        }
    }
}

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .field("roles_claim", &self.roles_claim)
            .field("workspaces_claim", &self.workspaces_claim)
            .field("info_claim", &self.info_claim)
            .finish()
    }
}
