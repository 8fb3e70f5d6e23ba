//! Issuers, for providers registered by issuer rather than by JWKS URL (OpenID Connect
//! Discovery 1.0, RFC 8414): the issuer identifier, where its metadata documents live, and
//! what a metadata document must say before its `jwks_uri` is trusted.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{EgressRules, JwksUrl, ValidationError};

const MAX_ISSUER_LEN: usize = 2048;

/// An issuer identifier as registered: an absolute URL without query or fragment that passed
/// the egress rules. Kept exactly as given, since a metadata document's `issuer` must equal it
/// character for character (Discovery section 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    text: String,
    url: Url,
}

/// The two well-known metadata documents an issuer may publish, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataDocument {
    /// OpenID Connect Discovery: `{issuer}/.well-known/openid-configuration`.
    OpenidConfiguration,
    /// RFC 8414: `/.well-known/oauth-authorization-server` inserted before the issuer's path.
    OauthAuthorizationServer,
}

/// Why a metadata document was refused. Messages are written for the provider status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The body is not a JSON object.
    #[error("the metadata document is not a JSON object: {0}")]
    NotJson(String),
    /// The document names another issuer, or none.
    #[error(
        "the metadata document's issuer {found:?} is not the registered issuer {expected:?} (they must be identical)"
    )]
    IssuerMismatch {
        /// The registered issuer.
        expected: String,
        /// The document's `issuer`, when it has one.
        found: Option<String>,
    },
    /// The document has no usable `jwks_uri`.
    #[error("the metadata document has no jwks_uri")]
    MissingJwksUri,
    /// The `jwks_uri` is not an acceptable URL.
    #[error("the metadata document's jwks_uri {uri:?} is refused: {reason}")]
    BadJwksUri {
        /// The document's `jwks_uri`.
        uri: String,
        /// Why it is refused.
        reason: String,
    },
}

impl MetadataError {
    /// Every `kind`.
    pub const KINDS: [&'static str; 4] = [
        "not_json",
        "issuer_mismatch",
        "missing_jwks_uri",
        "bad_jwks_uri",
    ];

    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataError::NotJson(_) => "not_json",
            MetadataError::IssuerMismatch { .. } => "issuer_mismatch",
            MetadataError::MissingJwksUri => "missing_jwks_uri",
            MetadataError::BadJwksUri { .. } => "bad_jwks_uri",
        }
    }
}

impl MetadataDocument {
    /// Both documents, in the order they are tried.
    pub const ALL: [MetadataDocument; 2] = [
        MetadataDocument::OpenidConfiguration,
        MetadataDocument::OauthAuthorizationServer,
    ];

    /// The other document: where to look when this one is not published.
    pub fn other(self) -> Self {
        match self {
            MetadataDocument::OpenidConfiguration => MetadataDocument::OauthAuthorizationServer,
            MetadataDocument::OauthAuthorizationServer => MetadataDocument::OpenidConfiguration,
        }
    }

    /// The name shown in status and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataDocument::OpenidConfiguration => "openid-configuration",
            MetadataDocument::OauthAuthorizationServer => "oauth-authorization-server",
        }
    }
}

impl Issuer {
    /// Parses and checks the `issuer` field of a registration.
    pub fn parse(value: &str, rules: &EgressRules) -> Result<Self, ValidationError> {
        let invalid = |reason: String| ValidationError::new("issuer", reason);
        if value.len() > MAX_ISSUER_LEN {
            return Err(invalid(format!("must be at most {MAX_ISSUER_LEN} bytes")));
        }
        let issuer = Self::parse_stored(value)?;
        if issuer.url.query().is_some() || issuer.url.fragment().is_some() {
            return Err(invalid(
                "must have no query or fragment (OpenID Connect Discovery section 2)".into(),
            ));
        }
        rules.check(&issuer.url).map_err(invalid)?;
        Ok(issuer)
    }

    /// An issuer read back from the store: checked when registered, and every fetch checks
    /// the URLs made from it again.
    pub fn parse_stored(value: &str) -> Result<Self, ValidationError> {
        let url = Url::parse(value)
            .map_err(|err| ValidationError::new("issuer", format!("not an absolute URL: {err}")))?;
        Ok(Self {
            text: value.to_owned(),
            url,
        })
    }

    /// The issuer exactly as registered.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Where `document` lives for this issuer. OpenID Connect appends the well-known path to
    /// the issuer; RFC 8414 section 3 inserts it between the host and the issuer's path. A
    /// terminating `/` of the issuer's path is removed first in both cases.
    pub fn metadata_url(&self, document: MetadataDocument) -> Url {
        let path = self.url.path().trim_end_matches('/');
        let mut url = self.url.clone();
        match document {
            MetadataDocument::OpenidConfiguration => {
                url.set_path(&format!("{path}/.well-known/openid-configuration"));
            }
            MetadataDocument::OauthAuthorizationServer => {
                url.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
            }
        }
        url
    }

    /// The JWKS URL a metadata document names, once the document is shown to be this
    /// issuer's: its `issuer` must be identical to the registered one, and its `jwks_uri` an
    /// absolute https URL (plain http only for an http issuer, which only a development
    /// server accepts). The fetcher applies the egress rules to it as to any URL.
    pub fn jwks_uri(&self, body: &[u8]) -> Result<JwksUrl, MetadataError> {
        let document: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|err| MetadataError::NotJson(err.to_string()))?;
        let found = document.get("issuer").and_then(serde_json::Value::as_str);
        if found != Some(self.as_str()) {
            return Err(MetadataError::IssuerMismatch {
                expected: self.text.clone(),
                found: found.map(str::to_owned),
            });
        }
        let uri = document
            .get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .ok_or(MetadataError::MissingJwksUri)?;
        let refused = |reason: String| MetadataError::BadJwksUri {
            uri: uri.to_owned(),
            reason,
        };
        let url = JwksUrl::parse_stored(uri).map_err(|err| refused(err.reason))?;
        let scheme = url.as_url().scheme();
        if scheme != "https" && !(scheme == "http" && self.url.scheme() == "http") {
            return Err(refused(format!("must use https, not {scheme}")));
        }
        Ok(url)
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(value: &str) -> Issuer {
        Issuer::parse(value, &EgressRules::default()).expect("valid issuer")
    }

    fn urls(value: &str) -> [String; 2] {
        MetadataDocument::ALL.map(|document| issuer(value).metadata_url(document).to_string())
    }

    #[test]
    fn metadata_urls_follow_discovery_and_rfc_8414_for_issuers_with_and_without_paths() {
        assert_eq!(
            urls("https://idp.example.com"),
            [
                "https://idp.example.com/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            urls("https://idp.example.com/tenants/acme/"),
            [
                "https://idp.example.com/tenants/acme/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server/tenants/acme",
            ]
        );
    }

    #[test]
    fn issuers_with_query_fragment_or_plain_http_are_refused_naming_the_field() {
        for value in [
            "https://idp.example.com/?tenant=acme",
            "https://idp.example.com/#x",
            "http://idp.example.com",
            "idp.example.com",
        ] {
            let err = Issuer::parse(value, &EgressRules::default()).expect_err(value);
            assert_eq!(err.field, "issuer", "{value}: {err}");
        }
    }

    #[test]
    fn a_document_for_the_same_issuer_names_its_jwks_uri() {
        let body =
            br#"{"issuer":"https://idp.example.com","jwks_uri":"https://keys.example.com/jwks"}"#;
        let url = issuer("https://idp.example.com")
            .jwks_uri(body)
            .expect("accepted");
        assert_eq!(url.as_str(), "https://keys.example.com/jwks");
    }

    #[test]
    fn the_issuer_must_be_identical_without_slash_or_case_folding() {
        for found in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "https://idp.example.com/other",
        ] {
            let body =
                serde_json::json!({"issuer": found, "jwks_uri": "https://idp.example.com/k"});
            let err = issuer("https://idp.example.com")
                .jwks_uri(body.to_string().as_bytes())
                .expect_err(found);
            assert_eq!(err.kind(), "issuer_mismatch", "{found}");
        }
    }

    #[test]
    fn missing_non_https_or_malformed_jwks_uris_and_non_json_bodies_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"issuer":"https://idp.example.com"}"#,
                "missing_jwks_uri",
            ),
            (
                br#"{"issuer":"https://idp.example.com","jwks_uri":7}"#,
                "missing_jwks_uri",
            ),
            (
                br#"{"issuer":"https://idp.example.com","jwks_uri":"http://idp.example.com/k"}"#,
                "bad_jwks_uri",
            ),
            (
                br#"{"issuer":"https://idp.example.com","jwks_uri":"/k"}"#,
                "bad_jwks_uri",
            ),
            (b"<html>", "not_json"),
        ];
        for (body, kind) in cases {
            let err = issuer("https://idp.example.com")
                .jwks_uri(body)
                .expect_err(kind);
            assert_eq!(err.kind(), kind, "{err}");
        }
    }
}
