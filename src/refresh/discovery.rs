//! Discovering where a provider registered by issuer publishes its keys: fetching the
//! issuer's metadata (the document that answered last first, else OpenID Connect Discovery,
//! then RFC 8414's when the first is not published) and how the result changes the provider's
//! discovery state. The last good metadata is kept through every failure.

use rand::Rng;
use url::Url;

use crate::{
    domain::{Issuer, JwksUrl, MetadataDocument, MetadataError, UpstreamTrust},
    refresh::freshness,
    refresh::outcome::Context,
    state::record::{DiscoveredMetadata, Discovery, RefreshStatus, Validators},
    upstream::fetch::{Fetch, FetchError, FetchOutcome, FetchRequest, Retry},
};

/// What one discovery fetched: the document that answered and its outcome, or every
/// document tried with why each failed.
pub type Fetched = Result<(MetadataDocument, FetchOutcome), Vec<(Url, FetchError)>>;

/// What a discovery did, for logs, audit and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryChange {
    /// The metadata names the JWKS URL already in use.
    Confirmed,
    /// The metadata names a JWKS URL other than the one in use (or the first one).
    JwksUri {
        /// The URL used before; `None` on the first discovery.
        previous: Option<JwksUrl>,
    },
    /// The discovery failed; the last good metadata stays.
    Failed {
        /// Why, as the status shows it.
        reason: String,
        /// A short name for metrics: a fetch error kind or a metadata error kind.
        kind: &'static str,
    },
}

/// What a discovery fetch asks for.
pub struct DiscoveryRequest<'a> {
    /// The registered issuer.
    pub issuer: &'a Issuer,
    /// The discovery state, for the document to try first and its validators.
    pub current: &'a Discovery,
    /// The provider's hosts and pins, enforced on every hop.
    pub trust: &'a UpstreamTrust,
    /// The body size cap.
    pub max_bytes: u32,
    /// Now, for the HTTP cache computations.
    pub now: std::time::SystemTime,
}

impl DiscoveryChange {
    /// The metric label of this change.
    pub fn outcome(&self) -> &'static str {
        match self {
            DiscoveryChange::Confirmed => "confirmed",
            DiscoveryChange::JwksUri { .. } => "jwks_uri_changed",
            DiscoveryChange::Failed { kind, .. } => kind,
        }
    }
}

/// Every outcome a discovery is counted under in `keyrelay_discoveries_total`.
pub fn outcomes() -> impl Iterator<Item = &'static str> {
    ["confirmed", "jwks_uri_changed"]
        .into_iter()
        .chain(FetchError::KINDS)
        .chain(MetadataError::KINDS)
}

/// Fetches the issuer's metadata: the document that answered last (revalidated with its
/// validators), and the other one when that answers a 4xx other than 408 or 429.
pub async fn fetch(fetcher: &dyn Fetch, request: DiscoveryRequest<'_>) -> Fetched {
    let first = request
        .current
        .metadata
        .as_ref()
        .map_or(MetadataDocument::OpenidConfiguration, |m| m.document);
    let none = Validators::default();
    let mut tried = Vec::new();
    for (document, prior) in [(first, &request.current.validators), (first.other(), &none)] {
        let url = request.issuer.metadata_url(document);
        let result = fetcher
            .fetch(FetchRequest {
                url: &url,
                trust: request.trust,
                prior,
                max_bytes: request.max_bytes,
                now: request.now,
            })
            .await;
        match result {
            Ok(outcome) => return Ok((document, outcome)),
            Err(err) => {
                let not_published =
                    err.retry() == Retry::Later && matches!(err, FetchError::Status { .. });
                tried.push((url, err));
                if !not_published {
                    break;
                }
            }
        }
    }
    Err(tried)
}

/// The discovery state after `fetched`, and what changed.
pub fn apply<R: Rng>(
    current: &Discovery,
    issuer: &Issuer,
    fetched: Fetched,
    ctx: Context<'_, R>,
) -> (Discovery, DiscoveryChange) {
    let previous = current.metadata.as_ref();
    match fetched {
        Ok((document, FetchOutcome::Modified { body, cache })) => match issuer.jwks_uri(&body) {
            Ok(jwks_uri) => succeed(current, jwks_uri, document, cache, ctx),
            Err(err) => fail(current, err.to_string(), err.kind(), Retry::Later, ctx),
        },
        Ok((document, FetchOutcome::NotModified { cache })) => match previous {
            Some(metadata) if metadata.document == document => {
                let jwks_uri = metadata.jwks_uri.clone();
                succeed(current, jwks_uri, document, cache, ctx)
            }
            _ => {
                let reason = "304 Not Modified but no metadata is stored; will fetch it whole";
                let (mut discovery, change) = fail(
                    current,
                    reason.into(),
                    "unmatched_304",
                    Retry::Soon { after: None },
                    ctx,
                );
                discovery.validators = Validators::default();
                (discovery, change)
            }
        },
        Err(tried) => {
            let reason = tried
                .iter()
                .map(|(url, err)| format!("{url}: {err}"))
                .collect::<Vec<_>>()
                .join("; ");
            let last = tried.last().map(|(_, err)| err);
            let kind = last.map_or("transport", FetchError::kind);
            let retry = last.map_or(Retry::Soon { after: None }, FetchError::retry);
            let (mut discovery, change) = fail(current, reason, kind, retry, ctx);
            if last == Some(&FetchError::UnmatchedNotModified) {
                discovery.validators = Validators::default();
            }
            (discovery, change)
        }
    }
}

fn succeed<R: Rng>(
    current: &Discovery,
    jwks_uri: JwksUrl,
    document: MetadataDocument,
    cache: crate::upstream::fetch::CacheFacts,
    ctx: Context<'_, R>,
) -> (Discovery, DiscoveryChange) {
    let previous = current.metadata.as_ref().map(|m| &m.jwks_uri);
    let change = if previous == Some(&jwks_uri) {
        DiscoveryChange::Confirmed
    } else {
        DiscoveryChange::JwksUri {
            previous: previous.cloned(),
        }
    };
    let lifetime = freshness::lifetime(cache.lifetime, ctx.policy);
    let fresh = freshness::after_success(ctx.now, lifetime, ctx.policy, ctx.rng);
    let discovery = Discovery {
        metadata: Some(DiscoveredMetadata {
            jwks_uri,
            document,
            confirmed_at: ctx.now,
            fresh_until: fresh.fresh_until,
        }),
        validators: cache.validators,
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: None,
            consecutive_failures: 0,
            next_refresh_at: Some(fresh.next_refresh_at),
        },
    };
    (discovery, change)
}

fn fail<R: Rng>(
    current: &Discovery,
    reason: String,
    kind: &'static str,
    retry: Retry,
    ctx: Context<'_, R>,
) -> (Discovery, DiscoveryChange) {
    let failures = current.status.consecutive_failures.saturating_add(1);
    let next = freshness::after_failure(ctx.now, failures, retry, ctx.backoff, ctx.rng);
    let discovery = Discovery {
        metadata: current.metadata.clone(),
        validators: current.validators.clone(),
        status: RefreshStatus {
            last_attempt_at: Some(ctx.now),
            last_error: Some(reason.clone()),
            consecutive_failures: failures,
            next_refresh_at: Some(next),
        },
    };
    (discovery, DiscoveryChange::Failed { reason, kind })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;
    use crate::{
        domain::{EgressRules, documented_defaults},
        refresh::freshness::Backoff,
        upstream::fetch::CacheFacts,
    };

    const BACKOFF: Backoff = Backoff {
        initial: std::time::Duration::from_secs(1),
        max: std::time::Duration::from_secs(300),
    };

    fn issuer() -> Issuer {
        Issuer::parse("https://idp.example.com", &EgressRules::default()).expect("valid")
    }

    fn metadata(jwks_uri: &str) -> Fetched {
        let body = serde_json::json!({"issuer": "https://idp.example.com", "jwks_uri": jwks_uri});
        Ok((
            MetadataDocument::OpenidConfiguration,
            FetchOutcome::Modified {
                body: Bytes::from(body.to_string()),
                cache: facts(Some(3600)),
            },
        ))
    }

    fn facts(max_age: Option<u64>) -> CacheFacts {
        CacheFacts {
            validators: Validators::default(),
            lifetime: max_age.map(std::time::Duration::from_secs),
        }
    }

    fn step(current: &Discovery, fetched: Fetched) -> (Discovery, DiscoveryChange) {
        let policy = documented_defaults();
        let mut rng = StdRng::seed_from_u64(7);
        let ctx = Context {
            now: chrono::Utc::now(),
            policy: &policy,
            backoff: &BACKOFF,
            rng: &mut rng,
        };
        apply(current, &issuer(), fetched, ctx)
    }

    fn jwks_uri(discovery: &Discovery) -> Option<&str> {
        discovery.metadata.as_ref().map(|m| m.jwks_uri.as_str())
    }

    #[test]
    fn the_first_discovery_and_a_changed_jwks_uri_are_changes_a_same_one_is_not() {
        let (first, change) = step(
            &Discovery::default(),
            metadata("https://idp.example.com/k1"),
        );
        assert_eq!(change, DiscoveryChange::JwksUri { previous: None });
        let (same, change) = step(&first, metadata("https://idp.example.com/k1"));
        assert_eq!(change, DiscoveryChange::Confirmed);
        let (moved, change) = step(&same, metadata("https://idp.example.com/k2"));
        let previous = first.metadata.map(|m| m.jwks_uri);
        assert_eq!(change, DiscoveryChange::JwksUri { previous });
        assert_eq!(jwks_uri(&moved), Some("https://idp.example.com/k2"));
    }

    #[test]
    fn freshness_follows_the_cache_headers_within_the_policy() {
        let (discovered, _) = step(&Discovery::default(), metadata("https://idp.example.com/k"));
        let metadata = discovered.metadata.expect("discovered");
        let lifetime = metadata.fresh_until - metadata.confirmed_at;
        assert_eq!(lifetime, chrono::Duration::hours(1));
        let next = discovered.status.next_refresh_at.expect("scheduled");
        assert!(next < metadata.fresh_until && next > metadata.confirmed_at);
    }

    #[test]
    fn a_refused_document_keeps_the_last_good_metadata_and_backs_off() {
        let (good, _) = step(&Discovery::default(), metadata("https://idp.example.com/k"));
        let wrong = serde_json::json!({"issuer": "https://evil.example.com", "jwks_uri": "https://evil.example.com/k"});
        let fetched = Ok((
            MetadataDocument::OpenidConfiguration,
            FetchOutcome::Modified {
                body: Bytes::from(wrong.to_string()),
                cache: facts(None),
            },
        ));
        let (after, change) = step(&good, fetched);
        assert!(matches!(
            change,
            DiscoveryChange::Failed {
                kind: "issuer_mismatch",
                ..
            }
        ));
        assert_eq!(jwks_uri(&after), Some("https://idp.example.com/k"));
        assert_eq!(after.status.consecutive_failures, 1);
        assert!(
            after
                .status
                .last_error
                .expect("error")
                .contains("evil.example.com")
        );
    }

    #[test]
    fn a_failure_names_every_document_tried() {
        let tried = MetadataDocument::ALL
            .map(|document| {
                let err = FetchError::Status {
                    code: 404,
                    retry_after: None,
                };
                (issuer().metadata_url(document), err)
            })
            .to_vec();
        let (after, change) = step(&Discovery::default(), Err(tried));
        assert!(matches!(
            change,
            DiscoveryChange::Failed {
                kind: "status_4xx",
                ..
            }
        ));
        let reason = after.status.last_error.expect("error");
        assert!(
            reason
                .contains("/.well-known/openid-configuration: identity provider answered HTTP 404")
        );
        assert!(reason.contains(
            "/.well-known/oauth-authorization-server: identity provider answered HTTP 404"
        ));
    }

    #[test]
    fn a_304_without_stored_metadata_forgets_the_validators() {
        let current = Discovery {
            validators: Validators {
                etag: Some("\"1\"".into()),
                ..Validators::default()
            },
            ..Discovery::default()
        };
        let fetched = Ok((
            MetadataDocument::OpenidConfiguration,
            FetchOutcome::NotModified { cache: facts(None) },
        ));
        let (after, change) = step(&current, fetched);
        assert!(matches!(
            change,
            DiscoveryChange::Failed {
                kind: "unmatched_304",
                ..
            }
        ));
        assert_eq!(after.validators.etag, None);
    }
}
