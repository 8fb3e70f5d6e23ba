//! A throwaway certificate authority for the tests: CA and leaf certificates (valid, expired,
//! for other names) and the pins of their public keys.

use std::sync::Arc;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use keyrelay::domain::SpkiPin;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA that signs leaf certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate, the chain a server presents with it, and its key, in DER and PEM.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA with its own key.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A currently valid certificate for `names`.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.sign(CertificateParams::new(owned(names)).unwrap())
    }

    /// A certificate for `names` that expired in 2001.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(owned(names)).unwrap();
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    /// An EC P-256 signing key as a JWK named `kid`, its `x5c` a certificate this CA signed
    /// for it, valid until the start of `not_after` (year, month, day), then this CA's.
    pub fn signing_jwk(&self, kid: &str, not_after: (i32, u8, u8)) -> serde_json::Value {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, kid);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let point = key.public_key_raw();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "x5c": [STANDARD.encode(cert.der()), STANDARD.encode(self.cert())],
        })
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.cert()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            chain_pem: format!("{}{}", cert.pem(), self.pem()),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// A TLS server configuration presenting this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The pin of the leaf certificate's public key.
    pub fn pin(&self) -> String {
        pin_of(&self.chain[0])
    }
}

/// The base64 SHA-256 pin of a certificate's public key.
pub fn pin_of(cert: &CertificateDer<'_>) -> String {
    let parsed = webpki::EndEntityCert::try_from(cert).unwrap();
    SpkiPin::of_spki(parsed.subject_public_key_info().as_ref()).to_string()
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}
