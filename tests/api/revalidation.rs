//! HTTP cache semantics: conditional requests, 304s, and freshness from the headers.

use std::time::Duration;

use keyrelay::{clock::Clock, proto::v1 as pb};

use crate::{
    helpers::{Backend, TestApp, policy, seconds_between, spawn_app, status, wait_until},
    mock_idp::{Document, MockIdp, jwks},
};

async fn app_and_idp() -> (TestApp, MockIdp) {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    (app, idp)
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2026 07:28:00 GMT";

#[tokio::test]
async fn etag_revalidation_sends_if_none_match_and_a_304_keeps_the_version() {
    let (app, idp) = app_and_idp().await;
    idp.set_document(Document {
        body: jwks(&["k1"]).to_string(),
        cache_control: Some("max-age=600".into()),
        etag: Some("\"v1\"".into()),
        ..Document::default()
    });
    let registered = app.register("acme", "okta", &idp.jwks_url()).await;
    assert_eq!(status(&registered).etag, "\"v1\"");

    app.advance(Duration::from_secs(100));
    let refreshed = app.refresh("acme", "okta").await;
    let requests = idp.requests();
    assert_eq!(
        requests[0].if_none_match, None,
        "the first fetch is unconditional"
    );
    assert_eq!(requests[1].if_none_match.as_deref(), Some("\"v1\""));

    let after = status(&refreshed);
    assert_eq!(after.state(), pb::ProviderState::Ready);
    assert_eq!(after.version, 1, "a 304 never makes a new version");
    assert_eq!(after.etag, "\"v1\"");
    let before = status(&registered);
    assert_eq!(
        seconds_between(
            before.fetched_at.as_ref().unwrap(),
            after.fetched_at.as_ref().unwrap()
        ),
        100.0
    );
    assert_eq!(
        seconds_between(
            after.fetched_at.as_ref().unwrap(),
            after.fresh_until.as_ref().unwrap()
        ),
        600.0,
        "a 304 extends freshness"
    );
}

async fn last_modified_only_revalidation(validators_in_304: bool) {
    let (app, idp) = app_and_idp().await;
    idp.set_validators_in_304(validators_in_304);
    idp.set_document(Document {
        body: jwks(&["k1"]).to_string(),
        cache_control: Some("max-age=300".into()),
        last_modified: Some(LAST_MODIFIED.into()),
        ..Document::default()
    });
    app.register("acme", "okta", &idp.jwks_url()).await;
    app.advance(Duration::from_secs(30));
    let refreshed = app.refresh("acme", "okta").await;

    let requests = idp.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].if_modified_since.as_deref(),
        Some(LAST_MODIFIED)
    );
    assert_eq!(requests[1].if_none_match, None);
    let after = status(&refreshed);
    assert_eq!(after.last_error, "", "the 304 was accepted");
    assert_eq!(after.version, 1);
    assert_eq!(after.last_modified, LAST_MODIFIED);
    assert_eq!(
        seconds_between(
            after.fetched_at.as_ref().unwrap(),
            after.fresh_until.as_ref().unwrap()
        ),
        300.0
    );

    // And the next revalidation is conditional again: nothing was forgotten.
    app.refresh("acme", "okta").await;
    assert_eq!(
        idp.requests()[2].if_modified_since.as_deref(),
        Some(LAST_MODIFIED)
    );
}

#[tokio::test]
async fn last_modified_only_revalidation_accepts_a_304_repeating_last_modified() {
    last_modified_only_revalidation(true).await;
}

#[tokio::test]
async fn last_modified_only_revalidation_accepts_a_304_without_validators() {
    last_modified_only_revalidation(false).await;
}

#[tokio::test]
async fn a_changed_document_behind_a_new_etag_is_a_new_version() {
    let (app, idp) = app_and_idp().await;
    let document = |kids: &[&str], etag: &str| Document {
        body: jwks(kids).to_string(),
        etag: Some(etag.into()),
        ..Document::default()
    };
    idp.set_document(document(&["k1"], "\"v1\""));
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp.set_document(document(&["k1", "k2"], "\"v2\""));
    let refreshed = app.refresh("acme", "okta").await;
    assert_eq!(status(&refreshed).version, 2);
    assert_eq!(status(&refreshed).etag, "\"v2\"");
}

#[tokio::test]
async fn max_age_sets_freshness_and_the_next_refresh_within_jitter() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("public, max-age=3600"));
    let provider = app.register("acme", "okta", &idp.jwks_url()).await;
    let s = status(&provider);
    let fetched = s.fetched_at.as_ref().unwrap();
    assert_eq!(
        seconds_between(fetched, s.fresh_until.as_ref().unwrap()),
        3600.0
    );
    // refresh_early 30 s plus a jitter of at most min(10 % of 3600 s, 30 s).
    let lead = seconds_between(
        s.next_refresh_at.as_ref().unwrap(),
        s.fresh_until.as_ref().unwrap(),
    );
    assert!(
        (30.0..=60.0).contains(&lead),
        "refresh {lead}s before expiry"
    );
}

#[tokio::test]
async fn max_age_is_clamped_to_the_policy() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("max-age=5"));
    let short = app.register("acme", "short", &idp.jwks_url()).await;
    let s = status(&short);
    assert_eq!(
        seconds_between(
            s.fetched_at.as_ref().unwrap(),
            s.fresh_until.as_ref().unwrap()
        ),
        60.0,
        "min_ttl 60 s"
    );

    idp.serve_kids(&["k1"], Some("max-age=86400"));
    let capped = app
        .register_with(
            "acme",
            "capped",
            &idp.jwks_url(),
            Some(policy(None, Some(900), None)),
        )
        .await;
    let s = status(&capped);
    assert_eq!(
        seconds_between(
            s.fetched_at.as_ref().unwrap(),
            s.fresh_until.as_ref().unwrap()
        ),
        900.0,
        "max_ttl override"
    );
}

#[tokio::test]
async fn no_cache_headers_means_the_default_ttl_and_expires_is_honoured() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], None);
    let plain = app.register("acme", "plain", &idp.jwks_url()).await;
    let s = status(&plain);
    assert_eq!(
        seconds_between(
            s.fetched_at.as_ref().unwrap(),
            s.fresh_until.as_ref().unwrap()
        ),
        300.0
    );

    let expires =
        httpdate::fmt_http_date((app.clock.now() + chrono::Duration::seconds(1200)).into());
    idp.set_document(Document {
        body: jwks(&["k1"]).to_string(),
        expires: Some(expires),
        ..Document::default()
    });
    let dated = app.register("acme", "dated", &idp.jwks_url()).await;
    let s = status(&dated);
    assert_eq!(
        seconds_between(
            s.fetched_at.as_ref().unwrap(),
            s.fresh_until.as_ref().unwrap()
        ),
        1200.0
    );
}

#[tokio::test]
async fn the_scheduler_refreshes_when_the_clock_reaches_next_refresh_at() {
    let (app, idp) = app_and_idp().await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    let provider = app.register("acme", "okta", &idp.jwks_url()).await;
    let s = status(&provider);
    let wait = seconds_between(
        s.fetched_at.as_ref().unwrap(),
        s.next_refresh_at.as_ref().unwrap(),
    );
    assert!(
        (540.0..=570.0).contains(&wait),
        "next refresh after {wait}s"
    );

    assert_eq!(idp.request_count(), 1);
    app.advance(Duration::from_secs_f64(wait));
    idp.wait_for_requests(2).await;
    let first_next = s.next_refresh_at.unwrap();
    let refreshed = wait_until(|| async {
        let provider = app.get("acme", "okta").await;
        (status(&provider).next_refresh_at.as_ref() != Some(&first_next)).then_some(provider)
    })
    .await;
    let moved = seconds_between(
        &first_next,
        status(&refreshed).next_refresh_at.as_ref().unwrap(),
    );
    assert!(moved >= 540.0, "next refresh moved by {moved}s");
    assert_eq!(idp.request_count(), 2, "exactly one scheduled fetch");
}

#[tokio::test]
async fn a_304_after_a_restart_takes_its_new_max_age_from_the_stored_caching_headers() {
    let (app, idp) = app_and_idp().await;
    let mut document = Document {
        body: jwks(&["k1"]).to_string(),
        cache_control: Some("max-age=600".into()),
        etag: Some("\"v1\"".into()),
        ..Document::default()
    };
    idp.set_document(document.clone());
    app.register("acme", "okta", &idp.jwks_url()).await;
    let app = app.restart().await;
    document.cache_control = Some("max-age=1200".into());
    idp.set_document(document);
    app.advance(Duration::from_secs(100));
    let refreshed = app.refresh("acme", "okta").await;
    let requests = idp.requests();
    assert_eq!(requests.len(), 2, "one fetch, then one revalidation");
    assert_eq!(requests[1].if_none_match.as_deref(), Some("\"v1\""));
    let after = status(&refreshed);
    assert_eq!(after.version, 1, "the 304 kept the keys");
    assert_eq!(
        seconds_between(
            after.fetched_at.as_ref().unwrap(),
            after.fresh_until.as_ref().unwrap()
        ),
        1200.0,
        "the 304's Cache-Control replaces the stored one"
    );
}
