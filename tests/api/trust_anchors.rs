//! Per-provider trust anchors over real gRPC: only keys whose `x5c` chain validates to one of
//! the provider's anchors are published, as of when the identity provider last served the
//! set (a certificate that expires leaves at the next refresh, even a 304, which is refused
//! when it would leave no key); left-out kids answer NOT_FOUND without a refresh; new anchors on
//! re-registration publish the new view at once, or are refused when they would leave no
//! key; a replica beside the one that refreshed publishes the same view; pushed sets are
//! checked when pushed; malformed anchors name the entry to fix.

use std::time::Duration;

use chrono::Datelike;
use keyrelay::proto::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, kids, spawn_app, status, wait_until},
    mock_idp::{Document, MockIdp},
    pki::TestCa,
    pushed::{publish, register_pushed},
};

fn anchored(anchors: &[&TestCa]) -> Option<pb::ProviderPolicy> {
    Some(pb::ProviderPolicy {
        trust_anchors: anchors.iter().map(|ca| ca.pem()).collect(),
        ..pb::ProviderPolicy::default()
    })
}

fn skipped(provider: &pb::Provider) -> Vec<(String, String)> {
    let listed = &status(provider).skipped_keys;
    listed
        .iter()
        .map(|s| (s.kid.clone(), format!("{}: {}", s.kind, s.reason)))
        .collect()
}

/// Serves `keys` fresh for 600 s under the ETag `"v1"`, so that refreshes revalidate.
fn serve(idp: &MockIdp, keys: &serde_json::Value) {
    idp.set_document(Document {
        body: keys.to_string(),
        cache_control: Some("max-age=600".into()),
        etag: Some(ETAG.into()),
        ..Document::default()
    });
}

/// Whether the last request to `idp` revalidated the served set.
fn revalidated(idp: &MockIdp) -> bool {
    idp.requests()
        .last()
        .is_some_and(|r| r.if_none_match.as_deref() == Some(ETAG))
}

const ETAG: &str = "\"v1\"";

/// The (year, month, day) `days` after the server clock's date.
fn days_after(app: &TestApp, days: i64) -> (i32, u8, u8) {
    use keyrelay::clock::Clock;
    let date = (app.clock.now() + chrono::Duration::days(days)).date_naive();
    let narrow = |n: u32| u8::try_from(n).expect("a day or month");
    (date.year(), narrow(date.month()), narrow(date.day()))
}

async fn only_chains_to_an_anchor_are_published(backend: Backend) {
    let app = spawn_app(backend).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let (root, other) = (TestCa::new("Bank Root"), TestCa::new("Other Root"));
    let ed_without_chain = json!({"kty": "OKP", "crv": "Ed25519", "kid": "bare", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let keys = json!({"keys": [
        root.signing_jwk("trusted", days_after(&app, 400)),
        root.signing_jwk("expiring", days_after(&app, 2)),
        other.signing_jwk("other-ca", days_after(&app, 400)),
        ed_without_chain,
    ]});
    serve(&idp, &keys);
    let url = idp.jwks_url();

    let provider = app
        .register_with("acme", "bank", &url, anchored(&[&root]))
        .await;
    assert_eq!(status(&provider).version, 1);
    let refused_other = "certificate: certificate: the x5c chain does not validate to policy.trust_anchors: no trust anchor issued it";
    let refused_bare = "certificate: certificate: it has no x5c certificate chain, and the provider's policy.trust_anchors require one";
    assert_eq!(
        skipped(&provider),
        [
            ("other-ca".to_owned(), refused_other.to_owned()),
            ("bare".to_owned(), refused_bare.to_owned()),
        ]
    );
    let policy = provider.policy.clone().expect("the registered policy");
    assert_eq!(
        policy.trust_anchors,
        [root.pem()],
        "anchors read back as PEM"
    );
    let set = app.resolve("acme", "bank", None).await.expect("resolve");
    assert_eq!(kids(&set), ["trusted", "expiring"]);

    app.advance(Duration::from_secs(3 * 24 * 3600));
    let refreshed = app.refresh("acme", "bank").await;
    assert!(revalidated(&idp), "the refresh was a revalidation");
    assert_eq!(
        status(&refreshed).version,
        2,
        "a 304 checks the chains again"
    );
    let expired = skipped(&refreshed);
    assert_eq!(expired[0].0, "expiring", "{expired:?}");
    assert!(
        expired[0]
            .1
            .contains("a certificate of the chain expired at"),
        "{expired:?}"
    );
    let set = app.resolve("acme", "bank", None).await.expect("resolve");
    assert_eq!(kids(&set), ["trusted"]);

    let unrelated = TestCa::new("Unrelated Root");
    let err = app
        .try_register_with("acme", "bank", &url, anchored(&[&unrelated]))
        .await
        .expect_err("anchors that trust no held key are refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("leaves out every one of the 4 key(s)"),
        "{}",
        err.message()
    );

    let both = app
        .register_with("acme", "bank", &url, anchored(&[&root, &other]))
        .await;
    assert_eq!(status(&both).version, 3, "a new anchor publishes at once");
    let restarted = app.restart().await;
    let set = restarted
        .resolve("acme", "bank", None)
        .await
        .expect("resolve");
    assert_eq!(set.version, 3);
    assert_eq!(
        kids(&set),
        ["trusted", "other-ca"],
        "chains are checked as of the last confirmation, also after a restart"
    );
    let listed: Vec<String> = skipped(&restarted.get("acme", "bank").await)
        .into_iter()
        .map(|(kid, _)| kid)
        .collect();
    assert_eq!(listed, ["expiring", "bare"], "read back from the store");
    let fetches = idp.requests().len();
    let err = restarted
        .resolve("acme", "bank", Some("bare"))
        .await
        .expect_err("a kid the anchors leave out");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(idp.requests().len(), fetches, "answered without a refresh");
}

#[tokio::test]
async fn only_keys_whose_chain_validates_to_an_anchor_are_published_on_sqlite() {
    only_chains_to_an_anchor_are_published(Backend::Sqlite).await;
}

#[tokio::test]
async fn only_keys_whose_chain_validates_to_an_anchor_are_published_on_postgres() {
    only_chains_to_an_anchor_are_published(Backend::Postgres).await;
}

#[tokio::test]
async fn malformed_trust_anchors_name_the_entry() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let root = TestCa::new("Bank Root");
    let bundle = format!("{}{}", root.pem(), TestCa::new("Other").pem());
    let cases = [
        (
            vec![root.pem(), "not pem".to_owned()],
            "policy.trust_anchors[1]",
            "holds no PEM block",
        ),
        (
            vec![bundle],
            "policy.trust_anchors[0]",
            "holds 2 PEM blocks; give one certificate per entry",
        ),
        (
            vec![root.pem(); 17],
            "policy.trust_anchors",
            "at most 16 entries",
        ),
    ];
    for (trust_anchors, field, reason) in cases {
        let policy = pb::ProviderPolicy {
            trust_anchors,
            ..pb::ProviderPolicy::default()
        };
        let err = app
            .try_register_with("acme", "bank", &idp.jwks_url(), Some(policy))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with(&format!("invalid {field}: {reason}")),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn a_replica_beside_the_one_that_refreshed_publishes_the_same_checked_view() {
    let app = spawn_app(Backend::Postgres).await;
    let peer = app.spawn_peer().await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let root = TestCa::new("Bank Root");
    let keys = json!({"keys": [
        root.signing_jwk("trusted", days_after(&app, 400)),
        root.signing_jwk("expiring", days_after(&app, 2)),
    ]});
    serve(&idp, &keys);
    app.register_with("acme", "bank", &idp.jwks_url(), anchored(&[&root]))
        .await;
    let held = wait_until(|| async { peer.resolve("acme", "bank", None).await.ok() }).await;
    assert_eq!(kids(&held), ["trusted", "expiring"]);

    app.advance(Duration::from_secs(3 * 24 * 3600));
    assert_eq!(status(&app.refresh("acme", "bank").await).version, 2);
    let checked = wait_until(|| async {
        let set = peer.resolve("acme", "bank", None).await.ok()?;
        (set.version == 2).then_some(set)
    })
    .await;
    assert_eq!(kids(&checked), ["trusted"]);
    let skipped = skipped(&peer.get("acme", "bank").await);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "expiring");
}

#[tokio::test]
async fn a_pushed_set_is_checked_against_the_anchors_when_pushed() {
    let app = spawn_app(Backend::Sqlite).await;
    let root = TestCa::new("Bank Root");
    register_pushed(&app, "internal", anchored(&[&root]))
        .await
        .expect("register");
    let other = TestCa::new("Other Root");
    let untrusted = other.signing_jwk("untrusted", days_after(&app, 400));
    let err = publish(&app, "internal", &json!({"keys": [untrusted.clone()]}))
        .await
        .expect_err("a set of untrusted keys only is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("no trust anchor issued it"),
        "{}",
        err.message()
    );
    let trusted = root.signing_jwk("trusted", days_after(&app, 400));
    publish(&app, "internal", &json!({"keys": [trusted, untrusted]}))
        .await
        .expect("a set with a trusted key is published");
    let set = app
        .resolve("acme", "internal", None)
        .await
        .expect("resolve");
    assert_eq!(kids(&set), ["trusted"]);
}

#[tokio::test]
async fn a_304_after_which_no_chain_validates_is_refused_and_the_last_good_set_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    let root = TestCa::new("Bank Root");
    let keys = json!({"keys": [root.signing_jwk("only", days_after(&app, 2))]});
    serve(&idp, &keys);
    app.register_with("acme", "bank", &idp.jwks_url(), anchored(&[&root]))
        .await;

    app.advance(Duration::from_secs(3 * 24 * 3600));
    let refreshed = app.refresh("acme", "bank").await;
    assert!(revalidated(&idp), "the refresh was a revalidation");
    let after = status(&refreshed);
    assert_eq!(after.version, 1, "the last good set stays");
    assert!(
        after
            .last_error
            .contains("leaves out every one of the 1 key(s)")
            && after.last_error.contains("expired at"),
        "{}",
        after.last_error
    );
    let set = app.resolve("acme", "bank", None).await.expect("resolve");
    assert_eq!(kids(&set), ["only"]);
}
