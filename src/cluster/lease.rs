//! The refresh lease: a follower takes it when it has expired (database clock), the leader
//! renews it, and a leader that cannot renew stands down on its own, before anyone else can
//! take over. Every new holder gets a higher term; the term fences the leader's writes.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{LEASE_CHANNEL, Leadership, Role, SHARD};
use crate::store::{Fence, StoreError};

/// Takes the lease if it has expired (or was released).
const ACQUIRE: &str = "\
INSERT INTO leases (shard, holder, term, expires_at)
VALUES ($1, $2, 1, now() + make_interval(secs => $3))
ON CONFLICT (shard) DO UPDATE
    SET holder = EXCLUDED.holder, term = leases.term + 1, expires_at = EXCLUDED.expires_at
    WHERE leases.expires_at <= now()
RETURNING term";

/// How long until the current lease expires, in seconds (negative when it has).
const REMAINING: &str =
    "SELECT EXTRACT(EPOCH FROM expires_at - now())::float8 FROM leases WHERE shard = $1";

const RENEW: &str = "\
UPDATE leases SET expires_at = now() + make_interval(secs => $4)
WHERE shard = $1 AND holder = $2 AND term = $3 AND expires_at > now()
RETURNING term";

const RELEASE: &str =
    "UPDATE leases SET expires_at = now() WHERE shard = $1 AND holder = $2 AND term = $3";

const HEARTBEAT: &str = "\
INSERT INTO replicas (id, address, started_at, heartbeat_at) VALUES ($1, $2, $3, now())
ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, heartbeat_at = now()";

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often the leader renews (and every replica heartbeats).
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// A leader whose last successful renewal started this long ago stands down: the lease
    /// has at least this margin left at the database when it does.
    fn stand_down_after(&self) -> Duration {
        self.ttl - self.ttl / 5
    }
}

struct Held {
    fence: Fence,
    /// Local monotonic instant after which this replica no longer considers itself leader.
    valid_until: Instant,
}

/// Keeps (or competes for) the refresh lease and the replica heartbeat.
pub struct LeaseKeeper {
    held: Option<Held>,
    pool: PgPool,
    replica_id: String,
    address: String,
    started_at: DateTime<Utc>,
    settings: LeaseSettings,
    role: watch::Sender<Role>,
    nudge: Arc<Notify>,
}

impl LeaseKeeper {
    /// A keeper starting as follower, the live view of its role, and the handle that makes a
    /// follower try at once (the change feed pokes it when a leader releases the lease).
    pub fn new(
        pool: PgPool,
        replica_id: String,
        address: String,
        started_at: DateTime<Utc>,
        settings: LeaseSettings,
    ) -> (Self, Leadership, Arc<Notify>) {
        let (role, view) = watch::channel(Role::Follower);
        let nudge = Arc::new(Notify::new());
        let keeper = Self {
            held: None,
            pool,
            replica_id,
            address,
            started_at,
            settings,
            role,
            nudge: Arc::clone(&nudge),
        };
        (keeper, Leadership(view), nudge)
    }

    /// One round: heartbeat, then renew the lease if held or try to take it if not.
    pub async fn compete(&mut self) {
        if let Err(err) = self.heartbeat().await {
            tracing::warn!(error = %err, "replica heartbeat failed");
        }
        let attempt = Instant::now();
        self.held = match self.held.take() {
            Some(current) => self.renew(current, attempt).await,
            None => self.try_acquire(attempt).await,
        };
        self.publish();
    }

    /// Competes until `shutdown`, then releases the lease if held, so a successor takes over
    /// at once, and removes this replica's heartbeat.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wait = match &self.held {
                Some(_) => self.settings.renew_every,
                None => self.until_expiry().await,
            };
            let valid_until = self.held.as_ref().map(|h| h.valid_until);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = self.nudge.notified(), if valid_until.is_none() => {}
                () = sleep_until(valid_until) => {
                    tracing::warn!("could not renew the refresh lease in time; standing down");
                    self.held = None;
                    self.publish();
                }
            }
            self.compete().await;
        }
        self.role.send_replace(Role::Follower);
        if let Some(held) = self.held.take() {
            self.release(&held.fence).await;
        }
        self.leave().await;
    }

    async fn try_acquire(&self, attempt: Instant) -> Option<Held> {
        let ttl = self.settings.ttl.as_secs_f64();
        let query = sqlx::query_scalar(ACQUIRE)
            .bind(SHARD)
            .bind(&self.replica_id)
            .bind(ttl)
            .fetch_optional(&self.pool);
        // An answer that comes after the stand-down point is no lease for us.
        let won = bounded(attempt + self.settings.stand_down_after(), query).await;
        match won {
            Ok(Some(term)) => {
                tracing::info!(term, replica = %self.replica_id, "took the refresh lease: leading");
                Some(self.held(term, attempt))
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "could not compete for the refresh lease");
                None
            }
        }
    }

    async fn renew(&self, current: Held, attempt: Instant) -> Option<Held> {
        let query = sqlx::query_scalar(RENEW)
            .bind(SHARD)
            .bind(&current.fence.holder)
            .bind(current.fence.term)
            .bind(self.settings.ttl.as_secs_f64())
            .fetch_optional(&self.pool);
        // A renewal still pending at the stand-down point must not keep this replica leading.
        let renewed = bounded(current.valid_until, query).await;
        match renewed {
            Ok(Some(term)) => Some(self.held(term, attempt)),
            Ok(None) => {
                tracing::warn!(
                    term = current.fence.term,
                    "the refresh lease was taken over; standing down"
                );
                None
            }
            Err(err) if Instant::now() < current.valid_until => {
                tracing::warn!(error = %err, "could not renew the refresh lease; will retry");
                Some(current)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the refresh lease in time; standing down");
                None
            }
        }
    }

    fn held(&self, term: i64, attempt: Instant) -> Held {
        Held {
            fence: Fence {
                shard: SHARD.to_owned(),
                holder: self.replica_id.clone(),
                term,
            },
            valid_until: attempt + self.settings.stand_down_after(),
        }
    }

    fn publish(&self) {
        let role = match &self.held {
            Some(held) => Role::Leader(Some(held.fence.clone())),
            None => Role::Follower,
        };
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    /// How long a follower waits before its next attempt: until the current lease expires
    /// (plus a little jitter so followers do not collide), at most one renewal period.
    async fn until_expiry(&self) -> Duration {
        let query = sqlx::query_scalar(REMAINING)
            .bind(SHARD)
            .fetch_optional(&self.pool);
        let remaining: Result<Option<f64>, sqlx::Error> =
            bounded(Instant::now() + self.settings.renew_every, query).await;
        let jitter = Duration::from_millis(rand::random_range(0..100));
        let remaining = match remaining {
            Ok(Some(seconds)) if seconds > 0.0 => Duration::from_secs_f64(seconds),
            _ => Duration::ZERO,
        };
        (remaining + jitter).min(self.settings.renew_every)
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let query = sqlx::query(HEARTBEAT)
            .bind(&self.replica_id)
            .bind(&self.address)
            .bind(self.started_at)
            .execute(&self.pool);
        bounded(Instant::now() + self.settings.renew_every, query).await?;
        Ok(())
    }

    async fn release(&self, fence: &Fence) {
        let released = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(RELEASE)
                .bind(&fence.shard)
                .bind(&fence.holder)
                .bind(fence.term)
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(LEASE_CHANNEL)
                .bind(fence.term.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        match released.await {
            Ok(()) => tracing::info!(term = fence.term, "released the refresh lease"),
            Err(err) => {
                tracing::warn!(error = %err, "could not release the refresh lease; it will expire")
            }
        }
    }

    async fn leave(&self) {
        let left = sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.replica_id)
            .execute(&self.pool)
            .await;
        if let Err(err) = left {
            tracing::warn!(error = %err, "could not remove this replica's heartbeat");
        }
    }
}

/// Runs a database call, abandoning it at `deadline` (reported as a pool timeout).
async fn bounded<T>(
    deadline: Instant,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout_at(deadline, query)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
