//! Parsing a WatchKeys request: which providers a stream selects and which versions the
//! client already holds, with bounds on both.

use std::collections::{BTreeSet, HashMap};

use crate::{
    domain::{ProviderKey, TenantId, ValidationError},
    proto::v1 as pb,
    state::cache::KeyCache,
};

/// Bounds on one WatchKeys request.
pub mod limits {
    /// Selectors per stream.
    pub const MAX_SELECTORS: usize = 1000;
    /// Selectors naming a provider that is not registered (it may be registered later).
    pub const MAX_UNKNOWN_PROVIDERS: usize = 100;
    /// Known versions per stream.
    pub const MAX_KNOWN_VERSIONS: usize = 10_000;
}

/// A parsed WatchKeys request. A stream holds its selectors for its lifetime, so they are
/// sorted slices of exactly their number rather than sets with spare room.
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    /// Every provider of these tenants, present and future: sorted, each once.
    pub tenants: Box<[TenantId]>,
    /// These providers: sorted, each once.
    pub providers: Box<[ProviderKey]>,
    /// Versions the client holds.
    pub known_versions: HashMap<ProviderKey, u64>,
}

impl WatchRequest {
    /// Every tenant the request selects, whole or through one of its providers, each once,
    /// in a slice of exactly their number (a stream holds it for its lifetime).
    pub fn selected_tenants(&self) -> Box<[TenantId]> {
        let whole = self.tenants.iter();
        let named = self.providers.iter().map(ProviderKey::tenant);
        let tenants: BTreeSet<&TenantId> = whole.chain(named).collect();
        tenants.into_iter().cloned().collect()
    }

    /// Drops every selector and known version of a tenant `keep` refuses: the stream then
    /// sees those providers as if they did not exist.
    pub fn retain_tenants(&mut self, mut keep: impl FnMut(&TenantId) -> bool) {
        retain(&mut self.tenants, |tenant| keep(tenant));
        retain(&mut self.providers, |key| keep(key.tenant()));
        self.known_versions.retain(|key, _| keep(key.tenant()));
    }

    /// Parses and bounds `request`; errors name the offending field.
    pub fn parse(
        request: &pb::WatchKeysRequest,
        cache: &KeyCache,
    ) -> Result<Self, ValidationError> {
        if request.selectors.is_empty() {
            return Err(ValidationError::new(
                "selectors",
                "at least one selector is needed",
            ));
        }
        if request.selectors.len() > limits::MAX_SELECTORS {
            return Err(ValidationError::new(
                "selectors",
                format!("at most {} per stream", limits::MAX_SELECTORS),
            ));
        }
        if request.known_versions.len() > limits::MAX_KNOWN_VERSIONS {
            return Err(ValidationError::new(
                "known_versions",
                format!("at most {} per stream", limits::MAX_KNOWN_VERSIONS),
            ));
        }
        let mut tenants = BTreeSet::new();
        let mut providers = BTreeSet::new();
        for (index, selector) in request.selectors.iter().enumerate() {
            let within = |err: ValidationError| err.within(&format!("selectors[{index}]"));
            if selector.provider.is_empty() {
                tenants.insert(TenantId::parse("tenant", &selector.tenant).map_err(within)?);
            } else {
                providers.insert(
                    ProviderKey::parse(&selector.tenant, &selector.provider).map_err(within)?,
                );
            }
        }
        let mut unknown = 0;
        let providers: Box<[ProviderKey]> = providers
            .into_iter()
            .map(|key| {
                registered_key(cache, &key).unwrap_or_else(|| {
                    unknown += 1;
                    key
                })
            })
            .collect();
        if unknown > limits::MAX_UNKNOWN_PROVIDERS {
            return Err(ValidationError::new(
                "selectors",
                format!(
                    "{unknown} name providers that are not registered; at most {} may",
                    limits::MAX_UNKNOWN_PROVIDERS
                ),
            ));
        }
        let mut known_versions = HashMap::new();
        for (index, known) in request.known_versions.iter().enumerate() {
            let key = ProviderKey::parse(&known.tenant, &known.provider)
                .map_err(|err| err.within(&format!("known_versions[{index}]")))?;
            let key = registered_key(cache, &key).unwrap_or(key);
            known_versions.insert(key, known.version);
        }
        Ok(Self {
            tenants: tenants.into_iter().collect(),
            providers,
            known_versions,
        })
    }

    /// Whether the stream selects `key`.
    pub fn selects(&self, key: &ProviderKey) -> bool {
        self.tenants.binary_search(key.tenant()).is_ok()
            || self.providers.binary_search(key).is_ok()
    }
}

/// The cache's own copy of `key` if the provider is registered: a stream holding it shares
/// the cache's allocations instead of keeping its own for its lifetime.
fn registered_key(cache: &KeyCache, key: &ProviderKey) -> Option<ProviderKey> {
    cache.get(key).map(|record| record.registration.key.clone())
}

/// Keeps the items of `items` that `keep` accepts, in order.
fn retain<T>(items: &mut Box<[T]>, keep: impl FnMut(&T) -> bool) {
    let mut kept = std::mem::take(items).into_vec();
    kept.retain(keep);
    *items = kept.into_boxed_slice();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(tenant: &str, provider: &str) -> pb::WatchSelector {
        pb::WatchSelector {
            tenant: tenant.into(),
            provider: provider.into(),
        }
    }

    fn parse(selectors: Vec<pb::WatchSelector>) -> Result<WatchRequest, ValidationError> {
        let request = pb::WatchKeysRequest {
            selectors,
            known_versions: Vec::new(),
        };
        WatchRequest::parse(&request, &KeyCache::with_records([]))
    }

    #[test]
    fn tenant_selectors_select_every_provider_of_the_tenant() {
        let request = parse(vec![selector("acme", ""), selector("beta", "okta")]).unwrap();
        assert!(request.selects(&ProviderKey::parse("acme", "anything").unwrap()));
        assert!(request.selects(&ProviderKey::parse("beta", "okta").unwrap()));
        assert!(!request.selects(&ProviderKey::parse("beta", "other").unwrap()));
    }

    #[test]
    fn selectors_in_any_order_and_repeated_select_exactly_what_they_name() {
        let names = ["m", "c", "x", "c", "a", "m"];
        let mut selectors: Vec<_> = names.iter().map(|p| selector("acme", p)).collect();
        selectors.extend(["zeta", "beta", "zeta"].map(|t| selector(t, "")));
        let mut request = parse(selectors).unwrap();
        assert_eq!(request.providers.len(), 4);
        assert_eq!(request.tenants.len(), 2);
        for name in names {
            assert!(request.selects(&ProviderKey::parse("acme", name).unwrap()));
        }
        assert!(!request.selects(&ProviderKey::parse("acme", "b").unwrap()));
        assert!(request.selects(&ProviderKey::parse("beta", "any").unwrap()));
        assert!(request.selects(&ProviderKey::parse("zeta", "any").unwrap()));

        request.retain_tenants(|tenant| tenant.as_str() != "beta");
        assert!(!request.selects(&ProviderKey::parse("beta", "any").unwrap()));
        assert!(request.selects(&ProviderKey::parse("zeta", "any").unwrap()));
        assert!(request.selects(&ProviderKey::parse("acme", "x").unwrap()));
    }

    #[test]
    fn malformed_selectors_name_their_index() {
        let err = parse(vec![selector("acme", ""), selector("Bad", "")]).unwrap_err();
        assert_eq!(err.field, "selectors[1].tenant");
        let err = parse(vec![selector("acme", "a b")]).unwrap_err();
        assert_eq!(err.field, "selectors[0].provider");
        assert_eq!(parse(vec![]).unwrap_err().field, "selectors");
    }

    #[test]
    fn unknown_named_providers_are_bounded() {
        let many = (0..=limits::MAX_UNKNOWN_PROVIDERS)
            .map(|i| selector("acme", &format!("p{i}")))
            .collect();
        let err = parse(many).unwrap_err();
        assert!(err.reason.contains("not registered"), "{}", err.reason);
        let enough = (0..limits::MAX_UNKNOWN_PROVIDERS)
            .map(|i| selector("acme", &format!("p{i}")))
            .collect();
        assert!(parse(enough).is_ok());
    }

    #[test]
    fn registered_providers_do_not_count_as_unknown() {
        let cache = KeyCache::with_records([std::sync::Arc::new(crate::state::record::sample(
            "known", 1,
        ))]);
        let mut selectors: Vec<_> = (0..limits::MAX_UNKNOWN_PROVIDERS)
            .map(|i| selector("acme", &format!("p{i}")))
            .collect();
        selectors.push(selector("acme", "known"));
        let request = pb::WatchKeysRequest {
            selectors,
            known_versions: Vec::new(),
        };
        let parsed = WatchRequest::parse(&request, &cache).unwrap();
        assert!(parsed.selects(&ProviderKey::parse("acme", "known").unwrap()));
    }

    #[test]
    fn too_many_selectors_are_refused() {
        let many = (0..=limits::MAX_SELECTORS)
            .map(|i| selector(&format!("t{i}"), ""))
            .collect();
        assert_eq!(parse(many).unwrap_err().field, "selectors");
    }
}
