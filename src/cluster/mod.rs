//! Fleet coordination on Postgres: which replica refreshes which providers (shards with a
//! lease and a fencing term each, balanced over the live replicas), the change feed that
//! keeps every replica's cache in step (LISTEN/NOTIFY with a full resynchronisation after
//! any lost connection), refresh requests to the replica owning a provider's shard, and the
//! cluster status. On the embedded store the single node owns every shard and there is no
//! feed.

mod collector;
mod feed;
mod lease;
mod ownership;
mod shard;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;

pub use collector::OwnershipCollector;
pub use feed::{ChangeFeed, FeedParts};
pub use lease::{LeaseKeeper, LeaseSettings, ReplicaIdentity, shard_map};
pub use ownership::{FlightPermit, Ownership, OwnershipChanges};
pub use shard::{ShardMap, shard_ranges};

use crate::{domain::ProviderKey, store::StoreError};

/// NOTIFY channel on which replicas ask the owner of a provider's shard for a refresh.
pub const REFRESH_CHANNEL: &str = "keyrelay_refresh";

/// NOTIFY channel on which the owner answers a refresh request with the change sequence of
/// the resulting state.
pub const REFRESH_DONE_CHANNEL: &str = "keyrelay_refresh_done";

/// NOTIFY channel on which a replica announces it released shard leases.
pub const LEASE_CHANNEL: &str = "keyrelay_lease";

/// Why a replica asks the owner of a provider's shard for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// An admin asked: fetch now, even if fresh.
    Now,
    /// A verifier asked for a kid the set lacks: the owner's cooldown applies.
    UnknownKid,
}

/// A request for a refresh, as carried by NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    /// Why.
    pub kind: RefreshKind,
    /// Which provider.
    pub key: ProviderKey,
    /// Identifies the request in the owner's answer.
    pub id: u64,
    /// The asking replica's W3C `traceparent`, so the owner's work joins the same trace.
    pub trace_parent: Option<String>,
}

impl RefreshRequest {
    /// `kind/tenant/provider/id/traceparent` (the last part may be empty).
    fn payload(&self) -> String {
        let kind = match self.kind {
            RefreshKind::Now => "n",
            RefreshKind::UnknownKid => "k",
        };
        let key = &self.key;
        let trace = self.trace_parent.as_deref().unwrap_or_default();
        format!(
            "{kind}/{}/{}/{}/{trace}",
            key.tenant.as_str(),
            key.provider.as_str(),
            self.id
        )
    }

    fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('/');
        let kind = match parts.next()? {
            "n" => RefreshKind::Now,
            "k" => RefreshKind::UnknownKid,
            _ => return None,
        };
        let key = ProviderKey::parse(parts.next()?, parts.next()?).ok()?;
        let id = parts.next()?.parse().ok()?;
        let trace_parent = parts.next()?;
        let trace_parent = (!trace_parent.is_empty()).then(|| trace_parent.to_owned());
        parts.next().is_none().then_some(Self {
            kind,
            key,
            id,
            trace_parent,
        })
    }
}

/// The W3C `traceparent` of the current span, if it is being traced.
fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// The trace context a `traceparent` names.
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Parses the owner's answer `id/change_seq`.
fn parse_done(payload: &str) -> Option<(u64, u64)> {
    let (id, seq) = payload.split_once('/')?;
    Some((id.parse().ok()?, seq.parse().ok()?))
}

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
    /// This replica's requests awaiting the owner's answer.
    pending: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
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
            pending: Mutex::default(),
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
            pending: Mutex::default(),
        }
    }

    /// This replica's shards, live.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Asks the owner of `key`'s shard to refresh it. The answer is the change sequence of
    /// the state the refresh produced (or of the current state, when the owner's cooldown
    /// declined it). On a single node, which owns every shard, the answer never comes.
    pub async fn request_refresh(
        &self,
        key: &ProviderKey,
        kind: RefreshKind,
    ) -> Result<oneshot::Receiver<u64>, StoreError> {
        let (answer, answered) = oneshot::channel();
        let Some(pool) = &self.postgres else {
            return Ok(answered);
        };
        let request = RefreshRequest {
            kind,
            key: key.clone(),
            id: rand::random(),
            trace_parent: current_traceparent(),
        };
        lock(&self.pending).insert(request.id, answer);
        let sent = notify(pool, REFRESH_CHANNEL, &request.payload()).await;
        if sent.is_err() {
            lock(&self.pending).remove(&request.id);
        }
        sent.map(|()| answered)
    }

    /// The owner's answer to a request: wakes the caller waiting for it, if it is on this
    /// replica.
    fn answered(&self, payload: &str) {
        let Some((id, change_seq)) = parse_done(payload) else {
            tracing::warn!(payload, "ignoring a malformed refresh answer");
            return;
        };
        if let Some(waiting) = lock(&self.pending).remove(&id) {
            let _ = waiting.send(change_seq);
        }
    }

    /// The owner answers request `id` with the change sequence of the resulting state.
    pub async fn answer(&self, id: u64, change_seq: u64) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_requests_round_trip_and_garbage_is_ignored() {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        for (kind, trace_parent) in [
            (RefreshKind::Now, None),
            (RefreshKind::UnknownKid, Some(traceparent)),
        ] {
            let request = RefreshRequest {
                kind,
                key: key.clone(),
                id: 99,
                trace_parent,
            };
            assert_eq!(RefreshRequest::parse(&request.payload()), Some(request));
        }
        let garbage = [
            "",
            "n/acme/okta/1",
            "x/acme/okta/1/",
            "n/acme/okta/1//more",
            "k/ACME/okta/1/",
            "n/acme/okta/x/",
        ];
        for payload in garbage {
            assert_eq!(RefreshRequest::parse(payload), None, "{payload}");
        }
        assert_eq!(parse_done("7/42"), Some((7, 42)));
        assert_eq!(parse_done("7"), None);
    }
}
