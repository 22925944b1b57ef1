//! Token minting, for `tidings gentoken` and tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::secret::MIN_SECRET_LEN;
use crate::MintError;

/// The claims of a token made by [`mint_hs256`].
#[derive(Debug, Clone, Default)]
pub struct MintClaims {
    /// The user (`sub`); must not be empty.
    pub sub: String,
    /// Workspaces the user may use (`workspaces`).
    pub workspaces: Vec<String>,
    /// The user's roles (`roles`).
    pub roles: Vec<String>,
    /// Lifetime: `exp` is `iat + ttl`. `None` makes a token without `exp`.
    pub ttl: Option<Duration>,
    /// More claims, added last: an entry here replaces a claim of the same
    /// name above (e.g. `"exp"` to make an already expired token in a test).
    pub extra: Map<String, Value>,
}

/// Makes an HS256 token signed with `secret` (its UTF-8 bytes).
///
/// The payload is `{"sub", "iat", "exp" (if ttl), "workspaces", "roles", ...extra}`,
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
    payload.insert(
        "workspaces".to_owned(),
        Value::from(claims.workspaces.clone()),
    );
    payload.insert("roles".to_owned(), Value::from(claims.roles.clone()));
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
