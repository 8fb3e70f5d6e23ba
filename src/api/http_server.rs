//! The plain-HTTP side of the server, for tools and people that do not speak gRPC:
//! `/metrics` (Prometheus), `/healthz` (the process is alive), `/readyz` (the store answers
//! and the key sets are loaded, which they are before this listener serves), and the routes
//! given to it: the status page, and the JWKS mirror when the gRPC listener has no TLS.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{observability::metrics::Metrics, store::Store};

/// How long `/readyz` waits for the store.
const READY_DEADLINE: Duration = Duration::from_secs(2);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
}

/// The HTTP listener and what it serves.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
}

impl HttpServer {
    /// Serves on `listener`: metrics and health, plus `routes`.
    pub fn new(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
        routes: Router,
    ) -> Self {
        let router = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(Shared { metrics, store })
            .merge(routes);
        Self { listener, router }
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let service = self
            .router
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP listener failed");
        }
    }
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    match shared.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(shared): State<Shared>) -> Response {
    match tokio::time::timeout(READY_DEADLINE, shared.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable: {err}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer within 2s\n",
        )
            .into_response(),
    }
}
