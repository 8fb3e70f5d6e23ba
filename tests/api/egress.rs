//! Egress rules at the fetcher: names resolve through an injected resolver (a fixed table),
//! and only addresses the rules permit are connected to. The resolvers answer loopback
//! addresses only, so no test can send a packet off the machine even if a guard were broken;
//! the refusal of private, link-local and metadata addresses is tested as a pure function in
//! `domain::jwks_url` and `dns`.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use keyrelay::{
    domain::{EgressRules, UpstreamTrust},
    state::record::Validators,
    upstream::dns::HostLookup,
    upstream::fetch::{FetchError, FetchOutcome, FetchRequest, FetchSettings, Fetcher},
    upstream::tls::UpstreamTrustRoots,
};
use rustls::pki_types::CertificateDer;

use crate::mock_idp::MockIdp;

/// A resolver answering from a script: each name's answers in turn, the last one repeated.
/// Every answer is a loopback address, so nothing leaves the machine even if a guard broke.
pub struct ScriptedLookup {
    answers: Mutex<HashMap<String, VecDeque<IpAddr>>>,
}

impl ScriptedLookup {
    /// Answers `name` with each address in turn.
    pub fn new(script: &[(&str, &[&str])]) -> Self {
        let answers = script
            .iter()
            .map(|(name, ips)| {
                let ips = ips.iter().map(|ip| ip.parse::<IpAddr>().unwrap());
                for ip in ips.clone() {
                    assert!(
                        ip.is_loopback(),
                        "test resolvers answer loopback only: {ip}"
                    );
                }
                (name.to_string(), ips.collect())
            })
            .collect();
        Self {
            answers: Mutex::new(answers),
        }
    }
}

#[async_trait]
impl HostLookup for ScriptedLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let mut answers = self.answers.lock().unwrap();
        let queue = answers.get_mut(host).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not in the script"),
            )
        })?;
        let answer = if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().copied()
        };
        Ok(answer.into_iter().collect())
    }
}

/// A fetcher with these egress rules, resolving through `lookup`, trusting `extra_roots`.
pub fn fetcher_with(
    rules: EgressRules,
    lookup: Arc<ScriptedLookup>,
    extra_roots: Vec<CertificateDer<'static>>,
) -> Fetcher {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = FetchSettings {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        max_redirects: 3,
        egress: Arc::new(rules),
        lookup,
        trust_roots: UpstreamTrustRoots::new(extra_roots).unwrap(),
    };
    Fetcher::new(&settings).unwrap()
}

fn fetcher(loopback_allowed: bool, table: &[(&str, &[&str])]) -> Fetcher {
    let rules = EgressRules {
        allow_http_and_loopback: loopback_allowed,
        allowed_networks: Vec::new(),
    };
    fetcher_with(rules, Arc::new(ScriptedLookup::new(table)), Vec::new())
}

/// Fetches `url` with no validators and no per-provider restrictions.
pub async fn fetch(fetcher: &Fetcher, url: &str) -> Result<FetchOutcome, FetchError> {
    fetch_with(fetcher, url, &UpstreamTrust::default()).await
}

/// Fetches `url` under the provider restrictions `trust`.
pub async fn fetch_with(
    fetcher: &Fetcher,
    url: &str,
    trust: &UpstreamTrust,
) -> Result<FetchOutcome, FetchError> {
    let url = url::Url::parse(url).unwrap();
    let request = FetchRequest {
        url: &url,
        trust,
        prior: &Validators::default(),
        max_bytes: 64 * 1024,
        now: SystemTime::now(),
    };
    fetcher.fetch(request).await
}

#[tokio::test]
async fn names_resolve_through_the_guarded_resolver() {
    let idp = MockIdp::start(keyrelay::clock::SystemClock).await;
    let fetcher = fetcher(true, &[("idp.test", &["127.0.0.1"])]);
    let fetched = fetch(&fetcher, &format!("http://idp.test:{}/jwks", idp.port())).await;
    assert!(
        matches!(fetched, Ok(FetchOutcome::Modified { .. })),
        "{fetched:?}"
    );
    assert_eq!(idp.request_count(), 1);
}

#[tokio::test]
async fn names_resolving_to_refused_addresses_are_not_connected_to() {
    let idp = MockIdp::start(keyrelay::clock::SystemClock).await;
    let fetcher = fetcher(
        false,
        &[
            ("rebind.test", &["127.0.0.1"]),
            ("other-loopback.test", &["127.0.0.2"]),
            ("v6.test", &["::1"]),
        ],
    );
    for host in ["rebind.test", "other-loopback.test", "v6.test"] {
        let refused = fetch(&fetcher, &format!("https://{host}:{}/jwks", idp.port()))
            .await
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("resolves to no permitted address"),
            "{host}: {message}"
        );
    }
    assert_eq!(idp.request_count(), 0, "nothing was sent");
}

#[tokio::test]
async fn a_stored_url_that_the_rules_no_longer_allow_is_refused() {
    let fetcher = fetcher(false, &[]);
    let refused = fetch(&fetcher, "http://idp.example.com/jwks")
        .await
        .unwrap_err();
    assert!(matches!(refused, FetchError::Refused(_)), "{refused:?}");
    let refused = fetch(&fetcher, "https://10.1.2.3/jwks").await.unwrap_err();
    assert!(
        matches!(refused, FetchError::Refused(ref reason) if reason.contains("not a public address")),
        "{refused:?}"
    );
}
