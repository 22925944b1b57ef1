//! Settings and configuration errors.

use std::time::Duration;

use tidings_auth::{ConfigError, JwtSettings, TokenVerifier, MAX_LEEWAY};

use crate::common::*;

fn config_error(settings: &JwtSettings) -> ConfigError {
    match TokenVerifier::new(settings) {
        Ok(_) => panic!("expected a configuration error"),
        Err(e) => e,
    }
}

#[test]
fn defaults() {
    let s = JwtSettings::default();
    assert_eq!(s.leeway, Duration::from_secs(5));
    assert!(s.require_exp);
    assert_eq!(s.roles_claim, "roles");
    assert_eq!(s.workspaces_claim, "workspaces");
    assert_eq!(s.info_claim, "info");
    assert!(s.algorithms.is_empty());
    assert!(s.secret.is_none() && s.public_key_file.is_none() && s.jwks_file.is_none());
    // An empty section deserializes to the defaults.
    let parsed: JwtSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(parsed, s);
}

#[test]
fn deserialize_and_roundtrip() {
    let parsed: JwtSettings = serde_json::from_str(
        r#"{"secret": "s3cr3t", "leeway": "1m 30s", "algorithms": ["HS256"],
            "issuer": "me", "audience": "you", "require_exp": false}"#,
    )
    .unwrap();
    assert_eq!(parsed.leeway, Duration::from_secs(90));
    assert_eq!(parsed.algorithms, vec!["HS256"]);
    assert!(!parsed.require_exp);
    let text = serde_json::to_string(&parsed).unwrap();
    let again: JwtSettings = serde_json::from_str(&text).unwrap();
    assert_eq!(again, parsed);
    // Unset options are left out.
    let text = serde_json::to_string(&JwtSettings::default()).unwrap();
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn unknown_fields_are_refused() {
    assert!(serde_json::from_str::<JwtSettings>(r#"{"secrett": "x"}"#).is_err());
}

#[test]
fn debug_redacts_the_secret() {
    let s = JwtSettings {
        secret: Some("super-secret-value-0123456789abcdef".into()),
        ..JwtSettings::default()
    };
    let text = format!("{s:?}");
    assert!(
        !text.contains("super-secret-value-0123456789abcdef"),
        "{text}"
    );
    assert!(text.contains("***"));
    assert!(text.contains("roles_claim"));
    let v = TokenVerifier::new(&s).unwrap();
    let text = format!("{v:?}");
    assert!(
        !text.contains("super-secret-value-0123456789abcdef"),
        "{text}"
    );
}

#[test]
fn no_key() {
    assert!(matches!(
        config_error(&JwtSettings::default()),
        ConfigError::NoKey
    ));
}

#[test]
fn empty_secret() {
    let e = config_error(&JwtSettings {
        secret: Some(String::new()),
        ..JwtSettings::default()
    });
    assert!(matches!(e, ConfigError::EmptySecret));
}

#[test]
fn algorithm_none_is_a_config_error() {
    for name in ["none", "None", "NONE", " none "] {
        let e = config_error(&JwtSettings {
            algorithms: vec!["HS256".into(), name.into()],
            ..secret_settings()
        });
        assert!(matches!(e, ConfigError::AlgorithmNone), "{name}: {e}");
    }
}

#[test]
fn unknown_algorithm_is_a_config_error() {
    let e = config_error(&JwtSettings {
        algorithms: vec!["HS999".into()],
        ..secret_settings()
    });
    assert!(matches!(e, ConfigError::UnknownAlgorithm(ref n) if n == "HS999"));
    assert!(e.to_string().contains("HS999"));
}

#[test]
fn algorithm_without_key_is_a_config_error() {
    let e = config_error(&JwtSettings {
        algorithms: vec!["HS256".into(), "RS256".into()],
        ..secret_settings()
    });
    assert!(
        matches!(e, ConfigError::AlgorithmWithoutKey(ref n) if n == "RS256"),
        "{e}"
    );
    let e = config_error(&JwtSettings {
        algorithms: vec!["ES384".into()],
        ..pem_settings("ec256_public.pem")
    });
    assert!(matches!(e, ConfigError::AlgorithmWithoutKey(_)), "{e}");
    let e = config_error(&JwtSettings {
        algorithms: vec!["HS256".into()],
        ..jwks_settings()
    });
    assert!(matches!(e, ConfigError::AlgorithmWithoutKey(_)), "{e}");
}

#[test]
fn unreadable_files() {
    let missing = fixture("does-not-exist.pem");
    let e = config_error(&JwtSettings {
        public_key_file: Some(missing.clone()),
        ..JwtSettings::default()
    });
    assert!(matches!(
        e,
        ConfigError::ReadFile {
            setting: "jwt.public_key_file",
            ..
        }
    ));
    assert!(e.to_string().contains("does-not-exist.pem"), "{e}");
    let e = config_error(&JwtSettings {
        jwks_file: Some(missing),
        ..JwtSettings::default()
    });
    assert!(matches!(
        e,
        ConfigError::ReadFile {
            setting: "jwt.jwks_file",
            ..
        }
    ));
}

#[test]
fn invalid_pem_files() {
    let cases: [(&str, &[u8]); 6] = [
        ("empty.pem", b""),
        ("text.pem", b"hello world"),
        (
            "garbage.pem",
            b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        ),
        (
            "cert.pem",
            b"-----BEGIN CERTIFICATE-----\nbm90IGEga2V5\n-----END CERTIFICATE-----\n",
        ),
        ("jwks.pem", br#"{"keys": []}"#),
        (
            "badb64.pem",
            b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
        ),
    ];
    for (name, contents) in cases {
        let e = config_error(&JwtSettings {
            public_key_file: Some(temp_file(name, contents)),
            ..JwtSettings::default()
        });
        assert!(
            matches!(e, ConfigError::InvalidPublicKey { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn private_key_as_public_key_file_is_refused() {
    for name in [
        "rsa_private.pem",
        "ec256_private.pem",
        "ed25519_private.pem",
    ] {
        let e = config_error(&pem_settings(name));
        assert!(
            matches!(e, ConfigError::InvalidPublicKey { .. }),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("private key"), "{e}");
        // The key material is not in the message.
        let pem = std::fs::read_to_string(fixture(name)).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!e.to_string().contains(body_line));
    }
}

#[test]
fn small_rsa_key_is_refused() {
    let output = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ])
        .output();
    let Ok(output) = output else {
        eprintln!("openssl not available; skipping");
        return;
    };
    let private = temp_file("rsa1024_private.pem", &output.stdout);
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    let path = temp_file("rsa1024_public.pem", &public.stdout);
    let e = config_error(&JwtSettings {
        public_key_file: Some(path),
        ..JwtSettings::default()
    });
    assert!(e.to_string().contains("2048"), "{e}");
}

#[test]
fn invalid_jwks_files() {
    for (name, contents) in [
        ("notjson.json", "not json"),
        ("nokeys.json", r#"{"other": 1}"#),
        ("keysnotarray.json", r#"{"keys": {}}"#),
    ] {
        let e = config_error(&JwtSettings {
            jwks_file: Some(temp_file(name, contents.as_bytes())),
            ..JwtSettings::default()
        });
        assert!(matches!(e, ConfigError::InvalidJwks { .. }), "{name}: {e}");
    }
    for (name, contents) in [
        ("empty.json", r#"{"keys": []}"#),
        (
            "enconly.json",
            r#"{"keys": [{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#,
        ),
    ] {
        let e = config_error(&JwtSettings {
            jwks_file: Some(temp_file(name, contents.as_bytes())),
            ..JwtSettings::default()
        });
        assert!(matches!(e, ConfigError::NoUsableJwk { .. }), "{name}: {e}");
    }
}

#[test]
fn invalid_jwk_members() {
    let cases = [
        // Short RSA modulus.
        r#"{"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"}"#,
        // Not base64url.
        r#"{"kty":"RSA","kid":"b64","n":"***","e":"AQAB"}"#,
        // EC coordinates of the wrong size.
        r#"{"kty":"EC","kid":"ec","crv":"P-256","x":"AQAB","y":"AQAB"}"#,
        // EC point not on the curve (all-zero coordinates).
        r#"{"kty":"EC","kid":"ec0","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        // Ed25519 key of the wrong size.
        r#"{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"AQAB"}"#,
        // alg that does not fit the key type.
        r#"{"kty":"OKP","kid":"edalg","crv":"Ed25519","alg":"RS256","x":"ZR-3527JwEzNKifaC4O78wVVtIccULEgrlJSRt4gcps"}"#,
        // Missing members.
        r#"{"kty":"RSA","kid":"nomembers"}"#,
        r#"{"kty":"EC","kid":"nocoords","crv":"P-256"}"#,
        r#"{"kty":"OKP","kid":"nox","crv":"Ed25519"}"#,
        r#"{"kid":"nokty","n":"AQAB","e":"AQAB"}"#,
        // Empty symmetric key.
        r#"{"kty":"oct","kid":"oct","k":""}"#,
    ];
    for key in cases {
        let path = temp_file("bad.json", format!(r#"{{"keys": [{key}]}}"#).as_bytes());
        let e = config_error(&JwtSettings {
            jwks_file: Some(path),
            ..JwtSettings::default()
        });
        assert!(
            matches!(e, ConfigError::InvalidJwk { index: 0, .. }),
            "{key}: {e}"
        );
        assert!(e.to_string().contains("kid"), "{e}");
    }
}

#[test]
fn jwks_json_errors_do_not_quote_the_file() {
    let path = temp_file(
        "quoted.json",
        br#"{"keys": [{"kty": "oct", "k": 12345678901234567890123}], "x": "TOPSECRETVALUE" "#,
    );
    let e = config_error(&JwtSettings {
        jwks_file: Some(path),
        ..JwtSettings::default()
    });
    assert!(!e.to_string().contains("TOPSECRETVALUE"), "{e}");
    assert!(!e.to_string().contains("12345678901234567890123"), "{e}");
}

#[test]
fn leeway_limit() {
    let e = config_error(&JwtSettings {
        leeway: MAX_LEEWAY + Duration::from_secs(1),
        ..secret_settings()
    });
    assert!(matches!(e, ConfigError::LeewayTooLarge));
    assert!(TokenVerifier::new(&JwtSettings {
        leeway: MAX_LEEWAY,
        ..secret_settings()
    })
    .is_ok());
}

#[test]
fn empty_claim_names() {
    let e = config_error(&JwtSettings {
        roles_claim: String::new(),
        ..secret_settings()
    });
    assert!(matches!(e, ConfigError::EmptyClaimName("jwt.roles_claim")));
}

#[test]
fn config_errors_never_contain_the_secret() {
    let secret = "do-not-print-me-0123456789-abcdefgh";
    let settings = JwtSettings {
        secret: Some(secret.into()),
        algorithms: vec!["RS256".into()],
        ..JwtSettings::default()
    };
    let e = config_error(&settings);
    assert!(!format!("{e} {e:?}").contains(secret));
}

#[test]
fn short_secret_is_refused_with_how_to_make_one() {
    for secret in ["x", "0123456789abcdef0123456789abcde"] {
        let e = config_error(&JwtSettings {
            secret: Some(secret.into()),
            ..JwtSettings::default()
        });
        assert!(
            matches!(e, ConfigError::ShortSecret { len } if len == secret.len()),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("at least 32 bytes"), "{text}");
        assert!(text.contains("openssl rand -base64 32"), "{text}");
    }
    // 32 bytes is enough.
    TokenVerifier::new(&JwtSettings {
        secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..JwtSettings::default()
    })
    .unwrap();
}
