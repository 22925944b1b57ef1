//! Loading verification keys: the HMAC secret, a PEM public key, a JWK Set.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::secret::MIN_SECRET_LEN;
use crate::ConfigError;

/// Smallest accepted RSA modulus, in bits.
const RSA_MIN_BITS: u64 = 2048;
/// Largest RSA modulus the crypto backend verifies with, in bits.
const RSA_MAX_BITS: u64 = 4096;
/// Largest public exponent the crypto backend accepts.
const RSA_MAX_EXPONENT: u64 = (1 << 33) - 1;

/// Base64url, padded or not (JWKs should be unpadded; some tools pad).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A verification key and the algorithms it may verify.
pub(crate) struct LoadedKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    /// Never empty; all of one family.
    pub(crate) algorithms: Vec<Algorithm>,
}

/// Why a JWK cannot be used.
enum JwkProblem {
    /// Not meant for (or not supported for) JWS verification: skip it.
    Skip,
    /// Meant for verification but broken.
    Invalid(&'static str),
}

/// The HMAC key for `jwt.secret`.
pub(crate) fn secret_key(secret: &str) -> Result<LoadedKey, ConfigError> {
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret);
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::ShortSecret { len: secret.len() });
    }
    Ok(LoadedKey {
        kid: None,
        key: DecodingKey::from_secret(secret.as_bytes()),
        algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
    })
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if any.
fn pem_label(text: &[u8]) -> Option<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let start = text.windows(BEGIN.len()).position(|w| w == BEGIN)? + BEGIN.len();
    let rest = &text[start..];
    let end = rest.windows(5).position(|w| w == b"-----")?;
    Some(&rest[..end])
}

/// The key of `jwt.public_key_file`.
pub(crate) fn pem_key(path: &Path) -> Result<LoadedKey, ConfigError> {
    let invalid = |reason| ConfigError::InvalidPublicKey {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_file("jwt.public_key_file", path)?;
    match pem_label(&bytes) {
        None => return Err(invalid("no PEM block found")),
        Some(label) if label.windows(7).any(|w| w == b"PRIVATE") => {
            return Err(invalid(
                "it holds a private key; configure the matching public key instead",
            ))
        }
        Some(b"PUBLIC KEY") | Some(b"RSA PUBLIC KEY") => {}
        Some(_) => {
            return Err(invalid(
                "expected a \"PUBLIC KEY\" or \"RSA PUBLIC KEY\" PEM block",
            ))
        }
    }
    let key = DecodingKey::from_rsa_pem(&bytes)
        .or_else(|_| DecodingKey::from_ec_pem(&bytes))
        .or_else(|_| DecodingKey::from_ed_pem(&bytes))
        .map_err(|_| invalid("not an RSA, EC (P-256, P-384) or Ed25519 public key"))?;
    // Going through a JWK checks the RSA DER and finds the EC curve; the key
    // is then loaded exactly like a key from a JWK Set.
    let jwk = Jwk::from_decoding_key(&key, None)
        .map_err(|_| invalid("not an RSA, EC (P-256, P-384) or Ed25519 public key"))?;
    match jwk_key(&jwk) {
        Ok(loaded) => Ok(loaded),
        Err(JwkProblem::Skip) => Err(invalid("unsupported key type or curve")),
        Err(JwkProblem::Invalid(reason)) => Err(invalid(reason)),
    }
}

/// The usable keys of `jwt.jwks_file` (at least one).
pub(crate) fn jwks_keys(path: &Path) -> Result<Vec<LoadedKey>, ConfigError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }

    let invalid_set = |reason: String| ConfigError::InvalidJwks {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_file("jwt.jwks_file", path)?;
    // Report only the position of a JSON error: serde_json messages can quote
    // values, and a JWK Set may hold symmetric keys.
    let set: RawSet = serde_json::from_slice(&bytes).map_err(|e| {
        invalid_set(format!(
            "invalid JSON or no \"keys\" array (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;

    let mut keys = Vec::with_capacity(set.keys.len());
    for (index, value) in set.keys.into_iter().enumerate() {
        let kid = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let invalid_key = |reason| ConfigError::InvalidJwk {
            path: path.to_owned(),
            index,
            kid: kid.clone(),
            reason,
        };
        let jwk: Jwk = serde_json::from_value(value)
            .map_err(|_| invalid_key("not a valid JWK (missing or mistyped members)"))?;
        match jwk_key(&jwk) {
            Ok(key) => keys.push(key),
            Err(JwkProblem::Skip) => {}
            Err(JwkProblem::Invalid(reason)) => return Err(invalid_key(reason)),
        }
    }
    if keys.is_empty() {
        return Err(ConfigError::NoUsableJwk {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// Turns one JWK into a verification key.
fn jwk_key(jwk: &Jwk) -> Result<LoadedKey, JwkProblem> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return Err(JwkProblem::Skip);
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(JwkProblem::Skip);
        }
    }
    // A declared `alg` pins the key to that algorithm; encryption algorithms
    // (RSA-OAEP, ...) and unknown ones mean the key is not for us.
    let declared = match jwk.common.key_algorithm {
        Some(alg) => match Algorithm::from_str(&alg.to_string()) {
            Ok(alg) => Some(alg),
            Err(_) => return Err(JwkProblem::Skip),
        },
        None => None,
    };

    let family_algorithms: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = b64(&params.n)?;
            let e = b64(&params.e)?;
            check_rsa(&n, &e)?;
            AlgorithmFamily::Rsa.algorithms().to_vec()
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let (alg, size) = match params.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err(JwkProblem::Skip),
            };
            if b64(&params.x)?.len() != size || b64(&params.y)?.len() != size {
                return Err(JwkProblem::Invalid(
                    "EC coordinates have the wrong length for the curve",
                ));
            }
            vec![alg]
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err(JwkProblem::Skip);
            }
            if b64(&params.x)?.len() != 32 {
                return Err(JwkProblem::Invalid("Ed25519 key has the wrong length"));
            }
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(params) => {
            if b64(&params.value)?.is_empty() {
                return Err(JwkProblem::Invalid("symmetric key is empty"));
            }
            AlgorithmFamily::Hmac.algorithms().to_vec()
        }
        AlgorithmParameters::Other(params) => return Err(other_key_problem(&params.fields)),
        _ => return Err(JwkProblem::Skip),
    };

    let algorithms = match declared {
        Some(alg) if family_algorithms.contains(&alg) => vec![alg],
        Some(_) => {
            return Err(JwkProblem::Invalid(
                "its \"alg\" does not fit its key type or curve",
            ))
        }
        None => family_algorithms,
    };

    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| JwkProblem::Invalid("key parameters are not valid"))?;

    // EC points and Ed25519 keys are parsed when a verifier is made, so making
    // one (with an empty signature) checks the point is valid. RSA keys were
    // checked by `check_rsa`; HMAC keys cannot be invalid.
    if matches!(key.family(), AlgorithmFamily::Ec | AlgorithmFamily::Ed) {
        for alg in &algorithms {
            jsonwebtoken::crypto::verify("", b"", &key, *alg)
                .map_err(|_| JwkProblem::Invalid("not a valid point on the key's curve"))?;
        }
    }

    Ok(LoadedKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// A JWK that matched none of the supported shapes: a key of a type (or
/// curve) we do not support is skipped, but a supported one with missing or
/// mistyped members is a mistake worth reporting.
fn other_key_problem(fields: &BTreeMap<String, serde_json::Value>) -> JwkProblem {
    const BROKEN: JwkProblem = JwkProblem::Invalid("missing or mistyped members for its key type");
    let curve = fields.get("crv").and_then(serde_json::Value::as_str);
    match fields.get("kty").and_then(serde_json::Value::as_str) {
        None => JwkProblem::Invalid("no \"kty\" member"),
        Some("RSA" | "oct") => BROKEN,
        Some("EC") if matches!(curve, None | Some("P-256" | "P-384")) => BROKEN,
        Some("OKP") if matches!(curve, None | Some("Ed25519")) => BROKEN,
        Some(_) => JwkProblem::Skip,
    }
}

fn b64(value: &str) -> Result<Vec<u8>, JwkProblem> {
    B64URL
        .decode(value)
        .map_err(|_| JwkProblem::Invalid("a member is not valid base64url"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The checks the RSA backend makes when it verifies, made once up front so
/// that a bad key is a configuration error instead of refusing every token;
/// plus a minimum size.
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), JwkProblem> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let (Some(n_first), Some(n_last), Some(e_last)) = (n.first(), n.last(), e.last()) else {
        return Err(JwkProblem::Invalid("RSA modulus or exponent is zero"));
    };
    let bits = (n.len() as u64 - 1) * 8 + u64::from(8 - n_first.leading_zeros());
    if bits < RSA_MIN_BITS {
        return Err(JwkProblem::Invalid("RSA key is shorter than 2048 bits"));
    }
    if bits > RSA_MAX_BITS {
        return Err(JwkProblem::Invalid("RSA key is longer than 4096 bits"));
    }
    if n_last % 2 == 0 {
        return Err(JwkProblem::Invalid("RSA modulus is even"));
    }
    if e.len() > 8 {
        return Err(JwkProblem::Invalid("RSA exponent is too large"));
    }
    let exponent = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if e_last % 2 == 0 || !(3..=RSA_MAX_EXPONENT).contains(&exponent) {
        return Err(JwkProblem::Invalid("RSA exponent is not usable"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_label_finds_first_block() {
        assert_eq!(
            pem_label(b"junk\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Some(&b"PUBLIC KEY"[..])
        );
        assert_eq!(pem_label(b"nothing here"), None);
        assert_eq!(pem_label(b"-----BEGIN unterminated"), None);
    }

    #[test]
    fn rsa_checks() {
        let mut n = vec![0xC5u8; 256];
        n[255] = 0x01;
        assert!(check_rsa(&n, &[1, 0, 1]).is_ok());
        // Leading zeros are ignored, and the size is counted in bits.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&n);
        assert!(check_rsa(&padded, &[0, 1, 0, 1]).is_ok());
        assert!(matches!(
            check_rsa(&n[..128], &[1, 0, 1]),
            Err(JwkProblem::Invalid(_))
        ));
        let mut small = n.clone();
        small[0] = 0x7F; // 2047 bits
        assert!(matches!(
            check_rsa(&small, &[1, 0, 1]),
            Err(JwkProblem::Invalid(_))
        ));
        assert!(matches!(
            check_rsa(&vec![0xFFu8; 513], &[3]),
            Err(JwkProblem::Invalid(_))
        ));
        let mut even = n.clone();
        even[255] = 0x02;
        assert!(matches!(
            check_rsa(&even, &[3]),
            Err(JwkProblem::Invalid(_))
        ));
        assert!(matches!(check_rsa(&n, &[2]), Err(JwkProblem::Invalid(_))));
        assert!(matches!(check_rsa(&n, &[1]), Err(JwkProblem::Invalid(_))));
        assert!(matches!(check_rsa(&n, &[]), Err(JwkProblem::Invalid(_))));
        assert!(matches!(check_rsa(&[], &[3]), Err(JwkProblem::Invalid(_))));
        assert!(matches!(
            check_rsa(&n, &[1; 9]),
            Err(JwkProblem::Invalid(_))
        ));
        assert!(matches!(
            check_rsa(&n, &[0x04, 0, 0, 0, 1]),
            Err(JwkProblem::Invalid(_))
        ));
    }
}
