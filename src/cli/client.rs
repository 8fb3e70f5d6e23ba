//! The command-line client: `keyrelay providers ...`, `keyrelay resolve` and the rest,
//! printing text for people or JSON with `--json`.

mod access;

pub use access::{audit, tenant_access, tokens};

use std::{io, path::Path};

use chrono::DateTime;
use prost_types::{Duration as PbDuration, Timestamp};
use serde_json::{Value, json};
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use keyrelay_verifier::{Expectations, Verifier};

use crate::{
    access::admin_token::AdminToken,
    cli::{ClientOptions, PolicyArgs, ProvidersCommand},
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient,
    },
};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server is unreachable.
    #[error("cannot reach keyrelay at {server}: {source}")]
    Connect {
        /// The address.
        server: String,
        /// The transport failure.
        source: tonic::transport::Error,
    },
    /// The server address or the TLS settings are unusable.
    #[error(transparent)]
    Endpoint(#[from] keyrelay_verifier::ConnectError),
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// The I/O failure.
        source: io::Error,
    },
    /// No admin token could be found.
    #[error(
        "no admin token: pass --admin-token, set KEYRELAY_ADMIN_TOKEN, or point --data-dir at the server's data directory ({path}: {source})"
    )]
    NoToken {
        /// Where the token file was looked for.
        path: String,
        /// Why it could not be read.
        source: io::Error,
    },
    /// The admin token has characters that cannot go in metadata.
    #[error("the admin token is not valid metadata: {0}")]
    BadToken(#[from] InvalidMetadataValue),
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Call(#[from] Status),
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;
type KeysClient = KeyServiceClient<InterceptedService<Channel, BearerToken>>;

async fn connect(options: &ClientOptions) -> Result<Channel, ClientError> {
    keyrelay_verifier::endpoint(options.server.clone(), client_tls(options).await?)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            server: options.server.clone(),
            source,
        })
}

/// TLS settings from `--ca-cert`, `--client-cert` and `--client-key`; none without them.
async fn client_tls(options: &ClientOptions) -> Result<Option<ClientTlsConfig>, ClientError> {
    if options.ca_cert.is_none() && options.client_cert.is_none() {
        return Ok(None);
    }
    let tls = match &options.ca_cert {
        Some(path) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path).await?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let tls = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            tls.identity(Identity::from_pem(read(cert).await?, read(key).await?))
        }
        _ => tls,
    };
    Ok(Some(tls))
}

async fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ClientError::TlsFile {
            path: path.display().to_string(),
            source,
        })
}

/// An AdminService client sending the admin token.
async fn admin_client(options: &ClientOptions) -> Result<AdminClient, ClientError> {
    let token = admin_token(options)?;
    let bearer = BearerToken(Some(format!("Bearer {}", token.expose()).parse()?));
    Ok(AdminServiceClient::with_interceptor(
        connect(options).await?,
        bearer,
    ))
}

/// A KeyService client sending the access token, if one is given.
async fn keys_client(options: &ClientOptions) -> Result<KeysClient, ClientError> {
    let bearer = options
        .access_token
        .as_deref()
        .map(|token| format!("Bearer {token}").parse())
        .transpose()?;
    Ok(KeyServiceClient::with_interceptor(
        connect(options).await?,
        BearerToken(bearer),
    ))
}

fn admin_token(options: &ClientOptions) -> Result<AdminToken, ClientError> {
    if let Some(token) = options.admin_token.as_deref().and_then(AdminToken::new) {
        return Ok(token);
    }
    AdminToken::read_from(&options.data_dir).map_err(|source| ClientError::NoToken {
        path: AdminToken::path_in(&options.data_dir).display().to_string(),
        source,
    })
}

/// Runs `keyrelay providers <action>`.
pub async fn providers(
    options: &ClientOptions,
    action: ProvidersCommand,
) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let provider = match action {
        ProvidersCommand::Add {
            tenant,
            provider,
            jwks_url,
            policy,
        } => {
            let request = pb::RegisterProviderRequest {
                tenant,
                provider,
                jwks_url,
                policy: Some(policy_message(&policy)),
            };
            admin
                .register_provider(request)
                .await?
                .into_inner()
                .provider
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

async fn list(admin: &mut AdminClient, tenant: String, as_json: bool) -> Result<(), ClientError> {
    let mut page_token = String::new();
    loop {
        let request = pb::ListProvidersRequest {
            tenant: tenant.clone(),
            page_size: 0,
            page_token,
        };
        let page = admin.list_providers(request).await?.into_inner();
        for provider in &page.providers {
            print_line(as_json, provider_json(provider), || {
                provider_summary(provider)
            });
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// Runs `keyrelay health`.
pub async fn health(options: &ClientOptions) -> Result<(), ClientError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(connect(options).await?);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        Err(ClientError::Call(Status::unavailable(format!(
            "health is {}",
            status.as_str_name()
        ))))
    }
}

/// Runs `keyrelay cluster`.
pub async fn cluster(options: &ClientOptions) -> Result<(), ClientError> {
    let mut admin = admin_client(options).await?;
    let status = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await?
        .into_inner();
    print_line(options.json, cluster_json(&status), || {
        cluster_text(&status)
    });
    Ok(())
}

/// Runs `keyrelay watch`: prints every event until the server ends the stream.
pub async fn watch(
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

async fn all_tenants(options: &ClientOptions) -> Result<Vec<String>, ClientError> {
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

/// The claims of a verified token, or why it was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The verifier could not reach keyrelay.
    #[error(transparent)]
    Connect(#[from] keyrelay_verifier::ConnectError),
    /// The connection settings are unusable.
    #[error(transparent)]
    Options(#[from] ClientError),
    /// The token was refused.
    #[error("token refused: {0}")]
    Refused(#[from] keyrelay_verifier::VerifyError),
}

/// Runs `keyrelay verify`.
pub async fn verify(
    options: &ClientOptions,
    tenant: String,
    provider: Option<String>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    token: &str,
) -> Result<(), VerifyFailure> {
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
pub async fn resolve(
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

fn print_line(as_json: bool, value: Value, text: impl FnOnce() -> String) {
    if as_json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn policy_message(policy: &PolicyArgs) -> pb::ProviderPolicy {
    let duration = |d: std::time::Duration| PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    };
    pb::ProviderPolicy {
        min_ttl: policy.min_ttl.map(duration),
        max_ttl: policy.max_ttl.map(duration),
        default_ttl: policy.default_ttl.map(duration),
        refresh_early: policy.refresh_early.map(duration),
        max_stale: policy.max_stale.map(duration),
        max_response_bytes: policy.max_response_bytes,
        allowed_hosts: policy.allowed_hosts.clone(),
        spki_sha256_pins: policy.spki_sha256_pins.clone(),
    }
}

fn time(at: Option<&Timestamp>) -> String {
    at.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
}

fn state_name(status: &pb::ProviderStatus) -> &'static str {
    match status.state() {
        pb::ProviderState::Unspecified => "UNSPECIFIED",
        pb::ProviderState::Pending => "PENDING",
        pb::ProviderState::Ready => "READY",
        pb::ProviderState::Stale => "STALE",
        pb::ProviderState::Failing => "FAILING",
    }
}

fn provider_summary(provider: &pb::Provider) -> String {
    let status = provider.status.clone().unwrap_or_default();
    format!(
        "{}/{}\t{}\tversion {}\t{} keys\t{}",
        provider.tenant,
        provider.provider,
        state_name(&status),
        status.version,
        status.key_count,
        provider.jwks_url
    )
}

fn provider_text(provider: &pb::Provider) -> String {
    let status = provider.status.clone().unwrap_or_default();
    let mut text = format!(
        "{}/{}: {} (version {}, {} keys)\n  url:          {}\n  fetched at:   {}\n  fresh until:  {}\n  usable until: {}\n  next refresh: {}",
        provider.tenant,
        provider.provider,
        state_name(&status),
        status.version,
        status.key_count,
        provider.jwks_url,
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
    text
}

fn provider_json(provider: &pb::Provider) -> Value {
    let status = provider.status.clone().unwrap_or_default();
    json!({
        "tenant": provider.tenant,
        "provider": provider.provider,
        "jwks_url": provider.jwks_url,
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
        "created_at": time(provider.created_at.as_ref()),
        "updated_at": time(provider.updated_at.as_ref()),
    })
}

fn key_set_text(set: &pb::KeySet) -> String {
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

fn key_set_json(set: &pb::KeySet) -> Value {
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

fn cluster_text(status: &pb::GetClusterStatusResponse) -> String {
    let lease = match &status.lease {
        Some(lease) if lease.active => format!(
            "leader {} (term {}, lease until {})",
            lease.holder,
            lease.term,
            time(lease.expires_at.as_ref())
        ),
        Some(lease) => format!(
            "no active leader (last: {} term {})",
            lease.holder, lease.term
        ),
        None if status.single_node => "single node, leading without a lease".to_owned(),
        None => "no leader yet".to_owned(),
    };
    let mut text = format!(
        "{} store, answered by {}: {lease}",
        status.store, status.replica_id
    );
    for replica in &status.replicas {
        text.push_str(&format!(
            "\n  {}{}\t{}\theartbeat {}",
            replica.id,
            if replica.leader { " (leader)" } else { "" },
            replica.address,
            time(replica.heartbeat_at.as_ref())
        ));
    }
    text
}

fn cluster_json(status: &pb::GetClusterStatusResponse) -> Value {
    json!({
        "replica_id": status.replica_id,
        "store": status.store,
        "single_node": status.single_node,
        "lease": status.lease.as_ref().map(|lease| json!({
            "holder": lease.holder,
            "term": lease.term,
            "expires_at": time(lease.expires_at.as_ref()),
            "active": lease.active,
        })),
        "replicas": status.replicas.iter().map(|replica| json!({
            "id": replica.id,
            "address": replica.address,
            "leader": replica.leader,
            "started_at": time(replica.started_at.as_ref()),
            "heartbeat_at": time(replica.heartbeat_at.as_ref()),
        })).collect::<Vec<_>>(),
    })
}
