//! This replica's place in the fleet: on Postgres the cluster with its lease keeper, then,
//! once the services exist, the change feed and the shard leases (joined before serving)
//! and their background tasks; on the embedded store a single node that owns every shard.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{StartupError, config::FleetConfig, tasks::Tasks};
use crate::{
    access::AccessRegistry,
    cluster::{
        self, ChangeFeed, Cluster, FeedParts, LeaseKeeper, LeaseSettings, Ownership,
        RefreshRequest, ReplicaIdentity,
    },
    refresh::Refresher,
    state::cache::KeyCache,
    store::Store,
};

/// Refresh requests for this replica's shards waiting for its refresher.
const REFRESH_REQUEST_QUEUE: usize = 1024;

/// The cluster, and on Postgres what it needs to join the fleet.
pub(super) struct Fleet {
    pub cluster: Arc<Cluster>,
    postgres: Option<Postgres>,
}

struct Postgres {
    pool: PgPool,
    keeper: LeaseKeeper,
    nudge: Arc<Notify>,
}

/// What the change feed keeps in step.
pub(super) struct Followed {
    pub store: Arc<dyn Store>,
    pub cache: Arc<KeyCache>,
    pub access: Arc<AccessRegistry>,
    pub refresher: Arc<Refresher>,
}

/// The fleet's background work, ready to run.
pub(super) struct FleetTasks {
    keeper: LeaseKeeper,
    feed: ChangeFeed,
    listener: PgListener,
    refresher: Arc<Refresher>,
    requests: mpsc::Receiver<RefreshRequest>,
}

impl Fleet {
    /// A single node without `postgres`, else a replica of its fleet (with the fleet's shard
    /// count read), advertised at `address` unless configured otherwise.
    pub async fn new(
        postgres: Option<PgPool>,
        config: &FleetConfig,
        lease: LeaseSettings,
        address: String,
        started_at: DateTime<Utc>,
    ) -> Result<Self, StartupError> {
        let replica_id = config
            .replica_id
            .clone()
            .unwrap_or_else(cluster::default_replica_id);
        let address = config.advertise_address.clone().unwrap_or(address);
        let Some(pool) = postgres else {
            let cluster = Cluster::single_node(replica_id, address, started_at);
            return Ok(Self {
                cluster: Arc::new(cluster),
                postgres: None,
            });
        };
        let ownership = Ownership::fleet(cluster::shard_map(&pool).await?);
        let identity = ReplicaIdentity {
            id: replica_id,
            address,
            started_at,
        };
        let cluster = Cluster::postgres(pool.clone(), &identity, Arc::clone(&ownership), &lease);
        let (keeper, nudge) = LeaseKeeper::new(pool.clone(), identity, lease, ownership);
        Ok(Self {
            cluster: Arc::new(cluster),
            postgres: Some(Postgres {
                pool,
                keeper,
                nudge,
            }),
        })
    }

    /// Follows the change feed and takes its shards, before serving, so the first calls
    /// neither miss a change nor wait for an owner that could be this replica.
    pub async fn join(self, followed: Followed) -> Result<Option<FleetTasks>, StartupError> {
        let Some(Postgres {
            pool,
            mut keeper,
            nudge,
        }) = self.postgres
        else {
            return Ok(None);
        };
        let (refresh_requests, requests) = mpsc::channel(REFRESH_REQUEST_QUEUE);
        let feed = ChangeFeed::new(FeedParts {
            pool,
            store: followed.store,
            cache: followed.cache,
            access: followed.access,
            refresh_requests,
            cluster: self.cluster,
            lease_nudge: nudge,
        });
        let listener = feed.connect().await?;
        keeper.compete().await;
        Ok(Some(FleetTasks {
            keeper,
            feed,
            listener,
            refresher: followed.refresher,
            requests,
        }))
    }
}

impl FleetTasks {
    /// Runs the lease keeper, the change feed and the serving of refresh requests for this
    /// replica's shards until `shutdown`.
    pub fn spawn(self, tasks: &mut Tasks, shutdown: &CancellationToken) {
        tasks.spawn("lease keeper", self.keeper.run(shutdown.child_token()));
        let feed = self.feed.run(self.listener, shutdown.child_token());
        tasks.spawn("change feed", feed);
        let serving = self
            .refresher
            .serve_requests(self.requests, shutdown.child_token());
        tasks.spawn("refresh requests", serving);
    }
}
