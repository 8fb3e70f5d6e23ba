//! `keyrelay tokens ...`, `keyrelay tenant-access` and `keyrelay audit`.

use prost_types::Duration as PbDuration;
use serde_json::{Value, json};

use super::{
    ClientOptions, TokenRoleArg, TokensCommand,
    connect::{ClientError, admin_client},
    output::{print_line, time},
};
use crate::proto::v1 as pb;

/// Runs `keyrelay tokens <action>`.
pub(super) async fn tokens(
    options: &ClientOptions,
    action: TokensCommand,
) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    match action {
        TokensCommand::Create {
            role,
            tenant,
            description,
            ttl,
        } => {
            let role = match role {
                TokenRoleArg::Admin => pb::TokenRole::Admin,
                TokenRoleArg::Verifier => pb::TokenRole::Verifier,
            };
            let request = pb::CreateTokenRequest {
                role: role.into(),
                tenant: tenant.unwrap_or_default(),
                description,
                ttl: ttl.map(|ttl| PbDuration {
                    seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
            };
            let created = admin.create_token(request).await?.into_inner();
            let token = created.token.unwrap_or_default();
            let mut value = token_json(&token);
            value["secret"] = json!(created.secret);
            print_line(options.json, value, || {
                format!(
                    "{}\nsecret (shown once): {}",
                    token_text(&token),
                    created.secret
                )
            });
        }
        TokensCommand::List {
            tenant,
            include_revoked,
        } => {
            let request = pb::ListTokensRequest {
                tenant: tenant.unwrap_or_default(),
                include_revoked,
            };
            for token in admin.list_tokens(request).await?.into_inner().tokens {
                print_line(options.json, token_json(&token), || token_text(&token));
            }
        }
        TokensCommand::Revoke { id } => {
            let revoked = admin
                .revoke_token(pb::RevokeTokenRequest { id })
                .await?
                .into_inner()
                .token
                .unwrap_or_default();
            print_line(options.json, token_json(&revoked), || token_text(&revoked));
        }
    }
    Ok(())
}

/// Runs `keyrelay tenant-access`: shows the setting, or changes it.
pub(super) async fn tenant_access(
    options: &ClientOptions,
    tenant: String,
    require_verifier_token: Option<bool>,
) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let access = match require_verifier_token {
        Some(required) => {
            let request = pb::SetTenantAccessRequest {
                tenant,
                verifier_token_required: required,
            };
            admin.set_tenant_access(request).await?.into_inner().access
        }
        None => {
            let request = pb::GetTenantAccessRequest { tenant };
            admin.get_tenant_access(request).await?.into_inner().access
        }
    }
    .unwrap_or_default();
    let value = json!({
        "tenant": access.tenant,
        "verifier_token_required": access.verifier_token_required,
        "updated_at": time(access.updated_at.as_ref()),
    });
    print_line(options.json, value, || {
        format!(
            "{}: verifier token {} (changed {})",
            access.tenant,
            if access.verifier_token_required {
                "required"
            } else {
                "not required"
            },
            time(access.updated_at.as_ref())
        )
    });
    Ok(())
}

/// Runs `keyrelay audit`: up to `limit` events, newest first.
pub(super) async fn audit(
    options: &ClientOptions,
    tenant: Option<String>,
    limit: u32,
) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let mut left = limit;
    let mut page_token = String::new();
    while left > 0 {
        let request = pb::ListAuditEventsRequest {
            tenant: tenant.clone().unwrap_or_default(),
            page_size: left.min(1000),
            page_token,
        };
        let page = admin.list_audit_events(request).await?.into_inner();
        for event in &page.events {
            print_line(options.json, audit_json(event), || audit_text(event));
        }
        left = left.saturating_sub(u32::try_from(page.events.len()).unwrap_or(u32::MAX));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

fn role_name(token: &pb::AccessToken) -> &'static str {
    match token.role() {
        pb::TokenRole::Admin => "admin",
        pb::TokenRole::Verifier => "verifier",
        pb::TokenRole::Unspecified => "unspecified",
    }
}

fn token_text(token: &pb::AccessToken) -> String {
    let scope = if token.tenant.is_empty() {
        "every tenant"
    } else {
        token.tenant.as_str()
    };
    let revoked = token
        .revoked_at
        .as_ref()
        .map(|at| format!(", revoked {}", time(Some(at))))
        .unwrap_or_default();
    format!(
        "{}  {} for {scope}  \"{}\"  expires {}{revoked}",
        token.id,
        role_name(token),
        token.description,
        time(token.expires_at.as_ref())
    )
}

fn token_json(token: &pb::AccessToken) -> Value {
    json!({
        "id": token.id,
        "role": role_name(token),
        "tenant": token.tenant,
        "description": token.description,
        "created_at": time(token.created_at.as_ref()),
        "created_by": token.created_by,
        "expires_at": token.expires_at.as_ref().map(|at| time(Some(at))),
        "revoked_at": token.revoked_at.as_ref().map(|at| time(Some(at))),
    })
}

fn audit_text(event: &pb::AuditEvent) -> String {
    let subject = match (event.tenant.as_str(), event.provider.as_str()) {
        ("", _) => "-".to_owned(),
        (tenant, "") => tenant.to_owned(),
        (tenant, provider) => format!("{tenant}/{provider}"),
    };
    format!(
        "{} #{} {} {} by {} from {}\n  before: {}\n  after:  {}",
        time(event.at.as_ref()),
        event.id,
        event.action,
        subject,
        event.actor,
        if event.client.is_empty() {
            "-"
        } else {
            &event.client
        },
        if event.before.is_empty() {
            "-"
        } else {
            &event.before
        },
        if event.after.is_empty() {
            "-"
        } else {
            &event.after
        },
    )
}

fn audit_json(event: &pb::AuditEvent) -> Value {
    let state = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    json!({
        "id": event.id,
        "at": time(event.at.as_ref()),
        "actor": event.actor,
        "action": event.action,
        "tenant": event.tenant,
        "provider": event.provider,
        "before": state(&event.before),
        "after": state(&event.after),
        "client": event.client,
    })
}
