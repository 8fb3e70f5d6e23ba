//! WatchKeys over real gRPC: initial state, resume, live changes, removal, slow subscribers,
//! shutdown and restart.

use std::time::Duration;

use keyrelay::proto::v1::{self as pb, watch_keys_response::Event};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, Watch, kids, known, selector, spawn_app},
    mock_idp::{MockIdp, Mode},
};

async fn app_and_idp() -> (TestApp, MockIdp) {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    (app, idp)
}

#[tokio::test]
async fn a_new_subscriber_gets_the_current_state_then_synced() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], None);
    app.register("acme", "okta", &idp.jwks_url()).await;
    app.register("acme", "auth0", &idp.jwks_url()).await;
    app.register("other", "okta", &idp.jwks_url()).await;

    let mut watch = app.watch(vec![selector("acme", "")], vec![]).await;
    let first = watch.next_key_set().await;
    let second = watch.next_key_set().await;
    assert_eq!(
        (first.provider.as_str(), second.provider.as_str()),
        ("auth0", "okta")
    );
    assert_eq!((first.version, kids(&first)), (1, vec!["k1"]));
    assert_eq!(first.state(), pb::ProviderState::Ready);
    watch.expect_synced().await;
}

#[tokio::test]
async fn a_resuming_subscriber_gets_only_what_it_does_not_hold() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "held", &idp.jwks_url()).await;
    app.register("acme", "behind", &idp.jwks_url()).await;
    idp.serve_kids(&["key-1", "key-2"], None);
    app.refresh("acme", "behind").await;

    let mut watch = app
        .watch(
            vec![selector("acme", "")],
            vec![
                known("acme", "held", 1),
                known("acme", "behind", 1),
                known("acme", "gone", 5),
            ],
        )
        .await;
    let behind = watch.next_key_set().await;
    assert_eq!((behind.provider.as_str(), behind.version), ("behind", 2));
    match watch.next().await {
        Event::Removed(removed) => {
            assert_eq!((removed.provider.as_str(), removed.version), ("gone", 5))
        }
        other => panic!("expected removed, got {other:?}"),
    }
    watch.expect_synced().await;
}

#[tokio::test]
async fn a_tenant_wide_stream_picks_up_providers_registered_later() {
    let (app, idp) = app_and_idp().await;
    let mut watch = app.watch(vec![selector("acme", "")], vec![]).await;
    watch.expect_synced().await;
    app.register("acme", "late", &idp.jwks_url()).await;
    let set = watch.next_key_set().await;
    assert_eq!((set.provider.as_str(), set.version), ("late", 1));
}

#[tokio::test]
async fn a_rotation_reaches_every_subscriber_exactly_once() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut watches = Vec::new();
    for _ in 0..3 {
        let mut watch = app
            .watch(
                vec![selector("acme", "okta"), selector("acme", "marker")],
                vec![known("acme", "okta", 1)],
            )
            .await;
        watch.expect_synced().await;
        watches.push(watch);
    }
    idp.serve_kids(&["key-1", "rotated"], None);
    app.refresh("acme", "okta").await;
    // A later, unrelated change: if the rotation had been sent twice, the duplicate would
    // arrive before this marker.
    app.register("acme", "marker", &idp.jwks_url()).await;
    for watch in &mut watches {
        let rotated = watch.next_key_set().await;
        assert_eq!(
            (rotated.provider.as_str(), rotated.version, kids(&rotated)),
            ("okta", 2, vec!["key-1", "rotated"])
        );
        assert_eq!(watch.next_key_set().await.provider, "marker");
    }
}

#[tokio::test]
async fn a_304_or_an_identical_body_sends_nothing() {
    let (app, idp) = app_and_idp().await;
    idp.set_document(crate::mock_idp::Document {
        body: crate::mock_idp::jwks(&["k1"]).to_string(),
        etag: Some("\"e1\"".into()),
        ..Default::default()
    });
    app.register("acme", "etag", &idp.jwks_url()).await;
    app.register("acme", "plain", &idp.url("/jwks?plain")).await;
    let mut watch = app
        .watch(
            vec![selector("acme", "")],
            vec![known("acme", "etag", 1), known("acme", "plain", 1)],
        )
        .await;
    watch.expect_synced().await;

    app.refresh("acme", "etag").await;
    assert_eq!(
        idp.requests().last().unwrap().if_none_match.as_deref(),
        Some("\"e1\""),
        "answered 304"
    );
    app.refresh("acme", "plain").await;
    app.register("acme", "marker", &idp.jwks_url()).await;
    assert_eq!(
        watch.next_key_set().await.provider,
        "marker",
        "no event before the marker"
    );
}

#[tokio::test]
async fn unregistering_sends_removed() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut watch = app.watch(vec![selector("acme", "okta")], vec![]).await;
    assert_eq!(watch.next_key_set().await.version, 1);
    watch.expect_synced().await;
    let request = pb::UnregisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    app.admin()
        .await
        .unregister_provider(request)
        .await
        .unwrap();
    match watch.next().await {
        Event::Removed(removed) => {
            assert_eq!((removed.provider.as_str(), removed.version), ("okta", 1))
        }
        other => panic!("expected removed, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_and_stale_keys_are_reported_to_watchers() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut watch = app
        .watch(
            vec![selector("acme", "okta")],
            vec![known("acme", "okta", 1)],
        )
        .await;
    watch.expect_synced().await;

    idp.set_mode(Mode::Status(503, None));
    app.refresh("acme", "okta").await;
    let failing = watch.next_key_set().await;
    assert_eq!(
        (failing.version, failing.stale, failing.state()),
        (1, false, pb::ProviderState::Failing)
    );

    app.advance(Duration::from_secs(601));
    let stale = watch.next_key_set().await;
    assert_eq!((stale.version, stale.stale), (1, true));

    idp.set_mode(Mode::Normal);
    app.refresh("acme", "okta").await;
    let recovered = watch.next_key_set().await;
    assert_eq!(
        (recovered.version, recovered.stale, recovered.state()),
        (1, false, pb::ProviderState::Ready)
    );
}

#[tokio::test]
async fn a_stalled_subscriber_delays_nobody_and_then_skips_to_the_latest_version() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut stalled = app
        .watch(
            vec![selector("acme", "okta")],
            vec![known("acme", "okta", 1)],
        )
        .await;
    stalled.expect_synced().await;
    let mut live = app
        .watch(
            vec![selector("acme", "okta")],
            vec![known("acme", "okta", 1)],
        )
        .await;
    live.expect_synced().await;

    const ROTATIONS: u64 = 20;
    for version in 2..=ROTATIONS + 1 {
        let kid = format!("k{version}");
        idp.serve_kids(&["key-1", &kid], None);
        app.refresh("acme", "okta").await;
        assert_eq!(
            live.next_key_set().await.version,
            version,
            "the live subscriber keeps pace"
        );
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&(ROTATIONS + 1)) {
        seen.push(stalled.next_key_set().await.version);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "versions only move forward: {seen:?}"
    );
}

#[tokio::test]
async fn invalid_selectors_are_rejected_before_the_stream_starts() {
    let app = spawn_app(Backend::Sqlite).await;
    let err = app.try_watch(vec![], vec![]).await.err().expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = app
        .try_watch(vec![selector("acme", ""), selector("Bad", "")], vec![])
        .await
        .err()
        .expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid selectors[1].tenant"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn shutdown_ends_streams_and_a_reconnect_after_restart_resumes_without_gaps() {
    let (app, idp) = app_and_idp().await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let mut watch: Watch = app.watch(vec![selector("acme", "")], vec![]).await;
    let held = watch.next_key_set().await.version;
    watch.expect_synced().await;

    let stopping = tokio::spawn(app.stop());
    let ended = watch
        .next_result()
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    let (storage, clock, args) = stopping.await.unwrap();

    let app = crate::helpers::restart_from(storage, clock, args).await;
    idp.serve_kids(&["key-1", "key-2"], None);
    app.refresh("acme", "okta").await;
    let mut resumed = app
        .watch(
            vec![selector("acme", "")],
            vec![known("acme", "okta", held)],
        )
        .await;
    let missed = resumed.next_key_set().await;
    assert_eq!(missed.version, 2);
    resumed.expect_synced().await;

    let mut current = app
        .watch(vec![selector("acme", "")], vec![known("acme", "okta", 2)])
        .await;
    current.expect_synced().await;
}
