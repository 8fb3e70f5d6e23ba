//! Failed authentications, made visible and bounded: each is counted in
//! `keyrelay_auth_failures_total` by service and reason, the first of a burst from one client
//! address is logged at warn (the rest at debug, summed up in the next warn), and failed
//! AdminService authentications are limited per client address.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    access::AuthError, core::failure_limiter::FailureLimiter, observability::metrics::Metrics,
};

/// A client's failures are logged at warn at most once per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Above this many clients remembered, the ones not warned about recently are forgotten.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Where a caller failed to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// AdminService: a token is required.
    Admin,
    /// KeyService: a token is optional, but one presented must be valid.
    Key,
    /// The HTTP JWKS mirror.
    Mirror,
    /// The status page's login (admin tokens, limited like AdminService).
    StatusPage,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 4] = [
        Service::Admin,
        Service::Key,
        Service::Mirror,
        Service::StatusPage,
    ];

    /// The metric's `service` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Admin => "admin",
            Service::Key => "key",
            Service::Mirror => "mirror",
            Service::StatusPage => "status_page",
        }
    }
}

/// Every `reason` a failed authentication is counted under.
pub const REASONS: [&str; 5] = [
    AuthError::KINDS[0],
    AuthError::KINDS[1],
    AuthError::KINDS[2],
    "verifier_token",
    "rate_limited",
];

/// Counts, logs and limits failed authentications.
pub struct AuthFailures {
    metrics: Arc<Metrics>,
    admin_limiter: FailureLimiter,
    log: BurstLog,
}

impl AuthFailures {
    /// Failures counted in `metrics`; AdminService failures limited to `admin_per_second` per
    /// client address (bursts of twice that).
    pub fn new(metrics: Arc<Metrics>, admin_per_second: NonZeroU32) -> Self {
        Self {
            metrics,
            admin_limiter: FailureLimiter::new(admin_per_second),
            log: BurstLog::default(),
        }
    }

    /// Whether `client` may try to authenticate on `service` now; otherwise how long until it
    /// may. Only admin credentials are limited (AdminService and the status page, sharing one
    /// bucket per address). A refusal is itself counted as a failure.
    pub fn admit(&self, service: Service, client: Option<IpAddr>) -> Result<(), Duration> {
        let (Service::Admin | Service::StatusPage, Some(address)) = (service, client) else {
            return Ok(());
        };
        self.admin_limiter.admit(address).inspect_err(|_| {
            self.report(service, "rate_limited", client);
        })
    }

    /// `client` failed to authenticate on `service` for `reason` (a short name, the metric's
    /// `reason` label).
    pub fn failed(&self, service: Service, reason: &'static str, client: Option<IpAddr>) {
        if let (Service::Admin | Service::StatusPage, Some(address)) = (service, client) {
            self.admin_limiter.failed(address);
        }
        self.report(service, reason, client);
    }

    fn report(&self, service: Service, reason: &'static str, client: Option<IpAddr>) {
        self.metrics.auth_failed(service.as_str(), reason);
        let service = service.as_str();
        let shown = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        match self.log.first_of_burst(client, Instant::now()) {
            Some(suppressed) => tracing::warn!(
                service,
                reason,
                client = shown,
                earlier_failures_not_logged = suppressed,
                "authentication failed"
            ),
            None => tracing::debug!(service, reason, client = shown, "authentication failed"),
        }
    }
}

/// Which failures start a burst: the first from a client, or the first after `WARN_EVERY`.
#[derive(Default)]
struct BurstLog {
    clients: Mutex<HashMap<Option<IpAddr>, Burst>>,
}

struct Burst {
    warned_at: Instant,
    suppressed: u64,
}

impl BurstLog {
    /// Whether a failure of `client` at `now` starts a burst, and if so how many failures of
    /// the previous burst went unlogged at warn.
    fn first_of_burst(&self, client: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(burst) = clients.get_mut(&client) {
            if now.saturating_duration_since(burst.warned_at) < WARN_EVERY {
                burst.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut burst.suppressed);
            burst.warned_at = now;
            return Some(suppressed);
        }
        if clients.len() >= MAX_TRACKED_CLIENTS {
            clients.retain(|_, burst| now.saturating_duration_since(burst.warned_at) < WARN_EVERY);
        }
        let burst = Burst {
            warned_at: now,
            suppressed: 0,
        };
        clients.insert(client, burst);
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_of_a_burst_is_warned_about_and_the_rest_summed_up_later() {
        let log = BurstLog::default();
        let noisy = Some("127.0.0.2".parse().unwrap());
        let quiet = Some("127.0.0.3".parse().unwrap());
        let start = Instant::now();
        assert_eq!(log.first_of_burst(noisy, start), Some(0));
        for second in 1..=3 {
            let at = start + Duration::from_secs(second);
            assert_eq!(log.first_of_burst(noisy, at), None);
        }
        assert_eq!(
            log.first_of_burst(quiet, start + Duration::from_secs(2)),
            Some(0),
            "another client has a burst of its own"
        );
        assert_eq!(log.first_of_burst(noisy, start + WARN_EVERY), Some(3));
        assert_eq!(log.first_of_burst(noisy, start + WARN_EVERY), None);
    }
}
