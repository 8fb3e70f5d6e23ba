//! Resolve: round trips, versions, unknown kids and their shared refresh.

use std::time::Duration;

use futures::future::join_all;
use keyrelay::proto::v1 as pb;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, kids, spawn_app, status},
    mock_idp::{MockIdp, Mode, jwks},
};

async fn app_and_idp(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    (app, idp)
}

async fn register_then_resolve_round_trips(backend: Backend) {
    let (app, idp) = app_and_idp(backend).await;
    idp.serve_kids(&["k1", "k2"], Some("max-age=600"));
    let provider = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&provider).state(), pb::ProviderState::Ready);
    assert_eq!(status(&provider).version, 1);
    assert_eq!(status(&provider).key_count, 2);

    let set = app.resolve("acme", "okta", None).await.expect("resolve");
    assert_eq!(
        (set.tenant.as_str(), set.provider.as_str(), set.version),
        ("acme", "okta", 1)
    );
    assert_eq!(kids(&set), ["k1", "k2"]);
    assert!(!set.stale);
    let document: serde_json::Value = serde_json::from_slice(&set.jwks_json).unwrap();
    assert_eq!(document, jwks(&["k1", "k2"]));
    let key: serde_json::Value = serde_json::from_slice(&set.keys[0].jwk_json).unwrap();
    assert_eq!(key["kid"], "k1");
    assert_eq!(
        (
            set.keys[0].kty.as_str(),
            set.keys[0].alg.as_str(),
            set.keys[0].r#use.as_str()
        ),
        ("RSA", "RS256", "sig")
    );
    assert_eq!(idp.request_count(), 1, "resolve is served from memory");
}

#[tokio::test]
async fn register_then_resolve_round_trips_on_sqlite() {
    register_then_resolve_round_trips(Backend::Sqlite).await;
}

#[tokio::test]
async fn register_then_resolve_round_trips_on_postgres() {
    register_then_resolve_round_trips(Backend::Postgres).await;
}

#[tokio::test]
async fn if_newer_than_version_answers_not_modified_until_the_keys_change() {
    let (app, idp) = app_and_idp(Backend::Sqlite).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut keys = app.keys().await;
    let ask = |version| pb::ResolveRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: None,
        if_newer_than_version: Some(version),
    };
    let response = keys.resolve(ask(1)).await.unwrap().into_inner();
    assert_eq!(
        response.result,
        Some(pb::resolve_response::Result::NotModified(true))
    );

    idp.serve_kids(&["key-1", "key-2"], None);
    app.refresh("acme", "okta").await;
    let response = keys.resolve(ask(1)).await.unwrap().into_inner();
    match response.result {
        Some(pb::resolve_response::Result::KeySet(set)) => assert_eq!(set.version, 2),
        other => panic!("expected the new set, got {other:?}"),
    }
}

#[tokio::test]
async fn an_identical_body_or_reordered_keys_keep_the_version() {
    let (app, idp) = app_and_idp(Backend::Sqlite).await;
    idp.serve_kids(&["a", "b"], None);
    app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&app.refresh("acme", "okta").await).version, 1);
    idp.serve_kids(&["b", "a"], None);
    assert_eq!(status(&app.refresh("acme", "okta").await).version, 1);
    idp.serve_kids(&["b", "c"], None);
    assert_eq!(status(&app.refresh("acme", "okta").await).version, 2);
    assert_eq!(idp.request_count(), 4);
}

#[tokio::test]
async fn unknown_kid_triggers_one_refresh_shared_by_fifty_concurrent_callers() {
    let (app, idp) = app_and_idp(Backend::Sqlite).await;
    idp.serve_kids(&["old"], Some("max-age=3600"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.serve_kids(&["old", "rotated"], Some("max-age=3600"));
    idp.set_mode(Mode::Gated);

    let callers = join_all((0..50).map(|_| app.resolve("acme", "okta", Some("rotated"))));
    // The gate holds the one refresh open while the other callers pile up behind it.
    let release = async {
        idp.wait_for_requests(2).await;
        idp.release(1);
    };
    let (results, ()) = tokio::join!(callers, release);

    assert_eq!(
        idp.request_count(),
        2,
        "one registration fetch plus exactly one shared refresh"
    );
    for result in results {
        let set = result.expect("rotated kid found");
        assert_eq!(set.version, 2);
        assert_eq!(kids(&set), ["old", "rotated"]);
    }
}

#[tokio::test]
async fn unknown_kid_refreshes_are_rate_limited_per_provider() {
    let (app, idp) = app_and_idp(Backend::Sqlite).await;
    app.register("acme", "okta", &idp.jwks_url()).await;

    let first = app.resolve("acme", "okta", Some("nope")).await.unwrap_err();
    assert_eq!(first.code(), Code::NotFound);
    assert!(
        first
            .message()
            .contains("\"nope\" is not in the key set of acme/okta"),
        "{}",
        first.message()
    );
    assert_eq!(idp.request_count(), 2, "the unknown kid refreshed once");

    let second = app
        .resolve("acme", "okta", Some("nope-again"))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::NotFound);
    assert!(
        second.message().contains("recently"),
        "{}",
        second.message()
    );
    assert_eq!(idp.request_count(), 2, "no refresh inside the cooldown");

    app.advance(Duration::from_secs(11));
    idp.serve_kids(&["key-1", "nope-again"], None);
    let set = app
        .resolve("acme", "okta", Some("nope-again"))
        .await
        .expect("found after cooldown");
    assert_eq!(set.version, 2);
    assert_eq!(idp.request_count(), 3);
}

#[tokio::test]
async fn a_known_kid_needs_no_refresh() {
    let (app, idp) = app_and_idp(Backend::Sqlite).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let set = app
        .resolve("acme", "okta", Some("key-1"))
        .await
        .expect("known kid");
    assert_eq!(kids(&set), ["key-1"]);
    assert_eq!(idp.request_count(), 1);
}

#[tokio::test]
async fn one_client_looking_up_random_kids_is_rate_limited() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, &["--unknown-kid-rate", "1"]).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut not_found = 0;
    let limited = loop {
        let kid = format!("random-{not_found}");
        let status = app.resolve("acme", "okta", Some(&kid)).await.unwrap_err();
        if status.code() != Code::NotFound {
            break status;
        }
        not_found += 1;
        assert!(
            not_found <= 20,
            "a client failing 20 times in a row was never limited"
        );
    };
    assert!(
        not_found >= 3,
        "the burst of 2 and the failure exhausting it are answered: {not_found}"
    );
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited
            .message()
            .contains("too many lookups of unknown kids"),
        "{}",
        limited.message()
    );
    assert!(
        app.resolve("acme", "okta", Some("key-1")).await.is_ok(),
        "known kids are never limited"
    );
    assert_eq!(
        idp.request_count(),
        2,
        "one refresh for the first unknown kid, then the cooldown"
    );
}
