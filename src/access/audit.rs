//! The audit log's records: who changed what, when, from where, and the state before and
//! after.

use chrono::{DateTime, Utc};

use super::Principal;
use crate::domain::{ProviderKey, TenantId};

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A provider registered or its registration changed.
    RegisterProvider,
    /// A provider unregistered.
    UnregisterProvider,
    /// An access token issued.
    CreateToken,
    /// An access token revoked.
    RevokeToken,
    /// A tenant's access settings changed.
    SetTenantAccess,
    /// A fetched key set refused by the guardrails.
    RejectKeySet,
    /// A key id withheld by an administrator.
    RevokeKey,
    /// A revoked key id served again.
    ReinstateKey,
    /// An issuer's metadata named a new JWKS URL (or its first one).
    ChangeJwksUri,
    /// An administrator pushed a key set.
    PublishKeySet,
}

impl Action {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RegisterProvider => "provider.register",
            Action::UnregisterProvider => "provider.unregister",
            Action::CreateToken => "token.create",
            Action::RevokeToken => "token.revoke",
            Action::SetTenantAccess => "tenant.set_access",
            Action::RejectKeySet => "key_set.rejected",
            Action::RevokeKey => "key.revoke",
            Action::ReinstateKey => "key.reinstate",
            Action::ChangeJwksUri => "provider.jwks_uri_changed",
            Action::PublishKeySet => "key_set.publish",
        }
    }
}

/// Who asked for a change and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `admin`, `token:<id>` or `keyrelay`.
    pub actor: String,
    /// The caller's address.
    pub client: Option<String>,
}

impl Origin {
    /// A change asked for by `principal` from `client`.
    pub fn caller(principal: &Principal, client: Option<std::net::SocketAddr>) -> Self {
        Self {
            actor: principal.actor(),
            client: client.map(|addr| addr.ip().to_string()),
        }
    }

    /// A change keyrelay makes on its own.
    pub fn service() -> Self {
        Self {
            actor: "keyrelay".to_owned(),
            client: None,
        }
    }
}

/// One event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// Who and from where.
    pub origin: Origin,
    /// What.
    pub action: Action,
    /// The tenant concerned, if any.
    pub tenant: Option<TenantId>,
    /// The provider concerned, if any (its tenant is `tenant`).
    pub provider: Option<String>,
    /// The state before.
    pub before: Option<serde_json::Value>,
    /// The state after.
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event about one provider.
    pub fn provider(at: DateTime<Utc>, origin: Origin, action: Action, key: &ProviderKey) -> Self {
        Self {
            at,
            origin,
            action,
            tenant: Some(key.tenant().clone()),
            provider: Some(key.provider().as_str().to_owned()),
            before: None,
            after: None,
        }
    }
}

/// A recorded event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position in the log.
    pub id: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What (`Action::as_str`).
    pub action: String,
    /// Tenant concerned.
    pub tenant: Option<String>,
    /// Provider concerned.
    pub provider: Option<String>,
    /// State before, JSON.
    pub before: Option<String>,
    /// State after, JSON.
    pub after: Option<String>,
    /// Caller's address.
    pub client: Option<String>,
}
