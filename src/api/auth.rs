//! Who is calling: interceptors that turn the `authorization` metadata into a `Principal`
//! attached to the request, required and admin-only on AdminService, optional on KeyService.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use crate::{
    access::{AccessRegistry, AuthError, Principal},
    clock::Clock,
    error::Error,
};

/// Attaches the caller to KeyService requests that present a token; requests without one
/// pass anonymously (tenants that require a token are checked per call).
#[derive(Clone)]
pub struct VerifierAuth {
    registry: Arc<AccessRegistry>,
    clock: Arc<dyn Clock>,
}

impl VerifierAuth {
    /// Checks tokens against `registry` at `clock`'s time.
    pub fn new(registry: Arc<AccessRegistry>, clock: Arc<dyn Clock>) -> Self {
        Self { registry, clock }
    }
}

impl Interceptor for VerifierAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(caller) = caller(&self.registry, self.clock.as_ref(), &request)? {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

/// Requires an admin token on AdminService requests and attaches its holder.
#[derive(Clone)]
pub struct AdminAuth {
    verifier: VerifierAuth,
}

impl AdminAuth {
    /// Checks tokens against `registry` at `clock`'s time.
    pub fn new(registry: Arc<AccessRegistry>, clock: Arc<dyn Clock>) -> Self {
        Self {
            verifier: VerifierAuth::new(registry, clock),
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let request = self.verifier.call(request)?;
        match request.extensions().get::<Principal>() {
            None => Err(Error::from(AuthError::Missing).into()),
            Some(caller) if !caller.is_admin() => Err(Error::PermissionDenied(
                "verifier tokens cannot call AdminService; use an admin token".into(),
            )
            .into()),
            Some(_) => Ok(request),
        }
    }
}

fn caller(
    registry: &AccessRegistry,
    clock: &dyn Clock,
    request: &Request<()>,
) -> Result<Option<Principal>, Status> {
    // Most KeyService calls carry no token: they cost no clock read.
    let Some(authorization) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    registry
        .caller(Some(authorization.as_bytes()), clock.now())
        .map_err(|err| Error::from(err).into())
}

/// The caller an interceptor attached to `request`.
pub fn caller_of<T>(request: &Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::{access::AccessState, admin_token::AdminToken, clock::SystemClock};

    fn admin_call(header: Option<&str>) -> Result<Principal, Code> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let registry =
            AccessRegistry::new(AdminToken::new("t0ken").unwrap(), AccessState::default());
        let mut auth = AdminAuth::new(Arc::new(registry), Arc::new(SystemClock));
        auth.call(request)
            .map(|request| caller_of(&request).cloned().unwrap())
            .map_err(|status| status.code())
    }

    #[test]
    fn admin_calls_need_the_right_bearer_token() {
        assert_eq!(admin_call(Some("Bearer t0ken")), Ok(Principal::ServerAdmin));
        assert_eq!(admin_call(None), Err(Code::Unauthenticated));
        assert_eq!(admin_call(Some("Bearer wrong")), Err(Code::Unauthenticated));
        assert_eq!(admin_call(Some("Basic t0ken")), Err(Code::Unauthenticated));
        assert_eq!(admin_call(Some("t0ken")), Err(Code::Unauthenticated));
    }
}
