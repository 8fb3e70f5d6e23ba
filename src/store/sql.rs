//! The SQL behind `Store`, written once for both backends: the statements use only syntax
//! that Postgres and SQLite share (`$n` parameters, `ON CONFLICT`, `CASE`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{
    NewRegistration, Registered, Store, StoreError,
    row::{ProviderRow, RefreshColumns},
};
use crate::{domain::ProviderKey, provider::ProviderRecord};

const SELECT_ALL: &str = "SELECT * FROM providers ORDER BY tenant, provider";

const SELECT_ONE: &str = "SELECT * FROM providers WHERE tenant = $1 AND provider = $2";

const INSERT_IF_ABSENT: &str = "\
INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (tenant, provider) DO NOTHING";

/// Right-hand sides see the old row, so the validators are dropped only when the URL changes.
const UPDATE_REGISTRATION: &str = "\
UPDATE providers SET
    jwks_url = $3,
    policy = $4,
    revision = $5,
    updated_at = $6,
    etag = CASE WHEN jwks_url = $3 THEN etag END,
    last_modified = CASE WHEN jwks_url = $3 THEN last_modified END,
    cache_policy = CASE WHEN jwks_url = $3 THEN cache_policy END
WHERE tenant = $1 AND provider = $2";

const DELETE: &str = "DELETE FROM providers WHERE tenant = $1 AND provider = $2";

const SAVE_REFRESH: &str = "\
UPDATE providers SET
    version = $4,
    jwks_json = $5,
    etag = $6,
    last_modified = $7,
    cache_policy = $8,
    fetched_at = $9,
    fresh_until = $10,
    last_attempt_at = $11,
    last_error = $12,
    consecutive_failures = $13,
    next_refresh_at = $14
WHERE tenant = $1 AND provider = $2 AND revision = $3";

/// The one thing sqlx's query results share but do not expose through a trait.
pub(super) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// A `Store` over any sqlx pool whose driver speaks the shared SQL above.
pub(super) struct SqlStore<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::QueryResult: RowsAffected,
    for<'r> ProviderRow: FromRow<'r, DB::Row>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn load_all(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows: Vec<ProviderRow> = sqlx::query_as(SELECT_ALL).fetch_all(&self.pool).await?;
        rows.into_iter().map(ProviderRow::into_record).collect()
    }

    async fn register(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Result<Registered, StoreError> {
        let policy =
            serde_json::to_string(&registration.overrides).map_err(|err| StoreError::Corrupt {
                key: registration.key.to_string(),
                reason: format!("policy: {err}"),
            })?;
        let bind = |sql| {
            sqlx::query(sql)
                .bind(registration.key.tenant.as_str().to_owned())
                .bind(registration.key.provider.as_str().to_owned())
                .bind(registration.url.as_str().to_owned())
                .bind(policy.clone())
                .bind(revision)
                .bind(now)
        };
        let mut tx = self.pool.begin().await?;
        let created = bind(INSERT_IF_ABSENT).execute(&mut *tx).await?;
        let created = created.rows_affected() == 1;
        if !created {
            bind(UPDATE_REGISTRATION).execute(&mut *tx).await?;
        }
        let row: ProviderRow = sqlx::query_as(SELECT_ONE)
            .bind(registration.key.tenant.as_str().to_owned())
            .bind(registration.key.provider.as_str().to_owned())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Registered {
            record: row.into_record()?,
            created,
        })
    }

    async fn unregister(&self, key: &ProviderKey) -> Result<bool, StoreError> {
        let result = sqlx::query(DELETE)
            .bind(key.tenant.as_str().to_owned())
            .bind(key.provider.as_str().to_owned())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn save_refresh(&self, record: &ProviderRecord) -> Result<bool, StoreError> {
        let columns = RefreshColumns::from_record(record)?;
        let registration = &record.registration;
        let result = sqlx::query(SAVE_REFRESH)
            .bind(registration.key.tenant.as_str().to_owned())
            .bind(registration.key.provider.as_str().to_owned())
            .bind(registration.revision)
            .bind(columns.version)
            .bind(columns.jwks_json)
            .bind(columns.etag)
            .bind(columns.last_modified)
            .bind(columns.cache_policy)
            .bind(columns.fetched_at)
            .bind(columns.fresh_until)
            .bind(columns.last_attempt_at)
            .bind(columns.last_error)
            .bind(columns.consecutive_failures)
            .bind(columns.next_refresh_at)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
