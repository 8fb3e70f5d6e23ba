//! The last key-set event encoded for each provider: each is encoded once per change and the
//! bytes shared (reference-counted) by every WatchKeys subscriber and every Resolve that
//! sends it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    api::convert,
    api::encoded::EncodedEvent,
    domain::ProviderKey,
    proto::v1::watch_keys_response::Event,
    state::Snapshot,
    state::record::{CurrentKeys, ProviderRecord},
};

struct Cached {
    record: Arc<ProviderRecord>,
    stale: bool,
    event: EncodedEvent,
}

/// The last key-set event encoded for each provider, keyed by the record and staleness it
/// was encoded from.
#[derive(Default)]
pub(super) struct EventCache {
    entries: Mutex<HashMap<ProviderKey, Cached>>,
}

impl EventCache {
    /// The `key_set` event for `snapshot`, encoded at most once per record and staleness.
    pub fn key_set(&self, snapshot: &Snapshot, keys: &CurrentKeys) -> EncodedEvent {
        let key = &snapshot.record.registration.key;
        let stale = keys.is_stale(snapshot.at);
        if let Some(cached) = self.lock().get(key)
            && Arc::ptr_eq(&cached.record, &snapshot.record)
            && cached.stale == stale
        {
            return cached.event.clone();
        }
        let event = EncodedEvent::encode(Event::KeySet(convert::key_set(snapshot, keys)));
        let cached = Cached {
            record: Arc::clone(&snapshot.record),
            stale,
            event: event.clone(),
        };
        self.lock().insert(key.clone(), cached);
        event
    }

    /// Drops what is cached for a removed provider.
    pub fn forget(&self, key: &ProviderKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProviderKey, Cached>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
