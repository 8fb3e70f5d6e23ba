//! Storage of access tokens, tenant access settings and the audit log, written once for both
//! databases: every change records its audit event and announces itself in its transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    RowPart, SqlStore, StoreError, UnreadableRows,
    backend::{Backend, StoredRegistration},
    sql::Arg,
};
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

    /// Changes a tenant's settings at `now`.
    async fn set_tenant_access(
        &self,
        access: &TenantAccess,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<TenantAccess, StoreError>;

    /// Reads the audit log.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

const INSERT_TOKEN: &str = "\
INSERT INTO access_tokens (id, secret_sha256, role, tenant, description, created_at, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const SELECT_ACTIVE_TOKENS: &str =
    "SELECT * FROM access_tokens WHERE revoked_at IS NULL ORDER BY id";

const SELECT_TOKENS: &str = "\
SELECT * FROM access_tokens
WHERE ($1 IS NULL OR tenant = $1) AND ($2 OR revoked_at IS NULL)
ORDER BY id";

const REVOKE_TOKEN: &str =
    "UPDATE access_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

const SELECT_PROTECTED_TENANTS: &str =
    "SELECT tenant FROM tenant_access WHERE verifier_token_required ORDER BY tenant";

const SELECT_TENANT_ACCESS: &str =
    "SELECT verifier_token_required, updated_at FROM tenant_access WHERE tenant = $1";

const UPSERT_TENANT_ACCESS: &str = "\
INSERT INTO tenant_access (tenant, verifier_token_required, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant) DO UPDATE SET verifier_token_required = $2, updated_at = $3";

const INSERT_AUDIT: &str = "\
INSERT INTO audit_events (at, actor, action, tenant, provider, before, after, client)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const SELECT_AUDIT: &str = "\
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

/// The protected tenants read by `SELECT_PROTECTED_TENANTS`, checked. A name that is no
/// tenant protects no tenant that can be asked for: it is reported and left out.
fn protected_tenants(names: Vec<String>, unreadable: &UnreadableRows) -> Vec<TenantId> {
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
pub(super) fn registration_json(registration: &StoredRegistration) -> serde_json::Value {
    let policy = &registration.policy;
    let policy = serde_json::from_str(policy).unwrap_or(serde_json::Value::String(policy.clone()));
    if registration.pushed {
        serde_json::json!({ "pushed": true, "policy": policy })
    } else if registration.issuer.is_empty() {
        serde_json::json!({ "jwks_url": registration.jwks_url, "policy": policy })
    } else {
        serde_json::json!({ "issuer": registration.issuer, "policy": policy })
    }
}

/// A tenant's settings as shown in the audit log.
fn tenant_access_json(access: &TenantAccess) -> serde_json::Value {
    serde_json::json!({ "verifier_token_required": access.verifier_token_required })
}

/// The audit event of a change to `token`.
fn token_event(
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
fn tenant_access(tenant: &TenantId, row: Option<(bool, DateTime<Utc>)>) -> TenantAccess {
    TenantAccess {
        tenant: tenant.clone(),
        verifier_token_required: row.is_some_and(|(required, _)| required),
        updated_at: row.map(|(_, at)| at),
    }
}

/// The audit event of a change of a tenant's settings.
fn tenant_event(
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

/// Appends `event` to the audit log, within the caller's transaction.
pub(super) async fn insert_audit<B: Backend>(
    conn: &mut B::Connection,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let before = event.before.as_ref().map(ToString::to_string);
    let after = event.after.as_ref().map(ToString::to_string);
    let args = [
        Arg::time(event.at),
        Arg::text(&event.origin.actor),
        Arg::text(event.action.as_str()),
        Arg::Text(event.tenant.as_ref().map(TenantId::as_str)),
        Arg::Text(event.provider.as_deref()),
        Arg::Text(before.as_deref()),
        Arg::Text(after.as_deref()),
        Arg::Text(event.origin.client.as_deref()),
    ];
    B::execute(conn, INSERT_AUDIT, &args).await?;
    Ok(())
}

#[async_trait]
impl<B: Backend> AccessStore for SqlStore<B> {
    async fn load_access(&self) -> Result<AccessState, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tokens = B::rows(&mut tx, SELECT_ACTIVE_TOKENS, &[]).await?;
        let tenants = B::rows(&mut tx, SELECT_PROTECTED_TENANTS, &[]).await?;
        tx.commit().await?;
        let names = tenants
            .iter()
            .map(|row| B::text(row, 0))
            .collect::<Result<_, _>>()?;
        Ok(AccessState {
            tokens: B::readable_tokens(&tokens, &self.unreadable),
            protected_tenants: protected_tenants(names, &self.unreadable),
        })
    }

    async fn create_token(&self, token: &TokenRecord, origin: &Origin) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let args = [
            Arg::text(token.id.as_str()),
            Arg::Bytes(Some(token.digest.0.as_slice())),
            Arg::text(token.role.as_str()),
            Arg::Text(token.tenant.as_ref().map(TenantId::as_str)),
            Arg::text(&token.description),
            Arg::time(token.created_at),
            Arg::text(&token.created_by),
            Arg::Time(token.expires_at),
        ];
        B::execute(&mut tx, INSERT_TOKEN, &args).await?;
        let event = AuditEvent {
            after: Some(token.audit_json()),
            ..token_event(token.created_at, origin, Action::CreateToken, token)
        };
        insert_audit::<B>(&mut tx, &event).await?;
        B::announce_access(&mut tx).await?;
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
        let mut tx = self.pool.begin().await?;
        let args = [
            Arg::text(id.as_str()),
            Arg::Text(scope.map(TenantId::as_str)),
        ];
        let Some(row) = B::row(&mut tx, B::TOKEN_FOR_WRITE, &args).await? else {
            return Ok(None);
        };
        let before = B::token(&row)?;
        if before.revoked_at.is_some() {
            return Ok(Some(before));
        }
        B::execute(
            &mut tx,
            REVOKE_TOKEN,
            &[Arg::text(id.as_str()), Arg::time(now)],
        )
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
        insert_audit::<B>(&mut tx, &event).await?;
        B::announce_access(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    async fn list_tokens(
        &self,
        tenant: Option<&TenantId>,
        include_revoked: bool,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let args = [
            Arg::Text(tenant.map(TenantId::as_str)),
            Arg::Bool(include_revoked),
        ];
        let rows = B::rows(&mut conn, SELECT_TOKENS, &args).await?;
        rows.iter().map(B::token).collect()
    }

    async fn tenant_access(&self, tenant: &TenantId) -> Result<TenantAccess, StoreError> {
        let mut conn = self.pool.acquire().await?;
        stored_tenant_access::<B>(&mut conn, tenant).await
    }

    async fn set_tenant_access(
        &self,
        access: &TenantAccess,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<TenantAccess, StoreError> {
        let mut tx = self.pool.begin().await?;
        let before = stored_tenant_access::<B>(&mut tx, &access.tenant).await?;
        let args = [
            Arg::text(access.tenant.as_str()),
            Arg::Bool(access.verifier_token_required),
            Arg::time(now),
        ];
        B::execute(&mut tx, UPSERT_TENANT_ACCESS, &args).await?;
        let after = TenantAccess {
            updated_at: Some(now),
            ..access.clone()
        };
        insert_audit::<B>(&mut tx, &tenant_event(now, origin, &before, &after)).await?;
        B::announce_access(&mut tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let args = [
            Arg::Text(query.tenant.as_ref().map(TenantId::as_str)),
            Arg::Int(query.before.and_then(|id| i64::try_from(id).ok())),
            Arg::int(i64::from(query.limit)),
        ];
        let rows = B::rows(&mut conn, SELECT_AUDIT, &args).await?;
        rows.iter().map(B::audit_record).collect()
    }
}

/// A tenant's settings as stored, the defaults when there is no row.
async fn stored_tenant_access<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
) -> Result<TenantAccess, StoreError> {
    let row = B::row(conn, SELECT_TENANT_ACCESS, &[Arg::text(tenant.as_str())]).await?;
    let stored = match row {
        Some(row) => Some((B::bool(&row, 0)?, B::time(&row, 1)?)),
        None => None,
    };
    Ok(tenant_access(tenant, stored))
}
