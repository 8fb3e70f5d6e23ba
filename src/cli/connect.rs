//! Reaching the server: the channel (plain or TLS), the admin and verifier tokens sent with
//! every call, and the error every client command fails with.

use std::{io, path::Path};

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::ClientOptions;
use crate::{
    access::admin_token::AdminToken,
    proto::v1::{admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server is unreachable.
    #[error("cannot reach keyrelay at {server}: {source}")]
    Connect {
        /// The address.
        server: String,
        /// The transport failure.
        source: tonic::transport::Error,
    },
    /// The server address or the TLS settings are unusable.
    #[error(transparent)]
    Endpoint(#[from] keyrelay_verifier::ConnectError),
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// The I/O failure.
        source: io::Error,
    },
    /// No admin token could be found.
    #[error(
        "no admin token: pass --admin-token, set KEYRELAY_ADMIN_TOKEN, or point --data-dir at the server's data directory ({path}: {source})"
    )]
    NoToken {
        /// Where the token file was looked for.
        path: String,
        /// Why it could not be read.
        source: io::Error,
    },
    /// The admin token has characters that cannot go in metadata.
    #[error("the admin token is not valid metadata: {0}")]
    BadToken(#[from] InvalidMetadataValue),
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Call(#[from] Status),
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Input {
        /// The file (`-`: standard input).
        path: String,
        /// The I/O failure.
        source: io::Error,
    },
    /// `keyrelay verify` refused the token.
    #[error("token refused: {0}")]
    TokenRefused(#[from] keyrelay_verifier::VerifyError),
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub(super) struct BearerToken(Option<AsciiMetadataValue>);
impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(super) type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

pub(super) type KeysClient = KeyServiceClient<InterceptedService<Channel, BearerToken>>;

pub(super) async fn connect(options: &ClientOptions) -> Result<Channel, ClientError> {
    keyrelay_verifier::endpoint(options.server.clone(), client_tls(options).await?)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            server: options.server.clone(),
            source,
        })
}

/// TLS settings from `--ca-cert`, `--client-cert` and `--client-key`; none without them.
pub(super) async fn client_tls(
    options: &ClientOptions,
) -> Result<Option<ClientTlsConfig>, ClientError> {
    if options.ca_cert.is_none() && options.client_cert.is_none() {
        return Ok(None);
    }
    let tls = match &options.ca_cert {
        Some(path) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path).await?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let tls = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            tls.identity(Identity::from_pem(read(cert).await?, read(key).await?))
        }
        _ => tls,
    };
    Ok(Some(tls))
}

pub(super) async fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ClientError::TlsFile {
            path: path.display().to_string(),
            source,
        })
}

/// An AdminService client sending the admin token.
pub(super) async fn admin_client(options: &ClientOptions) -> Result<AdminClient, ClientError> {
    let token = admin_token(options)?;
    let bearer = BearerToken(Some(format!("Bearer {}", token.expose()).parse()?));
    Ok(AdminServiceClient::with_interceptor(
        connect(options).await?,
        bearer,
    ))
}

/// A KeyService client sending the access token, if one is given.
pub(super) async fn keys_client(options: &ClientOptions) -> Result<KeysClient, ClientError> {
    let bearer = options
        .access_token
        .as_deref()
        .map(|token| format!("Bearer {token}").parse())
        .transpose()?;
    Ok(KeyServiceClient::with_interceptor(
        connect(options).await?,
        BearerToken(bearer),
    ))
}

pub(super) fn admin_token(options: &ClientOptions) -> Result<AdminToken, ClientError> {
    if let Some(token) = options.admin_token.as_deref().and_then(AdminToken::new) {
        return Ok(token);
    }
    AdminToken::read_from(&options.data_dir).map_err(|source| ClientError::NoToken {
        path: AdminToken::path_in(&options.data_dir).display().to_string(),
        source,
    })
}
