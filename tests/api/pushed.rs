//! Key sets pushed by an administrator (PublishKeySet) for providers registered with `pushed`,
//! over real gRPC: versioned, audited with the kids before and after, streamed to watchers,
//! never fetched and never stale, kept across a restart, held to the key-set guardrails, and
//! seen by every replica of a fleet.

use std::time::Duration;

use keyrelay::proto::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, kids, selector, spawn_app, status, wait_until},
    mock_idp::{MockIdp, jwks},
};

pub(crate) async fn register_pushed(
    app: &TestApp,
    provider: &str,
    policy: Option<pb::ProviderPolicy>,
) -> Result<pb::Provider, tonic::Status> {
    let request = pb::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: provider.into(),
        pushed: true,
        policy,
        ..Default::default()
    };
    let response = app.admin().await.register_provider(request).await?;
    Ok(response.into_inner().provider.expect("provider"))
}

pub(crate) async fn publish(
    app: &TestApp,
    provider: &str,
    document: &Value,
) -> Result<pb::PublishKeySetResponse, tonic::Status> {
    let request = pb::PublishKeySetRequest {
        tenant: "acme".into(),
        provider: provider.into(),
        jwks_json: document.to_string().into_bytes().into(),
    };
    let response = app.admin().await.publish_key_set(request).await?;
    Ok(response.into_inner())
}

fn version(answer: &pb::PublishKeySetResponse) -> u64 {
    status(answer.provider.as_ref().expect("provider")).version
}

async fn published_versioned_audited_streamed_and_never_stale(backend: Backend) {
    let app = spawn_app(backend).await;
    let registered = register_pushed(&app, "internal", None).await.unwrap();
    assert!(registered.pushed && registered.jwks_url.is_empty());
    assert_eq!(status(&registered).state(), pb::ProviderState::Pending);
    assert_eq!(status(&registered).last_error, "", "nothing was fetched");
    let mut watch = app.watch(vec![selector("acme", "")], Vec::new()).await;
    watch.expect_synced().await;

    let first = publish(&app, "internal", &jwks(&["k1"])).await.unwrap();
    assert!(first.changed);
    assert_eq!(version(&first), 1);
    assert_eq!(kids(&watch.next_key_set().await), ["k1"]);
    let resolved = app.resolve("acme", "internal", Some("k1")).await.unwrap();
    assert_eq!(resolved.version, 1);

    let again = publish(&app, "internal", &jwks(&["k1"])).await.unwrap();
    assert!(!again.changed, "the same keys again write nothing");
    assert_eq!(version(&again), 1);

    let rotated = publish(&app, "internal", &jwks(&["k1", "k2"]))
        .await
        .unwrap();
    assert_eq!((rotated.changed, version(&rotated)), (true, 2));
    let set = watch.next_key_set().await;
    assert_eq!((set.version, kids(&set)), (2, vec!["k1", "k2"]));
    let (code, body) = app.http_get("/v1/jwks/acme/internal").await;
    let mirrored: Value = serde_json::from_str(&body).expect("the mirror answers JSON");
    assert_eq!(
        (code, mirrored["keys"][1]["kid"].as_str()),
        (200, Some("k2")),
        "the JWKS mirror serves the pushed set"
    );

    let request = pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        page_size: 100,
        page_token: String::new(),
    };
    let events = app.admin().await.list_audit_events(request).await.unwrap();
    let pushes: Vec<_> = events
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == "key_set.publish")
        .collect();
    assert_eq!(pushes.len(), 2, "one event per write");
    let before: Value = serde_json::from_str(&pushes[0].before).unwrap();
    let after: Value = serde_json::from_str(&pushes[0].after).unwrap();
    assert_eq!(before, json!({"version": 1, "kids": ["k1"]}));
    assert_eq!(after, json!({"version": 2, "kids": ["k1", "k2"]}));
    assert_eq!(pushes[0].actor, "admin");

    let refreshed = app.refresh("acme", "internal").await;
    assert_eq!(status(&refreshed).version, 2, "a refresh fetches nothing");
    assert_eq!(status(&refreshed).last_error, "");
    app.advance(Duration::from_secs(30 * 24 * 3600));
    let month_later = app.get("acme", "internal").await;
    assert_eq!(status(&month_later).state(), pb::ProviderState::Ready);
    app.resolve("acme", "internal", Some("k2"))
        .await
        .expect("a pushed set is served until replaced");

    let app = app.restart().await;
    let restored = app.resolve("acme", "internal", None).await.unwrap();
    assert_eq!((restored.version, kids(&restored)), (2, vec!["k1", "k2"]));
}

#[tokio::test]
async fn published_versioned_audited_streamed_and_never_stale_sqlite() {
    published_versioned_audited_streamed_and_never_stale(Backend::Sqlite).await;
}

#[tokio::test]
async fn published_versioned_audited_streamed_and_never_stale_postgres() {
    published_versioned_audited_streamed_and_never_stale(Backend::Postgres).await;
}

#[tokio::test]
async fn a_pushed_set_passes_the_guardrails_of_a_fetched_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let small = pb::ProviderPolicy {
        max_response_bytes: Some(1024),
        ..Default::default()
    };
    register_pushed(&app, "internal", Some(small))
        .await
        .unwrap();
    publish(&app, "internal", &jwks(&["k1"])).await.unwrap();

    let mut private = jwks(&["k2"]);
    private["keys"][0]["d"] = json!("c2VjcmV0");
    let cases = [
        (private, "private"),
        (json!({"keys": []}), "no usable keys"),
        (json!({"not": "keys"}), "keys"),
        (jwks(&["k1", "k2", "k3", "k4"]), "max_response_bytes"),
    ];
    for (document, reason) in cases {
        let err = publish(&app, "internal", &document).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{reason}: {err:?}");
        assert!(
            err.message().contains(reason),
            "{reason}: {}",
            err.message()
        );
    }
    let held = app.resolve("acme", "internal", None).await.unwrap();
    assert_eq!(
        (held.version, kids(&held)),
        (1, vec!["k1"]),
        "the held set stays"
    );

    let idp = MockIdp::start(app.clock.clone()).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    let fetched = publish(&app, "okta", &jwks(&["k9"])).await.unwrap_err();
    assert_eq!(fetched.code(), Code::FailedPrecondition, "{fetched:?}");
    register_pushed(&app, "okta", None).await.unwrap();
    let kept = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(
        (kept.version, kids(&kept)),
        (1, vec!["key-1"]),
        "a provider switched to pushed keeps its fetched keys until the first push"
    );
    let absent = publish(&app, "nobody", &jwks(&["k9"])).await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound);
    let pinned = pb::ProviderPolicy {
        allowed_hosts: vec!["idp.example.com".into()],
        ..Default::default()
    };
    let err = register_pushed(&app, "pinned", Some(pinned))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid policy: "),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn concurrent_pushes_on_two_replicas_never_share_a_version() {
    let app = spawn_app(Backend::Postgres).await;
    let peer = app.spawn_peer().await;
    register_pushed(&app, "internal", None).await.unwrap();
    let sets = ["a", "b", "c", "d"].map(|kid| jwks(&[kid]));
    let answers = futures::future::join_all(sets.iter().enumerate().map(|(i, set)| {
        let replica = if i % 2 == 0 { &app } else { &peer };
        publish(replica, "internal", set)
    }))
    .await;
    let mut versions: Vec<u64> = answers
        .iter()
        .map(|answer| version(answer.as_ref().expect("every push lands")))
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4], "one version each");
}

#[tokio::test]
async fn a_pushed_set_reaches_every_replica() {
    let app = spawn_app(Backend::Postgres).await;
    let peer = app.spawn_peer().await;
    register_pushed(&app, "internal", None).await.unwrap();
    publish(&peer, "internal", &jwks(&["k1"])).await.unwrap();
    let seen =
        wait_until(|| async { app.resolve("acme", "internal", Some("k1")).await.ok() }).await;
    assert_eq!(seen.version, 1);
    publish(&app, "internal", &jwks(&["k2"])).await.unwrap();
    let seen = wait_until(|| async {
        let set = peer.resolve("acme", "internal", None).await.ok()?;
        (set.version == 2).then_some(set)
    })
    .await;
    assert_eq!(kids(&seen), ["k2"]);
}
