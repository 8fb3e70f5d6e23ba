//! The gRPC listener (plain TCP or TLS) and what it serves: health, reflection, KeyService
//! and AdminService behind their interceptors, and the JWKS mirror on the same port; served
//! until shutdown, then drained within the grace period.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{
    StartupError,
    tasks::Tasks,
    tls::{ReloadHandle, TlsListener, TlsSettings},
};
use crate::{
    api::{
        AdminApi, Authenticator, KeyApi, ObserveLayer,
        auth_failures::AuthFailures,
        grpc::{admin_service_server::AdminServiceServer, key_service_server::KeyServiceServer},
        mirror::{self, Mirror},
        watch::WatchHub,
    },
    clock::Clock,
    cluster::Cluster,
    core::{access::AccessControl, providers::Providers},
    domain::EgressRules,
    observability::metrics::Metrics,
    proto::FILE_DESCRIPTOR_SET,
};

/// Dead peers are detected by HTTP/2 pings this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...each answered within this long.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent calls on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest request message accepted (a WatchKeys request with every bound used fits).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The services whose health is reported ("" is the server as a whole).
const SERVICES: [&str; 3] = ["", "keyrelay.v1.KeyService", "keyrelay.v1.AdminService"];

/// The gRPC listener: plain TCP, or TLS.
pub(super) enum Listener {
    Plain(TcpIncoming),
    Tls(TlsListener),
}

impl Listener {
    /// Wraps a bound socket, with TLS when configured (reading the TLS files now, so bad
    /// ones fail the start).
    pub async fn new(
        tcp: TcpListener,
        tls: Option<TlsSettings>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StartupError> {
        Ok(match tls {
            Some(settings) => {
                Self::Tls(TlsListener::new(tcp, settings, Arc::clone(metrics)).await?)
            }
            None => Self::Plain(TcpIncoming::from(tcp).with_nodelay(Some(true))),
        })
    }

    /// Reloads the TLS files the way SIGHUP does; none without TLS.
    pub fn reload_handle(&self) -> Option<ReloadHandle> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(tls) => Some(tls.reload_handle()),
        }
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

/// What the gRPC services are built from.
pub(super) struct Handlers {
    pub providers: Arc<Providers>,
    pub cluster: Arc<Cluster>,
    pub egress: EgressRules,
    pub access: Arc<AccessControl>,
    pub auth_failures: Arc<AuthFailures>,
    pub mirror: Mirror,
    pub watch: Arc<WatchHub>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

impl Handlers {
    /// Every route of the gRPC listener.
    fn routes(self) -> Result<(Routes, HealthReporter), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // grpcurl asks v1; Postman, grpcui, Evans and Python's grpcio-reflection v1alpha.
        let (reflection_v1, reflection_v1alpha) =
            (reflection().build_v1()?, reflection().build_v1alpha()?);
        let registry = Arc::clone(self.access.registry());
        let authenticator = Authenticator::new(
            Arc::clone(&registry),
            Arc::clone(&self.clock),
            self.auth_failures,
        );
        let keys = KeyApi::new(
            Arc::clone(&self.providers),
            self.watch,
            registry,
            self.clock,
        );
        let admin = AdminApi::new(self.providers, self.cluster, self.egress, self.access);
        let grpc = Routes::default()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                KeyServiceServer::new(keys).max_decoding_message_size(MAX_REQUEST_BYTES),
                authenticator.verifier(),
            ))
            .add_service(InterceptedService::new(
                AdminServiceServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES),
                authenticator.admin(),
            ));
        // The JWKS mirror answers plain HTTP/1.1 and HTTP/2 GETs on the same port.
        let routes = Routes::from(grpc.into_axum_router().merge(mirror::router(self.mirror)));
        Ok((routes, health))
    }
}

/// Where the server listens: gRPC (with the mirror) and plain HTTP.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addresses {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Serves `handlers` on `listener` until `shutdown`, then drains within `grace`. TLS
/// listener tasks join `tasks`.
pub(super) async fn serve(
    listener: Listener,
    addresses: Addresses,
    handlers: Handlers,
    shutdown: &CancellationToken,
    grace: Duration,
    tasks: &mut Tasks,
) -> Result<(), StartupError> {
    let observe = ObserveLayer::new(Arc::clone(&handlers.metrics), addresses.grpc);
    let (routes, health) = handlers.routes()?;
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    tracing::info!(addr = %addresses.grpc, http = %addresses.http, "keyrelay serving");
    let stop_signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: draining in-flight calls");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
    };
    let server = Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .layer(observe)
        .add_routes(routes);
    match listener {
        Listener::Plain(incoming) => {
            let server = server.serve_with_incoming_shutdown(incoming, stop_signal);
            drain_within(server, shutdown, grace).await
        }
        Listener::Tls(tls) => {
            let (incoming, tls_tasks) = tls.start(shutdown);
            tasks.extend(tls_tasks);
            let server = server.serve_with_incoming_shutdown(incoming, stop_signal);
            drain_within(server, shutdown, grace).await
        }
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
