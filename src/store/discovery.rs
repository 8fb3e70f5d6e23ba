//! The `discovery` column: what discovery learnt of an issuer (the JWKS URL its metadata
//! names, the metadata's validators) and how its latest attempts went, as JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    domain::{JwksUrl, MetadataDocument},
    state::CachedResponse,
    state::record::{DiscoveredMetadata, Discovery, RefreshStatus, Validators},
};

#[derive(Serialize, Deserialize)]
struct StoredDiscovery {
    metadata: Option<StoredMetadata>,
    etag: Option<String>,
    last_modified: Option<String>,
    cache_policy: Option<CachedResponse>,
    status: StoredStatus,
}

#[derive(Serialize, Deserialize)]
struct StoredMetadata {
    jwks_uri: String,
    document: MetadataDocument,
    confirmed_at: DateTime<Utc>,
    fresh_until: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct StoredStatus {
    last_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    consecutive_failures: u32,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// `discovery` as the column stores it.
pub(super) fn to_json(discovery: &Discovery) -> Result<String, String> {
    let stored = StoredDiscovery {
        metadata: discovery.metadata.as_ref().map(|m| StoredMetadata {
            jwks_uri: m.jwks_uri.as_str().to_owned(),
            document: m.document,
            confirmed_at: m.confirmed_at,
            fresh_until: m.fresh_until,
        }),
        etag: discovery.validators.etag.clone(),
        last_modified: discovery.validators.last_modified.clone(),
        cache_policy: discovery.validators.cached_response.clone(),
        status: StoredStatus {
            last_attempt_at: discovery.status.last_attempt_at,
            last_error: discovery.status.last_error.clone(),
            consecutive_failures: discovery.status.consecutive_failures,
            next_attempt_at: discovery.status.next_refresh_at,
        },
    };
    serde_json::to_string(&stored).map_err(|err| format!("discovery: {err}"))
}

/// The discovery state the column holds; the reason when it cannot be read.
pub(super) fn from_json(json: &str) -> Result<Discovery, String> {
    let stored: StoredDiscovery =
        serde_json::from_str(json).map_err(|err| format!("discovery: {err}"))?;
    let metadata = stored
        .metadata
        .map(|m| {
            let jwks_uri = JwksUrl::parse_stored(&m.jwks_uri)
                .map_err(|err| format!("discovery: jwks_uri: {err}"))?;
            Ok::<_, String>(DiscoveredMetadata {
                jwks_uri,
                document: m.document,
                confirmed_at: m.confirmed_at,
                fresh_until: m.fresh_until,
            })
        })
        .transpose()?;
    Ok(Discovery {
        metadata,
        validators: Validators {
            etag: stored.etag,
            last_modified: stored.last_modified,
            cached_response: stored.cache_policy,
        },
        status: RefreshStatus {
            last_attempt_at: stored.status.last_attempt_at,
            last_error: stored.status.last_error,
            consecutive_failures: stored.status.consecutive_failures,
            next_refresh_at: stored.status.next_attempt_at,
        },
    })
}
