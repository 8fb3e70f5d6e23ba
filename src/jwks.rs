//! JWKS guardrails: turns an identity provider's response body into a sanitized key set, or
//! says exactly why the body must not replace the last good one. Nothing here does I/O.

use std::collections::HashSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::jwk::Jwk;
use serde_json::{Map, Value};

/// Members that only private or symmetric keys carry. A document holding any of them is a
/// leak at the identity provider and is never published.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Key types keyrelay publishes, with the members each must carry as base64url text.
/// Keys of other types, or missing a member, are skipped, not fatal.
const REQUIRED_MEMBERS: [(&str, &[&str]); 3] =
    [("RSA", &["n", "e"]), ("EC", &["x", "y"]), ("OKP", &["x"])];

/// Why a response body was not accepted as the provider's key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The body is not a JSON document.
    #[error("response is not JSON: {0}")]
    NotJson(String),
    /// The document has no `keys` array.
    #[error("response has no \"keys\" array")]
    NoKeysArray,
    /// Two keys share a key id.
    #[error("duplicate kid {0:?}")]
    DuplicateKid(String),
    /// A key carries private or symmetric material.
    #[error("key {kid:?} carries private or symmetric member {member:?}; refusing to publish it")]
    PrivateMaterial {
        /// The offending key's id, or `<none>`.
        kid: String,
        /// The member that must not be published.
        member: &'static str,
    },
    /// The document has no usable key while the last good set had some.
    #[error("response has no usable keys; keeping the previous {previous} key(s)")]
    EmptyReplacesNonEmpty {
        /// Number of keys in the last good set.
        previous: usize,
    },
}

/// One public key of a sanitized set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `kid`, when the provider gave one.
    pub kid: Option<String>,
    /// `kty`: RSA, EC or OKP.
    pub kty: String,
    /// `alg`, when the provider gave one.
    pub alg: Option<String>,
    /// `use`, when the provider gave one.
    pub key_use: Option<String>,
    /// The key as a JSON object.
    pub json: Bytes,
}

/// A sanitized JWKS: only public keys of supported types, serialized canonically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetDocument {
    json: Bytes,
    keys: Vec<PublicKey>,
}

/// The outcome of parsing a body: the sanitized set and how many keys were left out.
#[derive(Debug)]
pub struct Parsed {
    /// The sanitized set.
    pub document: KeySetDocument,
    /// Keys skipped because their type is unsupported or their members are malformed.
    pub skipped: usize,
}

impl KeySetDocument {
    /// Parses a JWKS body and applies the guardrails that do not depend on history.
    pub fn parse(body: &[u8]) -> Result<Parsed, JwksError> {
        let root: Value =
            serde_json::from_slice(body).map_err(|err| JwksError::NotJson(err.to_string()))?;
        let entries = root
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        let mut seen_kids = HashSet::new();
        let mut accepted = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(object) = entry.as_object() else {
                continue;
            };
            reject_private_material(object)?;
            if let Some(kid) = object.get("kid").and_then(Value::as_str)
                && !seen_kids.insert(kid.to_owned())
            {
                return Err(JwksError::DuplicateKid(kid.to_owned()));
            }
            if is_supported_public_key(entry) {
                accepted.push(object.clone());
            }
        }
        let skipped = entries.len() - accepted.len();
        Ok(Parsed {
            document: Self::from_objects(accepted),
            skipped,
        })
    }

    fn from_objects(objects: Vec<Map<String, Value>>) -> Self {
        let keys = objects.iter().map(public_key).collect();
        let document = serde_json::json!({ "keys": objects });
        Self {
            json: Bytes::from(document.to_string()),
            keys,
        }
    }

    /// The sanitized document, `{"keys": [...]}`.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The keys, in the provider's order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether a key with this id is in the set.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// Whether both sets hold the same keys, whatever their order.
    pub fn same_keys_as(&self, other: &KeySetDocument) -> bool {
        self.canonical_keys() == other.canonical_keys()
    }

    fn canonical_keys(&self) -> Vec<&Bytes> {
        let mut keys: Vec<&Bytes> = self.keys.iter().map(|key| &key.json).collect();
        keys.sort();
        keys
    }

    /// Checks that this set may replace `previous`, the last good set.
    pub fn may_replace(&self, previous: Option<&KeySetDocument>) -> Result<(), JwksError> {
        match previous {
            Some(previous) if self.keys.is_empty() && !previous.keys.is_empty() => {
                Err(JwksError::EmptyReplacesNonEmpty {
                    previous: previous.keys.len(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn reject_private_material(object: &Map<String, Value>) -> Result<(), JwksError> {
    match PRIVATE_MEMBERS
        .iter()
        .find(|member| object.contains_key(**member))
    {
        Some(member) => Err(JwksError::PrivateMaterial {
            kid: object
                .get("kid")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
                .to_owned(),
            member,
        }),
        None => Ok(()),
    }
}

/// A key of a supported type whose members are present and well-formed, and which the
/// `jsonwebtoken` JWK model (what the Rust SDK hands to verification) accepts.
fn is_supported_public_key(entry: &Value) -> bool {
    let kty = entry.get("kty").and_then(Value::as_str);
    let Some((_, members)) = REQUIRED_MEMBERS.iter().find(|(t, _)| Some(*t) == kty) else {
        return false;
    };
    let is_base64url = |member: &&str| {
        entry
            .get(*member)
            .and_then(Value::as_str)
            .is_some_and(|text| !text.is_empty() && URL_SAFE_NO_PAD.decode(text).is_ok())
    };
    members.iter().all(is_base64url) && serde_json::from_value::<Jwk>(entry.clone()).is_ok()
}

fn public_key(object: &Map<String, Value>) -> PublicKey {
    let text = |member: &str| {
        object
            .get(member)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    PublicKey {
        kid: text("kid"),
        kty: text("kty").unwrap_or_default(),
        alg: text("alg"),
        key_use: text("use"),
        json: Bytes::from(Value::Object(object.clone()).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": "sXch", "e": "AQAB"})
    }

    fn parse(doc: Value) -> Result<Parsed, JwksError> {
        KeySetDocument::parse(doc.to_string().as_bytes())
    }

    #[test]
    fn a_valid_set_is_sanitized_and_indexed() {
        let ec = json!({"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83O", "y": "x_FE"});
        let parsed = parse(json!({"keys": [rsa("r1"), ec], "extra": true})).unwrap();
        assert_eq!(parsed.skipped, 0);
        let doc = parsed.document;
        assert!(doc.contains_kid("r1") && doc.contains_kid("e1") && !doc.contains_kid("x"));
        assert_eq!(doc.keys()[0].alg.as_deref(), Some("RS256"));
        assert_eq!(doc.keys()[0].key_use.as_deref(), Some("sig"));
        let reparsed: Value = serde_json::from_slice(doc.json()).unwrap();
        assert_eq!(
            reparsed,
            json!({"keys": [rsa("r1"), {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83O", "y": "x_FE"}]})
        );
    }

    #[test]
    fn unsupported_and_malformed_keys_are_skipped_not_fatal() {
        let parsed = parse(json!({"keys": [
            rsa("r1"),
            {"kty": "FUTURE", "kid": "f1"},
            {"kty": "RSA", "kid": "broken"},
            "not an object",
        ]}))
        .unwrap();
        assert_eq!(parsed.skipped, 3);
        assert_eq!(parsed.document.keys().len(), 1);
    }

    #[test]
    fn bodies_that_are_not_key_sets_are_rejected() {
        assert!(matches!(
            KeySetDocument::parse(b"<html>"),
            Err(JwksError::NotJson(_))
        ));
        assert_eq!(
            parse(json!({"kys": []})).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert_eq!(
            parse(json!({"keys": {}})).unwrap_err(),
            JwksError::NoKeysArray
        );
    }

    #[test]
    fn duplicate_kids_are_rejected() {
        assert_eq!(
            parse(json!({"keys": [rsa("a"), rsa("a")]})).unwrap_err(),
            JwksError::DuplicateKid("a".into())
        );
    }

    #[test]
    fn private_and_symmetric_members_are_rejected() {
        for member in PRIVATE_MEMBERS {
            let mut key = rsa("leak");
            key[member] = json!("c2VjcmV0");
            assert_eq!(
                parse(json!({"keys": [key]})).unwrap_err(),
                JwksError::PrivateMaterial {
                    kid: "leak".into(),
                    member
                }
            );
        }
    }

    #[test]
    fn an_empty_set_never_replaces_a_non_empty_one() {
        let previous = parse(json!({"keys": [rsa("a")]})).unwrap().document;
        let empty = parse(json!({"keys": []})).unwrap().document;
        assert_eq!(
            empty.may_replace(Some(&previous)),
            Err(JwksError::EmptyReplacesNonEmpty { previous: 1 })
        );
        assert_eq!(empty.may_replace(None), Ok(()));
        assert_eq!(previous.may_replace(Some(&empty)), Ok(()));
    }

    #[test]
    fn key_order_does_not_make_a_different_set() {
        let ab = parse(json!({"keys": [rsa("a"), rsa("b")]}))
            .unwrap()
            .document;
        let ba = parse(json!({"keys": [rsa("b"), rsa("a")]}))
            .unwrap()
            .document;
        let ac = parse(json!({"keys": [rsa("a"), rsa("c")]}))
            .unwrap()
            .document;
        assert!(ab.same_keys_as(&ba));
        assert!(!ab.same_keys_as(&ac));
    }
}
