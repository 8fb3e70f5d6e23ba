//! The change feed's messages: what a NOTIFY on `keyrelay_changes` says about a committed
//! provider change (never the key set itself), and the channels replicas listen on.

use crate::domain::ProviderKey;

/// The NOTIFY channel of committed provider changes.
pub const CHANGES_CHANNEL: &str = "keyrelay_changes";

/// The NOTIFY channel of committed access changes (the payload is empty: reload).
pub const ACCESS_CHANNEL: &str = "keyrelay_access";

/// What a notification on `keyrelay_changes` says: a provider changed or was removed, at a
/// change sequence. Never the key set itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The row was written; read it for the new state.
    Updated(ProviderKey, u64),
    /// The row was deleted.
    Removed(ProviderKey, u64),
}

impl Change {
    /// The NOTIFY payload: `u|d/tenant/provider/change_seq`.
    pub fn payload(&self) -> String {
        let (kind, key, seq) = match self {
            Change::Updated(key, seq) => ("u", key, seq),
            Change::Removed(key, seq) => ("d", key, seq),
        };
        format!(
            "{kind}/{}/{}/{seq}",
            key.tenant().as_str(),
            key.provider().as_str()
        )
    }

    /// Parses a NOTIFY payload; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('/');
        let (kind, tenant, provider, seq) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let key = ProviderKey::parse(tenant, provider).ok()?;
        let seq = seq.parse().ok()?;
        match (kind, parts.next()) {
            ("u", None) => Some(Change::Updated(key, seq)),
            ("d", None) => Some(Change::Removed(key, seq)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_round_trip_and_garbage_is_ignored() {
        let key = ProviderKey::parse("acme", "okta.prod").unwrap();
        for change in [Change::Updated(key.clone(), 42), Change::Removed(key, 7)] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        for garbage in [
            "",
            "u/acme/okta",
            "x/acme/okta/1",
            "u/Acme/okta/1",
            "u/acme/okta/-1",
            "u/a/b/1/extra",
        ] {
            assert_eq!(Change::parse(garbage), None, "{garbage}");
        }
    }
}
