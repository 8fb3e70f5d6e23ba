//! Forward compatibility: keys keyrelay does not know (a post-quantum `AKP` key, an unknown
//! curve or algorithm, a malformed key) are left out of the published set and listed in the
//! provider's status with the reason; they never make keyrelay refuse the document's other
//! keys.

use keyrelay::proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    helpers::{Backend, TestApp, kids, spawn_app, status},
    mock_idp::{Document, MockIdp, jwks},
};

/// The mock's RSA keys `kids`, followed by `extra` entries.
fn document_with(kids: &[&str], extra: &[Value]) -> Document {
    let mut document = jwks(kids);
    let keys = document["keys"].as_array_mut().expect("keys array");
    keys.extend(extra.iter().cloned());
    Document {
        body: document.to_string(),
        ..Document::default()
    }
}

fn unknown_keys() -> Vec<Value> {
    vec![
        json!({"kty": "AKP", "kid": "pq-1", "alg": "ML-DSA-44", "pub": "cHVibGlj", "use": "sig"}),
        json!({"kty": "EC", "kid": "k256", "crv": "secp256k1", "x": "f83O", "y": "x_FE"}),
        json!({"kty": "RSA", "kid": "future-alg", "alg": "RS999", "n": "sXch", "e": "AQAB"}),
        json!({"kty": "OKP", "kid": "no-x", "crv": "Ed25519"}),
    ]
}

fn skipped(provider: &pb::Provider) -> Vec<(&str, &str)> {
    status(provider)
        .skipped_keys
        .iter()
        .map(|key| (key.kid.as_str(), key.kind.as_str()))
        .collect()
}

const EXPECTED: [(&str, &str); 4] = [
    ("pq-1", "unsupported_key_type"),
    ("k256", "unsupported_curve"),
    ("future-alg", "unsupported_algorithm"),
    ("no-x", "malformed"),
];

async fn metric_for(app: &TestApp, reason: &str) -> f64 {
    app.metric(&format!(
        "keyrelay_keys_skipped_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn a_new_registration_publishes_the_known_keys_of_a_mixed_document() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.set_document(document_with(&["k1", "k2"], &unknown_keys()));
    let registered = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&registered).state(), pb::ProviderState::Ready);
    assert_eq!(status(&registered).key_count, 2);
    assert_eq!(skipped(&registered), EXPECTED);
    let reason = &status(&registered).skipped_keys[0].reason;
    assert_eq!(reason, "key type \"AKP\" is not published by keyrelay");
    let set = app.resolve("acme", "okta", None).await.expect("served");
    assert_eq!(kids(&set), ["k1", "k2"]);
    assert!(!set.jwks_json.windows(4).any(|w| w == b"pq-1"));
    for (_, kind) in EXPECTED {
        assert_eq!(metric_for(&app, kind).await, 1.0, "{kind}");
    }

    let app = app.restart().await;
    let restored = app.get("acme", "okta").await;
    assert_eq!(
        skipped(&restored),
        EXPECTED,
        "the list is stored with the set"
    );
}

#[tokio::test]
async fn an_existing_provider_takes_a_set_with_fewer_known_keys_and_new_unknown_ones() {
    let app = spawn_app(Backend::Postgres).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1", "k2"], None);
    let before = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&before).version, 1);

    idp.set_document(document_with(&["k1"], &unknown_keys()));
    let after = app.refresh("acme", "okta").await;
    assert_eq!(status(&after).state(), pb::ProviderState::Ready);
    assert_eq!(status(&after).last_error, "");
    assert_eq!(status(&after).version, 2, "k2 withdrawn: a new version");
    assert_eq!(skipped(&after), EXPECTED);
    let set = app.resolve("acme", "okta", None).await.expect("served");
    assert_eq!(kids(&set), ["k1"]);

    idp.serve_kids(&["k1"], None);
    let cleared = app.refresh("acme", "okta").await;
    assert_eq!(
        status(&cleared).version,
        2,
        "the same known keys: the same version"
    );
    assert!(status(&cleared).skipped_keys.is_empty());
}

#[tokio::test]
async fn a_document_of_unknown_keys_only_keeps_the_last_good_set() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], None);
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_document(document_with(&[], &unknown_keys()));
    let refused = app.refresh("acme", "okta").await;
    assert_eq!(status(&refused).state(), pb::ProviderState::Failing);
    assert!(
        status(&refused).last_error.contains("no usable keys"),
        "{}",
        status(&refused).last_error
    );
    let set = app.resolve("acme", "okta", None).await.expect("served");
    assert_eq!(kids(&set), ["k1"]);
}
