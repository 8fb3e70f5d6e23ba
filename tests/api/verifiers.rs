//! Verifiers in every form: the Rust SDK over WatchKeys, a standard JWT library over the HTTP
//! JWKS mirror, and the CLI. The mock IdP signs tokens with keys it rotates in.

use std::{process::Command, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use keyrelay_verifier::{Expectations, Verifier, VerifyError};
use serde_json::{Value, json};

use crate::{
    helpers::{Backend, TestApp, spawn_app, wait_until},
    mock_idp::{Document, MockIdp},
    signing::{EC_1, ED_1, ED_2, SigningKey, claims, jwks},
};

async fn serve(keys: &[&SigningKey]) -> (TestApp, MockIdp) {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.set_document(Document {
        body: jwks(keys),
        cache_control: Some("max-age=600".into()),
        ..Document::default()
    });
    app.register("acme", "okta", &idp.jwks_url()).await;
    (app, idp)
}

pub(crate) fn rotate(idp: &MockIdp, keys: &[&SigningKey]) {
    idp.set_document(Document {
        body: jwks(keys),
        cache_control: Some("max-age=600".into()),
        ..Document::default()
    });
}

fn expected() -> Expectations {
    Expectations::new()
        .issuer("https://idp.example.com")
        .audience("api")
}

#[tokio::test]
async fn the_sdk_verifies_tokens_from_keys_rotated_in_after_it_connected() {
    let (app, idp) = serve(&[&ED_1]).await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .expect("synced");
    let claims_1: Value = verifier
        .verify(&ED_1.sign(&claims("alice")), &expected())
        .await
        .expect("valid");
    assert_eq!(claims_1["sub"], "alice");

    // Rotated in at the IdP; the SDK has never seen it: one Resolve with the kid finds it.
    rotate(&idp, &[&ED_1, &ED_2]);
    let claims_2: Value = verifier
        .verify(&ED_2.sign(&claims("bob")), &expected())
        .await
        .expect("rotated key");
    assert_eq!(claims_2["sub"], "bob");

    // Rotated in and pushed over WatchKeys before any token needs it.
    rotate(&idp, &[&ED_2, &EC_1]);
    app.refresh("acme", "okta").await;
    wait_until(|| async {
        let status = verifier.status();
        status
            .providers
            .iter()
            .any(|p| p.version == 3)
            .then_some(())
    })
    .await;
    let claims_3: Value = verifier
        .verify(&EC_1.sign(&claims("carol")), &expected())
        .await
        .expect("pushed key");
    assert_eq!(claims_3["sub"], "carol");
    assert_eq!(
        idp.request_count(),
        3,
        "registration, one unknown-kid refresh, one admin refresh"
    );
}

#[tokio::test]
async fn the_sdk_refuses_tokens_precisely() {
    let (app, _idp) = serve(&[&ED_1]).await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .provider("okta")
        .connect()
        .await
        .unwrap();
    let refused = |token: String| {
        let verifier = &verifier;
        async move {
            verifier
                .verify::<Value>(&token, &expected())
                .await
                .unwrap_err()
        }
    };

    let mut expired = claims("x");
    expired["exp"] = json!(expired["iat"].as_u64().unwrap() - 3600);
    assert_eq!(refused(ED_1.sign(&expired)).await, VerifyError::Expired);
    let mut other_audience = claims("x");
    other_audience["aud"] = json!("billing");
    assert_eq!(
        refused(ED_1.sign(&other_audience)).await,
        VerifyError::Audience
    );
    let mut other_issuer = claims("x");
    other_issuer["iss"] = json!("https://evil.example.com");
    assert_eq!(refused(ED_1.sign(&other_issuer)).await, VerifyError::Issuer);
    let mut no_exp = claims("x");
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(matches!(
        refused(ED_1.sign(&no_exp)).await,
        VerifyError::Claims(_)
    ));

    // Signed by a key the provider never published, under the provider's kid.
    let forged = ED_2
        .sign(&claims("x"))
        .replacen(&header_of(&ED_2), &header_of(&ED_1), 1);
    assert_eq!(refused(forged).await, VerifyError::Signature);
    assert!(matches!(
        refused(EC_1.sign(&claims("x"))).await,
        VerifyError::UnknownKid { .. }
    ));

    // HS256 with the public key as the HMAC secret, and `alg: none`: never accepted.
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(ED_1.kid.into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("x"),
        &jsonwebtoken::EncodingKey::from_secret(ED_1.jwk()["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        refused(hmac).await,
        VerifyError::AlgorithmNotPermitted { .. }
    ));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": ED_1.kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims("x").to_string())
    );
    assert!(matches!(refused(none).await, VerifyError::Malformed(_)));
    let no_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(
        refused(ED_1.sign_with(&no_kid, &claims("x"))).await,
        VerifyError::NoKid
    );
}

fn header_of(key: &SigningKey) -> String {
    key.sign(&claims("x")).split('.').next().unwrap().to_owned()
}

/// Resolve calls the server answered so far, whatever their outcome.
async fn resolves(app: &TestApp) -> f64 {
    let (_, metrics) = app.http_get("/metrics").await;
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(
                r#"keyrelay_rpc_requests_total{method="keyrelay.v1.KeyService/Resolve""#,
            )
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn fifty_concurrent_verifications_of_an_unknown_kid_make_one_resolve() {
    let (app, idp) = serve(&[&ED_1]).await;
    let verifier = std::sync::Arc::new(
        Verifier::builder(app.endpoint(), "acme")
            .connect()
            .await
            .expect("synced"),
    );
    rotate(&idp, &[&ED_1, &ED_2]);
    let before = resolves(&app).await;
    let token = ED_2.sign(&claims("carol"));
    let verifications = (0..50).map(|_| {
        let verifier = std::sync::Arc::clone(&verifier);
        let token = token.clone();
        tokio::spawn(async move { verifier.verify::<Value>(&token, &expected()).await })
    });
    for verification in futures::future::join_all(verifications).await {
        assert_eq!(verification.unwrap().expect("verified")["sub"], "carol");
    }
    assert_eq!(resolves(&app).await - before, 1.0, "one Resolve for all 50");
}

#[tokio::test]
async fn the_sdk_finds_keys_across_a_tenant_and_forgets_a_removed_provider() {
    let (app, _okta) = serve(&[&ED_1]).await;
    let auth0 = MockIdp::start(app.clock.clone()).await;
    rotate(&auth0, &[&EC_1]);
    app.register("acme", "auth0", &auth0.jwks_url()).await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .expect("synced");
    for (key, sub) in [(&ED_1, "kim"), (&EC_1, "lee")] {
        let claims: Value = verifier
            .verify(&key.sign(&claims(sub)), &expected())
            .await
            .expect("a key of either provider verifies");
        assert_eq!(claims["sub"], sub);
    }
    let elsewhere = verifier
        .verify::<Value>(&EC_1.sign(&claims("lee")), &expected().provider("okta"))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.kind(), "unknown_kid", "{elsewhere}");

    let request = keyrelay::proto::v1::UnregisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    app.admin()
        .await
        .unregister_provider(request)
        .await
        .expect("unregister");
    wait_until(|| async { (verifier.status().providers.len() == 1).then_some(()) }).await;
    let forgotten = verifier
        .verify::<Value>(&ED_1.sign(&claims("kim")), &expected())
        .await
        .unwrap_err();
    assert_eq!(forgotten.kind(), "unknown_kid", "{forgotten}");
    verifier
        .verify::<Value>(&EC_1.sign(&claims("lee")), &expected())
        .await
        .expect("the other provider's key still verifies");
}

#[tokio::test]
async fn the_sdk_refuses_a_revoked_key_at_the_next_event_without_asking_for_it() {
    let (app, _idp) = serve(&[&ED_1, &ED_2]).await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .expect("synced");
    let token = ED_2.sign(&claims("mallory"));
    verifier
        .verify::<Value>(&token, &expected())
        .await
        .expect("valid before the revocation");

    let request = keyrelay::proto::v1::RevokeKeyRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: ED_2.kid.into(),
        reason: "signing key stolen".into(),
    };
    app.admin().await.revoke_key(request).await.expect("revoke");
    wait_until(|| async { (verifier.status().providers[0].version == 2).then_some(()) }).await;
    let before = resolves(&app).await;
    let refused = verifier
        .verify::<Value>(&token, &expected())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "revoked", "{refused}");
    assert_eq!(
        refused.to_string(),
        format!(
            "kid {:?} of acme/okta was revoked by a keyrelay administrator",
            ED_2.kid
        )
    );
    assert_eq!(resolves(&app).await, before, "refused without a Resolve");
    verifier
        .verify::<Value>(&ED_1.sign(&claims("alice")), &expected())
        .await
        .expect("the other key still verifies");
}

#[tokio::test]
async fn the_sdk_keeps_verifying_while_disconnected_and_resumes_after() {
    let (app, _idp) = serve(&[&ED_1]).await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .unwrap();
    let addr = app.addr;
    let (storage, clock, args) = app.stop().await;
    wait_until(|| async { (!verifier.status().connected).then_some(()) }).await;
    let held: Value = verifier
        .verify(&ED_1.sign(&claims("offline")), &expected())
        .await
        .expect("held keys still verify");
    assert_eq!(held["sub"], "offline");
    assert!(
        verifier.status().providers[0].age().is_some(),
        "the age of the held keys is known"
    );

    let _app = crate::helpers::restart_at(addr, storage, clock, args).await;
    wait_until(|| async { verifier.status().connected.then_some(()) }).await;
    assert_eq!(
        verifier.status().providers[0].version,
        1,
        "resumed where it was"
    );
}

#[tokio::test]
async fn the_mirror_serves_jwks_with_etags_and_a_standard_library_verifies_with_it() {
    let (app, idp) = serve(&[&ED_1]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/jwks/acme/okta", app.endpoint());
    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "application/jwk-set+json");
    assert_eq!(first.headers()["cache-control"], "public, max-age=600");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with("-1\""),
        "strong tag from the version: {etag}"
    );

    let again = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    rotate(&idp, &[&ED_1, &ED_2]);
    app.refresh("acme", "okta").await;
    app.advance(Duration::from_secs(100));
    let changed = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(changed.headers()["cache-control"], "public, max-age=500");
    let set: JwkSet = json_of(changed).await;

    // jsonwebtoken, pointed at the mirror as it would be at an IdP.
    let token = ED_2.sign(&claims("dave"));
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).expect("rotated key in the mirror")).unwrap();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["api"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .expect("verifies through the mirror");
    assert_eq!(data.claims["sub"], "dave");

    let (status, _) = app.http_get("/v1/jwks/acme/okta").await;
    assert_eq!(status, 200, "also on the HTTP listener");
}

#[tokio::test]
async fn the_mirror_merges_a_tenant_and_reports_errors_as_http_statuses() {
    let (app, idp) = serve(&[&ED_1]).await;
    let other = MockIdp::start(app.clock.clone()).await;
    other.set_document(Document {
        body: jwks(&[&EC_1]),
        ..Document::default()
    });
    app.register("acme", "auth0", &other.jwks_url()).await;
    let get = |path: &str| {
        let url = format!("{}{path}", app.endpoint());
        async move { reqwest::get(url).await.unwrap() }
    };

    let merged: JwkSet = json_of(get("/v1/jwks/acme").await).await;
    let mut kids: Vec<_> = merged
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    kids.sort();
    assert_eq!(kids, ["ec-2026-1", "ed-2026-1"]);

    other.set_document(Document {
        body: jwks(&[&ED_1]),
        ..Document::default()
    });
    // Every key of auth0 replaced at once: held for one fetch, published at the second.
    app.refresh("acme", "auth0").await;
    app.refresh("acme", "auth0").await;
    let collision = get("/v1/jwks/acme").await;
    assert_eq!(
        collision.status(),
        409,
        "the same kid from two providers is not merged"
    );

    assert_eq!(get("/v1/jwks/acme/nope").await.status(), 404);
    assert_eq!(get("/v1/jwks/ACME/okta").await.status(), 400);
    idp.set_mode(crate::mock_idp::Mode::Status(500, None));
    app.register("acme", "down", &idp.url("/jwks?down")).await;
    let unavailable = get("/v1/jwks/acme/down").await;
    assert_eq!(unavailable.status(), 503);
    let body: Value = json_of(unavailable).await;
    assert!(
        body["error"].as_str().unwrap().contains("HTTP 500"),
        "{body}"
    );
}

async fn json_of<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    serde_json::from_slice(&response.bytes().await.unwrap()).expect("JSON body")
}

pub(crate) fn keyrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(args)
        .env_remove("KEYRELAY_ADMIN_TOKEN")
        .output()
        .expect("run keyrelay")
}

// Multi-threaded: the CLI runs as a blocking child process while the server must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_verifies_tokens_and_explains_refusals() {
    let (app, _idp) = serve(&[&ED_1]).await;
    let endpoint = app.endpoint();
    let token = ED_1.sign(&claims("erin"));
    let ok = keyrelay(&[
        "verify",
        "--server",
        &endpoint,
        "--tenant",
        "acme",
        "--audience",
        "api",
        "--json",
        &token,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let printed: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(printed["sub"], "erin");

    let refused = keyrelay(&[
        "verify",
        "--server",
        &endpoint,
        "--tenant",
        "acme",
        "--audience",
        "billing",
        &token,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("token refused: audience"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_watches_and_prints_events() {
    let (app, _idp) = serve(&[&ED_1]).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["watch", "acme", "--server", &app.endpoint(), "--json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap();
        events.push(serde_json::from_str::<Value>(&line.expect("a line per event")).unwrap());
    }
    assert_eq!(
        (
            events[0]["event"].as_str(),
            events[0]["key_set"]["version"].as_u64()
        ),
        (Some("key_set"), Some(1))
    );
    assert_eq!(events[1]["event"], "synced");
}

#[tokio::test]
async fn the_sdk_sends_its_access_token_to_a_tenant_that_requires_one() {
    let (app, _idp) = serve(&[&ED_1]).await;
    let secret = app.verifier_token("acme").await;
    app.require_verifier_token("acme", true).await;
    let token = ED_1.sign(&claims("alice"));

    let anonymous = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .expect("a stream that sees nothing still syncs");
    assert!(
        anonymous
            .verify::<Value>(&token, &expected())
            .await
            .is_err()
    );

    let verifier = Verifier::builder(app.endpoint(), "acme")
        .access_token(secret)
        .connect()
        .await
        .unwrap();
    let claims: Value = verifier.verify(&token, &expected()).await.expect("valid");
    assert_eq!(claims["sub"], "alice");
}

#[tokio::test]
async fn the_sdk_routes_a_token_by_its_issuer_before_its_kid() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let issuer = idp.url("");
    let as_shared = |key: &SigningKey| {
        let mut jwk = key.jwk();
        jwk["kid"] = json!("shared");
        jwk
    };
    let metadata = json!({"issuer": issuer, "jwks_uri": idp.url("/okta-keys")});
    idp.set_route(
        "/.well-known/openid-configuration",
        Some(Document {
            body: metadata.to_string(),
            ..Document::default()
        }),
    );
    let okta_keys = json!({"keys": [as_shared(&ED_1), EC_1.jwk()]});
    idp.set_route(
        "/okta-keys",
        Some(Document {
            body: okta_keys.to_string(),
            ..Document::default()
        }),
    );
    let legacy_keys = json!({"keys": [as_shared(&ED_2)]});
    idp.set_route(
        "/legacy-keys",
        Some(Document {
            body: legacy_keys.to_string(),
            ..Document::default()
        }),
    );
    let request = keyrelay::proto::v1::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        issuer: issuer.clone(),
        ..Default::default()
    };
    app.admin()
        .await
        .register_provider(request)
        .await
        .expect("by issuer");
    // Named to come first: a search by kid alone in name order would pick its key.
    app.register("acme", "aaa-legacy", &idp.url("/legacy-keys"))
        .await;
    let verifier = Verifier::builder(app.endpoint(), "acme")
        .connect()
        .await
        .expect("synced");
    let other = "https://other.example.com";
    let expected = Expectations::new()
        .issuer(issuer.as_str())
        .issuer(other)
        .audience("api");
    let token = |key: &SigningKey, kid: &str, iss: &str| {
        let mut header = jsonwebtoken::Header::new(key.alg());
        header.kid = Some(kid.to_owned());
        let mut body = claims("kim");
        body["iss"] = json!(iss);
        key.sign_with(&header, &body)
    };

    let from_okta: Value = verifier
        .verify(&token(&ED_1, "shared", &issuer), &expected)
        .await
        .expect("the issuer's provider verifies its token");
    assert_eq!(from_okta["iss"], json!(issuer));
    verifier
        .verify::<Value>(&token(&ED_2, "shared", other), &expected)
        .await
        .expect("a provider registered by URL verifies a token of any issuer");
    for provider in [None, Some("okta")] {
        let scoped = match provider {
            Some(provider) => expected.clone().provider(provider),
            None => expected.clone(),
        };
        let refused = verifier
            .verify::<Value>(&token(&EC_1, EC_1.kid, other), &scoped)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), "issuer", "{provider:?}: {refused}");
    }
}
