//! Storage of access tokens, tenant access settings and the audit log: the `AccessStore`
//! trait, the SQL both backends share, and the rows it reads.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Type, query::Query};

use super::{RowPart, StoreError, UnreadableRows};
use crate::{
    access::{
        AccessState, Action, AuditEvent, AuditRecord, Origin, Role, SecretDigest, TenantAccess,
        TokenId, TokenRecord,
    },
    domain::TenantId,
};

/// Which audit events to read: newest first, older than `before` when set.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's events.
    pub tenant: Option<TenantId>,
    /// Only events with a smaller id.
    pub before: Option<u64>,
    /// At most this many.
    pub limit: u32,
}

/// Access tokens, tenant settings and the audit log. Every change writes its audit event in
/// the same transaction.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// The tokens not revoked and the tenants requiring a verifier token.
    async fn load_access(&self) -> Result<AccessState, StoreError>;

    /// Stores a newly issued token.
    async fn create_token(&self, token: &TokenRecord, origin: &Origin) -> Result<(), StoreError>;

    /// Revokes a token at `now` unless it is already revoked; `None` when there is no such
    /// token within `scope` (every tenant when `None`).
    async fn revoke_token(
        &self,
        id: &TokenId,
        scope: Option<&TenantId>,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// Tokens of `tenant` (every token when `None`), by id.
    async fn list_tokens(
        &self,
        tenant: Option<&TenantId>,
        include_revoked: bool,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// A tenant's settings (the defaults when never set).
    async fn tenant_access(&self, tenant: &TenantId) -> Result<TenantAccess, StoreError>;

    /// Changes a tenant's settings.
    async fn set_tenant_access(
        &self,
        access: &TenantAccess,
        origin: &Origin,
    ) -> Result<TenantAccess, StoreError>;

    /// Reads the audit log.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

pub(super) const INSERT_TOKEN: &str = "\
INSERT INTO access_tokens (id, secret_sha256, role, tenant, description, created_at, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

pub(super) const SELECT_ACTIVE_TOKENS: &str =
    "SELECT * FROM access_tokens WHERE revoked_at IS NULL ORDER BY id";

pub(super) const SELECT_TOKENS: &str = "\
SELECT * FROM access_tokens
WHERE ($1 IS NULL OR tenant = $1) AND ($2 OR revoked_at IS NULL)
ORDER BY id";

pub(super) const SELECT_TOKEN_IN_SCOPE: &str =
    "SELECT * FROM access_tokens WHERE id = $1 AND ($2 IS NULL OR tenant = $2)";

pub(super) const REVOKE_TOKEN: &str =
    "UPDATE access_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

pub(super) const SELECT_PROTECTED_TENANTS: &str =
    "SELECT tenant FROM tenant_access WHERE verifier_token_required ORDER BY tenant";

pub(super) const SELECT_TENANT_ACCESS: &str =
    "SELECT verifier_token_required, updated_at FROM tenant_access WHERE tenant = $1";

pub(super) const UPSERT_TENANT_ACCESS: &str = "\
INSERT INTO tenant_access (tenant, verifier_token_required, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant) DO UPDATE SET verifier_token_required = $2, updated_at = $3";

const INSERT_AUDIT: &str = "\
INSERT INTO audit_events (at, actor, action, tenant, provider, before, after, client)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

pub(super) const SELECT_AUDIT: &str = "\
SELECT * FROM audit_events
WHERE ($1 IS NULL OR tenant = $1) AND ($2 IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3";

/// Columns of `access_tokens`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TokenRow {
    id: String,
    secret_sha256: Vec<u8>,
    role: String,
    tenant: Option<String>,
    description: String,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    pub fn into_record(self) -> Result<TokenRecord, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: format!("access token {}", self.id),
            reason: reason.to_owned(),
        };
        let id = TokenId::parse(&self.id).map_err(|_| corrupt("malformed id"))?;
        let digest = <[u8; 32]>::try_from(self.secret_sha256.as_slice())
            .map_err(|_| corrupt("digest is not 32 bytes"))?;
        let role = Role::from_stored(&self.role).ok_or_else(|| corrupt("unknown role"))?;
        let tenant = self
            .tenant
            .as_deref()
            .map(|tenant| TenantId::parse("tenant", tenant))
            .transpose()
            .map_err(|_| corrupt("malformed tenant"))?;
        Ok(TokenRecord {
            id,
            digest: SecretDigest(digest),
            role,
            tenant,
            description: self.description,
            created_at: self.created_at,
            created_by: self.created_by,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        })
    }
}

/// Columns of `audit_events`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    tenant: Option<String>,
    provider: Option<String>,
    before: Option<String>,
    after: Option<String>,
    client: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(row: AuditRow) -> Self {
        Self {
            id: super::sequence(row.id),
            at: row.at,
            actor: row.actor,
            action: row.action,
            tenant: row.tenant,
            provider: row.provider,
            before: row.before,
            after: row.after,
            client: row.client,
        }
    }
}

/// The insertion of `event` into the audit log.
pub(super) fn insert_audit<'q, DB>(
    event: &'q AuditEvent,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(INSERT_AUDIT)
        .bind(event.at)
        .bind(event.origin.actor.as_str())
        .bind(event.action.as_str())
        .bind(event.tenant.as_ref().map(TenantId::as_str))
        .bind(event.provider.as_deref())
        .bind(event.before.as_ref().map(ToString::to_string))
        .bind(event.after.as_ref().map(ToString::to_string))
        .bind(event.origin.client.as_deref())
}

/// The protected tenants read by `SELECT_PROTECTED_TENANTS`, checked. A name that is no
/// tenant protects no tenant that can be asked for: it is reported and left out.
pub(super) fn protected_tenants(names: Vec<String>, unreadable: &UnreadableRows) -> Vec<TenantId> {
    names
        .into_iter()
        .filter_map(|name| {
            TenantId::parse("tenant", &name)
                .inspect_err(|err| {
                    let key = format!("tenant access {name}");
                    unreadable.report(&key, RowPart::TenantAccess, &err.to_string());
                })
                .ok()
        })
        .collect()
}

/// The access tokens of `rows`; a row that cannot be read is reported and left out, so that
/// token is refused until it is revoked or the row repaired.
pub(super) fn active_tokens<R>(rows: &[R], unreadable: &UnreadableRows) -> Vec<TokenRecord>
where
    R: sqlx::Row,
    for<'r> TokenRow: sqlx::FromRow<'r, R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let read = |row: &R| -> Result<TokenRecord, (String, String)> {
        let id = || row.try_get::<String, _>("id").unwrap_or_default();
        let decoded =
            <TokenRow as sqlx::FromRow<R>>::from_row(row).map_err(|err| (id(), err.to_string()))?;
        decoded.into_record().map_err(|err| (id(), err.to_string()))
    };
    rows.iter()
        .filter_map(|row| {
            read(row)
                .inspect_err(|(id, reason)| {
                    let key = format!("access token {id}");
                    unreadable.report(&key, RowPart::AccessToken, reason);
                })
                .ok()
        })
        .collect()
}

/// The state of a registration as shown in the audit log.
pub(super) fn registration_json(jwks_url: &str, policy: &str) -> serde_json::Value {
    let policy = serde_json::from_str(policy).unwrap_or(serde_json::Value::String(policy.into()));
    serde_json::json!({ "jwks_url": jwks_url, "policy": policy })
}

/// A tenant's settings as shown in the audit log.
pub(super) fn tenant_access_json(access: &TenantAccess) -> serde_json::Value {
    serde_json::json!({ "verifier_token_required": access.verifier_token_required })
}

/// Implements `AccessStore` for a backend whose store has `fn pool(&self)`: `$announce` tells
/// other replicas about a committed change, `$token_in_scope` reads a token (locking it where
/// the backend can), `$insert_audit` appends an event within the transaction. The SQL, and so
/// the body, is the same for both backends.
macro_rules! impl_access_store {
    ($store:ty, $announce:path, $token_in_scope:path, $insert_audit:path) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};

            use crate::{
                access::{
                    AccessState, Action, AuditEvent, AuditRecord, Origin, TenantAccess, TokenId,
                    TokenRecord,
                },
                domain::TenantId,
                store::{
                    StoreError,
                    access::{
                        AccessStore, AuditQuery, AuditRow, INSERT_TOKEN, REVOKE_TOKEN,
                        SELECT_ACTIVE_TOKENS, SELECT_AUDIT, SELECT_PROTECTED_TENANTS,
                        SELECT_TENANT_ACCESS, SELECT_TOKENS, TokenRow, UPSERT_TENANT_ACCESS,
                        active_tokens, protected_tenants, tenant_access, tenant_event, token_event,
                    },
                },
            };

            #[async_trait]
            impl AccessStore for $store {
                async fn load_access(&self) -> Result<AccessState, StoreError> {
                    let mut tx = self.pool().begin().await?;
                    let rows = sqlx::query(SELECT_ACTIVE_TOKENS)
                        .fetch_all(&mut *tx)
                        .await?;
                    let tenants: Vec<String> = sqlx::query_scalar(SELECT_PROTECTED_TENANTS)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(AccessState {
                        tokens: active_tokens(&rows, self.unreadable()),
                        protected_tenants: protected_tenants(tenants, self.unreadable()),
                    })
                }

                async fn create_token(
                    &self,
                    token: &TokenRecord,
                    origin: &Origin,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool().begin().await?;
                    sqlx::query(INSERT_TOKEN)
                        .bind(token.id.as_str())
                        .bind(token.digest.0.as_slice())
                        .bind(token.role.as_str())
                        .bind(token.tenant.as_ref().map(TenantId::as_str))
                        .bind(token.description.as_str())
                        .bind(token.created_at)
                        .bind(token.created_by.as_str())
                        .bind(token.expires_at)
                        .execute(&mut *tx)
                        .await?;
                    let event = AuditEvent {
                        after: Some(token.audit_json()),
                        ..token_event(token.created_at, origin, Action::CreateToken, token)
                    };
                    $insert_audit(&mut tx, &event).await?;
                    $announce(&mut tx).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn revoke_token(
                    &self,
                    id: &TokenId,
                    scope: Option<&TenantId>,
                    now: DateTime<Utc>,
                    origin: &Origin,
                ) -> Result<Option<TokenRecord>, StoreError> {
                    let mut tx = self.pool().begin().await?;
                    let Some(before) = $token_in_scope(&mut tx, id, scope).await? else {
                        return Ok(None);
                    };
                    if before.revoked_at.is_some() {
                        return Ok(Some(before));
                    }
                    sqlx::query(REVOKE_TOKEN)
                        .bind(id.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let after = TokenRecord {
                        revoked_at: Some(now),
                        ..before.clone()
                    };
                    let event = AuditEvent {
                        before: Some(before.audit_json()),
                        after: Some(after.audit_json()),
                        ..token_event(now, origin, Action::RevokeToken, &after)
                    };
                    $insert_audit(&mut tx, &event).await?;
                    $announce(&mut tx).await?;
                    tx.commit().await?;
                    Ok(Some(after))
                }

                async fn list_tokens(
                    &self,
                    tenant: Option<&TenantId>,
                    include_revoked: bool,
                ) -> Result<Vec<TokenRecord>, StoreError> {
                    let rows: Vec<TokenRow> = sqlx::query_as(SELECT_TOKENS)
                        .bind(tenant.map(TenantId::as_str))
                        .bind(include_revoked)
                        .fetch_all(self.pool())
                        .await?;
                    rows.into_iter().map(TokenRow::into_record).collect()
                }

                async fn tenant_access(
                    &self,
                    tenant: &TenantId,
                ) -> Result<TenantAccess, StoreError> {
                    let row: Option<(bool, DateTime<Utc>)> = sqlx::query_as(SELECT_TENANT_ACCESS)
                        .bind(tenant.as_str())
                        .fetch_optional(self.pool())
                        .await?;
                    Ok(tenant_access(tenant, row))
                }

                async fn set_tenant_access(
                    &self,
                    access: &TenantAccess,
                    origin: &Origin,
                ) -> Result<TenantAccess, StoreError> {
                    let now = access.updated_at.unwrap_or_else(Utc::now);
                    let mut tx = self.pool().begin().await?;
                    let row: Option<(bool, DateTime<Utc>)> = sqlx::query_as(SELECT_TENANT_ACCESS)
                        .bind(access.tenant.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let before = tenant_access(&access.tenant, row);
                    sqlx::query(UPSERT_TENANT_ACCESS)
                        .bind(access.tenant.as_str())
                        .bind(access.verifier_token_required)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let after = TenantAccess {
                        updated_at: Some(now),
                        ..access.clone()
                    };
                    $insert_audit(&mut tx, &tenant_event(now, origin, &before, &after)).await?;
                    $announce(&mut tx).await?;
                    tx.commit().await?;
                    Ok(after)
                }

                async fn audit_events(
                    &self,
                    query: &AuditQuery,
                ) -> Result<Vec<AuditRecord>, StoreError> {
                    let rows: Vec<AuditRow> = sqlx::query_as(SELECT_AUDIT)
                        .bind(query.tenant.as_ref().map(TenantId::as_str))
                        .bind(query.before.and_then(|id| i64::try_from(id).ok()))
                        .bind(i64::from(query.limit))
                        .fetch_all(self.pool())
                        .await?;
                    Ok(rows.into_iter().map(AuditRecord::from).collect())
                }
            }
        };
    };
}

pub(super) use impl_access_store;

/// The audit event of a change to `token`.
pub(super) fn token_event(
    at: DateTime<Utc>,
    origin: &Origin,
    action: Action,
    token: &TokenRecord,
) -> AuditEvent {
    AuditEvent {
        at,
        origin: origin.clone(),
        action,
        tenant: token.tenant.clone(),
        provider: None,
        before: None,
        after: None,
    }
}

/// A tenant's settings from its row, the defaults when there is none.
pub(super) fn tenant_access(tenant: &TenantId, row: Option<(bool, DateTime<Utc>)>) -> TenantAccess {
    TenantAccess {
        tenant: tenant.clone(),
        verifier_token_required: row.is_some_and(|(required, _)| required),
        updated_at: row.map(|(_, at)| at),
    }
}

/// The audit event of a change of a tenant's settings.
pub(super) fn tenant_event(
    at: DateTime<Utc>,
    origin: &Origin,
    before: &TenantAccess,
    after: &TenantAccess,
) -> AuditEvent {
    AuditEvent {
        at,
        origin: origin.clone(),
        action: Action::SetTenantAccess,
        tenant: Some(after.tenant.clone()),
        provider: None,
        before: before.updated_at.map(|_| tenant_access_json(before)),
        after: Some(tenant_access_json(after)),
    }
}
