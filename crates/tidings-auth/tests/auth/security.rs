//! Attacks and refusals.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tidings_auth::{JwtSettings, TokenError, TokenVerifier};

use crate::common::*;

fn unsigned(header: &str) -> String {
    let payload = json!({ "sub": "mallory", "exp": now() + 600 }).to_string();
    format!("{}.{}.", b64(header.as_bytes()), b64(payload.as_bytes()))
}

#[test]
fn alg_none_is_refused() {
    let verifiers = [
        secret_verifier(),
        verifier(&pem_settings("rsa_public.pem")),
        verifier(&jwks_settings()),
    ];
    for v in &verifiers {
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"none","kid":"rsa-1"}"#,
        ] {
            assert_eq!(
                v.verify(&unsigned(header)).unwrap_err(),
                TokenError::AlgorithmNotAllowed,
                "{header}"
            );
        }
        // Even with a signature part that is not empty.
        let token = format!("{}AAAA", unsigned(r#"{"alg":"none"}"#));
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let forged = sign_hmac(Algorithm::HS256, &pem, None, &claims());
    let forged_kid = sign_hmac(Algorithm::HS256, &pem, Some("rsa-1"), &claims());

    // Only the RSA PEM key: HMAC is not an allowed algorithm at all.
    let v = verifier(&pem_settings("rsa_public.pem"));
    assert_eq!(
        v.verify(&forged).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        v.verify(&forged_kid).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );

    // Same with the PKCS#1 form of the key and its bytes.
    let pem1 = std::fs::read(fixture("rsa_public_pkcs1.pem")).unwrap();
    let v = verifier(&pem_settings("rsa_public_pkcs1.pem"));
    let forged1 = sign_hmac(Algorithm::HS256, &pem1, None, &claims());
    assert_eq!(
        v.verify(&forged1).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );

    // RSA key in a JWK Set, token naming it.
    let v = verifier(&jwks_settings());
    assert_eq!(
        v.verify(&forged_kid).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        v.verify(&forged).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );

    // With an HMAC secret configured too, the forged token still fails:
    // it is checked against the secret, never against the public key.
    let v = TokenVerifier::new(&JwtSettings {
        secret: Some(SECRET.to_owned()),
        public_key_file: Some(fixture("rsa_public.pem")),
        ..JwtSettings::default()
    })
    .unwrap();
    assert_eq!(v.verify(&forged).unwrap_err(), TokenError::BadSignature);
    let v = TokenVerifier::new(&JwtSettings {
        secret: Some(SECRET.to_owned()),
        jwks_file: Some(fixture("jwks.json")),
        ..JwtSettings::default()
    })
    .unwrap();
    assert_eq!(
        v.verify(&forged_kid).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(v.verify(&forged).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn asymmetric_tokens_are_refused_with_only_a_secret() {
    let v = secret_verifier();
    for alg in ASYMMETRIC {
        let token = sign_pem(alg, private_key_for(alg), None, &claims());
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed,
            "{alg:?}"
        );
    }
}

#[test]
fn expired() {
    let v = secret_verifier();
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": now() - 60 }),
    );
    let err = v.verify(&token).unwrap_err();
    assert_eq!(err, TokenError::Expired);
    assert!(err.is_expired());
    assert!(!TokenError::BadSignature.is_expired());
}

#[test]
fn expiry_within_leeway_is_accepted() {
    // Default leeway is 5 s.
    let v = secret_verifier();
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": now() - 2 }),
    );
    assert!(v.verify(&token).is_ok());
    // No leeway: the same token is expired.
    let v = verifier(&JwtSettings {
        leeway: std::time::Duration::ZERO,
        ..secret_settings()
    });
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::Expired);
}

#[test]
fn not_yet_valid() {
    let v = secret_verifier();
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 120 }),
    );
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::NotYetValid);
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 2 }),
    );
    assert!(v.verify(&token).is_ok(), "within leeway");
}

#[test]
fn issued_in_the_future_is_not_yet_valid() {
    let v = secret_verifier();
    let sign = |iat: Value| {
        sign_hmac(
            Algorithm::HS256,
            SECRET.as_bytes(),
            None,
            &json!({ "sub": "alice", "exp": now() + 600, "iat": iat }),
        )
    };
    assert_eq!(
        v.verify(&sign(json!(now() + 120))).unwrap_err(),
        TokenError::NotYetValid
    );
    assert!(v.verify(&sign(json!(now() + 2))).is_ok(), "within leeway");
    assert!(v.verify(&sign(json!(now() - 3600))).is_ok());
    assert!(v.verify(&sign(json!(now() as f64 - 0.5))).is_ok());
    assert_eq!(
        v.verify(&sign(json!("yesterday"))).unwrap_err(),
        TokenError::Malformed
    );
}

#[test]
fn wrong_key_is_bad_signature() {
    let v = secret_verifier();
    let token = sign_hmac(Algorithm::HS256, b"another secret", None, &claims());
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::BadSignature);

    let v = verifier(&pem_settings("rsa_public.pem"));
    let token = sign_pem(Algorithm::RS256, "rsa2_private.pem", None, &claims());
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn tampered_payload_is_bad_signature() {
    for (v, token) in [
        (
            secret_verifier(),
            sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &claims()),
        ),
        (
            verifier(&pem_settings("ec256_public.pem")),
            sign_pem(Algorithm::ES256, "ec256_private.pem", None, &claims()),
        ),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let evil = b64(json!({ "sub": "root", "exp": now() + 600 })
            .to_string()
            .as_bytes());
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(v.verify(&tampered).unwrap_err(), TokenError::BadSignature);
        // A signature that is not base64url at all.
        let broken = format!("{}.{}.***", parts[0], parts[1]);
        assert_eq!(v.verify(&broken).unwrap_err(), TokenError::Malformed);
        // No signature.
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(v.verify(&stripped).unwrap_err(), TokenError::BadSignature);
    }
}

#[test]
fn missing_subject() {
    let v = secret_verifier();
    for payload in [
        json!({ "exp": now() + 600 }),
        json!({ "sub": "", "exp": now() + 600 }),
        json!({ "sub": 42, "exp": now() + 600 }),
        json!({ "sub": null, "exp": now() + 600 }),
    ] {
        let token = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &payload);
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::MissingSubject,
            "{payload}"
        );
    }
}

#[test]
fn missing_expiry() {
    let v = secret_verifier();
    let token = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice" }),
    );
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::MissingExpiry);
    let bad_type = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": "tomorrow" }),
    );
    assert!(v.verify(&bad_type).is_err());

    let lenient = verifier(&JwtSettings {
        require_exp: false,
        ..secret_settings()
    });
    let id = lenient.verify(&token).unwrap();
    assert_eq!(id.expires_at, None);
    // An exp that is present is still checked.
    let expired = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        None,
        &json!({ "sub": "alice", "exp": now() - 600 }),
    );
    assert_eq!(lenient.verify(&expired).unwrap_err(), TokenError::Expired);
}

#[test]
fn issuer() {
    let v = verifier(&JwtSettings {
        issuer: Some("https://auth.example".into()),
        ..secret_settings()
    });
    let sign = |payload| sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &payload);
    let exp = now() + 600;
    assert!(v
        .verify(&sign(
            json!({"sub": "a", "exp": exp, "iss": "https://auth.example"})
        ))
        .is_ok());
    for payload in [
        json!({"sub": "a", "exp": exp, "iss": "https://evil.example"}),
        json!({"sub": "a", "exp": exp}),
        json!({"sub": "a", "exp": exp, "iss": 7}),
        json!({"sub": "a", "exp": exp, "iss": ["https://evil.example", "https://auth.example"]}),
        json!({"sub": "a", "exp": exp, "iss": ["https://auth.example"]}),
        json!({"sub": "a", "exp": exp, "iss": "https://auth.example/"}),
    ] {
        assert_eq!(
            v.verify(&sign(payload.clone())).unwrap_err(),
            TokenError::WrongIssuer,
            "{payload}"
        );
    }
    // Without the setting, iss is not checked.
    assert!(secret_verifier()
        .verify(&sign(json!({"sub": "a", "exp": exp, "iss": "anyone"})))
        .is_ok());
}

#[test]
fn audience() {
    let v = verifier(&JwtSettings {
        audience: Some("tidings".into()),
        ..secret_settings()
    });
    let sign = |payload| sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &payload);
    let exp = now() + 600;
    for payload in [
        json!({"sub": "a", "exp": exp, "aud": "tidings"}),
        json!({"sub": "a", "exp": exp, "aud": ["other", "tidings"]}),
    ] {
        assert!(v.verify(&sign(payload.clone())).is_ok(), "{payload}");
    }
    for payload in [
        json!({"sub": "a", "exp": exp, "aud": "other"}),
        json!({"sub": "a", "exp": exp, "aud": ["other"]}),
        json!({"sub": "a", "exp": exp, "aud": []}),
        json!({"sub": "a", "exp": exp}),
    ] {
        assert_eq!(
            v.verify(&sign(payload.clone())).unwrap_err(),
            TokenError::WrongAudience,
            "{payload}"
        );
    }
    // Without the setting, aud is not checked.
    assert!(secret_verifier()
        .verify(&sign(json!({"sub": "a", "exp": exp, "aud": "whatever"})))
        .is_ok());
}

#[test]
fn garbage_is_malformed() {
    let v = secret_verifier();
    for token in [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "....",
        "Bearer x.y.z",
        "eyJhbGciOiJIUzI1NiJ9",
        "\u{0}\u{1}.\u{2}.\u{3}",
        "ü.ö.ä",
    ] {
        assert_eq!(
            v.verify(token).unwrap_err(),
            TokenError::Malformed,
            "{token:?}"
        );
    }
    // Oversized.
    let long = format!("{}.{}.x", "a".repeat(70_000), "b");
    assert_eq!(v.verify(&long).unwrap_err(), TokenError::Malformed);
}

#[test]
fn signed_but_malformed_payloads() {
    let v = secret_verifier();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    for payload in [
        "not json",
        "[1,2,3]",
        "\"a string\"",
        r#"{"sub":"alice","exp":"#,
    ] {
        let token = sign_raw(header, payload, &key, Algorithm::HS256);
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::Malformed,
            "{payload}"
        );
    }
    // Roles of the wrong type.
    let exp = now() + 600;
    for payload in [
        format!(r#"{{"sub":"alice","exp":{exp},"roles":5}}"#),
        format!(r#"{{"sub":"alice","exp":{exp},"roles":["ok",5]}}"#),
    ] {
        let token = sign_raw(header, &payload, &key, Algorithm::HS256);
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::Malformed,
            "{payload}"
        );
    }
    // A valid payload signed the same way is accepted.
    let token = sign_raw(
        header,
        &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
        &key,
        Algorithm::HS256,
    );
    assert!(v.verify(&token).is_ok());
}

#[test]
fn header_tricks() {
    let v = secret_verifier();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let payload = json!({ "sub": "alice", "exp": now() + 600 }).to_string();
    // Critical extensions are not understood, so refused.
    let crit = sign_raw(
        r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
        &payload,
        &key,
        Algorithm::HS256,
    );
    assert_eq!(v.verify(&crit).unwrap_err(), TokenError::Malformed);
    // Unknown algorithm names.
    for alg in ["HS1", "hs256", "ES512", "RSA-OAEP", ""] {
        let token = sign_raw(
            &format!(r#"{{"alg":"{alg}"}}"#),
            &payload,
            &key,
            Algorithm::HS256,
        );
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
    // Header says HS512 but the signature is HS256.
    let mismatched = sign_raw(r#"{"alg":"HS512"}"#, &payload, &key, Algorithm::HS256);
    assert_eq!(v.verify(&mismatched).unwrap_err(), TokenError::BadSignature);
    // An embedded key in the header is ignored: the forged token is signed
    // by the attacker's own key.
    let mut header = Header::new(Algorithm::HS256);
    header.jku = Some("https://evil.example/jwks.json".into());
    let token =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"attacker")).unwrap();
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn error_messages_never_contain_the_token() {
    let v = secret_verifier();
    let cases = [
        sign_hmac(Algorithm::HS256, b"wrong", None, &claims()),
        sign_hmac(
            Algorithm::HS256,
            SECRET.as_bytes(),
            None,
            &json!({"sub": "secret-user-name", "exp": 1}),
        ),
        unsigned(r#"{"alg":"none"}"#),
        "not-a-token-but-sensitive".to_owned(),
    ];
    for token in cases {
        let err = v.verify(&token).unwrap_err();
        let text = format!("{err} {err:?}");
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!text.contains(part), "{text}");
        }
        assert!(!text.contains("secret-user-name"));
        assert!(!text.contains(SECRET));
        assert!(err.code().starts_with("token_"));
    }
}
