//! The key sets a verifier holds, by provider, and what it reports about them.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;

use crate::proto;

/// One provider's key set as last received.
#[derive(Debug, Clone)]
pub struct ProviderKeys {
    /// Provider identifier.
    pub provider: String,
    /// keyrelay's version of the set.
    pub version: u64,
    /// The keys.
    pub keys: JwkSet,
    /// Each key's `alg` as written, by kid.
    named_algs: HashMap<String, String>,
    /// When the identity provider last confirmed them.
    pub fetched_at: Option<SystemTime>,
    /// Until when keyrelay considers them fresh.
    pub fresh_until: Option<SystemTime>,
    /// Whether keyrelay reported them stale (past freshness; the IdP may be failing).
    pub stale: bool,
    /// keyrelay's health state of the provider when the set was sent (READY, STALE, FAILING).
    pub state: proto::ProviderState,
    /// Key ids a keyrelay administrator revoked: never in `keys`, refused as revoked.
    pub revoked_kids: Vec<String>,
    /// The issuer whose tokens these keys verify, for a provider registered by issuer; empty
    /// for one registered by JWKS URL (its keys verify a token of any `iss`).
    pub issuer: String,
}

impl ProviderKeys {
    /// How long ago the identity provider last confirmed these keys.
    pub fn age(&self) -> Option<Duration> {
        SystemTime::now().duration_since(self.fetched_at?).ok()
    }

    pub(crate) fn from_message(set: proto::KeySet) -> Result<Self, serde_json::Error> {
        let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
        let KeySet { jwks, named_algs } = KeySet::parse(&set.jwks_json)?;
        Ok(Self {
            keys: jwks,
            named_algs,
            state: set.state(),
            provider: set.provider,
            version: set.version,
            fetched_at: time(set.fetched_at),
            fresh_until: time(set.fresh_until),
            stale: set.stale,
            revoked_kids: set.revoked_kids,
            issuer: set.issuer,
        })
    }

    /// Whether these keys may verify a token whose `iss` is `iss`.
    pub(crate) fn serves_issuer(&self, iss: Option<&str>) -> bool {
        self.issuer.is_empty() || iss == Some(self.issuer.as_str())
    }

    /// Whether a keyrelay administrator revoked `kid`.
    pub(crate) fn is_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.iter().any(|revoked| revoked == kid)
    }

    pub(crate) fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.find(kid)
    }

    /// The `alg` of key `kid` as written.
    pub(crate) fn named_alg(&self, kid: &str) -> Option<&str> {
        self.named_algs.get(kid).map(String::as_str)
    }
}

/// A JWKS document parsed for verification: the keys in the JWK model, and each key's `alg`
/// as written (the model maps names it does not know, such as `Ed25519`, to one value).
pub(crate) struct KeySet {
    jwks: JwkSet,
    named_algs: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Named {
    keys: Vec<NamedKey>,
}

#[derive(Deserialize)]
struct NamedKey {
    kid: Option<String>,
    alg: Option<String>,
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<Self, serde_json::Error> {
        let named: Named = serde_json::from_slice(json)?;
        let named_algs = named
            .keys
            .into_iter()
            .filter_map(|key| Some((key.kid?, key.alg?)))
            .collect();
        Ok(Self {
            jwks: serde_json::from_slice(json)?,
            named_algs,
        })
    }

    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.jwks.find(kid)
    }

    pub fn named_alg(&self, kid: &str) -> Option<&str> {
        self.named_algs.get(kid).map(String::as_str)
    }
}

/// The verifier's view: whether its stream is up and the sets it holds.
#[derive(Debug, Clone)]
pub struct Status {
    /// Whether the WatchKeys stream is connected and synced.
    pub connected: bool,
    /// When the stream last reached `synced`.
    pub last_synced_at: Option<SystemTime>,
    /// The key sets held, by provider.
    pub providers: Vec<ProviderKeys>,
}

/// Key sets by provider, with an index of every held kid for verifiers watching a whole
/// tenant.
#[derive(Debug, Default)]
pub(crate) struct KeySets {
    sets: RwLock<HashMap<String, Arc<ProviderKeys>>>,
    /// Each held kid's keys, by provider name; made again on the first lookup after a change.
    by_kid: RwLock<Option<Arc<KidIndex>>>,
}

/// Every key holding a kid, in provider name order.
type KidIndex = HashMap<String, Vec<HeldKey>>;

/// What a tenant-wide lookup of a kid found.
#[derive(Debug)]
pub(crate) enum Holding {
    /// The key that verifies the token.
    Key(HeldKey),
    /// Only providers of other issuers hold the kid: the token's `iss` is not theirs.
    OtherIssuers,
    /// No held set has the kid.
    None,
}

/// One held key: its provider's set and its position in it.
#[derive(Debug, Clone)]
pub(crate) struct HeldKey {
    keys: Arc<ProviderKeys>,
    index: usize,
}

impl HeldKey {
    /// The key within its set, if `keys` holds `kid`.
    pub fn in_set(keys: Arc<ProviderKeys>, kid: &str) -> Option<Self> {
        let index = keys
            .keys
            .keys
            .iter()
            .position(|jwk| jwk.common.key_id.as_deref() == Some(kid))?;
        Some(Self { keys, index })
    }

    pub fn jwk(&self) -> &Jwk {
        &self.keys.keys.keys[self.index]
    }

    /// The provider's set it belongs to.
    pub fn set(&self) -> &ProviderKeys {
        &self.keys
    }

    /// Its `alg` as written.
    pub fn named_alg(&self) -> Option<&str> {
        self.jwk()
            .common
            .key_id
            .as_deref()
            .and_then(|kid| self.keys.named_alg(kid))
    }
}

impl KeySets {
    /// Keeps `keys` unless a newer version is already held.
    pub fn put(&self, keys: ProviderKeys) {
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        let newer_held = sets
            .get(&keys.provider)
            .is_some_and(|held| held.version > keys.version);
        if !newer_held {
            sets.insert(keys.provider.clone(), Arc::new(keys));
            self.forget_index();
        }
    }

    /// The key with `kid` for a token whose `iss` is `iss()` (asked only when a provider
    /// registered by issuer holds the kid): a provider of that issuer first, then one
    /// registered by URL, each in name order. A provider of another issuer never verifies it.
    pub fn holding(&self, kid: &str, iss: impl FnOnce() -> Option<String>) -> Holding {
        let index = self
            .by_kid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let index = match index {
            Some(index) => index,
            None => self.index(),
        };
        let Some(held) = index.get(kid) else {
            return Holding::None;
        };
        if held.iter().all(|key| key.keys.issuer.is_empty()) {
            return held.first().cloned().map_or(Holding::None, Holding::Key);
        }
        let iss = iss();
        let bound = held
            .iter()
            .find(|key| !key.keys.issuer.is_empty() && key.keys.serves_issuer(iss.as_deref()));
        match bound.or_else(|| held.iter().find(|key| key.keys.issuer.is_empty())) {
            Some(key) => Holding::Key(key.clone()),
            None => Holding::OtherIssuers,
        }
    }

    /// Makes the kid index, under the sets' read lock so that no change lands meanwhile.
    fn index(&self) -> Arc<KidIndex> {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&String> = sets.keys().collect();
        names.sort();
        let mut index = KidIndex::new();
        for keys in names.into_iter().filter_map(|name| sets.get(name)) {
            for (position, jwk) in keys.keys.keys.iter().enumerate() {
                if let Some(kid) = &jwk.common.key_id {
                    index.entry(kid.clone()).or_default().push(HeldKey {
                        keys: Arc::clone(keys),
                        index: position,
                    });
                }
            }
        }
        let index = Arc::new(index);
        *self.by_kid.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&index));
        index
    }

    fn forget_index(&self) {
        *self.by_kid.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn remove(&self, provider: &str) {
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        if sets.remove(provider).is_some() {
            self.forget_index();
        }
    }

    pub fn get(&self, provider: &str) -> Option<Arc<ProviderKeys>> {
        self.sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(provider)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<ProviderKeys>> {
        let mut all: Vec<_> = self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.provider.cmp(&b.provider));
        all
    }
}
