//! Keys turn stale with time, not with a write: this task announces each provider when its
//! keys pass `fresh_until`, so watchers see their keys aging without polling.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, sleep_until_due},
    domain::ProviderKey,
    refresh::due_queue::DueQueue,
    state::cache::KeyCache,
};

/// Announces providers whose keys have just stopped being fresh.
pub struct StalenessTimer {
    cache: Arc<KeyCache>,
    clock: Arc<dyn Clock>,
    queue: DueQueue,
}

impl StalenessTimer {
    /// A timer over every provider in `cache`.
    pub fn new(cache: Arc<KeyCache>, clock: Arc<dyn Clock>) -> Self {
        Self {
            cache,
            clock,
            queue: DueQueue::default(),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut notices = self.cache.subscribe();
        self.track_all();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                notice = notices.recv() => match notice {
                    Ok(key) => self.track(&key),
                    Err(RecvError::Lagged(_)) => self.track_all(),
                    Err(RecvError::Closed) => break,
                },
                () = sleep_until_due(&*self.clock, self.queue.next_due()) => self.announce_due(),
            }
        }
    }

    fn track_all(&mut self) {
        for record in self.cache.all() {
            self.track(&record.registration.key);
        }
    }

    /// Queues the provider for the end of its freshness, or forgets it if that has passed.
    fn track(&mut self, key: &ProviderKey) {
        let fresh_until = self
            .cache
            .get(key)
            .and_then(|record| record.keys.as_ref().map(|keys| keys.fresh_until));
        match fresh_until {
            Some(at) if at > self.clock.now() => self.queue.insert(key.clone(), at),
            _ => self.queue.remove(key),
        }
    }

    fn announce_due(&mut self) {
        let now = self.clock.now();
        while let Some(key) = self.queue.pop_due(now) {
            self.cache.touch(&key);
        }
    }
}
