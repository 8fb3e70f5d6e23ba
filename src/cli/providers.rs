//! `keyrelay providers add|publish|get|list|remove|refresh`.

use std::{io::Read, path::Path};

use prost_types::Duration as PbDuration;
use serde_json::{Value, json};

use super::{
    ClientOptions, PolicyArgs, ProvidersCommand,
    connect::{AdminClient, ClientError, admin_client},
    output::{print_line, state_name, time},
    revocation::revoked_key_json,
};
use crate::proto::v1 as pb;

/// Runs `keyrelay providers <action>`.
pub(super) async fn run(
    options: &ClientOptions,
    action: ProvidersCommand,
) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let provider = match action {
        ProvidersCommand::Add {
            tenant,
            provider,
            jwks_url,
            issuer,
            pushed,
            policy,
        } => {
            let request = pb::RegisterProviderRequest {
                tenant,
                provider,
                jwks_url: jwks_url.unwrap_or_default(),
                issuer: issuer.unwrap_or_default(),
                pushed,
                policy: Some(policy_message(&policy)?),
            };
            admin
                .register_provider(request)
                .await?
                .into_inner()
                .provider
        }
        ProvidersCommand::Publish {
            tenant,
            provider,
            file,
        } => {
            return publish(&mut admin, tenant, provider, &file, options.json).await;
        }
        ProvidersCommand::List { tenant } => {
            return list(&mut admin, tenant.unwrap_or_default(), options.json).await;
        }
        ProvidersCommand::Get { tenant, provider } => {
            let request = pb::GetProviderRequest { tenant, provider };
            admin.get_provider(request).await?.into_inner().provider
        }
        ProvidersCommand::Rm { tenant, provider } => {
            let request = pb::UnregisterProviderRequest {
                tenant: tenant.clone(),
                provider: provider.clone(),
            };
            admin.unregister_provider(request).await?;
            print_line(
                options.json,
                json!({"removed": {"tenant": tenant, "provider": provider}}),
                || format!("removed {tenant}/{provider}"),
            );
            return Ok(());
        }
        ProvidersCommand::Refresh { tenant, provider } => {
            let request = pb::RefreshProviderRequest { tenant, provider };
            admin.refresh_provider(request).await?.into_inner().provider
        }
    };
    if let Some(provider) = provider {
        print_line(options.json, provider_json(&provider), || {
            provider_text(&provider)
        });
    }
    Ok(())
}

/// `keyrelay providers publish`: reads the set and stores it.
async fn publish(
    admin: &mut AdminClient,
    tenant: String,
    provider: String,
    file: &Path,
    as_json: bool,
) -> Result<(), ClientError> {
    let jwks_json = read_document(file)?;
    let request = pb::PublishKeySetRequest {
        tenant,
        provider,
        jwks_json: jwks_json.into(),
    };
    let answer = admin.publish_key_set(request).await?.into_inner();
    if let Some(provider) = answer.provider {
        let mut shown = provider_json(&provider);
        shown["changed"] = json!(answer.changed);
        print_line(as_json, shown, || {
            let verdict = if answer.changed {
                "published"
            } else {
                "unchanged: the set publishes the keys already held"
            };
            format!("{verdict}\n{}", provider_text(&provider))
        });
    }
    Ok(())
}

/// The bytes of `file`, or of standard input for `-`.
fn read_document(file: &Path) -> Result<Vec<u8>, ClientError> {
    let read = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    };
    read.map_err(|source| ClientError::Input {
        path: file.display().to_string(),
        source,
    })
}

pub(super) async fn list(
    admin: &mut AdminClient,
    tenant: String,
    as_json: bool,
) -> Result<(), ClientError> {
    for_each_provider(admin, tenant, |provider| {
        print_line(as_json, provider_json(provider), || {
            provider_summary(provider)
        });
    })
    .await
}

/// Calls `visit` with every provider of `tenant` (every tenant when empty), page by page.
pub(super) async fn for_each_provider(
    admin: &mut AdminClient,
    tenant: String,
    mut visit: impl FnMut(&pb::Provider),
) -> Result<(), ClientError> {
    let mut page_token = String::new();
    loop {
        let request = pb::ListProvidersRequest {
            tenant: tenant.clone(),
            page_size: 0,
            page_token,
        };
        let page = admin.list_providers(request).await?.into_inner();
        page.providers.iter().for_each(&mut visit);
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

pub(super) fn policy_message(policy: &PolicyArgs) -> Result<pb::ProviderPolicy, ClientError> {
    let duration = |d: std::time::Duration| PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    };
    let mut trust_anchors = Vec::new();
    for file in &policy.trust_anchors {
        trust_anchors.extend(certificates(file)?);
    }
    Ok(pb::ProviderPolicy {
        min_ttl: policy.min_ttl.map(duration),
        max_ttl: policy.max_ttl.map(duration),
        default_ttl: policy.default_ttl.map(duration),
        refresh_early: policy.refresh_early.map(duration),
        max_stale: policy.max_stale.map(duration),
        max_response_bytes: policy.max_response_bytes,
        allowed_hosts: policy.allowed_hosts.clone(),
        spki_sha256_pins: policy.spki_sha256_pins.clone(),
        allowed_algorithms: policy.allowed_algorithms.clone(),
        include_encryption_keys: policy.include_encryption_keys,
        require_kid: policy.require_kid,
        trust_anchors,
    })
}

/// The PEM blocks of `file`, one per entry as the API takes them; the whole text when it is
/// not PEM, for the server to say what is wrong with it.
fn certificates(file: &Path) -> Result<Vec<String>, ClientError> {
    let text = std::fs::read_to_string(file).map_err(|source| ClientError::Input {
        path: file.display().to_string(),
        source,
    })?;
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    match pem::parse_many(&text) {
        Ok(blocks) if !blocks.is_empty() => Ok(blocks
            .iter()
            .map(|block| pem::encode_config(block, lf))
            .collect()),
        _ => Ok(vec![text]),
    }
}

/// The subject of a PEM certificate, for `providers get`.
fn subject(pem_text: &str) -> String {
    let der = pem::parse(pem_text).map(|block| block.into_contents());
    der.ok()
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, certificate)| certificate.subject().to_string())
        })
        .unwrap_or_else(|| "(unreadable certificate)".into())
}

pub(super) fn provider_summary(provider: &pb::Provider) -> String {
    let status = provider.status.clone().unwrap_or_default();
    format!(
        "{}/{}\t{}\tversion {}\t{} keys\t{}",
        provider.tenant,
        provider.provider,
        state_name(&status),
        status.version,
        status.key_count,
        source(provider)
    )
}

/// Where a provider's keys come from, in a word or a URL: the JWKS URL (discovered, for one
/// registered by issuer), `(pushed)`, or `(not discovered yet)`.
fn source(provider: &pb::Provider) -> &str {
    match (provider.pushed, provider.jwks_url.as_str()) {
        (true, _) => "(pushed)",
        (false, "") => "(not discovered yet)",
        (false, url) => url,
    }
}

pub(super) fn provider_text(provider: &pb::Provider) -> String {
    let status = provider.status.clone().unwrap_or_default();
    let mut text = format!(
        "{}/{}: {} (version {}, {} keys)\n  url:          {}\n  fetched at:   {}\n  fresh until:  {}\n  usable until: {}\n  next refresh: {}",
        provider.tenant,
        provider.provider,
        state_name(&status),
        status.version,
        status.key_count,
        source(provider),
        time(status.fetched_at.as_ref()),
        time(status.fresh_until.as_ref()),
        time(status.usable_until.as_ref()),
        time(status.next_refresh_at.as_ref()),
    );
    if !status.last_error.is_empty() {
        text.push_str(&format!(
            "\n  last error:   {} ({} failures in a row)",
            status.last_error, status.consecutive_failures
        ));
    }
    if let Some(discovery) = &status.discovery {
        text.push_str(&discovery_text(&provider.issuer, discovery));
    }
    for skipped in &status.skipped_keys {
        let kid = if skipped.kid.is_empty() {
            "(no kid)"
        } else {
            &skipped.kid
        };
        text.push_str(&format!("\n  skipped:      {kid}: {}", skipped.reason));
    }
    let anchors = provider.policy.iter().flat_map(|p| &p.trust_anchors);
    for anchor in anchors {
        text.push_str(&format!("\n  trust anchor: {}", subject(anchor)));
    }
    for revoked in &status.revoked_keys {
        text.push_str(&format!(
            "\n  revoked:      {:?} at {} by {}: {}",
            revoked.kid,
            time(revoked.revoked_at.as_ref()),
            revoked.revoked_by,
            revoked.reason
        ));
    }
    text
}

/// The discovery lines of `providers get`.
fn discovery_text(issuer: &str, discovery: &pb::DiscoveryStatus) -> String {
    let mut text = format!(
        "\n  issuer:       {issuer}\n  discovered:   {} ({}) confirmed at {}, next at {}",
        if discovery.jwks_uri.is_empty() {
            "-"
        } else {
            &discovery.jwks_uri
        },
        if discovery.document.is_empty() {
            "-"
        } else {
            &discovery.document
        },
        time(discovery.confirmed_at.as_ref()),
        time(discovery.next_discovery_at.as_ref()),
    );
    if !discovery.last_error.is_empty() {
        text.push_str(&format!(
            "\n  discovery error: {} ({} failures in a row)",
            discovery.last_error, discovery.consecutive_failures
        ));
    }
    text
}

fn discovery_json(discovery: &pb::DiscoveryStatus) -> Value {
    json!({
        "jwks_uri": discovery.jwks_uri,
        "document": discovery.document,
        "confirmed_at": time(discovery.confirmed_at.as_ref()),
        "fresh_until": time(discovery.fresh_until.as_ref()),
        "next_discovery_at": time(discovery.next_discovery_at.as_ref()),
        "last_attempt_at": time(discovery.last_attempt_at.as_ref()),
        "last_error": discovery.last_error,
        "consecutive_failures": discovery.consecutive_failures,
    })
}

pub(super) fn provider_json(provider: &pb::Provider) -> Value {
    let status = provider.status.clone().unwrap_or_default();
    json!({
        "tenant": provider.tenant,
        "provider": provider.provider,
        "jwks_url": provider.jwks_url,
        "issuer": provider.issuer,
        "pushed": provider.pushed,
        "discovery": status.discovery.as_ref().map(discovery_json),
        "state": state_name(&status),
        "version": status.version,
        "key_count": status.key_count,
        "fetched_at": time(status.fetched_at.as_ref()),
        "fresh_until": time(status.fresh_until.as_ref()),
        "usable_until": time(status.usable_until.as_ref()),
        "next_refresh_at": time(status.next_refresh_at.as_ref()),
        "last_attempt_at": time(status.last_attempt_at.as_ref()),
        "last_error": status.last_error,
        "consecutive_failures": status.consecutive_failures,
        "etag": status.etag,
        "last_modified": status.last_modified,
        "skipped_keys": status
            .skipped_keys
            .iter()
            .map(|skipped| json!({"kid": skipped.kid, "kind": skipped.kind, "reason": skipped.reason}))
            .collect::<Vec<_>>(),
        "key_policy": provider.effective_policy.as_ref().map(|policy| json!({
            "allowed_algorithms": policy.allowed_algorithms,
            "include_encryption_keys": policy.include_encryption_keys,
            "require_kid": policy.require_kid,
            "trust_anchors": policy.trust_anchors,
        })),
        "revoked_keys": status
            .revoked_keys
            .iter()
            .map(|revoked| revoked_key_json(provider, revoked))
            .collect::<Vec<_>>(),
        "created_at": time(provider.created_at.as_ref()),
        "updated_at": time(provider.updated_at.as_ref()),
    })
}
