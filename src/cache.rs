//! The in-memory view every read is served from: one immutable record per provider, swapped
//! whole on change, loaded from the store at start and updated after every durable write.
//! Every change is announced on a broadcast of provider keys, so that Resolve and WatchKeys
//! read the same state and watchers learn of it at once.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, PoisonError, RwLock},
};

use tokio::sync::broadcast;

use crate::{
    domain::{ProviderKey, TenantId},
    provider::ProviderRecord,
};

/// Changes a watcher may fall behind by before it must resynchronise from the cache.
const CHANGE_BUFFER: usize = 4096;

/// A provider whose record, or whose staleness, changed. Only the key travels: readers look
/// the current record up, so a watcher that falls behind skips straight to the latest state.
pub type ChangeNotice = Arc<ProviderKey>;

/// Current records by (tenant, provider), and the feed of their changes.
#[derive(Debug)]
pub struct KeyCache {
    providers: RwLock<BTreeMap<ProviderKey, Arc<ProviderRecord>>>,
    changes: broadcast::Sender<ChangeNotice>,
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
            changes: broadcast::Sender::new(CHANGE_BUFFER),
        }
    }

    /// Notices of every later change. Subscribe before reading the state you start from.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.changes.subscribe()
    }

    /// Announces a change that is not a new record, such as keys turning stale with time.
    pub fn touch(&self, key: &ProviderKey) {
        self.announce(key);
    }

    fn announce(&self, key: &ProviderKey) {
        // An error only means nobody is watching.
        let _ = self.changes.send(Arc::new(key.clone()));
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
        self.announce(&record.registration.key);
        record
    }

    /// Stores a refresh result, unless the provider was meanwhile removed or re-registered
    /// (a different revision): a late refresh must not resurrect or overwrite anything.
    pub fn update_if_current(&self, record: ProviderRecord) -> Option<Arc<ProviderRecord>> {
        let updated = {
            let mut providers = self.write();
            let slot = providers.get_mut(&record.registration.key)?;
            if slot.registration.revision != record.registration.revision {
                return None;
            }
            *slot = Arc::new(record);
            Arc::clone(slot)
        };
        self.announce(&updated.registration.key);
        Some(updated)
    }

    /// Removes a provider.
    pub fn remove(&self, key: &ProviderKey) -> Option<Arc<ProviderRecord>> {
        let removed = self.write().remove(key);
        if removed.is_some() {
            self.announce(key);
        }
        removed
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
