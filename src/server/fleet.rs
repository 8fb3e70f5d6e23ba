//! This replica's place in the fleet: on Postgres the cluster with its lease keeper, then,
//! once the services exist, the change feed and the lease competition (joined before
//! serving) and their background tasks; on the embedded store a single node that always
//! leads.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{StartupError, config::FleetConfig, tasks::Tasks};
use crate::{
    access::AccessRegistry,
    cluster::{self, ChangeFeed, Cluster, FeedParts, LeaseKeeper, LeaseSettings, RefreshRequest},
    refresh::Refresher,
    state::cache::KeyCache,
    store::Store,
};

/// Followers' refresh requests waiting for the leader's refresher.
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
    /// A single node without `postgres`, else a replica of its fleet, advertised at
    /// `address` unless configured otherwise.
    pub fn new(
        postgres: Option<PgPool>,
        config: &FleetConfig,
        lease: LeaseSettings,
        address: String,
        started_at: DateTime<Utc>,
    ) -> Self {
        let replica_id = config
            .replica_id
            .clone()
            .unwrap_or_else(cluster::default_replica_id);
        let address = config.advertise_address.clone().unwrap_or(address);
        let Some(pool) = postgres else {
            let cluster = Cluster::single_node(replica_id, address, started_at);
            return Self {
                cluster: Arc::new(cluster),
                postgres: None,
            };
        };
        let (keeper, leadership, nudge) = LeaseKeeper::new(
            pool.clone(),
            replica_id.clone(),
            address.clone(),
            started_at,
            lease,
        );
        let cluster = Cluster::postgres(
            pool.clone(),
            replica_id,
            address,
            started_at,
            leadership,
            &lease,
        );
        Self {
            cluster: Arc::new(cluster),
            postgres: Some(Postgres {
                pool,
                keeper,
                nudge,
            }),
        }
    }

    /// Follows the change feed and takes part in the lease, before serving, so the first
    /// calls neither miss a change nor wait for a leader that could be this replica.
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
    /// Runs the lease keeper, the change feed and the serving of followers' refresh
    /// requests until `shutdown`.
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
