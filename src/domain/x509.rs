//! X.509 on keys: a JWK's `x5c` leaf certificate must carry the JWK's own public key, and its
//! `x5t` / `x5t#S256`, when present, must be that leaf's thumbprints (RFC 7517, 4.7 to 4.9).
//! Nothing here does I/O.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::{
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
        OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    },
    prelude::{FromDer, X509Certificate},
    public_key::PublicKey as CertificateKey,
    x509::SubjectPublicKeyInfo,
};

/// Checks a key's certificate members; `Err` says what does not hold. A key without `x5c`
/// has nothing to check (its thumbprints name no certificate keyrelay could compare).
pub(super) fn check(object: &Map<String, Value>) -> Result<(), String> {
    let Some(chain) = object.get("x5c") else {
        return Ok(());
    };
    let leaf = leaf_der(chain)?;
    let (_, certificate) = X509Certificate::from_der(&leaf)
        .map_err(|err| format!("x5c[0] is not an X.509 certificate: {err}"))?;
    if !carries_key(certificate.public_key(), object) {
        return Err("the x5c leaf certificate's public key is not this key".into());
    }
    thumbprint(object, "x5t", &Sha1::digest(&leaf))?;
    thumbprint(object, "x5t#S256", &Sha256::digest(&leaf))
}

/// The entries of an `x5c` chain: the leaf, and the rest in order.
fn entries(chain: &Value) -> Result<(&Value, &[Value]), String> {
    chain
        .as_array()
        .and_then(|entries| entries.split_first())
        .ok_or_else(|| "x5c is not a non-empty array".into())
}

/// The leaf certificate of an `x5c` chain in DER; the rest is not decoded.
fn leaf_der(chain: &Value) -> Result<Vec<u8>, String> {
    certificate_der(0, entries(chain)?.0)
}

/// The certificates of an `x5c` chain in DER: the leaf, then the rest in order.
pub(super) fn chain_der(chain: &Value) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let (leaf, rest) = entries(chain)?;
    let rest = rest
        .iter()
        .enumerate()
        .map(|(i, entry)| certificate_der(i + 1, entry))
        .collect::<Result<_, _>>()?;
    Ok((certificate_der(0, leaf)?, rest))
}

fn certificate_der(index: usize, entry: &Value) -> Result<Vec<u8>, String> {
    let text = entry
        .as_str()
        .ok_or_else(|| format!("x5c[{index}] is not a string"))?;
    STANDARD
        .decode(text)
        .map_err(|err| format!("x5c[{index}] is not base64: {err}"))
}

fn thumbprint(object: &Map<String, Value>, member: &str, digest: &[u8]) -> Result<(), String> {
    match object.get(member) {
        None => Ok(()),
        Some(Value::String(given))
            if URL_SAFE_NO_PAD.decode(given).ok().as_deref() == Some(digest) =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "{member} is not the thumbprint of the x5c leaf certificate"
        )),
    }
}

/// Whether the certificate's key is the JWK's: same type, curve and material.
fn carries_key(spki: &SubjectPublicKeyInfo<'_>, jwk: &Map<String, Value>) -> bool {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
    };
    let algorithm = &spki.algorithm.algorithm;
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") if *algorithm == OID_PKCS1_RSAENCRYPTION => match spki.parsed() {
            Ok(CertificateKey::RSA(rsa)) => {
                same_integer(rsa.modulus, member("n")) && same_integer(rsa.exponent, member("e"))
            }
            _ => false,
        },
        Some("EC") if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let named = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => OID_EC_P256,
                Some("P-384") => OID_NIST_EC_P384,
                Some("P-521") => OID_NIST_EC_P521,
                _ => return false,
            };
            let (Some(x), Some(y)) = (member("x"), member("y")) else {
                return false;
            };
            let point = [&[0x04][..], &x, &y].concat();
            curve == Some(named) && spki.subject_public_key.data.as_ref() == point.as_slice()
        }
        Some("OKP") if *algorithm == OID_SIG_ED25519 => {
            member("x").as_deref() == Some(spki.subject_public_key.data.as_ref())
        }
        _ => false,
    }
}

/// Whether two big-endian unsigned integers are equal, whatever their leading zeros.
fn same_integer(certificate: &[u8], jwk: Option<Vec<u8>>) -> bool {
    let significant =
        |bytes: &[u8]| -> Vec<u8> { bytes.iter().copied().skip_while(|b| *b == 0).collect() };
    jwk.is_some_and(|jwk| significant(certificate) == significant(&jwk))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Keys with self-signed certificates made for these tests (testdata/x5c.json).
    fn fixture(name: &str) -> Map<String, Value> {
        let all: Value =
            serde_json::from_str(include_str!("testdata/x5c.json")).expect("fixture JSON");
        all[name].as_object().expect("a fixture key").clone()
    }

    #[test]
    fn a_certificate_of_the_key_with_its_thumbprints_passes() {
        for name in ["rsa", "ec", "ed"] {
            assert_eq!(check(&fixture(name)), Ok(()), "{name}");
        }
    }

    #[test]
    fn a_key_without_x5c_has_nothing_to_check() {
        let mut key = fixture("rsa");
        key.remove("x5c");
        key.insert("x5t".into(), json!("not checked without a certificate"));
        assert_eq!(check(&key), Ok(()));
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let mut key = fixture("rsa");
        key.insert("x5c".into(), fixture("other-rsa")["x5c"].clone());
        key.remove("x5t");
        key.remove("x5t#S256");
        assert_eq!(
            check(&key),
            Err("the x5c leaf certificate's public key is not this key".into())
        );
        let mut ec_with_ed = fixture("ec");
        ec_with_ed.insert("x5c".into(), fixture("ed")["x5c"].clone());
        assert!(check(&ec_with_ed).is_err(), "another key type");
    }

    #[test]
    fn thumbprints_must_be_the_leafs() {
        for member in ["x5t", "x5t#S256"] {
            let mut key = fixture("ec");
            key.insert(member.into(), fixture("other-rsa")[member].clone());
            assert_eq!(
                check(&key),
                Err(format!(
                    "{member} is not the thumbprint of the x5c leaf certificate"
                ))
            );
        }
    }

    #[test]
    fn malformed_chains_say_what_is_wrong() {
        let cases = [
            (json!([]), "x5c is not a non-empty array"),
            (json!("MIIB"), "x5c is not a non-empty array"),
            (json!([7]), "x5c[0] is not a string"),
            (json!(["not base64!"]), "x5c[0] is not base64"),
            (json!(["AAAA"]), "x5c[0] is not an X.509 certificate"),
        ];
        for (chain, expected) in cases {
            let mut key = fixture("ed");
            key.insert("x5c".into(), chain);
            let err = check(&key).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
    }
}
