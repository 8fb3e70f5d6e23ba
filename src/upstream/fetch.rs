//! Fetching one JWKS document over HTTP: conditional requests from the stored validators,
//! a total deadline, the size cap enforced while the body streams in, redirects followed and
//! re-checked hop by hop, the provider's certificate pins, and the response's caching rules
//! read with `http-cache-semantics`.

use std::{
    collections::HashMap,
    error::Error as StdError,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{
    HeaderMap, HeaderValue, StatusCode,
    header::{
        ACCEPT, CACHE_CONTROL, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
        LOCATION, RETRY_AFTER,
    },
};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};
use tracing::{Instrument, Span, field::Empty};
use url::Url;

use crate::{
    domain::{EgressRules, SpkiPin, UpstreamTrust, redacted_url},
    state::CachedResponse,
    state::record::Validators,
    upstream::dns::{GuardedResolver, HostLookup},
    upstream::tls::{UpstreamTlsError, UpstreamTrustRoots},
};

const ACCEPTED_TYPES: &str = "application/jwk-set+json, application/json;q=0.9, */*;q=0.1";

/// Transport settings shared by every fetch.
#[derive(Clone)]
pub struct FetchSettings {
    /// Deadline for the whole exchange, body included.
    pub timeout: Duration,
    /// Deadline for establishing the connection.
    pub connect_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Which URLs and addresses may be fetched from, redirect hops included.
    pub egress: Arc<EgressRules>,
    /// How host names are resolved (the answers are filtered by `egress`).
    pub lookup: Arc<dyn HostLookup>,
    /// The certificates IdPs are verified against.
    pub trust_roots: UpstreamTrustRoots,
}

/// Whether a failed fetch is worth retrying soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (timeouts, 5xx, 429): back off exponentially, at least `after` when given.
    Soon {
        /// The IdP's Retry-After.
        after: Option<Duration>,
    },
    /// Not going to change by retrying quickly (4xx, a rejected document): wait between half
    /// and all of the maximum backoff.
    Later,
}

/// The caching facts of a successful exchange.
#[derive(Debug, Clone)]
pub struct CacheFacts {
    /// Validators to send next time.
    pub validators: Validators,
    /// Remaining freshness by the response's headers; `None` when it sent neither
    /// Cache-Control nor Expires.
    pub lifetime: Option<Duration>,
}

/// A successful exchange.
#[derive(Debug)]
pub enum FetchOutcome {
    /// 200: a (possibly unchanged) document.
    Modified {
        /// The body, at most the size cap.
        body: Bytes,
        /// Caching facts of the response.
        cache: CacheFacts,
    },
    /// 304: the stored document is still current.
    NotModified {
        /// Caching facts merged from the stored response and the 304.
        cache: CacheFacts,
    },
}

/// Why a fetch failed. Messages are written for the provider status an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No connection could be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The exchange did not finish within the deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The body exceeded the size cap; it was not read past the cap.
    #[error("response body exceeds the {limit}-byte limit; aborted")]
    TooLarge {
        /// The cap, in bytes.
        limit: u32,
    },
    /// The IdP answered with an error status.
    #[error("identity provider answered HTTP {code}")]
    Status {
        /// The status code.
        code: u16,
        /// The IdP's Retry-After, when given.
        retry_after: Option<Duration>,
    },
    /// A redirect hop was refused or there were too many.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// The URL itself is not allowed (the egress rules changed since it was registered).
    #[error("URL refused: {0}")]
    Refused(String),
    /// A 304 that does not match the stored response.
    #[error("304 Not Modified does not match the stored response; will fetch it whole")]
    UnmatchedNotModified,
    /// Any other transport failure.
    #[error("request failed: {0}")]
    Transport(String),
}

impl FetchError {
    /// Every `kind`.
    pub const KINDS: [&'static str; 9] = [
        "connect",
        "timeout",
        "too_large",
        "status_5xx",
        "status_4xx",
        "redirect",
        "refused",
        "unmatched_304",
        "transport",
    ];

    /// A short name for metrics and the `error.type` span attribute.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Connect(_) => "connect",
            FetchError::Timeout(_) => "timeout",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Status { code, .. } if *code >= 500 => "status_5xx",
            FetchError::Status { .. } => "status_4xx",
            FetchError::Redirect(_) => "redirect",
            FetchError::Refused(_) => "refused",
            FetchError::UnmatchedNotModified => "unmatched_304",
            FetchError::Transport(_) => "transport",
        }
    }

    /// How soon a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            FetchError::Status { code, retry_after } => {
                let transient = *code >= 500 || *code == 408 || *code == 429;
                if transient {
                    Retry::Soon {
                        after: *retry_after,
                    }
                } else {
                    Retry::Later
                }
            }
            FetchError::TooLarge { .. } | FetchError::Redirect(_) | FetchError::Refused(_) => {
                Retry::Later
            }
            FetchError::Connect(_)
            | FetchError::Timeout(_)
            | FetchError::UnmatchedNotModified
            | FetchError::Transport(_) => Retry::Soon { after: None },
        }
    }
}

/// What one fetch asks for.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The document's URL: a JWKS, or an issuer's metadata.
    pub url: &'a Url,
    /// The provider's hosts and pins, enforced on every hop.
    pub trust: &'a UpstreamTrust,
    /// Validators of the last good response, for a conditional request.
    pub prior: &'a Validators,
    /// The body size cap.
    pub max_bytes: u32,
    /// Now, for the HTTP cache computations.
    pub now: SystemTime,
}

/// Fetching a provider's JWKS: the HTTP `Fetcher`, or a scripted one in unit tests.
#[async_trait]
pub trait Fetch: Send + Sync + 'static {
    /// Fetches what `request` asks for.
    async fn fetch(&self, request: FetchRequest<'_>) -> Result<FetchOutcome, FetchError>;
}

#[async_trait]
impl Fetch for Fetcher {
    async fn fetch(&self, request: FetchRequest<'_>) -> Result<FetchOutcome, FetchError> {
        Fetcher::fetch(self, request).await
    }
}

/// Above this many distinct pin sets, the pinned clients are built afresh.
const MAX_PINNED_CLIENTS: usize = 1024;

/// An HTTP client for JWKS documents.
#[derive(Clone)]
pub struct Fetcher {
    shared: Arc<Shared>,
}

struct Shared {
    settings: FetchSettings,
    unpinned: reqwest::Client,
    /// One client per set of pins: pins live in the TLS configuration, fixed per client.
    pinned: Mutex<HashMap<Vec<SpkiPin>, reqwest::Client>>,
}

impl Fetcher {
    /// Builds the client. Fails only if the TLS backend cannot be initialised.
    pub fn new(settings: &FetchSettings) -> Result<Self, FetchSetupError> {
        Ok(Self {
            shared: Arc::new(Shared {
                unpinned: build_client(settings, &[])?,
                settings: settings.clone(),
                pinned: Mutex::default(),
            }),
        })
    }

    /// The client for `pins`, built on first use.
    fn client(&self, pins: &[SpkiPin]) -> Result<reqwest::Client, FetchError> {
        if pins.is_empty() {
            return Ok(self.shared.unpinned.clone());
        }
        let mut key = pins.to_vec();
        key.sort_unstable();
        let mut pinned = self
            .shared
            .pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = pinned.get(&key) {
            return Ok(client.clone());
        }
        if pinned.len() >= MAX_PINNED_CLIENTS {
            pinned.clear();
        }
        let client = build_client(&self.shared.settings, &key)
            .map_err(|err| FetchError::Transport(err.to_string()))?;
        pinned.insert(key, client.clone());
        Ok(client)
    }

    /// Fetches the URL, revalidating against the prior validators when given, reading at
    /// most the size cap, in an HTTP client span. The provider's trust restricts the hosts of
    /// every hop and pins the TLS keys.
    pub async fn fetch(&self, request: FetchRequest<'_>) -> Result<FetchOutcome, FetchError> {
        let FetchRequest {
            url,
            trust,
            prior,
            max_bytes,
            now,
        } = request;
        let span = client_span(url);
        let timeout = self.shared.settings.timeout;
        let exchange = self.exchange(url, trust, prior, max_bytes, now);
        let result = match self.check_hop(url, trust) {
            Ok(()) => tokio::time::timeout(timeout, exchange)
                .instrument(span.clone())
                .await
                .map_err(|_| FetchError::Timeout(timeout))
                .and_then(|result| result),
            Err(reason) => Err(FetchError::Refused(reason)),
        };
        match &result {
            Ok(FetchOutcome::Modified { body, .. }) => {
                span.record("http.response.status_code", 200);
                span.record("keyrelay.fetch.outcome", "modified");
                span.record("keyrelay.response.bytes", body.len());
            }
            Ok(FetchOutcome::NotModified { .. }) => {
                span.record("http.response.status_code", 304);
                span.record("keyrelay.fetch.outcome", "revalidated");
            }
            Err(err) => {
                if let FetchError::Status { code, .. } = err {
                    span.record("http.response.status_code", code);
                }
                span.record("error.type", err.kind());
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    /// The checks every URL passes before it is requested: the registered one and each hop.
    fn check_hop(&self, url: &Url, trust: &UpstreamTrust) -> Result<(), String> {
        self.shared.settings.egress.check(url)?;
        trust.check(url)
    }

    async fn exchange(
        &self,
        url: &Url,
        trust: &UpstreamTrust,
        prior: &Validators,
        max_bytes: u32,
        now: SystemTime,
    ) -> Result<FetchOutcome, FetchError> {
        let client = self.client(&trust.spki_pins)?;
        let request_headers = conditional_headers(prior);
        let mut response = self
            .follow_redirects(&client, url, trust, &request_headers)
            .await?;
        let request = request_parts(url, request_headers)?;
        let status = response.status();
        let head = response_parts(status, response.headers().clone());
        match status {
            StatusCode::OK => {
                let body = read_capped(&mut response, max_bytes).await?;
                let policy = CachePolicy::new_options(&request, &head, now, cache_options());
                Ok(FetchOutcome::Modified {
                    body,
                    cache: cache_facts(policy, &head.headers, now),
                })
            }
            StatusCode::NOT_MODIFIED => {
                let head = with_validators_we_sent(head, prior);
                let stored = prior
                    .cached_response
                    .as_ref()
                    .ok_or(FetchError::UnmatchedNotModified)?;
                let rebuilt = response_parts(StatusCode::OK, stored.headers());
                let rebuilt = CachePolicy::new_options(&request, &rebuilt, now, cache_options());
                match rebuilt.after_response(&request, &head, now) {
                    AfterResponse::NotModified(policy, _) => Ok(FetchOutcome::NotModified {
                        cache: cache_facts(policy, &stored.updated_by(&head.headers), now),
                    }),
                    AfterResponse::Modified(..) => Err(FetchError::UnmatchedNotModified),
                }
            }
            other => Err(FetchError::Status {
                code: other.as_u16(),
                retry_after: retry_after(response.headers(), now),
            }),
        }
    }
}

impl Fetcher {
    /// Sends the GET and follows redirects itself, so that every hop passes the same checks
    /// as the registered URL (egress rules, the provider's hosts, https when pinned).
    async fn follow_redirects(
        &self,
        client: &reqwest::Client,
        url: &Url,
        trust: &UpstreamTrust,
        headers: &HeaderMap,
    ) -> Result<reqwest::Response, FetchError> {
        let max_redirects = self.shared.settings.max_redirects;
        let mut visited = vec![url.clone()];
        let mut current = url.clone();
        loop {
            let response = client
                .get(current.clone())
                .headers(headers.clone())
                .send()
                .await
                .map_err(classify)?;
            let Some(next) = redirect_target(&response, &current)? else {
                return Ok(response);
            };
            if visited.len() > max_redirects {
                return Err(FetchError::Redirect(format!(
                    "more than {max_redirects} redirects"
                )));
            }
            if visited.contains(&next) {
                return Err(FetchError::Redirect(format!("loop back to {next}")));
            }
            self.check_hop(&next, trust)
                .map_err(|reason| FetchError::Redirect(format!("{next}: {reason}")))?;
            visited.push(next.clone());
            current = next;
        }
    }
}

/// Where a redirect response points, resolved against the URL that answered it.
fn redirect_target(response: &reqwest::Response, current: &Url) -> Result<Option<Url>, FetchError> {
    let status = response.status();
    let followed = [
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::FOUND,
        StatusCode::SEE_OTHER,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ];
    if !followed.contains(&status) {
        return Ok(None);
    }
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| {
            FetchError::Redirect(format!(
                "HTTP {} without a readable Location",
                status.as_u16()
            ))
        })?;
    current
        .join(location)
        .map(Some)
        .map_err(|err| FetchError::Redirect(format!("Location {location:?} is not a URL: {err}")))
}

/// Why the fetcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetchSetupError {
    /// The TLS trust for IdPs could not be set up.
    #[error(transparent)]
    Tls(#[from] UpstreamTlsError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A client resolving through the guarded resolver, following no redirects by itself, and
/// requiring one of `pins` (none when empty) in the TLS handshake.
fn build_client(
    settings: &FetchSettings,
    pins: &[SpkiPin],
) -> Result<reqwest::Client, FetchSetupError> {
    let tls = settings.trust_roots.client_config(pins)?;
    let resolver = GuardedResolver::new(Arc::clone(&settings.lookup), Arc::clone(&settings.egress));
    Ok(reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("keyrelay/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// An HTTP client span per the OpenTelemetry conventions. The URL is recorded without its
/// query string, which may carry secrets.
fn client_span(url: &Url) -> Span {
    tracing::info_span!(
        "GET",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = "GET",
        url.full = redacted_url(url),
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().unwrap_or_default(),
        http.response.status_code = Empty,
        error.type = Empty,
        keyrelay.fetch.outcome = Empty,
        keyrelay.response.bytes = Empty,
    )
}

fn cache_options() -> CacheOptions {
    CacheOptions {
        shared: false,
        ..CacheOptions::default()
    }
}

fn conditional_headers(prior: &Validators) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(ACCEPTED_TYPES));
    let validators = [
        (IF_NONE_MATCH, &prior.etag),
        (IF_MODIFIED_SINCE, &prior.last_modified),
    ];
    for (name, value) in validators {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers
}

fn request_parts(url: &Url, headers: HeaderMap) -> Result<http::request::Parts, FetchError> {
    let uri = http::Uri::try_from(url.as_str())
        .map_err(|err| FetchError::Transport(format!("URL is not a valid HTTP URI: {err}")))?;
    let mut request = http::Request::get(uri)
        .body(())
        .map_err(|err| FetchError::Transport(err.to_string()))?;
    *request.headers_mut() = headers;
    Ok(request.into_parts().0)
}

fn response_parts(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.into_parts().0
}

/// A 304 answers our conditional request, so when it carries no validator of its own
/// (RFC 9110 requires only the ETag, and only when there is one) it confirms the validators
/// we sent. Without this, a Last-Modified-only resource would never revalidate.
fn with_validators_we_sent(
    mut head: http::response::Parts,
    prior: &Validators,
) -> http::response::Parts {
    if head.headers.contains_key(ETAG) || head.headers.contains_key(LAST_MODIFIED) {
        return head;
    }
    let sent = [(ETAG, &prior.etag), (LAST_MODIFIED, &prior.last_modified)];
    for (name, value) in sent {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            head.headers.insert(name, value);
        }
    }
    head
}

fn cache_facts(policy: CachePolicy, headers: &HeaderMap, now: SystemTime) -> CacheFacts {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let has_freshness_headers =
        headers.contains_key(CACHE_CONTROL) || headers.contains_key(EXPIRES);
    CacheFacts {
        lifetime: has_freshness_headers.then(|| policy.time_to_live(now)),
        validators: Validators {
            etag: text(ETAG),
            last_modified: text(LAST_MODIFIED),
            cached_response: Some(CachedResponse::from_headers(headers)),
        },
    }
}

async fn read_capped(
    response: &mut reqwest::Response,
    max_bytes: u32,
) -> Result<Bytes, FetchError> {
    let limit = max_bytes as usize;
    if response
        .content_length()
        .is_some_and(|len| len > u64::from(max_bytes))
    {
        return Err(FetchError::TooLarge { limit: max_bytes });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge { limit: max_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

fn classify(err: reqwest::Error) -> FetchError {
    let detail = error_chain(&err);
    if err.is_connect() {
        FetchError::Connect(detail)
    } else {
        FetchError::Transport(detail)
    }
}

fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_for_the_metrics() {
        let status = |code| FetchError::Status {
            code,
            retry_after: None,
        };
        let errors = [
            FetchError::Connect(String::new()),
            FetchError::Timeout(Duration::ZERO),
            FetchError::TooLarge { limit: 1 },
            status(503),
            status(404),
            FetchError::Redirect(String::new()),
            FetchError::Refused(String::new()),
            FetchError::UnmatchedNotModified,
            FetchError::Transport(String::new()),
        ];
        assert_eq!(errors.map(|e| e.kind()), FetchError::KINDS);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn only_transient_statuses_retry_soon() {
        let status = |code| FetchError::Status {
            code,
            retry_after: None,
        };
        for code in [500, 502, 503, 429, 408] {
            assert_eq!(status(code).retry(), Retry::Soon { after: None }, "{code}");
        }
        for code in [400, 401, 403, 404, 410] {
            assert_eq!(status(code).retry(), Retry::Later, "{code}");
        }
    }

    #[test]
    fn conditional_headers_carry_the_stored_validators() {
        let prior = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            cached_response: None,
        };
        let headers = conditional_headers(&prior);
        assert_eq!(headers[IF_NONE_MATCH], "\"v1\"");
        assert_eq!(headers[IF_MODIFIED_SINCE], "Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(!conditional_headers(&Validators::default()).contains_key(IF_NONE_MATCH));
    }
}
