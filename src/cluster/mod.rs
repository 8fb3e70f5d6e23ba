//! Fleet coordination on Postgres: which replica refreshes which providers (shards with a
//! lease and a fencing term each, balanced over the live replicas), the change feed that
//! keeps every replica's cache in step (LISTEN/NOTIFY with a full resynchronisation after
//! any lost connection), refresh requests to the replica owning a provider's shard, and the
//! cluster status. On the embedded store the single node owns every shard and there is no
//! feed.

mod collector;
mod feed;
mod forward;
mod lease;
mod ownership;
mod shard;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::time::Instant;

pub use collector::OwnershipCollector;
pub use feed::{ChangeFeed, FeedParts};
pub use forward::{
    REFRESH_CHANNEL, REFRESH_DONE_CHANNEL, RefreshKind, RefreshRequest, context_from_traceparent,
};
pub use lease::{LeaseKeeper, LeaseSettings, ReplicaIdentity, shard_map};
pub use ownership::{FlightPermit, Ownership, OwnershipChanges};
pub use shard::{ShardMap, shard_ranges};

use forward::Forwarding;

use crate::{domain::ProviderKey, store::StoreError};

/// NOTIFY channel on which a replica announces it released shard leases.
pub const LEASE_CHANNEL: &str = "keyrelay_lease";

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The shard.
    pub shard: u32,
    /// The replica holding it, or that held it last (empty when never held).
    pub holder: String,
    /// Its term (0 when never held).
    pub term: i64,
    /// When it expires unless renewed (database clock).
    pub expires_at: DateTime<Utc>,
}

/// One replica as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its id.
    pub id: String,
    /// The address it serves on.
    pub address: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat (database clock).
    pub heartbeat_at: DateTime<Utc>,
}

/// The fleet as seen from one replica.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// This replica's id.
    pub replica_id: String,
    /// `postgres` or `sqlite`.
    pub store: &'static str,
    /// Every shard's lease, by shard; none on a single node.
    pub shards: Vec<LeaseInfo>,
    /// How many shards the fleet has; 0 on a single node, which needs none.
    pub shard_count: u32,
    /// Replicas that sent a heartbeat recently.
    pub replicas: Vec<ReplicaInfo>,
    /// The embedded store's one replica, which refreshes every provider without a lease.
    pub single_node: bool,
}

impl ClusterStatus {
    /// The shards whose lease `holder` holds at `now`, sorted.
    pub fn shards_of(&self, holder: &str, now: DateTime<Utc>) -> Vec<u32> {
        let active = self.shards.iter().filter(|lease| lease.expires_at > now);
        active
            .filter(|lease| lease.holder == holder)
            .map(|lease| lease.shard)
            .collect()
    }

    /// The shards no replica holds at `now`, sorted.
    pub fn free_shards(&self, now: DateTime<Utc>) -> Vec<u32> {
        let free = self.shards.iter().filter(|lease| lease.expires_at <= now);
        free.map(|lease| lease.shard).collect()
    }
}

/// This replica's place in the fleet.
pub struct Cluster {
    replica_id: String,
    address: String,
    started_at: DateTime<Utc>,
    ownership: Arc<Ownership>,
    postgres: Option<PgPool>,
    heartbeat_window: Duration,
    /// Refresh requests this replica asks and serves.
    forwarding: Forwarding,
}

impl Cluster {
    /// A single node on the embedded store.
    pub fn single_node(replica_id: String, address: String, started_at: DateTime<Utc>) -> Self {
        Self {
            replica_id,
            address,
            started_at,
            ownership: Ownership::single_node(),
            postgres: None,
            heartbeat_window: Duration::ZERO,
            forwarding: Forwarding::default(),
        }
    }

    /// A replica of a Postgres fleet whose shards follow `ownership`.
    pub fn postgres(
        pool: PgPool,
        identity: &ReplicaIdentity,
        ownership: Arc<Ownership>,
        settings: &LeaseSettings,
    ) -> Self {
        Self {
            replica_id: identity.id.clone(),
            address: identity.address.clone(),
            started_at: identity.started_at,
            ownership,
            postgres: Some(pool),
            heartbeat_window: settings.ttl,
            forwarding: Forwarding::default(),
        }
    }

    /// This replica's shards, live.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Asks the owner of `key`'s shard to refresh it, until `deadline` (then `None`), sending
    /// the request again while no replica owns the shard. The answer is the change sequence
    /// of the state the refresh produced (or of the current state, when the owner's cooldown
    /// declined it). On a single node, which owns every shard, no answer comes.
    pub async fn request_refresh(
        &self,
        key: &ProviderKey,
        kind: RefreshKind,
        deadline: Instant,
    ) -> Result<Option<u64>, StoreError> {
        match &self.postgres {
            Some(pool) => self.forwarding.ask(pool, key, kind, deadline).await,
            None => {
                tokio::time::sleep_until(deadline).await;
                Ok(None)
            }
        }
    }

    /// The owner's answer to a request: wakes the caller waiting for it, if it is on this
    /// replica.
    fn answered(&self, payload: &str) {
        self.forwarding.answered(payload);
    }

    /// Whether this replica, owning the shard, should serve `request`: not when it is a
    /// resend of one it serves already or answered a moment ago.
    fn accept_request(&self, request: &RefreshRequest) -> bool {
        self.forwarding.first_sighting(request.id)
    }

    /// An accepted request was dropped after all: a resend of it will be served.
    fn drop_request(&self, request: &RefreshRequest) {
        self.forwarding.forget(request.id);
    }

    /// The owner answers request `id` with the change sequence of the resulting state.
    pub async fn answer(&self, id: u64, change_seq: u64) -> Result<(), StoreError> {
        self.forwarding.answering(id);
        match &self.postgres {
            Some(pool) => notify(pool, REFRESH_DONE_CHANNEL, &format!("{id}/{change_seq}")).await,
            None => Ok(()),
        }
    }

    /// The shard leases and the live replicas; a single node reports its heartbeat at `now`.
    pub async fn status(&self, now: DateTime<Utc>) -> Result<ClusterStatus, StoreError> {
        let Some(pool) = &self.postgres else {
            return Ok(self.single_node_status(now));
        };
        let shard_count = self.ownership.shard_map().count();
        let shards = sqlx::query_as::<_, (i32, String, i64, DateTime<Utc>)>(
            "SELECT shard, holder, term, expires_at FROM shard_leases WHERE shard < $1
             ORDER BY shard",
        )
        .bind(i64::from(shard_count))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(shard, holder, term, expires_at)| LeaseInfo {
            shard: u32::try_from(shard).unwrap_or_default(),
            holder,
            term,
            expires_at,
        })
        .collect();
        let window = i64::try_from(self.heartbeat_window.as_millis()).unwrap_or(i64::MAX);
        let replicas = sqlx::query_as::<_, (String, String, DateTime<Utc>, DateTime<Utc>)>(
            "SELECT id, address, started_at, heartbeat_at FROM replicas
             WHERE heartbeat_at > now() - make_interval(secs => $1::float8 / 1000) ORDER BY id",
        )
        .bind(window as f64)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, address, started_at, heartbeat_at)| ReplicaInfo {
            id,
            address,
            started_at,
            heartbeat_at,
        })
        .collect();
        Ok(ClusterStatus {
            replica_id: self.replica_id.clone(),
            store: "postgres",
            shards,
            shard_count,
            replicas,
            single_node: false,
        })
    }

    fn single_node_status(&self, now: DateTime<Utc>) -> ClusterStatus {
        ClusterStatus {
            replica_id: self.replica_id.clone(),
            store: "sqlite",
            shards: Vec::new(),
            shard_count: 0,
            replicas: vec![ReplicaInfo {
                id: self.replica_id.clone(),
                address: self.address.clone(),
                started_at: self.started_at,
                heartbeat_at: now,
            }],
            single_node: true,
        }
    }
}

async fn notify(pool: &PgPool, channel: &str, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A replica id unique enough for a fleet: host, process id and a random suffix.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "keyrelay".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}
