//! Failed authentications are visible and bounded: counted by service and reason, the first
//! of a burst from one client logged at warn with its address, and failed AdminService
//! authentications limited per client address (RESOURCE_EXHAUSTED past the limit).

use keyrelay::proto::v1 as pb;
use tonic::Code;

use crate::{
    fleet::Replica,
    helpers::{ADMIN_TOKEN, Backend, TestApp, TestDatabase, spawn_app_with},
    mock_idp::MockIdp,
};

async fn failures(app: &TestApp, service: &str, reason: &str) -> f64 {
    let sample =
        format!("keyrelay_auth_failures_total{{service=\"{service}\",reason=\"{reason}\"}}");
    app.metric(&sample).await
}

async fn cluster_status(app: &TestApp, token: Option<&str>) -> Result<(), Code> {
    let mut admin = app.admin_with_token(token).await;
    let answer = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await;
    answer.map(drop).map_err(|status| status.code())
}

#[tokio::test]
async fn failed_admin_authentications_are_counted_and_limited_per_client_address() {
    let app = spawn_app_with(Backend::Sqlite, &["--admin-auth-failure-rate", "1"]).await;
    let verifier = app.verifier_token("acme").await;

    assert_eq!(
        cluster_status(&app, Some(&verifier)).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        cluster_status(&app, Some("wrong")).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(cluster_status(&app, None).await, Err(Code::Unauthenticated));
    assert_eq!(
        cluster_status(&app, Some(ADMIN_TOKEN)).await,
        Err(Code::ResourceExhausted),
        "past the limit (1/s, bursts of 2) even the right token waits"
    );

    assert_eq!(failures(&app, "admin", "verifier_token").await, 1.0);
    assert_eq!(failures(&app, "admin", "rejected").await, 1.0);
    assert_eq!(failures(&app, "admin", "missing").await, 1.0);
    assert_eq!(failures(&app, "admin", "rate_limited").await, 1.0);
}

#[tokio::test]
async fn failed_verifier_and_mirror_authentications_are_counted_and_never_limited() {
    let app = spawn_app_with(Backend::Sqlite, &["--admin-auth-failure-rate", "1"]).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    for _ in 0..5 {
        let mut keys = app.keys_with_token(Some("not-a-token")).await;
        let request = pb::ResolveRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
            kid: None,
            if_newer_than_version: None,
        };
        let refused = keys.resolve(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let mirror = format!("http://{}/v1/jwks/acme/okta", app.http_addr);
    let response = reqwest::Client::new()
        .get(&mirror)
        .header("authorization", "Basic bm8=")
        .send()
        .await
        .expect("mirror answers");
    assert_eq!(response.status().as_u16(), 401);

    assert_eq!(failures(&app, "key", "rejected").await, 5.0);
    assert_eq!(failures(&app, "key", "rate_limited").await, 0.0);
    assert_eq!(failures(&app, "mirror", "malformed").await, 1.0);
    assert_eq!(
        cluster_status(&app, Some(ADMIN_TOKEN)).await,
        Ok(()),
        "KeyService failures do not count against AdminService"
    );
}

#[tokio::test]
async fn the_first_failure_of_a_burst_is_logged_at_warn_with_the_client_address() {
    let database = TestDatabase::create().await;
    let replica = Replica::start("auth-log", &database.url, &["--log-format", "json"]).await;
    for _ in 0..4 {
        let mut admin = replica.admin_with("wrong-token").await;
        let refused = admin
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    replica.wait_for_logs("authentication failed", 4).await;
    let failed = replica.logged("authentication failed");
    let warned: Vec<&String> = failed
        .iter()
        .filter(|line| line.contains(r#""level":"WARN""#))
        .collect();
    assert_eq!(warned.len(), 1, "one warning for the burst: {failed:#?}");
    for expected in [
        r#""client":"127.0.0.1""#,
        r#""service":"admin""#,
        r#""reason":"rejected""#,
    ] {
        assert!(warned[0].contains(expected), "{expected} in {}", warned[0]);
    }
    assert_eq!(failed.len(), 4, "the rest at debug: {failed:#?}");
}
