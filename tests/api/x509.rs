//! X.509 on keys over real gRPC: a key whose `x5c` leaf certificate carries another key, or
//! whose thumbprint is not its leaf's, is left out of the published set and listed in the
//! provider's status; keys whose certificates match are published as they are, also after a
//! restart.

use serde_json::{Map, Value, json};

use crate::{
    helpers::{Backend, kids, spawn_app, status},
    mock_idp::{Document, MockIdp},
};

/// Keys with self-signed certificates made for the x5c tests.
fn fixture(name: &str) -> Map<String, Value> {
    let all: Value = serde_json::from_str(include_str!("../../src/domain/testdata/x5c.json"))
        .expect("fixture JSON");
    all[name].as_object().expect("a fixture key").clone()
}

fn document() -> String {
    let mut forged = fixture("rsa");
    forged.insert("kid".into(), json!("forged"));
    forged.insert("x5c".into(), fixture("other-rsa")["x5c"].clone());
    forged.remove("x5t");
    forged.remove("x5t#S256");
    let mut wrong_thumbprint = fixture("ed");
    wrong_thumbprint.insert("kid".into(), json!("wrong-x5t"));
    wrong_thumbprint.insert("x5t#S256".into(), fixture("rsa")["x5t#S256"].clone());
    json!({"keys": [fixture("rsa"), forged, fixture("ec"), wrong_thumbprint]}).to_string()
}

async fn certificates_are_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.set_document(Document {
        body: document(),
        cache_control: Some("max-age=600".into()),
        ..Document::default()
    });
    let provider = app.register("acme", "azure", &idp.jwks_url()).await;
    let skipped: Vec<(&str, &str, &str)> = status(&provider)
        .skipped_keys
        .iter()
        .map(|key| (key.kid.as_str(), key.kind.as_str(), key.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "forged",
                "certificate",
                "certificate: the x5c leaf certificate's public key is not this key"
            ),
            (
                "wrong-x5t",
                "certificate",
                "certificate: x5t#S256 is not the thumbprint of the x5c leaf certificate"
            ),
        ]
    );
    let set = app.resolve("acme", "azure", None).await.expect("resolve");
    assert_eq!(kids(&set), ["rsa", "ec"]);
    let published: Value = serde_json::from_slice(&set.jwks_json).expect("JSON");
    assert_eq!(
        published["keys"][0]["x5c"],
        fixture("rsa")["x5c"],
        "the certificate is published with its key"
    );

    let restarted = app.restart().await;
    let set = restarted
        .resolve("acme", "azure", None)
        .await
        .expect("resolve");
    assert_eq!(kids(&set), ["rsa", "ec"]);
}

#[tokio::test]
async fn keys_whose_certificates_do_not_match_are_left_out_on_sqlite() {
    certificates_are_checked(Backend::Sqlite).await;
}

#[tokio::test]
async fn keys_whose_certificates_do_not_match_are_left_out_on_postgres() {
    certificates_are_checked(Backend::Postgres).await;
}
