//! Per-provider key policy: which keys of a fetched set the verification view publishes (the
//! signature algorithms allowed, encryption keys, keys without a kid, certificate chains to
//! the provider's trust anchors). Nothing here does I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    TrustAnchor, ValidationError,
    key_set::{JwksError, KeySetDocument, PublicKey, SIGNATURE_ALGORITHMS, SkipReason, SkippedKey},
    trust_anchors, upstream_trust,
};

/// What one provider publishes of the keys it serves. The default publishes every key for
/// any signature algorithm keyrelay knows, with `use: sig` or no `use`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Signature algorithms whose keys are published; empty allows all of
    /// [`SIGNATURE_ALGORITHMS`]. A key without `alg` is published when its type and curve
    /// fit one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_algorithms: Vec<String>,
    /// Whether encryption keys (`use: enc`, or a key management `alg`) are published too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_encryption_keys: bool,
    /// Whether keys without a kid are left out of a set that publishes more than one key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_kid: bool,
    /// CA certificates one of which every published key's `x5c` chain must validate to;
    /// empty publishes keys with or without a chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors: Vec<TrustAnchor>,
}

impl KeyPolicy {
    /// Parses the policy's `allowed_algorithms`, `include_encryption_keys`, `require_kid` and
    /// `trust_anchors` (PEM certificates).
    pub fn parse(
        allowed_algorithms: &[String],
        include_encryption_keys: bool,
        require_kid: bool,
        trust_anchors: &[String],
    ) -> Result<Self, ValidationError> {
        let mut allowed: Vec<String> = Vec::with_capacity(allowed_algorithms.len());
        for (i, alg) in allowed_algorithms.iter().enumerate() {
            let field = || format!("policy.allowed_algorithms[{i}]");
            if !SIGNATURE_ALGORITHMS.contains(&alg.as_str()) {
                let known = SIGNATURE_ALGORITHMS.join(", ");
                let reason =
                    format!("{alg:?} is not a signature algorithm keyrelay knows ({known})");
                return Err(ValidationError::new(field(), reason));
            }
            if allowed.contains(alg) {
                return Err(ValidationError::new(
                    field(),
                    format!("{alg} is listed twice"),
                ));
            }
            allowed.push(alg.clone());
        }
        Ok(Self {
            allowed_algorithms: allowed,
            include_encryption_keys,
            require_kid,
            trust_anchors: upstream_trust::parse_list(
                "policy.trust_anchors",
                trust_anchors,
                TrustAnchor::parse_pem,
            )?,
        })
    }

    /// The signature algorithms in force: the allowed ones, or all keyrelay knows.
    pub fn algorithms_in_force(&self) -> Vec<String> {
        if self.allowed_algorithms.is_empty() {
            SIGNATURE_ALGORITHMS.map(str::to_owned).to_vec()
        } else {
            self.allowed_algorithms.clone()
        }
    }

    /// For each key of `keys`, in order, why this policy leaves it out, if it does, with
    /// certificate chains checked as of `at` (when the identity provider last served them).
    pub fn verdicts(&self, keys: &[PublicKey], at: DateTime<Utc>) -> Vec<Option<SkipReason>> {
        let mut verdicts: Vec<Option<SkipReason>> =
            keys.iter().map(|k| self.verdict(k, at)).collect();
        let published = verdicts.iter().filter(|v| v.is_none()).count();
        if self.require_kid && published > 1 {
            for (verdict, key) in verdicts.iter_mut().zip(keys) {
                if verdict.is_none() && key.kid.is_none() {
                    *verdict = Some(SkipReason::NoKid);
                }
            }
        }
        verdicts
    }

    /// Refuses a non-empty `document` of which this policy would publish no key at `at`: the
    /// provider would serve an empty set although its identity provider publishes keys.
    pub fn publishes_some(
        &self,
        document: &KeySetDocument,
        at: DateTime<Utc>,
    ) -> Result<(), JwksError> {
        let withheld = self.withheld(document, at);
        let count = document.keys().len();
        match withheld.first() {
            Some(first) if withheld.len() == count => Err(JwksError::PolicyLeavesNoKey {
                count,
                first: format!(
                    "{}: {}",
                    first.kid.as_deref().unwrap_or("(no kid)"),
                    first.reason
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The keys of `document` this policy leaves out at `at`, with why.
    pub fn withheld(&self, document: &KeySetDocument, at: DateTime<Utc>) -> Vec<SkippedKey> {
        let keys = document.keys();
        Self::left_out(keys, self.verdicts(keys, at))
    }

    /// The keys of `keys` that `verdicts` (theirs, in order) leave out, with why.
    pub fn left_out(keys: &[PublicKey], verdicts: Vec<Option<SkipReason>>) -> Vec<SkippedKey> {
        verdicts
            .into_iter()
            .zip(keys)
            .filter_map(|(verdict, key)| {
                verdict.map(|reason| SkippedKey {
                    kid: key.kid.clone(),
                    reason,
                })
            })
            .collect()
    }

    fn verdict(&self, key: &PublicKey, at: DateTime<Utc>) -> Option<SkipReason> {
        if key.is_for_encryption() {
            return (!self.include_encryption_keys).then_some(SkipReason::EncryptionKey);
        }
        if let Some(key_use) = key.key_use.as_deref().filter(|u| *u != "sig") {
            return Some(SkipReason::UnknownUse(key_use.to_owned()));
        }
        let allowed = |alg: &str| {
            self.allowed_algorithms.is_empty() || self.allowed_algorithms.iter().any(|a| a == alg)
        };
        if key.signs_with_any(allowed) {
            self.untrusted(key, at)
        } else {
            let alg = key.alg.as_deref().map_or_else(
                || {
                    format!(
                        "{} (it has no alg: what its key type fits)",
                        key.fits().join(", ")
                    )
                },
                str::to_owned,
            );
            Some(SkipReason::AlgorithmNotAllowed(alg))
        }
    }

    /// Why `key`'s certificate chain is not trusted at `at`, when the policy names anchors.
    fn untrusted(&self, key: &PublicKey, at: DateTime<Utc>) -> Option<SkipReason> {
        if self.trust_anchors.is_empty() {
            return None;
        }
        let object = serde_json::from_slice(&key.json)
            .map_err(|err| format!("the key is not a JSON object: {err}"));
        object
            .and_then(|object| trust_anchors::check_chain(&object, &self.trust_anchors, at))
            .err()
            .map(SkipReason::Certificate)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn document(keys: Value) -> KeySetDocument {
        let body = json!({ "keys": keys }).to_string();
        KeySetDocument::parse(body.as_bytes())
            .expect("a valid test set")
            .document
    }

    fn ec(kid: Option<&str>, alg: Option<&str>, key_use: Option<&str>) -> Value {
        let mut key = json!({"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE"});
        for (member, value) in [("kid", kid), ("alg", alg), ("use", key_use)] {
            if let Some(value) = value {
                key[member] = json!(value);
            }
        }
        key
    }

    fn withheld(policy: &KeyPolicy, keys: Value) -> Vec<(Option<String>, &'static str)> {
        policy
            .withheld(&document(keys), Utc::now())
            .into_iter()
            .map(|skipped| (skipped.kid, skipped.reason.kind()))
            .collect()
    }

    fn kid(kid: &str) -> Option<String> {
        Some(kid.to_owned())
    }

    #[test]
    fn the_default_publishes_signature_keys_and_leaves_out_encryption_keys() {
        let keys = json!([
            ec(Some("sig"), Some("ES256"), Some("sig")),
            ec(Some("plain"), None, None),
            ec(Some("enc"), None, Some("enc")),
            ec(Some("ecdh"), Some("ECDH-ES"), None),
            ec(Some("odd"), None, Some("tls")),
            ec(None, None, None),
        ]);
        assert_eq!(
            withheld(&KeyPolicy::default(), keys),
            [
                (kid("enc"), "encryption_key"),
                (kid("ecdh"), "encryption_key"),
                (kid("odd"), "unknown_use"),
            ]
        );
    }

    #[test]
    fn encryption_keys_are_published_when_the_policy_includes_them() {
        let policy = KeyPolicy {
            include_encryption_keys: true,
            ..KeyPolicy::default()
        };
        let keys = json!([
            ec(Some("enc"), None, Some("enc")),
            ec(Some("ecdh"), Some("ECDH-ES"), None)
        ]);
        assert_eq!(withheld(&policy, keys), []);
    }

    #[test]
    fn keys_outside_the_allowed_algorithms_are_left_out() {
        let policy =
            KeyPolicy::parse(&["ES384".into(), "RS256".into()], false, false, &[]).unwrap();
        let keys = json!([
            ec(Some("named"), Some("ES256"), None),
            ec(Some("by-curve"), None, None),
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "f83O", "y": "x_FE"},
        ]);
        assert_eq!(
            withheld(&policy, keys),
            [
                (kid("named"), "algorithm_not_allowed"),
                (kid("by-curve"), "algorithm_not_allowed"),
            ],
            "a key without alg is kept when its curve fits an allowed algorithm"
        );
    }

    #[test]
    fn keys_without_a_kid_are_left_out_only_beside_other_published_keys() {
        let policy = KeyPolicy::parse(&[], false, true, &[]).unwrap();
        let alone = json!([ec(None, None, None), ec(Some("enc"), None, Some("enc"))]);
        assert_eq!(
            withheld(&policy, alone),
            [(kid("enc"), "encryption_key")],
            "the only key published needs no kid"
        );
        let beside = json!([ec(None, None, None), ec(Some("a"), None, None)]);
        assert_eq!(withheld(&policy, beside), [(None, "no_kid")]);
    }

    #[test]
    fn unknown_and_repeated_algorithms_are_refused_naming_the_entry() {
        let err =
            KeyPolicy::parse(&["RS256".into(), "HS256".into()], false, false, &[]).unwrap_err();
        assert_eq!(err.field, "policy.allowed_algorithms[1]");
        assert!(err.reason.contains("RS256, RS384"), "{}", err.reason);
        let err =
            KeyPolicy::parse(&["EdDSA".into(), "EdDSA".into()], false, false, &[]).unwrap_err();
        assert_eq!(err.field, "policy.allowed_algorithms[1]");
    }

    #[test]
    fn the_algorithms_in_force_are_all_known_ones_by_default() {
        assert_eq!(
            KeyPolicy::default().algorithms_in_force().len(),
            SIGNATURE_ALGORITHMS.len()
        );
        let policy = KeyPolicy::parse(&["PS256".into()], false, false, &[]).unwrap();
        assert_eq!(policy.algorithms_in_force(), ["PS256"]);
    }
}
