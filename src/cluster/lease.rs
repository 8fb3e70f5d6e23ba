//! The shard leases. Every round a replica heartbeats, renews the shards it holds, takes free
//! or expired shards up to its fair share (shards / live replicas, from the heartbeats) and
//! hands its surplus over, once the surplus's flights are done. A shard left free for a whole
//! renewal period is taken by anyone, share or not, so none stays unowned. A replica that
//! cannot renew in time stands down on its own, before anyone else can take over; every new
//! holder of a shard gets a higher term, and the term fences the holder's writes.

use std::{pin::pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{LEASE_CHANNEL, Ownership, ShardMap};
use crate::store::{Fence, StoreError};

const SHARD_COUNT: &str = "SELECT shard_count FROM fleet_settings";

/// Adds the lease rows of shards `0..$1` that do not exist yet (free).
const ENSURE_SHARDS: &str = "\
INSERT INTO shard_leases (shard, holder, term, expires_at)
SELECT shard, '', 0, '-infinity' FROM generate_series(0, $1 - 1) AS shard
ON CONFLICT (shard) DO NOTHING";

/// Renews the leases `$2` (shards) at terms `$3` that `$1` still holds.
const RENEW: &str = "\
UPDATE shard_leases AS l SET expires_at = now() + make_interval(secs => $4)
FROM unnest($2::int[], $3::bigint[]) AS h(shard, term)
WHERE l.shard = h.shard AND l.term = h.term AND l.holder = $1 AND l.expires_at > now()
RETURNING l.shard, l.term";

/// Takes up to `$4` shards below `$3` (all, when NULL) that expired at least `$5` seconds ago.
const ACQUIRE: &str = "\
UPDATE shard_leases
SET holder = $1, term = term + 1, expires_at = now() + make_interval(secs => $2)
WHERE shard IN (
    SELECT shard FROM shard_leases
    WHERE shard < $3 AND expires_at <= now() - make_interval(secs => $5)
    ORDER BY shard LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING shard, term";

/// The live replicas (heartbeat within `$1` seconds), and how long until the first lease
/// another replica holds expires.
const SURVEY: &str = "\
SELECT
    (SELECT count(*) FROM replicas WHERE heartbeat_at > now() - make_interval(secs => $1)),
    (SELECT EXTRACT(EPOCH FROM min(expires_at) - now())::float8 FROM shard_leases
     WHERE shard < $2 AND holder <> $3 AND expires_at > now())";

const RELEASE: &str = "\
UPDATE shard_leases AS l SET expires_at = now()
FROM unnest($2::int[], $3::bigint[]) AS h(shard, term)
WHERE l.shard = h.shard AND l.term = h.term AND l.holder = $1";

const HEARTBEAT: &str = "\
INSERT INTO replicas (id, address, started_at, heartbeat_at) VALUES ($1, $2, $3, now())
ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, heartbeat_at = now()";

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often a replica renews (and heartbeats).
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// A holder whose last successful renewal started this long ago stands down: the lease
    /// has at least this margin left at the database when it does.
    fn stand_down_after(&self) -> Duration {
        self.ttl - self.ttl / 5
    }
}

/// The fleet's shard count as stored, with a lease row for each shard.
pub async fn shard_map(pool: &PgPool) -> Result<ShardMap, StoreError> {
    let count: i32 = sqlx::query_scalar(SHARD_COUNT).fetch_one(pool).await?;
    sqlx::query(ENSURE_SHARDS).bind(count).execute(pool).await?;
    Ok(ShardMap::new(u32::try_from(count).unwrap_or(1)))
}

/// A shard lease this replica holds.
#[derive(Debug, Clone)]
struct Held {
    fence: Fence,
    /// Local monotonic instant after which this replica no longer considers it held.
    valid_until: Instant,
}

/// What a round learned of the fleet.
#[derive(Debug, Clone, Copy)]
struct Survey {
    live_replicas: u32,
    /// How long until the first lease of another replica expires.
    next_foreign_expiry: Option<Duration>,
}

/// The identity a replica heartbeats with.
pub struct ReplicaIdentity {
    /// Its id.
    pub id: String,
    /// The address it serves on.
    pub address: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// Keeps this replica's shard leases and its heartbeat.
pub struct LeaseKeeper {
    held: Vec<Held>,
    pool: PgPool,
    identity: ReplicaIdentity,
    settings: LeaseSettings,
    ownership: Arc<Ownership>,
    nudge: Arc<Notify>,
    next_foreign_expiry: Option<Duration>,
}

impl LeaseKeeper {
    /// A keeper holding nothing yet, publishing into `ownership`, and the handle that makes
    /// it run a round at once (the change feed pokes it when a replica releases shards).
    pub fn new(
        pool: PgPool,
        identity: ReplicaIdentity,
        settings: LeaseSettings,
        ownership: Arc<Ownership>,
    ) -> (Self, Arc<Notify>) {
        let nudge = Arc::new(Notify::new());
        let keeper = Self {
            held: Vec::new(),
            pool,
            identity,
            settings,
            ownership,
            nudge: Arc::clone(&nudge),
            next_foreign_expiry: None,
        };
        (keeper, nudge)
    }

    /// One round: heartbeat, renew, then take up to the fair share or hand the surplus over.
    pub async fn compete(&mut self) {
        if let Err(err) = self.heartbeat().await {
            tracing::warn!(error = %err, "replica heartbeat failed");
        }
        let attempt = Instant::now();
        self.renew(attempt).await;
        let Some(survey) = self.survey().await else {
            self.publish(&[]);
            return;
        };
        self.next_foreign_expiry = survey.next_foreign_expiry;
        let share = fair_share(self.ownership.shard_map().count(), survey.live_replicas);
        let surplus = self.held.len().saturating_sub(share);
        if self.held.len() < share {
            self.acquire(Some(share - self.held.len()), Duration::ZERO, attempt)
                .await;
        }
        self.acquire(None, self.settings.renew_every, attempt).await;
        let surplus = self.surplus(surplus);
        self.publish(&surplus);
        if !surplus.is_empty() {
            self.hand_over(surplus, attempt + self.settings.renew_every / 2)
                .await;
        }
    }

    /// Runs rounds until `shutdown`, then hands every shard over (waiting for their flights
    /// while the leases last) and removes this replica's heartbeat.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let valid_until = self.held.iter().map(|h| h.valid_until).min();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.until_next_round()) => {}
                () = self.nudge.notified() => {}
                () = sleep_until(valid_until) => {
                    tracing::warn!("could not renew the shard leases in time; standing down");
                    let now = Instant::now();
                    self.held.retain(|held| held.valid_until > now);
                    self.publish(&[]);
                }
            }
            self.compete().await;
        }
        self.leave().await;
    }

    /// One renewal period, or until another replica's lease expires if that is sooner (plus
    /// a little jitter so replicas do not collide).
    fn until_next_round(&self) -> Duration {
        let jitter = Duration::from_millis(rand::random_range(0..100));
        match self.next_foreign_expiry {
            Some(expiry) => (expiry + jitter).min(self.settings.renew_every),
            None => self.settings.renew_every,
        }
    }

    async fn renew(&mut self, attempt: Instant) {
        let Some(deadline) = self.held.iter().map(|h| h.valid_until).min() else {
            return;
        };
        let (shards, terms) = shards_and_terms(self.held.iter().map(|h| &h.fence));
        let query = sqlx::query_as::<_, (i32, i64)>(RENEW)
            .bind(&self.identity.id)
            .bind(shards)
            .bind(terms)
            .bind(self.settings.ttl.as_secs_f64())
            .fetch_all(&self.pool);
        // A renewal still pending at the stand-down point must not keep a shard held.
        match bounded(deadline, query).await {
            Ok(renewed) => {
                let lost = self.held.len() - renewed.len();
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "shard leases were taken over; standing down from them"
                    );
                }
                let valid_until = attempt + self.settings.stand_down_after();
                self.held = renewed
                    .into_iter()
                    .map(|(shard, term)| self.holding(shard, term, valid_until))
                    .collect();
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the shard leases; will retry")
            }
        }
    }

    /// Takes up to `limit` shards (any number when `None`) that have been free for `free_for`.
    async fn acquire(&mut self, limit: Option<usize>, free_for: Duration, attempt: Instant) {
        let limit = limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let count = i32::try_from(self.ownership.shard_map().count()).unwrap_or(i32::MAX);
        let query = sqlx::query_as::<_, (i32, i64)>(ACQUIRE)
            .bind(&self.identity.id)
            .bind(self.settings.ttl.as_secs_f64())
            .bind(count)
            .bind(limit)
            .bind(free_for.as_secs_f64())
            .fetch_all(&self.pool);
        // An answer that comes after the stand-down point is no lease for us.
        let valid_until = attempt + self.settings.stand_down_after();
        match bounded(valid_until, query).await {
            Ok(won) => {
                for (shard, term) in won {
                    tracing::info!(shard, term, replica = %self.identity.id, "took a shard lease");
                    let held = self.holding(shard, term, valid_until);
                    self.held.push(held);
                }
                self.held.sort_by_key(|h| h.fence.shard);
            }
            Err(err) => tracing::warn!(error = %err, "could not compete for shard leases"),
        }
    }

    /// The `count` shards to hand over: the highest held.
    fn surplus(&self, count: usize) -> Vec<u32> {
        let held = self.held.iter().map(|h| h.fence.shard);
        held.rev().take(count).collect()
    }

    /// Releases those of `shards` whose flights end by `deadline`; the others stay handed
    /// over (no new flight) and are released in a later round.
    async fn hand_over(&mut self, shards: Vec<u32>, deadline: Instant) {
        let idle = self.wait_idle(&shards, deadline).await;
        let released: Vec<Held> = self
            .held
            .iter()
            .filter(|h| idle.contains(&h.fence.shard))
            .cloned()
            .collect();
        if released.is_empty() {
            return;
        }
        match self.release(&released, false).await {
            Ok(()) => {
                tracing::info!(shards = ?idle, "handed shard leases over");
                self.held.retain(|h| !idle.contains(&h.fence.shard));
                let waiting: Vec<u32> = shards.into_iter().filter(|s| !idle.contains(s)).collect();
                self.publish(&waiting);
            }
            Err(err) => tracing::warn!(error = %err, "could not hand shard leases over"),
        }
    }

    /// Waits until every one of `shards` has no flight running, or `deadline`; returns the
    /// idle ones.
    async fn wait_idle(&self, shards: &[u32], deadline: Instant) -> Vec<u32> {
        loop {
            let mut ended = pin!(self.ownership.flight_ended());
            ended.as_mut().enable();
            let idle = self.ownership.idle(shards);
            if idle.len() == shards.len() {
                return idle;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(deadline) => return self.ownership.idle(shards),
            }
        }
    }

    fn holding(&self, shard: i32, term: i64, valid_until: Instant) -> Held {
        Held {
            fence: Fence {
                shard: u32::try_from(shard).unwrap_or_default(),
                holder: self.identity.id.clone(),
                term,
            },
            valid_until,
        }
    }

    fn publish(&self, draining: &[u32]) {
        let fences = self.held.iter().map(|h| h.fence.clone()).collect();
        self.ownership.hold(fences, draining);
    }

    async fn survey(&self) -> Option<Survey> {
        let count = i32::try_from(self.ownership.shard_map().count()).unwrap_or(i32::MAX);
        let query = sqlx::query_as::<_, (i64, Option<f64>)>(SURVEY)
            .bind(self.settings.ttl.as_secs_f64())
            .bind(count)
            .bind(&self.identity.id)
            .fetch_one(&self.pool);
        match bounded(Instant::now() + self.settings.renew_every, query).await {
            Ok((live, next_expiry)) => Some(Survey {
                live_replicas: u32::try_from(live).unwrap_or(u32::MAX),
                next_foreign_expiry: next_expiry
                    .filter(|seconds| *seconds > 0.0)
                    .map(Duration::from_secs_f64),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "could not survey the fleet");
                None
            }
        }
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let query = sqlx::query(HEARTBEAT)
            .bind(&self.identity.id)
            .bind(&self.identity.address)
            .bind(self.identity.started_at)
            .execute(&self.pool);
        bounded(Instant::now() + self.settings.renew_every, query).await?;
        Ok(())
    }

    /// Hands every shard over, waiting for their flights while the leases last, then releases
    /// them and removes the heartbeat in one transaction, so the others rebalance at once.
    async fn leave(mut self) {
        let shards: Vec<u32> = self.held.iter().map(|h| h.fence.shard).collect();
        self.publish(&shards);
        if let Some(deadline) = self.held.iter().map(|h| h.valid_until).min() {
            self.wait_idle(&shards, deadline).await;
        }
        let held = std::mem::take(&mut self.held);
        self.publish(&[]);
        match self.release(&held, true).await {
            Ok(()) => tracing::info!(shards = held.len(), "released the shard leases and left"),
            Err(err) => {
                tracing::warn!(error = %err, "could not release the shard leases; they will expire")
            }
        }
    }

    /// Releases `held` (and removes the heartbeat when `leaving`), telling the others.
    async fn release(&self, held: &[Held], leaving: bool) -> Result<(), StoreError> {
        let (shards, terms) = shards_and_terms(held.iter().map(|h| &h.fence));
        let mut tx = self.pool.begin().await?;
        sqlx::query(RELEASE)
            .bind(&self.identity.id)
            .bind(shards)
            .bind(terms)
            .execute(&mut *tx)
            .await?;
        if leaving {
            sqlx::query("DELETE FROM replicas WHERE id = $1")
                .bind(&self.identity.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(LEASE_CHANNEL)
            .bind(&self.identity.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A replica's fair share of `shards` among `live` replicas, rounded up so every shard fits.
fn fair_share(shards: u32, live: u32) -> usize {
    usize::try_from(shards.div_ceil(live.max(1))).unwrap_or(usize::MAX)
}

fn shards_and_terms<'a>(fences: impl Iterator<Item = &'a Fence>) -> (Vec<i32>, Vec<i64>) {
    fences
        .map(|f| (i32::try_from(f.shard).unwrap_or(i32::MAX), f.term))
        .unzip()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_rounds_up_so_every_shard_has_room() {
        assert_eq!(fair_share(64, 1), 64);
        assert_eq!(fair_share(64, 3), 22);
        assert_eq!(fair_share(64, 64), 1);
        assert_eq!(fair_share(64, 100), 1);
        assert_eq!(
            fair_share(64, 0),
            64,
            "no heartbeat visible yet: this one counts"
        );
    }
}
