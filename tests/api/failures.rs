//! Hostile and failing identity providers: outages, 429s, slow, truncated and oversized
//! bodies, redirects and loops, bad documents. The last good keys must survive all of them.
//! TLS failures (certificates, pins) are in `upstream_tls`.

use std::time::Duration;

use keyrelay::proto::v1 as pb;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, kids, policy, spawn_app, spawn_app_with, status, wait_until},
    mock_idp::{Document, MockIdp, Mode},
};

async fn app_and_idp() -> (TestApp, MockIdp) {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    (app, idp)
}

/// Refreshes acme/okta, expecting a failure naming `reason` and the set {k1} still served.
async fn refresh_is_rejected_keeping_k1(app: &TestApp, reason: &str) {
    let refreshed = app.refresh("acme", "okta").await;
    let s = status(&refreshed);
    assert!(s.last_error.contains(reason), "{reason}: {}", s.last_error);
    assert_eq!(s.version, 1);
    let set = app
        .resolve("acme", "okta", None)
        .await
        .expect("last good set served");
    assert_eq!(kids(&set), ["k1"]);
}

#[tokio::test]
async fn an_idp_outage_after_a_good_fetch_serves_stale_keys_and_reports_failing() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("max-age=60"));
    app.register("acme", "okta", &idp.jwks_url()).await;

    idp.set_mode(Mode::Status(503, Some("120")));
    app.advance(Duration::from_secs(61));
    idp.wait_for_requests(2).await;
    let failing = wait_until(|| async {
        let provider = app.get("acme", "okta").await;
        (status(&provider).consecutive_failures > 0).then_some(provider)
    })
    .await;
    let s = status(&failing);
    assert_eq!(s.state(), pb::ProviderState::Failing);
    assert_eq!(s.version, 1);
    assert_eq!(s.consecutive_failures, 1);
    assert!(s.last_error.contains("HTTP 503"), "{}", s.last_error);
    let retry_in = crate::helpers::seconds_between(
        s.last_attempt_at.as_ref().unwrap(),
        s.next_refresh_at.as_ref().unwrap(),
    );
    assert!(
        retry_in >= 120.0,
        "Retry-After honoured, retry in {retry_in}s"
    );

    let set = app
        .resolve("acme", "okta", None)
        .await
        .expect("last good keys still served");
    assert_eq!(set.version, 1);
    assert_eq!(kids(&set), ["k1"]);
    assert!(set.stale, "past fresh_until");
}

#[tokio::test]
async fn keys_expire_after_max_stale() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("max-age=60"));
    app.register_with(
        "acme",
        "okta",
        &idp.jwks_url(),
        Some(policy(None, None, Some(3600))),
    )
    .await;
    idp.set_mode(Mode::Status(500, None));
    app.advance(Duration::from_secs(60 + 3600 - 1));
    assert!(
        app.resolve("acme", "okta", None)
            .await
            .expect("still within max_stale")
            .stale
    );
    app.advance(Duration::from_secs(1));
    let expired = app.resolve("acme", "okta", None).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unavailable);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
}

#[tokio::test]
async fn a_provider_never_fetched_successfully_is_unavailable_with_the_reason() {
    let (app, idp) = app_and_idp().await;
    idp.set_mode(Mode::Status(404, None));
    let provider = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(
        status(&provider).state(),
        pb::ProviderState::Failing,
        "registration succeeds anyway"
    );
    assert_eq!(status(&provider).version, 0);

    let err = app.resolve("acme", "okta", None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("HTTP 404"), "{}", err.message());
    let err = app.resolve("acme", "okta", Some("any")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "never an empty set in place of an error"
    );
}

#[tokio::test]
async fn an_oversized_body_is_aborted_without_reading_it_all() {
    let (app, idp) = app_and_idp().await;
    const TOTAL: u64 = 256 * 1024 * 1024;
    idp.set_mode(Mode::Oversize(TOTAL));
    let policy = pb::ProviderPolicy {
        max_response_bytes: Some(64 * 1024),
        ..Default::default()
    };
    let provider = app
        .register_with("acme", "okta", &idp.jwks_url(), Some(policy))
        .await;
    let s = status(&provider);
    assert!(
        s.last_error.contains("exceeds the 65536-byte limit"),
        "{}",
        s.last_error
    );
    let streamed = idp.bytes_streamed();
    assert!(
        streamed < TOTAL / 8,
        "the mock streamed {streamed} of {TOTAL} bytes"
    );
}

#[tokio::test]
async fn a_hanging_or_dribbling_idp_hits_the_fetch_deadline() {
    let (app, idp) = app_and_idp().await;
    for (provider, mode) in [("hang", Mode::Hang), ("dribble", Mode::Dribble)] {
        idp.set_mode(mode);
        let registered = app.register("acme", provider, &idp.jwks_url()).await;
        let s = status(&registered);
        assert!(
            s.last_error.contains("no complete response within 1s"),
            "{provider}: {}",
            s.last_error
        );
        assert_eq!(s.state(), pb::ProviderState::Failing);
    }
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let (app, idp) = app_and_idp().await;
    let followed = app.register("acme", "three-hops", &idp.url("/hop/2")).await;
    assert_eq!(
        status(&followed).version,
        1,
        "{}",
        status(&followed).last_error
    );

    let too_many = app.register("acme", "four-hops", &idp.url("/hop/3")).await;
    assert!(
        status(&too_many)
            .last_error
            .contains("more than 3 redirects"),
        "{}",
        status(&too_many).last_error
    );
}

#[tokio::test]
async fn every_redirect_hop_is_checked_against_the_url_rules() {
    let (app, idp) = app_and_idp().await;
    let provider = app
        .register(
            "acme",
            "okta",
            &idp.url("/redirect-to/ftp:||127.0.0.1:1|jwks"),
        )
        .await;
    let error = &status(&provider).last_error;
    assert!(
        error.contains("redirect refused") && error.contains("scheme \"ftp\""),
        "{error}"
    );
}

#[tokio::test]
async fn bad_documents_are_rejected_and_the_last_good_set_kept() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], None);
    app.register("acme", "okta", &idp.jwks_url()).await;
    let bodies = [
        ("<html>oops</html>", "not JSON"),
        ("{\"kys\": []}", "no \"keys\" array"),
        ("{\"keys\": []}", "no usable keys"),
        (
            r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#,
            "private or symmetric",
        ),
        (
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
            "duplicate kid",
        ),
        (
            r#"{"keys": [{"kty": "RSA", "kid": "small", "n": "xXch", "e": "AQAB"}]}"#,
            "modulus",
        ),
    ];
    for (body, reason) in bodies {
        idp.set_document(Document {
            body: body.into(),
            ..Document::default()
        });
        refresh_is_rejected_keeping_k1(&app, reason).await;
    }
    let (_, metrics) = app.http_get("/metrics").await;
    for reason in [
        "not_json",
        "no_keys_array",
        "empty_set",
        "private_material",
        "duplicate_kid",
        "weak_rsa_key",
    ] {
        let line = format!("keyrelay_key_set_rejections_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn a_kid_naming_new_material_or_a_wholesale_replacement_is_not_published_at_once() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let ed = |kid: &str, x: &str| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x});
    let set = |keys: Vec<serde_json::Value>| Document {
        body: serde_json::json!({ "keys": keys }).to_string(),
        ..Document::default()
    };

    idp.set_document(set(vec![ed(
        "key-1",
        "uV8nFHuNEdTc6Kxy_kqz3Xtg8JZstNh5Xjh15ErYpY4",
    )]));
    let reused = app.refresh("acme", "okta").await;
    assert!(
        status(&reused)
            .last_error
            .contains("kid \"key-1\" now names different key material"),
        "{}",
        status(&reused).last_error
    );
    assert_eq!(status(&reused).version, 1);

    idp.set_document(set(vec![ed(
        "fresh",
        "uV8nFHuNEdTc6Kxy_kqz3Xtg8JZstNh5Xjh15ErYpY4",
    )]));
    let held = app.refresh("acme", "okta").await;
    assert!(
        status(&held).last_error.contains("replaced in one step"),
        "{}",
        status(&held).last_error
    );
    assert_eq!(
        kids(&app.resolve("acme", "okta", None).await.unwrap()),
        ["key-1"]
    );
    let confirmed = app.refresh("acme", "okta").await;
    assert_eq!(
        (
            status(&confirmed).version,
            status(&confirmed).last_error.as_str()
        ),
        (2, "")
    );
    assert_eq!(
        kids(&app.resolve("acme", "okta", None).await.unwrap()),
        ["fresh"]
    );
}

#[tokio::test]
async fn a_recovered_idp_clears_the_failure() {
    let (app, idp) = app_and_idp().await;
    idp.set_mode(Mode::Status(500, None));
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_mode(Mode::Normal);
    let recovered = app.refresh("acme", "okta").await;
    let s = status(&recovered);
    assert_eq!(s.state(), pb::ProviderState::Ready);
    assert_eq!(
        (s.last_error.as_str(), s.consecutive_failures, s.version),
        ("", 0, 1)
    );
}

#[tokio::test]
async fn connection_refused_is_reported() {
    let app = spawn_app_with(Backend::Sqlite, &["--connect-timeout", "1s"]).await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let provider = app.register("acme", "okta", &url).await;
    assert!(
        status(&provider).last_error.contains("could not connect"),
        "{}",
        status(&provider).last_error
    );
}

#[tokio::test]
async fn truncated_garbled_or_deeply_nested_bodies_keep_the_last_good_set() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], None);
    app.register("acme", "okta", &idp.jwks_url()).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        (Mode::Truncated, "request failed"),
        (
            Mode::Raw(b"{\"keys\": [\xff\xfe]}".as_slice().into()),
            "not JSON",
        ),
        (Mode::Raw(deep.into()), "recursion limit exceeded"),
    ];
    for (mode, reason) in cases {
        idp.set_mode(mode);
        refresh_is_rejected_keeping_k1(&app, reason).await;
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_mode(Mode::Status(429, Some("300")));
    let refreshed = app.refresh("acme", "okta").await;
    let s = status(&refreshed);
    assert!(s.last_error.contains("HTTP 429"), "{}", s.last_error);
    let retry_in = crate::helpers::seconds_between(
        s.last_attempt_at.as_ref().unwrap(),
        s.next_refresh_at.as_ref().unwrap(),
    );
    assert!(
        retry_in >= 300.0,
        "Retry-After honoured, retry in {retry_in}s"
    );
    assert_eq!(s.version, 1, "the last good set is kept");
}

#[tokio::test]
async fn a_redirect_loop_is_refused() {
    let (app, idp) = app_and_idp().await;
    let provider = app.register("acme", "okta", &idp.url("/loop-a")).await;
    let error = &status(&provider).last_error;
    assert!(error.contains("redirect refused: loop back to"), "{error}");
}
