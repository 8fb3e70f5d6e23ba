//! The in-memory view every read is served from: one immutable record per provider, swapped
//! whole on change. Loaded from the store at start and updated after every durable write.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, PoisonError, RwLock},
};

use crate::{
    domain::{ProviderKey, TenantId},
    provider::ProviderRecord,
};

/// Current records by (tenant, provider).
#[derive(Debug, Default)]
pub struct KeyCache {
    providers: RwLock<BTreeMap<ProviderKey, Arc<ProviderRecord>>>,
}

impl KeyCache {
    /// A cache holding `records`.
    pub fn with_records(records: impl IntoIterator<Item = ProviderRecord>) -> Self {
        let providers = records
            .into_iter()
            .map(|record| (record.registration.key.clone(), Arc::new(record)))
            .collect();
        Self {
            providers: RwLock::new(providers),
        }
    }

    /// The current record of a provider.
    pub fn get(&self, key: &ProviderKey) -> Option<Arc<ProviderRecord>> {
        self.read().get(key).cloned()
    }

    /// Stores a record as written by a registration.
    pub fn put(&self, record: ProviderRecord) -> Arc<ProviderRecord> {
        let record = Arc::new(record);
        self.write()
            .insert(record.registration.key.clone(), Arc::clone(&record));
        record
    }

    /// Stores a refresh result, unless the provider was meanwhile removed or re-registered
    /// (a different revision): a late refresh must not resurrect or overwrite anything.
    pub fn update_if_current(&self, record: ProviderRecord) -> Option<Arc<ProviderRecord>> {
        let mut providers = self.write();
        let slot = providers.get_mut(&record.registration.key)?;
        if slot.registration.revision != record.registration.revision {
            return None;
        }
        *slot = Arc::new(record);
        Some(Arc::clone(slot))
    }

    /// Removes a provider.
    pub fn remove(&self, key: &ProviderKey) -> Option<Arc<ProviderRecord>> {
        self.write().remove(key)
    }

    /// Up to `limit` records after `after`, in key order, optionally of one tenant only.
    pub fn page(
        &self,
        tenant: Option<&TenantId>,
        after: Option<&ProviderKey>,
        limit: usize,
    ) -> Vec<Arc<ProviderRecord>> {
        let providers = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        providers
            .range((start, Bound::Unbounded))
            .map(|(_, record)| record)
            .skip_while(|record| tenant.is_some_and(|t| &record.registration.key.tenant < t))
            .take_while(|record| tenant.is_none_or(|t| &record.registration.key.tenant == t))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every record, in key order.
    pub fn all(&self) -> Vec<Arc<ProviderRecord>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ProviderKey, Arc<ProviderRecord>>> {
        self.providers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ProviderKey, Arc<ProviderRecord>>> {
        self.providers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
