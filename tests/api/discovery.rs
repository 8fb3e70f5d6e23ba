//! Providers registered by issuer, over real gRPC against a mock IdP serving real metadata
//! documents: OpenID Connect Discovery and RFC 8414's fallback (with path insertion), the exact
//! issuer match, refused documents keeping the last good discovery and keys, a changed
//! `jwks_uri` audited and fetched at once, conditional re-discovery on its own schedule, the
//! issuer on every key set, and the discovery state across a restart.

use std::time::Duration;

use keyrelay::proto::v1 as pb;
use reqwest::header::AUTHORIZATION;
use serde_json::json;
use tonic::Code;

use crate::{
    helpers::{
        ADMIN_TOKEN, AdminClient, Backend, TestApp, kids, selector, spawn_app, status, wait_until,
    },
    mock_idp::{Document, MockIdp, jwks},
    status_page::page,
};

const OPENID: &str = "/.well-known/openid-configuration";

/// A metadata document for `issuer` naming `jwks_uri`, fresh for `max_age` seconds.
fn metadata(issuer: &str, jwks_uri: &str, max_age: u64) -> Document {
    Document {
        body: json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string(),
        cache_control: Some(format!("max-age={max_age}")),
        ..Document::default()
    }
}

/// A JWKS of these kids, fresh for an hour.
fn keys(kids: &[&str]) -> Document {
    Document {
        body: jwks(kids).to_string(),
        cache_control: Some("max-age=3600".into()),
        ..Document::default()
    }
}

async fn started(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    (app, idp)
}

async fn register_issuer(app: &TestApp, provider: &str, issuer: &str) -> pb::Provider {
    try_register(app, provider, "", issuer)
        .await
        .expect("registered")
}

async fn try_register(
    app: &TestApp,
    provider: &str,
    jwks_url: &str,
    issuer: &str,
) -> Result<pb::Provider, tonic::Status> {
    let request = pb::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: provider.into(),
        jwks_url: jwks_url.into(),
        issuer: issuer.into(),
        ..Default::default()
    };
    let response = app.admin().await.register_provider(request).await?;
    Ok(response.into_inner().provider.expect("provider"))
}

fn discovery(provider: &pb::Provider) -> &pb::DiscoveryStatus {
    status(provider)
        .discovery
        .as_ref()
        .expect("discovery status")
}

async fn audited(admin: &mut AdminClient, action: &str) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        page_size: 100,
        page_token: String::new(),
    };
    let events = admin.list_audit_events(request).await;
    let events = events.expect("audit log").into_inner().events;
    events.into_iter().filter(|e| e.action == action).collect()
}

fn paths(idp: &MockIdp) -> Vec<String> {
    idp.requests().into_iter().map(|r| r.path).collect()
}

async fn discovers_the_jwks_uri_and_serves_its_keys_with_the_issuer(backend: Backend) {
    let (app, idp) = started(backend).await;
    let issuer = idp.url("");
    idp.set_route(OPENID, Some(metadata(&issuer, &idp.url("/keys"), 600)));
    idp.set_route("/keys", Some(keys(&["k1"])));

    let provider = register_issuer(&app, "okta", &issuer).await;
    assert_eq!(status(&provider).state(), pb::ProviderState::Ready);
    assert_eq!(status(&provider).version, 1);
    assert_eq!(provider.issuer, issuer);
    assert_eq!(provider.jwks_url, idp.url("/keys"));
    let discovered = discovery(&provider);
    assert_eq!(
        (discovered.jwks_uri.as_str(), discovered.document.as_str()),
        (idp.url("/keys").as_str(), "openid-configuration")
    );
    assert!(discovered.confirmed_at.is_some() && discovered.last_error.is_empty());
    assert_eq!(paths(&idp), [OPENID, "/keys"]);

    let resolved = app
        .resolve("acme", "okta", Some("k1"))
        .await
        .expect("kid k1");
    assert_eq!(resolved.issuer, issuer);
    let mut watch = app.watch(vec![selector("acme", "")], Vec::new()).await;
    let watched = watch.next_key_set().await;
    assert_eq!(
        (watched.issuer.as_str(), kids(&watched)),
        (issuer.as_str(), vec!["k1"])
    );

    let changes = audited(&mut app.admin().await, "provider.jwks_uri_changed").await;
    assert_eq!(changes.len(), 1, "the first discovery is audited");
    assert_eq!(changes[0].actor, "keyrelay");
    let after: serde_json::Value = serde_json::from_str(&changes[0].after).unwrap();
    assert_eq!(after["jwks_uri"], json!(idp.url("/keys")));
    let registered = audited(&mut app.admin().await, "provider.register").await;
    let after: serde_json::Value = serde_json::from_str(&registered[0].after).unwrap();
    assert_eq!(after["issuer"], json!(issuer));

    let app = app.restart().await;
    let restored = app.get("acme", "okta").await;
    assert_eq!(
        discovery(&restored),
        discovered,
        "discovery state survives a restart"
    );
    assert_eq!(restored.issuer, issuer);
}

#[tokio::test]
async fn discovers_the_jwks_uri_and_serves_its_keys_with_the_issuer_sqlite() {
    discovers_the_jwks_uri_and_serves_its_keys_with_the_issuer(Backend::Sqlite).await;
}

#[tokio::test]
async fn discovers_the_jwks_uri_and_serves_its_keys_with_the_issuer_postgres() {
    discovers_the_jwks_uri_and_serves_its_keys_with_the_issuer(Backend::Postgres).await;
}

async fn a_path_issuer_falls_back_to_rfc_8414_with_the_path_inserted(backend: Backend) {
    let (app, idp) = started(backend).await;
    let issuer = idp.url("/tenants/acme");
    idp.set_route("/tenants/acme/.well-known/openid-configuration", None);
    let rfc_8414 = "/.well-known/oauth-authorization-server/tenants/acme";
    idp.set_route(rfc_8414, Some(metadata(&issuer, &idp.url("/keys"), 600)));
    idp.set_route("/keys", Some(keys(&["k1"])));

    let provider = register_issuer(&app, "auth0", &issuer).await;
    assert_eq!(status(&provider).version, 1);
    assert_eq!(discovery(&provider).document, "oauth-authorization-server");
    assert_eq!(
        paths(&idp),
        [
            "/tenants/acme/.well-known/openid-configuration",
            rfc_8414,
            "/keys"
        ]
    );

    app.advance(Duration::from_secs(10));
    app.refresh("acme", "auth0").await;
    assert_eq!(
        paths(&idp)[3..],
        [rfc_8414, "/keys"],
        "the document that answered is asked first from then on"
    );
}

#[tokio::test]
async fn a_path_issuer_falls_back_to_rfc_8414_with_the_path_inserted_sqlite() {
    a_path_issuer_falls_back_to_rfc_8414_with_the_path_inserted(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_path_issuer_falls_back_to_rfc_8414_with_the_path_inserted_postgres() {
    a_path_issuer_falls_back_to_rfc_8414_with_the_path_inserted(Backend::Postgres).await;
}

async fn a_refused_document_is_a_clear_error_and_keeps_the_last_good_discovery(backend: Backend) {
    let (app, idp) = started(backend).await;
    let issuer = idp.url("");
    idp.set_route(
        OPENID,
        Some(metadata(&format!("{issuer}/"), &idp.url("/keys"), 600)),
    );
    idp.set_route("/keys", Some(keys(&["k1"])));

    let never = register_issuer(&app, "okta", &issuer).await;
    assert_eq!(status(&never).state(), pb::ProviderState::Failing);
    assert!(
        status(&never).last_error.starts_with("discovery failed: ")
            && status(&never).last_error.contains("must be identical"),
        "{}",
        status(&never).last_error
    );
    assert_eq!(status(&never).version, 0);
    assert!(
        !paths(&idp).contains(&"/keys".to_owned()),
        "no JWKS URL was trusted"
    );

    idp.set_route(OPENID, Some(metadata(&issuer, &idp.url("/keys"), 600)));
    let good = app.refresh("acme", "okta").await;
    assert_eq!(status(&good).state(), pb::ProviderState::Ready);
    assert_eq!(status(&good).version, 1);

    let refused = [
        (
            metadata("https://evil.example.com", &idp.url("/evil"), 600).body,
            "must be identical",
        ),
        (json!({"issuer": issuer}).to_string(), "no jwks_uri"),
        ("<html>".to_owned(), "not a JSON object"),
        (
            json!({"issuer": issuer, "jwks_uri": "ftp://127.0.0.1/keys"}).to_string(),
            "must use https",
        ),
    ];
    for (failures, (body, reason)) in (1..).zip(refused) {
        idp.set_route(
            OPENID,
            Some(Document {
                body,
                ..Document::default()
            }),
        );
        let after = app.refresh("acme", "okta").await;
        let discovered = discovery(&after);
        assert!(
            discovered.last_error.contains(reason),
            "{reason}: {}",
            discovered.last_error
        );
        assert_eq!(discovered.consecutive_failures, failures);
        assert_eq!(
            discovered.jwks_uri,
            idp.url("/keys"),
            "the last good discovery stays"
        );
        assert_eq!(
            status(&after).state(),
            pb::ProviderState::Ready,
            "its keys are still refreshed"
        );
        assert_eq!(status(&after).version, 1);
    }
    let failures = app
        .metric("keyrelay_discoveries_total{outcome=\"issuer_mismatch\"}")
        .await;
    assert_eq!(failures, 2.0);

    let admin = (AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
    let (_, html) = page(&app, admin).await;
    for shown in [
        issuer.clone(),
        format!("keys at <code>{}</code>", idp.url("/keys")),
        "discovery: ".to_owned(),
        "must use https".to_owned(),
    ] {
        assert!(html.contains(&shown), "the status page shows {shown:?}");
    }
}

#[tokio::test]
async fn a_refused_document_is_a_clear_error_and_keeps_the_last_good_discovery_sqlite() {
    a_refused_document_is_a_clear_error_and_keeps_the_last_good_discovery(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refused_document_is_a_clear_error_and_keeps_the_last_good_discovery_postgres() {
    a_refused_document_is_a_clear_error_and_keeps_the_last_good_discovery(Backend::Postgres).await;
}

async fn rediscovery_on_its_own_schedule_follows_a_moved_jwks_uri(backend: Backend) {
    let (app, idp) = started(backend).await;
    let issuer = idp.url("");
    let mut document = metadata(&issuer, &idp.url("/keys-1"), 120);
    document.etag = Some("\"m1\"".into());
    idp.set_route(OPENID, Some(document));
    idp.set_route("/keys-1", Some(keys(&["k1"])));
    idp.set_route("/keys-2", Some(keys(&["k2"])));
    let registered = register_issuer(&app, "okta", &issuer).await;
    let first_confirmed = discovery(&registered).confirmed_at;
    let mut watch = app.watch(vec![selector("acme", "okta")], Vec::new()).await;
    assert_eq!(kids(&watch.next_key_set().await), ["k1"]);
    watch.expect_synced().await;

    app.advance(Duration::from_secs(120));
    idp.wait_for_requests(3).await;
    let revalidated = wait_until(|| async {
        let provider = app.get("acme", "okta").await;
        (discovery(&provider).confirmed_at != first_confirmed).then_some(provider)
    })
    .await;
    let requests = idp.requests();
    assert_eq!(requests[2].path, OPENID);
    assert_eq!(
        requests[2].if_none_match.as_deref(),
        Some("\"m1\""),
        "discovery revalidates with its own validators"
    );
    assert_eq!(
        requests.len(),
        3,
        "the keys were not due, so only discovery ran"
    );
    assert_eq!(status(&revalidated).version, 1);

    let mut moved = metadata(&issuer, &idp.url("/keys-2"), 120);
    moved.etag = Some("\"m2\"".into());
    idp.set_route(OPENID, Some(moved));
    app.advance(Duration::from_secs(120));
    let set = watch.next_key_set().await;
    assert_eq!(
        (set.version, kids(&set)),
        (2, vec!["k2"]),
        "the new URL's keys at once"
    );
    assert_eq!(paths(&idp)[3..], [OPENID, "/keys-2"]);

    let changes = audited(&mut app.admin().await, "provider.jwks_uri_changed").await;
    assert_eq!(changes.len(), 2, "first discovery and the move");
    let before: serde_json::Value = serde_json::from_str(&changes[0].before).unwrap();
    let after: serde_json::Value = serde_json::from_str(&changes[0].after).unwrap();
    assert_eq!(
        (before["jwks_uri"].clone(), after["jwks_uri"].clone()),
        (json!(idp.url("/keys-1")), json!(idp.url("/keys-2"))),
        "newest first: the move from /keys-1 to /keys-2"
    );
}

#[tokio::test]
async fn rediscovery_on_its_own_schedule_follows_a_moved_jwks_uri_sqlite() {
    rediscovery_on_its_own_schedule_follows_a_moved_jwks_uri(Backend::Sqlite).await;
}

#[tokio::test]
async fn rediscovery_on_its_own_schedule_follows_a_moved_jwks_uri_postgres() {
    rediscovery_on_its_own_schedule_follows_a_moved_jwks_uri(Backend::Postgres).await;
}

#[tokio::test]
async fn a_registration_gives_exactly_one_of_jwks_url_and_issuer() {
    let (app, idp) = started(Backend::Sqlite).await;
    let cases = [
        (
            String::new(),
            String::new(),
            "invalid jwks_url, issuer, pushed: give one of them",
        ),
        (
            idp.jwks_url(),
            idp.url(""),
            "invalid jwks_url, issuer, pushed: give only one",
        ),
        (
            String::new(),
            idp.url("/?tenant=acme"),
            "invalid issuer: must have no query",
        ),
        (
            String::new(),
            "acme.okta.com".to_owned(),
            "invalid issuer: not an absolute URL",
        ),
    ];
    for (jwks_url, issuer, message) in cases {
        let err = try_register(&app, "okta", &jwks_url, &issuer)
            .await
            .expect_err(message);
        assert_eq!(err.code(), Code::InvalidArgument, "{message}");
        assert!(err.message().starts_with(message), "{}", err.message());
    }

    let confined = pb::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        issuer: idp.url(""),
        policy: Some(pb::ProviderPolicy {
            allowed_hosts: vec!["idp.example.com".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = app
        .admin()
        .await
        .register_provider(confined)
        .await
        .expect_err("the issuer's host is not allowed");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid issuer: ")
            && err.message().contains("policy.allowed_hosts"),
        "the policy's hosts apply to the issuer's metadata: {}",
        err.message()
    );
}
