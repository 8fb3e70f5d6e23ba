//! The in-memory view every read is served from: one immutable record per provider, swapped
//! whole on change, loaded from the store at start and updated after every durable write.
//! Every change is announced on a broadcast of provider keys, so that Resolve and WatchKeys
//! read the same state and watchers learn of it at once.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, PoisonError, RwLock},
};

use tokio::sync::broadcast;

use crate::{
    domain::{ProviderKey, TenantId},
    state::record::ProviderRecord,
};

/// Changes a watcher may fall behind by before it must resynchronise from the cache.
const CHANGE_BUFFER: usize = 4096;

/// A provider whose record, or whose staleness, changed. Only the key travels (a shared
/// pointer, not a copy): readers look the current record up, so a watcher that falls behind
/// skips straight to the latest state.
pub type ChangeNotice = ProviderKey;

/// Current records by (tenant, provider), and the feed of their changes.
#[derive(Debug)]
pub struct KeyCache {
    state: RwLock<State>,
    changes: broadcast::Sender<ChangeNotice>,
}

#[derive(Debug, Default)]
struct State {
    providers: BTreeMap<ProviderKey, Arc<ProviderRecord>>,
    /// Change sequence of each removal, so that an older state arriving late cannot bring a
    /// removed provider back. One small entry per provider ever removed by this process.
    removed: HashMap<ProviderKey, u64>,
}

impl KeyCache {
    /// A cache holding `records`.
    pub fn with_records(records: impl IntoIterator<Item = Arc<ProviderRecord>>) -> Self {
        let providers = records
            .into_iter()
            .map(|record| (record.registration.key.clone(), record))
            .collect();
        Self {
            state: RwLock::new(State {
                providers,
                removed: HashMap::new(),
            }),
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
        let _ = self.changes.send(key.clone());
    }

    /// The current record of a provider.
    pub fn get(&self, key: &ProviderKey) -> Option<Arc<ProviderRecord>> {
        self.read().providers.get(key).cloned()
    }

    /// Applies a stored state of a provider unless a newer one (by change sequence) is already
    /// held or the provider was removed later: local writes and the change feed may deliver
    /// states in any order. Returns the record now held for the provider, if any.
    pub fn apply(&self, record: ProviderRecord) -> Option<Arc<ProviderRecord>> {
        let key = record.registration.key.clone();
        let applied = {
            let mut state = self.write();
            let removed_later = state
                .removed
                .get(&key)
                .is_some_and(|seq| *seq >= record.change_seq);
            let current = state.providers.get(&key);
            if removed_later || current.is_some_and(|c| c.change_seq >= record.change_seq) {
                return current.cloned();
            }
            state.removed.remove(&key);
            let record = Arc::new(record);
            state.providers.insert(key.clone(), Arc::clone(&record));
            record
        };
        self.announce(&key);
        Some(applied)
    }

    /// Applies the removal of a provider at change sequence `seq`, unless a newer state is held.
    pub fn apply_removal(&self, key: &ProviderKey, seq: u64) {
        {
            let mut state = self.write();
            if state.providers.get(key).is_some_and(|c| c.change_seq > seq) {
                return;
            }
            let latest = state.removed.get(key).map_or(seq, |known| seq.max(*known));
            state.removed.insert(key.clone(), latest);
            if state.providers.remove(key).is_none() {
                return;
            }
        }
        self.announce(key);
    }

    /// The change sequence of the state held for `key` (0 when none).
    pub fn change_seq(&self, key: &ProviderKey) -> u64 {
        self.get(key).map_or(0, |record| record.change_seq)
    }

    /// Waits until the state held for `key` is newer than `seq` or the provider is gone, for
    /// at most `wait`. Returns whether it happened.
    pub async fn wait_for_newer(
        &self,
        key: &ProviderKey,
        seq: u64,
        wait: std::time::Duration,
    ) -> bool {
        let mut notices = self.subscribe();
        let newer = |cache: &Self| cache.get(key).is_none_or(|record| record.change_seq > seq);
        let waiting = async {
            loop {
                if newer(self) {
                    return;
                }
                match notices.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::time::timeout(wait, waiting).await.is_ok()
    }

    /// Up to `limit` records after `after`, in key order, optionally of one tenant only.
    pub fn page(
        &self,
        tenant: Option<&TenantId>,
        after: Option<&ProviderKey>,
        limit: usize,
    ) -> Vec<Arc<ProviderRecord>> {
        let state = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        state
            .providers
            .range((start, Bound::Unbounded))
            .map(|(_, record)| record)
            .skip_while(|record| tenant.is_some_and(|t| record.registration.key.tenant() < t))
            .take_while(|record| tenant.is_none_or(|t| record.registration.key.tenant() == t))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every record, in key order.
    pub fn all(&self) -> Vec<Arc<ProviderRecord>> {
        self.read().providers.values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(provider: &str, change_seq: u64) -> ProviderRecord {
        crate::state::record::sample(provider, change_seq)
    }

    fn key(provider: &str) -> ProviderKey {
        ProviderKey::parse("acme", provider).unwrap()
    }

    #[test]
    fn older_states_never_replace_newer_ones() {
        let cache = KeyCache::with_records([]);
        let mut notices = cache.subscribe();
        cache.apply(record("a", 5));
        cache.apply(record("a", 3));
        assert_eq!(cache.change_seq(&key("a")), 5);
        cache.apply(record("a", 8));
        assert_eq!(cache.change_seq(&key("a")), 8);
        let announced = std::iter::from_fn(|| notices.try_recv().ok()).count();
        assert_eq!(announced, 2, "only applied states are announced");
    }

    #[test]
    fn a_removal_wins_over_older_states_and_loses_to_newer_ones() {
        let cache = KeyCache::with_records([Arc::new(record("a", 5))]);
        cache.apply_removal(&key("a"), 4);
        assert!(
            cache.get(&key("a")).is_some(),
            "the held state is newer than the removal"
        );
        cache.apply_removal(&key("a"), 6);
        assert!(cache.get(&key("a")).is_none());
        cache.apply(record("a", 5));
        assert!(
            cache.get(&key("a")).is_none(),
            "a late older state does not resurrect it"
        );
        cache.apply(record("a", 7));
        assert_eq!(
            cache.change_seq(&key("a")),
            7,
            "a re-registration after the removal does"
        );
    }

    #[tokio::test]
    async fn waiting_for_a_newer_state_ends_when_it_arrives_or_times_out() {
        let cache = Arc::new(KeyCache::with_records([Arc::new(record("a", 1))]));
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .wait_for_newer(&key("a"), 1, std::time::Duration::from_secs(10))
                    .await
            })
        };
        tokio::task::yield_now().await;
        cache.apply(record("a", 2));
        assert!(waiter.await.unwrap());
        let timed_out = cache
            .wait_for_newer(&key("a"), 2, std::time::Duration::from_millis(10))
            .await;
        assert!(!timed_out);
    }
}
