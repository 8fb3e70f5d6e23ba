//! When keys stop being fresh and when to fetch next: the lifetime from cache headers clamped
//! by policy, the jittered early refresh, and exponential backoff with full jitter after a
//! failure. Pure functions of their inputs; the caller supplies the clock and the randomness.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::{domain::Policy, upstream::fetch::Retry};

/// Jitter is at most this fraction of the lifetime...
const JITTER_FRACTION: u32 = 10;
/// ...and never more than this.
const MAX_JITTER: Duration = Duration::from_secs(30);
/// A Retry-After beyond this is treated as this, so a misconfigured IdP cannot park a
/// provider for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Freshness of a successfully fetched (or revalidated) key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Until when the keys are fresh.
    pub fresh_until: DateTime<Utc>,
    /// When to refresh them.
    pub next_refresh_at: DateTime<Utc>,
}

/// Exponential backoff bounds for failed fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first retry delay.
    pub initial: Duration,
    /// Upper bound of every retry delay.
    pub max: Duration,
}

/// The lifetime to use: the one from the cache headers, or `default_ttl` when the IdP sent
/// none, clamped to `[min_ttl, max_ttl]`.
pub fn lifetime(from_headers: Option<Duration>, policy: &Policy) -> Duration {
    let lifetime = from_headers
        .unwrap_or(policy.default_ttl)
        .clamp(policy.min_ttl, policy.max_ttl);
    whole_millis(lifetime)
}

/// Freshness after a success at `now`: refresh `refresh_early` plus a jitter before the keys
/// expire, but never in the first half of their lifetime.
pub fn after_success(
    now: DateTime<Utc>,
    lifetime: Duration,
    policy: &Policy,
    rng: &mut impl Rng,
) -> Freshness {
    let max_jitter = (lifetime / JITTER_FRACTION).min(MAX_JITTER);
    let jitter = random_millis(rng, Duration::ZERO, max_jitter);
    let lead = (policy.refresh_early + jitter).min(lifetime / 2);
    let fresh_until = now + lifetime;
    Freshness {
        fresh_until,
        next_refresh_at: fresh_until - lead,
    }
}

/// When to try again after the `consecutive_failures`-th failure in a row at `now`.
pub fn after_failure(
    now: DateTime<Utc>,
    consecutive_failures: u32,
    retry: Retry,
    backoff: &Backoff,
    rng: &mut impl Rng,
) -> DateTime<Utc> {
    let delay = match retry {
        Retry::Soon { after } => {
            let doublings = consecutive_failures.saturating_sub(1).min(31);
            let ceiling = backoff
                .initial
                .saturating_mul(1 << doublings)
                .min(backoff.max);
            let jittered = random_millis(rng, Duration::ZERO, ceiling);
            jittered.max(after.unwrap_or_default().min(MAX_RETRY_AFTER))
        }
        Retry::Later => random_millis(rng, backoff.max / 2, backoff.max),
    };
    now + delay
}

/// A uniformly random whole number of milliseconds in `[low, high]`: instants stay whole
/// microseconds, the precision the stores keep.
fn random_millis(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let millis = rng.random_range(low.as_millis()..=high.as_millis().max(low.as_millis()));
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

fn whole_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn policy() -> Policy {
        crate::domain::documented_defaults()
    }

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
        (to - from).as_seconds_f64()
    }

    #[test]
    fn lifetime_comes_from_headers_clamped_or_from_the_default() {
        let p = policy();
        assert_eq!(
            lifetime(Some(Duration::from_secs(600)), &p),
            Duration::from_secs(600)
        );
        assert_eq!(lifetime(Some(Duration::from_secs(15)), &p), p.min_ttl);
        assert_eq!(
            lifetime(Some(Duration::from_secs(10 * 86_400)), &p),
            p.max_ttl
        );
        assert_eq!(lifetime(None, &p), p.default_ttl);
    }

    #[test]
    fn refresh_is_early_by_refresh_early_plus_bounded_jitter() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let f = after_success(now, Duration::from_secs(3600), &policy(), &mut rng);
            assert_eq!(secs(now, f.fresh_until), 3600.0);
            let lead = secs(f.next_refresh_at, f.fresh_until);
            assert!((30.0..=60.0).contains(&lead), "lead {lead}");
        }
    }

    #[test]
    fn jitter_is_at_most_a_tenth_of_a_short_lifetime() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let f = after_success(now, Duration::from_secs(100), &policy(), &mut rng);
            let lead = secs(f.next_refresh_at, f.fresh_until);
            assert!((30.0..=40.0).contains(&lead), "lead {lead}");
        }
    }

    #[test]
    fn ten_thousand_providers_fetched_together_do_not_refresh_in_the_same_second() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(11);
        let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
        for _ in 0..10_000 {
            let f = after_success(now, Duration::from_secs(300), &policy(), &mut rng);
            *per_second.entry(f.next_refresh_at.timestamp()).or_default() += 1;
        }
        // 300 s lifetime: jitter of up to 30 s spreads them over about 31 seconds.
        assert!(
            per_second.len() >= 30,
            "only {} distinct seconds",
            per_second.len()
        );
        let busiest = per_second.values().max().copied().unwrap_or_default();
        assert!(busiest < 500, "{busiest} refreshes in one second");
    }

    #[test]
    fn a_tiny_lifetime_still_waits_half_of_it() {
        let now = Utc::now();
        let f = after_success(
            now,
            Duration::from_secs(10),
            &policy(),
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(secs(now, f.next_refresh_at), 5.0);
    }

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(3);
        for (failures, ceiling) in [
            (1, 1.0),
            (2, 2.0),
            (5, 16.0),
            (9, 256.0),
            (10, 300.0),
            (60, 300.0),
        ] {
            let mut largest: f64 = 0.0;
            for _ in 0..2000 {
                let at = after_failure(
                    now,
                    failures,
                    Retry::Soon { after: None },
                    &BACKOFF,
                    &mut rng,
                );
                let delay = secs(now, at);
                assert!((0.0..=ceiling).contains(&delay), "{failures}: {delay}");
                largest = largest.max(delay);
            }
            assert!(
                largest > ceiling * 0.9,
                "{failures}: jitter never came near {ceiling}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(3);
        let soon = |after| Retry::Soon {
            after: Some(Duration::from_secs(after)),
        };
        assert!(secs(now, after_failure(now, 1, soon(120), &BACKOFF, &mut rng)) >= 120.0);
        assert_eq!(
            secs(now, after_failure(now, 1, soon(86_400), &BACKOFF, &mut rng)),
            3600.0
        );
    }

    #[test]
    fn permanent_failures_wait_between_half_and_all_of_the_cap() {
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            let delay = secs(now, after_failure(now, 1, Retry::Later, &BACKOFF, &mut rng));
            assert!((150.0..=300.0).contains(&delay), "{delay}");
        }
    }
}
