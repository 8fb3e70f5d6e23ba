//! The service's error type and its one mapping to gRPC status codes. Messages say what the
//! caller can do about the failure.

use tonic::{Code, Status};

use crate::{
    access::AuthError,
    domain::{ProviderKey, ValidationError},
    refresh::RefreshError,
    store::StoreError,
};

/// Everything a keyrelay operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such registration (or none the caller may see).
    #[error("provider {0} is not registered")]
    ProviderNotFound(ProviderKey),
    /// No such access token (or none the caller may see).
    #[error("access token {0} does not exist")]
    TokenNotFound(String),
    /// Missing or invalid credentials.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Valid credentials, but not for this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The requested kid is not in the provider's keys, even after a refresh.
    #[error("{0}")]
    KidNotFound(String),
    /// No usable keys: never fetched, or expired beyond max_stale.
    #[error("{0}")]
    Unavailable(String),
    /// A client asked for unknown kids faster than allowed.
    #[error("too many lookups of unknown kids from this client; retry in {0:?}")]
    RateLimited(std::time::Duration),
    /// A client failed to authenticate on AdminService too often.
    #[error("too many failed authentications from this address; retry in {0:?}")]
    TooManyAuthFailures(std::time::Duration),
    /// The request cannot be served as asked (kids colliding across a tenant's providers).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refresh could not complete.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = code_of(&err);
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

/// The one mapping of service errors to gRPC codes.
fn code_of(err: &Error) -> Code {
    match err {
        Error::Invalid(_) => Code::InvalidArgument,
        Error::ProviderNotFound(_) | Error::KidNotFound(_) | Error::TokenNotFound(_) => {
            Code::NotFound
        }
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Store(StoreError::Database(_) | StoreError::Timeout(_))
        | Error::Refresh(
            RefreshError::Store(_) | RefreshError::LeaderTimeout(_) | RefreshError::NotLeader,
        ) => Code::Unavailable,
        Error::Refresh(RefreshError::Superseded) => Code::Aborted,
        Error::Conflict(_) => Code::FailedPrecondition,
        Error::RateLimited(_) | Error::TooManyAuthFailures(_) => Code::ResourceExhausted,
        Error::Store(_) => Code::Internal,
    }
}

impl Error {
    /// The HTTP status of this error, for the JWKS mirror: the same classes as the gRPC codes.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match code_of(self) {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_the_code_a_client_can_act_on() {
        let key = ProviderKey::parse("t", "p").unwrap();
        let cases = [
            (
                Error::Invalid(ValidationError::new("tenant", "bad")),
                Code::InvalidArgument,
            ),
            (Error::ProviderNotFound(key), Code::NotFound),
            (Error::KidNotFound("kid".into()), Code::NotFound),
            (Error::Unavailable("down".into()), Code::Unavailable),
            (
                Error::Refresh(RefreshError::Store("down".into())),
                Code::Unavailable,
            ),
            (Error::Refresh(RefreshError::Superseded), Code::Aborted),
            (Error::TokenNotFound("0".into()), Code::NotFound),
            (
                Error::Unauthenticated(AuthError::Rejected),
                Code::Unauthenticated,
            ),
            (Error::PermissionDenied("no".into()), Code::PermissionDenied),
            (
                Error::Store(StoreError::Corrupt {
                    key: "t/p".into(),
                    reason: "x".into(),
                }),
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = Status::from(Error::Invalid(ValidationError::new(
            "jwks_url",
            "must use https",
        )));
        assert_eq!(status.message(), "invalid jwks_url: must use https");
    }
}
