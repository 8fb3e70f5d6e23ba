//! Building and running the server: open the store, load every key set into memory, bind
//! the listener, then serve gRPC and run the background tasks (lease keeper and change feed
//! on Postgres, scheduler, staleness timer) until shutdown, draining in-flight calls and
//! refreshes and releasing the lease before closing the store.

pub mod config;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    access::AccessRegistry,
    access::admin_token::AdminToken,
    api::auth_failures::AuthFailures,
    api::grpc::{admin_service_server::AdminServiceServer, key_service_server::KeyServiceServer},
    api::http_server::HttpServer,
    api::mirror::{self, Mirror},
    api::watch::WatchHub,
    api::{AdminApi, Authenticator, KeyApi, ObserveLayer},
    clock::Clock,
    cluster::{
        self, ChangeFeed, Cluster, FeedParts, LeadershipCollector, LeaseKeeper, RefreshRequest,
    },
    core::access::AccessControl,
    core::failure_limiter::FailureLimiter,
    core::providers::{Providers, ProvidersParts},
    domain::{EgressRules, Policy, ValidationError},
    observability::metrics::Metrics,
    proto::FILE_DESCRIPTOR_SET,
    refresh::scheduler::Scheduler,
    refresh::staleness::StalenessTimer,
    refresh::{Refresher, RefresherParts},
    server::config::ServeConfig,
    server::tls::{ReloadHandle, TlsError, TlsListener},
    state::{cache::KeyCache, collector::ProvidersCollector},
    store::{self, Store, StoreError, UnreadableRowsCollector},
    upstream::dns::SystemLookup,
    upstream::fetch::{FetchSetupError, Fetcher},
};

/// Dead peers are detected by HTTP/2 pings this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...each answered within this long.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent calls on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest request message accepted (a WatchKeys request with every bound used fits).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Followers' refresh requests waiting for the leader's refresher.
const REFRESH_REQUEST_QUEUE: usize = 1024;
/// A follower waits this much longer than one fetch for the leader's result.
const LEADER_WAIT_MARGIN: Duration = Duration::from_secs(2);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is incoherent.
    #[error("configuration: {0}")]
    Config(#[from] ValidationError),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory or the admin token file could not be used.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// The token file.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The bind failure.
        source: std::io::Error,
    },
    /// The JWKS fetcher could not be built.
    #[error("JWKS fetcher: {0}")]
    Fetcher(#[from] FetchSetupError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's TLS files are unusable.
    #[error("listener TLS: {0}")]
    Tls(#[from] TlsError),
}

/// The gRPC listener: plain TCP, or TLS.
enum Listener {
    Plain(TcpIncoming),
    Tls(TlsListener),
}

/// Background work that runs on Postgres only.
struct FleetTasks {
    keeper: LeaseKeeper,
    feed: ChangeFeed,
    refresher: Arc<Refresher>,
    requests: mpsc::Receiver<RefreshRequest>,
    listener: PgListener,
}

/// A server ready to run: store loaded, listener bound.
pub struct Application {
    listener: Listener,
    local_addr: SocketAddr,
    http: HttpServer,
    http_addr: SocketAddr,
    metrics: Arc<Metrics>,
    providers: Arc<Providers>,
    cache: Arc<KeyCache>,
    clock: Arc<dyn Clock>,
    defaults: Policy,
    store: Arc<dyn Store>,
    cluster: Arc<Cluster>,
    scheduler: Scheduler,
    fleet: Option<FleetTasks>,
    tasks: TaskTracker,
    access: Arc<AccessControl>,
    auth_failures: Arc<AuthFailures>,
    mirror: Mirror,
    egress: EgressRules,
    shutdown_grace: Duration,
}

impl Application {
    /// Opens the store, loads every provider into memory and binds the listener.
    pub async fn build(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        install_crypto_provider();
        let defaults = config.policy_defaults()?;
        let lease = config.lease_settings()?;
        let tls = config.listener_tls()?;
        let admin_token = admin_token(&config)?;
        let bind_error = |source| StartupError::Bind {
            addr: config.listen,
            source,
        };
        let tcp = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = tcp.local_addr().map_err(bind_error)?;
        let opened = store::open(
            config.database_url.as_deref(),
            &config.data_dir,
            config.db_max_connections,
            config.skip_migrations,
        )
        .await?;
        let store = opened.store;
        let access = Arc::new(AccessRegistry::new(admin_token, store.load_access().await?));
        let records = store.load_all().await?;
        tracing::info!(providers = records.len(), "key sets loaded from the store");
        let cache = Arc::new(KeyCache::with_records(records));
        let replica_id = config
            .replica_id
            .clone()
            .unwrap_or_else(cluster::default_replica_id);
        let address = config
            .advertise_address
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let started_at = clock.now();
        let (cluster, fleet_parts) = match opened.postgres {
            Some(pool) => {
                let (keeper, leadership, nudge) = LeaseKeeper::new(
                    pool.clone(),
                    replica_id.clone(),
                    address.clone(),
                    started_at,
                    lease,
                );
                let cluster = Cluster::postgres(
                    pool.clone(),
                    replica_id,
                    address,
                    started_at,
                    leadership,
                    &lease,
                );
                (Arc::new(cluster), Some((pool, keeper, nudge)))
            }
            None => (
                Arc::new(Cluster::single_node(replica_id, address, started_at)),
                None,
            ),
        };
        let metrics = Metrics::new(vec![
            Box::new(LeadershipCollector(cluster.leadership().clone())),
            Box::new(ProvidersCollector {
                cache: Arc::clone(&cache),
                clock: Arc::clone(&clock),
                defaults,
            }),
            Box::new(UnreadableRowsCollector(opened.unreadable)),
        ]);
        // Before taking part in the fleet, so bad TLS files fail the start cleanly.
        let listener = match tls {
            Some(settings) => {
                Listener::Tls(TlsListener::new(tcp, settings, Arc::clone(&metrics)).await?)
            }
            None => Listener::Plain(TcpIncoming::from(tcp).with_nodelay(Some(true))),
        };
        let http_error = |source| StartupError::Bind {
            addr: config.http_listen,
            source,
        };
        let http_listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(http_error)?;
        let http_addr = http_listener.local_addr().map_err(http_error)?;
        let tasks = TaskTracker::new();
        let leader_wait = config.fetch_timeout + LEADER_WAIT_MARGIN;
        let refresher = Refresher::new(RefresherParts {
            store: Arc::clone(&store),
            cache: Arc::clone(&cache),
            fetcher: Arc::new(Fetcher::new(
                &config
                    .fetch_settings(Arc::new(SystemLookup))
                    .map_err(FetchSetupError::from)?,
            )?),
            clock: Arc::clone(&clock),
            defaults,
            backoff: config.backoff(),
            unknown_kid_cooldown: config.unknown_kid_cooldown,
            cluster: Arc::clone(&cluster),
            leader_wait,
            tasks: tasks.clone(),
            metrics: Arc::clone(&metrics),
        });
        let leadership = cluster.leadership().clone();
        let fleet = match fleet_parts {
            Some((pool, mut keeper, nudge)) => {
                let (refresh_requests, requests) = mpsc::channel(REFRESH_REQUEST_QUEUE);
                let feed = ChangeFeed::new(FeedParts {
                    pool,
                    store: Arc::clone(&store),
                    cache: Arc::clone(&cache),
                    access: Arc::clone(&access),
                    refresh_requests,
                    cluster: Arc::clone(&cluster),
                    lease_nudge: nudge,
                });
                // Follow the feed and take part in the lease before serving, so the first
                // calls neither miss a change nor wait for a leader that could be this one.
                let listener = feed.connect().await?;
                keeper.compete().await;
                Some(FleetTasks {
                    keeper,
                    feed,
                    refresher: Arc::clone(&refresher),
                    requests,
                    listener,
                })
            }
            None => None,
        };
        let scheduler = Scheduler::new(
            Arc::clone(&cache),
            Arc::clone(&clock),
            Arc::clone(&refresher),
            leadership,
            config.max_concurrent_fetches,
        );
        let providers = Arc::new(Providers::new(ProvidersParts {
            store: Arc::clone(&store),
            cache: Arc::clone(&cache),
            refresher,
            clock: Arc::clone(&clock),
            defaults,
            unknown_kid_wait: config.unknown_kid_wait,
            first_fetch_grace: leader_wait,
            metrics: Arc::clone(&metrics),
            unknown_kid_limiter: FailureLimiter::new(config.unknown_kid_rate),
        }));
        let auth_failures = Arc::new(AuthFailures::new(
            Arc::clone(&metrics),
            config.admin_auth_failure_rate,
        ));
        let mirror = Mirror {
            providers: Arc::clone(&providers),
            access: Arc::clone(&access),
            clock: Arc::clone(&clock),
            failures: Arc::clone(&auth_failures),
        };
        // With TLS on, keys are served over TLS only (and to clients with a certificate, when
        // one is required): the plain HTTP listener keeps metrics and health.
        let http_mirror = match listener {
            Listener::Plain(_) => mirror::router(mirror.clone()),
            Listener::Tls(_) => axum::Router::new(),
        };
        let http = HttpServer::new(
            http_listener,
            Arc::clone(&metrics),
            Arc::clone(&store),
            http_mirror,
        );
        let access_control = Arc::new(AccessControl::new(
            Arc::clone(&store),
            access,
            Arc::clone(&clock),
        ));
        Ok(Self {
            listener,
            local_addr,
            http,
            http_addr,
            metrics,
            providers,
            cache,
            clock,
            defaults,
            store,
            cluster,
            scheduler,
            fleet,
            tasks,
            access: access_control,
            auth_failures,
            mirror,
            egress: config.egress(),
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The address the gRPC listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the listener's TLS files the way SIGHUP does; none without TLS.
    pub fn tls_reload_handle(&self) -> Option<ReloadHandle> {
        match &self.listener {
            Listener::Plain(_) => None,
            Listener::Tls(tls) => Some(tls.reload_handle()),
        }
    }

    /// The address the HTTP listener (metrics, health) is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` is cancelled, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let mut background: Vec<(&str, JoinHandle<()>)> = Vec::new();
        if let Some(fleet) = self.fleet {
            background.push((
                "lease keeper",
                tokio::spawn(fleet.keeper.run(shutdown.child_token())),
            ));
            let feed = fleet.feed.run(fleet.listener, shutdown.child_token());
            background.push(("change feed", tokio::spawn(feed)));
            let serving = fleet
                .refresher
                .serve_requests(fleet.requests, shutdown.child_token());
            background.push(("refresh requests", tokio::spawn(serving)));
        }
        background.push((
            "scheduler",
            tokio::spawn(self.scheduler.run(shutdown.child_token())),
        ));
        let staleness = StalenessTimer::new(Arc::clone(&self.cache), Arc::clone(&self.clock));
        background.push((
            "staleness timer",
            tokio::spawn(staleness.run(shutdown.child_token())),
        ));
        background.push((
            "HTTP listener",
            tokio::spawn(self.http.run(shutdown.child_token())),
        ));
        let registry = Arc::clone(self.access.registry());
        let watch = WatchHub::new(
            self.cache,
            Arc::clone(&self.clock),
            self.defaults,
            Arc::clone(&self.metrics),
            shutdown.child_token(),
        );
        for service in ["", "keyrelay.v1.KeyService", "keyrelay.v1.AdminService"] {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        tracing::info!(addr = %self.local_addr, http = %self.http_addr, "keyrelay serving");
        let stop_signal = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: draining in-flight calls");
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
        };
        let authenticator = Authenticator::new(
            Arc::clone(&registry),
            Arc::clone(&self.clock),
            self.auth_failures,
        );
        let grpc = Routes::default()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(InterceptedService::new(
                KeyServiceServer::new(KeyApi::new(
                    Arc::clone(&self.providers),
                    watch,
                    Arc::clone(&registry),
                    Arc::clone(&self.clock),
                ))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                authenticator.verifier(),
            ))
            .add_service(InterceptedService::new(
                AdminServiceServer::new(AdminApi::new(
                    Arc::clone(&self.providers),
                    Arc::clone(&self.cluster),
                    self.egress,
                    self.access,
                ))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                authenticator.admin(),
            ));
        // The JWKS mirror answers plain HTTP/1.1 and HTTP/2 GETs on the same port.
        let routes = Routes::from(grpc.into_axum_router().merge(mirror::router(self.mirror)));
        let server = Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .layer(ObserveLayer::new(
                Arc::clone(&self.metrics),
                self.local_addr,
            ))
            .add_routes(routes);
        let served = match self.listener {
            Listener::Plain(incoming) => {
                let server = server.serve_with_incoming_shutdown(incoming, stop_signal);
                drain_within(server, &shutdown, self.shutdown_grace).await
            }
            Listener::Tls(tls) => {
                let (incoming, tasks) = tls.start(&shutdown);
                background.extend(tasks);
                let server = server.serve_with_incoming_shutdown(incoming, stop_signal);
                drain_within(server, &shutdown, self.shutdown_grace).await
            }
        };
        for (name, task) in background {
            if task.await.is_err() {
                tracing::error!(task = name, "background task panicked");
            }
        }
        self.tasks.close();
        if tokio::time::timeout(self.shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "refreshes still running after the shutdown grace period; abandoning them"
            );
        }
        self.store.close().await;
        tracing::info!("keyrelay stopped");
        served
    }
}

/// Runs `server` until it finishes; once `shutdown` fires, gives it `grace` to drain.
async fn drain_within(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<(), StartupError> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(StartupError::from),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.map_err(StartupError::from),
        Err(_) => {
            tracing::warn!(grace = ?grace, "calls still in flight after the shutdown grace period; closing them");
            Ok(())
        }
    }
}

/// rustls finds both ring and aws-lc-rs users in some builds; keyrelay uses ring everywhere.
fn install_crypto_provider() {
    // An error means a provider is already installed (another server in the same process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn admin_token(config: &ServeConfig) -> Result<AdminToken, StartupError> {
    if let Some(token) = config.admin_token.as_deref().and_then(AdminToken::new) {
        return Ok(token);
    }
    let path = AdminToken::path_in(&config.data_dir);
    let (token, generated) = AdminToken::load_or_generate(&config.data_dir).map_err(|source| {
        StartupError::AdminToken {
            path: path.display().to_string(),
            source,
        }
    })?;
    if generated {
        tracing::info!(path = %path.display(), "generated an admin token; the CLI reads it from there");
    } else {
        tracing::info!(path = %path.display(), "using the admin token kept in the data directory");
    }
    Ok(token)
}
