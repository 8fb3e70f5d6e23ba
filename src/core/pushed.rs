//! Key sets an administrator pushes for providers with no reachable JWKS URL: each set passes
//! the guardrails a fetched one does, gets the next version when what it publishes changes,
//! and is written only if the provider's row has not changed since it was read, so that two
//! administrators pushing at once never share a version.

use chrono::{DateTime, Duration, Utc};

use crate::{
    access::{Action, AuditEvent, Origin},
    core::error::Error,
    core::providers::Providers,
    domain::key_set::{KeySetDocument, Parsed},
    domain::{ProviderKey, ValidationError},
    refresh::outcome,
    state::Snapshot,
    state::record::{ProviderRecord, RefreshStatus, Validators},
};

/// Reads and writes one push tries before giving up to a burst of concurrent writes.
const ATTEMPTS: usize = 5;

/// A pushed set is served until the next one replaces it: it is fresh for this long.
const PUSHED_LIFETIME_DAYS: i64 = 100 * 365;

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    /// The provider afterwards.
    pub snapshot: Snapshot,
    /// Whether anything was written: false when the set holds the keys already held.
    pub changed: bool,
}

impl Providers {
    /// Stores `jwks` as the key set of the pushed provider `key`, audited as done by
    /// `origin`.
    pub async fn publish_key_set(
        &self,
        key: &ProviderKey,
        jwks: &[u8],
        origin: &Origin,
    ) -> Result<Pushed, Error> {
        let store = &self.parts.store;
        for _ in 0..ATTEMPTS {
            let record = self.stored(key).await?;
            let now = self.now();
            let parsed = self.accept(&record, jwks, now)?;
            let Some(mut next) = pushed(&record, parsed, now) else {
                return Ok(Pushed {
                    snapshot: self.get(key)?,
                    changed: false,
                });
            };
            let event = push_event(&record, &next, origin, now);
            if let Some(change_seq) = store.save_pushed(&next, record.change_seq, &event).await? {
                next.change_seq = change_seq;
                let version = next.version();
                self.parts.cache.apply(next);
                tracing::info!(provider = %key, version, actor = %origin.actor, "key set pushed");
                return Ok(Pushed {
                    snapshot: self.get(key)?,
                    changed: true,
                });
            }
        }
        Err(Error::Contended(key.clone()))
    }

    /// The pushed document, once it passes the provider's size cap and the key-set
    /// guardrails against the set held.
    fn accept(
        &self,
        record: &ProviderRecord,
        jwks: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, Error> {
        let key = &record.registration.key;
        if record.registration.source.is_fetched() {
            return Err(Error::NotPushed(key.clone()));
        }
        let limit = record.policy(&self.parts.defaults).max_response_bytes;
        if u32::try_from(jwks.len()).map_or(true, |len| len > limit) {
            return Err(ValidationError::new(
                "jwks_json",
                format!(
                    "is {} bytes, more than the provider's max_response_bytes ({limit})",
                    jwks.len()
                ),
            )
            .into());
        }
        let refused = |source| Error::KeySetRefused {
            key: key.clone(),
            source,
        };
        let parsed = KeySetDocument::parse(jwks).map_err(refused)?;
        let held = record.keys.as_ref().map(|keys| keys.fetched.as_ref());
        parsed.document.may_replace(held).map_err(refused)?;
        record
            .registration
            .overrides
            .keys
            .publishes_some(&parsed.document, now)
            .map_err(refused)?;
        Ok(parsed)
    }
}

/// `record` holding the pushed set, under the next version when what it publishes changes;
/// `None` when it is the set held already and publishes what it did (its certificate chains
/// checked again as of `now`).
fn pushed(record: &ProviderRecord, parsed: Parsed, now: DateTime<Utc>) -> Option<ProviderRecord> {
    let held = record.keys.as_ref();
    let same_set = held.is_some_and(|keys| parsed.document.same_keys_as(&keys.fetched));
    let (keys, change) = outcome::versioned(record, parsed, now);
    if same_set && change == outcome::Change::Unchanged {
        return None;
    }
    let mut next = record.clone();
    next.keys = Some(keys.current(now, now + Duration::days(PUSHED_LIFETIME_DAYS)));
    next.validators = Validators::default();
    next.status = RefreshStatus {
        last_attempt_at: Some(now),
        ..RefreshStatus::default()
    };
    next.dropped_version = 0;
    Some(next)
}

/// The audit event of a push: the version and kids before and after.
fn push_event(
    before: &ProviderRecord,
    after: &ProviderRecord,
    origin: &Origin,
    now: DateTime<Utc>,
) -> AuditEvent {
    let state = |record: &ProviderRecord| {
        record.keys.as_ref().map(|keys| {
            let kids: Vec<_> = keys.document.keys().iter().map(|k| k.kid.clone()).collect();
            serde_json::json!({ "version": keys.version, "kids": kids })
        })
    };
    let key = &before.registration.key;
    AuditEvent {
        before: state(before),
        after: state(after),
        ..AuditEvent::provider(now, origin.clone(), Action::PublishKeySet, key)
    }
}
