//! Access control end to end: tenant-scoped and verifier tokens, per-tenant verifier
//! authentication on Resolve, WatchKeys and the mirror, the audit log, and access changes
//! reaching a peer replica.

use std::time::Duration;

use keyrelay::proto::v1::{self as pb, watch_keys_response::Event};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tonic::{Code, Status};

use crate::{
    helpers::{AdminClient, Backend, TestApp, spawn_app, wait_until},
    mock_idp::{Document, MockIdp},
};

/// An issued token: its id and bearer secret.
struct Issued {
    id: String,
    secret: String,
}

async fn try_issue(
    admin: &mut AdminClient,
    role: pb::TokenRole,
    tenant: &str,
    ttl: Option<Duration>,
) -> Result<Issued, Status> {
    let response = admin
        .create_token(pb::CreateTokenRequest {
            role: role.into(),
            tenant: tenant.into(),
            description: format!("{} for {tenant}", role.as_str_name()),
            ttl: ttl.map(|ttl| prost_types::Duration {
                seconds: i64::try_from(ttl.as_secs()).unwrap(),
                nanos: 0,
            }),
        })
        .await?
        .into_inner();
    Ok(Issued {
        id: response.token.unwrap().id,
        secret: response.secret,
    })
}

async fn issue(app: &TestApp, role: pb::TokenRole, tenant: &str) -> Issued {
    try_issue(&mut app.admin().await, role, tenant, None)
        .await
        .expect("create token")
}

async fn app_with_two_tenants(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    app.register("globex", "auth0", &idp.jwks_url()).await;
    (app, idp)
}

fn get_request(tenant: &str, provider: &str) -> pb::GetProviderRequest {
    pb::GetProviderRequest {
        tenant: tenant.into(),
        provider: provider.into(),
    }
}

async fn audit(
    admin: &mut AdminClient,
    tenant: &str,
    page_size: u32,
) -> pb::ListAuditEventsResponse {
    admin
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: tenant.into(),
            page_size,
            page_token: String::new(),
        })
        .await
        .expect("list audit events")
        .into_inner()
}

async fn a_tenant_scoped_admin_token_sees_and_touches_only_its_tenant(backend: Backend) {
    let (app, idp) = app_with_two_tenants(backend).await;
    let acme = issue(&app, pb::TokenRole::Admin, "acme").await;
    let globex = issue(&app, pb::TokenRole::Verifier, "globex").await;
    let mut scoped = app.admin_with_token(Some(&acme.secret)).await;

    let foreign = scoped.get_provider(get_request("globex", "auth0")).await;
    let absent = scoped.get_provider(get_request("globex", "nope")).await;
    let (foreign, absent) = (foreign.unwrap_err(), absent.unwrap_err());
    assert_eq!(
        (foreign.code(), absent.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert_eq!(
        foreign.message().replace("auth0", "nope"),
        absent.message(),
        "another tenant's provider is indistinguishable from a missing one"
    );
    let unregister = scoped
        .unregister_provider(pb::UnregisterProviderRequest {
            tenant: "globex".into(),
            provider: "auth0".into(),
        })
        .await;
    assert_eq!(unregister.unwrap_err().code(), Code::NotFound);
    let refresh = scoped
        .refresh_provider(pb::RefreshProviderRequest {
            tenant: "globex".into(),
            provider: "auth0".into(),
        })
        .await;
    assert_eq!(refresh.unwrap_err().code(), Code::NotFound);
    let register = scoped
        .register_provider(pb::RegisterProviderRequest {
            tenant: "globex".into(),
            provider: "mine".into(),
            jwks_url: idp.jwks_url(),
            policy: None,
            ..Default::default()
        })
        .await;
    assert_eq!(register.unwrap_err().code(), Code::PermissionDenied);
    assert!(
        app.admin()
            .await
            .get_provider(get_request("globex", "auth0"))
            .await
            .is_ok()
    );

    let listed = |tenant: &str| pb::ListProvidersRequest {
        tenant: tenant.into(),
        ..Default::default()
    };
    let own = scoped
        .list_providers(listed(""))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = own.providers.iter().map(|p| p.tenant.as_str()).collect();
    assert_eq!(names, ["acme"]);
    let other = scoped.list_providers(listed("globex")).await.unwrap();
    assert!(other.into_inner().providers.is_empty());

    let tokens = scoped
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let ids: Vec<_> = tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [acme.id.as_str()]);
    let revoke = scoped
        .revoke_token(pb::RevokeTokenRequest {
            id: globex.id.clone(),
        })
        .await;
    assert_eq!(revoke.unwrap_err().code(), Code::NotFound);
    for (tenant, code) in [
        ("globex", Code::PermissionDenied),
        ("", Code::PermissionDenied),
    ] {
        let issued = try_issue(&mut scoped, pb::TokenRole::Admin, tenant, None).await;
        assert_eq!(issued.err().map(|s| s.code()), Some(code), "{tenant:?}");
    }
    assert!(
        try_issue(&mut scoped, pb::TokenRole::Verifier, "acme", None)
            .await
            .is_ok()
    );
    let cluster = scoped
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await;
    assert_eq!(cluster.unwrap_err().code(), Code::PermissionDenied);
    let access = scoped
        .get_tenant_access(pb::GetTenantAccessRequest {
            tenant: "globex".into(),
        })
        .await;
    assert_eq!(access.unwrap_err().code(), Code::PermissionDenied);

    let events = audit(&mut scoped, "", 100).await.events;
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.tenant == "acme"), "{events:?}");
    assert!(audit(&mut scoped, "globex", 100).await.events.is_empty());
}

#[tokio::test]
async fn a_tenant_scoped_admin_token_sees_and_touches_only_its_tenant_on_sqlite() {
    a_tenant_scoped_admin_token_sees_and_touches_only_its_tenant(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_tenant_scoped_admin_token_sees_and_touches_only_its_tenant_on_postgres() {
    a_tenant_scoped_admin_token_sees_and_touches_only_its_tenant(Backend::Postgres).await;
}

#[tokio::test]
async fn verifier_unknown_revoked_and_expired_tokens_cannot_administer() {
    let app = spawn_app(Backend::Sqlite).await;
    let verifier = issue(&app, pb::TokenRole::Verifier, "acme").await;
    let listing = pb::ListProvidersRequest::default();
    let code_with = |secret: String| {
        let app = &app;
        let listing = listing.clone();
        async move {
            let mut admin = app.admin_with_token(Some(&secret)).await;
            admin.list_providers(listing).await.err().map(|s| s.code())
        }
    };
    assert_eq!(
        code_with(verifier.secret.clone()).await,
        Some(Code::PermissionDenied)
    );
    let unknown = format!("krt_0123456789abcdef_{}", "A".repeat(43));
    assert_eq!(code_with(unknown).await, Some(Code::Unauthenticated));
    let tampered = format!("{}x", verifier.secret);
    assert_eq!(code_with(tampered).await, Some(Code::Unauthenticated));

    let admin = issue(&app, pb::TokenRole::Admin, "").await;
    assert_eq!(code_with(admin.secret.clone()).await, None);
    app.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest { id: admin.id })
        .await
        .expect("revoke");
    assert_eq!(code_with(admin.secret).await, Some(Code::Unauthenticated));

    let mut server_admin = app.admin().await;
    let short = try_issue(
        &mut server_admin,
        pb::TokenRole::Admin,
        "acme",
        Some(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(code_with(short.secret.clone()).await, None);
    app.advance(Duration::from_secs(60));
    assert_eq!(code_with(short.secret).await, Some(Code::Unauthenticated));

    let verifier_without_tenant =
        try_issue(&mut server_admin, pb::TokenRole::Verifier, "", None).await;
    let status = verifier_without_tenant.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("tenant"), "{}", status.message());
}

async fn resolve_with(
    app: &TestApp,
    token: Option<&str>,
    tenant: &str,
    provider: &str,
) -> Result<(), Status> {
    app.keys_with_token(token)
        .await
        .resolve(pb::ResolveRequest {
            tenant: tenant.into(),
            provider: provider.into(),
            kid: None,
            if_newer_than_version: None,
        })
        .await
        .map(drop)
}

async fn mirror_get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{}{path}", app.http_addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("mirror answers")
}

#[tokio::test]
async fn a_tenant_requiring_verifier_tokens_is_invisible_without_one() {
    let (app, _idp) = app_with_two_tenants(Backend::Sqlite).await;
    let acme = issue(&app, pb::TokenRole::Verifier, "acme").await;
    let globex = issue(&app, pb::TokenRole::Verifier, "globex").await;
    assert!(
        resolve_with(&app, None, "acme", "okta").await.is_ok(),
        "open by default"
    );
    app.require_verifier_token("acme", true).await;

    let hidden = resolve_with(&app, None, "acme", "okta").await.unwrap_err();
    let absent = resolve_with(&app, None, "acme", "nope").await.unwrap_err();
    assert_eq!(
        (hidden.code(), absent.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert_eq!(hidden.message().replace("okta", "nope"), absent.message());
    let wrong_tenant = resolve_with(&app, Some(&globex.secret), "acme", "okta").await;
    assert_eq!(wrong_tenant.unwrap_err().code(), Code::NotFound);
    let garbage = resolve_with(&app, Some("krt_garbage"), "globex", "auth0").await;
    assert_eq!(garbage.unwrap_err().code(), Code::Unauthenticated);
    assert!(
        resolve_with(&app, Some(&acme.secret), "acme", "okta")
            .await
            .is_ok()
    );
    assert!(resolve_with(&app, None, "globex", "auth0").await.is_ok());

    let selectors = vec![
        pb::WatchSelector {
            tenant: "acme".into(),
            provider: String::new(),
        },
        pb::WatchSelector {
            tenant: "globex".into(),
            provider: String::new(),
        },
    ];
    let request = pb::WatchKeysRequest {
        selectors,
        known_versions: Vec::new(),
    };
    for (token, expected) in [
        (None, vec!["globex"]),
        (Some(&acme.secret), vec!["acme", "globex"]),
    ] {
        let mut stream = app
            .keys_with_token(token.map(String::as_str))
            .await
            .watch_keys(request.clone())
            .await
            .expect("watch starts")
            .into_inner();
        let mut tenants = Vec::new();
        loop {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::KeySet(set) => tenants.push(set.tenant),
                Event::Synced(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        tenants.sort();
        assert_eq!(tenants, expected, "token {token:?}");
    }

    let anonymous = mirror_get(&app, "/v1/jwks/acme/okta", None).await;
    assert_eq!(anonymous.status().as_u16(), 404);
    let tenant_wide = mirror_get(&app, "/v1/jwks/acme", None).await;
    let missing_tenant = mirror_get(&app, "/v1/jwks/initech", None).await;
    assert_eq!(tenant_wide.status(), missing_tenant.status());
    assert_eq!(
        tenant_wide.text().await.unwrap().replace("acme", "initech"),
        missing_tenant.text().await.unwrap()
    );
    let bad = mirror_get(&app, "/v1/jwks/acme/okta", Some("krt_garbage")).await;
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(bad.headers()["www-authenticate"], "Bearer");
    let allowed = mirror_get(&app, "/v1/jwks/acme/okta", Some(&acme.secret)).await;
    assert_eq!(allowed.status().as_u16(), 200);
    let cache_control = allowed.headers()["cache-control"].to_str().unwrap();
    assert!(cache_control.starts_with("private,"), "{cache_control}");
    let public = mirror_get(&app, "/v1/jwks/globex/auth0", None).await;
    let cache_control = public.headers()["cache-control"].to_str().unwrap();
    assert!(cache_control.starts_with("public,"), "{cache_control}");

    app.require_verifier_token("acme", false).await;
    assert!(resolve_with(&app, None, "acme", "okta").await.is_ok());
}

async fn every_admin_change_is_audited_with_before_and_after(backend: Backend) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    let first_url = idp.jwks_url();
    let second_url = idp.url("/other.json");
    app.register("acme", "okta", &first_url).await;
    app.register("acme", "okta", &second_url).await;
    let token = issue(&app, pb::TokenRole::Admin, "acme").await;
    let mut scoped = app.admin_with_token(Some(&token.secret)).await;
    scoped
        .unregister_provider(pb::UnregisterProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
        })
        .await
        .expect("unregister");
    for _ in 0..2 {
        let revoke = pb::RevokeTokenRequest {
            id: token.id.clone(),
        };
        app.admin()
            .await
            .revoke_token(revoke)
            .await
            .expect("revoke");
    }
    app.require_verifier_token("acme", true).await;

    let mut admin = app.admin().await;
    let events = audit(&mut admin, "acme", 100).await.events;
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    let by_token = format!("token:{}", token.id);
    assert_eq!(
        summary,
        [
            ("tenant.set_access", "admin"),
            ("token.revoke", "admin"),
            ("provider.unregister", by_token.as_str()),
            ("token.create", "admin"),
            ("provider.register", "admin"),
            ("provider.register", "admin"),
        ],
        "newest first"
    );
    assert!(events.windows(2).all(|pair| pair[0].id > pair[1].id));
    assert!(
        events
            .iter()
            .all(|e| e.client == "127.0.0.1" && e.at.is_some())
    );
    let json = |text: &str| -> serde_json::Value {
        if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(text).expect("audit states are JSON")
        }
    };
    let (updated, created) = (&events[4], &events[5]);
    assert_eq!(json(&created.before), serde_json::Value::Null);
    assert_eq!(json(&created.after)["jwks_url"], first_url.as_str());
    assert_eq!(json(&updated.before)["jwks_url"], first_url.as_str());
    assert_eq!(json(&updated.after)["jwks_url"], second_url.as_str());
    assert_eq!(json(&events[2].before)["jwks_url"], second_url.as_str());
    assert_eq!(json(&events[2].after), serde_json::Value::Null);
    assert_eq!(
        json(&events[1].before)["revoked_at"],
        serde_json::Value::Null
    );
    assert!(json(&events[1].after)["revoked_at"].is_string());
    assert_eq!(json(&events[0].after)["verifier_token_required"], true);
    for event in &events {
        assert!(
            !event.after.contains(&token.secret) && !event.before.contains(&token.secret),
            "no secret in the audit log"
        );
    }

    let first_page = audit(&mut admin, "acme", 4).await;
    assert_eq!(first_page.events, events[..4]);
    let rest = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            page_size: 4,
            page_token: first_page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events, events[4..]);
    assert_eq!(rest.next_page_token, "");
}

#[tokio::test]
async fn every_admin_change_is_audited_with_before_and_after_on_sqlite() {
    every_admin_change_is_audited_with_before_and_after(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_admin_change_is_audited_with_before_and_after_on_postgres() {
    every_admin_change_is_audited_with_before_and_after(Backend::Postgres).await;
}

#[tokio::test]
async fn a_rejected_key_set_is_audited_once_per_reason() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["key-1"], Some("max-age=600"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    let reused = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "key-1",
        "x": "uV8nFHuNEdTc6Kxy_kqz3Xtg8JZstNh5Xjh15ErYpY4",
    }]});
    idp.set_document(Document {
        body: reused.to_string(),
        ..Document::default()
    });
    app.refresh("acme", "okta").await;
    app.refresh("acme", "okta").await;

    let events = audit(&mut app.admin().await, "acme", 100).await.events;
    let rejections: Vec<_> = events
        .iter()
        .filter(|e| e.action == "key_set.rejected")
        .collect();
    assert_eq!(rejections.len(), 1, "{events:?}");
    let rejection = rejections[0];
    assert_eq!(
        (rejection.actor.as_str(), rejection.provider.as_str()),
        ("keyrelay", "okta")
    );
    let after: serde_json::Value = serde_json::from_str(&rejection.after).unwrap();
    assert!(
        after["error"]
            .as_str()
            .unwrap()
            .contains("different key material"),
        "{after}"
    );
    assert!(after["reason"].is_string(), "{after}");
}

#[tokio::test]
async fn token_secrets_are_kept_only_as_digests() {
    let app = spawn_app(Backend::Postgres).await;
    let issued = issue(&app, pb::TokenRole::Verifier, "acme").await;
    let database = app.storage.database.as_ref().expect("postgres");
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    let (row, digest): (String, Vec<u8>) =
        sqlx::query_as("SELECT t::text, secret_sha256 FROM access_tokens t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    // `krt_<16 hex digits>_<secret>`; the secret itself may contain `_`.
    let secret = &issued.secret[format!("krt_{}_", issued.id).len()..];
    assert_eq!(secret.len(), 43);
    assert!(!row.contains(secret), "{row}");
    assert_eq!(digest, Sha256::digest(secret.as_bytes()).to_vec());
}

#[tokio::test]
async fn access_changes_reach_a_peer_replica() {
    let (app, _idp) = app_with_two_tenants(Backend::Postgres).await;
    let peer = app.spawn_peer().await;
    let issued = issue(&app, pb::TokenRole::Admin, "acme").await;
    let listing = || pb::ListProvidersRequest::default();
    let accepted_by_peer = || async {
        let mut admin = peer.admin_with_token(Some(&issued.secret)).await;
        admin.list_providers(listing()).await.map(drop)
    };
    wait_until(|| async { accepted_by_peer().await.ok() }).await;

    app.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest {
            id: issued.id.clone(),
        })
        .await
        .unwrap();
    let refused = wait_until(|| async { accepted_by_peer().await.err() }).await;
    assert_eq!(refused.code(), Code::Unauthenticated);

    app.require_verifier_token("globex", true).await;
    let hidden =
        wait_until(|| async { resolve_with(&peer, None, "globex", "auth0").await.err() }).await;
    assert_eq!(hidden.code(), Code::NotFound);
}

/// A WatchKeys stream on `tenant`, read up to its `synced`.
async fn synced_watch(
    app: &TestApp,
    token: Option<&str>,
    tenant: &str,
) -> tonic::Streaming<pb::WatchKeysResponse> {
    let request = pb::WatchKeysRequest {
        selectors: vec![pb::WatchSelector {
            tenant: tenant.into(),
            provider: String::new(),
        }],
        known_versions: Vec::new(),
    };
    let mut stream = app
        .keys_with_token(token)
        .await
        .watch_keys(request)
        .await
        .expect("watch starts")
        .into_inner();
    while !matches!(
        stream.message().await.unwrap().unwrap().event,
        Some(Event::Synced(_))
    ) {}
    stream
}

async fn ended_with(stream: &mut tonic::Streaming<pb::WatchKeysResponse>) -> Code {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends within 10 s")
        .expect_err("the stream ends with an error")
        .code()
}

#[tokio::test]
async fn open_streams_end_when_their_access_does() {
    let (app, idp) = app_with_two_tenants(Backend::Sqlite).await;
    app.require_verifier_token("acme", true).await;
    let revoked = issue(&app, pb::TokenRole::Verifier, "acme").await;
    let mut stream = synced_watch(&app, Some(&revoked.secret), "acme").await;
    app.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest { id: revoked.id })
        .await
        .unwrap();
    assert_eq!(ended_with(&mut stream).await, Code::Unauthenticated);

    let expiring = try_issue(
        &mut app.admin().await,
        pb::TokenRole::Verifier,
        "acme",
        Some(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let mut stream = synced_watch(&app, Some(&expiring.secret), "acme").await;
    app.advance(Duration::from_secs(60));
    assert_eq!(ended_with(&mut stream).await, Code::Unauthenticated);

    let mut anonymous = synced_watch(&app, None, "globex").await;
    let lasting = issue(&app, pb::TokenRole::Verifier, "globex").await;
    let mut holder = synced_watch(&app, Some(&lasting.secret), "globex").await;
    app.require_verifier_token("globex", true).await;
    assert_eq!(ended_with(&mut anonymous).await, Code::Unavailable);
    idp.serve_kids(&["k1", "k2"], Some("max-age=600"));
    app.refresh("globex", "auth0").await;
    let next = holder
        .message()
        .await
        .expect("the token holder keeps its stream");
    assert!(matches!(next.unwrap().event, Some(Event::KeySet(set)) if set.version == 2));
}
