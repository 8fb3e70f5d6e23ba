//! One WatchKeys stream. It remembers only what the client holds (a version and condition per
//! provider) and which providers to look at again; every event is computed from the cache at
//! the moment the client can take it, so a client that reads late gets the latest state of
//! each provider, once.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;

use super::{WatchHub, WatchRequest};
use crate::api::encoded::EncodedEvent;
use crate::{
    core::error::{Error, StreamEnd},
    domain::ProviderKey,
    observability::metrics::WatchGuard,
    state::Snapshot,
    state::cache::ChangeNotice,
    state::record::ProviderState,
};

/// What the client holds for one provider. A change to any of it is an event; a 304 or an
/// identical body changes none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    version: u64,
    stale: bool,
    state: ProviderState,
}

/// The state of one stream.
pub struct Subscription {
    hub: Arc<WatchHub>,
    request: WatchRequest,
    notices: broadcast::Receiver<ChangeNotice>,
    held: HashMap<ProviderKey, Held>,
    pending: BTreeSet<ProviderKey>,
    synced: bool,
    ended: bool,
    _open: WatchGuard,
}

impl Subscription {
    pub(super) fn new(hub: Arc<WatchHub>, mut request: WatchRequest) -> Self {
        // Subscribe before reading the initial state, so no change falls in between.
        let notices = hub.cache.subscribe();
        let known = std::mem::take(&mut request.known_versions);
        // A resuming client is assumed to hold a fresh, healthy copy of each known version:
        // it is sent again only if the provider is now stale or failing.
        let held = known
            .into_iter()
            .filter(|(key, _)| request.selects(key))
            .map(|(key, version)| {
                let held = Held {
                    version,
                    stale: false,
                    state: ProviderState::Ready,
                };
                (key, held)
            })
            .collect();
        let open = hub.metrics.watch_opened();
        let mut subscription = Self {
            _open: open,
            hub,
            request,
            notices,
            held,
            pending: BTreeSet::new(),
            synced: false,
            ended: false,
        };
        subscription.look_at_everything_selected();
        subscription
    }

    /// The stream of events, ending with UNAVAILABLE at server shutdown.
    pub fn into_stream(self) -> impl Stream<Item = Result<EncodedEvent, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut subscription| async move {
            let event = subscription.next_event().await?;
            Some((event, subscription))
        })
    }

    /// The next event: pending changes first, then `synced` once, then waits for changes.
    pub async fn next_event(&mut self) -> Option<Result<EncodedEvent, Status>> {
        if self.ended {
            return None;
        }
        loop {
            while let Some(key) = self.next_pending() {
                if let Some(event) = self.examine(&key) {
                    self.hub.metrics.watch_event_sent();
                    return Some(Ok(event));
                }
            }
            if !self.synced {
                self.synced = true;
                self.hub.metrics.watch_event_sent();
                return Some(Ok(EncodedEvent::synced()));
            }
            tokio::select! {
                biased;
                () = self.hub.shutdown.cancelled() => return self.end(),
                notice = self.notices.recv() => match notice {
                    Ok(key) if self.request.selects(&key) => {
                        self.pending.insert(ProviderKey::clone(&key));
                    }
                    Ok(_) => {}
                    // Fell behind the change feed: look at everything again; versions make
                    // this exact and the client gets only the latest of each provider.
                    Err(RecvError::Lagged(_)) => {
                        self.hub.metrics.watch_resynced();
                        self.look_at_everything_selected();
                    }
                    Err(RecvError::Closed) => return self.end(),
                },
            }
        }
    }

    /// The next provider to look at. The emptied set gives its node back, so an idle stream
    /// holds none (a `BTreeSet` keeps its last node when its last key is removed).
    fn next_pending(&mut self) -> Option<ProviderKey> {
        let key = self.pending.pop_first();
        if self.pending.is_empty() {
            self.pending = BTreeSet::new();
        }
        key
    }

    fn end(&mut self) -> Option<Result<EncodedEvent, Status>> {
        self.ended = true;
        Some(Err(Error::from(StreamEnd::ShuttingDown).into()))
    }

    fn look_at_everything_selected(&mut self) {
        let cache = &self.hub.cache;
        for tenant in &self.request.tenants {
            let records = cache.page(Some(tenant), None, usize::MAX);
            self.pending
                .extend(records.iter().map(|r| r.registration.key.clone()));
        }
        self.pending.extend(self.request.providers.iter().cloned());
        self.pending.extend(self.held.keys().cloned());
    }

    /// The event that brings the client up to date on `key`, if it needs one.
    fn examine(&mut self, key: &ProviderKey) -> Option<EncodedEvent> {
        let Some(record) = self.hub.cache.get(key) else {
            self.hub.events.forget(key);
            let held = self.held.remove(key)?;
            return Some(EncodedEvent::removed(key, held.version));
        };
        let snapshot = Snapshot {
            policy: record.policy(&self.hub.defaults),
            at: self.hub.clock.now(),
            record,
        };
        let keys = snapshot.record.keys.as_ref()?;
        let current = Held {
            version: keys.version,
            stale: keys.is_stale(snapshot.at),
            state: snapshot.record.state(snapshot.at),
        };
        if self.held.get(key) == Some(&current) {
            return None;
        }
        self.held.insert(key.clone(), current);
        Some(self.hub.events.key_set(&snapshot, keys))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};
    use futures::FutureExt;
    use prost::Message;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        clock::{Clock, ManualClock},
        domain::documented_defaults,
        domain::key_set::KeySetDocument,
        proto::v1::{self as pb, watch_keys_response::Event},
        state::cache::KeyCache,
        state::record::{CurrentKeys, ProviderRecord},
    };

    /// Every state a test makes is newer than the one before.
    static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn record(provider: &str, version: u64, clock: &ManualClock) -> ProviderRecord {
        let now = clock.now();
        let body = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": format!("k{version}"), "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]});
        let change_seq = NEXT_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut record = crate::state::record::sample(provider, change_seq);
        let document = Arc::new(
            KeySetDocument::parse(body.to_string().as_bytes())
                .unwrap()
                .document,
        );
        record.keys = Some(CurrentKeys {
            version,
            fetched: Arc::clone(&document),
            document,
            fetched_at: now,
            fresh_until: now + Duration::seconds(600),
            skipped: Arc::from([]),
            withheld: Arc::from([]),
        });
        record
    }

    fn setup(records: Vec<ProviderRecord>, clock: &ManualClock) -> (Arc<KeyCache>, Arc<WatchHub>) {
        let cache = Arc::new(KeyCache::with_records(records.into_iter().map(Arc::new)));
        let hub = hub(&cache, clock, CancellationToken::new());
        (cache, hub)
    }

    fn hub(
        cache: &Arc<KeyCache>,
        clock: &ManualClock,
        shutdown: CancellationToken,
    ) -> Arc<WatchHub> {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let metrics = crate::observability::metrics::Metrics::new(Vec::new());
        WatchHub::new(
            Arc::clone(cache),
            clock,
            documented_defaults(),
            metrics,
            shutdown,
        )
    }

    fn tenant_wide(known: &[(&str, u64)]) -> WatchRequest {
        WatchRequest {
            tenants: [crate::domain::TenantId::parse("tenant", "acme").unwrap()].into(),
            providers: Box::default(),
            known_versions: known
                .iter()
                .map(|(provider, version)| {
                    (ProviderKey::parse("acme", provider).unwrap(), *version)
                })
                .collect(),
        }
    }

    async fn next(subscription: &mut Subscription) -> Event {
        let event = subscription.next_event().await.unwrap().unwrap();
        pb::WatchKeysResponse::decode(event.as_bytes().clone())
            .unwrap()
            .event
            .unwrap()
    }

    fn version_of(event: &Event) -> (String, u64, bool, i32) {
        match event {
            Event::KeySet(set) => (set.provider.clone(), set.version, set.stale, set.state),
            other => panic!("expected a key set, got {other:?}"),
        }
    }

    fn nothing_more(subscription: &mut Subscription) {
        assert!(
            subscription.next_event().now_or_never().is_none(),
            "no further event expected"
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_only_the_latest_version() {
        let clock = ManualClock::new(Utc::now());
        let (cache, hub) = setup(vec![record("okta", 1, &clock)], &clock);
        let mut subscription = hub.subscribe(tenant_wide(&[]));
        assert_eq!(version_of(&next(&mut subscription).await).1, 1);
        assert_eq!(next(&mut subscription).await, Event::Synced(pb::Synced {}));
        for version in 2..=10 {
            cache.apply(record("okta", version, &clock));
        }
        assert_eq!(version_of(&next(&mut subscription).await).1, 10);
        nothing_more(&mut subscription);
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_whole_change_buffer_resynchronises() {
        let clock = ManualClock::new(Utc::now());
        let (cache, hub) = setup(vec![record("a", 1, &clock), record("b", 1, &clock)], &clock);
        let mut subscription = hub.subscribe(tenant_wide(&[("a", 1), ("b", 1)]));
        assert_eq!(next(&mut subscription).await, Event::Synced(pb::Synced {}));
        for version in 2..=5000 {
            cache.apply(record("a", version, &clock));
        }
        assert_eq!(version_of(&next(&mut subscription).await).1, 5000);
        nothing_more(&mut subscription);
    }

    #[tokio::test]
    async fn known_versions_skip_what_the_client_holds_and_report_what_is_gone() {
        let clock = ManualClock::new(Utc::now());
        let (_cache, hub) = setup(vec![record("a", 3, &clock), record("b", 2, &clock)], &clock);
        let mut subscription = hub.subscribe(tenant_wide(&[("a", 3), ("b", 1), ("gone", 4)]));
        assert_eq!(
            version_of(&next(&mut subscription).await).1,
            2,
            "b moved on"
        );
        let removed = pb::ProviderRemoved {
            tenant: "acme".into(),
            provider: "gone".into(),
            version: 4,
        };
        assert_eq!(next(&mut subscription).await, Event::Removed(removed));
        assert_eq!(next(&mut subscription).await, Event::Synced(pb::Synced {}));
        nothing_more(&mut subscription);
    }

    #[tokio::test]
    async fn keys_turning_stale_are_an_event_and_a_revalidation_is_not() {
        let clock = ManualClock::new(Utc::now());
        let (cache, hub) = setup(vec![record("a", 1, &clock)], &clock);
        let mut subscription = hub.subscribe(tenant_wide(&[("a", 1)]));
        assert_eq!(next(&mut subscription).await, Event::Synced(pb::Synced {}));

        clock.advance(std::time::Duration::from_secs(100));
        cache.apply(record("a", 1, &clock));
        nothing_more(&mut subscription);

        clock.advance(std::time::Duration::from_secs(700));
        cache.touch(&ProviderKey::parse("acme", "a").unwrap());
        let stale = version_of(&next(&mut subscription).await);
        assert_eq!(
            stale,
            ("a".into(), 1, true, pb::ProviderState::Stale as i32)
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_stream_with_unavailable() {
        let clock = ManualClock::new(Utc::now());
        let cache = Arc::new(KeyCache::with_records([]));
        let shutdown = CancellationToken::new();
        let hub = hub(&cache, &clock, shutdown.clone());
        let mut subscription = hub.subscribe(tenant_wide(&[]));
        assert!(
            matches!(subscription.next_event().await, Some(Ok(_))),
            "synced"
        );
        shutdown.cancel();
        let ended = subscription.next_event().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        assert!(subscription.next_event().await.is_none());
    }
}
