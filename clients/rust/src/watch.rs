//! The verifier's connection to keyrelay: one WatchKeys stream kept open in the background,
//! reconnecting with exponential backoff and resuming from the versions held, plus shared
//! `Resolve` calls for unknown kids.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};
use tonic::{
    Request,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig},
};

use crate::{
    endpoint::endpoint,
    keys::{KeySets, ProviderKeys, Status},
    proto::{self, key_service_client::KeyServiceClient, watch_keys_response::Event},
};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// An unknown kid is asked for at most this often per provider and kid.
const RESOLVE_COOLDOWN: Duration = Duration::from_secs(1);

/// Why a verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is not a valid URI, or the TLS settings are unusable.
    #[error("invalid keyrelay endpoint or TLS settings: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// TLS settings were given for an `http://` endpoint.
    #[error("TLS settings need an https:// endpoint, not {0}")]
    TlsNeedsHttps(String),
    /// The access token cannot be sent as metadata.
    #[error("the access token has characters that cannot be sent as gRPC metadata")]
    InvalidToken,
    /// No complete view arrived in time.
    #[error("no key sets from keyrelay within {0:?}")]
    NotSynced(Duration),
}

/// Configures a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierBuilder {
    endpoint: String,
    tenant: String,
    providers: Vec<String>,
    first_sync: Duration,
    tls: Option<ClientTlsConfig>,
    access_token: Option<String>,
}

/// Sends `authorization: Bearer <access token>` on every call, when there is a token.
#[derive(Debug, Clone)]
pub(crate) struct AccessToken(Option<AsciiMetadataValue>);

impl Interceptor for AccessToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl VerifierBuilder {
    /// Watch only this provider of the tenant (call again for more). Without it, every
    /// provider of the tenant is watched, including ones registered later.
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.providers.push(provider.into());
        self
    }

    /// How long `connect` waits for the first complete view (default 10 s).
    pub fn first_sync_timeout(mut self, wait: Duration) -> Self {
        self.first_sync = wait;
        self
    }

    /// TLS settings for an `https://` endpoint: the CA to trust (`ca_certificate`) and, for a
    /// server that requires client certificates, the certificate to present (`identity`).
    /// Without them, an `https://` endpoint is checked against the system's roots.
    pub fn tls(mut self, config: ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// A verifier (or admin) access token for the tenant, for tenants that require one
    /// (`keyrelay tokens create --role verifier`).
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Opens the stream and waits for the first complete view of the selected key sets.
    pub async fn connect(self) -> Result<Verifier, ConnectError> {
        let channel = endpoint(self.endpoint, self.tls)?.connect_lazy();
        let token = self
            .access_token
            .map(|token| format!("Bearer {token}").parse())
            .transpose()
            .map_err(|_| ConnectError::InvalidToken)?;
        let shared = Arc::new(Shared {
            client: KeyServiceClient::with_interceptor(channel, AccessToken(token)),
            tenant: self.tenant,
            providers: self.providers,
            keys: KeySets::default(),
            connected: AtomicBool::new(false),
            last_synced: Mutex::new(None),
            resolving: Mutex::default(),
        });
        let (synced, mut first_sync) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(&shared).follow(synced));
        let verifier = Verifier { shared, task };
        let wait =
            tokio::time::timeout(self.first_sync, first_sync.wait_for(|synced| *synced)).await;
        match wait {
            Ok(Ok(_)) => Ok(verifier),
            _ => Err(ConnectError::NotSynced(self.first_sync)),
        }
    }
}

pub(crate) struct Shared {
    client: KeyServiceClient<InterceptedService<Channel, AccessToken>>,
    pub(crate) tenant: String,
    pub(crate) providers: Vec<String>,
    pub(crate) keys: KeySets,
    connected: AtomicBool,
    last_synced: Mutex<Option<SystemTime>>,
    resolving: Mutex<HashMap<(String, String), Arc<LastAsked>>>,
}

/// When a provider's kid was last asked for, behind a lock concurrent callers queue on.
type LastAsked = tokio::sync::Mutex<Option<Instant>>;

/// Verifies tokens with the keys keyrelay pushes. Dropping it closes the stream.
pub struct Verifier {
    pub(crate) shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Verifier {
    /// Starts configuring a verifier of `tenant`'s tokens against keyrelay at `endpoint`
    /// (`http://host:port`, or `https://` for a TLS listener).
    pub fn builder(endpoint: impl Into<String>, tenant: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            endpoint: endpoint.into(),
            tenant: tenant.into(),
            providers: Vec::new(),
            first_sync: Duration::from_secs(10),
            tls: None,
            access_token: None,
        }
    }

    /// Whether the stream is up, and the key sets held with their age.
    pub fn status(&self) -> Status {
        Status {
            connected: self.shared.connected.load(Ordering::SeqCst),
            last_synced_at: *self
                .shared
                .last_synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            providers: self
                .shared
                .keys
                .all()
                .iter()
                .map(|keys| (**keys).clone())
                .collect(),
        }
    }
}

impl Shared {
    /// Keeps a stream open until the verifier is dropped.
    async fn follow(self: Arc<Self>, synced: watch::Sender<bool>) {
        let mut retry = FIRST_RETRY;
        loop {
            match self.stream_once(&synced).await {
                Ok(()) => tracing::info!("keyrelay ended the key stream; reconnecting"),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "key stream lost")
                }
            }
            if self.connected.swap(false, Ordering::SeqCst) {
                retry = FIRST_RETRY;
            }
            let jitter = rand::random_range(0.5..1.0);
            tokio::time::sleep(retry.mul_f64(jitter)).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    fn request(&self) -> proto::WatchKeysRequest {
        let selector = |provider: &str| proto::WatchSelector {
            tenant: self.tenant.clone(),
            provider: provider.to_owned(),
        };
        let selectors = if self.providers.is_empty() {
            vec![selector("")]
        } else {
            self.providers.iter().map(|p| selector(p)).collect()
        };
        let known_versions = self
            .keys
            .all()
            .iter()
            .map(|keys| proto::KnownVersion {
                tenant: self.tenant.clone(),
                provider: keys.provider.clone(),
                version: keys.version,
            })
            .collect();
        proto::WatchKeysRequest {
            selectors,
            known_versions,
        }
    }

    async fn stream_once(&self, synced: &watch::Sender<bool>) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let mut stream = client.watch_keys(self.request()).await?.into_inner();
        while let Some(message) = stream.message().await? {
            match message.event {
                Some(Event::KeySet(set)) => self.hold(set),
                Some(Event::Removed(removed)) => self.keys.remove(&removed.provider),
                Some(Event::Synced(_)) => {
                    self.connected.store(true, Ordering::SeqCst);
                    *self
                        .last_synced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
                    synced.send_replace(true);
                }
                None => {}
            }
        }
        Ok(())
    }

    fn hold(&self, set: proto::KeySet) {
        let provider = set.provider.clone();
        match ProviderKeys::from_message(set) {
            Ok(keys) => self.keys.put(keys),
            Err(err) => {
                tracing::warn!(provider, error = %err, "ignoring a key set that does not parse")
            }
        }
    }

    /// Asks keyrelay for `provider`'s set with `kid`, once for all concurrent callers and at
    /// most once a second per kid.
    pub(crate) async fn resolve_kid(&self, provider: &str, kid: &str) {
        let slot = {
            let mut resolving = self
                .resolving
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let slot = resolving
                .entry((provider.to_owned(), kid.to_owned()))
                .or_default();
            Arc::clone(slot)
        };
        let mut last = slot.lock().await;
        if self
            .keys
            .get(provider)
            .is_some_and(|keys| keys.find(kid).is_some())
        {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < RESOLVE_COOLDOWN) {
            return;
        }
        *last = Some(Instant::now());
        let request = proto::ResolveRequest {
            tenant: self.tenant.clone(),
            provider: provider.to_owned(),
            kid: Some(kid.to_owned()),
            if_newer_than_version: None,
        };
        match self.client.clone().resolve(request).await {
            Ok(response) => {
                if let Some(proto::resolve_response::Result::KeySet(set)) =
                    response.into_inner().result
                {
                    self.hold(set);
                }
            }
            Err(status) => tracing::debug!(
                provider,
                kid,
                message = status.message(),
                "kid not resolved"
            ),
        }
    }
}
