//! What verifiers see: `keyrelay resolve`, `keyrelay watch` and `keyrelay verify`.

use keyrelay_verifier::{Expectations, Verifier};
use serde_json::{Value, json};

use super::{
    ClientOptions,
    connect::{ClientError, admin_client, client_tls, keys_client},
    output::{print_line, time},
};
use crate::proto::v1 as pb;

/// Runs `keyrelay watch`: prints every event until the server ends the stream.
pub(super) async fn watch(
    options: &ClientOptions,
    tenant: Option<String>,
    provider: Option<String>,
) -> Result<(), ClientError> {
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => all_tenants(options).await?,
    };
    let selectors = tenants
        .into_iter()
        .map(|tenant| pb::WatchSelector {
            tenant,
            provider: provider.clone().unwrap_or_default(),
        })
        .collect();
    let request = pb::WatchKeysRequest {
        selectors,
        known_versions: Vec::new(),
    };
    let mut keys = keys_client(options).await?;
    let mut stream = keys.watch_keys(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::watch_keys_response::Event::KeySet(set)) => {
                print_line(
                    options.json,
                    json!({"event": "key_set", "key_set": key_set_json(&set)}),
                    || key_set_text(&set),
                );
            }
            Some(pb::watch_keys_response::Event::Removed(removed)) => {
                let value = json!({"event": "removed", "tenant": removed.tenant, "provider": removed.provider, "version": removed.version});
                print_line(options.json, value, || {
                    format!(
                        "{}/{} removed (was version {})",
                        removed.tenant, removed.provider, removed.version
                    )
                });
            }
            Some(pb::watch_keys_response::Event::Synced(_)) => {
                print_line(options.json, json!({"event": "synced"}), || {
                    "-- synced: initial state complete --".to_owned()
                });
            }
            None => {}
        }
    }
    Ok(())
}

pub(super) async fn all_tenants(options: &ClientOptions) -> Result<Vec<String>, ClientError> {
    let mut admin = admin_client(options).await?;
    let mut tenants = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListProvidersRequest {
            tenant: String::new(),
            page_size: 1000,
            page_token,
        };
        let page = admin.list_providers(request).await?.into_inner();
        tenants.extend(page.providers.into_iter().map(|p| p.tenant));
        if page.next_page_token.is_empty() {
            return Ok(tenants.into_iter().collect());
        }
        page_token = page.next_page_token;
    }
}

/// Runs `keyrelay verify`.
pub(super) async fn verify(
    options: &ClientOptions,
    tenant: String,
    provider: Option<String>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    token: &str,
) -> Result<(), ClientError> {
    let mut builder = Verifier::builder(options.server.clone(), tenant);
    if let Some(tls) = client_tls(options).await? {
        builder = builder.tls(tls);
    }
    if let Some(token) = &options.access_token {
        builder = builder.access_token(token.clone());
    }
    let mut expected = Expectations::new();
    if let Some(provider) = provider {
        builder = builder.provider(provider.clone());
        expected = expected.provider(provider);
    }
    for issuer in issuers {
        expected = expected.issuer(issuer);
    }
    for audience in audiences {
        expected = expected.audience(audience);
    }
    let verifier = builder.connect().await?;
    let claims: Value = verifier.verify(token, &expected).await?;
    if options.json {
        println!("{claims}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&claims).unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `keyrelay resolve`.
pub(super) async fn resolve(
    options: &ClientOptions,
    tenant: String,
    provider: String,
    kid: Option<String>,
) -> Result<(), ClientError> {
    let mut keys = keys_client(options).await?;
    let request = pb::ResolveRequest {
        tenant,
        provider,
        kid,
        if_newer_than_version: None,
    };
    let response = keys.resolve(request).await?.into_inner();
    if let Some(pb::resolve_response::Result::KeySet(set)) = response.result {
        print_line(options.json, key_set_json(&set), || key_set_text(&set));
    }
    Ok(())
}

pub(super) fn key_set_text(set: &pb::KeySet) -> String {
    let mut text = format!(
        "{}/{} version {}{} (fresh until {})",
        set.tenant,
        set.provider,
        set.version,
        if set.stale { ", STALE" } else { "" },
        time(set.fresh_until.as_ref()),
    );
    for key in &set.keys {
        text.push_str(&format!(
            "\n  kid={} kty={} alg={} use={}",
            key.kid, key.kty, key.alg, key.r#use
        ));
    }
    text
}

pub(super) fn key_set_json(set: &pb::KeySet) -> Value {
    let jwks: Value = serde_json::from_slice(&set.jwks_json).unwrap_or(Value::Null);
    json!({
        "tenant": set.tenant,
        "provider": set.provider,
        "version": set.version,
        "stale": set.stale,
        "fetched_at": time(set.fetched_at.as_ref()),
        "fresh_until": time(set.fresh_until.as_ref()),
        "usable_until": time(set.usable_until.as_ref()),
        "jwks": jwks,
    })
}
