//! `keyrelay.v1.AdminService`: register, unregister, inspect, list and refresh providers;
//! revoke and reinstate their keys; issue and revoke access tokens, set tenant access, read
//! the audit log. Every call is
//! confined to the caller's tenant scope.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Request, Response, Status};

use crate::{
    access::{AuthError, Origin, Principal, TokenId},
    api::convert,
    api::grpc::admin_service_server::AdminService,
    cluster::Cluster,
    core::access::{AccessControl, ensure_administers, visible_filter},
    core::error::{Denial, Error},
    core::providers::Providers,
    domain::revocation::RevocationReason,
    domain::{EgressRules, Kid, ProviderKey, TenantId, ValidationError},
    proto::v1 as pb,
};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// The AdminService handlers.
pub struct AdminApi {
    providers: Arc<Providers>,
    cluster: Arc<Cluster>,
    egress: EgressRules,
    access: Arc<AccessControl>,
}

impl AdminApi {
    /// Handlers over `providers`, `cluster` and `access`, accepting JWKS URLs that pass `egress`.
    pub fn new(
        providers: Arc<Providers>,
        cluster: Arc<Cluster>,
        egress: EgressRules,
        access: Arc<AccessControl>,
    ) -> Self {
        Self {
            providers,
            cluster,
            egress,
            access,
        }
    }
}

/// The caller `AdminAuth` attached, and the origin its changes are audited under.
fn caller<T>(request: &Request<T>) -> Result<(Principal, Origin), Status> {
    let caller = super::auth::caller_of(request)
        .cloned()
        .ok_or_else(|| Error::from(AuthError::Missing))?;
    let origin = Origin::caller(&caller, request.remote_addr());
    Ok((caller, origin))
}

/// A provider outside the caller's scope is reported as absent: its existence is not told.
fn ensure_visible(caller: &Principal, key: &ProviderKey) -> Result<(), Error> {
    if caller.administers(key.tenant()) {
        Ok(())
    } else {
        Err(Error::ProviderNotFound(key.clone()))
    }
}

fn page_token(key: &ProviderKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_string())
}

fn parse_page_token(token: &str) -> Result<Option<ProviderKey>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ValidationError::new(
            "page_token",
            "not a token from a previous ListProviders response",
        )
    };
    let decoded = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (tenant, provider) = text.split_once('/').ok_or_else(invalid)?;
    ProviderKey::parse(tenant, provider)
        .map(Some)
        .map_err(|_| invalid())
}

fn page_size(requested: u32) -> usize {
    match usize::try_from(requested).unwrap_or(MAX_PAGE_SIZE) {
        0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn register_provider(
        &self,
        request: Request<pb::RegisterProviderRequest>,
    ) -> Result<Response<pb::RegisterProviderResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let registration =
            convert::new_registration(request.into_inner(), &self.egress).map_err(Error::from)?;
        super::record_key(&registration.key);
        ensure_administers(&caller, registration.key.tenant())?;
        let (snapshot, created) = self.providers.register(registration, &origin).await?;
        Ok(Response::new(pb::RegisterProviderResponse {
            provider: Some(convert::provider(&snapshot)),
            created,
        }))
    }

    async fn unregister_provider(
        &self,
        request: Request<pb::UnregisterProviderRequest>,
    ) -> Result<Response<pb::UnregisterProviderResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        ensure_visible(&caller, &key)?;
        self.providers.unregister(&key, &origin).await?;
        Ok(Response::new(pb::UnregisterProviderResponse {}))
    }

    async fn get_provider(
        &self,
        request: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::GetProviderResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        ensure_visible(&caller, &key)?;
        let snapshot = self.providers.get(&key)?;
        Ok(Response::new(pb::GetProviderResponse {
            provider: Some(convert::provider(&snapshot)),
        }))
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let request = request.into_inner();
        let tenant = convert::optional_tenant(&request.tenant).map_err(Error::from)?;
        let after = parse_page_token(&request.page_token).map_err(Error::from)?;
        let Some(tenant) = visible_filter(&caller, tenant) else {
            return Ok(Response::new(pb::ListProvidersResponse::default()));
        };
        let page = self.providers.list(
            tenant.as_ref(),
            after.as_ref(),
            page_size(request.page_size),
        );
        Ok(Response::new(pb::ListProvidersResponse {
            providers: page.providers.iter().map(convert::provider).collect(),
            next_page_token: page.next_after.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn refresh_provider(
        &self,
        request: Request<pb::RefreshProviderRequest>,
    ) -> Result<Response<pb::RefreshProviderResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        ensure_visible(&caller, &key)?;
        let snapshot = self.providers.refresh(&key).await?;
        Ok(Response::new(pb::RefreshProviderResponse {
            provider: Some(convert::provider(&snapshot)),
        }))
    }

    async fn get_cluster_status(
        &self,
        request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        let (caller, _) = caller(&request)?;
        if !caller.administers_everything() {
            return Err(Error::from(Denial::EveryTenant("the cluster status")).into());
        }
        let now = self.providers.now();
        let status = self.cluster.status(now).await.map_err(Error::from)?;
        Ok(Response::new(convert::cluster_status(&status, now)))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let token_request = convert::token_request(request.into_inner()).map_err(Error::from)?;
        let (record, secret) = self
            .access
            .create_token(&caller, &origin, token_request)
            .await?;
        tracing::info!(
            token = record.id.as_str(),
            actor = origin.actor,
            "access token issued"
        );
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::token(&record)),
            secret,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let id = TokenId::parse(&request.get_ref().id).map_err(Error::from)?;
        let record = self.access.revoke_token(&caller, &origin, &id).await?;
        tracing::info!(
            token = id.as_str(),
            actor = origin.actor,
            "access token revoked"
        );
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(convert::token(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let request = request.into_inner();
        let tenant = convert::optional_tenant(&request.tenant).map_err(Error::from)?;
        let tokens = self
            .access
            .list_tokens(&caller, tenant, request.include_revoked)
            .await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(convert::token).collect(),
        }))
    }

    async fn set_tenant_access(
        &self,
        request: Request<pb::SetTenantAccessRequest>,
    ) -> Result<Response<pb::SetTenantAccessResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        let tenant = TenantId::parse("tenant", &request.tenant).map_err(Error::from)?;
        let access = self
            .access
            .set_tenant_access(&caller, &origin, tenant, request.verifier_token_required)
            .await?;
        Ok(Response::new(pb::SetTenantAccessResponse {
            access: Some(convert::tenant_access(&access)),
        }))
    }

    async fn get_tenant_access(
        &self,
        request: Request<pb::GetTenantAccessRequest>,
    ) -> Result<Response<pb::GetTenantAccessResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let tenant = TenantId::parse("tenant", &request.get_ref().tenant).map_err(Error::from)?;
        let access = self.access.tenant_access(&caller, &tenant).await?;
        Ok(Response::new(pb::GetTenantAccessResponse {
            access: Some(convert::tenant_access(&access)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let request = request.into_inner();
        let tenant = convert::optional_tenant(&request.tenant).map_err(Error::from)?;
        let before = parse_audit_page_token(&request.page_token).map_err(Error::from)?;
        let limit = page_size(request.page_size);
        let events = self
            .access
            .audit_events(
                &caller,
                tenant,
                before,
                u32::try_from(limit).unwrap_or(u32::MAX),
            )
            .await?;
        let next_page_token = match events.last() {
            Some(last) if events.len() == limit => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(convert::audit_event).collect(),
            next_page_token,
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        let kid = Kid::parse(&request.kid).map_err(Error::from)?;
        let reason = RevocationReason::parse(&request.reason).map_err(Error::from)?;
        ensure_visible(&caller, &key)?;
        let revised = self
            .providers
            .revoke_key(&key, &kid, &reason, &origin)
            .await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            in_key_set: revised.snapshot.provider_publishes(&kid),
            provider: Some(convert::provider(&revised.snapshot)),
            already_revoked: !revised.changed,
        }))
    }

    async fn reinstate_key(
        &self,
        request: Request<pb::ReinstateKeyRequest>,
    ) -> Result<Response<pb::ReinstateKeyResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        let kid = Kid::parse(&request.kid).map_err(Error::from)?;
        ensure_visible(&caller, &key)?;
        let revised = self.providers.reinstate_key(&key, &kid, &origin).await?;
        Ok(Response::new(pb::ReinstateKeyResponse {
            in_key_set: revised.snapshot.provider_publishes(&kid),
            provider: Some(convert::provider(&revised.snapshot)),
        }))
    }

    async fn publish_key_set(
        &self,
        request: Request<pb::PublishKeySetRequest>,
    ) -> Result<Response<pb::PublishKeySetResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        ensure_visible(&caller, &key)?;
        let pushed = self
            .providers
            .publish_key_set(&key, &request.jwks_json, &origin)
            .await?;
        Ok(Response::new(pb::PublishKeySetResponse {
            provider: Some(convert::provider(&pushed.snapshot)),
            changed: pushed.changed,
        }))
    }
}

fn parse_audit_page_token(token: &str) -> Result<Option<u64>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|_| {
        ValidationError::new(
            "page_token",
            "not a token from a previous ListAuditEvents response",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        assert_eq!(parse_page_token(&page_token(&key)), Ok(Some(key)));
        assert_eq!(parse_page_token(""), Ok(None));
        for bad in ["!!!", "YWJj", &URL_SAFE_NO_PAD.encode("A/b")] {
            assert_eq!(
                parse_page_token(bad).unwrap_err().field,
                "page_token",
                "{bad}"
            );
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5), 5);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }
}
