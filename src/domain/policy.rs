//! Refresh policies: the per-provider overrides given at registration and the effective
//! policy (overrides merged with the server defaults) that the refresher obeys.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{KeyPolicy, UpstreamTrust, ValidationError};

const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const MIN_RESPONSE_BYTES: u32 = 1024;
const MAX_RESPONSE_BYTES: u32 = 16 * 1024 * 1024;

/// Per-provider overrides; `None` means "use the server default". Stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOverrides {
    /// Lower bound of the freshness lifetime.
    pub min_ttl: Option<Duration>,
    /// Upper bound of the freshness lifetime.
    pub max_ttl: Option<Duration>,
    /// Freshness lifetime when the provider sends no cache headers.
    pub default_ttl: Option<Duration>,
    /// How long before the end of freshness the refresh starts.
    pub refresh_early: Option<Duration>,
    /// How long after the end of freshness the last good keys are still served.
    pub max_stale: Option<Duration>,
    /// Largest accepted response body.
    pub max_response_bytes: Option<u32>,
    /// Where the JWKS may come from (hosts, certificate pins); no server default.
    #[serde(default, flatten)]
    pub trust: UpstreamTrust,
    /// Which of the served keys are published; no server default.
    #[serde(default, flatten)]
    pub keys: KeyPolicy,
}

impl PolicyOverrides {
    /// The overrides behind a shared pointer: every registration without overrides (most
    /// of them) holds the same one, instead of a copy each.
    pub fn shared(self) -> Arc<Self> {
        static NONE: LazyLock<Arc<PolicyOverrides>> = LazyLock::new(Arc::default);
        if self == Self::default() {
            Arc::clone(&NONE)
        } else {
            Arc::new(self)
        }
    }
}

/// The policy in force for one provider: every knob set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lower bound of the freshness lifetime.
    pub min_ttl: Duration,
    /// Upper bound of the freshness lifetime.
    pub max_ttl: Duration,
    /// Freshness lifetime when the provider sends no cache headers.
    pub default_ttl: Duration,
    /// How long before the end of freshness the refresh starts.
    pub refresh_early: Duration,
    /// How long after the end of freshness the last good keys are still served.
    pub max_stale: Duration,
    /// Largest accepted response body.
    pub max_response_bytes: u32,
}

impl Policy {
    /// Merges `overrides` over these defaults and checks the result is coherent; errors name
    /// the `policy.*` field to fix.
    pub fn with_overrides(&self, overrides: &PolicyOverrides) -> Result<Policy, ValidationError> {
        let policy = self.merge(overrides);
        policy.validate()?;
        Ok(policy)
    }

    /// Merges `overrides` over these defaults without checking the result.
    pub fn merge(&self, overrides: &PolicyOverrides) -> Policy {
        Policy {
            min_ttl: overrides.min_ttl.unwrap_or(self.min_ttl),
            max_ttl: overrides.max_ttl.unwrap_or(self.max_ttl),
            default_ttl: overrides.default_ttl.unwrap_or(self.default_ttl),
            refresh_early: overrides.refresh_early.unwrap_or(self.refresh_early),
            max_stale: overrides.max_stale.unwrap_or(self.max_stale),
            max_response_bytes: overrides
                .max_response_bytes
                .unwrap_or(self.max_response_bytes),
        }
    }

    /// Checks the knobs against each other and against sane bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let durations = [
            ("policy.min_ttl", self.min_ttl),
            ("policy.max_ttl", self.max_ttl),
            ("policy.default_ttl", self.default_ttl),
            ("policy.refresh_early", self.refresh_early),
            ("policy.max_stale", self.max_stale),
        ];
        for (field, value) in durations {
            if value > MAX_DURATION {
                return Err(ValidationError::new(field, "must be at most 365 days"));
            }
        }
        if self.min_ttl < Duration::from_secs(1) {
            return Err(ValidationError::new(
                "policy.min_ttl",
                "must be at least 1s",
            ));
        }
        if self.max_ttl < self.min_ttl {
            return Err(ValidationError::new(
                "policy.max_ttl",
                format!(
                    "must not be below min_ttl ({})",
                    humantime::format_duration(self.min_ttl)
                ),
            ));
        }
        if !(self.min_ttl..=self.max_ttl).contains(&self.default_ttl) {
            return Err(ValidationError::new(
                "policy.default_ttl",
                "must lie between min_ttl and max_ttl",
            ));
        }
        if !(MIN_RESPONSE_BYTES..=MAX_RESPONSE_BYTES).contains(&self.max_response_bytes) {
            return Err(ValidationError::new(
                "policy.max_response_bytes",
                format!("must lie between {MIN_RESPONSE_BYTES} and {MAX_RESPONSE_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// The documented server defaults, for unit tests.
#[cfg(test)]
pub(crate) fn documented_defaults() -> Policy {
    Policy {
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(86_400),
        default_ttl: Duration::from_secs(300),
        refresh_early: Duration::from_secs(30),
        max_stale: Duration::from_secs(7 * 86_400),
        max_response_bytes: 512 * 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Policy {
        documented_defaults()
    }

    #[test]
    fn unset_overrides_keep_the_defaults() {
        assert_eq!(
            defaults().with_overrides(&PolicyOverrides::default()),
            Ok(defaults())
        );
    }

    #[test]
    fn set_overrides_win() {
        let overrides = PolicyOverrides {
            max_ttl: Some(Duration::from_secs(600)),
            max_response_bytes: Some(4096),
            ..PolicyOverrides::default()
        };
        let policy = defaults().with_overrides(&overrides).unwrap();
        assert_eq!(policy.max_ttl, Duration::from_secs(600));
        assert_eq!(policy.max_response_bytes, 4096);
        assert_eq!(policy.min_ttl, Duration::from_secs(60));
    }

    #[test]
    fn incoherent_policies_name_the_field() {
        let cases = [
            (
                PolicyOverrides {
                    max_ttl: Some(Duration::from_secs(10)),
                    ..Default::default()
                },
                "policy.max_ttl",
            ),
            (
                PolicyOverrides {
                    min_ttl: Some(Duration::ZERO),
                    ..Default::default()
                },
                "policy.min_ttl",
            ),
            (
                PolicyOverrides {
                    default_ttl: Some(Duration::from_secs(5)),
                    ..Default::default()
                },
                "policy.default_ttl",
            ),
            (
                PolicyOverrides {
                    max_response_bytes: Some(10),
                    ..Default::default()
                },
                "policy.max_response_bytes",
            ),
            (
                PolicyOverrides {
                    max_stale: Some(MAX_DURATION * 2),
                    ..Default::default()
                },
                "policy.max_stale",
            ),
        ];
        for (overrides, field) in cases {
            assert_eq!(
                defaults().with_overrides(&overrides).unwrap_err().field,
                field
            );
        }
    }

    #[test]
    fn overrides_round_trip_through_json() {
        let overrides = PolicyOverrides {
            min_ttl: Some(Duration::from_millis(1500)),
            ..PolicyOverrides::default()
        };
        let json = serde_json::to_string(&overrides).unwrap();
        assert_eq!(
            serde_json::from_str::<PolicyOverrides>(&json).unwrap(),
            overrides
        );
    }
}
