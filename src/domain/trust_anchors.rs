//! Per-provider trust anchors: the CA certificates a key's `x5c` chain must validate to
//! (open-banking style identity providers), and the chain check itself, as of a given time.
//! Nothing here does I/O.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};

use super::x509;

/// Largest PEM text accepted for one anchor.
const MAX_PEM_BYTES: usize = 16 * 1024;

/// A CA certificate keys' chains may validate to. Given as PEM, stored as base64 DER (the
/// form `x5c` uses); always a certificate webpki accepts as an anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustAnchor(CertificateDer<'static>);

impl TrustAnchor {
    /// Parses one PEM `CERTIFICATE` block; `Err` says what is wrong with it.
    pub fn parse_pem(text: &str) -> Result<Self, String> {
        if text.len() > MAX_PEM_BYTES {
            return Err(format!("is over {MAX_PEM_BYTES} bytes"));
        }
        let blocks = pem::parse_many(text).map_err(|err| format!("is not PEM: {err}"))?;
        match blocks.as_slice() {
            [block] if block.tag() == "CERTIFICATE" => Self::from_der(block.contents().to_vec()),
            [block] => Err(format!(
                "is a PEM {:?} block, not a CERTIFICATE",
                block.tag()
            )),
            [] => Err("holds no PEM block (-----BEGIN CERTIFICATE-----)".into()),
            blocks => Err(format!(
                "holds {} PEM blocks; give one certificate per entry",
                blocks.len()
            )),
        }
    }

    fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let der = CertificateDer::from(der);
        webpki::anchor_from_trusted_cert(&der)
            .map_err(|err| format!("is not a certificate usable as a trust anchor: {err}"))?;
        Ok(Self(der))
    }

    /// The certificate in PEM, as an operator gives it.
    pub fn to_pem(&self) -> String {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("CERTIFICATE", self.0.as_ref()), lf)
    }
}

impl TryFrom<String> for TrustAnchor {
    type Error = String;

    fn try_from(base64: String) -> Result<Self, String> {
        let der = STANDARD
            .decode(base64)
            .map_err(|err| format!("trust anchor is not base64: {err}"))?;
        Self::from_der(der)
    }
}

impl From<TrustAnchor> for String {
    fn from(anchor: TrustAnchor) -> String {
        STANDARD.encode(anchor.0)
    }
}

/// Checks that the key's `x5c` chain validates, at `at`, to one of `anchors`; `Err` says why
/// not. The leaf's key and thumbprints are checked when the document is parsed (`x509`).
pub(super) fn check_chain(
    key: &serde_json::Map<String, serde_json::Value>,
    anchors: &[TrustAnchor],
    at: DateTime<Utc>,
) -> Result<(), String> {
    let Some(chain) = key.get("x5c") else {
        return Err(
            "it has no x5c certificate chain, and the provider's policy.trust_anchors require one"
                .into(),
        );
    };
    let (leaf, rest) = x509::chain_der(chain)?;
    let leaf = CertificateDer::from(leaf);
    let intermediates: Vec<CertificateDer<'_>> =
        rest.into_iter().map(CertificateDer::from).collect();
    let anchors = anchors
        .iter()
        .filter_map(|anchor| webpki::anchor_from_trusted_cert(&anchor.0).ok())
        .collect::<Vec<_>>();
    let leaf = EndEntityCert::try_from(&leaf)
        .map_err(|err| format!("x5c[0] is not a certificate webpki accepts: {err}"))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        unix_time(at),
        AnyKeyPurpose,
        None,
        None,
    )
    .map(drop)
    .map_err(|err| {
        format!(
            "the x5c chain does not validate to policy.trust_anchors: {}",
            why(&err)
        )
    })
}

/// What a chain validation error means, in words where webpki's name is terse.
fn why(err: &webpki::Error) -> String {
    match err {
        webpki::Error::UnknownIssuer => "no trust anchor issued it".into(),
        webpki::Error::CertExpired { not_after, .. } => format!(
            "a certificate of the chain expired at {}",
            rfc3339(*not_after)
        ),
        webpki::Error::CertNotValidYet { not_before, .. } => format!(
            "a certificate of the chain is valid only from {}",
            rfc3339(*not_before)
        ),
        other => other.to_string(),
    }
}

fn rfc3339(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
        .map_or_else(
            || format!("{} s after 1970", time.as_secs()),
            |at| at.to_rfc3339(),
        )
}

fn unix_time(at: DateTime<Utc>) -> UnixTime {
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// JWT signing certificates carry whatever extended key usage their CA gives them (often
/// none): any is accepted, as long as the extension is well formed.
struct AnyKeyPurpose;

impl ExtendedKeyUsageValidator for AnyKeyPurpose {
    fn validate(&self, mut purposes: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        purposes.try_for_each(|purpose| purpose.map(drop))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };
    use serde_json::{Map, Value, json};

    use super::*;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
    }

    fn anchor(ca: &CertifiedIssuer<'static, KeyPair>) -> TrustAnchor {
        TrustAnchor::parse_pem(&ca.pem()).expect("a valid anchor")
    }

    /// A key whose x5c is a leaf signed by `issuer`, then `rest` (base64 DER each).
    fn key_signed_by(
        issuer: &CertifiedIssuer<'static, KeyPair>,
        rest: &[String],
    ) -> Map<String, Value> {
        let mut params = CertificateParams::new(vec!["signer".to_owned()]).expect("params");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2030, 1, 1);
        let leaf = params
            .signed_by(&KeyPair::generate().expect("key"), issuer)
            .expect("leaf");
        let mut chain = vec![STANDARD.encode(leaf.der())];
        chain.extend_from_slice(rest);
        json!({"kty": "EC", "x5c": chain})
            .as_object()
            .expect("object")
            .clone()
    }

    fn at(year: i32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("{year}-06-01T00:00:00Z"))
            .expect("time")
            .to_utc()
    }

    #[test]
    fn a_chain_to_an_anchor_validates_directly_or_through_an_intermediate() {
        let root = ca("root");
        assert_eq!(
            check_chain(&key_signed_by(&root, &[]), &[anchor(&root)], at(2026)),
            Ok(())
        );

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        let intermediate_key = KeyPair::generate().expect("key");
        let intermediate =
            CertifiedIssuer::signed_by(params, intermediate_key, &root).expect("intermediate");
        let through = key_signed_by(&intermediate, &[STANDARD.encode(intermediate.der())]);
        assert_eq!(
            check_chain(&through, &[anchor(&ca("other")), anchor(&root)], at(2026)),
            Ok(())
        );
        let without_intermediate = key_signed_by(&intermediate, &[]);
        assert_eq!(
            check_chain(&without_intermediate, &[anchor(&root)], at(2026)),
            Err("the x5c chain does not validate to policy.trust_anchors: no trust anchor issued it".into())
        );
    }

    #[test]
    fn a_chain_to_another_ca_or_outside_its_validity_is_refused_with_why() {
        let root = ca("root");
        let key = key_signed_by(&root, &[]);
        let refused =
            |anchors: &[TrustAnchor], year| check_chain(&key, anchors, at(year)).unwrap_err();
        assert!(refused(&[anchor(&ca("other"))], 2026).ends_with("no trust anchor issued it"));
        assert!(
            refused(&[anchor(&root)], 2031)
                .ends_with("a certificate of the chain expired at 2030-01-01T00:00:00+00:00"),
            "{}",
            refused(&[anchor(&root)], 2031)
        );
        assert!(
            refused(&[anchor(&root)], 2019).ends_with("valid only from 2020-01-01T00:00:00+00:00")
        );
    }

    #[test]
    fn a_key_without_a_chain_is_refused_when_anchors_are_set() {
        let key = json!({"kty": "EC"}).as_object().expect("object").clone();
        let err = check_chain(&key, &[anchor(&ca("root"))], at(2026)).unwrap_err();
        assert!(err.contains("no x5c certificate chain"), "{err}");
    }

    #[test]
    fn anchors_are_single_pem_certificates_and_round_trip() {
        let root = ca("root");
        let parsed = anchor(&root);
        assert_eq!(TrustAnchor::parse_pem(&parsed.to_pem()), Ok(parsed.clone()));
        let stored = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(
            serde_json::from_value::<TrustAnchor>(stored).ok(),
            Some(parsed)
        );

        let two = format!("{}{}", root.pem(), ca("other").pem());
        let key_pem = KeyPair::generate().expect("key").serialize_pem();
        let cases = [
            (
                two.as_str(),
                "holds 2 PEM blocks; give one certificate per entry",
            ),
            ("", "holds no PEM block"),
            (
                key_pem.as_str(),
                "is a PEM \"PRIVATE KEY\" block, not a CERTIFICATE",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "is not a certificate usable as a trust anchor",
            ),
        ];
        for (text, expected) in cases {
            let err = TrustAnchor::parse_pem(text).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
        let stored_garbage = serde_json::from_value::<TrustAnchor>(json!("AAAA"));
        assert!(stored_garbage.is_err());
    }
}
