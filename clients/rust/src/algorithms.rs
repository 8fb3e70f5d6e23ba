//! Which signature algorithms a key permits (the rules in clients/conformance/README.md): none
//! for a key not meant for signatures (`use` other than `sig`, `key_ops` without `verify`);
//! otherwise the algorithms of its type and curve, narrowed to the one its `alg` names, when
//! it names one. HMAC is never permitted, and neither is ES512, which no keyrelay SDK verifies.

use jsonwebtoken::{
    Algorithm,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse},
};

/// The algorithms a token verified with `jwk` may use; `named_alg` is the key's `alg` as
/// written (the JWK model cannot represent every name, `Ed25519` say).
pub(crate) fn permitted(jwk: &Jwk, named_alg: Option<&str>) -> Vec<Algorithm> {
    let common = &jwk.common;
    let for_signatures = common
        .public_key_use
        .as_ref()
        .is_none_or(|key_use| *key_use == PublicKeyUse::Signature)
        && common
            .key_operations
            .as_ref()
            .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    if !for_signatures {
        return Vec::new();
    }
    let of_type = of_key_type(jwk);
    match named_alg {
        None => of_type,
        Some(name) => match named(name) {
            Some(alg) if of_type.contains(&alg) => vec![alg],
            _ => Vec::new(),
        },
    }
}

fn of_key_type(jwk: &Jwk) -> Vec<Algorithm> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => Vec::new(),
    }
}

/// The signature algorithm a key's `alg` names, among those the SDKs verify.
fn named(name: &str) -> Option<Algorithm> {
    match name {
        "Ed25519" => Some(Algorithm::EdDSA),
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA" => {
            name.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    const RSA: &str = r#"{"kty": "RSA", "n": "sXch", "e": "AQAB"}"#;

    fn rsa(extra: serde_json::Value) -> Jwk {
        let mut key: serde_json::Value = serde_json::from_str(RSA).unwrap();
        key.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jwk(key)
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let ed = jwk(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        );
        assert_eq!(permitted(&ed, None), vec![Algorithm::EdDSA]);
        assert_eq!(permitted(&ed, Some("Ed25519")), vec![Algorithm::EdDSA]);
        assert_eq!(
            permitted(&rsa(serde_json::json!({})), Some("PS256")),
            vec![Algorithm::PS256]
        );
        let any_rsa = permitted(&rsa(serde_json::json!({})), None);
        assert!(any_rsa.contains(&Algorithm::RS256) && !any_rsa.contains(&Algorithm::HS256));
        let ec = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE"}));
        assert_eq!(permitted(&ec, None), vec![Algorithm::ES256]);
        assert_eq!(
            permitted(&ec, Some("ES384")),
            Vec::new(),
            "alg must fit the curve"
        );
    }

    #[test]
    fn keys_not_meant_for_signatures_permit_nothing() {
        let cases = [
            (rsa(serde_json::json!({"use": "enc"})), None),
            (rsa(serde_json::json!({"key_ops": ["encrypt"]})), None),
            (rsa(serde_json::json!({})), Some("RSA-OAEP")),
            (rsa(serde_json::json!({})), Some("HS256")),
            (
                jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})),
                None,
            ),
        ];
        for (key, alg) in cases {
            assert!(permitted(&key, alg).is_empty(), "{key:?} {alg:?}");
        }
        let signing = rsa(serde_json::json!({"use": "sig", "key_ops": ["verify"]}));
        assert!(!permitted(&signing, None).is_empty());
    }
}
