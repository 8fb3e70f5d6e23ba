//! This replica's shards as metrics, read at scrape time: `keyrelay_shards`,
//! `keyrelay_shards_owned` and `keyrelay_shard_acquisitions_total`.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use super::Ownership;
use crate::observability::metrics::encode_gauge;

/// Reads this replica's shards when scraped.
#[derive(Debug)]
pub struct OwnershipCollector(pub Arc<Ownership>);

impl Collector for OwnershipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ownership = &self.0;
        encode_gauge(
            &mut encoder,
            "shards",
            "The fleet's scheduling shards (1 on a single node)",
            None,
            i64::from(ownership.shard_map().count()),
        )?;
        encode_gauge(
            &mut encoder,
            "shards_owned",
            "The shards this replica refreshes now",
            None,
            i64::try_from(ownership.owned_count()).unwrap_or(i64::MAX),
        )?;
        let acquired = ConstCounter::new(ownership.acquired_total());
        acquired.encode(encoder.encode_descriptor(
            "shard_acquisitions",
            "Shard leases this replica has taken since it started",
            None,
            MetricType::Counter,
        )?)
    }
}
