//! The status page for people: an admin token (a bearer header, or a login that sets an
//! HttpOnly session cookie) shows the fleet and the providers the caller administers, never a
//! token or the database URL, under a strict Content-Security-Policy; and a real headless
//! Chromium logs in, sees a failing provider with its error, filters by tenant and meets no
//! console error.

use std::process::Command;

use keyrelay::proto::v1 as pb;
use reqwest::{Client, StatusCode, header, redirect::Policy};

use crate::{
    helpers::{ADMIN_TOKEN, Backend, TestApp, spawn_app},
    mock_idp::{MockIdp, Mode},
};

/// A server with a ready provider of `acme`, a failing one of `acme`, and one of `other`.
async fn app_with_providers(backend: Backend) -> (TestApp, MockIdp, MockIdp) {
    let app = spawn_app(backend).await;
    let healthy = MockIdp::start(app.clock.clone()).await;
    let failing = MockIdp::start(app.clock.clone()).await;
    failing.set_mode(Mode::Status(503, None));
    app.register("acme", "okta", &healthy.jwks_url()).await;
    app.register("acme", "broken", &failing.jwks_url()).await;
    app.register("other", "auth0", &healthy.jwks_url()).await;
    (app, healthy, failing)
}

fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("HTTP client")
}

fn form(token: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    format!("token={encoded}")
}

async fn log_in(app: &TestApp, token: &str) -> reqwest::Response {
    client()
        .post(format!("http://{}/login", app.http_addr))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(token))
        .send()
        .await
        .expect("login answers")
}

pub async fn page(app: &TestApp, header: (header::HeaderName, String)) -> (StatusCode, String) {
    let response = client()
        .get(format!("http://{}/", app.http_addr))
        .header(header.0, header.1)
        .send()
        .await
        .expect("page answers");
    (response.status(), response.text().await.expect("body"))
}

#[tokio::test]
async fn the_page_needs_an_admin_login_and_never_shows_a_secret() {
    let (app, _healthy, _failing) = app_with_providers(Backend::Postgres).await;
    let (status, anonymous) = app.http_get("/").await;
    assert_eq!(status, 200);
    assert!(anonymous.contains(r#"name="token""#), "{anonymous}");
    assert!(
        !anonymous.contains("acme/okta"),
        "nothing shown before a login"
    );

    assert_eq!(
        log_in(&app, "wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let failures = r#"keyrelay_auth_failures_total{service="status_page",reason="rejected"}"#;
    assert_eq!(app.metric(failures).await, 1.0);
    let verifier = app.verifier_token("acme").await;
    assert_eq!(
        log_in(&app, &verifier).await.status(),
        StatusCode::FORBIDDEN
    );

    let revoke = pb::RevokeKeyRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: "key-1".into(),
        reason: "leaked <in> a log".into(),
    };
    app.admin().await.revoke_key(revoke).await.expect("revoke");
    let logged_in = log_in(&app, ADMIN_TOKEN).await;
    assert_eq!(logged_in.status(), StatusCode::SEE_OTHER);
    let cookie = logged_in.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let response = client()
        .get(format!("http://{}/", app.http_addr))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    let html = response.text().await.unwrap();
    assert!(
        policy.starts_with("default-src 'none'; style-src 'nonce-"),
        "{policy}"
    );
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(html.contains(&format!(r#"<style nonce="{nonce}">"#)));
    assert!(!html.contains("<script"), "no script at all");
    for shown in [
        "acme/okta",
        "acme/broken",
        "other/auth0",
        "FAILING",
        "HTTP 503",
        "postgres store",
        "revoked <code>key-1</code> now by admin: leaked &lt;in&gt; a log",
    ] {
        assert!(html.contains(shown), "{shown} missing from the page");
    }
    let database = app.storage.database.as_ref().unwrap().url.clone();
    for secret in [
        ADMIN_TOKEN,
        verifier.as_str(),
        database.as_str(),
        &session[17..],
    ] {
        assert!(!html.contains(secret), "the page shows a secret");
    }

    let logged_out = client()
        .post(format!("http://{}/logout", app.http_addr))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(logged_out.status(), StatusCode::SEE_OTHER);
    let (_, after) = page(&app, (header::COOKIE, session)).await;
    assert!(after.contains(r#"name="token""#), "the session ended");
}

#[tokio::test]
async fn a_tenant_admin_sees_its_tenant_only_and_filters_are_applied() {
    let (app, _healthy, _failing) = app_with_providers(Backend::Sqlite).await;
    let created = app
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            role: pb::TokenRole::Admin.into(),
            tenant: "acme".into(),
            description: "acme operator".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    let bearer = (header::AUTHORIZATION, format!("Bearer {}", created.secret));
    let (status, scoped) = page(&app, bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(scoped.contains("acme/okta") && !scoped.contains("other/auth0"));
    assert!(scoped.contains("shown to tokens valid for every tenant"));

    let admin = (header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
    let response = client()
        .get(format!("http://{}/?tenant=other", app.http_addr))
        .header(admin.0, admin.1)
        .send()
        .await
        .unwrap();
    let filtered = response.text().await.unwrap();
    assert!(filtered.contains("other/auth0") && !filtered.contains("acme/okta"));
    let (status, _) = page(&app, (header::AUTHORIZATION, "Bearer nope".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_real_browser_logs_in_sees_the_failing_provider_and_filters() {
    let (app, _healthy, _failing) = app_with_providers(Backend::Sqlite).await;
    let modules = std::env::var("KEYRELAY_TEST_NODE_MODULES").expect(
        "KEYRELAY_TEST_NODE_MODULES is not set: run scripts/test.sh, which installs playwright-core",
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let screenshot = root.join("target/status-page.png");
    let run = tokio::task::spawn_blocking({
        let url = format!("http://{}/", app.http_addr);
        move || {
            Command::new("node")
                .arg(root.join("tests/browser/status_page.cjs"))
                .args([url.as_str(), ADMIN_TOKEN, "HTTP 503"])
                .arg(&screenshot)
                .env("NODE_PATH", modules)
                .output()
                .expect("node runs")
        }
    });
    let output = run.await.unwrap();
    assert!(
        output.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("status page: ok"), "{stdout}");
}
