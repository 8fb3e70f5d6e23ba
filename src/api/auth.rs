//! Bearer-token check for AdminService calls.

use tonic::{Request, Status, service::Interceptor};

use crate::admin_token::AdminToken;

/// Rejects calls without `authorization: Bearer <admin token>`.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    token: AdminToken,
}

impl AdminAuth {
    /// Accepts only `token`.
    pub fn new(token: AdminToken) -> Self {
        Self { token }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "admin calls need the metadata `authorization: Bearer <admin token>`",
            )
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <admin token>`")
            })?;
        if self.token.matches(presented.trim()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("admin token is not valid"))
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn call(header: Option<&str>) -> Result<(), Code> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let mut auth = AdminAuth::new(AdminToken::new("t0ken").unwrap());
        auth.call(request).map(drop).map_err(|status| status.code())
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert_eq!(call(Some("Bearer t0ken")), Ok(()));
        assert_eq!(call(None), Err(Code::Unauthenticated));
        assert_eq!(call(Some("Bearer wrong")), Err(Code::Unauthenticated));
        assert_eq!(call(Some("Basic t0ken")), Err(Code::Unauthenticated));
        assert_eq!(call(Some("t0ken")), Err(Code::Unauthenticated));
    }
}
