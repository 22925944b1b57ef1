//! Every algorithm end to end, by secret, PEM file and JWK Set file.

use jsonwebtoken::Algorithm;
use serde_json::json;
use tidings_auth::{JwtSettings, TokenError, TokenVerifier};

use crate::common::*;

#[test]
fn hmac_algorithms_with_secret() {
    let v = secret_verifier();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign_hmac(alg, SECRET.as_bytes(), None, &claims());
        let id = v.verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(&*id.user, "alice");
        // A kid does not matter for the secret.
        let token = sign_hmac(alg, SECRET.as_bytes(), Some("whatever"), &claims());
        assert!(v.verify(&token).is_ok(), "{alg:?} with kid");
    }
    assert_eq!(
        v.algorithms(),
        &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
    );
}

#[test]
fn asymmetric_algorithms_with_pem_file() {
    for alg in ASYMMETRIC {
        let v = verifier(&pem_settings(public_key_for(alg)));
        let token = sign_pem(alg, private_key_for(alg), None, &claims());
        let id = v.verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(&*id.user, "alice");
    }
}

#[test]
fn pem_key_accepts_only_its_own_algorithms() {
    let rsa = verifier(&pem_settings("rsa_public.pem"));
    assert_eq!(rsa.algorithms().len(), 6);
    let ec256 = verifier(&pem_settings("ec256_public.pem"));
    assert_eq!(ec256.algorithms(), &[Algorithm::ES256]);
    let ec384 = verifier(&pem_settings("ec384_public.pem"));
    assert_eq!(ec384.algorithms(), &[Algorithm::ES384]);
    let ed = verifier(&pem_settings("ed25519_public.pem"));
    assert_eq!(ed.algorithms(), &[Algorithm::EdDSA]);

    // An ES256 token against a P-384 key, and so on.
    let es256 = sign_pem(Algorithm::ES256, "ec256_private.pem", None, &claims());
    assert_eq!(
        ec384.verify(&es256).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        rsa.verify(&es256).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        ed.verify(&es256).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    let eddsa = sign_pem(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
    assert_eq!(
        ec256.verify(&eddsa).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
}

#[test]
fn rsa_pkcs1_public_key_pem() {
    let v = verifier(&pem_settings("rsa_public_pkcs1.pem"));
    for alg in [Algorithm::RS256, Algorithm::PS512] {
        let token = sign_pem(alg, "rsa_private.pem", None, &claims());
        assert!(v.verify(&token).is_ok(), "{alg:?}");
    }
}

#[test]
fn asymmetric_algorithms_with_jwks_kid() {
    let v = verifier(&jwks_settings());
    for alg in ASYMMETRIC {
        let token = sign_pem(alg, private_key_for(alg), Some(kid_for(alg)), &claims());
        let id = v.verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(&*id.user, "alice");
    }
    // The second RSA key, by its own kid.
    let token = sign_pem(
        Algorithm::RS256,
        "rsa2_private.pem",
        Some("rsa-2"),
        &claims(),
    );
    assert!(v.verify(&token).is_ok());
}

#[test]
fn jwks_kid_selects_the_key() {
    let v = verifier(&jwks_settings());
    // Signed by rsa-2 but claims to be rsa-1.
    let token = sign_pem(
        Algorithm::RS256,
        "rsa2_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn jwks_unknown_kid() {
    let v = verifier(&jwks_settings());
    let token = sign_pem(Algorithm::RS256, "rsa_private.pem", Some("nope"), &claims());
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::UnknownKey);
}

#[test]
fn jwks_with_several_keys_needs_a_kid() {
    let v = verifier(&jwks_settings());
    let token = sign_pem(Algorithm::RS256, "rsa_private.pem", None, &claims());
    assert_eq!(v.verify(&token).unwrap_err(), TokenError::UnknownKey);
}

#[test]
fn jwks_kid_of_another_key_type_is_refused() {
    let v = verifier(&jwks_settings());
    // An ES256 token naming the RSA key.
    let token = sign_pem(
        Algorithm::ES256,
        "ec256_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(
        v.verify(&token).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
}

fn single_key_jwks(key: serde_json::Value) -> JwtSettings {
    let path = temp_file(
        "single.json",
        json!({ "keys": [key] }).to_string().as_bytes(),
    );
    JwtSettings {
        jwks_file: Some(path),
        ..JwtSettings::default()
    }
}

fn fixture_jwk(kid: &str) -> serde_json::Value {
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone()
}

#[test]
fn jwks_single_key_without_kid() {
    for alg in [Algorithm::RS256, Algorithm::ES384, Algorithm::EdDSA] {
        let v = verifier(&single_key_jwks(fixture_jwk(kid_for(alg))));
        let token = sign_pem(alg, private_key_for(alg), None, &claims());
        assert!(v.verify(&token).is_ok(), "{alg:?}");
        // Still, a wrong kid is unknown.
        let token = sign_pem(alg, private_key_for(alg), Some("other"), &claims());
        assert_eq!(v.verify(&token).unwrap_err(), TokenError::UnknownKey);
    }
    // A single key without a kid at all.
    let mut jwk = fixture_jwk("ed-1");
    jwk.as_object_mut().unwrap().remove("kid");
    let v = verifier(&single_key_jwks(jwk));
    let token = sign_pem(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
    assert!(v.verify(&token).is_ok());
}

#[test]
fn jwk_alg_member_pins_the_algorithm() {
    let mut jwk = fixture_jwk("rsa-1");
    jwk["alg"] = json!("PS256");
    let v = verifier(&single_key_jwks(jwk));
    assert_eq!(v.algorithms(), &[Algorithm::PS256]);
    let ps = sign_pem(
        Algorithm::PS256,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert!(v.verify(&ps).is_ok());
    let rs = sign_pem(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(v.verify(&rs).unwrap_err(), TokenError::AlgorithmNotAllowed);
}

#[test]
fn jwks_skips_encryption_and_unsupported_keys() {
    let mut enc = fixture_jwk("rsa-2");
    enc["use"] = json!("enc");
    let mut oaep = fixture_jwk("rsa-2");
    oaep["kid"] = json!("oaep");
    oaep["alg"] = json!("RSA-OAEP");
    let p521 = json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"});
    let x25519 = json!({"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AA"});
    let path = temp_file(
        "skips.json",
        json!({ "keys": [enc, oaep, p521, x25519, fixture_jwk("ec256-1")] })
            .to_string()
            .as_bytes(),
    );
    let v = verifier(&JwtSettings {
        jwks_file: Some(path),
        ..JwtSettings::default()
    });
    assert_eq!(v.algorithms(), &[Algorithm::ES256]);
    // Only one usable key is left, so no kid is needed.
    let token = sign_pem(Algorithm::ES256, "ec256_private.pem", None, &claims());
    assert!(v.verify(&token).is_ok());
    let token = sign_pem(
        Algorithm::RS256,
        "rsa2_private.pem",
        Some("rsa-2"),
        &claims(),
    );
    assert_eq!(
        v.verify(&token).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
}

#[test]
fn jwks_symmetric_key() {
    let v = verifier(&single_key_jwks(json!({
        "kty": "oct", "kid": "hmac-1", "k": b64(SECRET.as_bytes())
    })));
    let token = sign_hmac(
        Algorithm::HS384,
        SECRET.as_bytes(),
        Some("hmac-1"),
        &claims(),
    );
    assert!(v.verify(&token).is_ok());
}

#[test]
fn secret_pem_and_jwks_together() {
    let v = TokenVerifier::new(&JwtSettings {
        secret: Some(SECRET.to_owned()),
        public_key_file: Some(fixture("ed25519_public.pem")),
        jwks_file: Some(fixture("jwks.json")),
        ..JwtSettings::default()
    })
    .unwrap();
    let hs = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &claims());
    assert!(v.verify(&hs).is_ok());
    let ed = sign_pem(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
    assert!(v.verify(&ed).is_ok());
    let rs = sign_pem(
        Algorithm::RS512,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert!(v.verify(&rs).is_ok());
    // No kid and no PEM key for RSA: the JWK Set has several keys.
    let rs = sign_pem(Algorithm::RS512, "rsa_private.pem", None, &claims());
    assert_eq!(v.verify(&rs).unwrap_err(), TokenError::UnknownKey);
    // An unknown kid falls back to the secret for HMAC tokens.
    let hs = sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        Some("legacy"),
        &claims(),
    );
    assert!(v.verify(&hs).is_ok());
}

#[test]
fn algorithms_setting_restricts() {
    let v = verifier(&JwtSettings {
        algorithms: vec!["HS512".into()],
        ..secret_settings()
    });
    assert_eq!(v.algorithms(), &[Algorithm::HS512]);
    let hs512 = sign_hmac(Algorithm::HS512, SECRET.as_bytes(), None, &claims());
    assert!(v.verify(&hs512).is_ok());
    let hs256 = sign_hmac(Algorithm::HS256, SECRET.as_bytes(), None, &claims());
    assert_eq!(
        v.verify(&hs256).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );

    let v = verifier(&JwtSettings {
        algorithms: vec!["ES256".into()],
        ..jwks_settings()
    });
    assert_eq!(v.algorithms(), &[Algorithm::ES256]);
    // Only the P-256 key is left in the set, so no kid is needed.
    let es = sign_pem(Algorithm::ES256, "ec256_private.pem", None, &claims());
    assert!(v.verify(&es).is_ok());
    let rs = sign_pem(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(v.verify(&rs).unwrap_err(), TokenError::AlgorithmNotAllowed);
}
