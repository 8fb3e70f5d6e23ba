//! The operations on providers, independent of gRPC: register, unregister, inspect and
//! refresh them, and resolve their key sets from memory.

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use crate::{
    access::Origin,
    clock::Clock,
    core::error::{Error, KidNotFound, KidRefresh, KidRevoked, KidWithheld, NoUsableKeys},
    core::failure_limiter::FailureLimiter,
    domain::{Kid, Policy, ProviderKey, TenantId, ValidationError},
    observability::metrics::{CacheResult, Metrics},
    refresh::{FlightResult, RefreshError, Refresher},
    state::{Snapshot, cache::KeyCache, record::ProviderRecord},
    store::{NewRegistration, Store},
};

/// The answer to a resolve.
#[derive(Debug)]
pub enum Resolved {
    /// The current key set.
    KeySet(Snapshot),
    /// The caller already holds the current version.
    NotModified,
}

/// One page of registrations.
#[derive(Debug)]
pub struct Page {
    /// The registrations.
    pub providers: Vec<Snapshot>,
    /// The last key of this page when more follow.
    pub next_after: Option<ProviderKey>,
}

/// What `Providers` is built from.
pub struct ProvidersParts {
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// The in-memory view.
    pub cache: Arc<KeyCache>,
    /// Runs refreshes.
    pub refresher: Arc<Refresher>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Server-wide policy defaults.
    pub defaults: Policy,
    /// How long a Resolve waits for the refresh its unknown kid triggered.
    pub unknown_kid_wait: Duration,
    /// How long the scheduler leaves a new registration to its own first fetch.
    pub first_fetch_grace: Duration,
    /// Where cache results are counted.
    pub metrics: Arc<Metrics>,
    /// Bounds how often one client may make keyrelay look for unknown kids.
    pub unknown_kid_limiter: FailureLimiter,
}

/// The operations on providers: what the gRPC handlers and the JWKS mirror call.
pub struct Providers {
    pub(super) parts: ProvidersParts,
}

impl Providers {
    /// Assembles the operations from their parts.
    pub fn new(parts: ProvidersParts) -> Self {
        Self { parts }
    }

    /// Creates or updates a registration and fetches its keys once before answering. The
    /// fetch outcome is in the returned record's status; a failing IdP is not an error here.
    /// The change is audited as made by `origin`.
    pub async fn register(
        &self,
        registration: NewRegistration,
        origin: &Origin,
    ) -> Result<(Snapshot, bool), Error> {
        self.parts
            .defaults
            .with_overrides(&registration.overrides)?;
        self.check_publishes_held_keys(&registration)?;
        let revision = new_revision();
        let now = self.parts.clock.now();
        let fetch_by = now + self.parts.first_fetch_grace;
        let registered = self
            .parts
            .store
            .register(&registration, revision, now, fetch_by, origin)
            .await?;
        let key = registration.key;
        self.parts.cache.apply(registered.record);
        tracing::info!(provider = %key, source = registration.source.redacted(), created = registered.created, "provider registered");
        if let Err(err) = self.refresh_current(&key).await {
            tracing::warn!(provider = %key, error = %err, "first fetch after registration did not complete");
        }
        Ok((self.get(&key)?, registered.created))
    }

    /// Refuses a new key policy that would leave out every key the provider (at the same
    /// source) serves now: it would publish an empty set.
    fn check_publishes_held_keys(&self, registration: &NewRegistration) -> Result<(), Error> {
        let Some(held) = self.parts.cache.get(&registration.key) else {
            return Ok(());
        };
        let Some(keys) = held.keys.as_ref() else {
            return Ok(());
        };
        if held.registration.source != registration.source {
            return Ok(());
        }
        registration
            .overrides
            .keys
            .publishes_some(&keys.fetched, keys.fetched_at)
            .map_err(|err| ValidationError::new("policy", err.to_string()).into())
    }

    /// Removes a registration and its keys, audited as done by `origin`.
    pub async fn unregister(&self, key: &ProviderKey, origin: &Origin) -> Result<(), Error> {
        let now = self.parts.clock.now();
        let Some(change_seq) = self.parts.store.unregister(key, now, origin).await? else {
            return Err(Error::ProviderNotFound(key.clone()));
        };
        self.parts.cache.apply_removal(key, change_seq);
        tracing::info!(provider = %key, "provider unregistered");
        Ok(())
    }

    /// One registration with its status.
    pub fn get(&self, key: &ProviderKey) -> Result<Snapshot, Error> {
        let record = self
            .parts
            .cache
            .get(key)
            .ok_or_else(|| Error::ProviderNotFound(key.clone()))?;
        Ok(self.snapshot(record))
    }

    /// The registration as stored now, for a change that must start from the latest state.
    pub(super) async fn stored(&self, key: &ProviderKey) -> Result<ProviderRecord, Error> {
        self.parts
            .store
            .get(key)
            .await?
            .ok_or_else(|| Error::ProviderNotFound(key.clone()))
    }

    /// Up to `limit` registrations after `after`, optionally of one tenant.
    pub fn list(
        &self,
        tenant: Option<&TenantId>,
        after: Option<&ProviderKey>,
        limit: usize,
    ) -> Page {
        let mut records = self
            .parts
            .cache
            .page(tenant, after, limit.saturating_add(1));
        let more = records.len() > limit;
        records.truncate(limit);
        let next_after = more
            .then(|| records.last().map(|r| r.registration.key.clone()))
            .flatten();
        Page {
            providers: records.into_iter().map(|r| self.snapshot(r)).collect(),
            next_after,
        }
    }

    /// Refreshes a provider now and returns the outcome in its status.
    pub async fn refresh(&self, key: &ProviderKey) -> Result<Snapshot, Error> {
        self.get(key)?;
        let record = self.refresh_current(key).await?;
        Ok(self.snapshot(record))
    }

    /// The current key set of a provider, from memory. With a `kid` that is not in the set,
    /// waits for one refresh shared by all callers (unless cooling down) before giving up;
    /// `client`, when known, is held to the unknown-kid rate limit.
    pub async fn resolve(
        &self,
        key: &ProviderKey,
        kid: Option<&Kid>,
        known_version: Option<u64>,
        client: Option<IpAddr>,
    ) -> Result<Resolved, Error> {
        let metrics = &self.parts.metrics;
        let mut snapshot = self
            .usable(key)
            .inspect_err(|_| metrics.resolved(CacheResult::Miss))?;
        if let Some(kid) = kid
            && let Some(revoked) = snapshot.record.registration.revoked.get(kid.as_str())
        {
            metrics.resolved(CacheResult::Miss);
            return Err(Error::KidRevoked(Box::new(KidRevoked {
                key: key.clone(),
                revoked: revoked.clone(),
            })));
        }
        if let Some(kid) = kid
            && !snapshot.has_kid(kid)
        {
            metrics.resolved(CacheResult::Miss);
            withheld(&snapshot, kid)?;
            let limiter = &self.parts.unknown_kid_limiter;
            if let Some(client) = client {
                limiter.admit(client).map_err(Error::RateLimited)?;
            }
            snapshot = self.refresh_for_kid(key, kid).await.inspect_err(|_| {
                if let Some(client) = client {
                    limiter.failed(client);
                }
            })?;
        } else if snapshot
            .record
            .keys
            .as_ref()
            .is_some_and(|k| k.is_stale(snapshot.at))
        {
            metrics.resolved(CacheResult::Stale);
        } else {
            metrics.resolved(CacheResult::Hit);
        }
        if known_version.is_some_and(|known| known >= snapshot.version()) {
            return Ok(Resolved::NotModified);
        }
        Ok(Resolved::KeySet(snapshot))
    }

    /// Refreshes with a fetch that starts now, for the current registration revision (a
    /// flight that started before a re-registration ends superseded: it is followed by one
    /// more).
    async fn refresh_current(&self, key: &ProviderKey) -> FlightResult {
        match self.parts.refresher.refresh_now(key).await {
            Err(RefreshError::Superseded) => self.parts.refresher.refresh_now(key).await,
            other => other,
        }
    }

    async fn refresh_for_kid(&self, key: &ProviderKey, kid: &Kid) -> Result<Snapshot, Error> {
        let wait = self.parts.unknown_kid_wait;
        let refresh = self.parts.refresher.refresh_for_unknown_kid(key);
        let refreshed = match tokio::time::timeout(wait, refresh).await {
            Ok(Some(Ok(record))) => match &record.status.last_error {
                Some(err) => KidRefresh::Failed(err.clone()),
                None => KidRefresh::StillMissing,
            },
            Ok(Some(Err(err))) => KidRefresh::Incomplete(err),
            Ok(None) => {
                KidRefresh::CoolingDown(self.parts.refresher.unknown_kid_cooldown_left(key))
            }
            Err(_) => KidRefresh::StillRunning(wait),
        };
        let snapshot = self.usable(key)?;
        if snapshot.has_kid(kid) {
            return Ok(snapshot);
        }
        Err(Error::KidNotFound(Box::new(KidNotFound {
            key: key.clone(),
            kid: kid.as_str().to_owned(),
            version: snapshot.version(),
            refresh: refreshed,
        })))
    }

    /// The service's time.
    pub fn now(&self) -> DateTime<Utc> {
        self.parts.clock.now()
    }

    /// A snapshot whose keys may be served, or why there is none.
    pub fn usable(&self, key: &ProviderKey) -> Result<Snapshot, Error> {
        let snapshot = self.get(key)?;
        let record = &snapshot.record;
        let last_error = record.status.last_error.clone();
        let Some(keys) = &record.keys else {
            let key = key.clone();
            return Err(NoUsableKeys::NotFetched { key, last_error }.into());
        };
        let usable_until = keys.usable_until(&snapshot.policy);
        if snapshot.at >= usable_until {
            return Err(NoUsableKeys::Expired {
                key: key.clone(),
                usable_until,
                fresh_until: keys.fresh_until,
                max_stale: snapshot.policy.max_stale,
                last_error,
            }
            .into());
        }
        Ok(snapshot)
    }

    pub(super) fn snapshot(&self, record: Arc<ProviderRecord>) -> Snapshot {
        Snapshot {
            policy: record.policy(&self.parts.defaults),
            record,
            at: self.parts.clock.now(),
        }
    }
}

/// Refuses a kid the provider's last fetched set holds but keyrelay does not publish (its key
/// policy leaves it out, or it is of a kind keyrelay never publishes): a refresh would not
/// bring it.
fn withheld(snapshot: &Snapshot, kid: &Kid) -> Result<(), Error> {
    let mut skipped = snapshot.record.skipped_keys().into_iter();
    match skipped.find(|s| s.kid.as_deref() == Some(kid.as_str())) {
        Some(skipped) => Err(Error::KidWithheld(Box::new(KidWithheld {
            key: snapshot.record.registration.key.clone(),
            skipped,
        }))),
        None => Ok(()),
    }
}

/// A registration revision no write has used: it fences off refresh results fetched under
/// the previous one.
pub(super) fn new_revision() -> i64 {
    rand::random::<i64>().wrapping_abs()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::{
        core::error::{KidNotFound, KidRefresh},
        domain::{EgressRules, JwksUrl, KeySource, PolicyOverrides, documented_defaults},
        refresh::testing::{COOLDOWN, Harness, ScriptedFetch, jwks},
    };

    fn providers(harness: &Harness) -> Providers {
        Providers::new(ProvidersParts {
            store: Arc::clone(&harness.store),
            cache: Arc::clone(&harness.cache),
            refresher: Arc::clone(&harness.refresher),
            clock: Arc::new(harness.clock.clone()),
            defaults: documented_defaults(),
            unknown_kid_wait: Duration::from_secs(5),
            first_fetch_grace: Duration::from_secs(5),
            metrics: Metrics::new(Vec::new()),
            unknown_kid_limiter: FailureLimiter::new(NonZeroU32::MIN),
        })
    }

    async fn registered(providers: &Providers) -> ProviderKey {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        let registration = NewRegistration {
            key: key.clone(),
            source: KeySource::JwksUrl(
                JwksUrl::parse("https://idp.example.com/jwks", &EgressRules::default()).unwrap(),
            ),
            overrides: PolicyOverrides::default(),
        };
        let (snapshot, created) = providers
            .register(registration, &Origin::service())
            .await
            .expect("registered");
        assert_eq!((created, snapshot.version()), (true, 1), "fetched at once");
        key
    }

    fn kid(value: &str) -> Kid {
        Kid::parse(value).unwrap()
    }

    #[tokio::test]
    async fn an_unknown_kid_is_looked_up_with_one_refresh_then_cools_down() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let providers = providers(&harness);
        let key = registered(&providers).await;

        fetcher.serve(jwks(&["a", "b"]));
        let found = providers.resolve(&key, Some(&kid("b")), None, None).await;
        assert!(matches!(found, Ok(Resolved::KeySet(s)) if s.version() == 2));
        let missing = providers.resolve(&key, Some(&kid("zz")), None, None).await;
        let Err(Error::KidNotFound(missing)) = missing else {
            panic!("expected KidNotFound, got {missing:?}");
        };
        let KidNotFound {
            version, refresh, ..
        } = *missing;
        assert!(matches!(refresh, KidRefresh::CoolingDown(left) if left == COOLDOWN));
        assert_eq!(
            (version, fetcher.calls()),
            (2, 2),
            "the cooldown spared the IdP"
        );
    }

    #[tokio::test]
    async fn a_known_version_is_not_sent_again() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(fetcher).await;
        let providers = providers(&harness);
        let key = registered(&providers).await;
        let current = providers.resolve(&key, None, Some(1), None).await;
        assert!(matches!(current, Ok(Resolved::NotModified)));
        let older = providers.resolve(&key, None, Some(0), None).await;
        assert!(matches!(older, Ok(Resolved::KeySet(_))));
    }

    #[tokio::test]
    async fn a_client_whose_unknown_kid_lookups_keep_failing_is_held_back() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(fetcher).await;
        let providers = providers(&harness);
        let key = registered(&providers).await;
        let noisy = Some("127.0.0.7".parse().unwrap());
        let outcomes: Vec<_> = {
            let mut outcomes = Vec::new();
            for _ in 0..4 {
                let answer = providers.resolve(&key, Some(&kid("zz")), None, noisy).await;
                outcomes.push(matches!(answer, Err(Error::RateLimited(_))));
            }
            outcomes
        };
        assert_eq!(
            outcomes,
            [false, false, false, true],
            "a burst of two, one failure beyond it, then held back"
        );
        let other = Some("127.0.0.8".parse().unwrap());
        let answer = providers.resolve(&key, Some(&kid("zz")), None, other).await;
        assert!(matches!(answer, Err(Error::KidNotFound(_))));
    }
}
