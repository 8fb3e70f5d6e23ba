//! The HTTP JWKS mirror: `GET /v1/jwks/{tenant}/{provider}` serves a provider's sanitized key
//! set the way identity providers do, so any JWT library or proxy that can only read a JWKS
//! URL (Envoy jwt_authn, jose, jwx, nginx) can point at keyrelay and keep working through IdP
//! outages. `GET /v1/jwks/{tenant}` merges the tenant's providers, when their kids do not
//! collide. Strong ETags from the versions, `Cache-Control: max-age` from the remaining
//! freshness, 304 on a matching `If-None-Match`. A tenant that requires a verifier token is
//! served only to `Authorization: Bearer` holders of one (privately cacheable), and looks
//! absent to everyone else.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    access::AccessRegistry,
    api::auth_failures::{AuthFailures, Service},
    clock::Clock,
    core::error::{Error, NoUsableKeys},
    core::providers::Providers,
    domain::{ProviderKey, TenantId},
    state::Snapshot,
    state::record::CurrentKeys,
};

const JWK_SET: &str = "application/jwk-set+json";

/// What the mirror serves from and checks callers against.
#[derive(Clone)]
pub struct Mirror {
    /// The key sets.
    pub providers: Arc<Providers>,
    /// Who may read which tenant.
    pub access: Arc<AccessRegistry>,
    /// Time for token expiry.
    pub clock: Arc<dyn Clock>,
    /// Where failed authentications are reported.
    pub failures: Arc<AuthFailures>,
}

impl Mirror {
    /// Whether the caller presenting `headers` may read `tenant`; `Ok(false)` hides it.
    fn may_read(&self, request: &Parts, tenant: &TenantId) -> Result<bool, Error> {
        let authorization = request
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let caller = self
            .access
            .caller(authorization, self.clock.now())
            .inspect_err(|err| {
                let client = super::http_client_ip(&request.extensions);
                self.failures.failed(Service::Mirror, err.kind(), client);
            })?;
        Ok(self.access.may_read(caller.as_ref(), tenant))
    }

    /// How shared caches may keep `tenant`'s keys: not at all when they need a token.
    fn cacheability(&self, tenant: &TenantId) -> &'static str {
        if self.access.may_read(None, tenant) {
            "public"
        } else {
            "private"
        }
    }
}

/// The mirror's routes, served on the gRPC listener and on the HTTP listener.
pub fn router(mirror: Mirror) -> Router {
    Router::new()
        .route("/v1/jwks/{tenant}/{provider}", get(provider_set))
        .route("/v1/jwks/{tenant}", get(tenant_set))
        .with_state(mirror)
}

/// What a response is built from.
struct Served {
    body: Bytes,
    etag: String,
    fresh_until: DateTime<Utc>,
    at: DateTime<Utc>,
}

async fn provider_set(
    State(mirror): State<Mirror>,
    Path((tenant, provider)): Path<(String, String)>,
    request: Parts,
) -> Response {
    let served = ProviderKey::parse(&tenant, &provider)
        .map_err(Error::from)
        .and_then(|key| {
            if !mirror.may_read(&request, key.tenant())? {
                return Err(Error::ProviderNotFound(key));
            }
            let served = single(&mirror.providers.usable(&key)?)?;
            Ok((served, mirror.cacheability(key.tenant())))
        });
    respond(served, &request.headers)
}

async fn tenant_set(
    State(mirror): State<Mirror>,
    Path(tenant): Path<String>,
    request: Parts,
) -> Response {
    let served = TenantId::parse("tenant", &tenant)
        .map_err(Error::from)
        .and_then(|tenant| {
            if !mirror.may_read(&request, &tenant)? {
                return Err(no_usable_provider(&tenant));
            }
            Ok((
                merged(&mirror.providers, &tenant)?,
                mirror.cacheability(&tenant),
            ))
        });
    respond(served, &request.headers)
}

fn no_usable_provider(tenant: &TenantId) -> Error {
    NoUsableKeys::Tenant(tenant.clone()).into()
}

fn keys_of(snapshot: &Snapshot) -> Result<&CurrentKeys, Error> {
    let key = &snapshot.record.registration.key;
    snapshot.record.keys.as_ref().ok_or_else(|| {
        let key = key.clone();
        NoUsableKeys::NotFetched {
            key,
            last_error: None,
        }
        .into()
    })
}

/// The registration revision makes tags unique across an unregister and a re-register, whose
/// versions start again at 1.
fn tag_part(snapshot: &Snapshot, keys: &CurrentKeys) -> String {
    format!(
        "{:x}-{}",
        snapshot.record.registration.revision, keys.version
    )
}

fn single(snapshot: &Snapshot) -> Result<Served, Error> {
    let keys = keys_of(snapshot)?;
    Ok(Served {
        body: keys.document.json().clone(),
        etag: format!("\"{}\"", tag_part(snapshot, keys)),
        fresh_until: keys.fresh_until,
        at: snapshot.at,
    })
}

/// The union of the tenant's usable key sets. Refused when two providers publish the same kid:
/// a verifier choosing by kid could not tell them apart.
fn merged(providers: &Providers, tenant: &TenantId) -> Result<Served, Error> {
    let snapshots: Vec<Snapshot> = providers
        .list(Some(tenant), None, usize::MAX)
        .providers
        .into_iter()
        .filter_map(|listed| providers.usable(&listed.record.registration.key).ok())
        .collect();
    if snapshots.is_empty() {
        return Err(no_usable_provider(tenant));
    }
    let mut kids = HashSet::new();
    let mut keys: Vec<Value> = Vec::new();
    let mut tag = Sha256::new();
    let mut fresh_until = DateTime::<Utc>::MAX_UTC;
    for snapshot in &snapshots {
        let current = keys_of(snapshot)?;
        for key in current.document.keys() {
            if let Some(kid) = &key.kid
                && !kids.insert(kid.clone())
            {
                return Err(Error::KidCollision {
                    tenant: tenant.clone(),
                    kid: kid.clone(),
                });
            }
            keys.push(serde_json::from_slice(&key.json).unwrap_or(Value::Null));
        }
        tag.update(snapshot.record.registration.key.to_string());
        tag.update(tag_part(snapshot, current));
        fresh_until = fresh_until.min(current.fresh_until);
    }
    let digest = tag.finalize();
    Ok(Served {
        body: Bytes::from(json!({ "keys": keys }).to_string()),
        etag: format!("\"{}\"", hex(&digest[..12])),
        fresh_until,
        at: snapshots[0].at,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn respond(served: Result<(Served, &str), Error>, request: &HeaderMap) -> Response {
    let (served, cacheability) = match served {
        Ok(served) => served,
        Err(err) => {
            let body = json!({ "error": err.to_string() }).to_string();
            let status = super::status::http_status(err.kind());
            let mut response =
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    let max_age = (served.fresh_until - served.at).num_seconds().max(0);
    let mut headers = HeaderMap::new();
    let cache_control = format!("{cacheability}, max-age={max_age}");
    for (name, value) in [
        (header::ETAG, served.etag.as_str()),
        (header::CACHE_CONTROL, &cache_control),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if matches_if_none_match(request, &served.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JWK_SET));
    (StatusCode::OK, headers, served.body).into_response()
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2): `W/"x"` matches `"x"`.
fn matches_if_none_match(request: &HeaderMap, etag: &str) -> bool {
    let tags = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    let ours = etag.trim_start_matches("W/");
    tags.into_iter()
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, value.parse().unwrap());
        headers
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let etag = "\"7b-3\"";
        assert!(matches_if_none_match(&with("\"7b-3\""), etag));
        assert!(matches_if_none_match(&with("W/\"7b-3\""), etag));
        assert!(matches_if_none_match(&with("\"x\", \"7b-3\""), etag));
        assert!(matches_if_none_match(&with("*"), etag));
        assert!(!matches_if_none_match(&with("\"7b-2\""), etag));
        assert!(!matches_if_none_match(&HeaderMap::new(), etag));
    }
}
