//! What an Identity carries.

use jsonwebtoken::Algorithm;
use serde_json::json;
use tidings_auth::JwtSettings;

use crate::common::*;

#[test]
fn identity_fields() {
    let v = secret_verifier();
    let exp = now() + 600;
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({
            "sub": "alice",
            "exp": exp,
            "roles": ["admin", "editor"],
            "workspaces": ["w1", "w2"],
            "team": "blue",
            "info": {"name": "Alice", "color": "#f00"},
        }),
    );
    let id = v.verify(&token).unwrap();
    assert_eq!(&*id.user, "alice");
    assert_eq!(id.expires_at, Some(exp));
    assert_eq!(&*id.roles, &["admin".to_owned(), "editor".to_owned()]);
    assert!(id.has_role("admin"));
    assert!(!id.has_role("owner"));
    assert_eq!(id.info, Some(json!({"name": "Alice", "color": "#f00"})));
    assert_eq!(id.claims["team"], json!("blue"));
    assert!(id.claim_contains("workspaces", "w2"));
    assert!(!id.claim_contains("workspaces", "w3"));
    assert!(id.claim_contains("team", "blue"));
    assert!(!id.claim_contains("team", "red"));
    assert!(!id.claim_contains("missing", "x"));
    assert!(!id.claim_contains("info", "Alice"));
    assert_eq!(id.claim_strings("workspaces"), vec!["w1", "w2"]);
    assert_eq!(id.claim_strings("team"), vec!["blue"]);
    assert!(id.claim_strings("info").is_empty());
    assert_eq!(v.workspaces_claim(), "workspaces");
    assert_eq!(v.roles_claim(), "roles");
    assert_eq!(v.info_claim(), "info");
}

#[test]
fn roles_forms() {
    let v = secret_verifier();
    let exp = now() + 600;
    let roles_of = |payload| {
        let token = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &payload);
        v.verify(&token).unwrap().roles.to_vec()
    };
    assert_eq!(
        roles_of(json!({"sub": "a", "exp": exp, "roles": "admin"})),
        vec!["admin"]
    );
    assert!(roles_of(json!({"sub": "a", "exp": exp})).is_empty());
    assert!(roles_of(json!({"sub": "a", "exp": exp, "roles": null})).is_empty());
    assert!(roles_of(json!({"sub": "a", "exp": exp, "roles": []})).is_empty());
}

#[test]
fn custom_claim_names() {
    let v = verifier(&JwtSettings {
        roles_claim: "https://example.com/roles".into(),
        workspaces_claim: "ws".into(),
        info_claim: "profile".into(),
        ..secret_settings()
    });
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({
            "sub": "bob",
            "exp": now() + 600,
            "https://example.com/roles": ["viewer"],
            "roles": ["admin"],
            "ws": "main",
            "profile": "Bob",
            "info": "ignored",
        }),
    );
    let id = v.verify(&token).unwrap();
    assert_eq!(&*id.roles, &["viewer".to_owned()]);
    assert_eq!(id.info, Some(json!("Bob")));
    assert_eq!(v.workspaces_claim(), "ws");
    assert!(id.claim_contains(v.workspaces_claim(), "main"));
}

#[test]
fn float_expiry() {
    let v = secret_verifier();
    let exp = now() + 600;
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({"sub": "a", "exp": exp as f64 + 0.25}),
    );
    assert_eq!(v.verify(&token).unwrap().expires_at, Some(exp));
}
