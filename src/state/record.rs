//! What keyrelay knows about one provider: its registration, its current key set, its refresh
//! status, and the health state derived from them at a given instant.

use std::sync::Arc;

use crate::{
    domain::key_set::{KeySetDocument, SkippedKey},
    domain::revocation::Revocations,
    domain::{
        JwksUrl, KeyPolicy, KeySource, MetadataDocument, Policy, PolicyOverrides, ProviderKey,
    },
    state::CachedResponse,
};
use chrono::{DateTime, Utc};

/// A registration as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Tenant and provider.
    pub key: ProviderKey,
    /// Where the keys come from: a JWKS URL, or an issuer to discover it from.
    pub source: KeySource,
    /// The policy overrides given at registration.
    pub overrides: Arc<PolicyOverrides>,
    /// Key ids withheld by an administrator, whatever the identity provider publishes.
    pub revoked: Revocations,
    /// Changes on every (re-)registration and revocation; refresh results are only written
    /// for the revision they were fetched for.
    pub revision: i64,
    /// When the registration was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

/// What keyrelay remembers of the last good response, to revalidate it.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    /// The response's ETag, sent back as If-None-Match.
    pub etag: Option<String>,
    /// The response's Last-Modified, sent back as If-Modified-Since.
    pub last_modified: Option<String>,
    /// The response's caching header fields, updated by a 304.
    pub cached_response: Option<CachedResponse>,
}

/// What discovery learnt of a provider registered by issuer, and how its latest attempts went.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// The last good metadata; `None` until a discovery succeeds.
    pub metadata: Option<DiscoveredMetadata>,
    /// Validators of the last good metadata response.
    pub validators: Validators,
    /// The latest discoveries: their error, failures, and when discovery runs next
    /// (`next_refresh_at`; `None`: at once).
    pub status: RefreshStatus,
}

/// The last good metadata of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredMetadata {
    /// The JWKS URL it names.
    pub jwks_uri: JwksUrl,
    /// Which well-known document it was.
    pub document: MetadataDocument,
    /// When the issuer last confirmed it (a 200 or a 304).
    pub confirmed_at: DateTime<Utc>,
    /// Until when it is fresh.
    pub fresh_until: DateTime<Utc>,
}

/// The last good key set.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentKeys {
    /// Starts at 1 and grows by one whenever the published keys change.
    pub version: u64,
    /// What is published: the fetched document's keys that the key policy allows, less
    /// the revoked ones.
    pub document: Arc<KeySetDocument>,
    /// The sanitized document as the identity provider last served it (the same `Arc` as
    /// `document` while every key of it is published): what the next fetch is compared with.
    pub fetched: Arc<KeySetDocument>,
    /// When the identity provider last confirmed it.
    pub fetched_at: DateTime<Utc>,
    /// Until when it is fresh.
    pub fresh_until: DateTime<Utc>,
    /// Keys of the last fetched document that keyrelay left out, and why.
    pub skipped: Arc<[SkippedKey]>,
    /// Keys of `fetched` the key policy leaves out as of `fetched_at`, and why: judged with
    /// `document`, once, so status and Resolve of such a kid never judge them again.
    pub withheld: Arc<[SkippedKey]>,
}

/// The outcome of the latest refresh attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshStatus {
    /// When the last fetch was attempted.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Why the last fetch failed; `None` after a success.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the scheduler will refresh next; `None` until the first attempt.
    pub next_refresh_at: Option<DateTime<Utc>>,
}

/// Everything keyrelay holds about one provider.
#[derive(Debug, Clone)]
pub struct ProviderRecord {
    /// The store's change sequence of this state: across replicas, of two states of one
    /// provider the one with the higher sequence is the newer. 0 before it is stored.
    pub change_seq: u64,
    /// The registration.
    pub registration: Registration,
    /// The last good key set, if any fetch ever succeeded.
    pub keys: Option<CurrentKeys>,
    /// Validators of the last good response.
    pub validators: Validators,
    /// Refresh status.
    pub status: RefreshStatus,
    /// Discovery, for a provider registered by issuer; `None` for one registered by URL.
    pub discovery: Option<Box<Discovery>>,
    /// The version of a key set published earlier but no longer held, because its stored
    /// copy was unreadable and was dropped: the next set continues from it, so versions that
    /// verifiers hold stay meaningful. 0 while keys are held or when none ever were.
    pub dropped_version: u64,
    /// Fingerprint of a fetched set that would replace every known key at once, held until a
    /// second fetch returns the same set. In memory only: after a restart such a replacement
    /// is simply held once more.
    pub pending_replacement: Option<[u8; 32]>,
}

/// Health summary of a provider at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderState {
    /// Registered; no fetch has completed.
    Pending,
    /// Fresh keys, last fetch succeeded.
    Ready,
    /// Last fetch succeeded but the keys are past their freshness.
    Stale,
    /// The last fetch failed.
    Failing,
}

impl ProviderRecord {
    /// A freshly registered provider with nothing fetched yet.
    pub fn new(registration: Registration) -> Self {
        let discovery = registration.source.issuer().map(|_| Box::default());
        Self {
            change_seq: 0,
            registration,
            keys: None,
            validators: Validators::default(),
            status: RefreshStatus::default(),
            discovery,
            dropped_version: 0,
            pending_replacement: None,
        }
    }

    /// The version of the held keys; without keys, the version the next set continues from.
    pub fn version(&self) -> u64 {
        self.keys
            .as_ref()
            .map_or(self.dropped_version, |keys| keys.version)
    }

    /// The provider's health at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> ProviderState {
        match &self.keys {
            _ if self.status.last_error.is_some() => ProviderState::Failing,
            None => ProviderState::Pending,
            Some(keys) if now >= keys.fresh_until => ProviderState::Stale,
            Some(_) => ProviderState::Ready,
        }
    }

    /// Where the keys are fetched from: the registered URL, or the one the issuer's metadata
    /// last named (`None` before the first discovery).
    pub fn jwks_url(&self) -> Option<&JwksUrl> {
        match &self.discovery {
            Some(discovery) => discovery.metadata.as_ref().map(|m| &m.jwks_uri),
            None => self.registration.source.jwks_url(),
        }
    }

    /// When the next refresh is due: the keys' next refresh, or discovery's when that comes
    /// first (before any discovery was attempted, the keys' refresh discovers). `None`: at
    /// once.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        let keys = self.status.next_refresh_at?;
        let discovery = self
            .discovery
            .as_deref()
            .and_then(|d| d.status.next_refresh_at);
        Some(discovery.map_or(keys, |at| keys.min(at)))
    }

    /// Whether discovery is due at `now` (never, for a provider registered by URL).
    pub fn discovery_due(&self, now: DateTime<Utc>) -> bool {
        self.discovery.as_ref().is_some_and(|discovery| {
            discovery.metadata.is_none()
                || discovery.status.next_refresh_at.is_none_or(|at| at <= now)
        })
    }

    /// The policy in force, given the server defaults.
    pub fn policy(&self, defaults: &Policy) -> Policy {
        defaults.merge(&self.registration.overrides)
    }

    /// This record under a new revocation list, written as registration `revision` at `now`
    /// (see [`ProviderRecord::republished`]).
    pub fn with_revocations(
        &self,
        revoked: Revocations,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Self {
        let mut registration = self.registration.clone();
        registration.revoked = revoked;
        registration.revision = revision;
        registration.updated_at = now;
        self.republished(registration)
    }

    /// This record under `registration` (new revoked keys, a new key policy): the held keys
    /// are published again as it says, under the next version when that changes what is
    /// published.
    pub fn republished(&self, registration: Registration) -> Self {
        let mut record = self.clone();
        record.registration = registration;
        if let Some(keys) = &mut record.keys {
            let view = published(&keys.fetched, &record.registration, keys.fetched_at);
            if !view.document.same_keys_as(&keys.document) {
                keys.version += 1;
            }
            keys.document = view.document;
            keys.withheld = view.withheld;
        }
        record
    }

    /// The keys of the last fetched set that are not published, with why: those keyrelay
    /// does not publish at all, then those the provider's key policy leaves out. Revoked keys
    /// are listed apart, in the registration.
    pub fn skipped_keys(&self) -> Vec<SkippedKey> {
        let Some(keys) = &self.keys else {
            return Vec::new();
        };
        let mut skipped = keys.skipped.to_vec();
        let withheld = self
            .registration
            .overrides
            .keys
            .withheld(&keys.fetched, keys.fetched_at);
        skipped.extend(withheld);
        skipped
    }
}

/// What a fetched document publishes for a registration, and what its key policy leaves out.
pub struct Published {
    /// The keys the key policy allows, less the revoked ones.
    pub document: Arc<KeySetDocument>,
    /// The keys the key policy leaves out, and why.
    pub withheld: Arc<[SkippedKey]>,
}

/// What `fetched` publishes for `registration`: the keys its key policy allows, less the
/// revoked ones (`fetched` itself when that is all of them), and the keys the policy leaves
/// out. Certificate chains are checked as of `confirmed_at`, when the identity provider last
/// served the set: every replica reads that time from the store, so all of them publish the
/// same keys for a version.
pub fn published(
    fetched: &Arc<KeySetDocument>,
    registration: &Registration,
    confirmed_at: DateTime<Utc>,
) -> Published {
    let policy = &registration.overrides.keys;
    let verdicts = policy.verdicts(fetched.keys(), confirmed_at);
    let revoked = &registration.revoked;
    let document = fetched
        .retain(|i, key| verdicts[i].is_none() && !revoked.withholds(key))
        .map_or_else(|| Arc::clone(fetched), Arc::new);
    let withheld = SkippedKey::shared_list(KeyPolicy::left_out(fetched.keys(), verdicts));
    Published { document, withheld }
}

impl CurrentKeys {
    /// Whether the keys are past their freshness at `now`.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        now >= self.fresh_until
    }

    /// The instant after which these keys are no longer served.
    pub fn usable_until(&self, policy: &Policy) -> DateTime<Utc> {
        self.fresh_until + policy.max_stale
    }
}

/// A freshly registered `acme/<provider>` record at change sequence `change_seq`, for tests.
#[cfg(test)]
pub(crate) fn sample(provider: &str, change_seq: u64) -> ProviderRecord {
    use crate::domain::EgressRules;
    let now = Utc::now();
    let mut record = ProviderRecord::new(Registration {
        key: ProviderKey::parse("acme", provider).expect("valid test provider"),
        source: KeySource::JwksUrl(
            JwksUrl::parse("https://idp.example.com/jwks", &EgressRules::default())
                .expect("valid test URL"),
        ),
        overrides: PolicyOverrides::default().shared(),
        revoked: Revocations::default(),
        revision: 1,
        created_at: now,
        updated_at: now,
    });
    record.change_seq = change_seq;
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EgressRules, Issuer};

    fn registered_by_issuer(fetch_by: DateTime<Utc>) -> ProviderRecord {
        let mut record = sample("okta", 1);
        let issuer = Issuer::parse("https://idp.example.com", &EgressRules::default());
        record.registration.source = KeySource::Issuer(issuer.expect("valid issuer"));
        record.discovery = Some(Box::default());
        record.status.next_refresh_at = Some(fetch_by);
        record
    }

    #[test]
    fn a_provider_never_discovered_is_due_when_its_keys_are_and_then_at_the_earlier_time() {
        let fetch_by = Utc::now();
        let mut record = registered_by_issuer(fetch_by);
        assert_eq!(
            record.due_at(),
            Some(fetch_by),
            "the registration's own fetch discovers; nothing else is due before it"
        );
        let rediscover = fetch_by - chrono::Duration::seconds(5);
        if let Some(discovery) = record.discovery.as_deref_mut() {
            discovery.status.next_refresh_at = Some(rediscover);
        }
        assert_eq!(record.due_at(), Some(rediscover));
        record.status.next_refresh_at = None;
        assert_eq!(record.due_at(), None, "keys due at once");
    }
}
