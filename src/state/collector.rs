//! Provider state as metrics, read from the cache at scrape time: providers by state, the
//! time until each provider's keys stop being served and the failed refreshes in a row (for
//! the providers closest to trouble only, so the series stay bounded), and the smallest time
//! until unusable.

use std::{cmp::Reverse, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
    registry::Unit,
};

use super::{cache::KeyCache, record::ProviderState};
use crate::{
    clock::Clock,
    domain::{Policy, ProviderKey},
    observability::metrics::encode_gauge,
};

/// Providers exported one series each in `keyrelay_provider_time_until_unusable_seconds`: the
/// ones closest to running out of usable keys. The totals by state cover all providers.
pub const MAX_PROVIDER_SERIES: usize = 100;

/// Reads the cache when scraped.
pub struct ProvidersCollector {
    /// The providers.
    pub cache: Arc<KeyCache>,
    /// Time the states are judged at.
    pub clock: Arc<dyn Clock>,
    /// Server-wide policy defaults (for `max_stale`).
    pub defaults: Policy,
}

impl std::fmt::Debug for ProvidersCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProvidersCollector")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    tenant: String,
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl Collector for ProvidersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.clock.now();
        let records = self.cache.all();
        let mut by_state = [
            ("pending", 0i64),
            ("ready", 0),
            ("stale", 0),
            ("failing", 0),
        ];
        let mut remaining = Vec::new();
        let mut failing = Vec::new();
        for record in &records {
            let index = match record.state(now) {
                ProviderState::Pending => 0,
                ProviderState::Ready => 1,
                ProviderState::Stale => 2,
                ProviderState::Failing => 3,
            };
            by_state[index].1 += 1;
            let failures = record.status.consecutive_failures;
            if failures > 0 {
                failing.push((Reverse(i64::from(failures)), &record.registration.key));
            }
            if let Some(keys) = &record.keys {
                let until = keys.usable_until(&record.policy(&self.defaults));
                remaining.push(((until - now).num_seconds(), &record.registration.key));
            }
        }
        remaining.sort();
        failing.sort();
        encode_states(&mut encoder, by_state)?;
        encode_per_provider(
            &mut encoder,
            "provider_time_until_unusable",
            "Time until a provider's last good keys stop being served (fresh_until + max_stale), for the 100 providers closest to it",
            Some(&Unit::Seconds),
            remaining.iter().map(|(seconds, key)| (*seconds, *key)),
        )?;
        encode_per_provider(
            &mut encoder,
            "provider_consecutive_failures",
            "Failed refreshes in a row, for the 100 providers failing longest (absent: none is failing)",
            None,
            failing
                .iter()
                .map(|(Reverse(failures), key)| (*failures, *key)),
        )?;
        let minimum = remaining.first().map_or(0, |(seconds, _)| *seconds);
        encode_gauge(
            &mut encoder,
            "min_time_until_unusable",
            "Smallest time until unusable over all providers with keys (0 when there are none): alert on this",
            Some(&Unit::Seconds),
            minimum,
        )
    }
}

fn encode_states(
    encoder: &mut DescriptorEncoder,
    by_state: [(&'static str, i64); 4],
) -> Result<(), std::fmt::Error> {
    let mut states =
        encoder.encode_descriptor("providers", "Providers by state", None, MetricType::Gauge)?;
    for (state, count) in by_state {
        ConstGauge::new(count).encode(states.encode_family(&StateLabels { state })?)?;
    }
    Ok(())
}

/// One series per provider, for the first `MAX_PROVIDER_SERIES` of `series`.
fn encode_per_provider<'k>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl Iterator<Item = (i64, &'k ProviderKey)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (value, key) in series.take(MAX_PROVIDER_SERIES) {
        let labels = ProviderLabels {
            tenant: key.tenant().as_str().to_owned(),
            provider: key.provider().as_str().to_owned(),
        };
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
