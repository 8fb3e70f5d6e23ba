//! Durable storage of registrations, last good key sets and access control, behind the
//! `Store` trait: one SQL store (`SqlStore`) written once for Postgres (production and fleets:
//! refresh writes fenced by a shard lease and announced with NOTIFY) and for an embedded SQLite
//! file (a single node), with the real differences in `backend`. Reads on the request path
//! never come here; the cache is loaded from the store at start and kept in step by every
//! write.

mod access;
mod backend;
mod batch_decode;
mod change;
mod discovery;
mod providers;
mod row;
mod sql;
mod unreadable;

use std::{path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Pool, Postgres, Sqlite,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::sync::Arc;

use crate::{
    access::{AuditEvent, Origin},
    domain::{KeySource, PolicyOverrides, ProviderKey},
    state::record::ProviderRecord,
};

pub use access::{AccessStore, AuditQuery};
pub use change::{ACCESS_CHANNEL, CHANGES_CHANNEL, Change};
pub use row::{RefreshColumns, RegistrationColumns, StoredRow, UndecodedRefresh};
pub use unreadable::{RowPart, UnreadableRows, UnreadableRowsCollector};

/// File name of the embedded database inside the data directory.
pub const SQLITE_FILE: &str = "keyrelay.db";

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or rejected a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database did not answer in time.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row cannot be turned back into a record.
    #[error("stored row for {key} is unreadable: {reason}")]
    Corrupt {
        /// `tenant/provider` of the row.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory for the embedded database cannot be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Decoding the stored rows on the blocking pool stopped: a bug, or the runtime shutting
    /// down.
    #[error("decoding stored rows stopped: {0}")]
    Decoding(tokio::task::JoinError),
    /// `DATABASE_URL` names neither Postgres nor SQLite.
    #[error(
        "DATABASE_URL must start with postgres:// or postgresql:// (or sqlite: for an explicit file); got scheme {0:?}"
    )]
    UnsupportedUrl(String),
}

/// A registration to create or update.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    /// Tenant and provider.
    pub key: ProviderKey,
    /// Where the keys come from.
    pub source: KeySource,
    /// Policy overrides.
    pub overrides: PolicyOverrides,
}

/// The result of `Store::register`.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The stored record: a new one, or the existing one with its registration updated.
    pub record: ProviderRecord,
    /// Whether the registration is new.
    pub created: bool,
}

/// The shard lease a refresh write is fenced by: it applies only while this holder still
/// holds this term of the lease of the provider's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The provider's scheduling shard.
    pub shard: u32,
    /// This replica's id.
    pub holder: String,
    /// The lease term this replica won.
    pub term: i64,
}

/// Durable storage of provider records, and of access control (`AccessStore`).
#[async_trait]
pub trait Store: AccessStore + Send + Sync + 'static {
    /// Every stored record, in (tenant, provider) order. A row that cannot be read whole is
    /// reported and affects its own provider only (see `row`): left out when its
    /// registration is unreadable, quarantined when its key set is. Each record comes
    /// behind the `Arc` a cache keeps it in.
    async fn load_all(&self) -> Result<Vec<Arc<ProviderRecord>>, StoreError>;

    /// One stored record; `StoreError::Corrupt` when its registration is unreadable.
    async fn get(&self, key: &ProviderKey) -> Result<Option<ProviderRecord>, StoreError>;

    /// Creates or updates a registration under a new `revision`. An update keeps the key set;
    /// when the URL changes it drops the validators so the next fetch is unconditional. The
    /// next refresh is set to `fetch_by`: the registering replica fetches at once, and the
    /// scheduler steps in only if that fetch never reports. The audit event (registration
    /// before and after, by `origin`) is written in the same transaction.
    async fn register(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: DateTime<Utc>,
        fetch_by: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Registered, StoreError>;

    /// Removes a registration and its keys, with its audit event. Returns the change
    /// sequence of the removal, or `None` when there was no such registration.
    async fn unregister(
        &self,
        key: &ProviderKey,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Option<u64>, StoreError>;

    /// Writes the key set, validators and status of `record`, only if its registration
    /// revision is still the stored one and, with a `fence`, only while that lease term is
    /// held; `audits` are appended in the same transaction. Returns the new change
    /// sequence, or `None` when the write did not apply.
    async fn save_refresh(
        &self,
        record: &ProviderRecord,
        fence: Option<&Fence>,
        audits: &[AuditEvent],
    ) -> Result<Option<u64>, StoreError>;

    /// Writes the key set, validators and status of `record`, a pushed provider's, only if the
    /// stored row is still at `read_at` (the change sequence it was read at), with `audit` in
    /// the same transaction. Returns the new change sequence, or `None` when the row changed
    /// since (or is gone): read it again and retry.
    async fn save_pushed(
        &self,
        record: &ProviderRecord,
        read_at: u64,
        audit: &AuditEvent,
    ) -> Result<Option<u64>, StoreError>;

    /// Writes the revocation list, registration revision, updated time and key-set version
    /// of `record`, only if the stored row is still at `read_at` (the change sequence it was
    /// read at), with `audit` in the same transaction. Returns the new change sequence, or
    /// `None` when the row changed since (or is gone): read it again and retry.
    async fn save_revocations(
        &self,
        record: &ProviderRecord,
        read_at: u64,
        audit: &AuditEvent,
    ) -> Result<Option<u64>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the connections.
    async fn close(&self);
}

/// An opened store, and the Postgres pool behind it when there is one (fleet coordination
/// runs on it).
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The pool, on Postgres.
    pub postgres: Option<PgPool>,
    /// The unreadable rows the store has met.
    pub unreadable: Arc<UnreadableRows>,
}

/// Opens the store named by `database_url` (Postgres), or the embedded SQLite file in
/// `data_dir` when it is `None`, and unless `skip_migrations`, brings its schema up to date
/// (on Postgres under sqlx's advisory lock, so replicas starting together do not race).
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    max_connections: u32,
    skip_migrations: bool,
) -> Result<Opened, StoreError> {
    match database_url {
        None => {
            std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
            let options = SqliteConnectOptions::new().filename(data_dir.join(SQLITE_FILE));
            open_sqlite(options, skip_migrations).await
        }
        Some(url) if url.starts_with("sqlite:") => open_sqlite(url.parse()?, skip_migrations).await,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await?;
            if !skip_migrations {
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            }
            let store = SqlStore::<Postgres>::new(pool.clone());
            let unreadable = Arc::clone(&store.unreadable);
            Ok(Opened {
                store: Arc::new(store),
                postgres: Some(pool),
                unreadable,
            })
        }
        Some(url) => Err(StoreError::UnsupportedUrl(
            url.split(':').next().unwrap_or_default().to_owned(),
        )),
    }
}

async fn open_sqlite(
    options: SqliteConnectOptions,
    skip_migrations: bool,
) -> Result<Opened, StoreError> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    if !skip_migrations {
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    }
    let store = SqlStore::<Sqlite>::new(pool);
    let unreadable = Arc::clone(&store.unreadable);
    Ok(Opened {
        store: Arc::new(store),
        postgres: None,
        unreadable,
    })
}

/// The SQL store on database `B` (Postgres or SQLite).
pub struct SqlStore<B: sqlx::Database> {
    pool: Pool<B>,
    unreadable: Arc<UnreadableRows>,
}

impl<B: sqlx::Database> SqlStore<B> {
    /// A store over a migrated pool.
    fn new(pool: Pool<B>) -> Self {
        Self {
            pool,
            unreadable: Arc::default(),
        }
    }
}

fn sequence(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}
