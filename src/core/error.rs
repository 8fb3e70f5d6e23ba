//! What an operation of keyrelay can fail with, in domain words, and the neutral kind of each
//! failure. Messages say what the caller can do about it. Nothing here knows gRPC or HTTP:
//! the API edge maps kinds to status codes, once (`api::status`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    access::AuthError,
    domain::key_set::{JwksError, SkippedKey},
    domain::revocation::{RevocationError, RevokedKey},
    domain::{ProviderKey, TenantId, ValidationError},
    refresh::RefreshError,
    store::StoreError,
};

/// Everything a keyrelay operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such registration (or none the caller may see).
    #[error("provider {0} is not registered")]
    ProviderNotFound(ProviderKey),
    /// No such access token (or none the caller may see).
    #[error("access token {0} does not exist")]
    TokenNotFound(String),
    /// Missing or invalid credentials.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Valid credentials, but not for this.
    #[error(transparent)]
    PermissionDenied(#[from] Denial),
    /// The requested kid is not in the provider's keys, even after a refresh.
    #[error(transparent)]
    KidNotFound(Box<KidNotFound>),
    /// The requested kid was revoked by an administrator.
    #[error(transparent)]
    KidRevoked(Box<KidRevoked>),
    /// The requested kid is in the provider's last fetched set, but not published.
    #[error(transparent)]
    KidWithheld(Box<KidWithheld>),
    /// A revocation list cannot change as asked.
    #[error("{key}: {source}")]
    Revocation {
        /// The provider.
        key: ProviderKey,
        /// Why.
        source: RevocationError,
    },
    /// A key set was pushed for a provider whose keys are fetched.
    #[error(
        "provider {0} fetches its keys (it is registered by JWKS URL or issuer); PublishKeySet is for providers registered with pushed"
    )]
    NotPushed(ProviderKey),
    /// A pushed key set failed the key-set guardrails.
    #[error("key set for {key} refused: {source}")]
    KeySetRefused {
        /// The provider.
        key: ProviderKey,
        /// Why.
        source: JwksError,
    },
    /// A write kept meeting concurrent changes of the same provider.
    #[error("{0} kept changing while this change was written; retry it")]
    Contended(ProviderKey),
    /// No keys may be served.
    #[error(transparent)]
    NoUsableKeys(#[from] NoUsableKeys),
    /// Two providers of a tenant publish the same kid, so their keys cannot be merged.
    #[error(
        "two providers of tenant {} publish kid {kid:?}; fetch them one by one",
        tenant.as_str()
    )]
    KidCollision {
        /// The tenant.
        tenant: TenantId,
        /// The kid both publish.
        kid: String,
    },
    /// A client asked for unknown kids faster than allowed.
    #[error("too many lookups of unknown kids from this client; retry in {0:?}")]
    RateLimited(Duration),
    /// A client failed to authenticate on AdminService too often.
    #[error("too many failed authentications from this address; retry in {0:?}")]
    TooManyAuthFailures(Duration),
    /// A WatchKeys stream ended.
    #[error(transparent)]
    StreamEnded(#[from] StreamEnd),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refresh could not complete.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

/// Why valid credentials do not allow a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// A verifier token on AdminService.
    #[error("verifier tokens cannot call AdminService; use an admin token")]
    VerifierToken,
    /// A tenant-scoped token asked about another tenant.
    #[error("this token may not manage tenant {}", .0.as_str())]
    OtherTenant(TenantId),
    /// A tenant-scoped token asked to issue a token beyond its tenant.
    #[error("a token scoped to a tenant may issue tokens for that tenant only")]
    IssueBeyondTenant,
    /// The call concerns every tenant.
    #[error("{0} needs a token valid for every tenant")]
    EveryTenant(&'static str),
}

/// Why a provider (or a tenant) has no keys that may be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoUsableKeys {
    /// No fetch has succeeded yet.
    #[error("no keys fetched yet for {key}: {}", match last_error {
        Some(err) => format!("last fetch failed: {err}"),
        None => "the first fetch has not completed".to_owned(),
    })]
    NotFetched {
        /// The provider.
        key: ProviderKey,
        /// Why the last fetch failed, if it did.
        last_error: Option<String>,
    },
    /// The last good keys are past `max_stale`.
    #[error(
        "keys of {key} expired at {} (fresh until {} plus max_stale {}); last fetch error: {}",
        usable_until.to_rfc3339(),
        fresh_until.to_rfc3339(),
        humantime::format_duration(*max_stale),
        last_error.as_deref().unwrap_or("none")
    )]
    Expired {
        /// The provider.
        key: ProviderKey,
        /// When they stopped being served.
        usable_until: DateTime<Utc>,
        /// When they stopped being fresh.
        fresh_until: DateTime<Utc>,
        /// How long past freshness they were served.
        max_stale: Duration,
        /// Why the last fetch failed, if it did.
        last_error: Option<String>,
    },
    /// No provider of the tenant has usable keys.
    #[error("tenant {} has no provider with usable keys", .0.as_str())]
    Tenant(TenantId),
}

/// A kid a verifier asked for is not in the provider's keys.
#[derive(Debug, thiserror::Error)]
#[error("kid {kid:?} is not in the key set of {key} (version {version}): {refresh}")]
pub struct KidNotFound {
    /// The provider.
    pub key: ProviderKey,
    /// The kid asked for.
    pub kid: String,
    /// The version of the keys searched.
    pub version: u64,
    /// What the refresh the unknown kid triggered found.
    pub refresh: KidRefresh,
}

/// A kid a verifier asked for was revoked by an administrator.
#[derive(Debug, thiserror::Error)]
#[error(
    "kid {:?} of {key} was revoked at {} by {} ({:?}); keyrelay withholds it until an administrator reinstates it",
    revoked.kid,
    revoked.revoked_at.to_rfc3339(),
    revoked.revoked_by,
    revoked.reason
)]
pub struct KidRevoked {
    /// The provider.
    pub key: ProviderKey,
    /// The revocation.
    pub revoked: RevokedKey,
}

/// A kid a verifier asked for is served by the identity provider but not published.
#[derive(Debug, thiserror::Error)]
#[error(
    "kid {:?} of {key} is in the identity provider's key set but not published: {}",
    skipped.kid.as_deref().unwrap_or_default(),
    skipped.reason
)]
pub struct KidWithheld {
    /// The provider.
    pub key: ProviderKey,
    /// The key and why it is left out.
    pub skipped: SkippedKey,
}

/// What became of the refresh an unknown kid triggered.
#[derive(Debug, thiserror::Error)]
pub enum KidRefresh {
    /// The refresh ran and the kid is not there.
    #[error("not there after a refresh either")]
    StillMissing,
    /// The refresh ran and the fetch failed.
    #[error("the refresh it triggered failed: {0}")]
    Failed(String),
    /// The refresh could not complete.
    #[error("the refresh it triggered did not complete: {0}")]
    Incomplete(RefreshError),
    /// An unknown kid refreshed the provider too recently.
    #[error("an unknown kid refreshed this provider recently; next refresh possible in {}s", .0.as_secs().max(1))]
    CoolingDown(Duration),
    /// The refresh is still running.
    #[error("the refresh it triggered is still running after {}", humantime::format_duration(*.0))]
    StillRunning(Duration),
}

/// Why a WatchKeys stream ended; the client reconnects with its known versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    /// The server is shutting down.
    #[error("keyrelay is shutting down; reconnect with known_versions to resume")]
    ShuttingDown,
    /// The caller's token was revoked or expired.
    #[error("the access token of this stream was revoked or has expired")]
    TokenLost,
    /// A selected tenant started requiring a token the caller lacks.
    #[error("access to the selected tenants changed; reconnect")]
    AccessChanged,
}

/// The class of a failure, which the API edge maps to gRPC and HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    InvalidArgument,
    /// What was asked for does not exist (or is not visible to the caller).
    NotFound,
    /// Missing or invalid credentials.
    Unauthenticated,
    /// Credentials that do not allow this.
    PermissionDenied,
    /// Cannot be served now; retrying later may work.
    Unavailable,
    /// The request conflicts with the current state.
    Conflict,
    /// Overtaken by a concurrent change; retrying may work.
    Aborted,
    /// The caller is over a limit.
    ResourceExhausted,
    /// A fault of keyrelay's own (an unreadable stored row, say).
    Internal,
}

impl Error {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::KeySetRefused { .. } => ErrorKind::InvalidArgument,
            Error::ProviderNotFound(_)
            | Error::KidNotFound(_)
            | Error::KidRevoked(_)
            | Error::KidWithheld(_)
            | Error::TokenNotFound(_)
            | Error::Revocation {
                source: RevocationError::NotRevoked { .. },
                ..
            } => ErrorKind::NotFound,
            Error::Revocation {
                source: RevocationError::TooMany { .. },
                ..
            } => ErrorKind::Conflict,
            Error::Contended(_) => ErrorKind::Aborted,
            Error::NotPushed(_) => ErrorKind::Conflict,
            Error::Unauthenticated(_) | Error::StreamEnded(StreamEnd::TokenLost) => {
                ErrorKind::Unauthenticated
            }
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::NoUsableKeys(_) | Error::StreamEnded(_) => ErrorKind::Unavailable,
            Error::KidCollision { .. } => ErrorKind::Conflict,
            Error::RateLimited(_) | Error::TooManyAuthFailures(_) => ErrorKind::ResourceExhausted,
            Error::Store(err) => err.kind(),
            Error::Refresh(err) => err.kind(),
        }
    }
}

impl StoreError {
    /// The class of this failure: an outage is worth retrying, a corrupt row is not.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Database(_) | StoreError::Timeout(_) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

impl RefreshError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RefreshError::Superseded => ErrorKind::Aborted,
            RefreshError::Store(err) | RefreshError::Forward(err) => err.kind(),
            RefreshError::OwnerTimeout(_) | RefreshError::NotOwner => ErrorKind::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn each_error_is_of_the_kind_a_client_can_act_on() {
        let key = ProviderKey::parse("t", "p").unwrap();
        let tenant = TenantId::parse("tenant", "t").unwrap();
        let outage = || StoreError::Timeout(Duration::from_secs(1));
        let corrupt = || StoreError::Corrupt {
            key: "t/p".into(),
            reason: "x".into(),
        };
        let cases = [
            (
                Error::Invalid(ValidationError::new("tenant", "bad")),
                ErrorKind::InvalidArgument,
            ),
            (Error::ProviderNotFound(key.clone()), ErrorKind::NotFound),
            (Error::TokenNotFound("0".into()), ErrorKind::NotFound),
            (
                Error::Unauthenticated(AuthError::Rejected),
                ErrorKind::Unauthenticated,
            ),
            (
                Error::PermissionDenied(Denial::VerifierToken),
                ErrorKind::PermissionDenied,
            ),
            (
                Error::NoUsableKeys(NoUsableKeys::Tenant(tenant.clone())),
                ErrorKind::Unavailable,
            ),
            (
                Error::KidCollision {
                    tenant,
                    kid: "k".into(),
                },
                ErrorKind::Conflict,
            ),
            (
                Error::StreamEnded(StreamEnd::TokenLost),
                ErrorKind::Unauthenticated,
            ),
            (
                Error::StreamEnded(StreamEnd::ShuttingDown),
                ErrorKind::Unavailable,
            ),
            (Error::Store(outage()), ErrorKind::Unavailable),
            (Error::Store(corrupt()), ErrorKind::Internal),
            (
                Error::Refresh(RefreshError::Store(Arc::new(outage()))),
                ErrorKind::Unavailable,
            ),
            (
                Error::Refresh(RefreshError::Store(Arc::new(corrupt()))),
                ErrorKind::Internal,
            ),
            (
                Error::Refresh(RefreshError::Forward(Arc::new(outage()))),
                ErrorKind::Unavailable,
            ),
            (Error::Refresh(RefreshError::Superseded), ErrorKind::Aborted),
            (
                Error::RateLimited(Duration::from_secs(1)),
                ErrorKind::ResourceExhausted,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn messages_say_what_to_fix() {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        let missing = Error::KidNotFound(Box::new(KidNotFound {
            key: key.clone(),
            kid: "k9".into(),
            version: 3,
            refresh: KidRefresh::CoolingDown(Duration::from_millis(200)),
        }));
        assert_eq!(
            missing.to_string(),
            "kid \"k9\" is not in the key set of acme/okta (version 3): an unknown kid refreshed this provider recently; next refresh possible in 1s"
        );
        let never = NoUsableKeys::NotFetched {
            key,
            last_error: None,
        };
        assert_eq!(
            never.to_string(),
            "no keys fetched yet for acme/okta: the first fetch has not completed"
        );
    }
}
