//! Who is calling, and what they may touch: the server's admin token or an access token
//! with its role and tenant scope.

use super::token::{Role, TokenId};
use crate::domain::TenantId;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The server's own admin token: everything.
    ServerAdmin,
    /// An issued access token.
    Token {
        /// Its id.
        id: TokenId,
        /// What it may do.
        role: Role,
        /// Its tenant; `None`: every tenant.
        tenant: Option<TenantId>,
    },
}

impl Principal {
    /// The actor named in audit events.
    pub fn actor(&self) -> String {
        match self {
            Principal::ServerAdmin => "admin".to_owned(),
            Principal::Token { id, .. } => format!("token:{}", id.as_str()),
        }
    }

    /// Whether it may call AdminService at all.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::ServerAdmin
                | Principal::Token {
                    role: Role::Admin,
                    ..
                }
        )
    }

    /// The one tenant it is confined to; `None` when it spans every tenant.
    pub fn tenant_scope(&self) -> Option<&TenantId> {
        match self {
            Principal::ServerAdmin => None,
            Principal::Token { tenant, .. } => tenant.as_ref(),
        }
    }

    /// Whether `tenant` is within its scope.
    pub fn covers(&self, tenant: &TenantId) -> bool {
        self.tenant_scope().is_none_or(|own| own == tenant)
    }

    /// Whether it may administer `tenant`.
    pub fn administers(&self, tenant: &TenantId) -> bool {
        self.is_admin() && self.covers(tenant)
    }

    /// Whether it spans every tenant as an admin.
    pub fn administers_everything(&self) -> bool {
        self.is_admin() && self.tenant_scope().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse("tenant", name).unwrap()
    }

    fn token(role: Role, scope: Option<&str>) -> Principal {
        Principal::Token {
            id: TokenId::parse("0123456789abcdef").unwrap(),
            role,
            tenant: scope.map(tenant),
        }
    }

    #[test]
    fn scopes_confine_tokens_to_their_tenant() {
        let acme = tenant("acme");
        let globex = tenant("globex");
        let acme_admin = token(Role::Admin, Some("acme"));
        assert!(acme_admin.administers(&acme));
        assert!(!acme_admin.administers(&globex));
        assert!(!acme_admin.administers_everything());
        let acme_verifier = token(Role::Verifier, Some("acme"));
        assert!(acme_verifier.covers(&acme) && !acme_verifier.covers(&globex));
        assert!(!acme_verifier.administers(&acme));
        for global in [Principal::ServerAdmin, token(Role::Admin, None)] {
            assert!(global.administers(&acme) && global.administers(&globex));
            assert!(global.administers_everything());
        }
    }

    #[test]
    fn actors_name_the_token_not_its_secret() {
        assert_eq!(Principal::ServerAdmin.actor(), "admin");
        assert_eq!(token(Role::Admin, None).actor(), "token:0123456789abcdef");
    }
}
