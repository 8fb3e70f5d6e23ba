//! The change feed on Postgres: every replica LISTENs for committed changes and loads the
//! rows they name into its cache (so Resolve and WatchKeys see them), serves the refresh
//! requests for providers of the shards it owns, and wakes its lease keeper when a replica
//! releases shards. A lost connection is followed by a reconnect and a full
//! resynchronisation, so no change is missed across a database restart.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Cluster, LEASE_CHANNEL, REFRESH_CHANNEL, REFRESH_DONE_CHANNEL, RefreshRequest};
use crate::{
    access::AccessRegistry,
    domain::ProviderKey,
    state::cache::KeyCache,
    store::{ACCESS_CHANNEL, CHANGES_CHANNEL, Change, Store, StoreError},
};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A database call of the feed that takes longer is abandoned and the connection renewed:
/// a black-holed network must not freeze this replica's view.
const DATABASE_DEADLINE: Duration = Duration::from_secs(15);

/// What the change feed reads from and writes to.
pub struct FeedParts {
    /// The database.
    pub pool: PgPool,
    /// Rows named by notifications are read from here.
    pub store: Arc<dyn Store>,
    /// This replica's key sets.
    pub cache: Arc<KeyCache>,
    /// This replica's access state, reloaded on every access change.
    pub access: Arc<AccessRegistry>,
    /// Where refresh requests for providers of this replica's shards go (the refresher serves
    /// them).
    pub refresh_requests: mpsc::Sender<RefreshRequest>,
    /// Receives answers to this replica's own refresh requests.
    pub cluster: Arc<Cluster>,
    /// Woken when a replica releases shard leases.
    pub lease_nudge: Arc<Notify>,
}

/// Follows the database's change notifications into this replica's cache and access
/// registry.
pub struct ChangeFeed {
    parts: FeedParts,
}

enum Ended {
    Shutdown,
    ConnectionLost,
}

impl ChangeFeed {
    /// A feed over `parts`.
    pub fn new(parts: FeedParts) -> Self {
        Self { parts }
    }

    /// Connects, LISTENs and resynchronises the cache: once this returns, no later change is
    /// missed. Done before the replica reports itself serving.
    pub async fn connect(&self) -> Result<PgListener, StoreError> {
        let channels = [
            CHANGES_CHANNEL,
            ACCESS_CHANNEL,
            REFRESH_CHANNEL,
            REFRESH_DONE_CHANNEL,
            LEASE_CHANNEL,
        ];
        let listener = within_deadline(async {
            let mut listener = PgListener::connect_with(&self.parts.pool).await?;
            listener.listen_all(channels).await?;
            Ok(listener)
        })
        .await?;
        within_deadline(self.resync()).await?;
        Ok(listener)
    }

    /// Follows `listener` until `shutdown`, reconnecting with backoff (and resynchronising)
    /// whenever the database is lost.
    pub async fn run(self, listener: PgListener, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut connected = Some(listener);
        loop {
            let result = match connected.take() {
                Some(listener) => self.follow(listener, &shutdown).await,
                None => match self.connect().await {
                    Ok(listener) => {
                        retry = FIRST_RETRY;
                        self.follow(listener, &shutdown).await
                    }
                    Err(err) => Err(err),
                },
            };
            match result {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::ConnectionLost) => {
                    tracing::warn!("change feed lost its database connection; reconnecting");
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?retry, "change feed interrupted")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    /// Applies notifications until the connection or the process ends.
    async fn follow(
        &self,
        mut listener: PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Ended, StoreError> {
        loop {
            let notification = tokio::select! {
                () = shutdown.cancelled() => return Ok(Ended::Shutdown),
                notification = listener.try_recv() => notification?,
            };
            let Some(notification) = notification else {
                return Ok(Ended::ConnectionLost);
            };
            match notification.channel() {
                CHANGES_CHANNEL => within_deadline(self.apply(notification.payload())).await?,
                ACCESS_CHANNEL => within_deadline(self.reload_access()).await?,
                REFRESH_CHANNEL => self.serve_refresh_request(notification.payload()),
                REFRESH_DONE_CHANNEL => self.parts.cluster.answered(notification.payload()),
                LEASE_CHANNEL => self.parts.lease_nudge.notify_one(),
                other => tracing::debug!(channel = other, "ignoring notification"),
            }
        }
    }

    async fn apply(&self, payload: &str) -> Result<(), StoreError> {
        match Change::parse(payload) {
            Some(Change::Updated(key, seq)) if self.parts.cache.change_seq(&key) < seq => {
                self.load(&key, seq).await?;
            }
            Some(Change::Updated(..)) => {}
            Some(Change::Removed(key, seq)) => self.parts.cache.apply_removal(&key, seq),
            None => tracing::warn!(payload, "ignoring a malformed change notification"),
        }
        Ok(())
    }

    /// Loads the current row of `key` into the cache; if it is gone, the removal applies at
    /// `seq` (a later state, if any, has a higher sequence and still wins).
    async fn load(&self, key: &ProviderKey, seq: u64) -> Result<(), StoreError> {
        match self.parts.store.get(key).await {
            Ok(Some(record)) => {
                self.parts.cache.apply(record);
            }
            Ok(None) => self.parts.cache.apply_removal(key, seq),
            // Reported by the store; this replica keeps what it holds for that provider.
            Err(StoreError::Corrupt { .. }) => {}
            Err(err) => return Err(err),
        }
        Ok(())
    }

    /// Brings the cache in line with the store: newer rows are applied, providers the store
    /// no longer has are removed.
    async fn resync(&self) -> Result<(), StoreError> {
        let records = self.parts.store.load_all().await?;
        let stored: HashSet<ProviderKey> =
            records.iter().map(|r| r.registration.key.clone()).collect();
        for record in records {
            self.parts.cache.apply(Arc::unwrap_or_clone(record));
        }
        for record in self.parts.cache.all() {
            let key = &record.registration.key;
            if !stored.contains(key) {
                self.load(key, record.change_seq).await?;
            }
        }
        self.reload_access().await?;
        tracing::info!(
            providers = stored.len(),
            "change feed synchronised with the store"
        );
        Ok(())
    }

    async fn reload_access(&self) -> Result<(), StoreError> {
        let state = self.parts.store.load_access().await?;
        self.parts.access.replace(state);
        Ok(())
    }

    fn serve_refresh_request(&self, payload: &str) {
        let Some(request) = RefreshRequest::parse(payload) else {
            tracing::warn!(payload, "ignoring a malformed refresh request");
            return;
        };
        let cluster = &self.parts.cluster;
        if !cluster.ownership().owns(&request.key) || !cluster.accept_request(&request) {
            return;
        }
        if let Err(err) = self.parts.refresh_requests.try_send(request) {
            // The asking replica sends it again until its deadline; nothing is lost here.
            tracing::warn!(error = %err, "refresh requests are arriving faster than they are served; dropping one");
            cluster.drop_request(&err.into_inner());
        }
    }
}

async fn within_deadline<T>(
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(DATABASE_DEADLINE, work)
        .await
        .map_err(|_| StoreError::Timeout(DATABASE_DEADLINE))?
}
