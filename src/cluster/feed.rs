//! The change feed on Postgres: every replica LISTENs for committed changes and loads the
//! rows they name into its cache (so Resolve and WatchKeys see them), serves refresh
//! requests while it leads, and wakes its lease keeper when a leader lets go. A lost
//! connection is followed by a reconnect and a full resynchronisation, so no change is
//! missed across a database restart.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Cluster, LEASE_CHANNEL, REFRESH_CHANNEL, REFRESH_DONE_CHANNEL, RefreshRequest};
use crate::{
    cache::KeyCache,
    domain::ProviderKey,
    refresh::Refresher,
    store::{CHANGES_CHANNEL, Change, Store, StoreError},
};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A database call of the feed that takes longer is abandoned and the connection renewed:
/// a black-holed network must not freeze this replica's view.
const DATABASE_DEADLINE: Duration = Duration::from_secs(15);

/// Follows the database's change notifications into this replica's cache.
pub struct ChangeFeed {
    pool: PgPool,
    store: Arc<dyn Store>,
    cache: Arc<KeyCache>,
    refresher: Arc<Refresher>,
    cluster: Arc<Cluster>,
    lease_nudge: Arc<Notify>,
}

enum Ended {
    Shutdown,
    ConnectionLost,
}

impl ChangeFeed {
    /// A feed into `cache`, loading rows from `store`, serving refresh requests through
    /// `refresher` while `cluster` says this replica leads, and passing answers to its own
    /// requests back to `cluster`.
    pub fn new(
        pool: PgPool,
        store: Arc<dyn Store>,
        cache: Arc<KeyCache>,
        refresher: Arc<Refresher>,
        cluster: Arc<Cluster>,
        lease_nudge: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            store,
            cache,
            refresher,
            cluster,
            lease_nudge,
        }
    }

    /// Connects, LISTENs and resynchronises the cache: once this returns, no later change is
    /// missed. Done before the replica reports itself serving.
    pub async fn connect(&self) -> Result<PgListener, StoreError> {
        let channels = [
            CHANGES_CHANNEL,
            REFRESH_CHANNEL,
            REFRESH_DONE_CHANNEL,
            LEASE_CHANNEL,
        ];
        let listener = within_deadline(async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
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
                REFRESH_CHANNEL => self.serve_refresh_request(notification.payload()),
                REFRESH_DONE_CHANNEL => self.cluster.answered(notification.payload()),
                LEASE_CHANNEL => self.lease_nudge.notify_one(),
                other => tracing::debug!(channel = other, "ignoring notification"),
            }
        }
    }

    async fn apply(&self, payload: &str) -> Result<(), StoreError> {
        match Change::parse(payload) {
            Some(Change::Updated(key, seq)) if self.cache.change_seq(&key) < seq => {
                self.load(&key, seq).await?;
            }
            Some(Change::Updated(..)) => {}
            Some(Change::Removed(key, seq)) => self.cache.apply_removal(&key, seq),
            None => tracing::warn!(payload, "ignoring a malformed change notification"),
        }
        Ok(())
    }

    /// Loads the current row of `key` into the cache; if it is gone, the removal applies at
    /// `seq` (a later state, if any, has a higher sequence and still wins).
    async fn load(&self, key: &ProviderKey, seq: u64) -> Result<(), StoreError> {
        match self.store.get(key).await? {
            Some(record) => {
                self.cache.apply(record);
            }
            None => self.cache.apply_removal(key, seq),
        }
        Ok(())
    }

    /// Brings the cache in line with the store: newer rows are applied, providers the store
    /// no longer has are removed.
    async fn resync(&self) -> Result<(), StoreError> {
        let records = self.store.load_all().await?;
        let stored: HashSet<ProviderKey> =
            records.iter().map(|r| r.registration.key.clone()).collect();
        for record in records {
            self.cache.apply(record);
        }
        for record in self.cache.all() {
            let key = &record.registration.key;
            if !stored.contains(key) {
                self.load(key, record.change_seq).await?;
            }
        }
        tracing::info!(
            providers = stored.len(),
            "change feed synchronised with the store"
        );
        Ok(())
    }

    fn serve_refresh_request(&self, payload: &str) {
        let Some(request) = RefreshRequest::parse(payload) else {
            tracing::warn!(payload, "ignoring a malformed refresh request");
            return;
        };
        if self.cluster.leadership().is_leader() {
            self.refresher.serve(request);
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
