//! A provider record as seen at one instant, with the policy in force: what Resolve,
//! WatchKeys, the mirror and the admin API judge staleness and state by.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::record::ProviderRecord;
use crate::domain::{Kid, Policy};

/// A record as seen at one instant, with the policy in force.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The record.
    pub record: Arc<ProviderRecord>,
    /// The effective policy.
    pub policy: Policy,
    /// When the snapshot was taken; staleness and state are judged at this instant.
    pub at: DateTime<Utc>,
}

impl Snapshot {
    /// Whether the held keys include `kid`.
    pub fn has_kid(&self, kid: &Kid) -> bool {
        self.record
            .keys
            .as_ref()
            .is_some_and(|keys| keys.document.contains_kid(kid.as_str()))
    }

    /// Whether the identity provider's last fetched set holds `kid`, revoked or not.
    pub fn provider_publishes(&self, kid: &Kid) -> bool {
        self.record
            .keys
            .as_ref()
            .is_some_and(|keys| keys.fetched.contains_kid(kid.as_str()))
    }

    /// The version of the held keys; 0 without keys.
    pub fn version(&self) -> u64 {
        self.record.keys.as_ref().map_or(0, |keys| keys.version)
    }
}
