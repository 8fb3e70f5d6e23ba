//! Refreshing one provider: at most one fetch in flight per provider, shared by everyone who
//! asks (the scheduler, an admin, every Resolve that met an unknown kid). Only the replica
//! owning the provider's shard fetches: a flight fetches, writes the result durably under the
//! shard's fence, then updates the cache, which tells watchers and the scheduler. Any other
//! replica forwards the request to the owner and waits for the result to arrive through the
//! change feed. Flights run as tracked tasks, so a caller that gives up never cancels a
//! write. A flight for a provider whose keys are pushed (`PublishKeySet`) fetches nothing
//! and answers the held state.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use rand::rngs::ThreadRng;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    access::{Action, AuditEvent, Origin},
    clock::Clock,
    cluster::{Cluster, RefreshKind, RefreshRequest},
    domain::{JwksUrl, Policy, ProviderKey},
    observability::metrics::Metrics,
    refresh::discovery::{self, DiscoveryChange, DiscoveryRequest},
    refresh::freshness::Backoff,
    refresh::outcome::{self, Change, Context},
    state::cache::KeyCache,
    state::record::{ProviderRecord, RefreshStatus, Validators},
    store::{Fence, Store, StoreError},
    upstream::fetch::{Fetch, FetchError, FetchOutcome, FetchRequest},
};

/// Why a refresh produced no record. Fetch failures are not errors here: they are recorded
/// in the provider's status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// The provider was unregistered or re-registered while the fetch ran, or this replica
    /// lost the provider's shard lease before writing.
    #[error("provider was unregistered or re-registered during the refresh, or its shard moved")]
    Superseded,
    /// The result could not be stored; the last good state is unchanged.
    #[error("could not store the refresh result: {0}")]
    Store(Arc<StoreError>),
    /// This replica could not ask the owner of the provider's shard.
    #[error("could not ask the replica refreshing this provider: {0}")]
    Forward(Arc<StoreError>),
    /// Another replica owns the provider's shard, and it did not answer in time.
    #[error("the replica refreshing this provider did not report a result within {0:?}")]
    OwnerTimeout(Duration),
    /// This replica does not own the provider's shard now (a scheduled refresh after losing
    /// it, or a request arriving while the shard is handed over).
    #[error("this replica does not refresh this provider's shard now")]
    NotOwner,
}

/// The shared result of one flight.
pub type FlightResult = Result<Arc<ProviderRecord>, RefreshError>;

type Flight = watch::Receiver<Option<FlightResult>>;

/// A flight in progress, its start order, and its span (joiners link to it).
#[derive(Clone)]
struct Started {
    sequence: u64,
    flight: Flight,
    span: SpanContext,
}

impl Started {
    /// Waits for the flight; a caller that did not start it links its span to the flight's.
    async fn join(self) -> FlightResult {
        if self.span.is_valid() {
            Span::current().add_link(self.span.clone());
        }
        wait_for(self.flight).await
    }
}

/// What made a refresh happen, recorded on its span.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Scheduled,
    Requested,
    UnknownKid,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Requested => "requested",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// What the refresher needs from the rest of the service.
pub struct RefresherParts {
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// The in-memory view.
    pub cache: Arc<KeyCache>,
    /// Fetches JWKS documents.
    pub fetcher: Arc<dyn Fetch>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Server-wide policy defaults.
    pub defaults: Policy,
    /// Retry bounds after failures.
    pub backoff: Backoff,
    /// Minimum time between two refreshes triggered by unknown kids, per provider.
    pub unknown_kid_cooldown: Duration,
    /// Which shards this replica owns, and how to reach the owners of the others.
    pub cluster: Arc<Cluster>,
    /// How long a replica waits for the result of another shard's owner.
    pub owner_wait: Duration,
    /// Tracks flights so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Where fetch outcomes are counted.
    pub metrics: Arc<Metrics>,
}

/// Runs refreshes, one flight per provider at a time.
pub struct Refresher {
    parts: RefresherParts,
    flights: Mutex<HashMap<ProviderKey, Started>>,
    next_sequence: AtomicU64,
    unknown_kid_refreshes: Mutex<HashMap<ProviderKey, DateTime<Utc>>>,
}

impl Refresher {
    /// A refresher with no flight in progress.
    pub fn new(parts: RefresherParts) -> Arc<Self> {
        Arc::new(Self {
            parts,
            flights: Mutex::default(),
            next_sequence: AtomicU64::new(0),
            unknown_kid_refreshes: Mutex::default(),
        })
    }

    /// Refreshes `key` on this replica (which must own its shard), joining the flight in
    /// progress.
    pub async fn refresh(self: &Arc<Self>, key: &ProviderKey) -> FlightResult {
        if !self.parts.cluster.ownership().owns(key) {
            return Err(RefreshError::NotOwner);
        }
        self.join_or_start(key, Trigger::Scheduled).join().await
    }

    /// Refreshes `key` with a fetch that starts after this call: a flight already in progress
    /// may have fetched before whatever the caller knows changed, so it is waited out, not
    /// joined. Callers arriving together still share one fetch. When another replica owns
    /// the provider's shard, that owner is asked and the result awaited.
    pub async fn refresh_now(self: &Arc<Self>, key: &ProviderKey) -> FlightResult {
        if !self.parts.cluster.ownership().owns(key) {
            return self.ask_owner(key, RefreshKind::Now).await;
        }
        let arrival = self.next_sequence.load(Ordering::SeqCst);
        loop {
            let started = self.join_or_start(key, Trigger::Requested);
            let sequence = started.sequence;
            let result = started.join().await;
            if sequence >= arrival {
                return result;
            }
        }
    }

    /// Refreshes `key` because a verifier asked for a kid it does not have, unless such a
    /// refresh started less than the cooldown ago on this replica (then `None`). Joins a
    /// flight in progress; when another replica owns the shard, asks it (its cooldown applies
    /// too).
    pub async fn refresh_for_unknown_kid(
        self: &Arc<Self>,
        key: &ProviderKey,
    ) -> Option<FlightResult> {
        if !self.parts.cluster.ownership().owns(key) {
            self.claim_unknown_kid_slot(key)?;
            return Some(self.ask_owner(key, RefreshKind::UnknownKid).await);
        }
        let started = self.join_or_start_unless_cooling_down(key)?;
        Some(started.join().await)
    }

    /// Serves followers' refresh requests, as the change feed passes them on, until
    /// `shutdown`.
    pub async fn serve_requests(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<RefreshRequest>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                request = requests.recv() => match request {
                    Some(request) => self.serve(request),
                    None => return,
                },
            }
        }
    }

    /// Serves a follower's request in the background and answers it with the change
    /// sequence of the resulting state (the current one if the cooldown declined it). The
    /// work continues the follower's trace.
    fn serve(self: &Arc<Self>, request: RefreshRequest) {
        let this = Arc::clone(self);
        let span = tracing::info_span!(
            "keyrelay.refresh.serve",
            keyrelay.tenant = request.key.tenant().as_str(),
            keyrelay.provider = request.key.provider().as_str(),
        );
        if let Some(parent) = &request.trace_parent {
            let _ = span.set_parent(crate::cluster::context_from_traceparent(parent));
        }
        let served = async move {
            let key = &request.key;
            let result = match request.kind {
                RefreshKind::Now => Some(this.refresh_now(key).await),
                RefreshKind::UnknownKid => this.refresh_for_unknown_kid(key).await,
            };
            let change_seq = match result {
                Some(Ok(record)) => record.change_seq,
                _ => this.parts.cache.change_seq(key),
            };
            if let Err(err) = this.parts.cluster.answer(request.id, change_seq).await {
                tracing::warn!(provider = %key, error = %err, "could not answer a refresh request");
            }
        };
        self.parts.tasks.spawn(served.instrument(span));
    }

    /// How long until an unknown kid may trigger another refresh of `key`.
    pub fn unknown_kid_cooldown_left(&self, key: &ProviderKey) -> Duration {
        let started = lock(&self.unknown_kid_refreshes).get(key).copied();
        let now = self.parts.clock.now();
        started
            .and_then(|at| (at + self.parts.unknown_kid_cooldown - now).to_std().ok())
            .unwrap_or_default()
    }

    /// Asks the owner, waits for its answer, then for the state it names to arrive through
    /// the change feed, all within `owner_wait`. The request carries this trace's context.
    #[tracing::instrument(name = "keyrelay.refresh.forward", skip(self), fields(keyrelay.tenant = key.tenant().as_str(), keyrelay.provider = key.provider().as_str()))]
    async fn ask_owner(&self, key: &ProviderKey, kind: RefreshKind) -> FlightResult {
        let cache = &self.parts.cache;
        let wait = self.parts.owner_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let change_seq = self
            .parts
            .cluster
            .request_refresh(key, kind, deadline)
            .await
            .map_err(|err| RefreshError::Forward(Arc::new(err)))?
            .ok_or(RefreshError::OwnerTimeout(wait))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !cache
            .wait_for_newer(key, change_seq.saturating_sub(1), left)
            .await
        {
            return Err(RefreshError::OwnerTimeout(wait));
        }
        cache.get(key).ok_or(RefreshError::Superseded)
    }

    /// Records an unknown-kid refresh of `key` now, unless one happened within the cooldown.
    fn claim_unknown_kid_slot(&self, key: &ProviderKey) -> Option<()> {
        let now = self.parts.clock.now();
        let mut started = lock(&self.unknown_kid_refreshes);
        let cooling = started
            .get(key)
            .is_some_and(|at| now < *at + self.parts.unknown_kid_cooldown);
        if cooling {
            return None;
        }
        started.insert(key.clone(), now);
        Some(())
    }

    fn join_or_start_unless_cooling_down(self: &Arc<Self>, key: &ProviderKey) -> Option<Started> {
        if let Some(started) = lock(&self.flights).get(key) {
            return Some(started.clone());
        }
        self.claim_unknown_kid_slot(key)?;
        Some(self.join_or_start(key, Trigger::UnknownKid))
    }

    /// Joins the flight for `key`, or starts one whose span is a child of the caller's.
    fn join_or_start(self: &Arc<Self>, key: &ProviderKey, trigger: Trigger) -> Started {
        let mut flights = lock(&self.flights);
        if let Some(started) = flights.get(key) {
            return started.clone();
        }
        let span = tracing::info_span!(
            "keyrelay.refresh",
            keyrelay.tenant = key.tenant().as_str(),
            keyrelay.provider = key.provider().as_str(),
            keyrelay.refresh.trigger = trigger.as_str(),
            keyrelay.refresh.outcome = Empty,
            keyrelay.key_set.version = Empty,
            keyrelay.keys.count = Empty,
        );
        let (done, flight) = watch::channel(None);
        let started = Started {
            sequence: self.next_sequence.fetch_add(1, Ordering::SeqCst),
            flight,
            span: span.context().span().span_context().clone(),
        };
        flights.insert(key.clone(), started.clone());
        let this = Arc::clone(self);
        let key = key.clone();
        let work = async move {
            let result = this.fly(&key, trigger).await;
            lock(&this.flights).remove(&key);
            done.send_replace(Some(result));
        };
        self.parts.tasks.spawn(work.instrument(span));
        started
    }

    async fn fly(&self, key: &ProviderKey, trigger: Trigger) -> FlightResult {
        let parts = &self.parts;
        let Some(permit) = parts.cluster.ownership().begin_flight(key) else {
            return Err(RefreshError::NotOwner);
        };
        let mut current = parts.cache.get(key).ok_or(RefreshError::Superseded)?;
        if !current.registration.source.is_fetched() {
            return Ok(current);
        }
        let policy = current.policy(&parts.defaults);
        let mut audits = Vec::new();
        let mut jwks_uri_moved = false;
        let requested = matches!(trigger, Trigger::Requested);
        if current.discovery_due(parts.clock.now()) || (requested && current.discovery.is_some()) {
            let (record, change) = self.discover(&current, &policy).await;
            if let DiscoveryChange::JwksUri { previous } = &change {
                jwks_uri_moved = true;
                audits.extend(jwks_uri_event(&record, previous.as_ref()));
            }
            current = Arc::new(record);
        }
        let now = parts.clock.now();
        let only_discovery_due = matches!(trigger, Trigger::Scheduled)
            && current.discovery.is_some()
            && !jwks_uri_moved
            && current.status.next_refresh_at.is_some_and(|at| at > now);
        let (next, change) = match current.jwks_url() {
            None => (undiscovered(&current, now), None),
            Some(_) if only_discovery_due => (current.as_ref().clone(), None),
            Some(url) => {
                let (next, change) = self.fetch_keys(&current, url, &policy).await;
                audits.extend(rejection_event(&current, &next, &change));
                (next, Some(change))
            }
        };
        let record = self
            .commit(key, next, permit.fence(), &audits)
            .instrument(tracing::info_span!("keyrelay.publish"))
            .await?;
        if let Some(change) = &change {
            log_change(key, change, &record);
        }
        Ok(record)
    }

    /// Fetches the issuer's metadata of `current` and returns the record with its discovery
    /// state updated (the keys' validators dropped when the JWKS URL moved).
    async fn discover(
        &self,
        current: &ProviderRecord,
        policy: &Policy,
    ) -> (ProviderRecord, DiscoveryChange) {
        let parts = &self.parts;
        let (Some(issuer), Some(state)) = (
            current.registration.source.issuer(),
            current.discovery.as_deref(),
        ) else {
            return (current.clone(), DiscoveryChange::Confirmed);
        };
        let request = DiscoveryRequest {
            issuer,
            current: state,
            trust: &current.registration.overrides.trust,
            max_bytes: policy.max_response_bytes,
            now: parts.clock.now().into(),
        };
        let fetched = discovery::fetch(parts.fetcher.as_ref(), request)
            .instrument(tracing::info_span!("keyrelay.discover"))
            .await;
        let (state, change) = self.with_context(policy, |context| {
            discovery::apply(state, issuer, fetched, context)
        });
        parts.metrics.discovered(change.outcome());
        let key = &current.registration.key;
        match &change {
            DiscoveryChange::JwksUri { previous } => tracing::info!(
                provider = %key,
                previous = previous.as_ref().map(|url| url.redacted()),
                jwks_uri = state.metadata.as_ref().map(|m| m.jwks_uri.redacted()),
                "issuer metadata names a new JWKS URL"
            ),
            DiscoveryChange::Confirmed => {
                tracing::debug!(provider = %key, "issuer metadata confirmed")
            }
            DiscoveryChange::Failed { reason, .. } => tracing::warn!(
                provider = %key,
                error = %reason,
                consecutive_failures = state.status.consecutive_failures,
                "discovery failed; keeping the last good metadata"
            ),
        }
        let mut record = current.clone();
        if matches!(change, DiscoveryChange::JwksUri { .. }) {
            record.validators = Validators::default();
        }
        record.discovery = Some(Box::new(state));
        (record, change)
    }

    /// Fetches the keys of `current` from `url` and returns the record after the result.
    async fn fetch_keys(
        &self,
        current: &ProviderRecord,
        url: &JwksUrl,
        policy: &Policy,
    ) -> (ProviderRecord, Change) {
        let parts = &self.parts;
        let fetching = std::time::Instant::now();
        let request = FetchRequest {
            url: url.as_url(),
            trust: &current.registration.overrides.trust,
            prior: &current.validators,
            max_bytes: policy.max_response_bytes,
            now: parts.clock.now().into(),
        };
        let result = parts.fetcher.fetch(request).await;
        let bytes = match &result {
            Ok(FetchOutcome::Modified { body, .. }) => body.len(),
            _ => 0,
        };
        let fetched = fetch_outcome(&result);
        let (next, change) =
            self.with_context(policy, |context| outcome::apply(current, result, context));
        let outcome = match &change {
            Change::Rejected(err) => {
                parts.metrics.key_set_rejected(err.kind());
                "rejected"
            }
            _ => fetched,
        };
        parts.metrics.fetched(outcome, fetching.elapsed(), bytes);
        let span = Span::current();
        span.record("keyrelay.refresh.outcome", outcome);
        if let Some(keys) = &next.keys {
            span.record("keyrelay.key_set.version", keys.version);
            span.record("keyrelay.keys.count", keys.document.keys().len());
        }
        if let Change::NewVersion(_) = change {
            parts.metrics.key_set_changed();
        }
        if let ("modified", Change::NewVersion(_) | Change::Unchanged) = (outcome, &change) {
            for skipped in next.skipped_keys() {
                parts.metrics.key_skipped(skipped.reason.kind());
            }
        }
        (next, change)
    }

    /// Runs `apply` with what a fetch result is applied in: now, `policy`, the backoff bounds
    /// and fresh randomness.
    fn with_context<T>(
        &self,
        policy: &Policy,
        apply: impl FnOnce(Context<'_, ThreadRng>) -> T,
    ) -> T {
        let mut rng = rand::rng();
        apply(Context {
            now: self.parts.clock.now(),
            policy,
            backoff: &self.parts.backoff,
            rng: &mut rng,
        })
    }

    async fn commit(
        &self,
        key: &ProviderKey,
        mut next: ProviderRecord,
        fence: Option<&Fence>,
        audits: &[AuditEvent],
    ) -> FlightResult {
        let parts = &self.parts;
        match parts.store.save_refresh(&next, fence, audits).await {
            Ok(Some(change_seq)) => next.change_seq = change_seq,
            Ok(None) => {
                tracing::info!(provider = %key, "refresh result not written: registration changed or lease lost");
                return Err(RefreshError::Superseded);
            }
            Err(err) => {
                tracing::error!(provider = %key, error = %err, "could not store refresh result");
                return Err(RefreshError::Store(Arc::new(err)));
            }
        }
        parts.cache.apply(next).ok_or(RefreshError::Superseded)
    }
}

/// `current` when no discovery ever succeeded: the keys cannot be fetched, so the provider
/// fails with discovery's error and is retried on discovery's schedule.
fn undiscovered(current: &ProviderRecord, now: DateTime<Utc>) -> ProviderRecord {
    let mut record = current.clone();
    let discovery = current.discovery.as_deref().map(|d| &d.status);
    let reason = discovery
        .and_then(|status| status.last_error.as_deref())
        .unwrap_or("not discovered yet");
    record.status = RefreshStatus {
        last_attempt_at: Some(now),
        last_error: Some(format!("discovery failed: {reason}")),
        consecutive_failures: discovery.map_or(1, |status| status.consecutive_failures),
        next_refresh_at: discovery.and_then(|status| status.next_refresh_at),
    };
    record
}

/// The audit event of the issuer's metadata naming a JWKS URL other than the one in use.
fn jwks_uri_event(record: &ProviderRecord, previous: Option<&JwksUrl>) -> Option<AuditEvent> {
    let discovery = record.discovery.as_deref()?;
    let metadata = discovery.metadata.as_ref()?;
    let key = &record.registration.key;
    Some(AuditEvent {
        before: previous.map(|url| serde_json::json!({ "jwks_uri": url.as_str() })),
        after: Some(serde_json::json!({
            "issuer": record.registration.source.issuer().map(|issuer| issuer.as_str()),
            "jwks_uri": metadata.jwks_uri.as_str(),
            "document": metadata.document.as_str(),
        })),
        ..AuditEvent::provider(
            metadata.confirmed_at,
            Origin::service(),
            Action::ChangeJwksUri,
            key,
        )
    })
}

/// The audit event of a key set refused by the guardrails, when the refusal is new: the
/// same refusal repeated by every retry is recorded once.
fn rejection_event(
    current: &ProviderRecord,
    next: &ProviderRecord,
    change: &Change,
) -> Option<AuditEvent> {
    let Change::Rejected(err) = change else {
        return None;
    };
    if current.status.last_error == next.status.last_error {
        return None;
    }
    let at = next.status.last_attempt_at?;
    let key = &next.registration.key;
    Some(AuditEvent {
        before: Some(serde_json::json!({
            "version": current.keys.as_ref().map(|keys| keys.version),
        })),
        after: Some(serde_json::json!({
            "reason": err.kind(),
            "error": err.to_string(),
        })),
        ..AuditEvent::provider(at, Origin::service(), Action::RejectKeySet, key)
    })
}

/// Every outcome a fetch is counted under in `keyrelay_refreshes_total`.
pub fn outcomes() -> impl Iterator<Item = &'static str> {
    ["modified", "not_modified", "rejected"]
        .into_iter()
        .chain(FetchError::KINDS)
}

/// The metric label of a fetch result.
fn fetch_outcome(result: &Result<FetchOutcome, FetchError>) -> &'static str {
    match result {
        Ok(FetchOutcome::Modified { .. }) => "modified",
        Ok(FetchOutcome::NotModified { .. }) => "not_modified",
        Err(err) => err.kind(),
    }
}

fn log_change(key: &ProviderKey, change: &Change, record: &ProviderRecord) {
    let next = record.status.next_refresh_at.map(|at| at.to_rfc3339());
    match change {
        Change::NewVersion(version) => {
            tracing::info!(provider = %key, version, next_refresh_at = ?next, "new key set version");
        }
        Change::Unchanged => {
            tracing::debug!(provider = %key, next_refresh_at = ?next, "key set confirmed");
        }
        Change::Failed(reason) => tracing::warn!(
            provider = %key,
            error = %reason,
            consecutive_failures = record.status.consecutive_failures,
            next_refresh_at = ?next,
            "refresh failed; keeping the last good key set"
        ),
        Change::Rejected(err) => tracing::warn!(
            provider = %key,
            error = %err,
            reason = err.kind(),
            next_refresh_at = ?next,
            "key set rejected; keeping the last good key set"
        ),
    }
}

async fn wait_for(mut flight: Flight) -> FlightResult {
    match flight.wait_for(Option::is_some).await {
        Ok(result) => result.clone().unwrap_or(Err(RefreshError::Superseded)),
        // The flight task ended without reporting: only possible if it was aborted at shutdown.
        Err(_) => Err(RefreshError::Superseded),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::refresh::testing::{BACKOFF, COOLDOWN, Harness, ScriptedFetch, jwks};

    #[tokio::test]
    async fn callers_arriving_during_a_flight_share_its_one_fetch() {
        let fetcher = ScriptedFetch::gated(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let key = harness.register("okta", 1).await;
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let refresher = Arc::clone(&harness.refresher);
                let key = key.clone();
                tokio::spawn(async move { refresher.refresh(&key).await })
            })
            .collect();
        fetcher.started(1).await;
        fetcher.release(1);
        let mut records = Vec::new();
        for caller in callers {
            records.push(caller.await.unwrap().expect("refreshed"));
        }
        assert_eq!(fetcher.calls(), 1);
        assert!(records.iter().all(|r| Arc::ptr_eq(r, &records[0])));
        assert_eq!(records[0].version(), 1);
    }

    #[tokio::test]
    async fn a_refresh_asked_for_during_a_flight_waits_it_out_and_fetches_again() {
        let fetcher = ScriptedFetch::gated(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let key = harness.register("okta", 1).await;
        let early = {
            let refresher = Arc::clone(&harness.refresher);
            let key = key.clone();
            tokio::spawn(async move { refresher.refresh(&key).await })
        };
        fetcher.started(1).await;
        let now = {
            let refresher = Arc::clone(&harness.refresher);
            let key = key.clone();
            tokio::spawn(async move { refresher.refresh_now(&key).await })
        };
        fetcher.release(1);
        assert_eq!(early.await.unwrap().expect("first flight").version(), 1);
        fetcher.serve(jwks(&["a", "b"]));
        fetcher.started(2).await;
        fetcher.release(1);
        let fresh = now.await.unwrap().expect("second flight");
        assert_eq!((fetcher.calls(), fresh.version()), (2, 2));
    }

    #[tokio::test]
    async fn unknown_kids_refresh_a_provider_once_per_cooldown() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let key = harness.register("okta", 1).await;
        let refresher = &harness.refresher;
        assert!(refresher.refresh_for_unknown_kid(&key).await.is_some());
        assert!(refresher.refresh_for_unknown_kid(&key).await.is_none());
        assert_eq!(refresher.unknown_kid_cooldown_left(&key), COOLDOWN);
        harness.clock.advance(COOLDOWN);
        assert!(refresher.refresh_for_unknown_kid(&key).await.is_some());
        assert_eq!(fetcher.calls(), 2);
    }

    #[tokio::test]
    async fn a_flight_overtaken_by_a_re_registration_writes_nothing() {
        let fetcher = ScriptedFetch::gated(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let key = harness.register("okta", 1).await;
        let flight = {
            let refresher = Arc::clone(&harness.refresher);
            let key = key.clone();
            tokio::spawn(async move { refresher.refresh(&key).await })
        };
        fetcher.started(1).await;
        harness.register("okta", 2).await;
        fetcher.release(1);
        assert!(matches!(
            flight.await.unwrap(),
            Err(RefreshError::Superseded)
        ));
        let stored = harness.store.get(&key).await.unwrap().expect("stored");
        assert_eq!(
            (stored.registration.revision, stored.keys.is_none()),
            (2, true)
        );
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_within_the_bounds_and_keep_the_keys() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let key = harness.register("okta", 1).await;
        harness.refresher.refresh(&key).await.expect("first fetch");
        for failures in 1..=4u32 {
            fetcher.answer_next(Err(FetchError::Status {
                code: 503,
                retry_after: None,
            }));
            let record = harness.refresher.refresh(&key).await.expect("stored");
            let status = &record.status;
            assert_eq!(status.consecutive_failures, failures);
            let delay = status.next_refresh_at.unwrap() - status.last_attempt_at.unwrap();
            let bound = BACKOFF.initial * 2u32.pow(failures - 1);
            assert!(
                delay >= chrono::Duration::zero() && delay.to_std().unwrap() <= bound,
                "failure {failures}: retry in {delay}, at most {bound:?}"
            );
            assert_eq!(record.version(), 1, "the last good keys stay");
        }
    }
}
