//! Per-client rate limits on failures: lookups of unknown kids that end without the kid (the
//! per-provider cooldown already keeps identity providers safe from a flood of random kids;
//! this keeps keyrelay itself, and in a fleet the leader, from doing that work for one noisy
//! client), and failed AdminService authentications. Only failures count: verifiers catching
//! up with a real rotation, and callers with valid tokens, are never limited.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _, clock::DefaultClock};

/// Above this many clients tracked, idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// A token bucket of failures per client address, and the clients currently out of tokens.
pub struct FailureLimiter {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimiter {
    /// `per_second` failures per client on average, bursts of twice that.
    pub fn new(per_second: NonZeroU32) -> Self {
        let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Self {
            failures: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            blocked: Mutex::default(),
        }
    }

    /// Whether `client` may try now; otherwise how long until it may.
    pub fn admit(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match self.blocked().get(&client) {
            Some(until) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `client`.
    pub fn failed(&self, client: IpAddr) {
        if self.failures.len() > MAX_TRACKED_CLIENTS {
            self.failures.retain_recent();
        }
        if let Err(not_until) = self.failures.check_key(&client) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked();
            if blocked.len() > MAX_TRACKED_CLIENTS {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(client, Instant::now() + wait);
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_failing_too_often_waits_and_others_are_unaffected() {
        let limiter = FailureLimiter::new(NonZeroU32::new(5).unwrap());
        let noisy: IpAddr = "127.0.0.2".parse().unwrap();
        let quiet: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(limiter.admit(noisy), Ok(()));
            limiter.failed(noisy);
        }
        assert_eq!(
            limiter.admit(noisy),
            Ok(()),
            "the burst is not exhausted yet"
        );
        limiter.failed(noisy);
        let wait = limiter.admit(noisy).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(limiter.admit(quiet), Ok(()));
    }
}
