//! The refresh scheduler: one task holding a time-ordered queue of every provider's next
//! refresh (not a sleeping task per provider). The queue follows the cache's change feed, so
//! every replica keeps it current, and holds only the providers of the shards this replica
//! owns, starting their refreshes when they fall due, with bounded concurrency.

use std::{sync::Arc, time::Duration};

use tokio::{sync::broadcast::error::RecvError, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, sleep_until_due},
    cluster::Ownership,
    domain::ProviderKey,
    refresh::due_queue::DueQueue,
    refresh::{FlightResult, RefreshError, Refresher},
    state::cache::KeyCache,
};

/// When a refresh result could not be stored, retry the provider after this long.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// The queue of due times and the task that works through it.
pub struct Scheduler {
    queue: DueQueue,
    cache: Arc<KeyCache>,
    clock: Arc<dyn Clock>,
    refresher: Arc<Refresher>,
    ownership: Arc<Ownership>,
    max_concurrent: usize,
}

impl Scheduler {
    /// A scheduler over every provider in `cache`.
    pub fn new(
        cache: Arc<KeyCache>,
        clock: Arc<dyn Clock>,
        refresher: Arc<Refresher>,
        ownership: Arc<Ownership>,
        max_concurrent: usize,
    ) -> Self {
        Self {
            queue: DueQueue::default(),
            cache,
            clock,
            refresher,
            ownership,
            max_concurrent: max_concurrent.max(1),
        }
    }

    /// Runs until `shutdown`, starting each refresh when it is due while this replica owns
    /// the provider's shard. In-flight refreshes are left to the refresher's task tracker.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut notices = self.cache.subscribe();
        self.track_all();
        let mut running = JoinSet::new();
        let mut ownership = self.ownership.subscribe();
        loop {
            let next_due = self.queue.next_due();
            let may_start = running.len() < self.max_concurrent;
            tokio::select! {
                () = shutdown.cancelled() => break,
                notice = notices.recv() => match notice {
                    Ok(key) => self.track(&key),
                    Err(RecvError::Lagged(_)) => self.track_all(),
                    Err(RecvError::Closed) => break,
                },
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((key, result)) = done {
                        self.after(key, &result);
                    }
                }
                () = ownership.changed() => self.track_all(),
                () = sleep_until_due(&*self.clock, next_due), if may_start => {
                    self.start_due(&mut running);
                }
            }
        }
        running.detach_all();
    }

    fn track_all(&mut self) {
        for record in self.cache.all() {
            self.track(&record.registration.key);
        }
    }

    /// Queues the provider for its next refresh as recorded, or drops it if it is gone, its
    /// keys are pushed rather than fetched, or another replica owns its shard.
    fn track(&mut self, key: &ProviderKey) {
        match self.cache.get(key) {
            Some(record) if !record.registration.source.is_fetched() => self.queue.remove(key),
            Some(_) if !self.ownership.owns(key) => self.queue.remove(key),
            Some(record) => {
                let due = record.due_at().unwrap_or_else(|| self.clock.now());
                self.queue.insert(key.clone(), due);
            }
            None => self.queue.remove(key),
        }
    }

    /// A stored result reschedules itself through the cache; an unstored one is retried.
    fn after(&mut self, key: ProviderKey, result: &FlightResult) {
        if let Err(RefreshError::Store(_)) = result {
            let retry = self.clock.now() + STORE_RETRY;
            self.queue.insert(key, retry);
        }
    }

    fn start_due(&mut self, running: &mut JoinSet<(ProviderKey, FlightResult)>) {
        let now = self.clock.now();
        while running.len() < self.max_concurrent {
            let Some(key) = self.queue.pop_due(now) else {
                break;
            };
            let refresher = Arc::clone(&self.refresher);
            running.spawn(async move {
                let result = refresher.refresh(&key).await;
                (key, result)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::refresh::testing::{Harness, ScriptedFetch, jwks};

    #[tokio::test]
    async fn the_scheduler_fetches_each_provider_when_it_falls_due() {
        let fetcher = ScriptedFetch::serving(jwks(&["a"]));
        let harness = Harness::new(Arc::clone(&fetcher)).await;
        let now = harness.clock.now();
        let due_now = harness.register("due-now", 1).await;
        let later = harness
            .register_due("later", 1, now + chrono::Duration::hours(1))
            .await;
        let scheduler = Scheduler::new(
            Arc::clone(&harness.cache),
            Arc::new(harness.clock.clone()),
            Arc::clone(&harness.refresher),
            Ownership::single_node(),
            4,
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(scheduler.run(shutdown.clone()));

        fetcher.started(1).await;
        let fetched = |key: &ProviderKey| {
            harness
                .cache
                .get(key)
                .and_then(|r| r.status.last_attempt_at)
        };
        let first = wait_for(&harness.cache, || fetched(&due_now)).await;
        let next = harness
            .cache
            .get(&due_now)
            .unwrap()
            .status
            .next_refresh_at
            .unwrap();
        let lead = next - first;
        assert!(
            lead > chrono::Duration::seconds(500) && lead <= chrono::Duration::seconds(570),
            "refreshed {lead} after the fetch: 30 s early, up to 30 s of jitter"
        );
        advance_to(&harness, next);
        fetcher.started(2).await;
        wait_for(&harness.cache, || {
            fetched(&due_now).filter(|at| *at >= next)
        })
        .await;
        assert_eq!(fetcher.calls(), 2);
        assert_eq!(fetched(&later), None, "not due yet");

        advance_to(&harness, now + chrono::Duration::hours(1));
        fetcher.started(3).await;
        wait_for(&harness.cache, || fetched(&later)).await;
        shutdown.cancel();
        running.await.unwrap();
    }

    fn advance_to(harness: &Harness, at: chrono::DateTime<chrono::Utc>) {
        let step = (at - harness.clock.now()).to_std().unwrap_or_default();
        harness.clock.advance(step);
    }

    /// Waits, change by change of the cache, until `check` holds.
    async fn wait_for<T>(cache: &KeyCache, mut check: impl FnMut() -> Option<T>) -> T {
        let mut changes = cache.subscribe();
        loop {
            if let Some(value) = check() {
                return value;
            }
            let changed = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
            assert!(changed.is_ok(), "no change of the cache within 10 s");
        }
    }
}
