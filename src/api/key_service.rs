//! `keyrelay.v1.KeyService`: Resolve from memory, WatchKeys streams from the same state.
//! Providers of a tenant that requires a verifier token are invisible to callers without one.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::watch_access::WatchAccess;
use crate::{
    access::AccessRegistry,
    api::grpc::key_service_server::KeyService,
    api::{
        encoded::EncodedEvent,
        watch::{WatchHub, WatchRequest},
    },
    clock::Clock,
    core::error::{Error, NoUsableKeys},
    core::providers::{Providers, Resolved},
    domain::Kid,
    proto::v1 as pb,
};

/// The KeyService handlers.
pub struct KeyApi {
    providers: Arc<Providers>,
    watch: Arc<WatchHub>,
    access: Arc<AccessRegistry>,
    clock: Arc<dyn Clock>,
}

impl KeyApi {
    /// Handlers over `providers` and `watch`, which share one cache, checking callers against
    /// `access` at `clock`'s time.
    pub fn new(
        providers: Arc<Providers>,
        watch: Arc<WatchHub>,
        access: Arc<AccessRegistry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            providers,
            watch,
            access,
            clock,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<EncodedEvent>, Status> {
        let client = request.remote_addr().map(|addr| addr.ip());
        let caller = super::auth::caller_of(&request).cloned();
        let request = request.into_inner();
        let key = super::request_key(&request.tenant, &request.provider)?;
        if !self.access.may_read(caller.as_ref(), key.tenant()) {
            return Err(Error::ProviderNotFound(key).into());
        }
        let kid = request
            .kid
            .as_deref()
            .map(Kid::parse)
            .transpose()
            .map_err(Error::from)?;
        let resolved = self
            .providers
            .resolve(&key, kid.as_ref(), request.if_newer_than_version, client)
            .await?;
        let answer = match resolved {
            Resolved::NotModified => EncodedEvent::not_modified(),
            Resolved::KeySet(snapshot) => {
                let keys = snapshot.record.keys.as_ref().ok_or_else(|| {
                    Error::from(NoUsableKeys::NotFetched {
                        key: key.clone(),
                        last_error: None,
                    })
                })?;
                self.watch.key_set_message(&snapshot, keys)
            }
        };
        Ok(Response::new(answer))
    }

    type WatchKeysStream = WatchStream;

    async fn watch_keys(
        &self,
        request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let caller = super::auth::caller_of(&request).cloned();
        let mut parsed =
            WatchRequest::parse(request.get_ref(), self.watch.cache()).map_err(Error::from)?;
        parsed.retain_tenants(|tenant| self.access.may_read(caller.as_ref(), tenant));
        let access = WatchAccess {
            registry: Arc::clone(&self.access),
            clock: Arc::clone(&self.clock),
            caller,
            tenants: parsed.selected_tenants(),
        };
        let stream = self.watch.subscribe(parsed).into_stream();
        Ok(Response::new(Box::pin(access.guard(stream))))
    }
}
