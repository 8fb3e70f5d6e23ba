//! The `providers` row and its conversion to and from `ProviderRecord`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Type, query::QueryScalar};

use super::StoreError;
use crate::{
    domain::{JwksUrl, ProviderKey},
    fetch::Validators,
    jwks::KeySetDocument,
    provider::{CurrentKeys, ProviderRecord, RefreshStatus, Registration},
};

/// Columns of `providers`, in the portable types both backends decode.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ProviderRow {
    pub tenant: String,
    pub provider: String,
    pub jwks_url: String,
    pub policy: String,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub change_seq: i64,
    #[sqlx(flatten)]
    pub refresh: RefreshColumns,
}

/// The columns a refresh writes: key set, validators and status.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RefreshColumns {
    pub version: i64,
    pub jwks_json: Option<Vec<u8>>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub cache_policy: Option<String>,
    pub fetched_at: Option<DateTime<Utc>>,
    pub fresh_until: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub next_refresh_at: Option<DateTime<Utc>>,
}

impl RefreshColumns {
    pub fn from_record(record: &ProviderRecord) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: record.registration.key.to_string(),
            reason,
        };
        let cache_policy = record
            .validators
            .cache_policy
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| corrupt(format!("cache policy: {err}")))?;
        let keys = record.keys.as_ref();
        Ok(Self {
            version: keys
                .map_or(Ok(0), |k| i64::try_from(k.version))
                .map_err(|err| corrupt(err.to_string()))?,
            jwks_json: keys.map(|k| k.document.json().to_vec()),
            etag: record.validators.etag.clone(),
            last_modified: record.validators.last_modified.clone(),
            cache_policy,
            fetched_at: keys.map(|k| k.fetched_at),
            fresh_until: keys.map(|k| k.fresh_until),
            last_attempt_at: record.status.last_attempt_at,
            last_error: record.status.last_error.clone(),
            consecutive_failures: i64::from(record.status.consecutive_failures),
            next_refresh_at: record.status.next_refresh_at,
        })
    }
}

impl RefreshColumns {
    /// Binds the columns as parameters `$4` to `$14` of a refresh write.
    pub fn bind_to<'q, DB, O>(
        self,
        query: QueryScalar<'q, DB, O, <DB as Database>::Arguments>,
    ) -> QueryScalar<'q, DB, O, <DB as Database>::Arguments>
    where
        DB: Database,
        i64: Encode<'q, DB> + Type<DB>,
        Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
        Option<String>: Encode<'q, DB> + Type<DB>,
        Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    {
        query
            .bind(self.version)
            .bind(self.jwks_json)
            .bind(self.etag)
            .bind(self.last_modified)
            .bind(self.cache_policy)
            .bind(self.fetched_at)
            .bind(self.fresh_until)
            .bind(self.last_attempt_at)
            .bind(self.last_error)
            .bind(self.consecutive_failures)
            .bind(self.next_refresh_at)
    }
}

impl ProviderRow {
    /// Rebuilds the record. Stored URLs were checked when registered; they are not re-checked
    /// against today's egress rules here (the fetcher re-checks every hop).
    pub fn into_record(self) -> Result<ProviderRecord, StoreError> {
        let key_name = format!("{}/{}", self.tenant, self.provider);
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key_name.clone(),
            reason,
        };
        let key =
            ProviderKey::parse(&self.tenant, &self.provider).map_err(|e| corrupt(e.to_string()))?;
        let url = JwksUrl::parse_stored(&self.jwks_url).map_err(|e| corrupt(e.to_string()))?;
        let overrides =
            serde_json::from_str(&self.policy).map_err(|e| corrupt(format!("policy: {e}")))?;
        let cache_policy = self
            .refresh
            .cache_policy
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt(format!("cache policy: {e}")))?;
        let keys = match (
            self.refresh.jwks_json,
            self.refresh.fetched_at,
            self.refresh.fresh_until,
        ) {
            (Some(json), Some(fetched_at), Some(fresh_until)) if self.refresh.version > 0 => {
                let parsed =
                    KeySetDocument::parse(&json).map_err(|e| corrupt(format!("key set: {e}")))?;
                Some(CurrentKeys {
                    version: u64::try_from(self.refresh.version)
                        .map_err(|e| corrupt(e.to_string()))?,
                    document: Arc::new(parsed.document),
                    fetched_at,
                    fresh_until,
                })
            }
            _ => None,
        };
        Ok(ProviderRecord {
            change_seq: u64::try_from(self.change_seq).unwrap_or_default(),
            registration: Registration {
                key,
                url,
                overrides,
                revision: self.revision,
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
            keys,
            validators: Validators {
                etag: self.refresh.etag,
                last_modified: self.refresh.last_modified,
                cache_policy,
            },
            pending_replacement: None,
            status: RefreshStatus {
                last_attempt_at: self.refresh.last_attempt_at,
                last_error: self.refresh.last_error,
                consecutive_failures: u32::try_from(self.refresh.consecutive_failures)
                    .unwrap_or(u32::MAX),
                next_refresh_at: self.refresh.next_refresh_at,
            },
        })
    }
}
