//! Token minting, for `tidings gentoken` and tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::secret::MIN_SECRET_LEN;
use crate::{JwtSettings, MintError};

/// The claims of a token made by [`mint_hs256`].
#[derive(Debug, Clone, Default)]
pub struct MintClaims {
    /// The user (`sub`); must not be empty.
    pub sub: String,
    /// Workspaces the user may use (under `workspaces_claim`).
    pub workspaces: Vec<String>,
    /// The user's roles (under `roles_claim`).
    pub roles: Vec<String>,
    /// The claim [`workspaces`](Self::workspaces) goes in; empty means
    /// `"workspaces"`.
    pub workspaces_claim: String,
    /// The claim [`roles`](Self::roles) goes in; empty means `"roles"`.
    pub roles_claim: String,
    /// Lifetime: `exp` is `iat + ttl`. `None` makes a token without `exp`.
    pub ttl: Option<Duration>,
    /// More claims, added last: an entry here replaces a claim of the same
    /// name above (e.g. `"exp"` to make an already expired token in a test).
    pub extra: Map<String, Value>,
}

impl MintClaims {
    /// Fits the claims to what a server with `settings` verifies: its claim
    /// names for workspaces and roles, and its `iss` and `aud` when it checks
    /// them (a token without them would be refused).
    pub fn for_settings(mut self, settings: &JwtSettings) -> Self {
        self.workspaces_claim = settings.workspaces_claim.clone();
        self.roles_claim = settings.roles_claim.clone();
        for (claim, value) in [("iss", &settings.issuer), ("aud", &settings.audience)] {
            if let Some(value) = value {
                self.extra
                    .entry(claim.to_owned())
                    .or_insert_with(|| Value::from(value.as_str()));
            }
        }
        self
    }
}

/// Makes an HS256 token signed with `secret` (its UTF-8 bytes).
///
/// The payload is `{"sub", "iat", "exp" (if ttl), "workspaces", "roles", ...extra}`
/// (the two lists under their claim names when those are set),
/// `iat` being the current time; the header is `{"typ": "JWT", "alg": "HS256"}`.
pub fn mint_hs256(secret: &str, claims: &MintClaims) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(MintError::ShortSecret { len: secret.len() });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?
        .as_secs();

    let mut payload = Map::new();
    payload.insert("sub".to_owned(), Value::from(claims.sub.as_str()));
    payload.insert("iat".to_owned(), Value::from(now));
    if let Some(ttl) = claims.ttl {
        let exp = now
            .checked_add(ttl.as_secs())
            .filter(|exp| *exp <= i64::MAX as u64)
            .ok_or(MintError::TtlTooLarge)?;
        payload.insert("exp".to_owned(), Value::from(exp));
    }
    let name = |claim: &str, default: &str| {
        if claim.is_empty() {
            default.to_owned()
        } else {
            claim.to_owned()
        }
    };
    payload.insert(
        name(&claims.workspaces_claim, "workspaces"),
        Value::from(claims.workspaces.clone()),
    );
    payload.insert(
        name(&claims.roles_claim, "roles"),
        Value::from(claims.roles.clone()),
    );
    for (name, value) in &claims.extra {
        payload.insert(name.clone(), value.clone());
    }

    match payload.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => {}
        _ => return Err(MintError::EmptySubject),
    }

    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &payload,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(MintError::Encode)
}
