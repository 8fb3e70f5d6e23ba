//! Which signature algorithms a key permits: the key's own `alg` when it names one, otherwise
//! the algorithms of its type and curve. Symmetric keys permit none.

use jsonwebtoken::{
    Algorithm,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};

/// The algorithms a token verified with `jwk` may use.
pub(crate) fn permitted(jwk: &Jwk) -> Vec<Algorithm> {
    if let Some(named) = jwk.common.key_algorithm {
        // Encryption algorithms (RSA-OAEP...) have no signature counterpart and permit nothing.
        let signature = named.to_string().parse::<Algorithm>().ok();
        return signature.filter(|alg| !is_hmac(*alg)).into_iter().collect();
    }
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

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let ed = jwk(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        );
        assert_eq!(permitted(&ed), vec![Algorithm::EdDSA]);
        let rsa_named =
            jwk(serde_json::json!({"kty": "RSA", "alg": "PS256", "n": "sXch", "e": "AQAB"}));
        assert_eq!(permitted(&rsa_named), vec![Algorithm::PS256]);
        let rsa = jwk(serde_json::json!({"kty": "RSA", "n": "sXch", "e": "AQAB"}));
        assert!(
            permitted(&rsa).contains(&Algorithm::RS256)
                && !permitted(&rsa).contains(&Algorithm::HS256)
        );
        let ec = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE"}));
        assert_eq!(permitted(&ec), vec![Algorithm::ES256]);
    }

    #[test]
    fn symmetric_keys_permit_nothing() {
        let oct = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        assert!(permitted(&oct).is_empty());
        let oct_named = jwk(serde_json::json!({"kty": "oct", "alg": "HS256", "k": "c2VjcmV0"}));
        assert!(permitted(&oct_named).is_empty());
    }
}
