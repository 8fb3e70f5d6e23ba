//! `keyrelay.v1.KeyService`: Resolve from memory; WatchKeys is declared but not served yet.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    domain::{Kid, ProviderKey},
    error::Error,
    proto::v1::{self as pb, key_service_server::KeyService},
    relay::{Relay, Resolved},
};

/// The KeyService handlers.
pub struct KeyApi {
    relay: Arc<Relay>,
}

impl KeyApi {
    /// Handlers over `relay`.
    pub fn new(relay: Arc<Relay>) -> Self {
        Self { relay }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchKeysResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let request = request.into_inner();
        let key = ProviderKey::parse(&request.tenant, &request.provider).map_err(Error::from)?;
        let kid = request
            .kid
            .as_deref()
            .map(Kid::parse)
            .transpose()
            .map_err(Error::from)?;
        let resolved = self
            .relay
            .resolve(&key, kid.as_ref(), request.if_newer_than_version)
            .await?;
        let result = match resolved {
            Resolved::NotModified => pb::resolve_response::Result::NotModified(true),
            Resolved::KeySet(snapshot) => {
                let keys =
                    snapshot.record.keys.as_ref().ok_or_else(|| {
                        Error::Unavailable(format!("no keys fetched yet for {key}"))
                    })?;
                pb::resolve_response::Result::KeySet(convert::key_set(&snapshot, keys))
            }
        };
        Ok(Response::new(pb::ResolveResponse {
            result: Some(result),
        }))
    }

    type WatchKeysStream = WatchStream;

    async fn watch_keys(
        &self,
        _request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        Err(Status::unimplemented(
            "WatchKeys is not implemented yet; poll Resolve with if_newer_than_version",
        ))
    }
}
