//! Provider registrations and their refresh results, written once for both databases: every
//! write takes a change sequence (see `Backend::begin_write`), records its audit event and
//! announces itself in the same transaction; refresh writes apply only for the registration
//! revision they were fetched for and, on Postgres, only under the writer's lease.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    Fence, NewRegistration, Registered, SqlStore, Store, StoreError, UnreadableRows,
    access::{insert_audit, registration_json},
    backend::{Backend, SAVE_PUSHED, StoredRegistration},
    change::Change,
    row::{RefreshColumns, revocations_json},
    sequence,
    sql::Arg,
};
use crate::{
    access::{Action, AuditEvent, Origin},
    domain::ProviderKey,
    state::record::ProviderRecord,
};

const SELECT_ALL: &str = "SELECT * FROM providers ORDER BY tenant, provider";
const SELECT_ONE: &str = "SELECT * FROM providers WHERE tenant = $1 AND provider = $2";

const INSERT_IF_ABSENT: &str = "\
INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at, next_refresh_at, change_seq, issuer, pushed)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10)
ON CONFLICT (tenant, provider) DO NOTHING";

/// Right-hand sides see the old row, so the validators are dropped only when the URL changes,
/// and the discovery state only when the issuer does.
const UPDATE_REGISTRATION: &str = "\
UPDATE providers SET
    jwks_url = $3,
    policy = $4,
    revision = $5,
    updated_at = $6,
    next_refresh_at = $7,
    change_seq = $8,
    issuer = $9,
    pushed = $10,
    etag = CASE WHEN jwks_url = $3 AND issuer IS NOT DISTINCT FROM $9 THEN etag END,
    last_modified = CASE WHEN jwks_url = $3 AND issuer IS NOT DISTINCT FROM $9 THEN last_modified END,
    cache_policy = CASE WHEN jwks_url = $3 AND issuer IS NOT DISTINCT FROM $9 THEN cache_policy END,
    discovery = CASE WHEN issuer IS NOT DISTINCT FROM $9 THEN discovery END
WHERE tenant = $1 AND provider = $2";

const SET_VERSION: &str = "UPDATE providers SET version = $3 WHERE tenant = $1 AND provider = $2";

const DELETE: &str = "DELETE FROM providers WHERE tenant = $1 AND provider = $2";

/// A new revision fences off refresh writes fetched under the old revocation list.
const SAVE_REVOCATIONS: &str = "\
UPDATE providers SET revoked_keys = $3, revision = $4, updated_at = $5, version = $6, change_seq = $7
WHERE tenant = $1 AND provider = $2 AND change_seq = $8";

fn key_args(key: &ProviderKey) -> [Arg<'_>; 2] {
    [
        Arg::text(key.tenant().as_str()),
        Arg::text(key.provider().as_str()),
    ]
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn load_all(&self) -> Result<Vec<Arc<ProviderRecord>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        B::streamed_provider_records(&mut conn, SELECT_ALL, &self.unreadable).await
    }

    async fn get(&self, key: &ProviderKey) -> Result<Option<ProviderRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = B::row(&mut conn, SELECT_ONE, &key_args(key)).await?;
        decoded::<B>(row, key, &self.unreadable)
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
        let stored = StoredRegistration {
            jwks_url: registration
                .source
                .jwks_url()
                .map_or_else(String::new, |url| url.as_str().to_owned()),
            issuer: registration
                .source
                .issuer()
                .map_or_else(String::new, |issuer| issuer.as_str().to_owned()),
            pushed: !registration.source.is_fetched(),
            policy,
        };
        let key = &registration.key;
        let mut tx = self.pool.begin().await?;
        let (mut before, mut change_seq) = B::begin_write(&mut tx, key).await?;
        let args = |change_seq| {
            [
                Arg::text(key.tenant().as_str()),
                Arg::text(key.provider().as_str()),
                Arg::text(&stored.jwks_url),
                Arg::text(&stored.policy),
                Arg::int(revision),
                Arg::time(now),
                Arg::time(fetch_by),
                Arg::int(change_seq),
                Arg::Text(registration.source.issuer().map(|issuer| issuer.as_str())),
                Arg::Bool(stored.pushed),
            ]
        };
        let created = before.is_none()
            && B::execute(&mut tx, INSERT_IF_ABSENT, &args(change_seq)).await? == 1;
        let mut held = None;
        if !created {
            if before.is_none() {
                // Registered concurrently since the first look: read what is replaced.
                (before, change_seq) = B::begin_write(&mut tx, key).await?;
            }
            held = read_one::<B>(&mut tx, key, &self.unreadable)
                .await
                .ok()
                .flatten();
            B::execute(&mut tx, UPDATE_REGISTRATION, &args(change_seq)).await?;
        }
        let mut record = read_one::<B>(&mut tx, key, &self.unreadable)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                key: key.to_string(),
                reason: "the row just written is gone".into(),
            })?;
        if let Some(held) = held {
            version_republished::<B>(&mut tx, &held, &mut record).await?;
        }
        let mut event = AuditEvent::provider(now, origin.clone(), Action::RegisterProvider, key);
        event.before = before.as_ref().map(registration_json);
        event.after = Some(registration_json(&stored));
        insert_audit::<B>(&mut tx, &event).await?;
        B::announce(&mut tx, &Change::Updated(key.clone(), record.change_seq)).await?;
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
        let (before, change_seq) = B::begin_write(&mut tx, key).await?;
        let Some(before) = before else {
            return Ok(None);
        };
        B::execute(&mut tx, DELETE, &key_args(key)).await?;
        let change_seq = sequence(change_seq);
        let mut event = AuditEvent::provider(now, origin.clone(), Action::UnregisterProvider, key);
        event.before = Some(registration_json(&before));
        insert_audit::<B>(&mut tx, &event).await?;
        B::announce(&mut tx, &Change::Removed(key.clone(), change_seq)).await?;
        tx.commit().await?;
        Ok(Some(change_seq))
    }

    async fn save_refresh(
        &self,
        record: &ProviderRecord,
        fence: Option<&Fence>,
        audits: &[AuditEvent],
    ) -> Result<Option<u64>, StoreError> {
        let columns = RefreshColumns::from_record(record)?;
        let registration = &record.registration;
        let key = &registration.key;
        let mut tx = self.pool.begin().await?;
        let (_, change_seq) = B::begin_write(&mut tx, key).await?;
        let mut args = vec![
            Arg::text(key.tenant().as_str()),
            Arg::text(key.provider().as_str()),
            Arg::int(registration.revision),
        ];
        args.extend(columns.args());
        args.push(Arg::int(change_seq));
        args.extend(B::fence_args(fence));
        let Some(written) = B::row(&mut tx, B::SAVE_REFRESH, &args).await? else {
            return Ok(None);
        };
        let change_seq = sequence(B::int(&written, 0)?);
        for event in audits {
            insert_audit::<B>(&mut tx, event).await?;
        }
        B::announce(&mut tx, &Change::Updated(key.clone(), change_seq)).await?;
        tx.commit().await?;
        Ok(Some(change_seq))
    }

    async fn save_pushed(
        &self,
        record: &ProviderRecord,
        read_at: u64,
        audit: &AuditEvent,
    ) -> Result<Option<u64>, StoreError> {
        let columns = RefreshColumns::from_record(record)?;
        let key = &record.registration.key;
        let read_at = i64::try_from(read_at).map_err(|err| StoreError::Corrupt {
            key: key.to_string(),
            reason: err.to_string(),
        })?;
        let mut tx = self.pool.begin().await?;
        let (_, change_seq) = B::begin_write(&mut tx, key).await?;
        let mut args = key_args(key).to_vec();
        args.push(Arg::int(read_at));
        args.extend(columns.args());
        args.push(Arg::int(change_seq));
        write_if_unchanged::<B>(tx, SAVE_PUSHED, &args, key, change_seq, audit).await
    }

    async fn save_revocations(
        &self,
        record: &ProviderRecord,
        read_at: u64,
        audit: &AuditEvent,
    ) -> Result<Option<u64>, StoreError> {
        let registration = &record.registration;
        let key = &registration.key;
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let revoked = revocations_json(&registration.revoked)
            .map_err(|err| corrupt(format!("revoked keys: {err}")))?;
        let version = i64::try_from(record.version()).map_err(|err| corrupt(err.to_string()))?;
        let read_at = i64::try_from(read_at).map_err(|err| corrupt(err.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let (_, change_seq) = B::begin_write(&mut tx, key).await?;
        let [tenant, provider] = key_args(key);
        let args = [
            tenant,
            provider,
            Arg::Text(revoked.as_deref()),
            Arg::int(registration.revision),
            Arg::time(registration.updated_at),
            Arg::int(version),
            Arg::int(change_seq),
            Arg::int(read_at),
        ];
        write_if_unchanged::<B>(tx, SAVE_REVOCATIONS, &args, key, change_seq, audit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        B::execute(&mut conn, "SELECT 1", &[]).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs `sql`, a write conditional on the row's change sequence, in `tx`; when it applied,
/// records `audit`, announces the change and commits. Returns the new change sequence, or
/// `None` when the row had changed.
async fn write_if_unchanged<B: Backend>(
    mut tx: sqlx::Transaction<'_, B>,
    sql: &'static str,
    args: &[Arg<'_>],
    key: &ProviderKey,
    change_seq: i64,
    audit: &AuditEvent,
) -> Result<Option<u64>, StoreError> {
    if B::execute(&mut tx, sql, args).await? == 0 {
        return Ok(None);
    }
    let change_seq = sequence(change_seq);
    insert_audit::<B>(&mut tx, audit).await?;
    B::announce(&mut tx, &Change::Updated(key.clone(), change_seq)).await?;
    tx.commit().await?;
    Ok(Some(change_seq))
}

/// The record decoded from `row`, when it was found; `Corrupt` when its registration is
/// unreadable (the decoding reported it).
async fn read_one<B: Backend>(
    conn: &mut B::Connection,
    key: &ProviderKey,
    unreadable: &UnreadableRows,
) -> Result<Option<ProviderRecord>, StoreError> {
    let row = B::row(conn, SELECT_ONE, &key_args(key)).await?;
    decoded::<B>(row, key, unreadable)
}

/// Gives `record`, just registered over `held`, the version its published keys have under
/// the new registration (the next one when a new key policy changes them), so that verifiers
/// holding the old version are sent the new set.
async fn version_republished<B: Backend>(
    conn: &mut B::Connection,
    held: &ProviderRecord,
    record: &mut ProviderRecord,
) -> Result<(), StoreError> {
    let republished = held.republished(record.registration.clone());
    let (Some(expected), Some(keys)) = (&republished.keys, &mut record.keys) else {
        return Ok(());
    };
    if expected.version == keys.version {
        return Ok(());
    }
    keys.version = expected.version;
    let mut args = key_args(&record.registration.key).to_vec();
    args.push(Arg::int(i64::try_from(keys.version).unwrap_or(i64::MAX)));
    B::execute(conn, SET_VERSION, &args).await?;
    Ok(())
}

fn decoded<B: Backend>(
    row: Option<B::Row>,
    key: &ProviderKey,
    unreadable: &UnreadableRows,
) -> Result<Option<ProviderRecord>, StoreError> {
    let Some(row) = row else {
        return Ok(None);
    };
    match B::provider_records(std::slice::from_ref(&row), unreadable).pop() {
        Some(record) => Ok(Some(record)),
        None => Err(StoreError::Corrupt {
            key: key.to_string(),
            reason: "its registration is unreadable (see the error logged for it)".into(),
        }),
    }
}

fn policy_json(registration: &NewRegistration) -> Result<String, StoreError> {
    serde_json::to_string(&registration.overrides).map_err(|err| StoreError::Corrupt {
        key: registration.key.to_string(),
        reason: format!("policy: {err}"),
    })
}
