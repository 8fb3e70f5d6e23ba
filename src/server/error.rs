//! Why the server could not start, or stopped abnormally.

use std::net::SocketAddr;

use crate::{
    domain::ValidationError, server::tls::TlsError, store::StoreError,
    upstream::fetch::FetchSetupError,
};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is incoherent.
    #[error("configuration: {0}")]
    Config(#[from] ValidationError),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory or the admin token file could not be used.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// The token file.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind failure.
        source: std::io::Error,
    },
    /// The JWKS fetcher could not be built.
    #[error("JWKS fetcher: {0}")]
    Fetcher(#[from] FetchSetupError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's TLS files are unusable.
    #[error("listener TLS: {0}")]
    Tls(#[from] TlsError),
}
