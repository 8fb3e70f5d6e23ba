//! Reaching keyrelay: an `http://` address in plain text, an `https://` one over TLS, with
//! the CA to trust and the client certificate to present when given, and the system's roots
//! otherwise. TLS settings with an `http://` address are refused rather than ignored.

use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::ConnectError;

/// An endpoint for keyrelay at `address`, for the verifier or for clients of the generated
/// [`proto`](crate::proto) services.
pub fn endpoint(
    address: impl Into<String>,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, ConnectError> {
    let endpoint = Endpoint::from_shared(address.into())?;
    if endpoint.uri().scheme_str() == Some("https") {
        let tls = tls.unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
        return Ok(endpoint.tls_config(tls)?);
    }
    match tls {
        None => Ok(endpoint),
        Some(_) => Err(ConnectError::TlsNeedsHttps(endpoint.uri().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_take_no_tls_settings() {
        assert!(endpoint("http://127.0.0.1:50051", None).is_ok());
        let refused = endpoint("http://127.0.0.1:50051", Some(ClientTlsConfig::new()));
        assert!(
            matches!(refused, Err(ConnectError::TlsNeedsHttps(ref uri)) if uri.starts_with("http://127.0.0.1:50051")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_bad_address_is_an_error() {
        assert!(matches!(
            endpoint("not a uri", None),
            Err(ConnectError::Endpoint(_))
        ));
    }
}
