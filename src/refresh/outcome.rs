//! How the result of one fetch changes a provider record: a new version only when the keys
//! change, freshness from the cache headers, last good keys kept through every failure.
//! Pure: no I/O, the caller supplies the clock and the randomness.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::{
    domain::Policy,
    domain::key_set::{JwksError, KeySetDocument, Parsed, SkippedKey},
    refresh::freshness::{self, Backoff},
    state::record::{CurrentKeys, ProviderRecord, Published, RefreshStatus, Validators, published},
    upstream::fetch::{CacheFacts, FetchError, FetchOutcome, Retry},
};

/// What a refresh did, for logs and callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The keys changed: a new version.
    NewVersion(u64),
    /// The identity provider confirmed the current keys (304 or identical body).
    Unchanged,
    /// The fetch failed; the last good keys stay.
    Failed(String),
    /// The IdP answered a document that was refused; the last good keys stay.
    Rejected(JwksError),
}

/// Inputs that do not come from the fetch.
pub struct Context<'a, R: Rng> {
    /// When the fetch finished.
    pub now: DateTime<Utc>,
    /// The provider's policy.
    pub policy: &'a Policy,
    /// Backoff bounds for failures.
    pub backoff: &'a Backoff,
    /// Source of jitter.
    pub rng: &'a mut R,
}

/// The record after `result`, and what changed.
pub fn apply<R: Rng>(
    current: &ProviderRecord,
    result: Result<FetchOutcome, FetchError>,
    ctx: Context<'_, R>,
) -> (ProviderRecord, Change) {
    match (result, current.keys.as_ref()) {
        (Ok(FetchOutcome::Modified { body, cache }), previous) => {
            match accept(current, &body, ctx.now) {
                Ok(parsed) if is_unconfirmed_replacement(current, &parsed.document) => {
                    let previous = previous.map_or(0, |keys| keys.document.keys().len());
                    let held = JwksError::UnconfirmedReplacement { previous };
                    let (mut record, change) =
                        reject(current, held, Retry::Soon { after: None }, ctx);
                    record.pending_replacement = Some(parsed.document.fingerprint());
                    (record, change)
                }
                Ok(parsed) => {
                    let (keys, change) = versioned(current, parsed, ctx.now);
                    succeed(current, keys, change, cache, ctx)
                }
                Err(err) => reject(current, err, Retry::Later, ctx),
            }
        }
        (Ok(FetchOutcome::NotModified { cache }), Some(previous)) => {
            match reconfirmed(current, previous, ctx.now) {
                Ok((keys, change)) => succeed(current, keys, change, cache, ctx),
                Err(err) => reject(current, err, Retry::Later, ctx),
            }
        }
        (Ok(FetchOutcome::NotModified { .. }), None) => {
            let reason = "304 Not Modified but no key set is stored; will fetch it whole".into();
            fail(current, reason, Retry::Soon { after: None }, true, ctx)
        }
        (Err(err), _) => {
            let forget_validators = err == FetchError::UnmatchedNotModified;
            fail(
                current,
                err.to_string(),
                err.retry(),
                forget_validators,
                ctx,
            )
        }
    }
}

/// A set that would replace every known key and is not yet the one a previous fetch held.
fn is_unconfirmed_replacement(current: &ProviderRecord, document: &KeySetDocument) -> bool {
    let replaces_all = current
        .keys
        .as_ref()
        .is_some_and(|keys| document.replaces_every_key_of(&keys.fetched));
    replaces_all && current.pending_replacement != Some(document.fingerprint())
}

fn accept(current: &ProviderRecord, body: &[u8], now: DateTime<Utc>) -> Result<Parsed, JwksError> {
    let parsed = KeySetDocument::parse(body)?;
    let previous = current.keys.as_ref().map(|keys| keys.fetched.as_ref());
    parsed.document.may_replace(previous)?;
    current
        .registration
        .overrides
        .keys
        .publishes_some(&parsed.document, now)?;
    if !parsed.skipped.is_empty() {
        tracing::info!(
            provider = %current.registration.key,
            skipped = parsed.skipped.len(),
            "left out keys keyrelay does not publish (see the provider's status)"
        );
    }
    Ok(parsed)
}

/// The keys a document served at `now` becomes, published as the registration says (key
/// policy, revoked keys): the previous version when the published keys are the same, the
/// next one (continuing from a dropped version, if any) when they are not.
pub fn versioned(
    current: &ProviderRecord,
    parsed: Parsed,
    now: DateTime<Utc>,
) -> (Versioned, Change) {
    let previous = current.keys.as_ref();
    let fetched = match previous {
        Some(prev) if parsed.document.same_keys_as(&prev.fetched) => Arc::clone(&prev.fetched),
        _ => Arc::new(parsed.document),
    };
    published_version(
        current,
        fetched,
        SkippedKey::shared_list(parsed.skipped),
        now,
    )
}

/// The held keys confirmed again at `now` (a 304): the same version unless what they
/// publish changed with the time (a certificate of a chain expired, say); refused, like a
/// served document, when that leaves no key.
fn reconfirmed(
    current: &ProviderRecord,
    held: &CurrentKeys,
    now: DateTime<Utc>,
) -> Result<(Versioned, Change), JwksError> {
    let policy = &current.registration.overrides.keys;
    policy.publishes_some(&held.fetched, now)?;
    let fetched = Arc::clone(&held.fetched);
    Ok(published_version(
        current,
        fetched,
        Arc::clone(&held.skipped),
        now,
    ))
}

fn published_version(
    current: &ProviderRecord,
    fetched: Arc<KeySetDocument>,
    skipped: Arc<[SkippedKey]>,
    now: DateTime<Utc>,
) -> (Versioned, Change) {
    let Published { document, withheld } = published(&fetched, &current.registration, now);
    let (version, document, change) = match current.keys.as_ref() {
        Some(prev) if document.same_keys_as(&prev.document) => {
            (prev.version, Arc::clone(&prev.document), Change::Unchanged)
        }
        _ => {
            let version = current.version() + 1;
            (version, document, Change::NewVersion(version))
        }
    };
    let keys = Versioned {
        version,
        document,
        fetched,
        skipped,
        withheld,
    };
    (keys, change)
}

/// A version, what it publishes, the document it was published from and the keys left
/// out of that.
pub struct Versioned {
    version: u64,
    document: Arc<KeySetDocument>,
    fetched: Arc<KeySetDocument>,
    skipped: Arc<[SkippedKey]>,
    withheld: Arc<[SkippedKey]>,
}

impl Versioned {
    /// These keys as confirmed at `fetched_at`, fresh until `fresh_until`.
    pub fn current(self, fetched_at: DateTime<Utc>, fresh_until: DateTime<Utc>) -> CurrentKeys {
        CurrentKeys {
            version: self.version,
            document: self.document,
            fetched: self.fetched,
            fetched_at,
            fresh_until,
            skipped: self.skipped,
            withheld: self.withheld,
        }
    }
}

fn succeed<R: Rng>(
    current: &ProviderRecord,
    keys: Versioned,
    change: Change,
    cache: CacheFacts,
    ctx: Context<'_, R>,
) -> (ProviderRecord, Change) {
    let lifetime = freshness::lifetime(cache.lifetime, ctx.policy);
    let fresh = freshness::after_success(ctx.now, lifetime, ctx.policy, ctx.rng);
    let record = ProviderRecord {
        change_seq: current.change_seq,
        registration: current.registration.clone(),
        keys: Some(keys.current(ctx.now, fresh.fresh_until)),
        validators: cache.validators,
        discovery: current.discovery.clone(),
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: None,
            consecutive_failures: 0,
            next_refresh_at: Some(fresh.next_refresh_at),
        },
        dropped_version: 0,
        pending_replacement: None,
    };
    (record, change)
}

fn reject<R: Rng>(
    current: &ProviderRecord,
    err: JwksError,
    retry: Retry,
    ctx: Context<'_, R>,
) -> (ProviderRecord, Change) {
    let (record, _) = fail(current, err.to_string(), retry, false, ctx);
    (record, Change::Rejected(err))
}

fn fail<R: Rng>(
    current: &ProviderRecord,
    reason: String,
    retry: Retry,
    forget_validators: bool,
    ctx: Context<'_, R>,
) -> (ProviderRecord, Change) {
    let failures = current.status.consecutive_failures.saturating_add(1);
    let next = freshness::after_failure(ctx.now, failures, retry, ctx.backoff, ctx.rng);
    let validators = if forget_validators {
        Validators::default()
    } else {
        current.validators.clone()
    };
    let record = ProviderRecord {
        change_seq: current.change_seq,
        registration: current.registration.clone(),
        keys: current.keys.clone(),
        validators,
        discovery: current.discovery.clone(),
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: Some(reason.clone()),
            consecutive_failures: failures,
            next_refresh_at: Some(next),
        },
        dropped_version: current.dropped_version,
        pending_replacement: current.pending_replacement,
    };
    (record, Change::Failed(reason))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chrono::Duration;
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;
    use crate::domain::documented_defaults;
    use crate::domain::revocation::{Revocations, RevokedKey};

    const BACKOFF: Backoff = Backoff {
        initial: std::time::Duration::from_secs(1),
        max: std::time::Duration::from_secs(300),
    };

    fn registered() -> ProviderRecord {
        crate::state::record::sample("okta", 1)
    }

    /// Ed25519 keys: `kid` named, material derived from the kid's first letter.
    fn body(kids: &[&str]) -> Bytes {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| {
                let x = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    [kid.as_bytes()[0]; 32],
                );
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x})
            })
            .collect();
        Bytes::from(serde_json::json!({ "keys": keys }).to_string())
    }

    fn cache(etag: &str) -> CacheFacts {
        CacheFacts {
            validators: Validators {
                etag: Some(etag.into()),
                ..Validators::default()
            },
            lifetime: Some(std::time::Duration::from_secs(600)),
        }
    }

    fn step(
        current: &ProviderRecord,
        result: Result<FetchOutcome, FetchError>,
    ) -> (ProviderRecord, Change) {
        let policy = documented_defaults();
        let context = Context {
            now: Utc::now(),
            policy: &policy,
            backoff: &BACKOFF,
            rng: &mut StdRng::seed_from_u64(5),
        };
        apply(current, result, context)
    }

    fn modified(kids: &[&str], etag: &str) -> Result<FetchOutcome, FetchError> {
        Ok(FetchOutcome::Modified {
            body: body(kids),
            cache: cache(etag),
        })
    }

    fn revoked(record: &ProviderRecord, kids: &[&str]) -> ProviderRecord {
        let list = kids.iter().fold(Revocations::default(), |list, kid| {
            let key = RevokedKey {
                kid: (*kid).to_owned(),
                reason: "leaked".to_owned(),
                revoked_at: Utc::now(),
                revoked_by: "admin".to_owned(),
            };
            list.with(key).unwrap().unwrap()
        });
        record.with_revocations(list, record.registration.revision + 1, Utc::now())
    }

    fn published(record: &ProviderRecord) -> (u64, Vec<String>) {
        let keys = record.keys.as_ref().expect("keys");
        let kids = keys
            .document
            .keys()
            .iter()
            .filter_map(|k| k.kid.clone())
            .collect();
        (keys.version, kids)
    }

    #[test]
    fn a_revoked_kid_stays_out_whatever_the_provider_publishes() {
        let start = revoked(&registered(), &["b"]);
        let (first, change) = step(&start, modified(&["a", "b"], "\"1\""));
        assert_eq!(
            (change, published(&first)),
            (Change::NewVersion(1), (1, vec!["a".into()]))
        );
        let (again, change) = step(&first, modified(&["a", "b"], "\"2\""));
        assert_eq!(
            (change, published(&again)),
            (Change::Unchanged, (1, vec!["a".into()]))
        );
        let (dropped, change) = step(&again, modified(&["a"], "\"3\""));
        assert_eq!(
            (change, published(&dropped)),
            (Change::Unchanged, (1, vec!["a".into()])),
            "the provider dropping a revoked key changes nothing published"
        );
        assert!(!dropped.keys.as_ref().unwrap().fetched.contains_kid("b"));
        let (back, change) = step(&dropped, modified(&["a", "b"], "\"4\""));
        assert_eq!(
            (change, published(&back)),
            (Change::Unchanged, (1, vec!["a".into()]))
        );
    }

    #[test]
    fn revoking_and_reinstating_a_held_key_each_publish_a_new_version() {
        let (fetched, _) = step(&registered(), modified(&["a", "b"], "\"1\""));
        let without_b = revoked(&fetched, &["b"]);
        assert_eq!(published(&without_b), (2, vec!["a".into()]));
        let reinstated = revoked(&without_b, &[]);
        assert_eq!(published(&reinstated), (3, vec!["a".into(), "b".into()]));
        let unpublished = revoked(&reinstated, &["zz"]);
        assert_eq!(
            published(&unpublished),
            (3, vec!["a".into(), "b".into()]),
            "a kid the provider does not publish changes no version"
        );
        let (fetched_zz, change) = step(&unpublished, modified(&["a", "b", "zz"], "\"2\""));
        assert_eq!(
            change,
            Change::Unchanged,
            "and stays out once it is published"
        );
        assert_eq!(published(&fetched_zz), (3, vec!["a".into(), "b".into()]));
    }

    #[test]
    fn versions_start_at_one_and_grow_only_when_keys_change() {
        let (first, change) = step(&registered(), modified(&["a"], "\"1\""));
        assert_eq!(change, Change::NewVersion(1));
        let (same, change) = step(&first, modified(&["a"], "\"2\""));
        assert_eq!(change, Change::Unchanged);
        assert_eq!(same.keys.as_ref().map(|k| k.version), Some(1));
        assert_eq!(
            same.validators.etag.as_deref(),
            Some("\"2\""),
            "validators follow the response"
        );
        let (rotated, change) = step(&same, modified(&["a", "b"], "\"3\""));
        assert_eq!(change, Change::NewVersion(2));
        assert!(rotated.keys.unwrap().document.contains_kid("b"));
    }

    #[test]
    fn a_provider_whose_stored_keys_were_dropped_continues_from_their_version() {
        let mut quarantined = registered();
        quarantined.dropped_version = 5;
        quarantined.status.last_error = Some("stored key set is unreadable".into());
        let (failed, _) = step(
            &quarantined,
            Err(FetchError::Status {
                code: 503,
                retry_after: None,
            }),
        );
        assert_eq!(failed.version(), 5, "a failed refetch keeps it");
        let (recovered, change) = step(&failed, modified(&["a"], "\"1\""));
        assert_eq!(change, Change::NewVersion(6));
        assert_eq!((recovered.version(), recovered.dropped_version), (6, 0));
        assert_eq!(recovered.status.last_error, None);
    }

    #[test]
    fn keys_left_out_of_a_document_are_kept_with_the_set_until_the_next_document() {
        let mut keys = serde_json::from_slice::<serde_json::Value>(&body(&["a"])).unwrap();
        keys["keys"].as_array_mut().unwrap().push(
            serde_json::json!({"kty": "AKP", "kid": "pq", "alg": "ML-DSA-44", "pub": "cHVi"}),
        );
        let (first, change) = step(
            &registered(),
            Ok(FetchOutcome::Modified {
                body: Bytes::from(keys.to_string()),
                cache: cache("\"1\""),
            }),
        );
        assert_eq!(change, Change::NewVersion(1));
        let skipped = |record: &ProviderRecord| record.keys.as_ref().unwrap().skipped.len();
        assert_eq!(skipped(&first), 1);
        let (revalidated, _) = step(
            &first,
            Ok(FetchOutcome::NotModified {
                cache: cache("\"1\""),
            }),
        );
        assert_eq!(skipped(&revalidated), 1, "a 304 keeps the list");
        let (same_keys, change) = step(&revalidated, modified(&["a"], "\"2\""));
        assert_eq!(change, Change::Unchanged);
        assert_eq!(skipped(&same_keys), 0, "a new document replaces the list");
    }

    #[test]
    fn a_304_keeps_the_version_and_extends_freshness() {
        let (first, _) = step(&registered(), modified(&["a"], "\"1\""));
        let earlier = first.keys.as_ref().unwrap().fresh_until;
        let later = ProviderRecord {
            keys: first.keys.clone().map(|k| CurrentKeys {
                fresh_until: earlier - Duration::seconds(500),
                ..k
            }),
            ..first.clone()
        };
        let (revalidated, change) = step(
            &later,
            Ok(FetchOutcome::NotModified {
                cache: cache("\"1\""),
            }),
        );
        assert_eq!(change, Change::Unchanged);
        let keys = revalidated.keys.unwrap();
        assert_eq!(keys.version, 1);
        let extended_by = keys.fresh_until - (earlier - Duration::seconds(500));
        assert!(
            extended_by >= Duration::seconds(499),
            "extended by {extended_by}"
        );
    }

    #[test]
    fn failures_keep_the_last_good_keys_and_count_up() {
        let (good, _) = step(&registered(), modified(&["a"], "\"1\""));
        let outage = || {
            Err(FetchError::Status {
                code: 503,
                retry_after: None,
            })
        };
        let (once, change) = step(&good, outage());
        assert!(matches!(change, Change::Failed(reason) if reason.contains("503")));
        let (twice, _) = step(&once, outage());
        assert_eq!(twice.status.consecutive_failures, 2);
        assert_eq!(twice.keys, good.keys);
        assert_eq!(twice.validators.etag.as_deref(), Some("\"1\""));
        let (recovered, _) = step(&twice, modified(&["a"], "\"1\""));
        assert_eq!(
            (
                recovered.status.consecutive_failures,
                recovered.status.last_error
            ),
            (0, None)
        );
    }

    #[test]
    fn a_rejected_document_is_a_failure_that_keeps_the_keys() {
        let (good, _) = step(&registered(), modified(&["a"], "\"1\""));
        let (rejected, change) = step(&good, modified(&[], "\"2\""));
        assert!(matches!(
            change,
            Change::Rejected(JwksError::EmptyReplacesNonEmpty { .. })
        ));
        let reason = rejected.status.last_error.as_deref().unwrap_or_default();
        assert!(reason.contains("no usable keys"), "{reason}");
        assert_eq!(rejected.keys, good.keys);
        assert_eq!(
            rejected.validators.etag.as_deref(),
            Some("\"1\""),
            "rejected validators are not adopted"
        );
    }

    #[test]
    fn a_set_replacing_every_key_is_held_until_a_second_fetch_agrees() {
        let (good, _) = step(&registered(), modified(&["a"], "\"1\""));
        let (held, change) = step(&good, modified(&["x"], "\"2\""));
        assert_eq!(
            change,
            Change::Rejected(JwksError::UnconfirmedReplacement { previous: 1 })
        );
        assert_eq!(held.keys, good.keys, "the last good set stays");
        let (other, change) = step(&held, modified(&["y"], "\"3\""));
        assert!(
            matches!(change, Change::Rejected(_)),
            "a different replacement starts over"
        );
        let (confirmed, change) = step(&other, modified(&["y"], "\"3\""));
        assert_eq!(change, Change::NewVersion(2));
        assert!(confirmed.keys.unwrap().document.contains_kid("y"));
        assert_eq!(confirmed.pending_replacement, None);
    }

    #[test]
    fn an_unmatched_or_unexpected_304_forgets_the_validators() {
        let (good, _) = step(&registered(), modified(&["a"], "\"1\""));
        let (unmatched, _) = step(&good, Err(FetchError::UnmatchedNotModified));
        assert_eq!(unmatched.validators.etag, None);
        let (unexpected, change) = step(
            &registered(),
            Ok(FetchOutcome::NotModified {
                cache: cache("\"1\""),
            }),
        );
        assert!(matches!(change, Change::Failed(_)));
        assert_eq!(unexpected.validators.etag, None);
    }
}
