//! Per-provider key policy over real gRPC: keys outside `allowed_algorithms`, encryption keys
//! and kid-less keys beside others are left out of Resolve, WatchKeys and the mirror, listed
//! with why in the status; a new policy on re-registration publishes the new view under the
//! next version at once; bad policies say which entry to fix.

use keyrelay::proto::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, kids, known, selector, spawn_app, status},
    mock_idp::{Document, MockIdp, jwks},
};

/// A JWKS as Keycloak publishes one: an RS256 signing key, an EC signing key without `alg`,
/// an RSA-OAEP encryption key, and an RS256 key without a kid.
fn keycloak_like() -> String {
    let rsa = |kid: &str| jwks(&[kid])["keys"][0].clone();
    let mut encryption = rsa("enc-1");
    encryption["alg"] = json!("RSA-OAEP");
    encryption["use"] = json!("enc");
    let mut no_kid = rsa("");
    let object = no_kid.as_object_mut().expect("a JWK object");
    object.remove("kid");
    let ec = json!({"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    json!({ "keys": [rsa("rs-1"), ec, encryption, no_kid] }).to_string()
}

fn key_policy(
    allowed: &[&str],
    include_encryption_keys: bool,
    require_kid: bool,
) -> pb::ProviderPolicy {
    pb::ProviderPolicy {
        allowed_algorithms: allowed.iter().map(|alg| (*alg).to_owned()).collect(),
        include_encryption_keys,
        require_kid,
        ..pb::ProviderPolicy::default()
    }
}

async fn started(backend: Backend) -> (TestApp, MockIdp) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.set_document(Document {
        body: keycloak_like(),
        cache_control: Some("max-age=600".into()),
        ..Document::default()
    });
    (app, idp)
}

fn skipped(provider: &pb::Provider) -> Vec<(String, String)> {
    let listed = &status(provider).skipped_keys;
    listed
        .iter()
        .map(|s| (s.kid.clone(), s.kind.clone()))
        .collect()
}

fn pair(kid: &str, kind: &str) -> (String, String) {
    (kid.to_owned(), kind.to_owned())
}

fn mirrored(body: &str) -> Vec<String> {
    let document: Value = serde_json::from_str(body).expect("the mirror answers JSON");
    let keys = document["keys"].as_array().cloned().unwrap_or_default();
    keys.iter()
        .map(|key| key["kid"].as_str().unwrap_or("(none)").to_owned())
        .collect()
}

async fn the_policy_decides_what_is_published(backend: Backend) {
    let (app, idp) = started(backend).await;
    let url = idp.jwks_url();

    let default = app.register("acme", "keycloak", &url).await;
    assert_eq!(status(&default).key_count, 3, "{:?}", skipped(&default));
    assert_eq!(skipped(&default), [pair("enc-1", "encryption_key")]);
    let counted = app
        .metric("keyrelay_keys_skipped_total{reason=\"encryption_key\"}")
        .await;
    assert_eq!(
        counted, 1.0,
        "left-out keys are counted per fetched document"
    );
    let effective = default.effective_policy.expect("effective policy");
    assert_eq!(
        effective.allowed_algorithms.len(),
        11,
        "every algorithm keyrelay knows"
    );
    assert!(!effective.include_encryption_keys && !effective.require_kid);

    let mut watch = app
        .watch(
            vec![selector("acme", "")],
            vec![known("acme", "keycloak", 1)],
        )
        .await;
    watch.expect_synced().await;
    let fetches = idp.request_count();

    let strict = key_policy(&["RS256"], false, true);
    let narrowed = app
        .register_with("acme", "keycloak", &url, Some(strict))
        .await;
    assert_eq!(
        skipped(&narrowed),
        [
            pair("ec-1", "algorithm_not_allowed"),
            pair("enc-1", "encryption_key"),
            pair("", "no_kid"),
        ]
    );
    assert_eq!(status(&narrowed).version, 2, "a new view is a new version");
    let set = watch.next_key_set().await;
    assert_eq!((set.version, kids(&set)), (2, vec!["rs-1"]));
    let resolved = app
        .resolve("acme", "keycloak", None)
        .await
        .expect("resolve");
    assert_eq!(kids(&resolved), ["rs-1"]);
    let refused = app
        .resolve("acme", "keycloak", Some("ec-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(
        refused.message().contains("not published")
            && refused.message().contains("ES256 (it has no alg"),
        "{}",
        refused.message()
    );
    let (code, body) = app.http_get("/v1/jwks/acme/keycloak").await;
    assert_eq!((code, mirrored(&body)), (200, vec!["rs-1".to_owned()]));
    let message = &narrowed.effective_policy.expect("effective policy");
    assert_eq!(message.allowed_algorithms, ["RS256"]);

    let open = key_policy(&[], true, false);
    let widened = app
        .register_with("acme", "keycloak", &url, Some(open))
        .await;
    assert_eq!(skipped(&widened), []);
    let set = watch.next_key_set().await;
    assert_eq!(
        (set.version, kids(&set)),
        (3, vec!["rs-1", "ec-1", "enc-1", ""])
    );
    assert_eq!(
        idp.request_count(),
        fetches + 2,
        "each registration fetched once, and a withheld kid fetches nothing"
    );

    let same = key_policy(&[], true, false);
    let unchanged = app
        .register_with("acme", "keycloak", &url, Some(same))
        .await;
    assert_eq!(
        status(&unchanged).version,
        3,
        "the same view keeps its version"
    );

    let restarted = app.restart().await;
    let provider = restarted.get("acme", "keycloak").await;
    assert_eq!(
        (status(&provider).version, status(&provider).key_count),
        (3, 4)
    );
}

#[tokio::test]
async fn the_key_policy_decides_what_is_published_on_sqlite() {
    the_policy_decides_what_is_published(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_key_policy_decides_what_is_published_on_postgres() {
    the_policy_decides_what_is_published(Backend::Postgres).await;
}

#[tokio::test]
async fn a_bad_key_policy_names_the_entry_to_fix() {
    let (app, idp) = started(Backend::Sqlite).await;
    let url = idp.jwks_url();
    for (policy, field) in [
        (
            key_policy(&["RS256", "HS256"], false, false),
            "policy.allowed_algorithms[1]",
        ),
        (
            key_policy(&["ES256", "ES256"], false, false),
            "policy.allowed_algorithms[1]",
        ),
    ] {
        let refused = app
            .try_register_with("acme", "keycloak", &url, Some(policy))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{}", refused.message());
    }
}

#[tokio::test]
async fn a_key_policy_that_leaves_out_every_key_is_refused_not_served_empty() {
    let (app, idp) = started(Backend::Sqlite).await;
    let url = idp.jwks_url();
    let nothing = key_policy(&["PS512"], false, false);

    let first = app
        .register_with("acme", "keycloak", &url, Some(nothing.clone()))
        .await;
    assert_eq!(status(&first).state(), pb::ProviderState::Failing);
    assert_eq!(status(&first).version, 0, "no empty set is published");
    assert!(
        status(&first)
            .last_error
            .contains("key policy leaves out every one of the 4 key(s)"),
        "{}",
        status(&first).last_error
    );
    let rejected = app
        .metric("keyrelay_key_set_rejections_total{reason=\"policy_leaves_no_key\"}")
        .await;
    assert_eq!(rejected, 1.0);

    let served = app.register("acme", "keycloak", &url).await;
    assert_eq!(status(&served).version, 1);
    let refused = app
        .try_register_with("acme", "keycloak", &url, Some(nothing))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("invalid policy: ")
            && refused
                .message()
                .contains("(the first: rs-1: algorithm RS256"),
        "{}",
        refused.message()
    );
    let kept = app.resolve("acme", "keycloak", None).await.expect("served");
    assert_eq!(kept.version, 1, "the registration was not changed");
}
