//! TLS on the gRPC listener, which also carries the JWKS mirror: the certificate from PEM
//! files, client certificates required and verified against a CA bundle when one is given
//! (mutual TLS), and reloads that never drop open connections. TLS towards identity providers
//! is `upstream_tls`; the metrics and health listener stays plain HTTP.

mod accept;
mod load;
mod reload;

use std::{sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use accept::TlsIncoming;
pub use load::{TlsError, TlsFiles};
pub use reload::ReloadHandle;

use crate::observability::metrics::Metrics;
use accept::{Acceptor, HandshakeLimits};
use reload::Reloader;

/// How the listener's TLS is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate, key and optional client CA bundle.
    pub files: TlsFiles,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// A bound listener that speaks TLS, its configuration loaded and kept current.
pub struct TlsListener {
    listener: TcpListener,
    reloader: Reloader,
    configs: watch::Receiver<Arc<ServerConfig>>,
}

impl TlsListener {
    /// Loads the configuration for `listener`; reload outcomes are counted in `metrics`.
    pub async fn new(
        listener: TcpListener,
        settings: TlsSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsError> {
        let (reloader, configs) =
            Reloader::load(settings.files, settings.reload_interval, metrics).await?;
        Ok(Self {
            listener,
            reloader,
            configs,
        })
    }

    /// Triggers reloads the way SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reloader.handle()
    }

    /// Starts accepting and reloading until `shutdown`: the established connections, and the
    /// tasks to await.
    pub fn start(
        self,
        shutdown: &CancellationToken,
    ) -> (TlsIncoming, Vec<(&'static str, JoinHandle<()>)>) {
        let (acceptor, incoming) =
            Acceptor::new(self.listener, self.configs, HandshakeLimits::default());
        let tasks = vec![
            (
                "TLS acceptor",
                tokio::spawn(acceptor.run(shutdown.child_token())),
            ),
            (
                "TLS reloader",
                tokio::spawn(self.reloader.run(shutdown.child_token())),
            ),
        ];
        (incoming, tasks)
    }
}
