//! Token verification.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::keys::{self, LoadedKey};
use crate::{ConfigError, Identity, JwtSettings, TokenError, MAX_LEEWAY};

/// Longest token [`TokenVerifier::verify`] looks at, in bytes; a longer one is
/// [`TokenError::Malformed`]. Bounds the work an unauthenticated client can cause.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A key ready to verify with, and the validation rules that go with it.
struct VerifyKey {
    loaded: LoadedKey,
    validation: Validation,
}

impl VerifyKey {
    fn allows(&self, alg: Algorithm) -> bool {
        self.loaded.algorithms.contains(&alg)
    }
}

/// The latest expiry an [`Identity`] carries: 9999-12-31T23:59:59Z. A later
/// `exp` (up to 2^64 s) means the same in practice, and kept as is it could
/// not be written as an RFC 3339 date (`expires_at`) nor added to a clock
/// reading (the server panicked on `exp` = 2^64 - 1).
const LATEST_EXPIRY: u64 = 253_402_300_799;

/// Verifies tokens against the configured keys and rules.
///
/// Built once from [`JwtSettings`]; cheap to share behind an `Arc`.
/// [`verify`](Self::verify) is synchronous, does no I/O and takes
/// microseconds (HMAC, EC, Ed25519) to a fraction of a millisecond (RSA).
///
/// Key choice for a token with header `alg` and `kid`:
/// - `alg` must be one of [`algorithms`](Self::algorithms) (never `none`),
///   else [`TokenError::AlgorithmNotAllowed`];
/// - with a `kid` that names JWK Set keys, one of those keys that fits `alg`
///   (if none fits: `AlgorithmNotAllowed`);
/// - otherwise the secret or PEM key that fits `alg`, or, with no `kid`, the
///   JWK Set's only key; else [`TokenError::UnknownKey`].
pub struct TokenVerifier {
    /// `jwt.secret` and/or `jwt.public_key_file`: keys without a kid.
    static_keys: Vec<VerifyKey>,
    /// `jwt.jwks_file`.
    jwks: Vec<VerifyKey>,
    allowed: Vec<Algorithm>,
    /// `jwt.leeway` in whole seconds, for the checks the library does not do.
    leeway: u64,
    issuer: Option<String>,
    roles_claim: String,
    workspaces_claim: String,
    info_claim: String,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("static_keys", &self.static_keys.len())
            .field("jwks_keys", &self.jwks.len())
            .field("algorithms", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// Parses `jwt.algorithms`: `None` when empty (no restriction).
fn parse_algorithms(names: &[String]) -> Result<Option<HashSet<Algorithm>>, ConfigError> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut set = HashSet::new();
    for name in names {
        if name.trim().eq_ignore_ascii_case("none") {
            return Err(ConfigError::AlgorithmNone);
        }
        let alg = Algorithm::from_str(name.trim())
            .map_err(|_| ConfigError::UnknownAlgorithm(name.clone()))?;
        set.insert(alg);
    }
    Ok(Some(set))
}

impl TokenVerifier {
    /// Builds a verifier from settings, reading the PEM and JWK Set files.
    ///
    /// Fails when no key is configured at all, the secret is empty, a file is
    /// unreadable or not a valid key (RSA keys must have 2048 to 4096 bits),
    /// `algorithms` contains `"none"`, an unknown name or one that fits no
    /// configured key, the leeway exceeds [`MAX_LEEWAY`], or a claim name is empty.
    pub fn new(settings: &JwtSettings) -> Result<Self, ConfigError> {
        if settings.secret.is_none()
            && settings.public_key_file.is_none()
            && settings.jwks_file.is_none()
        {
            return Err(ConfigError::NoKey);
        }
        for (setting, name) in [
            ("jwt.roles_claim", &settings.roles_claim),
            ("jwt.workspaces_claim", &settings.workspaces_claim),
            ("jwt.info_claim", &settings.info_claim),
        ] {
            if name.is_empty() {
                return Err(ConfigError::EmptyClaimName(setting));
            }
        }
        if settings.leeway > MAX_LEEWAY {
            return Err(ConfigError::LeewayTooLarge);
        }
        let restriction = parse_algorithms(&settings.algorithms)?;

        let mut static_keys = Vec::new();
        if let Some(secret) = &settings.secret {
            static_keys.push(keys::secret_key(secret)?);
        }
        if let Some(path) = &settings.public_key_file {
            static_keys.push(keys::pem_key(path)?);
        }
        let jwks = match &settings.jwks_file {
            Some(path) => keys::jwks_keys(path)?,
            None => Vec::new(),
        };

        // Every algorithm the keys can verify, then the configured restriction.
        let supported: HashSet<Algorithm> = static_keys
            .iter()
            .chain(&jwks)
            .flat_map(|k| k.algorithms.iter().copied())
            .collect();
        if restriction.is_some() {
            // Report in the order written, for a stable message.
            for name in &settings.algorithms {
                let alg = Algorithm::from_str(name.trim())
                    .map_err(|_| ConfigError::UnknownAlgorithm(name.clone()))?;
                if !supported.contains(&alg) {
                    return Err(ConfigError::AlgorithmWithoutKey(name.trim().to_owned()));
                }
            }
        }
        let permitted = |alg: &Algorithm| restriction.as_ref().is_none_or(|r| r.contains(alg));

        let leeway = settings.leeway.as_secs() + u64::from(settings.leeway.subsec_nanos() > 0);
        let prepare = |mut loaded: LoadedKey| -> Option<VerifyKey> {
            loaded.algorithms.retain(permitted);
            if loaded.algorithms.is_empty() {
                return None;
            }
            let mut validation = Validation::new(loaded.algorithms[0]);
            validation.algorithms = loaded.algorithms.clone();
            validation.leeway = leeway;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            let mut required = Vec::new();
            if settings.require_exp {
                required.push("exp");
            }
            if let Some(issuer) = &settings.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            if let Some(audience) = &settings.audience {
                validation.set_audience(&[audience]);
                validation.validate_aud = true;
                required.push("aud");
            } else {
                validation.validate_aud = false;
            }
            validation.set_required_spec_claims(&required);
            Some(VerifyKey { loaded, validation })
        };
        let static_keys: Vec<VerifyKey> = static_keys.into_iter().filter_map(prepare).collect();
        let jwks: Vec<VerifyKey> = jwks.into_iter().filter_map(prepare).collect();

        let mut allowed: Vec<Algorithm> = Vec::new();
        for key in static_keys.iter().chain(&jwks) {
            for alg in &key.loaded.algorithms {
                if !allowed.contains(alg) {
                    allowed.push(*alg);
                }
            }
        }

        Ok(Self {
            static_keys,
            jwks,
            allowed,
            leeway,
            issuer: settings.issuer.clone(),
            roles_claim: settings.roles_claim.clone(),
            workspaces_claim: settings.workspaces_claim.clone(),
            info_claim: settings.info_claim.clone(),
        })
    }

    /// The algorithms this verifier accepts.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.allowed
    }

    /// The claim that lists the user's roles (`jwt.roles_claim`).
    pub fn roles_claim(&self) -> &str {
        &self.roles_claim
    }

    /// The claim that lists the user's workspaces (`jwt.workspaces_claim`);
    /// check it with [`Identity::claim_contains`].
    pub fn workspaces_claim(&self) -> &str {
        &self.workspaces_claim
    }

    /// The claim holding presence info (`jwt.info_claim`).
    pub fn info_claim(&self) -> &str {
        &self.info_claim
    }

    /// Verifies a token (the compact JWS form, without any `Bearer ` prefix)
    /// and returns who it says the connection is.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = parse_header(token)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| TokenError::AlgorithmNotAllowed)?;
        if !self.allowed.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }

        let claims = match header.kid.as_deref() {
            Some(kid) => self.verify_with_kid(token, alg, kid)?,
            None => {
                let key = self
                    .static_key(alg)
                    .or(match self.jwks.as_slice() {
                        [only] => Some(only),
                        _ => None,
                    })
                    .ok_or(TokenError::UnknownKey)?;
                if !key.allows(alg) {
                    return Err(TokenError::AlgorithmNotAllowed);
                }
                decode(token, key)?
            }
        };
        self.identity(claims)
    }

    fn static_key(&self, alg: Algorithm) -> Option<&VerifyKey> {
        self.static_keys.iter().find(|k| k.allows(alg))
    }

    fn verify_with_kid(
        &self,
        token: &str,
        alg: Algorithm,
        kid: &str,
    ) -> Result<Map<String, Value>, TokenError> {
        let mut named = false;
        let mut tried = false;
        for key in self
            .jwks
            .iter()
            .filter(|k| k.loaded.kid.as_deref() == Some(kid))
        {
            named = true;
            if !key.allows(alg) {
                continue;
            }
            tried = true;
            match decode(token, key) {
                // Several keys may share a kid; try the next one.
                Err(TokenError::BadSignature) => continue,
                other => return other,
            }
        }
        if tried {
            return Err(TokenError::BadSignature);
        }
        if named {
            // The kid names only keys of another type: key-type confusion.
            return Err(TokenError::AlgorithmNotAllowed);
        }
        match self.static_key(alg) {
            Some(key) => decode(token, key),
            None => Err(TokenError::UnknownKey),
        }
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, TokenError> {
        // The library also accepts an array `iss` that contains the issuer;
        // `iss` is a single string (RFC 7519), and must be exactly ours.
        if let Some(issuer) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                _ => return Err(TokenError::WrongIssuer),
            }
        }
        // The library leaves `iat` alone. A token issued in the future comes
        // from a clock ahead of ours: refused beyond the leeway, as `nbf` is.
        match claims.get("iat") {
            None | Some(Value::Null) => {}
            Some(iat) => {
                let iat = iat.as_f64().ok_or(TokenError::Malformed)?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                if iat > now + self.leeway as f64 {
                    return Err(TokenError::NotYetValid);
                }
            }
        }
        let user: Arc<str> = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => Arc::from(sub.as_str()),
            _ => return Err(TokenError::MissingSubject),
        };
        let expires_at = match claims.get("exp") {
            None | Some(Value::Null) => None,
            // The library accepted it, so it is a non-negative number.
            Some(exp) => exp
                .as_u64()
                .or_else(|| exp.as_f64().map(|f| f.round() as u64))
                .map(|exp| exp.min(LATEST_EXPIRY)),
        };
        let roles: Arc<[String]> = match claims.get(&self.roles_claim) {
            None | Some(Value::Null) => Arc::from(Vec::new()),
            Some(Value::String(role)) => Arc::from(vec![role.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(TokenError::Malformed))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            Some(_) => return Err(TokenError::Malformed),
        };
        let info = match claims.get(&self.info_claim) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.clone()),
        };
        Ok(Identity {
            user,
            expires_at,
            roles,
            claims: Arc::new(claims),
            info,
        })
    }
}

/// The header members that choose the key.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions: this verifier understands none, so any is refused.
    #[serde(default)]
    crit: Option<Value>,
}

fn parse_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(header)
}

fn decode(token: &str, key: &VerifyKey) -> Result<Map<String, Value>, TokenError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.loaded.key, &key.validation)
        .map(|data| data.claims)
        .map_err(|e| map_error(e.kind()))
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidSubject => TokenError::MissingSubject,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::MissingExpiry,
            "iss" => TokenError::WrongIssuer,
            "aud" => TokenError::WrongAudience,
            "sub" => TokenError::MissingSubject,
            _ => TokenError::Malformed,
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
        _ => TokenError::Malformed,
    }
}

// The verifier is shared between connection tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TokenVerifier>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_token_errors() {
        use TokenError::*;
        let cases = [
            (ErrorKind::InvalidSignature, BadSignature),
            (ErrorKind::ExpiredSignature, Expired),
            (ErrorKind::ImmatureSignature, NotYetValid),
            (ErrorKind::InvalidIssuer, WrongIssuer),
            (ErrorKind::InvalidAudience, WrongAudience),
            (ErrorKind::MissingRequiredClaim("exp".into()), MissingExpiry),
            (ErrorKind::MissingRequiredClaim("iss".into()), WrongIssuer),
            (ErrorKind::MissingRequiredClaim("aud".into()), WrongAudience),
            (
                ErrorKind::MissingRequiredClaim("sub".into()),
                MissingSubject,
            ),
            (ErrorKind::MissingRequiredClaim("nbf".into()), Malformed),
            (ErrorKind::InvalidClaimFormat("exp".into()), Malformed),
            (ErrorKind::InvalidAlgorithm, AlgorithmNotAllowed),
            (ErrorKind::InvalidToken, Malformed),
        ];
        for (kind, expected) in cases {
            assert_eq!(map_error(&kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn header_parsing() {
        assert!(matches!(parse_header(""), Err(TokenError::Malformed)));
        assert!(matches!(parse_header("a.b"), Err(TokenError::Malformed)));
        assert!(matches!(
            parse_header("a.b.c.d"),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(parse_header("!!.b.c"), Err(TokenError::Malformed)));
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let h = parse_header(&format!("{}.e30.", enc(r#"{"alg":"none"}"#)));
        assert!(matches!(h, Ok(RawHeader { ref alg, .. }) if alg == "none"));
        let h = parse_header(&format!("{}.e30.x", enc(r#"{"alg":"HS256","kid":"k"}"#)));
        assert!(matches!(h, Ok(RawHeader { kid: Some(ref k), .. }) if k == "k"));
        let h = parse_header(&format!(
            "{}.e30.x",
            enc(r#"{"alg":"HS256","crit":["b64"]}"#)
        ));
        assert!(matches!(h, Err(TokenError::Malformed)));
        let h = parse_header(&format!("{}.e30.x", enc(r#"{"kid":"k"}"#)));
        assert!(matches!(h, Err(TokenError::Malformed)));
        let h = parse_header(&format!("{}.e30.x", enc(r#"{"alg":"HS256","kid":5}"#)));
        assert!(matches!(h, Err(TokenError::Malformed)));
    }
}
