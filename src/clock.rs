//! Wall-clock time for every freshness and scheduling decision, injectable so tests can move
//! time forward instead of sleeping.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;

/// The source of "now" and the way to wait for a wall-clock instant.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Returns once `now() >= deadline`.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// Returns once `clock` passes `deadline`; never when there is none.
pub async fn sleep_until_due(clock: &dyn Clock, deadline: Option<DateTime<Utc>>) {
    match deadline {
        Some(deadline) => clock.sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        // Microseconds: what both stores keep, so a record reads back exactly as written.
        Utc::now().trunc_subsecs(6)
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        // Re-check after waking: the wall clock may have been stepped while we slept.
        loop {
            let remaining = deadline - Utc::now();
            match remaining.to_std() {
                Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                _ => return,
            }
        }
    }
}

/// A clock that only moves when told to; sleepers wake when it passes their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock stopped at `start` (truncated to microseconds, like the system clock).
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start.trunc_subsecs(6))),
        }
    }

    /// Moves the clock forward by `step`, waking every sleeper whose deadline has passed.
    pub fn advance(&self, step: Duration) {
        let step = chrono::Duration::from_std(step).unwrap_or(chrono::Duration::MAX);
        self.now.send_modify(|now| *now += step);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut now = self.now.subscribe();
        // The sender lives as long as `self`, so this only ends when the deadline is reached.
        let _ = now.wait_for(|now| *now >= deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_only_when_the_clock_passes_their_deadline() {
        let clock = ManualClock::new(Utc::now());
        let deadline = clock.now() + chrono::Duration::seconds(10);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(deadline).await }
        });
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), deadline);
    }
}
