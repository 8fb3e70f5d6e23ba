//! Prometheus metrics, in the `keyrelay_` namespace with units in their names: the
//! instruments the service updates as it works, and the registry the subsystems' own
//! collectors (fleet role, provider states, unreadable rows) join, read at scrape time.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::ConstGauge,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Labels of RPC metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Service/Method`.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    service: &'static str,
    reason: &'static str,
}

/// How a Resolve was answered from the cache.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    /// Fresh keys, the requested kid (if any) among them.
    Hit,
    /// Keys past their freshness, still served.
    Stale,
    /// The kid was missing (a refresh may have followed), or no usable keys.
    Miss,
}

/// The label values of the families keyrelay's subsystems define, so that each series exists
/// from the start at zero: an alert on `increase(...)` then sees the first event too.
#[derive(Debug, Default)]
pub struct KnownLabels {
    /// `keyrelay_refreshes_total{outcome}`.
    pub refresh_outcomes: Vec<&'static str>,
    /// `keyrelay_discoveries_total{outcome}`.
    pub discovery_outcomes: Vec<&'static str>,
    /// `keyrelay_key_set_rejections_total{reason}`.
    pub rejection_reasons: Vec<&'static str>,
    /// `keyrelay_keys_skipped_total{reason}`.
    pub skip_reasons: Vec<&'static str>,
    /// `keyrelay_auth_failures_total{service, reason}`.
    pub auth_failures: Vec<(&'static str, &'static str)>,
}

/// Every instrument keyrelay updates.
#[derive(Debug)]
pub struct Metrics {
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<RpcLabels, Histogram>,
    resolve_cache: Family<ResultLabels, Counter>,
    refreshes: Family<OutcomeLabels, Counter>,
    discoveries: Family<OutcomeLabels, Counter>,
    fetch_duration: Histogram,
    fetched_bytes: Counter,
    key_set_changes: Counter,
    key_set_rejections: Family<ReasonLabels, Counter>,
    keys_skipped: Family<ReasonLabels, Counter>,
    watch_subscribers: Gauge,
    watch_events: Counter,
    watch_resyncs: Counter,
    tls_reloads: Family<OutcomeLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    registry: Registry,
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// The instruments, plus `collectors` that read the service's state at scrape time
    /// (each subsystem provides its own).
    pub fn new(collectors: Vec<Box<dyn Collector>>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("keyrelay");
        let metrics = Self {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(seconds_buckets),
            resolve_cache: Family::default(),
            refreshes: Family::default(),
            discoveries: Family::default(),
            fetch_duration: seconds_buckets(),
            fetched_bytes: Counter::default(),
            key_set_changes: Counter::default(),
            key_set_rejections: Family::default(),
            keys_skipped: Family::default(),
            watch_subscribers: Gauge::default(),
            watch_events: Counter::default(),
            watch_resyncs: Counter::default(),
            tls_reloads: Family::default(),
            auth_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rpc_requests",
            "gRPC calls finished, by method and status code",
            metrics.rpc_requests.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "gRPC call duration (for streams, the stream's life), by method and status code",
            Unit::Seconds,
            metrics.rpc_duration.clone(),
        );
        registry.register(
            "resolve_cache",
            "Resolve answers by cache result: hit, stale (served past freshness) or miss",
            metrics.resolve_cache.clone(),
        );
        registry.register(
            "refreshes",
            "Refreshes by outcome: modified (200), not_modified (304), rejected (bad document) or the fetch error kind",
            metrics.refreshes.clone(),
        );
        registry.register(
            "discoveries",
            "Discoveries of issuers' metadata by outcome: confirmed, jwks_uri_changed, or the fetch or metadata error kind",
            metrics.discoveries.clone(),
        );
        registry.register_with_unit(
            "fetch_duration",
            "Upstream JWKS fetch duration",
            Unit::Seconds,
            metrics.fetch_duration.clone(),
        );
        registry.register_with_unit(
            "fetched",
            "Upstream JWKS response body bytes",
            Unit::Bytes,
            metrics.fetched_bytes.clone(),
        );
        registry.register(
            "key_set_changes",
            "New key set versions",
            metrics.key_set_changes.clone(),
        );
        registry.register(
            "key_set_rejections",
            "Documents refused by the key-set guardrails, by reason (see the README)",
            metrics.key_set_rejections.clone(),
        );
        registry.register(
            "keys_skipped",
            "Keys left out of fetched documents (unknown type, curve or algorithm, or malformed), by reason; counted per fetched document",
            metrics.keys_skipped.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Open WatchKeys streams",
            metrics.watch_subscribers.clone(),
        );
        registry.register(
            "watch_events",
            "WatchKeys events sent",
            metrics.watch_events.clone(),
        );
        registry.register(
            "watch_resyncs",
            "WatchKeys streams that fell behind the change feed and skipped to the latest state",
            metrics.watch_resyncs.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the listener's TLS certificate, key and client CA: ok, or error (the previous configuration stays)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications by service (admin, key, mirror) and reason (missing, malformed, rejected, verifier_token, rate_limited)",
            metrics.auth_failures.clone(),
        );
        for collector in collectors {
            registry.register_collector(collector);
        }
        for result in ["hit", "stale", "miss"] {
            drop(
                metrics
                    .resolve_cache
                    .get_or_create(&ResultLabels { result }),
            );
        }
        for outcome in ["ok", "error"] {
            drop(
                metrics
                    .tls_reloads
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        Arc::new(Self {
            registry,
            ..metrics
        })
    }

    /// Creates the series of `known` at zero.
    pub fn start_at_zero(&self, known: &KnownLabels) {
        for &outcome in &known.refresh_outcomes {
            drop(self.refreshes.get_or_create(&OutcomeLabels { outcome }));
        }
        for &outcome in &known.discovery_outcomes {
            drop(self.discoveries.get_or_create(&OutcomeLabels { outcome }));
        }
        for &reason in &known.rejection_reasons {
            drop(
                self.key_set_rejections
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        for &reason in &known.skip_reasons {
            drop(self.keys_skipped.get_or_create(&ReasonLabels { reason }));
        }
        for &(service, reason) in &known.auth_failures {
            drop(
                self.auth_failures
                    .get_or_create(&AuthLabels { service, reason }),
            );
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// A gRPC call finished.
    pub fn rpc_finished(&self, labels: &RpcLabels, duration: Duration) {
        self.rpc_requests.get_or_create(labels).inc();
        self.rpc_duration
            .get_or_create(labels)
            .observe(duration.as_secs_f64());
    }

    /// A Resolve was answered.
    pub fn resolved(&self, result: CacheResult) {
        let result = match result {
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
        };
        self.resolve_cache
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A fetch ended with `outcome` after `duration`, having read `bytes`.
    pub fn fetched(&self, outcome: &'static str, duration: Duration, bytes: usize) {
        self.refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.fetch_duration.observe(duration.as_secs_f64());
        self.fetched_bytes
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// A discovery of an issuer's metadata ended with `outcome`.
    pub fn discovered(&self, outcome: &'static str) {
        self.discoveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A new key set version was stored.
    pub fn key_set_changed(&self) {
        self.key_set_changes.inc();
    }

    /// A fetched document was refused for `reason` (a `JwksError` kind).
    pub fn key_set_rejected(&self, reason: &'static str) {
        self.key_set_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A fetched document was published without one of its keys, for `reason`.
    pub fn key_skipped(&self, reason: &'static str) {
        self.keys_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A WatchKeys stream opened; the guard counts it closed when dropped.
    pub fn watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.watch_subscribers.inc();
        WatchGuard(Arc::clone(self))
    }

    /// A WatchKeys event was sent.
    pub fn watch_event_sent(&self) {
        self.watch_events.inc();
    }

    /// A WatchKeys stream fell behind the change feed.
    pub fn watch_resynced(&self) {
        self.watch_resyncs.inc();
    }

    /// A caller failed to authenticate on `service` for `reason`.
    pub fn auth_failed(&self, service: &'static str, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { service, reason })
            .inc();
    }

    /// The listener's TLS files were reloaded, or failed to.
    pub fn tls_reloaded(&self, succeeded: bool) {
        let outcome = if succeeded { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Counts one open WatchKeys stream while alive.
#[derive(Debug)]
pub struct WatchGuard(Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watch_subscribers.dec();
    }
}

/// Writes one gauge sample `name` (without the `keyrelay_` prefix) for a collector.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}
