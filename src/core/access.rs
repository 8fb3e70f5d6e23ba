//! The access-management operations behind AdminService: issuing and revoking tokens,
//! tenant access settings and reading the audit log, each checked against the caller's
//! scope, written with its audit event, then applied to the registry.

use std::{sync::Arc, time::Duration};

use crate::access::{
    AccessChange, AccessRegistry, GeneratedToken, Origin, Principal, Role, TenantAccess, TokenId,
    TokenRecord,
};
use crate::{
    access::AuditRecord,
    clock::Clock,
    core::error::{Denial, Error},
    domain::{TenantId, ValidationError},
    store::{AuditQuery, Store},
};

/// Longest token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// What to issue.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// What it may do.
    pub role: Role,
    /// Its tenant; `None`: every tenant.
    pub tenant: Option<TenantId>,
    /// Who holds it.
    pub description: String,
    /// How long it is valid; `None`: until revoked.
    pub ttl: Option<Duration>,
}

/// Which tenant a listing may show the caller: `None` when the caller asked for a tenant
/// outside its scope (the answer is then empty), else the filter to apply.
pub fn visible_filter(caller: &Principal, requested: Option<TenantId>) -> Option<Option<TenantId>> {
    match (caller.tenant_scope(), requested) {
        (None, requested) => Some(requested),
        (Some(own), None) => Some(Some(own.clone())),
        (Some(own), Some(requested)) => (own == &requested).then_some(Some(requested)),
    }
}

/// Access management over the store, keeping `registry` in step.
pub struct AccessControl {
    store: Arc<dyn Store>,
    registry: Arc<AccessRegistry>,
    clock: Arc<dyn Clock>,
}

impl AccessControl {
    /// Manages the access state kept in `store` and served from `registry`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<AccessRegistry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            registry,
            clock,
        }
    }

    /// The registry calls are checked against.
    pub fn registry(&self) -> &Arc<AccessRegistry> {
        &self.registry
    }

    /// Issues a token; returns its record and its bearer string (shown once).
    pub async fn create_token(
        &self,
        caller: &Principal,
        origin: &Origin,
        request: TokenRequest,
    ) -> Result<(TokenRecord, String), Error> {
        if request.role == Role::Verifier && request.tenant.is_none() {
            return Err(ValidationError::new("tenant", "a verifier token needs a tenant").into());
        }
        let allowed = match &request.tenant {
            Some(tenant) => caller.administers(tenant),
            None => caller.administers_everything(),
        };
        if !allowed {
            return Err(Denial::IssueBeyondTenant.into());
        }
        let now = self.clock.now();
        let expires_at = request.ttl.map(|ttl| expiry(now, ttl)).transpose()?;
        let generated = GeneratedToken::generate();
        let record = TokenRecord {
            id: generated.id,
            digest: generated.digest,
            role: request.role,
            tenant: request.tenant,
            description: request.description,
            created_at: now,
            created_by: caller.actor(),
            expires_at,
            revoked_at: None,
        };
        self.store.create_token(&record, origin).await?;
        self.registry.apply(AccessChange::Issued(record.clone()));
        Ok((record, generated.bearer))
    }

    /// Revokes a token within the caller's scope.
    pub async fn revoke_token(
        &self,
        caller: &Principal,
        origin: &Origin,
        id: &TokenId,
    ) -> Result<TokenRecord, Error> {
        let revoked = self
            .store
            .revoke_token(id, caller.tenant_scope(), self.clock.now(), origin)
            .await?
            .ok_or_else(|| Error::TokenNotFound(id.as_str().to_owned()))?;
        self.registry.apply(AccessChange::Revoked(id.clone()));
        Ok(revoked)
    }

    /// The tokens the caller may see.
    pub async fn list_tokens(
        &self,
        caller: &Principal,
        tenant: Option<TenantId>,
        include_revoked: bool,
    ) -> Result<Vec<TokenRecord>, Error> {
        let Some(filter) = visible_filter(caller, tenant) else {
            return Ok(Vec::new());
        };
        Ok(self
            .store
            .list_tokens(filter.as_ref(), include_revoked)
            .await?)
    }

    /// A tenant's access settings.
    pub async fn tenant_access(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<TenantAccess, Error> {
        ensure_administers(caller, tenant)?;
        Ok(self.store.tenant_access(tenant).await?)
    }

    /// Changes a tenant's access settings.
    pub async fn set_tenant_access(
        &self,
        caller: &Principal,
        origin: &Origin,
        tenant: TenantId,
        verifier_token_required: bool,
    ) -> Result<TenantAccess, Error> {
        ensure_administers(caller, &tenant)?;
        let now = self.clock.now();
        let access = TenantAccess {
            tenant,
            verifier_token_required,
            updated_at: Some(now),
        };
        let stored = self.store.set_tenant_access(&access, now, origin).await?;
        self.registry.apply(AccessChange::Tenant(stored.clone()));
        Ok(stored)
    }

    /// A page of the audit log the caller may see, newest first.
    pub async fn audit_events(
        &self,
        caller: &Principal,
        tenant: Option<TenantId>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        let Some(tenant) = visible_filter(caller, tenant) else {
            return Ok(Vec::new());
        };
        let query = AuditQuery {
            tenant,
            before,
            limit,
        };
        Ok(self.store.audit_events(&query).await?)
    }
}

/// Fails with PERMISSION_DENIED unless `caller` may administer `tenant`.
pub fn ensure_administers(caller: &Principal, tenant: &TenantId) -> Result<(), Error> {
    if caller.administers(tenant) {
        Ok(())
    } else {
        Err(Denial::OtherTenant(tenant.clone()).into())
    }
}

fn expiry(
    now: chrono::DateTime<chrono::Utc>,
    ttl: Duration,
) -> Result<chrono::DateTime<chrono::Utc>, Error> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ValidationError::new("ttl", "must be above zero and at most 10 years").into());
    }
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .ok_or_else(|| ValidationError::new("ttl", "is too long").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse("tenant", name).unwrap()
    }

    #[test]
    fn listings_never_show_a_scoped_caller_another_tenant() {
        let scoped = Principal::Token {
            id: TokenId::parse("0123456789abcdef").unwrap(),
            role: Role::Admin,
            tenant: Some(tenant("acme")),
        };
        assert_eq!(visible_filter(&scoped, None), Some(Some(tenant("acme"))));
        assert_eq!(
            visible_filter(&scoped, Some(tenant("acme"))),
            Some(Some(tenant("acme")))
        );
        assert_eq!(visible_filter(&scoped, Some(tenant("globex"))), None);
        assert_eq!(visible_filter(&Principal::ServerAdmin, None), Some(None));
        assert_eq!(
            visible_filter(&Principal::ServerAdmin, Some(tenant("globex"))),
            Some(Some(tenant("globex")))
        );
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        let now = chrono::Utc::now();
        assert!(expiry(now, Duration::from_secs(60)).is_ok());
        assert!(expiry(now, Duration::ZERO).is_err());
        assert!(expiry(now, MAX_TOKEN_TTL + Duration::from_secs(1)).is_err());
    }
}
