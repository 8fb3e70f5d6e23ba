//! WatchKeys: the versioned, resumable push of key-set changes. Each stream is a lazy state
//! machine over the shared cache: it holds no queue of its own, so a slow subscriber costs no
//! memory and, when it reads again, skips to the latest state of each provider. Each change
//! is encoded once and its bytes shared by every subscriber.

mod event;
mod selection;
mod subscription;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use selection::{WatchRequest, limits};
pub use subscription::Subscription;

use crate::api::encoded::EncodedEvent;
use crate::{
    clock::Clock, domain::Policy, observability::metrics::Metrics, state::Snapshot,
    state::cache::KeyCache, state::record::CurrentKeys,
};
use event::EventCache;

/// What every stream shares.
pub struct WatchHub {
    cache: Arc<KeyCache>,
    events: EventCache,
    clock: Arc<dyn Clock>,
    defaults: Policy,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl WatchHub {
    /// A hub over `cache`; streams end with UNAVAILABLE when `shutdown` fires.
    pub fn new(
        cache: Arc<KeyCache>,
        clock: Arc<dyn Clock>,
        defaults: Policy,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            cache,
            events: EventCache::default(),
            clock,
            defaults,
            metrics,
            shutdown,
        })
    }

    /// Starts a subscription: it will send the initial state, `synced`, then changes.
    pub fn subscribe(self: &Arc<Self>, request: WatchRequest) -> Subscription {
        Subscription::new(Arc::clone(self), request)
    }

    /// The encoded key set of `snapshot`, shared with WatchKeys: also a Resolve answer.
    pub fn key_set_message(&self, snapshot: &Snapshot, keys: &CurrentKeys) -> EncodedEvent {
        self.events.key_set(snapshot, keys)
    }

    /// The cache the hub watches.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }
}
