//! `keyrelay keys revoke|reinstate|list-revoked`: emergency revocation from a shell.

use serde_json::{Value, json};

use super::{
    ClientOptions, KeysCommand,
    connect::{AdminClient, ClientError, admin_client},
    output::{print_line, time},
    providers::for_each_provider,
};
use crate::proto::v1 as pb;

/// Runs `keyrelay keys <action>`.
pub(super) async fn run(options: &ClientOptions, action: KeysCommand) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    match action {
        KeysCommand::Revoke {
            tenant,
            provider,
            kid,
            reason,
        } => {
            let request = pb::RevokeKeyRequest {
                tenant,
                provider,
                kid: kid.clone(),
                reason,
            };
            let revoked = admin.revoke_key(request).await?.into_inner();
            let provider = revoked.provider.clone().unwrap_or_default();
            let value = json!({
                "revoked": revocation_json(&provider, &kid),
                "already_revoked": revoked.already_revoked,
                "in_key_set": revoked.in_key_set,
                "version": status(&provider).version,
            });
            print_line(options.json, value, || {
                revoked_text(&provider, &kid, &revoked)
            });
        }
        KeysCommand::Reinstate {
            tenant,
            provider,
            kid,
        } => {
            let request = pb::ReinstateKeyRequest {
                tenant,
                provider,
                kid: kid.clone(),
            };
            let reinstated = admin.reinstate_key(request).await?.into_inner();
            let provider = reinstated.provider.unwrap_or_default();
            let name = format!("{}/{}", provider.tenant, provider.provider);
            let version = status(&provider).version;
            let value = json!({
                "reinstated": {"tenant": provider.tenant, "provider": provider.provider, "kid": kid},
                "in_key_set": reinstated.in_key_set,
                "version": version,
            });
            print_line(options.json, value, || {
                if reinstated.in_key_set {
                    format!("reinstated {kid:?} of {name}: served again (version {version})")
                } else {
                    format!(
                        "reinstated {kid:?} of {name}; the identity provider does not publish it now"
                    )
                }
            });
        }
        KeysCommand::ListRevoked { tenant } => {
            list_revoked(&mut admin, tenant.unwrap_or_default(), options.json).await?;
        }
    }
    Ok(())
}

fn status(provider: &pb::Provider) -> pb::ProviderStatus {
    provider.status.clone().unwrap_or_default()
}

fn revoked_text(provider: &pb::Provider, kid: &str, revoked: &pb::RevokeKeyResponse) -> String {
    let name = format!("{}/{}", provider.tenant, provider.provider);
    let version = status(provider).version;
    match (revoked.already_revoked, revoked.in_key_set) {
        (true, _) => format!("{kid:?} of {name} was revoked already; the first revocation stands"),
        (false, true) => {
            format!("revoked {kid:?} of {name}: withheld from every verifier (version {version})")
        }
        (false, false) => format!(
            "revoked {kid:?} of {name}; the identity provider does not publish it now, and it will be withheld if it ever does (check the kid for a typo)"
        ),
    }
}

/// One revocation of `provider`, as JSON; `null` when `kid` is not among its revocations.
fn revocation_json(provider: &pb::Provider, kid: &str) -> Value {
    status(provider)
        .revoked_keys
        .iter()
        .find(|revoked| revoked.kid == kid)
        .map_or(Value::Null, |revoked| revoked_key_json(provider, revoked))
}

pub(super) fn revoked_key_json(provider: &pb::Provider, revoked: &pb::RevokedKey) -> Value {
    json!({
        "tenant": provider.tenant,
        "provider": provider.provider,
        "kid": revoked.kid,
        "reason": revoked.reason,
        "revoked_at": time(revoked.revoked_at.as_ref()),
        "revoked_by": revoked.revoked_by,
        "published_by_provider": revoked.published_by_provider,
    })
}

async fn list_revoked(
    admin: &mut AdminClient,
    tenant: String,
    as_json: bool,
) -> Result<(), ClientError> {
    for_each_provider(admin, tenant, |provider| {
        for revoked in &status(provider).revoked_keys {
            print_line(as_json, revoked_key_json(provider, revoked), || {
                revoked_key_line(provider, revoked)
            });
        }
    })
    .await
}

/// One revoked key on one line: provider, kid, when, by whom, why.
pub(super) fn revoked_key_line(provider: &pb::Provider, revoked: &pb::RevokedKey) -> String {
    let published = if revoked.published_by_provider {
        "still published by the provider"
    } else {
        "not published by the provider"
    };
    format!(
        "{}/{}\t{}\trevoked {} by {}\t{published}\t{}",
        provider.tenant,
        provider.provider,
        revoked.kid,
        time(revoked.revoked_at.as_ref()),
        revoked.revoked_by,
        revoked.reason
    )
}
