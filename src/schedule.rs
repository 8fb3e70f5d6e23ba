//! The refresh scheduler: one task holding a time-ordered queue of every provider's next
//! refresh (not a sleeping task per provider), starting due refreshes with bounded
//! concurrency. Told about new times through a bounded channel by each finished refresh.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{clock::Clock, domain::ProviderKey, due_queue::DueQueue, refresh::Refresher};

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
    queue: DueQueue,
    clock: Arc<dyn Clock>,
    max_concurrent: usize,
}

impl Scheduler {
    /// A scheduler with an empty queue and the handle to feed it.
    pub fn new(clock: Arc<dyn Clock>, max_concurrent: usize) -> (Self, SchedulerHandle) {
        let (sender, commands) = mpsc::channel(QUEUE_CAPACITY);
        let scheduler = Self {
            commands,
            queue: DueQueue::default(),
            clock,
            max_concurrent: max_concurrent.max(1),
        };
        (scheduler, SchedulerHandle { commands: sender })
    }

    /// Queues `key` for `at` before the scheduler runs (loading from the store).
    pub fn insert(&mut self, key: ProviderKey, at: DateTime<Utc>) {
        self.queue.insert(key, at);
    }

    /// Runs until `shutdown`, starting each refresh when it is due. In-flight refreshes are
    /// left to the refresher's task tracker.
    pub async fn run(mut self, refresher: Arc<Refresher>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        loop {
            let next_due = self.queue.next_due();
            let has_room = running.len() < self.max_concurrent;
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::RefreshAt(key, at)) => self.queue.insert(key, at),
                    Some(Command::Forget(key)) => self.queue.remove(&key),
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
            let Some(key) = self.queue.pop_due(now) else {
                break;
            };
            let refresher = Arc::clone(refresher);
            running.spawn(async move {
                // Failures are recorded in the provider status and rescheduled by the flight.
                let _ = refresher.refresh(&key).await;
            });
        }
    }
}

/// Sleeps until `at`, or forever when nothing is due.
pub(crate) async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}
