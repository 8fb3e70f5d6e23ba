//! Access-management messages to and from domain values.

use super::{parse_duration, timestamp};
use crate::{
    access::{AuditRecord, Role, TenantAccess, TokenRecord, parse_description},
    core::access::TokenRequest,
    domain::{TenantId, ValidationError},
    proto::v1 as pb,
};

/// An optional tenant field: empty means none.
pub fn optional_tenant(value: &str) -> Result<Option<TenantId>, ValidationError> {
    match value {
        "" => Ok(None),
        tenant => TenantId::parse("tenant", tenant).map(Some),
    }
}

/// A CreateToken request parsed into domain values.
pub fn token_request(request: pb::CreateTokenRequest) -> Result<TokenRequest, ValidationError> {
    let role = match request.role() {
        pb::TokenRole::Admin => Role::Admin,
        pb::TokenRole::Verifier => Role::Verifier,
        pb::TokenRole::Unspecified => {
            return Err(ValidationError::new(
                "role",
                "must be TOKEN_ROLE_ADMIN or TOKEN_ROLE_VERIFIER",
            ));
        }
    };
    Ok(TokenRequest {
        role,
        tenant: optional_tenant(&request.tenant)?,
        description: parse_description(&request.description)?,
        ttl: parse_duration("ttl", request.ttl)?,
    })
}

/// A token as shown to admins: never its secret or digest.
pub fn token(record: &TokenRecord) -> pb::AccessToken {
    let role = match record.role {
        Role::Admin => pb::TokenRole::Admin,
        Role::Verifier => pb::TokenRole::Verifier,
    };
    pb::AccessToken {
        id: record.id.as_str().to_owned(),
        role: role.into(),
        tenant: record
            .tenant
            .as_ref()
            .map(|tenant| tenant.as_str().to_owned())
            .unwrap_or_default(),
        description: record.description.clone(),
        created_at: Some(timestamp(record.created_at)),
        created_by: record.created_by.clone(),
        expires_at: record.expires_at.map(timestamp),
        revoked_at: record.revoked_at.map(timestamp),
    }
}

/// A tenant's access settings.
pub fn tenant_access(access: &TenantAccess) -> pb::TenantAccess {
    pb::TenantAccess {
        tenant: access.tenant.as_str().to_owned(),
        verifier_token_required: access.verifier_token_required,
        updated_at: access.updated_at.map(timestamp),
    }
}

/// One audit event.
pub fn audit_event(record: &AuditRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        id: record.id,
        at: Some(timestamp(record.at)),
        actor: record.actor.clone(),
        action: record.action.clone(),
        tenant: record.tenant.clone().unwrap_or_default(),
        provider: record.provider.clone().unwrap_or_default(),
        before: record.before.clone().unwrap_or_default(),
        after: record.after.clone().unwrap_or_default(),
        client: record.client.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_name_the_field_at_fault() {
        let valid = pb::CreateTokenRequest {
            role: pb::TokenRole::Verifier.into(),
            tenant: "acme".into(),
            description: "payments api".into(),
            ttl: None,
        };
        assert!(token_request(valid.clone()).is_ok());
        let cases = [
            (
                pb::CreateTokenRequest {
                    role: 0,
                    ..valid.clone()
                },
                "role",
            ),
            (
                pb::CreateTokenRequest {
                    tenant: "Acme".into(),
                    ..valid.clone()
                },
                "tenant",
            ),
            (
                pb::CreateTokenRequest {
                    description: String::new(),
                    ..valid.clone()
                },
                "description",
            ),
            (
                pb::CreateTokenRequest {
                    ttl: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..valid
                },
                "ttl",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(token_request(request).unwrap_err().field, field);
        }
    }
}
