//! Stored rows keyrelay could not read: each is logged at error level naming its provider
//! (or token, or tenant), and counted by the part that was unreadable, for
//! `keyrelay_store_unreadable_rows_total`.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

/// The part of a `providers` row that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowPart {
    /// Names, URL or policy: the row is left out (neither served nor fetched).
    Registration,
    /// The key set or its refresh state: the provider is quarantined and fetched again.
    KeySet,
    /// The HTTP cache validators: dropped, and the provider fetched again.
    Validators,
    /// The list of keys left out of the set: shown empty until the next fetch.
    SkippedKeys,
    /// What discovery learnt of an issuer: dropped, and the issuer discovered again.
    Discovery,
    /// An access token: refused until revoked or repaired.
    AccessToken,
    /// A tenant's access settings whose tenant is no tenant name: ignored.
    TenantAccess,
}

impl RowPart {
    /// Every part, in the order of `UnreadableRows::counts`.
    pub const ALL: [RowPart; 7] = [
        RowPart::Registration,
        RowPart::KeySet,
        RowPart::Validators,
        RowPart::SkippedKeys,
        RowPart::Discovery,
        RowPart::AccessToken,
        RowPart::TenantAccess,
    ];

    /// The metric's `part` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RowPart::Registration => "registration",
            RowPart::KeySet => "key_set",
            RowPart::Validators => "validators",
            RowPart::SkippedKeys => "skipped_keys",
            RowPart::Discovery => "discovery",
            RowPart::AccessToken => "access_token",
            RowPart::TenantAccess => "tenant_access",
        }
    }

    /// What keyrelay does about it, for the log line.
    fn consequence(self) -> &'static str {
        match self {
            RowPart::Registration => {
                "the provider is left out until it is registered again or unregistered"
            }
            RowPart::KeySet => "the provider is quarantined: no keys served, fetched again at once",
            RowPart::Validators => "the cache validators are dropped and the keys fetched again",
            RowPart::SkippedKeys => "the list of skipped keys is shown empty until the next fetch",
            RowPart::Discovery => "the discovery state is dropped and the issuer discovered again",
            RowPart::AccessToken => "the token is refused until it is revoked or the row repaired",
            RowPart::TenantAccess => "the row names no tenant and is ignored",
        }
    }
}

/// How many unreadable rows were met, by part. Every read counts: a row still unreadable at
/// the next resynchronisation counts again.
#[derive(Debug, Default)]
pub struct UnreadableRows {
    counts: [AtomicU64; RowPart::ALL.len()],
}

impl UnreadableRows {
    /// Logs and counts one unreadable row of provider `key` (`tenant/provider` as stored).
    pub fn report(&self, key: &str, part: RowPart, reason: &str) {
        self.counts[part as usize].fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            provider = key,
            part = part.as_str(),
            error = reason,
            "stored row is unreadable; {}",
            part.consequence()
        );
    }

    /// The counts so far, by part.
    pub fn counts(&self) -> [(RowPart, u64); RowPart::ALL.len()] {
        RowPart::ALL.map(|part| (part, self.counts[part as usize].load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

/// `keyrelay_store_unreadable_rows_total`, read when scraped.
#[derive(Debug)]
pub struct UnreadableRowsCollector(pub Arc<UnreadableRows>);

impl Collector for UnreadableRowsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows = encoder.encode_descriptor(
            "store_unreadable_rows",
            "Stored rows found unreadable when read, by part: registration (row left out), key_set (provider quarantined and fetched again), validators, skipped_keys, access_token (token refused), tenant_access",
            None,
            MetricType::Counter,
        )?;
        for (part, count) in self.0.counts() {
            let labels = PartLabels {
                part: part.as_str(),
            };
            ConstCounter::new(count).encode(rows.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_report_counts_under_its_part() {
        let unreadable = UnreadableRows::default();
        unreadable.report("acme/okta", RowPart::KeySet, "key set: not JSON");
        unreadable.report("acme/okta", RowPart::KeySet, "key set: not JSON");
        unreadable.report("acme/other", RowPart::Registration, "policy: not JSON");
        assert_eq!(
            unreadable.counts(),
            [
                (RowPart::Registration, 1),
                (RowPart::KeySet, 2),
                (RowPart::Validators, 0),
                (RowPart::SkippedKeys, 0),
                (RowPart::Discovery, 0),
                (RowPart::AccessToken, 0),
                (RowPart::TenantAccess, 0)
            ]
        );
    }
}
