//! Egress rules at the fetcher: names resolve through an injected resolver (a fixed table),
//! and only addresses the rules permit are connected to. Every address these tests may reach
//! is on loopback; the refused ones are never connected to.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use keyrelay::{
    dns::HostLookup,
    domain::{EgressRules, JwksUrl},
    fetch::{FetchError, FetchOutcome, FetchSettings, Fetcher, Validators},
};

use crate::mock_idp::MockIdp;

/// A resolver answering from a table.
struct FixedLookup(HashMap<&'static str, Vec<IpAddr>>);

#[async_trait]
impl HostLookup for FixedLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.0.get(host).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not in the table"),
            )
        })
    }
}

fn fetcher(loopback_allowed: bool, table: &[(&'static str, &str)]) -> (Fetcher, EgressRules) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lookup = FixedLookup(
        table
            .iter()
            .map(|(name, ip)| (*name, vec![ip.parse().unwrap()]))
            .collect(),
    );
    let rules = EgressRules {
        allow_http_and_loopback: loopback_allowed,
        allowed_networks: Vec::new(),
    };
    let settings = FetchSettings {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        max_redirects: 3,
        egress: Arc::new(rules.clone()),
        lookup: Arc::new(lookup),
    };
    (Fetcher::new(&settings).unwrap(), rules)
}

async fn fetch(fetcher: &Fetcher, url: &str) -> Result<FetchOutcome, FetchError> {
    let url = JwksUrl::parse_stored(url).unwrap();
    fetcher
        .fetch(&url, &Validators::default(), 64 * 1024, SystemTime::now())
        .await
}

#[tokio::test]
async fn names_resolve_through_the_guarded_resolver() {
    let idp = MockIdp::start(keyrelay::clock::SystemClock).await;
    let port = idp.url("").rsplit(':').next().unwrap().to_owned();
    let (fetcher, _) = fetcher(true, &[("idp.test", "127.0.0.1")]);
    let fetched = fetch(&fetcher, &format!("http://idp.test:{port}/jwks")).await;
    assert!(
        matches!(fetched, Ok(FetchOutcome::Modified { .. })),
        "{fetched:?}"
    );
    assert_eq!(idp.request_count(), 1);
}

#[tokio::test]
async fn names_resolving_to_loopback_or_private_addresses_are_refused_before_connecting() {
    let idp = MockIdp::start(keyrelay::clock::SystemClock).await;
    let port = idp.url("").rsplit(':').next().unwrap().to_owned();
    let (fetcher, _) = fetcher(
        false,
        &[
            ("rebind.test", "127.0.0.1"),
            ("internal.test", "10.0.0.7"),
            ("metadata.test", "169.254.169.254"),
        ],
    );
    for host in ["rebind.test", "internal.test", "metadata.test"] {
        let refused = fetch(&fetcher, &format!("https://{host}:{port}/jwks"))
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
    let (fetcher, _) = fetcher(false, &[]);
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
