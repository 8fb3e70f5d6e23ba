//! Emergency revocation: the key ids an administrator has withheld from a provider's
//! published set, whatever its identity provider keeps publishing, until reinstated.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Kid, ValidationError, key_set::PublicKey};

/// Revoked kids one provider may hold: more than the keys a set may have (`MAX_KEYS`), so
/// every key of a set can be revoked along with a few that are not published yet.
pub const MAX_REVOKED: usize = 128;
/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// One revoked key id, with who revoked it, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedKey {
    /// The key id withheld.
    pub kid: String,
    /// Why, in the administrator's words.
    pub reason: String,
    /// When it was revoked.
    pub revoked_at: DateTime<Utc>,
    /// Who revoked it (the audit log's actor).
    pub revoked_by: String,
}

/// Why a revocation was given: 1 to `MAX_REASON_CHARS` characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationReason(String);

impl RevocationReason {
    /// Parses the `reason` field of a request.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let value = value.trim();
        let chars = value.chars().count();
        if chars == 0 || chars > MAX_REASON_CHARS {
            return Err(ValidationError::new(
                "reason",
                format!(
                    "must be 1-{MAX_REASON_CHARS} characters (say why the key is revoked, for the audit log), got {chars}"
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "reason",
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The reason as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The revoked kids of one provider, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations(Arc<[RevokedKey]>);

/// Why a revocation list cannot change as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The provider already has `MAX_REVOKED` revoked kids.
    #[error(
        "{limit} kids are revoked already, the most one provider may hold; reinstate kids the identity provider no longer publishes, or rotate the provider's keys and re-register it"
    )]
    TooMany {
        /// The bound.
        limit: usize,
    },
    /// Reinstating a kid that is not revoked.
    #[error("kid {kid:?} is not revoked (revoked: {revoked})")]
    NotRevoked {
        /// The kid asked for.
        kid: String,
        /// The kids that are, for the caller to spot a typo.
        revoked: String,
    },
}

impl Revocations {
    /// A list as stored.
    pub fn from_stored(keys: Vec<RevokedKey>) -> Self {
        Self(Arc::from(keys))
    }

    /// The revoked keys, oldest first.
    pub fn keys(&self) -> &[RevokedKey] {
        &self.0
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The revocation of `kid`, if it is revoked.
    pub fn get(&self, kid: &str) -> Option<&RevokedKey> {
        self.0.iter().find(|revoked| revoked.kid == kid)
    }

    /// Whether `kid` is revoked.
    pub fn contains(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }

    /// Whether `key` is withheld: its kid is revoked.
    pub fn withholds(&self, key: &PublicKey) -> bool {
        key.kid.as_deref().is_some_and(|kid| self.contains(kid))
    }

    /// The list with `revoked` added; `None` when its kid is revoked already (the first
    /// revocation, with its reason, stands).
    pub fn with(&self, revoked: RevokedKey) -> Result<Option<Self>, RevocationError> {
        if self.contains(&revoked.kid) {
            return Ok(None);
        }
        if self.0.len() >= MAX_REVOKED {
            return Err(RevocationError::TooMany { limit: MAX_REVOKED });
        }
        let mut keys = self.0.to_vec();
        keys.push(revoked);
        Ok(Some(Self(Arc::from(keys))))
    }

    /// The list without `kid`.
    pub fn without(&self, kid: &Kid) -> Result<Self, RevocationError> {
        if !self.contains(kid.as_str()) {
            let revoked = self
                .0
                .iter()
                .map(|r| format!("{:?}", r.kid))
                .collect::<Vec<_>>();
            return Err(RevocationError::NotRevoked {
                kid: kid.as_str().to_owned(),
                revoked: if revoked.is_empty() {
                    "none".to_owned()
                } else {
                    revoked.join(", ")
                },
            });
        }
        let keys = self.0.iter().filter(|r| r.kid != kid.as_str()).cloned();
        Ok(Self(keys.collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoked(kid: &str) -> RevokedKey {
        RevokedKey {
            kid: kid.to_owned(),
            reason: "leaked".to_owned(),
            revoked_at: Utc::now(),
            revoked_by: "admin".to_owned(),
        }
    }

    #[test]
    fn a_kid_revoked_twice_keeps_its_first_revocation() {
        let once = Revocations::default().with(revoked("a")).unwrap().unwrap();
        let mut again = revoked("a");
        again.reason = "another reason".to_owned();
        assert_eq!(once.with(again), Ok(None));
        assert_eq!(once.get("a").map(|r| r.reason.as_str()), Some("leaked"));
    }

    #[test]
    fn the_list_is_bounded() {
        let full =
            Revocations::from_stored((0..MAX_REVOKED).map(|i| revoked(&i.to_string())).collect());
        assert_eq!(
            full.with(revoked("one-more")),
            Err(RevocationError::TooMany { limit: MAX_REVOKED })
        );
    }

    #[test]
    fn reinstating_names_what_is_revoked_when_the_kid_is_not() {
        let list = Revocations::default().with(revoked("a")).unwrap().unwrap();
        let err = list.without(&Kid::parse("b").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), r#"kid "b" is not revoked (revoked: "a")"#);
        let empty = list.without(&Kid::parse("a").unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert!(RevocationReason::parse("  ").is_err());
        assert!(RevocationReason::parse(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        assert!(RevocationReason::parse("bad\nline").is_err());
        assert_eq!(
            RevocationReason::parse(" key leaked in a log ")
                .unwrap()
                .as_str(),
            "key leaked in a log"
        );
    }
}
