//! `keyrelay.v1.AdminService`: register, unregister, inspect, list and refresh providers.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::{Request, Response, Status};

use crate::{
    cluster::Cluster,
    convert,
    domain::{EgressRules, ProviderKey, TenantId, ValidationError},
    error::Error,
    proto::{server::admin_service_server::AdminService, v1 as pb},
    relay::Relay,
};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// The AdminService handlers.
pub struct AdminApi {
    relay: Arc<Relay>,
    cluster: Arc<Cluster>,
    egress: EgressRules,
}

impl AdminApi {
    /// Handlers over `relay` and `cluster`, accepting JWKS URLs that pass `egress`.
    pub fn new(relay: Arc<Relay>, cluster: Arc<Cluster>, egress: EgressRules) -> Self {
        Self {
            relay,
            cluster,
            egress,
        }
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
        let request = request.into_inner();
        let registration = convert::new_registration(request, &self.egress).map_err(Error::from)?;
        super::record_key(&registration.key);
        let (snapshot, created) = self.relay.register(registration).await?;
        Ok(Response::new(pb::RegisterProviderResponse {
            provider: Some(convert::provider(&snapshot)),
            created,
        }))
    }

    async fn unregister_provider(
        &self,
        request: Request<pb::UnregisterProviderRequest>,
    ) -> Result<Response<pb::UnregisterProviderResponse>, Status> {
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        self.relay.unregister(&key).await?;
        Ok(Response::new(pb::UnregisterProviderResponse {}))
    }

    async fn get_provider(
        &self,
        request: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::GetProviderResponse>, Status> {
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        let snapshot = self.relay.get(&key)?;
        Ok(Response::new(pb::GetProviderResponse {
            provider: Some(convert::provider(&snapshot)),
        }))
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let request = request.into_inner();
        let tenant = match request.tenant.as_str() {
            "" => None,
            tenant => Some(TenantId::parse("tenant", tenant).map_err(Error::from)?),
        };
        let after = parse_page_token(&request.page_token).map_err(Error::from)?;
        let page = self.relay.list(
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
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        let snapshot = self.relay.refresh(&key).await?;
        Ok(Response::new(pb::RefreshProviderResponse {
            provider: Some(convert::provider(&snapshot)),
        }))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        let status = self.cluster.status().await.map_err(Error::from)?;
        Ok(Response::new(convert::cluster_status(
            &status,
            chrono::Utc::now(),
        )))
    }
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
