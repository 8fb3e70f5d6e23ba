//! The gRPC edge: request fields parsed into domain values, calls into the relay, results
//! converted back to protobuf, errors mapped once through `crate::error`.

mod admin_service;
mod auth;
mod key_service;

pub use admin_service::AdminApi;
pub use auth::AdminAuth;
pub use key_service::KeyApi;
