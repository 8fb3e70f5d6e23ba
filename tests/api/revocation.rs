//! Emergency revocation over real gRPC: RevokeKey withholds a kid from Resolve, WatchKeys and
//! the mirror while the IdP keeps publishing it, across refreshes, a refresh in flight and a
//! restart, until ReinstateKey; both are audited, and bad requests say what to fix.

use keyrelay::proto::v1 as pb;
use serde_json::Value;
use tonic::Code;

use crate::{
    helpers::{AdminClient, Backend, TestApp, kids, known, selector, spawn_app, status},
    mock_idp::{MockIdp, Mode},
};

fn revoke_request(kid: &str, reason: &str) -> pb::RevokeKeyRequest {
    pb::RevokeKeyRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: kid.into(),
        reason: reason.into(),
    }
}

fn reinstate_request(kid: &str) -> pb::ReinstateKeyRequest {
    pb::ReinstateKeyRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: kid.into(),
    }
}

async fn revoke(app: &TestApp, kid: &str) -> pb::RevokeKeyResponse {
    let request = revoke_request(kid, "private key leaked in a build log");
    let response = app.admin().await.revoke_key(request).await;
    response.expect("revoke").into_inner()
}

async fn reinstate(app: &TestApp, kid: &str) -> Result<pb::ReinstateKeyResponse, tonic::Status> {
    let response = app
        .admin()
        .await
        .reinstate_key(reinstate_request(kid))
        .await;
    response.map(tonic::Response::into_inner)
}

/// A server with acme/okta registered at an IdP publishing `key-1` and `key-2` (version 1).
async fn registered(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["key-1", "key-2"], Some("max-age=600"));
    let provider = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&provider).version, 1);
    (app, idp)
}

fn mirrored_kids(body: &str) -> Vec<String> {
    let document: Value = serde_json::from_str(body).expect("the mirror answers JSON");
    document["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .map(|key| key["kid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn audited(admin: &mut AdminClient) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        page_size: 100,
        page_token: String::new(),
    };
    let events = admin.list_audit_events(request).await;
    events.expect("audit log").into_inner().events
}

async fn withheld_everywhere_until_reinstated(backend: Backend) {
    let (app, idp) = registered(backend).await;
    let mut watch = app
        .watch(vec![selector("acme", "")], vec![known("acme", "okta", 1)])
        .await;
    watch.expect_synced().await;

    let revoked = revoke(&app, "key-2").await;
    assert!(!revoked.already_revoked && revoked.in_key_set);
    let provider = revoked.provider.expect("provider");
    let listed = &status(&provider).revoked_keys;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].kid.as_str(), listed[0].revoked_by.as_str()),
        ("key-2", "admin")
    );
    assert!(listed[0].published_by_provider);
    assert_eq!(status(&provider).version, 2);

    let set = watch.next_key_set().await;
    assert_eq!((set.version, kids(&set)), (2, vec!["key-1"]));
    assert_eq!(set.revoked_kids, ["key-2"]);

    let fetches = idp.request_count();
    let refused = app
        .resolve("acme", "okta", Some("key-2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(
        refused.message().contains("was revoked")
            && refused.message().contains("private key leaked"),
        "{}",
        refused.message()
    );
    assert_eq!(
        idp.request_count(),
        fetches,
        "a revoked kid triggers no fetch"
    );
    let (code, body) = app.http_get("/v1/jwks/acme/okta").await;
    assert_eq!(
        (code, mirrored_kids(&body)),
        (200, vec!["key-1".to_owned()])
    );

    let refreshed = app.refresh("acme", "okta").await;
    assert_eq!(idp.request_count(), fetches + 1);
    assert_eq!(
        status(&refreshed).version,
        2,
        "the IdP still publishing it brings nothing back"
    );
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(kids(&set), ["key-1"]);

    let again = revoke(&app, "key-2").await;
    assert!(again.already_revoked);
    assert_eq!(status(&again.provider.unwrap()).version, 2);

    let app = app.restart().await;
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!((set.version, kids(&set)), (2, vec!["key-1"]));
    assert_eq!(set.revoked_kids, ["key-2"], "revocations survive a restart");

    let mut watch = app
        .watch(vec![selector("acme", "")], vec![known("acme", "okta", 2)])
        .await;
    watch.expect_synced().await;
    let fetches = idp.request_count();
    let reinstated = reinstate(&app, "key-2").await.expect("reinstate");
    assert!(reinstated.in_key_set);
    let set = watch.next_key_set().await;
    assert_eq!((set.version, kids(&set)), (3, vec!["key-1", "key-2"]));
    assert!(set.revoked_kids.is_empty());
    assert_eq!(
        idp.request_count(),
        fetches,
        "served again from the held set, no fetch"
    );

    let missing = reinstate(&app, "key-2").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing
            .message()
            .contains(r#"kid "key-2" is not revoked (revoked: none)"#),
        "{}",
        missing.message()
    );

    let events = audited(&mut app.admin().await).await;
    let revocations: Vec<_> = events
        .iter()
        .filter(|e| e.action.starts_with("key."))
        .map(|e| (e.action.as_str(), e.before.as_str(), e.after.as_str()))
        .collect();
    let [(reinstated, before, ""), (revoked, "", after)] = revocations[..] else {
        panic!("one revocation and one reinstatement, newest first: {revocations:?}");
    };
    assert_eq!((reinstated, revoked), ("key.reinstate", "key.revoke"));
    for state in [before, after] {
        let state: Value = serde_json::from_str(state).expect("JSON");
        assert_eq!(state["kid"], "key-2");
        assert_eq!(state["reason"], "private key leaked in a build log");
    }
}

#[tokio::test]
async fn a_revoked_kid_is_withheld_everywhere_until_reinstated_on_sqlite() {
    withheld_everywhere_until_reinstated(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_revoked_kid_is_withheld_everywhere_until_reinstated_on_postgres() {
    withheld_everywhere_until_reinstated(Backend::Postgres).await;
}

/// A refresh that was fetching when the kid was revoked cannot publish it: the revocation
/// changed the registration revision its write is fenced by.
async fn a_refresh_in_flight_does_not_bring_it_back(backend: Backend) {
    let (app, idp) = registered(backend).await;
    idp.set_mode(Mode::Gated);
    let before = idp.request_count();
    let refresh = tokio::spawn({
        let mut admin = app.admin().await;
        async move {
            let request = pb::RefreshProviderRequest {
                tenant: "acme".into(),
                provider: "okta".into(),
            };
            admin.refresh_provider(request).await
        }
    });
    idp.wait_for_requests(before + 1).await;
    revoke(&app, "key-2").await;
    idp.release(1);
    idp.wait_for_requests(before + 2).await;
    idp.release(1);
    let refreshed = refresh.await.expect("task").expect("refresh").into_inner();
    let refreshed = refreshed.provider.expect("provider");
    assert_eq!(status(&refreshed).version, 2);
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!((set.version, kids(&set)), (2, vec!["key-1"]));
}

#[tokio::test]
async fn a_refresh_in_flight_does_not_bring_a_revoked_kid_back_on_sqlite() {
    a_refresh_in_flight_does_not_bring_it_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refresh_in_flight_does_not_bring_a_revoked_kid_back_on_postgres() {
    a_refresh_in_flight_does_not_bring_it_back(Backend::Postgres).await;
}

/// Registering the provider again keeps its revocations; unregistering it drops them.
async fn kept_by_re_registration_dropped_by_unregistration(backend: Backend) {
    let (app, idp) = registered(backend).await;
    revoke(&app, "key-2").await;
    let again = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&again).version, 2, "the same view keeps its version");
    assert_eq!(status(&again).revoked_keys.len(), 1);
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(
        (kids(&set), set.revoked_kids.clone()),
        (vec!["key-1"], vec!["key-2".to_owned()])
    );

    let request = pb::UnregisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    app.admin()
        .await
        .unregister_provider(request)
        .await
        .expect("unregister");
    let fresh = app.register("acme", "okta", &idp.jwks_url()).await;
    assert!(status(&fresh).revoked_keys.is_empty());
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(kids(&set), ["key-1", "key-2"]);
    assert!(set.revoked_kids.is_empty());
}

#[tokio::test]
async fn re_registration_keeps_revocations_and_unregistration_drops_them_on_sqlite() {
    kept_by_re_registration_dropped_by_unregistration(Backend::Sqlite).await;
}

#[tokio::test]
async fn re_registration_keeps_revocations_and_unregistration_drops_them_on_postgres() {
    kept_by_re_registration_dropped_by_unregistration(Backend::Postgres).await;
}

#[tokio::test]
async fn a_kid_not_published_yet_is_withheld_once_it_is() {
    let (app, idp) = registered(Backend::Sqlite).await;
    let revoked = revoke(&app, "key-3").await;
    assert!(!revoked.in_key_set);
    assert_eq!(
        status(&revoked.provider.unwrap()).version,
        1,
        "nothing published changed"
    );
    idp.serve_kids(&["key-1", "key-2", "key-3"], Some("max-age=600"));
    let refreshed = app.refresh("acme", "okta").await;
    assert_eq!(status(&refreshed).version, 1);
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(kids(&set), ["key-1", "key-2"]);
    assert!(status(&refreshed).revoked_keys[0].published_by_provider);
}

#[tokio::test]
async fn revocation_requests_say_what_to_fix() {
    let (app, _idp) = registered(Backend::Sqlite).await;
    let mut admin = app.admin().await;
    let cases = [
        (
            revoke_request("key-1", " "),
            Code::InvalidArgument,
            "invalid reason",
        ),
        (
            revoke_request("", "leaked"),
            Code::InvalidArgument,
            "invalid kid",
        ),
        (
            pb::RevokeKeyRequest {
                provider: "auth0".into(),
                ..revoke_request("key-1", "leaked")
            },
            Code::NotFound,
            "provider acme/auth0 is not registered",
        ),
    ];
    for (request, code, message) in cases {
        let status = admin.revoke_key(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{}", status.message());
    }

    let verifier = app.verifier_token("acme").await;
    let mut as_verifier = app.admin_with_token(Some(&verifier)).await;
    let denied = as_verifier
        .revoke_key(revoke_request("key-1", "leaked"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let request = pb::CreateTokenRequest {
        role: pb::TokenRole::Admin.into(),
        tenant: "globex".into(),
        description: "globex admin".into(),
        ttl: None,
    };
    let other = admin
        .create_token(request)
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut other_tenant = app.admin_with_token(Some(&other)).await;
    let hidden = other_tenant
        .revoke_key(revoke_request("key-1", "leaked"))
        .await
        .unwrap_err();
    assert_eq!(
        hidden.code(),
        Code::NotFound,
        "another tenant's provider is not told"
    );
    let set = app.resolve("acme", "okta", None).await.unwrap();
    assert_eq!(kids(&set), ["key-1", "key-2"], "nothing was revoked");
}
