//! The refresh scheduler: one task holding a time-ordered queue of every provider's next
//! refresh (not a sleeping task per provider). The queue follows the cache's change feed, so
//! every replica keeps it current; only the leader starts refreshes when they fall due, with
//! bounded concurrency.

use std::{sync::Arc, time::Duration};

use tokio::{sync::broadcast::error::RecvError, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, sleep_until_due},
    cluster::Leadership,
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
    leadership: Leadership,
    max_concurrent: usize,
}

impl Scheduler {
    /// A scheduler over every provider in `cache`.
    pub fn new(
        cache: Arc<KeyCache>,
        clock: Arc<dyn Clock>,
        refresher: Arc<Refresher>,
        leadership: Leadership,
        max_concurrent: usize,
    ) -> Self {
        Self {
            queue: DueQueue::default(),
            cache,
            clock,
            refresher,
            leadership,
            max_concurrent: max_concurrent.max(1),
        }
    }

    /// Runs until `shutdown`, starting each refresh when it is due while this replica leads.
    /// In-flight refreshes are left to the refresher's task tracker.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut notices = self.cache.subscribe();
        self.track_all();
        let mut running = JoinSet::new();
        let mut leadership = self.leadership.clone();
        loop {
            let next_due = self.queue.next_due();
            let may_start = running.len() < self.max_concurrent && self.leadership.is_leader();
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
                () = leadership.changed() => {}
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

    /// Queues the provider for its next refresh as recorded, or drops it if it is gone.
    fn track(&mut self, key: &ProviderKey) {
        match self.cache.get(key) {
            Some(record) => {
                let due = record
                    .status
                    .next_refresh_at
                    .unwrap_or_else(|| self.clock.now());
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
