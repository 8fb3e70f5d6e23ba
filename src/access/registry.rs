//! The access state every call is checked against, held in memory: the active tokens and the
//! tenants that require a verifier token. Loaded from the store at start; a change committed
//! here is applied at once, and reloaded from the store on every replica of a fleet when the
//! change feed announces it.

use std::{
    collections::{HashMap, HashSet},
    sync::{PoisonError, RwLock},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{Principal, TokenId, TokenRecord, split_bearer};
use crate::{access::admin_token::AdminToken, domain::TenantId};

/// One tenant's access settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAccess {
    /// The tenant.
    pub tenant: TenantId,
    /// Whether reading its keys needs a verifier (or admin) token.
    pub verifier_token_required: bool,
    /// When the settings last changed; `None` if they never did.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Why the credentials a caller presented are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// An admin call without credentials.
    #[error("this call needs the metadata `authorization: Bearer <token>`")]
    Missing,
    /// Not of the form `Bearer <token>`.
    #[error("authorization must be `Bearer <token>`")]
    Malformed,
    /// Unknown, revoked or expired.
    #[error("the bearer token is not valid: unknown, revoked or expired")]
    Rejected,
}

impl AuthError {
    /// Every `kind`.
    pub const KINDS: [&'static str; 3] = ["missing", "malformed", "rejected"];

    /// A short name for the auth-failures metric's `reason` label.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Rejected => "rejected",
        }
    }
}

/// One committed change of the access state.
#[derive(Debug, Clone)]
pub enum AccessChange {
    /// A token was issued.
    Issued(TokenRecord),
    /// A token was revoked.
    Revoked(TokenId),
    /// A tenant's settings changed.
    Tenant(TenantAccess),
}

/// Access state as stored.
#[derive(Debug, Clone, Default)]
pub struct AccessState {
    /// Tokens not revoked (expired ones included: expiry is checked per call).
    pub tokens: Vec<TokenRecord>,
    /// Tenants whose keys need a token.
    pub protected_tenants: Vec<TenantId>,
}

#[derive(Default)]
struct Indexed {
    tokens: HashMap<TokenId, TokenRecord>,
    protected_tenants: HashSet<TenantId>,
}

/// The in-memory access state and the server's own admin token.
pub struct AccessRegistry {
    server_admin: AdminToken,
    state: RwLock<Indexed>,
    /// Counts replacements of the state, for streams that re-check their caller.
    changes: watch::Sender<u64>,
}

impl AccessRegistry {
    /// A registry accepting `server_admin` and the tokens of `state`.
    pub fn new(server_admin: AdminToken, state: AccessState) -> Self {
        let registry = Self {
            server_admin,
            state: RwLock::default(),
            changes: watch::Sender::new(0),
        };
        registry.replace(state);
        registry
    }

    /// Installs a freshly loaded state.
    pub fn replace(&self, state: AccessState) {
        let indexed = Indexed {
            tokens: state
                .tokens
                .into_iter()
                .map(|token| (token.id.clone(), token))
                .collect(),
            protected_tenants: state.protected_tenants.into_iter().collect(),
        };
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = indexed;
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Applies a change this replica has just committed, without reading the store back.
    pub fn apply(&self, change: AccessChange) {
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            match change {
                AccessChange::Issued(token) => {
                    state.tokens.insert(token.id.clone(), token);
                }
                AccessChange::Revoked(id) => {
                    state.tokens.remove(&id);
                }
                AccessChange::Tenant(access) if access.verifier_token_required => {
                    state.protected_tenants.insert(access.tenant);
                }
                AccessChange::Tenant(access) => {
                    state.protected_tenants.remove(&access.tenant);
                }
            }
        }
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Wakes whenever the state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether `caller`, authenticated earlier, would still be accepted at `now`.
    pub fn still_accepts(&self, caller: &Principal, now: DateTime<Utc>) -> bool {
        let Principal::Token { id, .. } = caller else {
            return true;
        };
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .tokens
            .get(id)
            .is_some_and(|token| token.is_active(now))
    }

    /// When `caller`'s token expires, if it does.
    pub fn expiry(&self, caller: &Principal) -> Option<DateTime<Utc>> {
        let Principal::Token { id, .. } = caller else {
            return None;
        };
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.tokens.get(id).and_then(|token| token.expires_at)
    }

    /// The caller presenting the `authorization` value (`Bearer <token>`) at `now`; `None`
    /// without one.
    pub fn caller(
        &self,
        authorization: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let bearer = std::str::from_utf8(value)
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(AuthError::Malformed)?;
        self.authenticate(bearer.trim(), now)
            .map(Some)
            .ok_or(AuthError::Rejected)
    }

    /// Who presents `bearer` at `now`; `None` if nobody valid does.
    pub fn authenticate(&self, bearer: &str, now: DateTime<Utc>) -> Option<Principal> {
        let Some((id, secret)) = split_bearer(bearer) else {
            return self
                .server_admin
                .matches(bearer)
                .then_some(Principal::ServerAdmin);
        };
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let token = state.tokens.get(&id)?;
        (token.digest.matches(secret) && token.is_active(now)).then(|| Principal::Token {
            id,
            role: token.role,
            tenant: token.tenant.clone(),
        })
    }

    /// Whether `caller` may read the keys of `tenant`: always, unless the tenant requires a
    /// token, in which case the caller's token must cover the tenant.
    pub fn may_read(&self, caller: Option<&Principal>, tenant: &TenantId) -> bool {
        if caller.is_some_and(|caller| caller.covers(tenant)) {
            return true;
        }
        !self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .protected_tenants
            .contains(tenant)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::access::{GeneratedToken, Role};

    fn tenant(name: &str) -> TenantId {
        TenantId::parse("tenant", name).unwrap()
    }

    fn issued(role: Role, scope: Option<&str>, now: DateTime<Utc>) -> (String, TokenRecord) {
        let generated = GeneratedToken::generate();
        let record = TokenRecord {
            id: generated.id,
            digest: generated.digest,
            role,
            tenant: scope.map(tenant),
            description: "test".into(),
            created_at: now,
            created_by: "admin".into(),
            expires_at: Some(now + Duration::hours(1)),
            revoked_at: None,
        };
        (generated.bearer, record)
    }

    fn registry(tokens: Vec<TokenRecord>, protected: &[&str]) -> AccessRegistry {
        AccessRegistry::new(
            AdminToken::new("server-admin").unwrap(),
            AccessState {
                tokens,
                protected_tenants: protected.iter().copied().map(tenant).collect(),
            },
        )
    }

    #[test]
    fn tokens_authenticate_until_they_expire_or_are_dropped() {
        let now = Utc::now();
        let (bearer, record) = issued(Role::Verifier, Some("acme"), now);
        let id = record.id.clone();
        let registry = registry(vec![record], &[]);
        let expected = Principal::Token {
            id,
            role: Role::Verifier,
            tenant: Some(tenant("acme")),
        };
        assert_eq!(registry.authenticate(&bearer, now), Some(expected));
        assert_eq!(
            registry.authenticate(&bearer, now + Duration::hours(1)),
            None
        );
        assert_eq!(registry.authenticate(&format!("{bearer}x"), now), None);
        assert_eq!(
            registry.authenticate("server-admin", now),
            Some(Principal::ServerAdmin)
        );
        assert_eq!(registry.authenticate("server-admin2", now), None);
        let caller = registry.authenticate(&bearer, now).unwrap();
        assert!(registry.still_accepts(&caller, now));
        assert_eq!(registry.expiry(&caller), Some(now + Duration::hours(1)));
        assert!(!registry.still_accepts(&caller, now + Duration::hours(1)));
        let changes = registry.changes();
        registry.apply(AccessChange::Revoked(caller_id(&caller)));
        assert!(changes.has_changed().unwrap());
        assert_eq!(registry.authenticate(&bearer, now), None);
        let (again, record) = issued(Role::Verifier, Some("acme"), now);
        registry.apply(AccessChange::Issued(record));
        assert!(registry.authenticate(&again, now).is_some());
        registry.replace(AccessState::default());
        assert_eq!(registry.authenticate(&bearer, now), None);
        assert!(!registry.still_accepts(&caller, now));
        assert!(registry.still_accepts(&Principal::ServerAdmin, now));
    }

    fn caller_id(caller: &Principal) -> TokenId {
        match caller {
            Principal::Token { id, .. } => id.clone(),
            Principal::ServerAdmin => panic!("not a token"),
        }
    }

    #[test]
    fn authorization_values_must_be_valid_bearer_tokens() {
        let registry = registry(Vec::new(), &[]);
        let now = Utc::now();
        let caller = |value: Option<&str>| registry.caller(value.map(str::as_bytes), now);
        assert_eq!(caller(None), Ok(None));
        assert_eq!(
            caller(Some("Bearer server-admin")),
            Ok(Some(Principal::ServerAdmin))
        );
        assert_eq!(caller(Some("Bearer wrong")), Err(AuthError::Rejected));
        assert_eq!(
            caller(Some("Basic server-admin")),
            Err(AuthError::Malformed)
        );
        assert_eq!(caller(Some("server-admin")), Err(AuthError::Malformed));
        assert_eq!(
            registry.caller(Some(b"Bearer \xff"), now),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn protected_tenants_are_read_only_with_a_covering_token() {
        let now = Utc::now();
        let (acme_bearer, acme) = issued(Role::Verifier, Some("acme"), now);
        let (globex_bearer, globex) = issued(Role::Verifier, Some("globex"), now);
        let registry = registry(vec![acme, globex], &["acme"]);
        let acme_caller = registry.authenticate(&acme_bearer, now);
        let globex_caller = registry.authenticate(&globex_bearer, now);
        assert!(registry.may_read(acme_caller.as_ref(), &tenant("acme")));
        assert!(!registry.may_read(globex_caller.as_ref(), &tenant("acme")));
        assert!(!registry.may_read(None, &tenant("acme")));
        assert!(registry.may_read(None, &tenant("globex")));
        assert!(registry.may_read(Some(&Principal::ServerAdmin), &tenant("acme")));
        registry.apply(AccessChange::Tenant(TenantAccess {
            tenant: tenant("globex"),
            verifier_token_required: true,
            updated_at: None,
        }));
        assert!(!registry.may_read(None, &tenant("globex")));
        registry.apply(AccessChange::Tenant(TenantAccess {
            tenant: tenant("acme"),
            verifier_token_required: false,
            updated_at: None,
        }));
        assert!(registry.may_read(None, &tenant("acme")));
    }
}
