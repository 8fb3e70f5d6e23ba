//! Where a provider's keys come from, as registered: a JWKS URL, an issuer whose metadata
//! document names the JWKS URL, or an administrator who pushes key sets (`PublishKeySet`).

use super::{Issuer, JwksUrl};

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched from this URL.
    JwksUrl(JwksUrl),
    /// Fetched from the `jwks_uri` this issuer's metadata names, discovered on its own
    /// schedule.
    Issuer(Issuer),
    /// Never fetched: an administrator pushes each key set (a signer with no reachable JWKS
    /// URL).
    Pushed,
}

impl KeySource {
    /// The issuer, for a provider registered by issuer.
    pub fn issuer(&self) -> Option<&Issuer> {
        match self {
            KeySource::Issuer(issuer) => Some(issuer),
            KeySource::JwksUrl(_) | KeySource::Pushed => None,
        }
    }

    /// Whether keyrelay fetches the keys (by URL or issuer), rather than being pushed them.
    pub fn is_fetched(&self) -> bool {
        !matches!(self, KeySource::Pushed)
    }

    /// The JWKS URL, for a provider registered by URL.
    pub fn jwks_url(&self) -> Option<&JwksUrl> {
        match self {
            KeySource::JwksUrl(url) => Some(url),
            KeySource::Issuer(_) | KeySource::Pushed => None,
        }
    }

    /// The registration as logs show it: the URL without its query, or the issuer.
    pub fn redacted(&self) -> String {
        match self {
            KeySource::JwksUrl(url) => url.redacted(),
            KeySource::Issuer(issuer) => issuer.to_string(),
            KeySource::Pushed => "(key sets pushed with PublishKeySet)".to_owned(),
        }
    }
}
