//! How the result of one fetch changes a provider record: a new version only when the keys
//! change, freshness from the cache headers, last good keys kept through every failure.
//! Pure: no I/O, the caller supplies the clock and the randomness.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::{
    domain::Policy,
    fetch::{CacheFacts, FetchError, FetchOutcome, Validators},
    freshness::{self, Backoff, Retry},
    jwks::KeySetDocument,
    provider::{CurrentKeys, ProviderRecord, RefreshStatus},
};

/// What a refresh did, for logs and callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The keys changed: a new version.
    NewVersion(u64),
    /// The identity provider confirmed the current keys (304 or identical body).
    Unchanged,
    /// The fetch or the document failed; the last good keys stay.
    Failed(String),
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
        (Ok(FetchOutcome::Modified { body, cache }), previous) => match accept(current, &body) {
            Ok(document) => {
                let keys = versioned(previous, document);
                succeed(current, keys, cache, ctx)
            }
            Err(reason) => fail(current, reason, Retry::Later, false, ctx),
        },
        (Ok(FetchOutcome::NotModified { cache }), Some(previous)) => {
            let keys = (
                previous.version,
                Arc::clone(&previous.document),
                Change::Unchanged,
            );
            succeed(current, keys, cache, ctx)
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

fn accept(current: &ProviderRecord, body: &[u8]) -> Result<KeySetDocument, String> {
    let parsed = KeySetDocument::parse(body).map_err(|err| err.to_string())?;
    let previous = current.keys.as_ref().map(|keys| keys.document.as_ref());
    parsed
        .document
        .may_replace(previous)
        .map_err(|err| err.to_string())?;
    if parsed.skipped > 0 {
        tracing::info!(
            provider = %current.registration.key,
            skipped = parsed.skipped,
            "left out keys of unsupported types"
        );
    }
    Ok(parsed.document)
}

/// The version a fetched document gets: the previous one when the keys are the same.
fn versioned(
    previous: Option<&CurrentKeys>,
    document: KeySetDocument,
) -> (u64, Arc<KeySetDocument>, Change) {
    match previous {
        Some(prev) if document.same_keys_as(&prev.document) => {
            (prev.version, Arc::clone(&prev.document), Change::Unchanged)
        }
        prev => {
            let version = prev.map_or(1, |p| p.version + 1);
            (version, Arc::new(document), Change::NewVersion(version))
        }
    }
}

fn succeed<R: Rng>(
    current: &ProviderRecord,
    (version, document, change): (u64, Arc<KeySetDocument>, Change),
    cache: CacheFacts,
    ctx: Context<'_, R>,
) -> (ProviderRecord, Change) {
    let lifetime = freshness::lifetime(cache.lifetime, ctx.policy);
    let fresh = freshness::after_success(ctx.now, lifetime, ctx.policy, ctx.rng);
    let record = ProviderRecord {
        registration: current.registration.clone(),
        keys: Some(CurrentKeys {
            version,
            document,
            fetched_at: ctx.now,
            fresh_until: fresh.fresh_until,
        }),
        validators: cache.validators,
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: None,
            consecutive_failures: 0,
            next_refresh_at: Some(fresh.next_refresh_at),
        },
    };
    (record, change)
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
        registration: current.registration.clone(),
        keys: current.keys.clone(),
        validators,
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: Some(reason.clone()),
            consecutive_failures: failures,
            next_refresh_at: Some(next),
        },
    };
    (record, Change::Failed(reason))
}
