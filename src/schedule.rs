//! The refresh scheduler: one task holding a time-ordered queue of every provider's next
//! refresh (not a sleeping task per provider), starting due refreshes with bounded
//! concurrency. Told about new times through a bounded channel by each finished refresh.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{clock::Clock, domain::ProviderKey, refresh::Refresher};

/// Commands waiting for the scheduler beyond this many make senders wait.
const QUEUE_CAPACITY: usize = 1024;

#[derive(Debug)]
enum Command {
    RefreshAt(ProviderKey, DateTime<Utc>),
    Forget(ProviderKey),
}

/// Tells the scheduler about changes; cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    commands: mpsc::Sender<Command>,
}

impl SchedulerHandle {
    /// Schedules (or moves) the next refresh of `key` to `at`.
    pub async fn refresh_at(&self, key: ProviderKey, at: DateTime<Utc>) {
        self.send(Command::RefreshAt(key, at)).await;
    }

    /// Drops `key` from the schedule.
    pub async fn forget(&self, key: ProviderKey) {
        self.send(Command::Forget(key)).await;
    }

    async fn send(&self, command: Command) {
        if self.commands.send(command).await.is_err() {
            tracing::debug!("scheduler has stopped; schedule change dropped during shutdown");
        }
    }
}

/// The queue of due times and the task that works through it.
pub struct Scheduler {
    commands: mpsc::Receiver<Command>,
    due: BTreeSet<(DateTime<Utc>, ProviderKey)>,
    due_at: HashMap<ProviderKey, DateTime<Utc>>,
    clock: Arc<dyn Clock>,
    max_concurrent: usize,
}

impl Scheduler {
    /// A scheduler with an empty queue and the handle to feed it.
    pub fn new(clock: Arc<dyn Clock>, max_concurrent: usize) -> (Self, SchedulerHandle) {
        let (sender, commands) = mpsc::channel(QUEUE_CAPACITY);
        let scheduler = Self {
            commands,
            due: BTreeSet::new(),
            due_at: HashMap::new(),
            clock,
            max_concurrent: max_concurrent.max(1),
        };
        (scheduler, SchedulerHandle { commands: sender })
    }

    /// Queues `key` for `at` before the scheduler runs (loading from the store).
    pub fn insert(&mut self, key: ProviderKey, at: DateTime<Utc>) {
        if let Some(previous) = self.due_at.insert(key.clone(), at) {
            self.due.remove(&(previous, key.clone()));
        }
        self.due.insert((at, key));
    }

    fn remove(&mut self, key: &ProviderKey) {
        if let Some(at) = self.due_at.remove(key) {
            self.due.remove(&(at, key.clone()));
        }
    }

    fn pop_due(&mut self, now: DateTime<Utc>) -> Option<ProviderKey> {
        let (at, _) = self.due.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.due.pop_first()?;
        self.due_at.remove(&key);
        Some(key)
    }

    /// Runs until `shutdown`, starting each refresh when it is due. In-flight refreshes are
    /// left to the refresher's task tracker.
    pub async fn run(mut self, refresher: Arc<Refresher>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        loop {
            let next_due = self.due.first().map(|(at, _)| *at);
            let has_room = running.len() < self.max_concurrent;
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::RefreshAt(key, at)) => self.insert(key, at),
                    Some(Command::Forget(key)) => self.remove(&key),
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = sleep_until(&*self.clock, next_due), if has_room && next_due.is_some() => {
                    self.start_due(&refresher, &mut running);
                }
            }
        }
        running.detach_all();
    }

    fn start_due(&mut self, refresher: &Arc<Refresher>, running: &mut JoinSet<()>) {
        let now = self.clock.now();
        while running.len() < self.max_concurrent {
            let Some(key) = self.pop_due(now) else { break };
            let refresher = Arc::clone(refresher);
            running.spawn(async move {
                // Failures are recorded in the provider status and rescheduled by the flight.
                let _ = refresher.refresh(&key).await;
            });
        }
    }
}

async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    if let Some(at) = at {
        clock.sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn key(name: &str) -> ProviderKey {
        ProviderKey::parse("t", name).unwrap()
    }

    #[test]
    fn the_queue_pops_in_time_order_and_only_when_due() {
        let clock = ManualClock::new(Utc::now());
        let now = clock.now();
        let (mut scheduler, _handle) = Scheduler::new(Arc::new(clock), 4);
        scheduler.insert(key("late"), now + chrono::Duration::seconds(20));
        scheduler.insert(key("early"), now + chrono::Duration::seconds(10));
        assert_eq!(scheduler.pop_due(now), None);
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(scheduler.pop_due(later), Some(key("early")));
        assert_eq!(scheduler.pop_due(later), Some(key("late")));
        assert_eq!(scheduler.pop_due(later), None);
    }

    #[test]
    fn rescheduling_moves_a_provider_instead_of_duplicating_it() {
        let clock = ManualClock::new(Utc::now());
        let now = clock.now();
        let (mut scheduler, _handle) = Scheduler::new(Arc::new(clock), 4);
        scheduler.insert(key("a"), now);
        scheduler.insert(key("a"), now + chrono::Duration::seconds(60));
        assert_eq!(scheduler.pop_due(now), None);
        assert_eq!(scheduler.due.len(), 1);
        scheduler.remove(&key("a"));
        assert!(scheduler.due.is_empty() && scheduler.due_at.is_empty());
    }
}
