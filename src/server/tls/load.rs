//! Reading the listener's certificate chain, private key and optional client CA bundle from
//! PEM files, and building the rustls server configuration from them. Errors name the file
//! and what is wrong with it. Accepting connections and reloading are not here.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    InconsistentKeys, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer,
        pem::{self, PemObject},
    },
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use sha2::{Digest, Sha256};

/// Where the listener's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to; none: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why the listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate in it")]
    NoCertificate {
        /// The file named by `--tls-cert`.
        path: String,
    },
    /// The key file holds no PEM private key.
    #[error("{path}: no PEM private key in it")]
    NoPrivateKey {
        /// The file named by `--tls-key`.
        path: String,
    },
    /// A PEM section is broken.
    #[error("{path}: malformed PEM: {reason}")]
    MalformedPem {
        /// The file.
        path: String,
        /// What the PEM parser found.
        reason: String,
    },
    /// The private key belongs to another certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The file named by `--tls-cert`.
        cert: String,
        /// The file named by `--tls-key`.
        key: String,
    },
    /// rustls refused the certificate or the key (an unsupported key type, say).
    #[error("certificate {cert} with key {key} cannot be used: {source}")]
    Unusable {
        /// The file named by `--tls-cert`.
        cert: String,
        /// The file named by `--tls-key`.
        key: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client CA bundle is unusable.
    #[error("client CA bundle {path}: {reason}")]
    ClientCa {
        /// The file named by `--tls-client-ca`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The crypto provider refused the protocol versions.
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// A SHA-256 of everything the configuration is built from, to tell when the files changed.
pub(crate) type Fingerprint = [u8; 32];

/// One file's path and contents.
#[derive(Debug)]
struct PemFile {
    path: PathBuf,
    contents: Vec<u8>,
}

impl PemFile {
    async fn read(path: &Path) -> Result<Self, TlsError> {
        let contents = tokio::fs::read(path)
            .await
            .map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            contents,
        })
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn malformed(&self, err: pem::Error) -> TlsError {
        TlsError::MalformedPem {
            path: self.name(),
            reason: err.to_string(),
        }
    }

    /// Every certificate in the file, in order (other PEM sections are skipped).
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_slice_iter(&self.contents)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.malformed(err))
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.contents).map_err(|err| match err {
            pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: self.name() },
            other => self.malformed(other),
        })
    }
}

/// The contents of the listener's TLS files, read together.
#[derive(Debug)]
pub(crate) struct TlsPem {
    cert: PemFile,
    key: PemFile,
    client_ca: Option<PemFile>,
}

impl TlsPem {
    /// Reads every file named in `files`.
    pub(crate) async fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let client_ca = match &files.client_ca {
            Some(path) => Some(PemFile::read(path).await?),
            None => None,
        };
        Ok(Self {
            cert: PemFile::read(&files.cert).await?,
            key: PemFile::read(&files.key).await?,
            client_ca,
        })
    }

    pub(crate) fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        for file in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let contents = file.map_or(&[][..], |file| &file.contents);
            hash.update(contents.len().to_be_bytes());
            hash.update(contents);
        }
        hash.finalize().into()
    }

    /// The server configuration: this certificate and key, client certificates required and
    /// verified when there is a client CA bundle, ALPN h2 and http/1.1, ring as the provider.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = self.cert.certificates()?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.name(),
            });
        }
        let key = self.key.private_key()?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?;
        let builder = match &self.client_ca {
            Some(bundle) => builder.with_client_cert_verifier(client_verifier(bundle, provider)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|err| self.unusable(err))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn unusable(&self, err: rustls::Error) -> TlsError {
        let (cert, key) = (self.cert.name(), self.key.name());
        match err {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch { cert, key }
            }
            source => TlsError::Unusable { cert, key, source },
        }
    }
}

fn client_verifier(
    bundle: &PemFile,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let refused = |reason: String| TlsError::ClientCa {
        path: bundle.name(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for (index, cert) in bundle.certificates()?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|err| refused(format!("certificate {}: {err}", index + 1)))?;
    }
    if roots.is_empty() {
        return Err(refused("no PEM certificate in it".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| refused(err.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{CertifiedKey, KeyPair};
    use tempfile::TempDir;

    use super::*;

    struct Files {
        dir: TempDir,
        files: TlsFiles,
    }

    impl Files {
        /// A certificate and its key, and a client CA bundle, all valid.
        fn valid() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let files = TlsFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                client_ca: Some(dir.path().join("client-ca.pem")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, signing_key.serialize_pem()).unwrap();
            std::fs::write(files.client_ca.as_ref().unwrap(), cert.pem()).unwrap();
            Self { dir, files }
        }

        fn write(&self, path: &Path, contents: &str) {
            std::fs::write(path, contents).unwrap();
        }

        async fn load(&self) -> Result<ServerConfig, TlsError> {
            TlsPem::read(&self.files).await?.server_config()
        }

        async fn error(&self) -> String {
            self.load().await.expect_err("load fails").to_string()
        }
    }

    fn assert_names(message: &str, path: &Path, what: &str) {
        let path = path.display().to_string();
        assert!(
            message.contains(&path) && message.contains(what),
            "expected {path} and {what:?} in: {message}"
        );
    }

    #[tokio::test]
    async fn valid_files_give_a_config_for_h2_and_http1() {
        let files = Files::valid();
        let config = files.load().await.unwrap();
        assert_eq!(config.alpn_protocols, [&b"h2"[..], b"http/1.1"]);

        let mut without_ca = files.files.clone();
        without_ca.client_ca = None;
        TlsPem::read(&without_ca)
            .await
            .unwrap()
            .server_config()
            .unwrap();
    }

    #[tokio::test]
    async fn a_missing_file_is_named() {
        let files = Files::valid();
        for path in [
            &files.files.cert,
            &files.files.key,
            files.files.client_ca.as_ref().unwrap(),
        ] {
            std::fs::rename(path, files.dir.path().join("moved")).unwrap();
            assert_names(&files.error().await, path, "cannot read");
            std::fs::rename(files.dir.path().join("moved"), path).unwrap();
        }
    }

    #[tokio::test]
    async fn a_certificate_file_without_a_certificate_is_refused() {
        let files = Files::valid();
        let key = std::fs::read_to_string(&files.files.key).unwrap();
        files.write(&files.files.cert, &key);
        assert_names(
            &files.error().await,
            &files.files.cert,
            "no PEM certificate",
        );
    }

    #[tokio::test]
    async fn a_key_file_without_a_key_is_refused() {
        let files = Files::valid();
        let cert = std::fs::read_to_string(&files.files.cert).unwrap();
        files.write(&files.files.key, &cert);
        assert_names(&files.error().await, &files.files.key, "no PEM private key");
    }

    #[tokio::test]
    async fn broken_pem_is_refused() {
        let files = Files::valid();
        files.write(&files.files.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n");
        assert_names(&files.error().await, &files.files.cert, "malformed PEM");
    }

    #[tokio::test]
    async fn a_key_of_another_certificate_is_refused() {
        let files = Files::valid();
        let other = KeyPair::generate().unwrap();
        files.write(&files.files.key, &other.serialize_pem());
        let message = files.error().await;
        assert_names(&message, &files.files.key, "does not match");
        assert_names(&message, &files.files.cert, "does not match");
    }

    #[tokio::test]
    async fn a_bad_client_ca_bundle_is_refused() {
        let files = Files::valid();
        let bundle = files.files.client_ca.clone().unwrap();
        files.write(&bundle, "not PEM at all\n");
        assert_names(&files.error().await, &bundle, "no PEM certificate");
        files.write(
            &bundle,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert_names(&files.error().await, &bundle, "certificate 1");
    }

    #[tokio::test]
    async fn the_fingerprint_changes_with_any_file() {
        let files = Files::valid();
        let before = TlsPem::read(&files.files).await.unwrap().fingerprint();
        assert_eq!(
            before,
            TlsPem::read(&files.files).await.unwrap().fingerprint()
        );
        let bundle = files.files.client_ca.clone().unwrap();
        let mut contents = std::fs::read_to_string(&bundle).unwrap();
        contents.push('\n');
        files.write(&bundle, &contents);
        assert_ne!(
            before,
            TlsPem::read(&files.files).await.unwrap().fingerprint()
        );
    }
}
