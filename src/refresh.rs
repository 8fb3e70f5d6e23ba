//! Refreshing one provider: at most one fetch in flight per provider, shared by everyone who
//! asks (the scheduler, an admin, every Resolve that met an unknown kid). A flight fetches,
//! writes the result durably, then updates the cache and tells the scheduler when to come
//! back. Flights run as tracked tasks, so a caller that gives up never cancels a write.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::{
    cache::KeyCache,
    clock::Clock,
    domain::{Policy, ProviderKey},
    fetch::Fetcher,
    freshness::Backoff,
    outcome::{self, Change, Context},
    provider::ProviderRecord,
    schedule::SchedulerHandle,
    store::Store,
};

/// Why a refresh produced no record. Fetch failures are not errors here: they are recorded
/// in the provider's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The provider was unregistered or re-registered while the fetch ran.
    #[error("provider was unregistered or re-registered during the refresh")]
    Superseded,
    /// The result could not be stored; the last good state is unchanged.
    #[error("could not store the refresh result: {0}")]
    Store(String),
}

/// The shared result of one flight.
pub type FlightResult = Result<Arc<ProviderRecord>, RefreshError>;

type Flight = watch::Receiver<Option<FlightResult>>;

/// A flight in progress and its start order.
#[derive(Clone)]
struct Started {
    sequence: u64,
    flight: Flight,
}

/// What the refresher needs from the rest of the service.
pub struct RefresherParts {
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// The in-memory view.
    pub cache: Arc<KeyCache>,
    /// HTTP client.
    pub fetcher: Fetcher,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Server-wide policy defaults.
    pub defaults: Policy,
    /// Retry bounds after failures.
    pub backoff: Backoff,
    /// Minimum time between two refreshes triggered by unknown kids, per provider.
    pub unknown_kid_cooldown: Duration,
    /// Where to report the next refresh time.
    pub scheduler: SchedulerHandle,
    /// Tracks flights so shutdown can wait for them.
    pub tasks: TaskTracker,
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

    /// Refreshes `key`, joining the flight in progress if there is one.
    pub async fn refresh(self: &Arc<Self>, key: &ProviderKey) -> FlightResult {
        wait_for(self.join_or_start(key).flight).await
    }

    /// Refreshes `key` with a fetch that starts after this call: a flight already in progress
    /// may have fetched before whatever the caller knows changed, so it is waited out, not
    /// joined. Callers arriving together still share one fetch.
    pub async fn refresh_now(self: &Arc<Self>, key: &ProviderKey) -> FlightResult {
        let arrival = self.next_sequence.load(Ordering::SeqCst);
        loop {
            let started = self.join_or_start(key);
            let result = wait_for(started.flight).await;
            if started.sequence >= arrival {
                return result;
            }
        }
    }

    /// Refreshes `key` because a verifier asked for a kid it does not have, unless such a
    /// refresh started less than the cooldown ago (then `None`). Joins a flight in progress.
    pub async fn refresh_for_unknown_kid(
        self: &Arc<Self>,
        key: &ProviderKey,
    ) -> Option<FlightResult> {
        let flight = self.join_or_start_unless_cooling_down(key)?;
        Some(wait_for(flight).await)
    }

    /// How long until an unknown kid may trigger another refresh of `key`.
    pub fn unknown_kid_cooldown_left(&self, key: &ProviderKey) -> Duration {
        let started = lock(&self.unknown_kid_refreshes).get(key).copied();
        let now = self.parts.clock.now();
        started
            .and_then(|at| (at + self.parts.unknown_kid_cooldown - now).to_std().ok())
            .unwrap_or_default()
    }

    fn join_or_start_unless_cooling_down(self: &Arc<Self>, key: &ProviderKey) -> Option<Flight> {
        if let Some(started) = lock(&self.flights).get(key) {
            return Some(started.flight.clone());
        }
        let now = self.parts.clock.now();
        {
            let mut started = lock(&self.unknown_kid_refreshes);
            let cooling = started
                .get(key)
                .is_some_and(|at| now < *at + self.parts.unknown_kid_cooldown);
            if cooling {
                return None;
            }
            started.insert(key.clone(), now);
        }
        Some(self.join_or_start(key).flight)
    }

    fn join_or_start(self: &Arc<Self>, key: &ProviderKey) -> Started {
        let mut flights = lock(&self.flights);
        if let Some(started) = flights.get(key) {
            return started.clone();
        }
        let (done, flight) = watch::channel(None);
        let started = Started {
            sequence: self.next_sequence.fetch_add(1, Ordering::SeqCst),
            flight,
        };
        flights.insert(key.clone(), started.clone());
        let this = Arc::clone(self);
        let key = key.clone();
        self.parts.tasks.spawn(async move {
            let result = this.fly(&key).await;
            lock(&this.flights).remove(&key);
            done.send_replace(Some(result));
        });
        started
    }

    async fn fly(&self, key: &ProviderKey) -> FlightResult {
        let parts = &self.parts;
        let current = parts.cache.get(key).ok_or(RefreshError::Superseded)?;
        let policy = current.policy(&parts.defaults);
        let started = parts.clock.now();
        let result = parts
            .fetcher
            .fetch(
                &current.registration.url,
                &current.validators,
                policy.max_response_bytes,
                started.into(),
            )
            .await;
        let (next, change) = {
            let mut rng = rand::rng();
            let context = Context {
                now: parts.clock.now(),
                policy: &policy,
                backoff: &parts.backoff,
                rng: &mut rng,
            };
            outcome::apply(&current, result, context)
        };
        self.commit(key, next, change).await
    }

    async fn commit(
        &self,
        key: &ProviderKey,
        next: ProviderRecord,
        change: Change,
    ) -> FlightResult {
        let parts = &self.parts;
        match parts.store.save_refresh(&next).await {
            Ok(true) => {}
            Ok(false) => return Err(RefreshError::Superseded),
            Err(err) => {
                tracing::error!(provider = %key, error = %err, "could not store refresh result");
                let retry_at = next
                    .status
                    .next_refresh_at
                    .unwrap_or_else(|| parts.clock.now());
                parts.scheduler.refresh_at(key.clone(), retry_at).await;
                return Err(RefreshError::Store(err.to_string()));
            }
        }
        let record = parts
            .cache
            .update_if_current(next)
            .ok_or(RefreshError::Superseded)?;
        log_change(key, &change, &record);
        if let Some(at) = record.status.next_refresh_at {
            parts.scheduler.refresh_at(key.clone(), at).await;
        }
        Ok(record)
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
