//! TLS towards identity providers: certificate verification, per-provider SPKI pins enforced
//! in the handshake, and redirect hops held to https, the provider's hosts and the egress
//! rules. Every IdP here is a mock on 127.0.0.1 or 127.0.0.2 reached through a scripted
//! resolver that answers loopback addresses only.

use std::sync::Arc;

use keyrelay::{
    domain::{EgressRules, UpstreamTrust},
    proto::v1 as pb,
    upstream::fetch::{FetchError, FetchOutcome, Fetcher},
};
use tonic::Code;

use crate::{
    egress::{ScriptedLookup, fetch, fetch_with, fetcher_with},
    helpers::{Backend, spawn_app_with, status},
    mock_idp::MockIdp,
    pki::{TestCa, pin_of},
};

/// Rules as in production (https only, loopback refused) except that `allowed` is permitted,
/// standing in for the public internet.
fn rules(allowed: &str) -> EgressRules {
    EgressRules {
        allow_http_and_loopback: false,
        allowed_networks: vec![allowed.parse().unwrap()],
    }
}

fn pinned(pins: &[String]) -> UpstreamTrust {
    UpstreamTrust::parse(&[], pins).unwrap()
}

fn hosts(allowed: &[&str]) -> UpstreamTrust {
    let allowed: Vec<String> = allowed.iter().map(|h| h.to_string()).collect();
    UpstreamTrust::parse(&allowed, &[]).unwrap()
}

fn expect_error(result: Result<FetchOutcome, FetchError>, needle: &str) -> FetchError {
    let err = result.expect_err(needle);
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in: {err}"
    );
    err
}

#[tokio::test]
async fn only_trusted_current_certificates_for_the_right_name_are_accepted() {
    let ca = TestCa::new("test CA");
    let stranger = TestCa::new("someone else's CA");
    let good = MockIdp::start_tls(
        "127.0.0.1",
        "idp.test",
        ca.leaf(&["idp.test"]).server_config(),
    )
    .await;
    let expired = MockIdp::start_tls(
        "127.0.0.1",
        "expired.test",
        ca.expired_leaf(&["expired.test"]).server_config(),
    )
    .await;
    let misnamed = MockIdp::start_tls(
        "127.0.0.1",
        "misnamed.test",
        ca.leaf(&["other.test"]).server_config(),
    )
    .await;
    let untrusted = MockIdp::start_tls(
        "127.0.0.1",
        "untrusted.test",
        stranger.leaf(&["untrusted.test"]).server_config(),
    )
    .await;
    let lookup = ScriptedLookup::new(&[
        ("idp.test", &["127.0.0.1"]),
        ("expired.test", &["127.0.0.1"]),
        ("misnamed.test", &["127.0.0.1"]),
        ("untrusted.test", &["127.0.0.1"]),
    ]);
    let fetcher = fetcher_with(rules("127.0.0.1/32"), Arc::new(lookup), vec![ca.cert()]);

    let fetched = fetch(&fetcher, &good.jwks_url()).await;
    assert!(
        matches!(fetched, Ok(FetchOutcome::Modified { .. })),
        "{fetched:?}"
    );
    expect_error(
        fetch(&fetcher, &expired.jwks_url()).await,
        "certificate expired",
    );
    expect_error(
        fetch(&fetcher, &misnamed.jwks_url()).await,
        "not valid for name",
    );
    expect_error(
        fetch(&fetcher, &untrusted.jwks_url()).await,
        "UnknownIssuer",
    );
    for refused in [&expired, &misnamed, &untrusted] {
        assert_eq!(
            refused.request_count(),
            0,
            "no request after a failed handshake"
        );
    }
}

#[tokio::test]
async fn pins_are_enforced_during_the_handshake() {
    let ca = TestCa::new("test CA");
    let leaf = ca.leaf(&["idp.test"]);
    let idp = MockIdp::start_tls("127.0.0.1", "idp.test", leaf.server_config()).await;
    let lookup = ScriptedLookup::new(&[("idp.test", &["127.0.0.1"])]);
    let fetcher = fetcher_with(rules("127.0.0.1/32"), Arc::new(lookup), vec![ca.cert()]);

    for pin in [leaf.pin(), pin_of(&ca.cert())] {
        let fetched = fetch_with(&fetcher, &idp.jwks_url(), &pinned(&[pin])).await;
        assert!(
            matches!(fetched, Ok(FetchOutcome::Modified { .. })),
            "{fetched:?}"
        );
    }
    assert_eq!(idp.request_count(), 2);

    let other_key = TestCa::new("unrelated").leaf(&["idp.test"]).pin();
    let refused = fetch_with(&fetcher, &idp.jwks_url(), &pinned(&[other_key])).await;
    let err = expect_error(refused, "matches none of policy.spki_sha256_pins");
    assert!(
        err.to_string().contains(&leaf.pin()),
        "the chain's pins are reported: {err}"
    );
    assert_eq!(idp.request_count(), 2, "the request was never sent");
}

#[tokio::test]
async fn redirect_hops_are_held_to_https_the_allowed_hosts_and_the_egress_rules() {
    let ca = TestCa::new("test CA");
    let idp = MockIdp::start_tls(
        "127.0.0.2",
        "idp.test",
        ca.leaf(&["idp.test", "elsewhere.test"]).server_config(),
    )
    .await;
    let attacker = MockIdp::start_tls_on(
        "127.0.0.1",
        idp.port(),
        "attacker.test",
        ca.leaf(&["attacker.test"]).server_config(),
    )
    .await;
    let lookup = ScriptedLookup::new(&[
        ("idp.test", &["127.0.0.2"]),
        ("elsewhere.test", &["127.0.0.2"]),
        ("attacker.test", &["127.0.0.1"]),
    ]);
    let fetcher = fetcher_with(rules("127.0.0.2/32"), Arc::new(lookup), vec![ca.cert()]);
    let port = idp.port();
    let via = |target: &str| idp.url(&format!("/redirect-to/{}", target.replace('/', "|")));
    let cases = [
        (format!("http://idp.test:{port}/jwks"), "must use https"),
        (
            format!("https://127.0.0.1:{port}/jwks"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("https://attacker.test:{port}/jwks"),
            "resolves to no permitted address",
        ),
    ];
    for (target, reason) in cases {
        expect_error(fetch(&fetcher, &via(&target)).await, reason);
    }
    expect_error(fetch(&fetcher, &idp.url("/loop-a")).await, "loop back to");

    let elsewhere = format!("https://elsewhere.test:{port}/jwks");
    let followed = fetch(&fetcher, &via(&elsewhere)).await;
    assert!(
        matches!(followed, Ok(FetchOutcome::Modified { .. })),
        "{followed:?}"
    );
    let confined = fetch_with(&fetcher, &via(&elsewhere), &hosts(&["idp.test"])).await;
    expect_error(
        confined,
        "host elsewhere.test is not in policy.allowed_hosts",
    );
    assert_eq!(
        attacker.request_count(),
        0,
        "nothing reached the refused address"
    );
}

#[tokio::test]
async fn a_name_answering_an_allowed_address_then_a_refused_one_is_checked_per_connection() {
    let ca = TestCa::new("test CA");
    let leaf = ca.leaf(&["rebind.test"]);
    let idp = MockIdp::start_tls("127.0.0.2", "rebind.test", leaf.server_config()).await;
    let attacker =
        MockIdp::start_tls_on("127.0.0.1", idp.port(), "rebind.test", leaf.server_config()).await;
    let lookup = Arc::new(ScriptedLookup::new(&[(
        "rebind.test",
        &["127.0.0.2", "127.0.0.1"],
    )]));
    let fresh_fetcher =
        || fetcher_with(rules("127.0.0.2/32"), Arc::clone(&lookup), vec![ca.cert()]);

    let first: Fetcher = fresh_fetcher();
    let fetched = fetch(&first, &idp.jwks_url()).await;
    assert!(
        matches!(fetched, Ok(FetchOutcome::Modified { .. })),
        "{fetched:?}"
    );
    let second = fresh_fetcher();
    expect_error(
        fetch(&second, &idp.jwks_url()).await,
        "resolves to no permitted address",
    );
    assert_eq!(idp.request_count(), 1);
    assert_eq!(
        attacker.request_count(),
        0,
        "the rebound address was never connected to"
    );
}

#[tokio::test]
async fn registrations_carry_hosts_and_pins_and_the_server_enforces_them() {
    let ca = TestCa::new("test CA");
    let leaf = ca.leaf(&["localhost"]);
    let idp = MockIdp::start_tls("127.0.0.1", "localhost", leaf.server_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let app = spawn_app_with(
        Backend::Sqlite,
        &["--idp-ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    let policy = |hosts: &[&str], pins: &[String]| pb::ProviderPolicy {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        spki_sha256_pins: pins.to_vec(),
        ..Default::default()
    };

    let registered = app
        .register_with(
            "acme",
            "pinned",
            &idp.jwks_url(),
            Some(policy(&["localhost"], &[leaf.pin()])),
        )
        .await;
    assert_eq!(
        status(&registered).version,
        1,
        "{}",
        status(&registered).last_error
    );
    let effective = registered.effective_policy.unwrap();
    assert_eq!(effective.allowed_hosts, ["localhost"]);
    assert_eq!(effective.spki_sha256_pins, [leaf.pin()]);

    let wrong_pin = TestCa::new("unrelated").leaf(&["localhost"]).pin();
    let mismatched = app
        .register_with(
            "acme",
            "mismatched",
            &idp.jwks_url(),
            Some(policy(&[], &[wrong_pin])),
        )
        .await;
    let error = &status(&mismatched).last_error;
    assert!(
        error.contains("matches none of policy.spki_sha256_pins"),
        "{error}"
    );

    let refused = app
        .try_register_with(
            "acme",
            "elsewhere",
            &idp.jwks_url(),
            Some(policy(&["idp.example.com"], &[])),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("invalid jwks_url: host localhost is not in policy.allowed_hosts"),
        "{}",
        refused.message()
    );
    let plain = app
        .try_register_with(
            "acme",
            "plain",
            "http://localhost:1/jwks",
            Some(policy(&[], &[leaf.pin()])),
        )
        .await
        .unwrap_err();
    assert!(
        plain.message().contains("plain http"),
        "{}",
        plain.message()
    );
    let bad_pin = app
        .try_register_with(
            "acme",
            "bad",
            &idp.jwks_url(),
            Some(policy(&[], &["AAAA".into()])),
        )
        .await
        .unwrap_err();
    assert!(
        bad_pin
            .message()
            .contains("invalid policy.spki_sha256_pins[0]"),
        "{}",
        bad_pin.message()
    );
}
