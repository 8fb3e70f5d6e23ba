//! The gRPC edge: request fields parsed into domain values, calls into the core, results
//! converted back to protobuf, errors mapped once to status codes (`status`).

mod admin_service;
mod auth;
pub mod auth_failures;
pub mod convert;
pub mod encoded;
pub mod grpc;
pub mod http_server;
mod key_service;
pub mod mirror;
mod observe;
pub mod status;
pub mod status_page;
pub mod watch;
mod watch_access;

pub use admin_service::AdminApi;
pub use auth::{AdminAuth, Authenticator, VerifierAuth};
pub use key_service::KeyApi;
pub use observe::{ObserveLayer, code_name};

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use tonic::{
    Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::{core::error::Error, domain::ProviderKey};

/// Parses the `tenant` and `provider` fields of a request and records them on the call's
/// span (only once valid: the span never carries arbitrary caller strings).
fn request_key(tenant: &str, provider: &str) -> Result<ProviderKey, Status> {
    let key = ProviderKey::parse(tenant, provider).map_err(Error::from)?;
    record_key(&key);
    Ok(key)
}

/// Records a parsed tenant and provider on the call's span.
fn record_key(key: &ProviderKey) {
    let span = tracing::Span::current();
    span.record("keyrelay.tenant", key.tenant().as_str());
    span.record("keyrelay.provider", key.provider().as_str());
}

/// The address of the client of an HTTP request, on the gRPC listener (plain or TLS) and on
/// the HTTP listener.
pub(crate) fn http_client_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    let tcp = |info: &TcpConnectInfo| info.remote_addr().map(|addr| addr.ip());
    extensions
        .get::<TcpConnectInfo>()
        .and_then(tcp)
        .or_else(|| {
            let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
            tcp(tls.get_ref())
        })
        .or_else(|| {
            let ConnectInfo(addr) = extensions.get::<ConnectInfo<SocketAddr>>()?;
            Some(addr.ip())
        })
}
