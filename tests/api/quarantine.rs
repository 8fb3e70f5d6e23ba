//! One unreadable stored row affects its own provider only: at start-up, on a change-feed
//! resynchronisation and on a single read after a notification, the server keeps serving
//! every other provider. An unreadable key set quarantines its provider (FAILING, no keys,
//! fetched again at once, recovered on the first good fetch with its version carried on); an
//! unreadable registration leaves the row out until it is registered again; an unreadable
//! access token is refused.

use keyrelay::proto::v1 as pb;
use sqlx::{Connection, PgConnection};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, restart_from, spawn_app, status, wait_until},
    mock_idp::{MockIdp, Mode},
};

const UNREADABLE_KEY_SETS: &str = r#"keyrelay_store_unreadable_rows_total{part="key_set"}"#;
const UNREADABLE_REGISTRATIONS: &str =
    r#"keyrelay_store_unreadable_rows_total{part="registration"}"#;

/// A server with `acme/broken` and `acme/fine` registered at version 1, both fresh for an hour.
async fn two_providers(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], Some("max-age=3600"));
    for provider in ["broken", "fine"] {
        let registered = app.register("acme", provider, &idp.jwks_url()).await;
        assert_eq!(status(&registered).version, 1);
    }
    (app, idp)
}

/// Waits until `acme/broken` serves again, and returns its version.
async fn recovered_version(app: &TestApp) -> u64 {
    wait_until(|| async {
        let provider = app.get("acme", "broken").await;
        (status(&provider).state() == pb::ProviderState::Ready).then(|| status(&provider).version)
    })
    .await
}

async fn an_unreadable_stored_key_set_quarantines_only_its_provider(backend: Backend) {
    let (app, idp) = two_providers(backend).await;
    let (storage, clock, args) = app.stop().await;
    storage.corrupt("broken", "jwks_json", "{not json").await;
    idp.set_mode(Mode::Gated);

    let app = restart_from(storage, clock, args).await;
    let fine = app
        .resolve("acme", "fine", None)
        .await
        .expect("the others serve");
    assert_eq!(fine.version, 1);
    let broken = app.get("acme", "broken").await;
    let broken = status(&broken);
    assert_eq!(broken.state(), pb::ProviderState::Failing);
    assert!(
        broken
            .last_error
            .starts_with("stored key set is unreadable (key set: response is not JSON"),
        "{}",
        broken.last_error
    );
    assert_eq!((broken.version, broken.key_count), (0, 0));
    let unserved = app.resolve("acme", "broken", None).await.unwrap_err();
    assert_eq!(unserved.code(), Code::Unavailable);
    assert!(app.metric(UNREADABLE_KEY_SETS).await >= 1.0);

    idp.wait_for_requests(3).await;
    idp.release(1);
    assert_eq!(
        recovered_version(&app).await,
        2,
        "the first good fetch recovers it, continuing its versions"
    );
    assert_eq!(app.metric(UNREADABLE_REGISTRATIONS).await, 0.0);
}

#[tokio::test]
async fn an_unreadable_stored_key_set_quarantines_only_its_provider_on_sqlite() {
    an_unreadable_stored_key_set_quarantines_only_its_provider(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_unreadable_stored_key_set_quarantines_only_its_provider_on_postgres() {
    an_unreadable_stored_key_set_quarantines_only_its_provider(Backend::Postgres).await;
}

async fn an_unreadable_registration_leaves_only_its_row_out(backend: Backend) {
    let (app, idp) = two_providers(backend).await;
    let (storage, clock, args) = app.stop().await;
    storage.corrupt("broken", "policy", "{").await;

    let app = restart_from(storage, clock, args).await;
    app.resolve("acme", "fine", None)
        .await
        .expect("the others serve");
    let request = pb::GetProviderRequest {
        tenant: "acme".into(),
        provider: "broken".into(),
    };
    let missing = app.admin().await.get_provider(request).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(app.metric(UNREADABLE_REGISTRATIONS).await >= 1.0);

    let registered = app.register("acme", "broken", &idp.jwks_url()).await;
    assert_eq!(
        status(&registered).state(),
        pb::ProviderState::Ready,
        "registering it again repairs the row"
    );
    assert_eq!(
        status(&registered).version,
        1,
        "its stored keys were readable"
    );
}

#[tokio::test]
async fn an_unreadable_registration_leaves_only_its_row_out_on_sqlite() {
    an_unreadable_registration_leaves_only_its_row_out(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_unreadable_registration_leaves_only_its_row_out_on_postgres() {
    an_unreadable_registration_leaves_only_its_row_out(Backend::Postgres).await;
}

/// Overwrites `column` of `acme/<provider>` with `value` under a new change sequence and
/// announces it, as a write of another replica would be.
async fn corrupt_and_notify(url: &str, provider: &str, column: &str, value: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let cast = if column == "jwks_json" {
        "convert_to($1, 'UTF8')"
    } else {
        "$1"
    };
    let sql = format!(
        "UPDATE providers SET {column} = {cast}, change_seq = nextval('provider_change_seq')
         WHERE tenant = 'acme' AND provider = $2 RETURNING change_seq"
    );
    let seq: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .bind(provider)
        .fetch_one(&mut conn)
        .await
        .expect("corrupt the row");
    sqlx::query("SELECT pg_notify('keyrelay_changes', $1)")
        .bind(format!("u/acme/{provider}/{seq}"))
        .execute(&mut conn)
        .await
        .expect("notify");
}

#[tokio::test]
async fn rows_that_turn_unreadable_under_a_running_fleet_affect_their_provider_only() {
    let (app, idp) = two_providers(Backend::Postgres).await;
    let peer = app.spawn_peer().await;
    let url = app.storage.database.as_ref().expect("postgres").url.clone();
    idp.set_mode(Mode::Gated);

    corrupt_and_notify(&url, "broken", "jwks_json", "{not json").await;
    for replica in [&app, &peer] {
        wait_until(|| async { (replica.metric(UNREADABLE_KEY_SETS).await >= 1.0).then_some(()) })
            .await;
        let broken = replica.get("acme", "broken").await;
        assert_eq!(status(&broken).state(), pb::ProviderState::Failing);
        replica
            .resolve("acme", "fine", None)
            .await
            .expect("the others serve");
    }
    idp.wait_for_requests(3).await;
    idp.release(1);
    for replica in [&app, &peer] {
        assert_eq!(recovered_version(replica).await, 2);
    }

    corrupt_and_notify(&url, "fine", "policy", "{").await;
    wait_until(|| async { (peer.metric(UNREADABLE_REGISTRATIONS).await >= 1.0).then_some(()) })
        .await;
    let fine = peer.resolve("acme", "fine", None).await;
    assert_eq!(
        fine.expect("a replica keeps what it held").version,
        1,
        "an unreadable registration does not replace the state held"
    );
    idp.set_mode(Mode::Normal);
    app.register("acme", "later", &idp.jwks_url()).await;
    wait_until(|| async { peer.resolve("acme", "later", None).await.ok() }).await;
}

async fn an_unreadable_access_token_is_refused_and_the_rest_serve(backend: Backend) {
    let (app, _idp) = two_providers(backend).await;
    let broken = app.verifier_token("acme").await;
    let fine = app.verifier_token("acme").await;
    let id = broken
        .split('_')
        .nth(1)
        .expect("krt_<id>_<secret>")
        .to_owned();
    let (storage, clock, args) = app.stop().await;
    let sql = "UPDATE access_tokens SET role = $1 WHERE id = $2";
    assert_eq!(storage.execute(sql, "no-such-role", false, &id).await, 1);

    let app = restart_from(storage, clock, args).await;
    let with = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move {
            let mut keys = app.keys_with_token(Some(&token)).await;
            let request = pb::ResolveRequest {
                tenant: "acme".into(),
                provider: "fine".into(),
                kid: None,
                if_newer_than_version: None,
            };
            keys.resolve(request).await.map(drop).map_err(|s| s.code())
        }
    };
    assert_eq!(with(&broken).await, Err(Code::Unauthenticated));
    assert_eq!(with(&fine).await, Ok(()));
    let sample = r#"keyrelay_store_unreadable_rows_total{part="access_token"}"#;
    assert!(app.metric(sample).await >= 1.0);
}

#[tokio::test]
async fn an_unreadable_access_token_is_refused_and_the_rest_serve_on_sqlite() {
    an_unreadable_access_token_is_refused_and_the_rest_serve(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_unreadable_access_token_is_refused_and_the_rest_serve_on_postgres() {
    an_unreadable_access_token_is_refused_and_the_rest_serve(Backend::Postgres).await;
}
