//! Keeping the listener's TLS configuration current: reloaded on SIGHUP, when the files'
//! contents change (checked every `--tls-reload-interval`), or when asked through a
//! [`ReloadHandle`]. A new configuration reaches new connections only; connections and
//! streams already open keep the one they were accepted with. A reload that fails keeps the
//! previous configuration, logs why and counts an error.

use std::{sync::Arc, time::Duration};

use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Mutex, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use super::load::{Fingerprint, TlsError, TlsFiles, TlsPem};
use crate::observability::metrics::Metrics;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP.
    Signal,
    /// The periodic check found the files changed.
    FileChange,
    /// A [`ReloadHandle`].
    Request,
}

struct Shared {
    files: TlsFiles,
    current: watch::Sender<Arc<ServerConfig>>,
    /// What the last attempt read: unchanged files are not reloaded, nor is a broken file
    /// reported, twice.
    seen: Mutex<Fingerprint>,
    metrics: Arc<Metrics>,
}

/// Reloads the listener's TLS files on request, the way SIGHUP does.
#[derive(Clone)]
pub struct ReloadHandle(Arc<Shared>);

impl ReloadHandle {
    /// Reloads now. `Ok` once new connections get the new configuration; on error they keep
    /// the previous one.
    pub async fn reload(&self) -> Result<(), TlsError> {
        self.0.reload(Trigger::Request).await
    }

    /// The configuration new connections get; it changes with every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.0.current.subscribe()
    }
}

/// The task that reloads on SIGHUP and when the files change.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    interval: Duration,
    hangups: Option<Signal>,
}

impl Reloader {
    /// Loads the files once and starts listening for SIGHUP (from then on it no longer ends
    /// the process); the configuration, and every later one, comes out of the returned
    /// receiver.
    pub(crate) async fn load(
        files: TlsFiles,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, watch::Receiver<Arc<ServerConfig>>), TlsError> {
        let pem = TlsPem::read(&files).await?;
        let (current, configs) = watch::channel(Arc::new(pem.server_config()?));
        let shared = Arc::new(Shared {
            files,
            current,
            seen: Mutex::new(pem.fingerprint()),
            metrics,
        });
        let reloader = Self {
            shared,
            interval,
            hangups: hangups(),
        };
        Ok((reloader, configs))
    }

    pub(crate) fn handle(&self) -> ReloadHandle {
        ReloadHandle(Arc::clone(&self.shared))
    }

    /// Reloads on SIGHUP and checks the files every interval, until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut checks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Outcomes are logged and counted by `reload` itself.
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = next_hangup(&mut self.hangups) => {
                    let _ = self.shared.reload(Trigger::Signal).await;
                }
                _ = checks.tick() => {
                    let _ = self.shared.reload(Trigger::FileChange).await;
                }
            }
        }
    }
}

impl Shared {
    /// Reads the files and installs the configuration built from them, unless this is a file
    /// check and nothing changed since the last attempt.
    async fn reload(&self, trigger: Trigger) -> Result<(), TlsError> {
        let mut seen = self.seen.lock().await;
        let read = TlsPem::read(&self.files).await;
        let fingerprint = fingerprint_of(&read);
        if trigger == Trigger::FileChange && *seen == fingerprint {
            return Ok(());
        }
        *seen = fingerprint;
        self.install(read.and_then(|pem| pem.server_config()), trigger)
    }

    fn install(
        &self,
        built: Result<ServerConfig, TlsError>,
        trigger: Trigger,
    ) -> Result<(), TlsError> {
        self.metrics.tls_reloaded(built.is_ok());
        match built {
            Ok(config) => {
                self.current.send_replace(Arc::new(config));
                tracing::info!(?trigger, cert = %self.files.cert.display(), "TLS configuration reloaded; new connections use it");
                Ok(())
            }
            Err(err) => {
                tracing::error!(?trigger, error = %err, "TLS reload failed; new connections keep the previous configuration");
                Err(err)
            }
        }
    }
}

/// Unreadable files are remembered by the error's message, so a lasting error is reported
/// once, and again when it changes.
fn fingerprint_of(read: &Result<TlsPem, TlsError>) -> Fingerprint {
    match read {
        Ok(pem) => pem.fingerprint(),
        Err(err) => Sha256::digest(err.to_string()).into(),
    }
}

fn hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; TLS files are still reloaded when they change");
            None
        }
    }
}

async fn next_hangup(hangups: &mut Option<Signal>) -> Option<()> {
    match hangups {
        Some(hangups) => hangups.recv().await,
        None => std::future::pending().await,
    }
}
