//! The fleet role as metrics: `keyrelay_leader` and `keyrelay_lease_term`, read at scrape
//! time.

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Leadership, Role};
use crate::observability::metrics::encode_gauge;

/// Reads this replica's role when scraped.
#[derive(Debug)]
pub struct LeadershipCollector(pub Leadership);

impl Collector for LeadershipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (leader, term) = match self.0.role() {
            Role::Leader(fence) => (1, fence.map_or(0, |f| f.term)),
            Role::Follower => (0, 0),
        };
        encode_gauge(
            &mut encoder,
            "leader",
            "1 while this replica leads the refresh work",
            None,
            leader,
        )?;
        encode_gauge(
            &mut encoder,
            "lease_term",
            "The lease term this replica leads under (0 when following or single-node)",
            None,
            term,
        )
    }
}
