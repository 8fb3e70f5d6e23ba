//! Domain values built once at the edge and trusted everywhere inside: identifiers, JWKS URLs
//! and issuers, refresh policies, per-provider upstream trust and key policy. Inner layers
//! never re-check strings.

mod ids;
mod issuer;
mod jwks_url;
mod key_policy;
pub mod key_set;
mod key_source;
mod policy;
pub mod revocation;
mod trust_anchors;
mod upstream_trust;
mod x509;

pub use ids::{Kid, ProviderId, ProviderKey, TenantId};
pub use issuer::{Issuer, MetadataDocument, MetadataError};
pub use jwks_url::{EgressRules, JwksUrl, redacted_url};
pub use key_policy::KeyPolicy;
pub use key_source::KeySource;
#[cfg(test)]
pub(crate) use policy::documented_defaults;
pub use policy::{Policy, PolicyOverrides};
pub use trust_anchors::TrustAnchor;
pub use upstream_trust::{HostPattern, SpkiPin, UpstreamTrust};

use std::borrow::Cow;

/// A request value that cannot be accepted, naming the field so the caller knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The request field at fault, as named in the API (`selectors[2].tenant`, say).
    pub field: Cow<'static, str>,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error for a field nested under `parent` (`selectors[2]`, say).
    pub(crate) fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field).into(),
            reason: self.reason,
        }
    }
}
