//! Durability: a restarted node serves what it stored, before any fetch, and refreshes only
//! what is due.

use keyrelay::proto::v1 as pb;

use crate::{
    helpers::{Backend, kids, spawn_app, status},
    mock_idp::{MockIdp, Mode},
};

async fn restart_serves_stored_keys_before_any_fetch(backend: Backend) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1", "k2"], Some("max-age=3600"));
    let before = app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_mode(Mode::Status(500, None));

    let app = app.restart().await;
    let set = app
        .resolve("acme", "okta", None)
        .await
        .expect("served from the store");
    assert_eq!((set.version, kids(&set)), (1, vec!["k1", "k2"]));
    let after = app.get("acme", "okta").await;
    assert_eq!(status(&after).state(), pb::ProviderState::Ready);
    assert_eq!(
        status(&after),
        status(&before),
        "status, validators and schedule survive"
    );
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(
        idp.request_count(),
        1,
        "nothing was due, so nothing was fetched"
    );
}

#[tokio::test]
async fn restart_serves_stored_keys_before_any_fetch_on_sqlite() {
    restart_serves_stored_keys_before_any_fetch(Backend::Sqlite).await;
}

#[tokio::test]
async fn restart_serves_stored_keys_before_any_fetch_on_postgres() {
    restart_serves_stored_keys_before_any_fetch(Backend::Postgres).await;
}

#[tokio::test]
async fn restart_refreshes_what_became_due_while_down() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], Some("max-age=60"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    let (storage, clock, args) = app.stop().await;
    clock.advance(std::time::Duration::from_secs(120));
    let app = crate::helpers::restart_from(storage, clock, args).await;
    idp.wait_for_requests(2).await;
    assert_eq!(idp.requests()[1].path, "/jwks");
    drop(app);
}
