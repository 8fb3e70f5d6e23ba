//! The embedded single-node store. Every write transaction starts by taking the next change
//! sequence from a counter row, which also serialises writers: sequence order is commit order.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{
    Fence, NewRegistration, Registered, SELECT_ALL, SELECT_ONE, Store, StoreError, UnreadableRows,
    access::{self, registration_json},
    decoded, policy_json,
    row::{RefreshColumns, decode_rows},
    sequence,
};
use crate::{
    access::{Action, AuditEvent, Origin},
    domain::ProviderKey,
    state::record::ProviderRecord,
};

const NEXT_SEQUENCE: &str = "UPDATE change_counter SET value = value + 1 RETURNING value";

const INSERT_IF_ABSENT: &str = "\
INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at, change_seq, next_refresh_at)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)
ON CONFLICT (tenant, provider) DO NOTHING";

/// Right-hand sides see the old row, so the validators are dropped only when the URL changes.
const UPDATE_REGISTRATION: &str = "\
UPDATE providers SET
    jwks_url = $3,
    policy = $4,
    revision = $5,
    updated_at = $6,
    change_seq = $7,
    next_refresh_at = $8,
    etag = CASE WHEN jwks_url = $3 THEN etag END,
    last_modified = CASE WHEN jwks_url = $3 THEN last_modified END,
    cache_policy = CASE WHEN jwks_url = $3 THEN cache_policy END
WHERE tenant = $1 AND provider = $2";

const DELETE: &str =
    "DELETE FROM providers WHERE tenant = $1 AND provider = $2 RETURNING jwks_url, policy";

const SELECT_REGISTRATION: &str =
    "SELECT jwks_url, policy FROM providers WHERE tenant = $1 AND provider = $2";

const SAVE_REFRESH: &str = "\
UPDATE providers SET
    version = $4, jwks_json = $5, etag = $6, last_modified = $7, cache_policy = $8,
    fetched_at = $9, fresh_until = $10, last_attempt_at = $11, last_error = $12,
    consecutive_failures = $13, next_refresh_at = $14, skipped_keys = $15, change_seq = $16
WHERE tenant = $1 AND provider = $2 AND revision = $3
RETURNING change_seq";

/// The single-node store.
pub struct SqliteStore {
    pool: SqlitePool,
    unreadable: Arc<UnreadableRows>,
}

impl SqliteStore {
    /// A store over a migrated pool, reporting unreadable rows to `unreadable`.
    pub fn new(pool: SqlitePool, unreadable: Arc<UnreadableRows>) -> Self {
        Self { pool, unreadable }
    }

    /// The connection pool.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Where unreadable rows are reported.
    pub(super) fn unreadable(&self) -> &UnreadableRows {
        &self.unreadable
    }
}

async fn next_sequence(tx: &mut Transaction<'static, Sqlite>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(NEXT_SEQUENCE)
        .fetch_one(&mut **tx)
        .await?)
}

/// Appends `event` to the audit log within `tx`.
pub(super) async fn insert_audit(
    tx: &mut Transaction<'static, Sqlite>,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    access::insert_audit(event).execute(&mut **tx).await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_all(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows = sqlx::query(SELECT_ALL).fetch_all(&self.pool).await?;
        Ok(decode_rows(&rows, &self.unreadable))
    }

    async fn get(&self, key: &ProviderKey) -> Result<Option<ProviderRecord>, StoreError> {
        let row = sqlx::query(SELECT_ONE)
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&self.pool)
            .await?;
        decoded(key, row, &self.unreadable)
    }

    async fn register(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: DateTime<Utc>,
        fetch_by: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Registered, StoreError> {
        let policy = policy_json(registration)?;
        let key = &registration.key;
        let mut tx = self.pool.begin().await?;
        let change_seq = next_sequence(&mut tx).await?;
        let before: Option<(String, String)> = sqlx::query_as(SELECT_REGISTRATION)
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let bind = |sql| {
            sqlx::query(sql)
                .bind(registration.key.tenant.as_str())
                .bind(registration.key.provider.as_str())
                .bind(registration.url.as_str())
                .bind(policy.as_str())
                .bind(revision)
                .bind(now)
                .bind(change_seq)
                .bind(fetch_by)
        };
        let created = bind(INSERT_IF_ABSENT)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !created {
            bind(UPDATE_REGISTRATION).execute(&mut *tx).await?;
        }
        let row = sqlx::query(SELECT_ONE)
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let record = decoded(key, row, &self.unreadable)?.ok_or_else(|| StoreError::Corrupt {
            key: key.to_string(),
            reason: "the row just written is gone".into(),
        })?;
        let mut event = AuditEvent::provider(now, origin.clone(), Action::RegisterProvider, key);
        event.before = before.map(|(url, policy)| registration_json(&url, &policy));
        event.after = Some(registration_json(registration.url.as_str(), &policy));
        insert_audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Registered { record, created })
    }

    async fn unregister(
        &self,
        key: &ProviderKey,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let change_seq = next_sequence(&mut tx).await?;
        let deleted: Option<(String, String)> = sqlx::query_as(DELETE)
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((url, policy)) = deleted else {
            return Ok(None);
        };
        let mut event = AuditEvent::provider(now, origin.clone(), Action::UnregisterProvider, key);
        event.before = Some(registration_json(&url, &policy));
        insert_audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Some(sequence(change_seq)))
    }

    async fn save_refresh(
        &self,
        record: &ProviderRecord,
        _fence: Option<&Fence>,
        audit: Option<&AuditEvent>,
    ) -> Result<Option<u64>, StoreError> {
        let columns = RefreshColumns::from_record(record)?;
        let registration = &record.registration;
        let mut tx = self.pool.begin().await?;
        let change_seq = next_sequence(&mut tx).await?;
        let query = sqlx::query_scalar(SAVE_REFRESH)
            .bind(registration.key.tenant.as_str())
            .bind(registration.key.provider.as_str())
            .bind(registration.revision);
        let written: Option<i64> = columns
            .bind_to(query)
            .bind(change_seq)
            .fetch_optional(&mut *tx)
            .await?;
        if let (Some(_), Some(event)) = (written, audit) {
            insert_audit(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(written.map(sequence))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
