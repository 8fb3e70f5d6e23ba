//! Unit-test support for the refresh stack: a scripted fetcher whose answers and timing a
//! test controls, and a single-node refresher over a real SQLite store in a temporary
//! directory, on a manual clock.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tempfile::TempDir;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use super::{Refresher, RefresherParts, freshness::Backoff};
use crate::{
    access::Origin,
    clock::{Clock, ManualClock},
    cluster::Cluster,
    domain::{EgressRules, JwksUrl, KeySource, PolicyOverrides, ProviderKey, documented_defaults},
    observability::metrics::Metrics,
    state::{cache::KeyCache, record::Validators},
    store::{self, NewRegistration, Store},
    upstream::fetch::{CacheFacts, Fetch, FetchError, FetchOutcome, FetchRequest},
};

/// Backoff bounds of the test refresher.
pub(crate) const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// Unknown-kid cooldown of the test refresher.
pub(crate) const COOLDOWN: Duration = Duration::from_secs(10);

/// A JWKS of Ed25519 keys with these kids.
pub(crate) fn jwks(kids: &[&str]) -> Bytes {
    let keys: Vec<_> = kids
        .iter()
        .map(|kid| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        })
        .collect();
    Bytes::from(serde_json::json!({ "keys": keys }).to_string())
}

/// A fetcher that answers from a script: queued answers first, then the current document
/// (fresh for ten minutes). While gated, each fetch waits for a `release`.
pub(crate) struct ScriptedFetch {
    queued: Mutex<VecDeque<Result<FetchOutcome, FetchError>>>,
    document: Mutex<Bytes>,
    gate: Option<Semaphore>,
    calls: watch::Sender<usize>,
}

impl ScriptedFetch {
    /// Answers every fetch with `document` at once.
    pub(crate) fn serving(document: Bytes) -> Arc<Self> {
        Arc::new(Self::new(document, None))
    }

    /// Like `serving`, but each fetch waits for one `release`.
    pub(crate) fn gated(document: Bytes) -> Arc<Self> {
        Arc::new(Self::new(document, Some(Semaphore::new(0))))
    }

    fn new(document: Bytes, gate: Option<Semaphore>) -> Self {
        Self {
            queued: Mutex::default(),
            document: Mutex::new(document),
            gate,
            calls: watch::Sender::new(0),
        }
    }

    /// The next fetch answers `answer`.
    pub(crate) fn answer_next(&self, answer: Result<FetchOutcome, FetchError>) {
        lock(&self.queued).push_back(answer);
    }

    /// Fetches answer `document` from now on.
    pub(crate) fn serve(&self, document: Bytes) {
        *lock(&self.document) = document;
    }

    /// Lets `count` gated fetches answer.
    pub(crate) fn release(&self, count: usize) {
        if let Some(gate) = &self.gate {
            gate.add_permits(count);
        }
    }

    /// Fetches started so far.
    pub(crate) fn calls(&self) -> usize {
        *self.calls.borrow()
    }

    /// Waits until `count` fetches have started.
    pub(crate) async fn started(&self, count: usize) {
        let mut calls = self.calls.subscribe();
        let reached =
            tokio::time::timeout(Duration::from_secs(10), calls.wait_for(|n| *n >= count));
        assert!(
            matches!(reached.await, Ok(Ok(_))),
            "{count} fetches did not start"
        );
    }
}

#[async_trait]
impl Fetch for ScriptedFetch {
    async fn fetch(&self, _: FetchRequest<'_>) -> Result<FetchOutcome, FetchError> {
        self.calls.send_modify(|n| *n += 1);
        if let Some(gate) = &self.gate {
            gate.acquire()
                .await
                .map_err(|_| FetchError::Transport("gate closed".into()))?
                .forget();
        }
        if let Some(answer) = lock(&self.queued).pop_front() {
            return answer;
        }
        Ok(FetchOutcome::Modified {
            body: lock(&self.document).clone(),
            cache: CacheFacts {
                validators: Validators::default(),
                lifetime: Some(Duration::from_secs(600)),
            },
        })
    }
}

/// A single-node refresher over a fresh SQLite store.
pub(crate) struct Harness {
    pub refresher: Arc<Refresher>,
    pub store: Arc<dyn Store>,
    pub cache: Arc<KeyCache>,
    pub clock: ManualClock,
    _dir: TempDir,
}

impl Harness {
    pub(crate) async fn new(fetcher: Arc<ScriptedFetch>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(None, dir.path(), 1, false)
            .await
            .expect("store")
            .store;
        let clock = ManualClock::new(Utc::now());
        let time: Arc<dyn Clock> = Arc::new(clock.clone());
        let cache = Arc::new(KeyCache::with_records([]));
        let metrics = Metrics::new(Vec::new());
        let cluster = Cluster::single_node("test".into(), "test".into(), time.now());
        let refresher = Refresher::new(RefresherParts {
            store: Arc::clone(&store),
            cache: Arc::clone(&cache),
            fetcher,
            clock: time,
            defaults: documented_defaults(),
            backoff: BACKOFF,
            unknown_kid_cooldown: COOLDOWN,
            cluster: Arc::new(cluster),
            owner_wait: Duration::from_secs(5),
            tasks: TaskTracker::new(),
            metrics,
        });
        Self {
            refresher,
            store,
            cache,
            clock,
            _dir: dir,
        }
    }

    /// Registers `acme/<provider>` (revision `revision`) in the store and the cache, due at
    /// once, and returns its key.
    pub(crate) async fn register(&self, provider: &str, revision: i64) -> ProviderKey {
        self.register_due(provider, revision, self.clock.now())
            .await
    }

    /// Like `register`, with the first refresh due at `due`.
    pub(crate) async fn register_due(
        &self,
        provider: &str,
        revision: i64,
        due: DateTime<Utc>,
    ) -> ProviderKey {
        let key = ProviderKey::parse("acme", provider).expect("valid key");
        let registration = NewRegistration {
            key: key.clone(),
            source: KeySource::JwksUrl(
                JwksUrl::parse("https://idp.example.com/jwks", &EgressRules::default())
                    .expect("valid URL"),
            ),
            overrides: PolicyOverrides::default(),
        };
        let now = self.clock.now();
        let registered = self
            .store
            .register(&registration, revision, now, due, &Origin::service())
            .await
            .expect("registered");
        self.cache.apply(registered.record);
        key
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
