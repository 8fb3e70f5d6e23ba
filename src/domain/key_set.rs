//! JWKS guardrails: turns an identity provider's response body into a sanitized key set, or
//! says exactly why the body must not replace the last good one. Nothing here does I/O.

use std::{
    borrow::Cow,
    collections::HashSet,
    ops::Range,
    sync::{Arc, LazyLock},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::jwk::{CommonParameters, Jwk};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::x509;

/// Members that only private or symmetric keys carry. A document holding any of them is a
/// leak at the identity provider and is never published.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// More keys than this in one document is not a key set but an attack or a mistake.
pub const MAX_KEYS: usize = 100;
/// Largest single key, serialized (an RSA-4096 key with a certificate chain fits easily).
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// The members that are a key's material: a kid whose material changes is a different key.
const MATERIAL_MEMBERS: [&str; 6] = ["kty", "crv", "n", "e", "x", "y"];

/// RSA signature algorithms.
const RSA_SIGNATURE_ALGORITHMS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];

/// RSA key management algorithms (JWE) a published RSA key may name.
const RSA_ENCRYPTION_ALGORITHMS: [&str; 5] = [
    "RSA-OAEP",
    "RSA-OAEP-256",
    "RSA-OAEP-384",
    "RSA-OAEP-512",
    "RSA1_5",
];

/// Key agreement algorithms any published EC key may name, whatever its curve.
const ECDH_ALGORITHMS: [&str; 4] = [
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
];

/// Every signature algorithm keyrelay publishes keys for, in the order policies list them.
pub const SIGNATURE_ALGORITHMS: [&str; 11] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "Ed25519",
];

/// Curves keyrelay publishes, by key type, with the signature algorithms each fits. These are
/// the curves the `jsonwebtoken` JWK model (what the Rust SDK verifies with) can represent.
const CURVES: [(&str, &str, &[&str]); 4] = [
    ("EC", "P-256", &["ES256"]),
    ("EC", "P-384", &["ES384"]),
    ("EC", "P-521", &["ES512"]),
    ("OKP", "Ed25519", &["EdDSA", "Ed25519"]),
];

/// Key types keyrelay publishes, with the members each must carry as base64url text.
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
    /// More keys than `MAX_KEYS`.
    #[error("response has {count} keys; at most {limit} are accepted")]
    TooManyKeys {
        /// Keys in the document.
        count: usize,
        /// The bound.
        limit: usize,
    },
    /// One key is larger than `MAX_KEY_BYTES`.
    #[error("key {kid:?} is {bytes} bytes; at most {limit} are accepted")]
    KeyTooLarge {
        /// The key's id, or `<none>`.
        kid: String,
        /// Its serialized size.
        bytes: usize,
        /// The bound.
        limit: usize,
    },
    /// An RSA key below `MIN_RSA_BITS`.
    #[error("RSA key {kid:?} has a {bits}-bit modulus; at least {MIN_RSA_BITS} bits are required")]
    WeakRsaKey {
        /// The key's id, or `<none>`.
        kid: String,
        /// Its modulus size.
        bits: usize,
    },
    /// A kid of the last good set now names different key material.
    #[error(
        "kid {0:?} now names different key material; a kid may be reused only after its old key has been withdrawn"
    )]
    KidReused(String),
    /// Every key of the last good set disappeared at once; held until a second fetch agrees.
    #[error(
        "every one of the previous {previous} key(s) was replaced in one step; waiting for a second fetch to confirm"
    )]
    UnconfirmedReplacement {
        /// Number of keys in the last good set.
        previous: usize,
    },
    /// The provider's key policy leaves out every key of the document.
    #[error(
        "the provider's key policy leaves out every one of the {count} key(s) (the first: {first}); change policy.allowed_algorithms, include_encryption_keys, require_kid or trust_anchors"
    )]
    PolicyLeavesNoKey {
        /// Keys in the document.
        count: usize,
        /// The first key left out, and why.
        first: String,
    },
}

impl JwksError {
    /// Every `kind`.
    pub const KINDS: [&'static str; 11] = [
        "not_json",
        "no_keys_array",
        "duplicate_kid",
        "private_material",
        "empty_set",
        "too_many_keys",
        "key_too_large",
        "weak_rsa_key",
        "kid_reused",
        "unconfirmed_replacement",
        "policy_leaves_no_key",
    ];

    /// A short name for the rejection metric's `reason` label.
    pub fn kind(&self) -> &'static str {
        match self {
            JwksError::NotJson(_) => "not_json",
            JwksError::NoKeysArray => "no_keys_array",
            JwksError::DuplicateKid(_) => "duplicate_kid",
            JwksError::PrivateMaterial { .. } => "private_material",
            JwksError::EmptyReplacesNonEmpty { .. } => "empty_set",
            JwksError::TooManyKeys { .. } => "too_many_keys",
            JwksError::KeyTooLarge { .. } => "key_too_large",
            JwksError::WeakRsaKey { .. } => "weak_rsa_key",
            JwksError::KidReused(_) => "kid_reused",
            JwksError::UnconfirmedReplacement { .. } => "unconfirmed_replacement",
            JwksError::PolicyLeavesNoKey { .. } => "policy_leaves_no_key",
        }
    }
}

/// A key of the document that keyrelay left out of the published set: it is of a type, curve
/// or algorithm keyrelay does not publish (a newer kind of key, for instance), or it is
/// malformed. Skipping such keys is never a reason to refuse the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedKey {
    /// The key's `kid`, when it has one.
    pub kid: Option<String>,
    /// Why it was left out.
    pub reason: SkipReason,
}

impl SkippedKey {
    /// `list` as a shared slice; an empty one is a single slice every provider shares, not
    /// an allocation each (most providers skip no key).
    pub fn shared_list(list: Vec<SkippedKey>) -> Arc<[SkippedKey]> {
        static NONE: LazyLock<Arc<[SkippedKey]>> = LazyLock::new(|| Arc::from([]));
        if list.is_empty() {
            Arc::clone(&NONE)
        } else {
            list.into()
        }
    }
}

/// Why a key was left out of the published set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum SkipReason {
    /// The entry of `keys` is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `kty` is missing or names a type keyrelay does not publish (`AKP`, say).
    #[error("key type {0:?} is not published by keyrelay")]
    UnsupportedKeyType(String),
    /// `crv` is missing or names a curve keyrelay does not publish for this key type.
    #[error("curve {0:?} is not published by keyrelay")]
    UnsupportedCurve(String),
    /// `alg` names an algorithm keyrelay does not know for this key (`ML-DSA-44`, `HS256`).
    #[error("algorithm {0:?} is not one keyrelay publishes for this key type and curve")]
    UnsupportedAlgorithm(String),
    /// A required member is missing, or a member is not what JOSE says it must be.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The provider's key policy does not allow the key's algorithm.
    #[error("algorithm {0} is not in the provider's policy.allowed_algorithms")]
    AlgorithmNotAllowed(String),
    /// An encryption key, which the provider's policy does not publish.
    #[error(
        "an encryption key (use enc, or a key management alg); policy.include_encryption_keys publishes it"
    )]
    EncryptionKey,
    /// The key's `x5c` leaf certificate does not carry it, a thumbprint does not match, or
    /// the chain does not validate to the provider's trust anchors.
    #[error("certificate: {0}")]
    Certificate(String),
    /// `use` is neither `sig` nor `enc`.
    #[error("use {0:?} is neither sig nor enc")]
    UnknownUse(String),
    /// No kid, in a set that publishes other keys, under the provider's `policy.require_kid`.
    #[error("no kid, beside other keys, and the provider's policy.require_kid is set")]
    NoKid,
}

impl SkipReason {
    /// Every `kind`.
    pub const KINDS: [&'static str; 10] = [
        "not_an_object",
        "unsupported_key_type",
        "unsupported_curve",
        "unsupported_algorithm",
        "malformed",
        "certificate",
        "algorithm_not_allowed",
        "encryption_key",
        "unknown_use",
        "no_kid",
    ];

    /// A short name for the skipped-keys metric's `reason` label.
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::NotAnObject => "not_an_object",
            SkipReason::UnsupportedKeyType(_) => "unsupported_key_type",
            SkipReason::UnsupportedCurve(_) => "unsupported_curve",
            SkipReason::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            SkipReason::Malformed(_) => "malformed",
            SkipReason::Certificate(_) => "certificate",
            SkipReason::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            SkipReason::EncryptionKey => "encryption_key",
            SkipReason::UnknownUse(_) => "unknown_use",
            SkipReason::NoKid => "no_kid",
        }
    }
}

/// One public key of a sanitized set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `kid`, when the provider gave one.
    pub kid: Option<String>,
    /// `kty`: RSA, EC or OKP. Names keyrelay knows are shared, not allocated per key.
    pub kty: Cow<'static, str>,
    /// `alg`, when the provider gave one.
    pub alg: Option<Cow<'static, str>>,
    /// `use`, when the provider gave one.
    pub key_use: Option<Cow<'static, str>>,
    /// The key as a JSON object.
    pub json: Bytes,
    /// The signature algorithms its type and curve fit, whatever its `alg` says.
    fits: &'static [&'static str],
}

impl PublicKey {
    /// Whether the key is for encryption: `use: enc`, or a key management `alg`.
    pub fn is_for_encryption(&self) -> bool {
        self.key_use.as_deref() == Some("enc")
            || self.alg.as_deref().is_some_and(|alg| {
                RSA_ENCRYPTION_ALGORITHMS.contains(&alg) || ECDH_ALGORITHMS.contains(&alg)
            })
    }

    /// The signature algorithms its type and curve fit, whatever its `alg` says.
    pub fn fits(&self) -> &'static [&'static str] {
        self.fits
    }

    /// Whether the key verifies signatures of an algorithm `allowed` accepts: its `alg`, or,
    /// without one, any algorithm its type and curve fit.
    pub fn signs_with_any(&self, allowed: impl Fn(&str) -> bool) -> bool {
        match self.alg.as_deref() {
            Some(alg) => allowed(alg),
            None => self.fits.iter().any(|alg| allowed(alg)),
        }
    }
}

/// A sanitized JWKS: only public keys of supported types, serialized canonically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetDocument {
    json: Bytes,
    keys: Vec<PublicKey>,
}

/// The outcome of parsing a body: the sanitized set and the keys left out of it.
#[derive(Debug)]
pub struct Parsed {
    /// The sanitized set.
    pub document: KeySetDocument,
    /// Keys left out, in the document's order.
    pub skipped: Vec<SkippedKey>,
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
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys {
                count: entries.len(),
                limit: MAX_KEYS,
            });
        }
        let mut seen_kids = HashSet::new();
        let mut document = DocumentWriter::with_capacity(body.len());
        let mut accepted = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        for entry in entries {
            let Some(object) = entry.as_object() else {
                skipped.push(SkippedKey {
                    kid: None,
                    reason: SkipReason::NotAnObject,
                });
                continue;
            };
            let members = Members::of(object);
            let span = document.push(object, &members)?;
            reject_private_material(&members)?;
            if let Some(kid) = members.kid
                && !seen_kids.insert(kid)
            {
                return Err(JwksError::DuplicateKid(kid.to_owned()));
            }
            match publishable(entry, object, &members) {
                Ok(()) => {
                    reject_weak_rsa(&members)?;
                    accepted.push((members, span));
                }
                Err(reason) => {
                    document.discard_last();
                    skipped.push(SkippedKey {
                        kid: members.kid.map(str::to_owned),
                        reason,
                    });
                }
            }
        }
        let json = document.finish();
        let keys = accepted
            .iter()
            .map(|(members, span)| public_key(members, json.slice(span.clone())))
            .collect();
        Ok(Parsed {
            document: Self { json, keys },
            skipped,
        })
    }

    /// This set with only the keys `keep` accepts (given each key's position and the key);
    /// `None` when it accepts them all.
    pub fn retain(&self, keep: impl Fn(usize, &PublicKey) -> bool) -> Option<KeySetDocument> {
        let kept: Vec<bool> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| keep(i, k))
            .collect();
        if kept.iter().all(|kept| *kept) {
            return None;
        }
        let keys: Vec<&PublicKey> = self
            .keys
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| **kept)
            .map(|(key, _)| key)
            .collect();
        let serialized: Vec<&[u8]> = keys.iter().map(|key| &key.json[..]).collect();
        let (json, spans) = document_of(&serialized);
        let json = Bytes::from(json);
        let keys = keys
            .into_iter()
            .zip(spans)
            .map(|(key, span)| PublicKey {
                json: json.slice(span),
                ..key.clone()
            })
            .collect();
        Some(Self { json, keys })
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

    /// Checks that this set may replace `previous`, the last good set: not empty in place of
    /// keys, and no kid naming new material (a kid is reusable once a fetch has seen it
    /// withdrawn, so the hold-down is at least one refresh interval).
    pub fn may_replace(&self, previous: Option<&KeySetDocument>) -> Result<(), JwksError> {
        let Some(previous) = previous else {
            return Ok(());
        };
        if self.keys.is_empty() && !previous.keys.is_empty() {
            return Err(JwksError::EmptyReplacesNonEmpty {
                previous: previous.keys.len(),
            });
        }
        for key in &self.keys {
            let Some(kid) = &key.kid else { continue };
            let before = previous
                .keys
                .iter()
                .find(|old| old.kid.as_ref() == Some(kid));
            if before.is_some_and(|old| material(&old.json) != material(&key.json)) {
                return Err(JwksError::KidReused(kid.clone()));
            }
        }
        Ok(())
    }

    /// Whether this set shares no key with a non-empty `previous` set: every known key would
    /// disappear at once.
    pub fn replaces_every_key_of(&self, previous: &KeySetDocument) -> bool {
        let before: HashSet<Vec<u8>> = previous.keys.iter().map(|k| material(&k.json)).collect();
        !before.is_empty()
            && !self.keys.is_empty()
            && self
                .keys
                .iter()
                .all(|k| !before.contains(&material(&k.json)))
    }

    /// A digest of the set's keys, independent of their order.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for key in self.canonical_keys() {
            digest.update(key);
            digest.update([0]);
        }
        digest.finalize().into()
    }
}

const DOCUMENT_START: &[u8] = b"{\"keys\":[";
const DOCUMENT_END: &[u8] = b"]}";

/// The document `{"keys":[...]}` of these serialized keys, and each key's span in it. The
/// buffer has no spare capacity: a document is kept as long as its provider, and `Bytes`
/// takes an exactly sized buffer over without allocating.
fn document_of(keys: &[&[u8]]) -> (Vec<u8>, Vec<Range<usize>>) {
    let commas = keys.len().saturating_sub(1);
    let keys_length: usize = keys.iter().map(|key| key.len()).sum();
    let mut json =
        Vec::with_capacity(DOCUMENT_START.len() + keys_length + commas + DOCUMENT_END.len());
    json.extend_from_slice(DOCUMENT_START);
    let mut spans = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        let start = json.len();
        json.extend_from_slice(key);
        spans.push(start..json.len());
    }
    json.extend_from_slice(DOCUMENT_END);
    (json, spans)
}

/// The key material of a serialized key, in a canonical order.
fn material(json: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(json) else {
        return json.to_vec();
    };
    let members: Map<String, Value> = MATERIAL_MEMBERS
        .iter()
        .filter_map(|m| object.get(*m).map(|v| ((*m).to_owned(), v.clone())))
        .collect();
    Value::Object(members).to_string().into_bytes()
}

/// Writes the sanitized document `{"keys":[...]}` as the keys are read, each serialized
/// straight into it; a key that is skipped is taken back out.
struct DocumentWriter {
    json: Vec<u8>,
    keys: usize,
    /// Where the last key, with its separating comma, began.
    last_start: usize,
}

impl DocumentWriter {
    /// A writer for a document of about `capacity` bytes (its body's length: a stored,
    /// already sanitized document is written back byte for byte).
    fn with_capacity(capacity: usize) -> Self {
        let mut json = Vec::with_capacity(capacity + DOCUMENT_END.len());
        json.extend_from_slice(DOCUMENT_START);
        Self {
            json,
            keys: 0,
            last_start: DOCUMENT_START.len(),
        }
    }

    /// Appends the key and returns its span, unless it is larger than a key may be.
    fn push(
        &mut self,
        object: &Map<String, Value>,
        members: &Members,
    ) -> Result<Range<usize>, JwksError> {
        self.last_start = self.json.len();
        if self.keys > 0 {
            self.json.push(b',');
        }
        let start = self.json.len();
        serde_json::to_writer(&mut self.json, object)
            .map_err(|err| JwksError::NotJson(err.to_string()))?;
        self.keys += 1;
        let bytes = self.json.len() - start;
        if bytes > MAX_KEY_BYTES {
            return Err(JwksError::KeyTooLarge {
                kid: members.kid_or_none(),
                bytes,
                limit: MAX_KEY_BYTES,
            });
        }
        Ok(start..self.json.len())
    }

    /// Takes the last key appended back out.
    fn discard_last(&mut self) {
        self.json.truncate(self.last_start);
        self.keys -= 1;
    }

    /// The document, in a buffer with no spare capacity (see [`document_of`]).
    fn finish(mut self) -> Bytes {
        self.json.extend_from_slice(DOCUMENT_END);
        self.json.shrink_to_fit();
        Bytes::from(self.json)
    }
}

/// The members of a key that the guardrails read, found in one pass over its object.
#[derive(Default)]
struct Members<'a> {
    kty: Option<&'a Value>,
    crv: Option<&'a Value>,
    n: Option<&'a Value>,
    e: Option<&'a Value>,
    x: Option<&'a Value>,
    y: Option<&'a Value>,
    alg: Option<&'a Value>,
    kid: Option<&'a str>,
    key_use: Option<&'a str>,
    /// Which of `PRIVATE_MEMBERS` the key carries, a bit for each in their order.
    private: u8,
}

impl<'a> Members<'a> {
    fn of(object: &'a Map<String, Value>) -> Self {
        let mut members = Self::default();
        for (name, value) in object {
            match name.as_str() {
                "kty" => members.kty = Some(value),
                "crv" => members.crv = Some(value),
                "n" => members.n = Some(value),
                "e" => members.e = Some(value),
                "x" => members.x = Some(value),
                "y" => members.y = Some(value),
                "alg" => members.alg = Some(value),
                "kid" => members.kid = value.as_str(),
                "use" => members.key_use = value.as_str(),
                other => {
                    if let Some(i) = PRIVATE_MEMBERS.iter().position(|member| *member == other) {
                        members.private |= 1 << i;
                    }
                }
            }
        }
        members
    }

    /// One of `MATERIAL_MEMBERS`, by name.
    fn material(&self, name: &str) -> Option<&'a Value> {
        match name {
            "kty" => self.kty,
            "crv" => self.crv,
            "n" => self.n,
            "e" => self.e,
            "x" => self.x,
            "y" => self.y,
            _ => None,
        }
    }

    /// A material member's text, if it is a string.
    fn text(&self, name: &str) -> Option<&'a str> {
        self.material(name).and_then(Value::as_str)
    }

    /// The first of `PRIVATE_MEMBERS`, in their order, that the key carries.
    fn private_member(&self) -> Option<&'static str> {
        PRIVATE_MEMBERS
            .get(self.private.trailing_zeros() as usize)
            .copied()
    }

    fn kid_or_none(&self) -> String {
        self.kid.unwrap_or("<none>").to_owned()
    }
}

fn reject_weak_rsa(members: &Members) -> Result<(), JwksError> {
    if members.text("kty") != Some("RSA") {
        return Ok(());
    }
    let modulus = members
        .text("n")
        .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
        .unwrap_or_default();
    let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
    let leading_zeros = modulus
        .iter()
        .find(|byte| **byte != 0)
        .map_or(0, |byte| byte.leading_zeros() as usize);
    let bits = (significant * 8).saturating_sub(leading_zeros);
    if bits < MIN_RSA_BITS {
        return Err(JwksError::WeakRsaKey {
            kid: members.kid_or_none(),
            bits,
        });
    }
    Ok(())
}

fn reject_private_material(members: &Members) -> Result<(), JwksError> {
    match members.private_member() {
        Some(member) => Err(JwksError::PrivateMaterial {
            kid: members.kid_or_none(),
            member,
        }),
        None => Ok(()),
    }
}

/// Whether keyrelay publishes this key: a type, curve and algorithm it knows, with members
/// present and well-formed, that the `jsonwebtoken` JWK model (what the Rust SDK hands to
/// verification) accepts. Otherwise, why not. `entry` is the key, `object` its members and
/// `members` those the guardrails read.
fn publishable(
    entry: &Value,
    object: &Map<String, Value>,
    members: &Members,
) -> Result<(), SkipReason> {
    let missing = |member: &str| SkipReason::Malformed(format!("{member} is missing"));
    let kty = match members.kty {
        None => return Err(missing("kty")),
        Some(kty) => kty
            .as_str()
            .ok_or_else(|| SkipReason::UnsupportedKeyType(value_text(kty)))?,
    };
    let Some((_, required)) = REQUIRED_MEMBERS.iter().find(|(t, _)| *t == kty) else {
        return Err(SkipReason::UnsupportedKeyType(kty.to_owned()));
    };
    let curve_algorithms = match kty {
        "RSA" => &[][..],
        _ => {
            let crv = members.crv.ok_or_else(|| missing("crv"))?;
            let curve = CURVES
                .iter()
                .find(|(t, curve, _)| *t == kty && Some(*curve) == crv.as_str());
            let Some((_, _, algorithms)) = curve else {
                return Err(SkipReason::UnsupportedCurve(value_text(crv)));
            };
            algorithms
        }
    };
    if let Some(alg) = members.alg {
        let fits = |name: &str| match kty {
            "RSA" => {
                RSA_SIGNATURE_ALGORITHMS.contains(&name)
                    || RSA_ENCRYPTION_ALGORITHMS.contains(&name)
            }
            "EC" => curve_algorithms.contains(&name) || ECDH_ALGORITHMS.contains(&name),
            _ => curve_algorithms.contains(&name),
        };
        if !alg.as_str().is_some_and(fits) {
            return Err(SkipReason::UnsupportedAlgorithm(value_text(alg)));
        }
    }
    // Material given in another JSON type (a numeric `crv`, say) is no key a JOSE library
    // can use, and numbers do not survive re-serialization byte for byte.
    if let Some(member) = MATERIAL_MEMBERS
        .iter()
        .find(|member| members.material(member).is_some_and(|v| !v.is_string()))
    {
        return Err(SkipReason::Malformed(format!("{member} is not a string")));
    }
    let is_base64url = |member: &&str| {
        members
            .text(member)
            .is_some_and(|text| !text.is_empty() && URL_SAFE_NO_PAD.decode(text).is_ok())
    };
    if let Some(member) = required.iter().find(|member| !is_base64url(member)) {
        return Err(SkipReason::Malformed(format!(
            "{member} is missing or not base64url"
        )));
    }
    jwk_model_accepts(entry)?;
    x509::check(object).map_err(SkipReason::Certificate)
}

/// Whether the `jsonwebtoken` JWK model accepts the key. Of its two parts, the key-type
/// parameters take any object (their last variant, `Other`, is a map of every member), so
/// only the common parameters can refuse a key: they are read alone, and only a refusal
/// pays for the whole model, whose error is the reason given.
fn jwk_model_accepts(entry: &Value) -> Result<(), SkipReason> {
    if CommonParameters::deserialize(entry).is_ok() {
        return Ok(());
    }
    Jwk::deserialize(entry)
        .map(drop)
        .map_err(|err| SkipReason::Malformed(err.to_string()))
}

/// A member's value as text: strings as they are, anything else as JSON.
fn value_text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// The signature algorithms a publishable key's type and curve fit.
fn signature_algorithms_of(members: &Members) -> &'static [&'static str] {
    match members.text("kty") {
        Some("RSA") => &RSA_SIGNATURE_ALGORITHMS,
        kty => CURVES
            .iter()
            .find(|(t, crv, _)| Some(*t) == kty && Some(*crv) == members.text("crv"))
            .map_or(&[], |(_, _, algorithms)| algorithms),
    }
}

fn public_key(members: &Members, json: Bytes) -> PublicKey {
    let key_types = REQUIRED_MEMBERS.iter().map(|(kty, _)| *kty);
    let algorithms = SIGNATURE_ALGORITHMS
        .iter()
        .chain(&RSA_ENCRYPTION_ALGORITHMS)
        .chain(&ECDH_ALGORITHMS)
        .copied();
    PublicKey {
        kid: members.kid.map(str::to_owned),
        kty: known_name(members.text("kty").unwrap_or_default(), key_types),
        alg: members
            .alg
            .and_then(Value::as_str)
            .map(|alg| known_name(alg, algorithms)),
        key_use: members
            .key_use
            .map(|key_use| known_name(key_use, ["sig", "enc"].into_iter())),
        json,
        fits: signature_algorithms_of(members),
    }
}

/// `name` as the one of `known` it equals, or as its own copy when it is none of them.
fn known_name(name: &str, mut known: impl Iterator<Item = &'static str>) -> Cow<'static, str> {
    known
        .find(|known| *known == name)
        .map_or_else(|| Cow::Owned(name.to_owned()), Cow::Borrowed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A 2048-bit modulus whose bytes are all `fill` (the top bit set).
    fn modulus(fill: u8, bytes: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![fill; bytes])
    }

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": modulus(0xc5, 256), "e": "AQAB"})
    }

    #[test]
    fn a_document_holds_its_keys_in_order_with_no_spare_capacity() {
        let keys: [&[u8]; 3] = [b"{\"a\":1}", b"{\"bb\":22}", b"{}"];
        let (json, spans) = document_of(&keys);
        assert_eq!(json, b"{\"keys\":[{\"a\":1},{\"bb\":22},{}]}");
        assert_eq!(json.capacity(), json.len());
        let sliced: Vec<&[u8]> = spans.into_iter().map(|span| &json[span]).collect();
        assert_eq!(sliced, keys);
        assert_eq!(document_of(&[]).0, b"{\"keys\":[]}");
    }

    #[test]
    fn skipping_no_key_shares_one_empty_list() {
        let first = SkippedKey::shared_list(Vec::new());
        let second = SkippedKey::shared_list(Vec::new());
        assert!(Arc::ptr_eq(&first, &second));
        let one = SkippedKey::shared_list(vec![SkippedKey {
            kid: Some("k".into()),
            reason: SkipReason::NotAnObject,
        }]);
        assert_eq!(one.len(), 1);
    }

    fn parse(doc: Value) -> Result<Parsed, JwksError> {
        KeySetDocument::parse(doc.to_string().as_bytes())
    }

    #[test]
    fn each_key_is_a_slice_of_the_document_that_reads_as_the_key() {
        let document = parse(json!({"keys": [rsa("a"), rsa("b")]}))
            .unwrap()
            .document;
        let whole = document.json();
        assert_eq!(
            whole.as_ref(),
            json!({"keys": [rsa("a"), rsa("b")]}).to_string().as_bytes(),
            "the document is serde_json's compact form"
        );
        let range = whole.as_ptr_range();
        for (key, kid) in document.keys().iter().zip(["a", "b"]) {
            assert!(
                range.contains(&key.json.as_ptr()),
                "shares the document's bytes"
            );
            let read: Value = serde_json::from_slice(&key.json).unwrap();
            assert_eq!(read, rsa(kid));
        }
    }

    #[test]
    fn skipped_keys_leave_no_trace_in_the_document_wherever_they_stand() {
        let unknown = |kid: &str| json!({"kty": "oct-like", "kid": kid});
        let parsed = parse(json!({"keys": [
            unknown("first"), rsa("a"), unknown("middle"), unknown("next"), rsa("b"), unknown("last")
        ]}))
        .unwrap();
        assert_eq!(parsed.skipped.len(), 4);
        let document = parsed.document;
        assert_eq!(
            document.json().as_ref(),
            json!({"keys": [rsa("a"), rsa("b")]}).to_string().as_bytes()
        );
        for (key, kid) in document.keys().iter().zip(["a", "b"]) {
            let read: Value = serde_json::from_slice(&key.json).unwrap();
            assert_eq!(read, rsa(kid));
        }
        let none_published = parse(json!({"keys": [unknown("only")]})).unwrap();
        assert_eq!(none_published.document.json().as_ref(), b"{\"keys\":[]}");
    }

    #[test]
    fn a_subset_reads_back_as_a_document_of_only_those_keys() {
        let document = parse(json!({"keys": [rsa("a"), rsa("b"), rsa("c")]}))
            .unwrap()
            .document;
        let without = |kids: &'static [&str]| {
            document.retain(move |_, key| !kids.contains(&key.kid.as_deref().unwrap_or("")))
        };
        assert_eq!(without(&["zz"]), None, "nothing to leave out");
        let subset = without(&["b", "zz"]).unwrap();
        let kids: Vec<_> = subset
            .keys()
            .iter()
            .filter_map(|k| k.kid.as_deref())
            .collect();
        assert_eq!(kids, ["a", "c"]);
        let expected = parse(json!({"keys": [rsa("a"), rsa("c")]}))
            .unwrap()
            .document;
        assert_eq!(
            subset, expected,
            "the same JSON as a document without the key"
        );
        let none_left = without(&["a", "b", "c"]).unwrap();
        assert_eq!(none_left.json().as_ref(), br#"{"keys":[]}"#);
    }

    /// Found by the `jwks_document` fuzz target: a numeric `crv` was published, and read
    /// back from the store it no longer matched the fetched key; a large number in any
    /// member re-serialized to a different value (serde_json's `float_roundtrip` fixes it).
    #[test]
    fn material_of_another_json_type_is_skipped_and_numbers_survive_a_round_trip() {
        let body = br#"{"keys":[{"kty":"OKP","crv":112222222222222222222222222222222222222222222222222222222222,"x":"0YKxCPcHURo"}]}"#;
        let parsed = KeySetDocument::parse(body).unwrap();
        assert!(parsed.document.keys().is_empty());
        assert!(matches!(
            parsed.skipped.as_slice(),
            [SkippedKey {
                kid: None,
                reason: SkipReason::UnsupportedCurve(_)
            }]
        ));
        let numeric_x = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"n","x":12}]}"#;
        let parsed = KeySetDocument::parse(numeric_x).unwrap();
        assert_eq!(
            parsed.skipped[0].reason,
            SkipReason::Malformed("x is not a string".into())
        );

        let with_number = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"0YKxCPcHURo","ext":444444444444440000000000000000004129827551997706128}]}"#;
        let first = KeySetDocument::parse(with_number).unwrap().document;
        let again = KeySetDocument::parse(first.json()).unwrap().document;
        assert!(again.same_keys_as(&first));
        assert_eq!(again.json(), first.json());
    }

    #[test]
    fn every_kind_is_listed_for_the_metrics() {
        let rejections = [
            JwksError::NotJson(String::new()),
            JwksError::NoKeysArray,
            JwksError::DuplicateKid(String::new()),
            JwksError::PrivateMaterial {
                kid: String::new(),
                member: "d",
            },
            JwksError::EmptyReplacesNonEmpty { previous: 1 },
            JwksError::TooManyKeys { count: 1, limit: 1 },
            JwksError::KeyTooLarge {
                kid: String::new(),
                bytes: 1,
                limit: 1,
            },
            JwksError::WeakRsaKey {
                kid: String::new(),
                bits: 1,
            },
            JwksError::KidReused(String::new()),
            JwksError::UnconfirmedReplacement { previous: 1 },
            JwksError::PolicyLeavesNoKey {
                count: 1,
                first: String::new(),
            },
        ];
        assert_eq!(rejections.map(|e| e.kind()), JwksError::KINDS);
        let skips = [
            SkipReason::NotAnObject,
            SkipReason::UnsupportedKeyType(String::new()),
            SkipReason::UnsupportedCurve(String::new()),
            SkipReason::UnsupportedAlgorithm(String::new()),
            SkipReason::Malformed(String::new()),
            SkipReason::Certificate(String::new()),
            SkipReason::AlgorithmNotAllowed(String::new()),
            SkipReason::EncryptionKey,
            SkipReason::UnknownUse(String::new()),
            SkipReason::NoKid,
        ];
        assert_eq!(skips.map(|s| s.kind()), SkipReason::KINDS);
    }

    /// What `jwk_model_accepts` rests on: of a key whose members are each in turn of a wrong
    /// type, the whole model refuses exactly those refused by its common parameters, and the
    /// reason given is the whole model's error.
    #[test]
    fn the_jwk_model_refuses_a_key_only_through_its_common_parameters() {
        let common = [
            ("use", json!(1)),
            ("key_ops", json!("sign")),
            ("key_ops", json!(["sign", 2])),
            ("alg", json!(5)),
            ("kid", json!(["k"])),
            ("x5u", json!(true)),
            ("x5c", json!("MII")),
            ("x5t", json!(1)),
            ("x5t#S256", json!({})),
        ];
        let key_type = [
            ("kty", json!(7)),
            ("n", json!(1)),
            ("e", json!(null)),
            ("crv", json!(1)),
            ("x", json!([])),
            ("alg", json!("not-an-algorithm")),
            ("use", json!("neither")),
        ];
        for ((member, value), refused) in common
            .into_iter()
            .map(|case| (case, true))
            .chain(key_type.into_iter().map(|case| (case, false)))
        {
            let mut entry = rsa("k");
            entry[member] = value.clone();
            let whole = Jwk::deserialize(&entry)
                .map(drop)
                .map_err(|err| SkipReason::Malformed(err.to_string()));
            assert_eq!(whole.is_err(), refused, "{member}: {value}");
            assert_eq!(
                CommonParameters::deserialize(&entry).is_err(),
                refused,
                "{member}: {value}"
            );
            assert_eq!(jwk_model_accepts(&entry), whole, "{member}: {value}");
        }
    }

    #[test]
    fn a_valid_set_is_sanitized_and_indexed() {
        let ec = json!({"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83O", "y": "x_FE"});
        let parsed = parse(json!({"keys": [rsa("r1"), ec], "extra": true})).unwrap();
        assert_eq!(parsed.skipped, []);
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

    fn skipped(kid: &str, reason: SkipReason) -> SkippedKey {
        SkippedKey {
            kid: Some(kid.into()),
            reason,
        }
    }

    #[test]
    fn keys_keyrelay_does_not_know_are_skipped_with_a_reason_and_the_rest_published() {
        let mut wrong_curve_alg =
            json!({"kty": "EC", "kid": "e384", "crv": "P-256", "x": "f83O", "y": "x_FE"});
        wrong_curve_alg["alg"] = json!("ES384");
        let mut unknown_alg = rsa("typo");
        unknown_alg["alg"] = json!("RS257");
        let mut hmac_on_rsa = rsa("hmac");
        hmac_on_rsa["alg"] = json!("HS256");
        let mut numeric_alg = rsa("numeric");
        numeric_alg["alg"] = json!(256);
        let parsed = parse(json!({"keys": [
            {"kty": "AKP", "kid": "pq", "alg": "ML-DSA-44", "pub": "c29tZSBrZXk"},
            rsa("r1"),
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "f83O", "y": "x_FE"},
            {"kty": "OKP", "kid": "x1", "crv": "X25519", "x": "f83O"},
            unknown_alg,
            hmac_on_rsa,
            numeric_alg,
            wrong_curve_alg,
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
            {"kid": "no-kty"},
            "not an object",
        ]}))
        .unwrap();
        assert_eq!(parsed.document.keys().len(), 1);
        assert!(parsed.document.contains_kid("r1"));
        let unsupported = |alg: &str| SkipReason::UnsupportedAlgorithm(alg.into());
        assert_eq!(
            parsed.skipped,
            [
                skipped("pq", SkipReason::UnsupportedKeyType("AKP".into())),
                skipped("k1", SkipReason::UnsupportedCurve("secp256k1".into())),
                skipped("x1", SkipReason::UnsupportedCurve("X25519".into())),
                skipped("typo", unsupported("RS257")),
                skipped("hmac", unsupported("HS256")),
                skipped("numeric", unsupported("256")),
                skipped("e384", unsupported("ES384")),
                skipped(
                    "no-n",
                    SkipReason::Malformed("n is missing or not base64url".into())
                ),
                skipped("no-kty", SkipReason::Malformed("kty is missing".into())),
                SkippedKey {
                    kid: None,
                    reason: SkipReason::NotAnObject
                },
            ]
        );
        assert_eq!(
            parsed.skipped[0].reason.to_string(),
            "key type \"AKP\" is not published by keyrelay"
        );
    }

    #[test]
    fn every_algorithm_that_fits_its_key_is_published() {
        let mut keys = Vec::new();
        for alg in RSA_SIGNATURE_ALGORITHMS
            .into_iter()
            .chain(RSA_ENCRYPTION_ALGORITHMS)
        {
            let mut key = rsa(alg);
            key["alg"] = json!(alg);
            keys.push(key);
        }
        for (crv, alg) in [("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512")]
            .into_iter()
            .chain(ECDH_ALGORITHMS.map(|alg| ("P-256", alg)))
        {
            keys.push(json!({"kty": "EC", "kid": format!("{crv}-{alg}"), "crv": crv, "alg": alg, "x": "f83O", "y": "x_FE"}));
        }
        for alg in ["EdDSA", "Ed25519"] {
            keys.push(json!({"kty": "OKP", "kid": alg, "crv": "Ed25519", "alg": alg, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
        }
        let count = keys.len();
        let parsed = parse(json!({ "keys": keys })).unwrap();
        assert_eq!(parsed.skipped, []);
        assert_eq!(parsed.document.keys().len(), count);
    }

    #[test]
    fn a_set_with_fewer_known_keys_than_before_still_replaces_it() {
        let before = parse(json!({"keys": [rsa("a"), rsa("b")]}))
            .unwrap()
            .document;
        let mut b_now_post_quantum =
            json!({"kty": "AKP", "kid": "b", "alg": "ML-DSA-44", "pub": "cHVi"});
        b_now_post_quantum["use"] = json!("sig");
        let after = parse(json!({"keys": [rsa("a"), b_now_post_quantum]})).unwrap();
        assert_eq!(after.skipped.len(), 1);
        assert_eq!(after.document.keys().len(), 1);
        assert_eq!(after.document.may_replace(Some(&before)), Ok(()));
        assert!(!after.document.replaces_every_key_of(&before));
    }

    #[test]
    fn a_document_of_unknown_keys_only_never_replaces_known_ones() {
        let before = parse(json!({"keys": [rsa("a")]})).unwrap().document;
        let after = parse(
            json!({"keys": [{"kty": "AKP", "kid": "pq", "alg": "ML-DSA-65", "pub": "cHVi"}]}),
        )
        .unwrap();
        assert_eq!(
            after.document.may_replace(Some(&before)),
            Err(JwksError::EmptyReplacesNonEmpty { previous: 1 })
        );
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
    fn bounds_on_keys_are_enforced() {
        let many: Vec<Value> = (0..=MAX_KEYS).map(|i| rsa(&format!("k{i}"))).collect();
        assert_eq!(
            parse(json!({ "keys": many })).unwrap_err(),
            JwksError::TooManyKeys {
                count: MAX_KEYS + 1,
                limit: MAX_KEYS
            }
        );
        let mut huge = rsa("big");
        huge["x5c"] = json!(["A".repeat(MAX_KEY_BYTES)]);
        assert!(matches!(
            parse(json!({"keys": [huge]})).unwrap_err(),
            JwksError::KeyTooLarge { .. }
        ));
    }

    #[test]
    fn weak_rsa_keys_are_rejected() {
        let mut weak = rsa("weak");
        weak["n"] = json!(modulus(0xc5, 128));
        assert_eq!(
            parse(json!({"keys": [weak]})).unwrap_err(),
            JwksError::WeakRsaKey {
                kid: "weak".into(),
                bits: 1024
            }
        );
        let mut just_under = rsa("under");
        just_under["n"] =
            json!(URL_SAFE_NO_PAD.encode([vec![0x00, 0x7f], vec![0xff; 255]].concat()));
        assert_eq!(
            parse(json!({"keys": [just_under]})).unwrap_err(),
            JwksError::WeakRsaKey {
                kid: "under".into(),
                bits: 2047
            }
        );
    }

    #[test]
    fn duplicate_kids_are_rejected_even_when_one_key_is_skipped() {
        assert_eq!(
            parse(json!({"keys": [rsa("a"), {"kty": "AKP", "kid": "a", "pub": "cHVi"}]}))
                .unwrap_err(),
            JwksError::DuplicateKid("a".into())
        );
    }

    #[test]
    fn a_kid_cannot_name_new_material_until_withdrawn() {
        let before = parse(json!({"keys": [rsa("a")]})).unwrap().document;
        let mut changed = rsa("a");
        changed["n"] = json!(modulus(0xd7, 256));
        let reused = parse(json!({"keys": [changed.clone()]})).unwrap().document;
        assert_eq!(
            reused.may_replace(Some(&before)),
            Err(JwksError::KidReused("a".into()))
        );
        let mut same_material = rsa("a");
        same_material["use"] = json!("enc");
        let relabelled = parse(json!({"keys": [same_material]})).unwrap().document;
        assert_eq!(
            relabelled.may_replace(Some(&before)),
            Ok(()),
            "only material counts"
        );
        let withdrawn = parse(json!({"keys": [rsa("b")]})).unwrap().document;
        assert_eq!(reused.may_replace(Some(&withdrawn)), Ok(()));
    }

    #[test]
    fn replacing_every_key_at_once_is_detected() {
        let mut fresh = rsa("c");
        fresh["n"] = json!(modulus(0xd7, 256));
        let before = parse(json!({"keys": [rsa("a")]})).unwrap().document;
        let replaced = parse(json!({"keys": [fresh.clone()]})).unwrap().document;
        let rolled = parse(json!({"keys": [rsa("a"), fresh]})).unwrap().document;
        assert!(replaced.replaces_every_key_of(&before));
        assert!(!rolled.replaces_every_key_of(&before));
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
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        assert_ne!(ab.fingerprint(), ac.fingerprint());
    }
}
