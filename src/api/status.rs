//! The one mapping of keyrelay's errors to gRPC status codes (for the gRPC services) and HTTP
//! status codes (for the JWKS mirror), by their kind. Internal faults are logged here, once.

use tonic::{Code, Status};

use crate::core::error::{Error, ErrorKind};

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = grpc_code(err.kind());
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

/// The gRPC code of a kind of failure.
pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Conflict => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The HTTP status of a kind of failure, for the JWKS mirror: the same classes as the gRPC
/// codes.
pub fn http_status(kind: ErrorKind) -> http::StatusCode {
    use http::StatusCode;
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Conflict | ErrorKind::Aborted => StatusCode::CONFLICT,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ValidationError;

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = Status::from(Error::Invalid(ValidationError::new(
            "jwks_url",
            "must use https",
        )));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid jwks_url: must use https");
    }

    #[test]
    fn every_kind_has_a_grpc_and_an_http_status_of_the_same_class() {
        let pairs = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument, 400),
            (ErrorKind::NotFound, Code::NotFound, 404),
            (ErrorKind::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorKind::Unavailable, Code::Unavailable, 503),
            (ErrorKind::Conflict, Code::FailedPrecondition, 409),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted, 429),
            (ErrorKind::Internal, Code::Internal, 500),
        ];
        for (kind, code, http) in pairs {
            assert_eq!((grpc_code(kind), http_status(kind).as_u16()), (code, http));
        }
    }
}
