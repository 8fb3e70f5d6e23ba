//! Who is calling: interceptors that turn the `authorization` metadata into a `Principal`
//! attached to the request, required and admin-only on AdminService, optional on KeyService.

use std::{net::IpAddr, sync::Arc};

use tonic::{Request, Status, service::Interceptor};

use crate::{
    access::{AccessRegistry, AuthError, Principal},
    api::auth_failures::{AuthFailures, Service},
    clock::Clock,
    core::error::{Denial, Error},
};

/// Checks callers' tokens against the access registry at the service's time, reporting
/// failures; hands out the two interceptors.
#[derive(Clone)]
pub struct Authenticator {
    registry: Arc<AccessRegistry>,
    clock: Arc<dyn Clock>,
    failures: Arc<AuthFailures>,
}

impl Authenticator {
    /// Checks tokens against `registry` at `clock`'s time, reporting (and for AdminService
    /// limiting) failures with `failures`.
    pub fn new(
        registry: Arc<AccessRegistry>,
        clock: Arc<dyn Clock>,
        failures: Arc<AuthFailures>,
    ) -> Self {
        Self {
            registry,
            clock,
            failures,
        }
    }

    /// The KeyService interceptor.
    pub fn verifier(&self) -> VerifierAuth {
        VerifierAuth(self.clone())
    }

    /// The AdminService interceptor.
    pub fn admin(&self) -> AdminAuth {
        AdminAuth(self.clone())
    }

    /// The caller presenting the request's token, `None` without one; a failure is reported.
    fn caller(&self, service: Service, request: &Request<()>) -> Result<Option<Principal>, Status> {
        // Most KeyService calls carry no token: they cost no clock read.
        let Some(authorization) = request.metadata().get("authorization") else {
            return Ok(None);
        };
        self.registry
            .caller(Some(authorization.as_bytes()), self.clock.now())
            .map_err(|err| self.refuse(service, err, request))
    }

    fn refuse(&self, service: Service, err: AuthError, request: &Request<()>) -> Status {
        self.failures.failed(service, err.kind(), client(request));
        Error::from(err).into()
    }
}

fn client<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|addr| addr.ip())
}

/// Attaches the caller to KeyService requests that present a token; requests without one
/// pass anonymously (tenants that require a token are checked per call).
#[derive(Clone)]
pub struct VerifierAuth(Authenticator);

impl Interceptor for VerifierAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(caller) = self.0.caller(Service::Key, &request)? {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

/// Requires an admin token on AdminService requests and attaches its holder. A client
/// address that failed too often is refused before its token is looked at.
#[derive(Clone)]
pub struct AdminAuth(Authenticator);

impl Interceptor for AdminAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let auth = &self.0;
        auth.failures
            .admit(Service::Admin, client(&request))
            .map_err(Error::TooManyAuthFailures)?;
        match auth.caller(Service::Admin, &request)? {
            None => Err(auth.refuse(Service::Admin, AuthError::Missing, &request)),
            Some(caller) if !caller.is_admin() => {
                auth.failures
                    .failed(Service::Admin, "verifier_token", client(&request));
                Err(Error::from(Denial::VerifierToken).into())
            }
            Some(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
        }
    }
}

/// The caller an interceptor attached to `request`.
pub fn caller_of<T>(request: &Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, num::NonZeroU32};

    use tonic::{Code, transport::server::TcpConnectInfo};

    use super::*;
    use crate::{
        access::AccessState, access::admin_token::AdminToken, clock::SystemClock,
        observability::metrics::Metrics,
    };

    struct Admin {
        auth: AdminAuth,
        metrics: Arc<Metrics>,
    }

    impl Admin {
        /// AdminAuth for the server token `t0ken`, allowing one failure per second per client.
        fn new() -> Self {
            let registry =
                AccessRegistry::new(AdminToken::new("t0ken").unwrap(), AccessState::default());
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let metrics = Metrics::new(Vec::new());
            let failures = AuthFailures::new(Arc::clone(&metrics), NonZeroU32::MIN);
            let auth = Authenticator::new(Arc::new(registry), clock, Arc::new(failures)).admin();
            Self { auth, metrics }
        }

        fn call(&mut self, header: Option<&str>, from: &str) -> Result<Principal, Code> {
            let mut request = Request::new(());
            if let Some(value) = header {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(SocketAddr::new(from.parse().unwrap(), 40000)),
            });
            self.auth
                .call(request)
                .map(|request| caller_of(&request).cloned().unwrap())
                .map_err(|status| status.code())
        }

        fn failures(&self, reason: &str) -> String {
            let text = self.metrics.render().unwrap();
            let sample =
                format!("keyrelay_auth_failures_total{{service=\"admin\",reason=\"{reason}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&sample))
                .unwrap_or("0")
                .to_owned()
        }
    }

    #[test]
    fn admin_calls_need_the_right_bearer_token() {
        let cases = [
            (Some("Bearer t0ken"), Ok(Principal::ServerAdmin)),
            (None, Err(Code::Unauthenticated)),
            (Some("Bearer wrong"), Err(Code::Unauthenticated)),
            (Some("Basic t0ken"), Err(Code::Unauthenticated)),
            (Some("t0ken"), Err(Code::Unauthenticated)),
        ];
        for (client, (header, expected)) in cases.into_iter().enumerate() {
            let mut admin = Admin::new();
            assert_eq!(
                admin.call(header, &format!("127.0.0.{}", client + 2)),
                expected
            );
        }
    }

    #[test]
    fn failed_admin_authentications_are_counted_by_reason_and_limited_per_client() {
        let mut admin = Admin::new();
        assert_eq!(admin.call(None, "127.0.0.2"), Err(Code::Unauthenticated));
        assert_eq!(
            admin.call(Some("Bearer wrong"), "127.0.0.2"),
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            admin.call(Some("Bearer t0ken"), "127.0.0.2"),
            Ok(Principal::ServerAdmin),
            "the burst is not used up yet"
        );
        assert_eq!(
            admin.call(Some("Basic x"), "127.0.0.2"),
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            admin.call(Some("Bearer t0ken"), "127.0.0.2"),
            Err(Code::ResourceExhausted),
            "past the limit, even a valid token waits"
        );
        assert_eq!(
            admin.call(Some("Bearer t0ken"), "127.0.0.3"),
            Ok(Principal::ServerAdmin),
            "other clients are not affected"
        );
        for (reason, count) in [
            ("missing", "1"),
            ("rejected", "1"),
            ("malformed", "1"),
            ("rate_limited", "1"),
        ] {
            assert_eq!(admin.failures(reason), count, "{reason}");
        }
    }
}
