//! The Postgres store, shared by every replica of a fleet. Each write takes its change
//! sequence inside the statement that modifies the row (after the row lock, so sequence order
//! is commit order for one provider) and announces itself with NOTIFY in the same
//! transaction, delivered on commit. Refresh writes are fenced by the leader's lease.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

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

/// The NOTIFY channel of committed provider changes.
pub const CHANGES_CHANNEL: &str = "keyrelay_changes";

const NOTIFY: &str = "SELECT pg_notify('keyrelay_changes', $1)";

const INSERT_IF_ABSENT: &str = "\
INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at, next_refresh_at, change_seq)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, nextval('provider_change_seq'))
ON CONFLICT (tenant, provider) DO NOTHING";

/// Right-hand sides see the old row, so the validators are dropped only when the URL changes.
const UPDATE_REGISTRATION: &str = "\
UPDATE providers SET
    jwks_url = $3,
    policy = $4,
    revision = $5,
    updated_at = $6,
    next_refresh_at = $7,
    change_seq = nextval('provider_change_seq'),
    etag = CASE WHEN jwks_url = $3 THEN etag END,
    last_modified = CASE WHEN jwks_url = $3 THEN last_modified END,
    cache_policy = CASE WHEN jwks_url = $3 THEN cache_policy END
WHERE tenant = $1 AND provider = $2";

const DELETE: &str = "\
DELETE FROM providers WHERE tenant = $1 AND provider = $2
RETURNING nextval('provider_change_seq'), jwks_url, policy";

const SELECT_REGISTRATION_FOR_UPDATE: &str =
    "SELECT jwks_url, policy FROM providers WHERE tenant = $1 AND provider = $2 FOR UPDATE";

/// A refresh write; `$fence` adds conditions to its WHERE clause.
macro_rules! save_refresh {
    ($fence:literal) => {
        concat!(
            "UPDATE providers SET
                version = $4, jwks_json = $5, etag = $6, last_modified = $7, cache_policy = $8,
                fetched_at = $9, fresh_until = $10, last_attempt_at = $11, last_error = $12,
                consecutive_failures = $13, next_refresh_at = $14, skipped_keys = $15,
                change_seq = nextval('provider_change_seq')
            WHERE tenant = $1 AND provider = $2 AND revision = $3",
            $fence,
            " RETURNING change_seq"
        )
    };
}

const SAVE_REFRESH: &str = save_refresh!("");

/// The same write, applied only while the writer holds the lease term it names (database
/// clock): a deposed leader that wakes up late writes nothing.
const SAVE_REFRESH_FENCED: &str = save_refresh!(
    " AND EXISTS (SELECT 1 FROM leases
                  WHERE shard = $16 AND holder = $17 AND term = $18 AND expires_at > now())"
);

/// What a notification on `keyrelay_changes` says: a provider changed or was removed, at a
/// change sequence. Never the key set itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The row was written; read it for the new state.
    Updated(ProviderKey, u64),
    /// The row was deleted.
    Removed(ProviderKey, u64),
}

impl Change {
    /// The NOTIFY payload: `u|d/tenant/provider/change_seq`.
    pub fn payload(&self) -> String {
        let (kind, key, seq) = match self {
            Change::Updated(key, seq) => ("u", key, seq),
            Change::Removed(key, seq) => ("d", key, seq),
        };
        format!(
            "{kind}/{}/{}/{seq}",
            key.tenant.as_str(),
            key.provider.as_str()
        )
    }

    /// Parses a NOTIFY payload; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('/');
        let (kind, tenant, provider, seq) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let key = ProviderKey::parse(tenant, provider).ok()?;
        let seq = seq.parse().ok()?;
        match (kind, parts.next()) {
            ("u", None) => Some(Change::Updated(key, seq)),
            ("d", None) => Some(Change::Removed(key, seq)),
            _ => None,
        }
    }
}

/// The fleet store.
pub struct PostgresStore {
    pool: PgPool,
    unreadable: Arc<UnreadableRows>,
}

impl PostgresStore {
    /// A store over a migrated pool, reporting unreadable rows to `unreadable`.
    pub fn new(pool: PgPool, unreadable: Arc<UnreadableRows>) -> Self {
        Self { pool, unreadable }
    }

    /// The connection pool.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where unreadable rows are reported.
    pub(super) fn unreadable(&self) -> &UnreadableRows {
        &self.unreadable
    }
}

/// Appends `event` to the audit log within `tx`.
pub(super) async fn insert_audit(
    tx: &mut Transaction<'static, Postgres>,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    access::insert_audit(event).execute(&mut **tx).await?;
    Ok(())
}

/// The registration of `key` as stored, locked until `tx` ends; `None` when absent.
async fn lock_registration(
    tx: &mut Transaction<'static, Postgres>,
    key: &ProviderKey,
) -> Result<Option<serde_json::Value>, StoreError> {
    let row: Option<(String, String)> = sqlx::query_as(SELECT_REGISTRATION_FOR_UPDATE)
        .bind(key.tenant.as_str())
        .bind(key.provider.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(url, policy)| registration_json(&url, &policy)))
}

async fn notify(tx: &mut Transaction<'static, Postgres>, change: Change) -> Result<(), StoreError> {
    sqlx::query(NOTIFY)
        .bind(change.payload())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
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
        let bind = |sql| {
            sqlx::query(sql)
                .bind(registration.key.tenant.as_str())
                .bind(registration.key.provider.as_str())
                .bind(registration.url.as_str())
                .bind(policy.as_str())
                .bind(revision)
                .bind(now)
                .bind(fetch_by)
        };
        let mut tx = self.pool.begin().await?;
        let mut before = lock_registration(&mut tx, key).await?;
        let created = before.is_none()
            && bind(INSERT_IF_ABSENT)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !created {
            // Registered concurrently since the first look: read what is replaced.
            if before.is_none() {
                before = lock_registration(&mut tx, key).await?;
            }
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
        event.before = before;
        event.after = Some(registration_json(registration.url.as_str(), &policy));
        insert_audit(&mut tx, &event).await?;
        notify(&mut tx, Change::Updated(key.clone(), record.change_seq)).await?;
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
        let removed: Option<(i64, String, String)> = sqlx::query_as(DELETE)
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((change_seq, url, policy)) = removed else {
            return Ok(None);
        };
        let change_seq = sequence(change_seq);
        let mut event = AuditEvent::provider(now, origin.clone(), Action::UnregisterProvider, key);
        event.before = Some(registration_json(&url, &policy));
        insert_audit(&mut tx, &event).await?;
        notify(&mut tx, Change::Removed(key.clone(), change_seq)).await?;
        tx.commit().await?;
        Ok(Some(change_seq))
    }

    async fn save_refresh(
        &self,
        record: &ProviderRecord,
        fence: Option<&Fence>,
        audit: Option<&AuditEvent>,
    ) -> Result<Option<u64>, StoreError> {
        let columns = RefreshColumns::from_record(record)?;
        let key = &record.registration.key;
        let query = sqlx::query_scalar(if fence.is_some() {
            SAVE_REFRESH_FENCED
        } else {
            SAVE_REFRESH
        })
        .bind(key.tenant.as_str())
        .bind(key.provider.as_str())
        .bind(record.registration.revision);
        let mut query = columns.bind_to(query);
        if let Some(fence) = fence {
            query = query
                .bind(fence.shard.as_str())
                .bind(fence.holder.as_str())
                .bind(fence.term);
        }
        let mut tx = self.pool.begin().await?;
        let written: Option<i64> = query.fetch_optional(&mut *tx).await?;
        let Some(change_seq) = written.map(sequence) else {
            return Ok(None);
        };
        if let Some(event) = audit {
            insert_audit(&mut tx, event).await?;
        }
        notify(&mut tx, Change::Updated(key.clone(), change_seq)).await?;
        tx.commit().await?;
        Ok(Some(change_seq))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_round_trip_and_garbage_is_ignored() {
        let key = ProviderKey::parse("acme", "okta.prod").unwrap();
        for change in [Change::Updated(key.clone(), 42), Change::Removed(key, 7)] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        for garbage in [
            "",
            "u/acme/okta",
            "x/acme/okta/1",
            "u/Acme/okta/1",
            "u/acme/okta/-1",
            "u/a/b/1/extra",
        ] {
            assert_eq!(Change::parse(garbage), None, "{garbage}");
        }
    }
}
