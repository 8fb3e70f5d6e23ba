//! Durable storage of registrations and last good key sets. One `Store` trait, one SQL
//! implementation shared by the two backends: Postgres for production and fleets, an
//! embedded SQLite file for a single node. Reads on the request path never come here; the
//! cache is loaded from the store at start and kept in step by every write.

mod row;
mod sql;

use std::{path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    domain::{JwksUrl, PolicyOverrides, ProviderKey},
    provider::ProviderRecord,
};

use sql::SqlStore;

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
    /// The JWKS URL.
    pub url: JwksUrl,
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

/// Durable storage of provider records.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every stored record, in (tenant, provider) order.
    async fn load_all(&self) -> Result<Vec<ProviderRecord>, StoreError>;

    /// Creates or updates a registration under a new `revision`. An update keeps the key set;
    /// when the URL changes it drops the validators so the next fetch is unconditional.
    async fn register(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Result<Registered, StoreError>;

    /// Removes a registration and its keys; `false` when there was none.
    async fn unregister(&self, key: &ProviderKey) -> Result<bool, StoreError>;

    /// Writes the key set, validators and status of `record`, only if its registration
    /// revision is still the stored one; `false` when the registration changed or vanished.
    async fn save_refresh(&self, record: &ProviderRecord) -> Result<bool, StoreError>;

    /// Closes the connections.
    async fn close(&self);
}

/// Opens the store named by `database_url` (Postgres), or the embedded SQLite file in
/// `data_dir` when it is `None`, and brings its schema up to date.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        None => {
            std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
            open_sqlite(SqliteConnectOptions::new().filename(data_dir.join(SQLITE_FILE))).await
        }
        Some(url) if url.starts_with("sqlite:") => open_sqlite(url.parse()?).await,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Ok(Arc::new(SqlStore::new(pool)))
        }
        Some(url) => Err(StoreError::UnsupportedUrl(
            url.split(':').next().unwrap_or_default().to_owned(),
        )),
    }
}

async fn open_sqlite(options: SqliteConnectOptions) -> Result<Arc<dyn Store>, StoreError> {
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
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(Arc::new(SqlStore::new(pool)))
}
