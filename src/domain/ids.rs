//! Tenant and provider identifiers, the (tenant, provider) key, and key ids.

use std::{fmt, sync::Arc};

use super::ValidationError;

const MAX_ID_LEN: usize = 64;
const MAX_KID_LEN: usize = 256;

fn parse_identifier(field: &'static str, value: &str) -> Result<String, ValidationError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be 1-{MAX_ID_LEN} characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(ValidationError::new(
            field,
            format!("{bad:?} is not allowed; use only [a-z0-9._-]"),
        ));
    }
    Ok(value.to_owned())
}

/// A tenant identifier: 1-64 characters of `[a-z0-9._-]`. Shared, not copied, when cloned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Parses a tenant identifier; `field` names the request field in errors.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, ValidationError> {
        parse_identifier(field, value).map(|id| Self(id.into()))
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A provider identifier within a tenant: 1-64 characters of `[a-z0-9._-]`. Shared, not
/// copied, when cloned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId(Arc<str>);

impl ProviderId {
    /// Parses a provider identifier; `field` names the request field in errors.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, ValidationError> {
        parse_identifier(field, value).map(|id| Self(id.into()))
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identity of one registration: a provider within a tenant. Every holder of a provider's
/// key (the cache, the refresh scheduler, the staleness timer, change notices) shares one
/// allocation: a clone is a reference count, and each holder keeps a pointer, not the pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderKey(Arc<KeyParts>);

/// Ordered by tenant, then provider.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct KeyParts {
    tenant: TenantId,
    provider: ProviderId,
}

impl ProviderKey {
    /// Parses the `tenant` and `provider` fields of a request.
    pub fn parse(tenant: &str, provider: &str) -> Result<Self, ValidationError> {
        Ok(Self(Arc::new(KeyParts {
            tenant: TenantId::parse("tenant", tenant)?,
            provider: ProviderId::parse("provider", provider)?,
        })))
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.0.tenant
    }

    /// The provider within the tenant.
    pub fn provider(&self) -> &ProviderId {
        &self.0.provider
    }
}

impl fmt::Display for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant().as_str(), self.provider().as_str())
    }
}

/// A JWK key id as asked for by a verifier: 1-256 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kid(String);

impl Kid {
    /// Parses the `kid` field of a request.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() || value.len() > MAX_KID_LEN {
            return Err(ValidationError::new(
                "kid",
                format!("must be 1-{MAX_KID_LEN} bytes, got {}", value.len()),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "kid",
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The key id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_the_documented_alphabet() {
        assert!(ProviderKey::parse("acme-prod.eu_1", "okta").is_ok());
        assert!(TenantId::parse("tenant", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn keys_order_by_tenant_then_provider_and_clones_share_one_allocation() {
        let key = |tenant, provider| ProviderKey::parse(tenant, provider).unwrap();
        let mut keys = [key("b", "a"), key("a-b", "a"), key("a", "z"), key("a", "b")];
        keys.sort();
        let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a/b", "a/z", "a-b/a", "b/a"]);
        let original = key("t", "p");
        let copy = original.clone();
        assert!(Arc::ptr_eq(&original.0, &copy.0));
        assert_eq!(copy.tenant().as_str(), "t");
        assert_eq!(copy.provider().as_str(), "p");
    }

    #[test]
    fn identifiers_reject_everything_else_naming_the_field() {
        for bad in ["", "Acme", "a b", "a/b", "ä", &"a".repeat(65)] {
            let err = ProviderKey::parse(bad, "ok").unwrap_err();
            assert_eq!(err.field, "tenant", "{bad:?}");
            let err = ProviderKey::parse("ok", bad).unwrap_err();
            assert_eq!(err.field, "provider", "{bad:?}");
        }
    }

    #[test]
    fn kid_rejects_empty_long_and_control_characters() {
        assert!(Kid::parse("2024-rotation/key#1").is_ok());
        assert!(Kid::parse("").is_err());
        assert!(Kid::parse(&"k".repeat(257)).is_err());
        assert!(Kid::parse("a\nb").is_err());
    }
}
