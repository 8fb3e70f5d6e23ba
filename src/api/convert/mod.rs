//! Conversions between protobuf messages and domain values, shared by the gRPC handlers
//! and the WatchKeys stream.

mod access;

pub use access::{audit_event, optional_tenant, tenant_access, token, token_request};

use std::time::Duration;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{
    cluster::ClusterStatus,
    domain::{
        EgressRules, Issuer, JwksUrl, KeyPolicy, KeySource, MetadataDocument, Policy,
        PolicyOverrides, ProviderKey, TrustAnchor, UpstreamTrust, ValidationError,
    },
    proto::v1 as pb,
    state::Snapshot,
    state::record::{CurrentKeys, Discovery, ProviderState, Registration},
    store::NewRegistration,
};

/// `0001-01-01T00:00:00Z`, the earliest instant a `google.protobuf.Timestamp` may carry.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// `9999-12-31T23:59:59Z`, the latest second a `google.protobuf.Timestamp` may carry.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// `at` on the wire, clamped into the range `google.protobuf.Timestamp` documents (clients
/// such as Python's `json_format` refuse anything outside it).
pub(crate) fn timestamp(at: DateTime<Utc>) -> Timestamp {
    let seconds = at.timestamp();
    if seconds > MAX_TIMESTAMP_SECONDS {
        return Timestamp {
            seconds: MAX_TIMESTAMP_SECONDS,
            nanos: 999_999_999,
        };
    }
    Timestamp {
        seconds: seconds.max(MIN_TIMESTAMP_SECONDS),
        nanos: i32::try_from(at.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0),
    }
}

fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

fn parse_duration(
    field: &'static str,
    value: Option<prost_types::Duration>,
) -> Result<Option<Duration>, ValidationError> {
    value
        .map(|d| {
            Duration::try_from(d).map_err(|_| ValidationError::new(field, "must not be negative"))
        })
        .transpose()
}

/// A registration request parsed into domain values: identifiers, where the keys come from
/// (exactly one of a JWKS URL or an issuer under the egress rules, or pushed), the policy, and
/// the URL against the policy's hosts and pins.
pub fn new_registration(
    request: pb::RegisterProviderRequest,
    egress: &EgressRules,
) -> Result<NewRegistration, ValidationError> {
    let key = ProviderKey::parse(&request.tenant, &request.provider)?;
    let source = key_source(&request, egress)?;
    let overrides = policy_overrides(request.policy)?;
    let checked = match &source {
        KeySource::JwksUrl(url) => Some(("jwks_url", url.as_url().clone())),
        KeySource::Issuer(issuer) => Some((
            "issuer",
            issuer.metadata_url(MetadataDocument::OpenidConfiguration),
        )),
        KeySource::Pushed => None,
    };
    match checked {
        Some((field, url)) => overrides
            .trust
            .check(&url)
            .map_err(|reason| ValidationError::new(field, reason))?,
        None if overrides.trust != UpstreamTrust::default() => {
            return Err(ValidationError::new(
                "policy",
                "allowed_hosts and spki_sha256_pins restrict fetches; a pushed provider fetches nothing",
            ));
        }
        None => {}
    }
    Ok(NewRegistration {
        key,
        source,
        overrides,
    })
}

/// Where a registration request says the keys come from: exactly one of `jwks_url`, `issuer`
/// and `pushed`.
fn key_source(
    request: &pb::RegisterProviderRequest,
    egress: &EgressRules,
) -> Result<KeySource, ValidationError> {
    const FIELDS: &str = "jwks_url, issuer, pushed";
    let given = [
        !request.jwks_url.is_empty(),
        !request.issuer.is_empty(),
        request.pushed,
    ];
    match given {
        [true, false, false] => Ok(KeySource::JwksUrl(JwksUrl::parse(
            &request.jwks_url,
            egress,
        )?)),
        [false, true, false] => Ok(KeySource::Issuer(Issuer::parse(&request.issuer, egress)?)),
        [false, false, true] => Ok(KeySource::Pushed),
        [false, false, false] => Err(ValidationError::new(
            FIELDS,
            "give one of them: the JWKS URL, the issuer to discover it from, or pushed for key sets published with PublishKeySet",
        )),
        _ => Err(ValidationError::new(FIELDS, "give only one of them")),
    }
}

/// The overrides of a registration request.
fn policy_overrides(
    policy: Option<pb::ProviderPolicy>,
) -> Result<PolicyOverrides, ValidationError> {
    let policy = policy.unwrap_or_default();
    Ok(PolicyOverrides {
        min_ttl: parse_duration("policy.min_ttl", policy.min_ttl)?,
        max_ttl: parse_duration("policy.max_ttl", policy.max_ttl)?,
        default_ttl: parse_duration("policy.default_ttl", policy.default_ttl)?,
        refresh_early: parse_duration("policy.refresh_early", policy.refresh_early)?,
        max_stale: parse_duration("policy.max_stale", policy.max_stale)?,
        max_response_bytes: policy.max_response_bytes,
        trust: UpstreamTrust::parse(&policy.allowed_hosts, &policy.spki_sha256_pins)?,
        keys: KeyPolicy::parse(
            &policy.allowed_algorithms,
            policy.include_encryption_keys,
            policy.require_kid,
            &policy.trust_anchors,
        )?,
    })
}

fn overrides_message(overrides: &PolicyOverrides) -> pb::ProviderPolicy {
    pb::ProviderPolicy {
        min_ttl: overrides.min_ttl.map(duration),
        max_ttl: overrides.max_ttl.map(duration),
        default_ttl: overrides.default_ttl.map(duration),
        refresh_early: overrides.refresh_early.map(duration),
        max_stale: overrides.max_stale.map(duration),
        max_response_bytes: overrides.max_response_bytes,
        allowed_algorithms: overrides.keys.allowed_algorithms.clone(),
        include_encryption_keys: overrides.keys.include_encryption_keys,
        require_kid: overrides.keys.require_kid,
        trust_anchors: trust_anchors(&overrides.keys),
        ..trust_message(&overrides.trust)
    }
}

fn trust_anchors(keys: &KeyPolicy) -> Vec<String> {
    keys.trust_anchors.iter().map(TrustAnchor::to_pem).collect()
}

fn trust_message(trust: &UpstreamTrust) -> pb::ProviderPolicy {
    pb::ProviderPolicy {
        allowed_hosts: trust
            .allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect(),
        spki_sha256_pins: trust.spki_pins.iter().map(ToString::to_string).collect(),
        ..pb::ProviderPolicy::default()
    }
}

/// The policy in force: `policy` with the provider's upstream trust and key policy, which
/// have no server default.
fn policy_message(policy: &Policy, overrides: &PolicyOverrides) -> pb::ProviderPolicy {
    pb::ProviderPolicy {
        min_ttl: Some(duration(policy.min_ttl)),
        max_ttl: Some(duration(policy.max_ttl)),
        default_ttl: Some(duration(policy.default_ttl)),
        refresh_early: Some(duration(policy.refresh_early)),
        max_stale: Some(duration(policy.max_stale)),
        max_response_bytes: Some(policy.max_response_bytes),
        allowed_algorithms: overrides.keys.algorithms_in_force(),
        include_encryption_keys: overrides.keys.include_encryption_keys,
        require_kid: overrides.keys.require_kid,
        trust_anchors: trust_anchors(&overrides.keys),
        ..trust_message(&overrides.trust)
    }
}

fn state(state: ProviderState) -> pb::ProviderState {
    match state {
        ProviderState::Pending => pb::ProviderState::Pending,
        ProviderState::Ready => pb::ProviderState::Ready,
        ProviderState::Stale => pb::ProviderState::Stale,
        ProviderState::Failing => pb::ProviderState::Failing,
    }
}

/// A registration with its status.
pub(crate) fn provider(snapshot: &Snapshot) -> pb::Provider {
    let record = &snapshot.record;
    let registration = &record.registration;
    let keys = record.keys.as_ref();
    let status = pb::ProviderStatus {
        state: state(record.state(snapshot.at)).into(),
        version: keys.map_or(0, |k| k.version),
        fetched_at: keys.map(|k| timestamp(k.fetched_at)),
        fresh_until: keys.map(|k| timestamp(k.fresh_until)),
        next_refresh_at: record.status.next_refresh_at.map(timestamp),
        last_error: record.status.last_error.clone().unwrap_or_default(),
        consecutive_failures: record.status.consecutive_failures,
        etag: record.validators.etag.clone().unwrap_or_default(),
        last_modified: record.validators.last_modified.clone().unwrap_or_default(),
        last_attempt_at: record.status.last_attempt_at.map(timestamp),
        key_count: keys.map_or(0, |k| {
            u32::try_from(k.document.keys().len()).unwrap_or(u32::MAX)
        }),
        usable_until: keys.map(|k| timestamp(k.usable_until(&snapshot.policy))),
        skipped_keys: record
            .skipped_keys()
            .into_iter()
            .map(|skipped| pb::SkippedKey {
                kind: skipped.reason.kind().to_owned(),
                reason: skipped.reason.to_string(),
                kid: skipped.kid.unwrap_or_default(),
            })
            .collect(),
        revoked_keys: registration
            .revoked
            .keys()
            .iter()
            .map(|revoked| pb::RevokedKey {
                kid: revoked.kid.clone(),
                reason: revoked.reason.clone(),
                revoked_at: Some(timestamp(revoked.revoked_at)),
                revoked_by: revoked.revoked_by.clone(),
                published_by_provider: keys.is_some_and(|k| k.fetched.contains_kid(&revoked.kid)),
            })
            .collect(),
        discovery: record.discovery.as_deref().map(discovery_status),
    };
    pb::Provider {
        tenant: registration.key.tenant().as_str().to_owned(),
        provider: registration.key.provider().as_str().to_owned(),
        jwks_url: record
            .jwks_url()
            .map(ToString::to_string)
            .unwrap_or_default(),
        issuer: issuer(registration).unwrap_or_default(),
        pushed: !registration.source.is_fetched(),
        policy: Some(overrides_message(&registration.overrides)),
        effective_policy: Some(policy_message(&snapshot.policy, &registration.overrides)),
        status: Some(status),
        created_at: Some(timestamp(registration.created_at)),
        updated_at: Some(timestamp(registration.updated_at)),
    }
}

/// The discovery part of a provider's status.
fn discovery_status(discovery: &Discovery) -> pb::DiscoveryStatus {
    let metadata = discovery.metadata.as_ref();
    pb::DiscoveryStatus {
        jwks_uri: metadata.map(|m| m.jwks_uri.to_string()).unwrap_or_default(),
        document: metadata
            .map(|m| m.document.as_str().to_owned())
            .unwrap_or_default(),
        confirmed_at: metadata.map(|m| timestamp(m.confirmed_at)),
        fresh_until: metadata.map(|m| timestamp(m.fresh_until)),
        next_discovery_at: discovery.status.next_refresh_at.map(timestamp),
        last_error: discovery.status.last_error.clone().unwrap_or_default(),
        consecutive_failures: discovery.status.consecutive_failures,
        last_attempt_at: discovery.status.last_attempt_at.map(timestamp),
    }
}

/// The registered issuer, as sent to verifiers and admins.
fn issuer(registration: &Registration) -> Option<String> {
    registration
        .source
        .issuer()
        .map(|issuer| issuer.as_str().to_owned())
}

/// The key set of a snapshot known to hold keys.
pub(crate) fn key_set(snapshot: &Snapshot, keys: &CurrentKeys) -> pb::KeySet {
    let key = &snapshot.record.registration.key;
    pb::KeySet {
        tenant: key.tenant().as_str().to_owned(),
        provider: key.provider().as_str().to_owned(),
        version: keys.version,
        jwks_json: keys.document.json().clone(),
        keys: keys
            .document
            .keys()
            .iter()
            .map(|k| pb::Key {
                kid: k.kid.clone().unwrap_or_default(),
                kty: k.kty.to_string(),
                alg: k.alg.as_deref().unwrap_or_default().to_owned(),
                r#use: k.key_use.as_deref().unwrap_or_default().to_owned(),
                jwk_json: k.json.clone(),
            })
            .collect(),
        fetched_at: Some(timestamp(keys.fetched_at)),
        fresh_until: Some(timestamp(keys.fresh_until)),
        stale: keys.is_stale(snapshot.at),
        usable_until: Some(timestamp(keys.usable_until(&snapshot.policy))),
        state: state(snapshot.record.state(snapshot.at)).into(),
        revoked_kids: snapshot
            .record
            .registration
            .revoked
            .keys()
            .iter()
            .map(|revoked| revoked.kid.clone())
            .collect(),
        issuer: issuer(&snapshot.record.registration).unwrap_or_default(),
    }
}

/// The fleet as reported by GetClusterStatus; `now` decides which leases are active.
pub(crate) fn cluster_status(
    status: &ClusterStatus,
    now: DateTime<Utc>,
) -> pb::GetClusterStatusResponse {
    #[allow(deprecated)]
    pb::GetClusterStatusResponse {
        replica_id: status.replica_id.clone(),
        store: status.store.to_owned(),
        single_node: status.single_node,
        lease: None,
        shards: status
            .shards
            .iter()
            .map(|lease| pb::Lease {
                holder: lease.holder.clone(),
                term: u64::try_from(lease.term).unwrap_or_default(),
                expires_at: Some(timestamp(lease.expires_at)),
                active: lease.expires_at > now,
                shard: lease.shard,
            })
            .collect(),
        shard_count: status.shard_count,
        replicas: status
            .replicas
            .iter()
            .map(|replica| {
                let shards_owned = status.shards_of(&replica.id, now).len();
                pb::Replica {
                    id: replica.id.clone(),
                    address: replica.address.clone(),
                    started_at: Some(timestamp(replica.started_at)),
                    heartbeat_at: Some(timestamp(replica.heartbeat_at)),
                    leader: status.single_node || shards_owned > 0,
                    shards_owned: u32::try_from(shards_owned).unwrap_or(u32::MAX),
                }
            })
            .collect(),
    }
}
