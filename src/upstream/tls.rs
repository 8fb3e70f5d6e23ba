//! The TLS trust keyrelay applies when fetching from identity providers: the platform's root
//! certificates plus an optional CA bundle (`--idp-ca-file`), and, for providers that pin
//! their keys, a verifier that refuses the handshake unless the presented chain carries a
//! pinned public key. Listener TLS is not here.

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use crate::domain::SpkiPin;

/// Why the IdP trust roots could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// The CA bundle is unreadable or holds no certificate.
    #[error("cannot read IdP CA bundle {path}: {reason}")]
    CaBundle {
        /// The file named by `--idp-ca-file`.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the roots or the protocol settings.
    #[error("cannot set up TLS for fetching from IdPs: {0}")]
    Setup(#[from] rustls::Error),
}

/// Reads every certificate of a PEM bundle.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let failed = |reason: String| UpstreamTlsError::CaBundle {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| failed(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| failed(err.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The certificate verification every fetch starts from.
#[derive(Debug, Clone)]
pub struct UpstreamTrustRoots {
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl UpstreamTrustRoots {
    /// The platform's roots plus `extra_roots`.
    pub fn new(extra_roots: Vec<CertificateDer<'static>>) -> Result<Self, UpstreamTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots,
            Arc::clone(&provider),
        )?;
        Ok(Self {
            verifier: Arc::new(verifier),
            provider,
        })
    }

    /// A client configuration for HTTP/2 or HTTP/1.1 that also requires one of `pins`
    /// (none when empty) in the server's chain.
    pub fn client_config(&self, pins: &[SpkiPin]) -> Result<ClientConfig, UpstreamTlsError> {
        let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() {
            Arc::clone(&self.verifier)
        } else {
            Arc::new(PinningVerifier {
                inner: Arc::clone(&self.verifier),
                pins: pins.to_vec(),
            })
        };
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The handshake error of a chain that verifies but carries no pinned key.
struct PinMismatch {
    presented: Vec<SpkiPin>,
}

/// rustls shows this error with `Debug`, and the message is what an operator needs to read.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presented: Vec<String> = self.presented.iter().map(ToString::to_string).collect();
        write!(
            f,
            "certificate chain matches none of policy.spki_sha256_pins (chain pins: {})",
            presented.join(", ")
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies as usual, then requires a pinned key among the certificates the server sent.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<SpkiPin>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let presented: Vec<SpkiPin> = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(spki_pin)
            .collect();
        if presented.iter().any(|pin| self.pins.contains(pin)) {
            Ok(verified)
        } else {
            let mismatch = PinMismatch { presented };
            Err(CertificateError::Other(OtherError(Arc::new(mismatch))).into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The pin of a certificate's public key; `None` if it does not parse (the chain verified,
/// so only an unusual intermediate can get here).
fn spki_pin(cert: &CertificateDer<'_>) -> Option<SpkiPin> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(SpkiPin::of_spki(parsed.subject_public_key_info().as_ref()))
}
