//! Minting, API keys and secret generation.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tidings_auth::{
    generate_secret, mint_hs256, ApiKey, JwtSettings, MintClaims, MintError, TokenError,
};

use crate::common::*;

fn sample() -> MintClaims {
    MintClaims {
        sub: "alice".into(),
        workspaces: vec!["w1".into(), "w2".into()],
        roles: vec!["admin".into()],
        ttl: Some(Duration::from_secs(3600)),
        ..MintClaims::default()
    }
}

#[test]
fn minted_token_verifies() {
    let token = mint_hs256(SECRET, &sample()).unwrap();
    let id = secret_verifier().verify(&token).unwrap();
    assert_eq!(&*id.user, "alice");
    assert_eq!(&*id.roles, &["admin".to_owned()]);
    assert!(id.claim_contains("workspaces", "w1"));
    assert!(id.claim_contains("workspaces", "w2"));
    let exp = id.expires_at.unwrap();
    let iat = id.claims["iat"].as_u64().unwrap();
    assert_eq!(exp, iat + 3600);
    assert!(iat.abs_diff(now()) <= 5);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
}

#[test]
fn minted_payload_shape() {
    let mut claims = sample();
    claims.extra.insert("info".into(), json!({"name": "Alice"}));
    let token = mint_hs256(SECRET, &claims).unwrap();
    let id = secret_verifier().verify(&token).unwrap();
    let mut keys: Vec<&str> = id.claims.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["exp", "iat", "info", "roles", "sub", "workspaces"]);
    assert_eq!(id.info, Some(json!({"name": "Alice"})));
}

#[test]
fn mint_without_ttl_has_no_exp() {
    let claims = MintClaims {
        ttl: None,
        workspaces: Vec::new(),
        roles: Vec::new(),
        ..sample()
    };
    let token = mint_hs256(SECRET, &claims).unwrap();
    assert_eq!(
        secret_verifier().verify(&token).unwrap_err(),
        TokenError::MissingExpiry
    );
    let v = verifier(&JwtSettings {
        require_exp: false,
        ..secret_settings()
    });
    let id = v.verify(&token).unwrap();
    assert_eq!(id.expires_at, None);
    assert!(id.roles.is_empty());
    assert_eq!(id.claims["workspaces"], json!([]));
}

#[test]
fn mint_extra_overrides() {
    let mut claims = sample();
    claims.extra.insert("exp".into(), json!(now() - 3600));
    let token = mint_hs256(SECRET, &claims).unwrap();
    assert_eq!(
        secret_verifier().verify(&token).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn mint_errors() {
    assert!(matches!(
        mint_hs256("", &sample()),
        Err(MintError::EmptySecret)
    ));
    let claims = MintClaims {
        sub: String::new(),
        ..sample()
    };
    assert!(matches!(
        mint_hs256(SECRET, &claims),
        Err(MintError::EmptySubject)
    ));
    let mut claims = sample();
    claims.extra.insert("sub".into(), json!(5));
    assert!(matches!(
        mint_hs256(SECRET, &claims),
        Err(MintError::EmptySubject)
    ));
    let claims = MintClaims {
        ttl: Some(Duration::MAX),
        ..sample()
    };
    let e = mint_hs256(SECRET, &claims).unwrap_err();
    assert!(matches!(e, MintError::TtlTooLarge));
    assert!(!e.to_string().contains(SECRET));
}

#[test]
fn api_key_matching() {
    let key = ApiKey::new("backend-key-123");
    assert!(key.matches("backend-key-123"));
    assert!(!key.matches("backend-key-124"));
    assert!(!key.matches("backend-key-12"));
    assert!(!key.matches("backend-key-1234"));
    assert!(!key.matches(""));
    let empty = ApiKey::new("");
    assert!(empty.is_empty());
    assert!(!empty.matches(""));
    assert!(!empty.matches("x"));
    assert_eq!(format!("{key:?}"), "ApiKey(***)");
    let cloned = key.clone();
    assert!(cloned.matches("backend-key-123"));
    assert_eq!(cloned.expose(), "backend-key-123");
}

#[test]
fn api_key_serde() {
    let key: ApiKey = serde_json::from_str("\"k1\"").unwrap();
    assert!(key.matches("k1"));
    assert_eq!(serde_json::to_string(&key).unwrap(), "\"k1\"");
}

#[test]
fn generated_keys() {
    let mut seen = HashSet::new();
    for _ in 0..64 {
        let s = generate_secret();
        assert_eq!(s.len(), 43);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(seen.insert(s));
    }
    let key = ApiKey::generate();
    assert_eq!(key.expose().len(), 43);
    assert!(key.matches(key.expose()));
    // A generated secret works for minting and verifying.
    let secret = generate_secret();
    let token = mint_hs256(&secret, &sample()).unwrap();
    let v = verifier(&JwtSettings {
        secret: Some(secret),
        ..JwtSettings::default()
    });
    assert!(v.verify(&token).is_ok());
}

#[test]
fn minting_with_a_short_secret_is_refused() {
    let e = mint_hs256("x", &sample()).unwrap_err();
    assert!(matches!(e, MintError::ShortSecret { len: 1 }), "{e:?}");
    assert!(e.to_string().contains("openssl rand -base64 32"), "{e}");
}
