//! The Python example client (clients/python) against a real server: it watches the tenant's
//! keys over gRPC and verifies, with PyJWT, a token signed by a key rotated in after it
//! connected. scripts/test.sh builds its virtual environment and stubs.

use std::process::Command;

use serde_json::Value;

use crate::{
    helpers::{Backend, spawn_app},
    mock_idp::{Document, MockIdp},
    signing::{ED_1, ED_2, claims, jwks},
};

fn python() -> (String, String) {
    let missing = "is not set: run scripts/test.sh, which builds the Python virtual environment";
    let python = std::env::var("KEYRELAY_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("KEYRELAY_TEST_PYTHON {missing}"));
    let stubs = std::env::var("KEYRELAY_TEST_PYTHONPATH")
        .unwrap_or_else(|_| panic!("KEYRELAY_TEST_PYTHONPATH {missing}"));
    (python, stubs)
}

fn example(addr: &str, token: &str, audience: &str, extra: &[&str]) -> std::process::Output {
    let (python, stubs) = python();
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    Command::new(python)
        .arg(format!("{client}/example.py"))
        .args([addr, "acme", token, "--audience", audience])
        .args(extra)
        .env("PYTHONPATH", format!("{stubs}:{client}"))
        .env_remove("KEYRELAY_ACCESS_TOKEN")
        .output()
        .expect("run the Python client")
}

// Multi-threaded: the Python client runs as a blocking child process while the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_verifies_a_token_from_a_rotated_key_over_grpc() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.set_document(Document {
        body: jwks(&[&ED_1]),
        ..Document::default()
    });
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_document(Document {
        body: jwks(&[&ED_1, &ED_2]),
        ..Document::default()
    });
    let token = ED_2.sign(&claims("grace"));
    let addr = app.addr.to_string();

    let verified = tokio::task::spawn_blocking({
        let (addr, token) = (addr.clone(), token.clone());
        move || example(&addr, &token, "api", &[])
    })
    .await
    .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let printed: Value = serde_json::from_slice(&verified.stdout).expect("claims as JSON");
    assert_eq!(printed["sub"], "grace");

    let refused = tokio::task::spawn_blocking({
        let (addr, token) = (addr.clone(), token.clone());
        move || example(&addr, &token, "billing", &[])
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("token refused"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let verifier = app.verifier_token("acme").await;
    app.require_verifier_token("acme", true).await;
    let anonymous = tokio::task::spawn_blocking({
        let (addr, token) = (addr.clone(), token.clone());
        move || example(&addr, &token, "api", &[])
    })
    .await
    .unwrap();
    assert_eq!(anonymous.status.code(), Some(1), "the tenant looks empty");
    let with_token = tokio::task::spawn_blocking(move || {
        example(&addr, &token, "api", &["--access-token", &verifier])
    })
    .await
    .unwrap();
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
}
