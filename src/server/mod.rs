//! Building and running the server: check the configuration, bind the listeners, open the
//! store and load every key set into memory, build the services, join the fleet; then serve
//! gRPC and HTTP and run the background tasks until one shutdown signal, draining calls and
//! refreshes in flight, and releasing the shard leases, before closing the store.

pub mod config;
mod error;
mod fleet;
mod grpc;
mod services;
mod storage;
mod tasks;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::StartupError;

use crate::{
    api::{
        auth_failures::{REASONS, Service},
        http_server::HttpServer,
        mirror,
        status_page::{self, StatusPage},
        watch::WatchHub,
    },
    clock::Clock,
    cluster::{Cluster, OwnershipCollector},
    domain::{
        EgressRules, Policy,
        key_set::{JwksError, SkipReason},
    },
    observability::metrics::{KnownLabels, Metrics},
    refresh,
    server::{
        config::ServeConfig,
        fleet::{Fleet, FleetTasks, Followed},
        grpc::{Addresses, Handlers, Listener},
        services::{Foundation, Services},
        storage::Storage,
        tasks::Tasks,
        tls::ReloadHandle,
    },
    state::collector::ProvidersCollector,
    store::UnreadableRowsCollector,
};

/// A server ready to run: store loaded, listeners bound, fleet joined.
pub struct Application {
    listener: Listener,
    addresses: Addresses,
    http: HttpServer,
    storage: Storage,
    fleet: Option<FleetTasks>,
    services: Services,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    defaults: Policy,
    egress: EgressRules,
    shutdown_grace: Duration,
}

impl Application {
    /// Binds the listeners, opens the store, loads every provider into memory, builds the
    /// services and joins the fleet.
    pub async fn build(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        install_crypto_provider();
        let defaults = config.policy.defaults()?;
        let lease = config.fleet.lease_settings()?;
        let tls = config.listener.tls()?;
        let (tcp, grpc_addr) = bind(config.listener.listen).await?;
        let storage = Storage::open(&config.store, &config.access).await?;
        let fleet = Fleet::new(
            storage.postgres.clone(),
            &config.fleet,
            lease,
            grpc_addr.to_string(),
            clock.now(),
        )
        .await?;
        let metrics = Metrics::new(vec![
            Box::new(OwnershipCollector(Arc::clone(fleet.cluster.ownership()))),
            Box::new(ProvidersCollector {
                cache: Arc::clone(&storage.cache),
                clock: Arc::clone(&clock),
                defaults,
            }),
            Box::new(UnreadableRowsCollector(Arc::clone(&storage.unreadable))),
        ]);
        metrics.start_at_zero(&known_labels());
        // Before taking part in the fleet, so bad TLS files fail the start cleanly.
        let listener = Listener::new(tcp, tls, &metrics).await?;
        let (http_listener, http_addr) = bind(config.listener.http_listen).await?;
        let cluster = Arc::clone(&fleet.cluster);
        let services = Services::build(
            &config,
            Foundation {
                storage: &storage,
                cluster: &cluster,
                metrics: &metrics,
                clock: &clock,
                defaults,
            },
        )?;
        // With TLS on, keys are served over TLS only (and to clients with a certificate, when
        // one is required): the plain HTTP listener keeps metrics and health.
        let http_mirror = match listener.is_tls() {
            false => mirror::router(services.mirror.clone()),
            true => axum::Router::new(),
        };
        let status_page = status_page::router(StatusPage {
            providers: Arc::clone(&services.providers),
            cluster: Arc::clone(&cluster),
            access: Arc::clone(&storage.access),
            clock: Arc::clone(&clock),
            failures: Arc::clone(&services.auth_failures),
        });
        let http = HttpServer::new(
            http_listener,
            Arc::clone(&metrics),
            Arc::clone(&storage.store),
            http_mirror.merge(status_page),
        );
        let fleet = fleet
            .join(Followed {
                store: Arc::clone(&storage.store),
                cache: Arc::clone(&storage.cache),
                access: Arc::clone(&storage.access),
                refresher: Arc::clone(&services.refresher),
            })
            .await?;
        Ok(Self {
            listener,
            addresses: Addresses {
                grpc: grpc_addr,
                http: http_addr,
            },
            http,
            storage,
            fleet,
            services,
            cluster,
            metrics,
            clock,
            defaults,
            egress: config.upstream.egress(),
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The address the gRPC listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addresses.grpc
    }

    /// Reloads the listener's TLS files the way SIGHUP does; none without TLS.
    pub fn tls_reload_handle(&self) -> Option<ReloadHandle> {
        self.listener.reload_handle()
    }

    /// The address the HTTP listener (metrics, health) is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.addresses.http
    }

    /// Serves until `shutdown` is cancelled, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let Self {
            listener,
            addresses,
            http,
            storage,
            fleet,
            services,
            cluster,
            metrics,
            clock,
            defaults,
            egress,
            shutdown_grace,
        } = self;
        let mut tasks = Tasks::default();
        if let Some(fleet) = fleet {
            fleet.spawn(&mut tasks, &shutdown);
        }
        tasks.spawn("scheduler", services.scheduler.run(shutdown.child_token()));
        let staleness = services.staleness.run(shutdown.child_token());
        tasks.spawn("staleness timer", staleness);
        tasks.spawn("HTTP listener", http.run(shutdown.child_token()));
        let watch = WatchHub::new(
            Arc::clone(&storage.cache),
            Arc::clone(&clock),
            defaults,
            Arc::clone(&metrics),
            shutdown.child_token(),
        );
        let handlers = Handlers {
            providers: services.providers,
            cluster,
            egress,
            access: services.access,
            auth_failures: services.auth_failures,
            mirror: services.mirror,
            watch,
            clock,
            metrics,
        };
        let served = grpc::serve(
            listener,
            addresses,
            handlers,
            &shutdown,
            shutdown_grace,
            &mut tasks,
        )
        .await;
        tasks.join().await;
        drain_flights(&services.flights, shutdown_grace).await;
        storage.store.close().await;
        tracing::info!("keyrelay stopped");
        served
    }
}

/// Waits up to `grace` for refreshes in flight, which write results the store must keep.
async fn drain_flights(flights: &tokio_util::task::TaskTracker, grace: Duration) {
    flights.close();
    if tokio::time::timeout(grace, flights.wait()).await.is_err() {
        tracing::warn!("refreshes still running after the shutdown grace period; abandoning them");
    }
}

/// The label values of the metrics the subsystems define.
fn known_labels() -> KnownLabels {
    let services = Service::ALL.map(Service::as_str);
    KnownLabels {
        refresh_outcomes: refresh::flights::outcomes().collect(),
        discovery_outcomes: refresh::discovery::outcomes().collect(),
        rejection_reasons: JwksError::KINDS.to_vec(),
        skip_reasons: SkipReason::KINDS.to_vec(),
        auth_failures: services
            .into_iter()
            .flat_map(|service| REASONS.map(|reason| (service, reason)))
            .collect(),
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bind_error = |source| StartupError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// rustls finds both ring and aws-lc-rs users in some builds; keyrelay uses ring everywhere.
fn install_crypto_provider() {
    // An error means a provider is already installed (another server in the same process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}
