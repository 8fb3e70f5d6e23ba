//! The store suite, run against both backends: what is written reads back exactly, and
//! refresh writes are fenced by the registration revision.

use std::sync::Arc;

use chrono::{Duration, SubsecRound, Utc};
use keyrelay::{
    domain::{EgressRules, JwksUrl, PolicyOverrides, ProviderKey},
    fetch::Validators,
    jwks::KeySetDocument,
    provider::{CurrentKeys, ProviderRecord, RefreshStatus},
    store::{self, NewRegistration, Store},
};
use tempfile::TempDir;

use crate::{
    helpers::{Backend, TestDatabase},
    mock_idp::jwks,
};

struct Opened {
    store: Arc<dyn Store>,
    _dir: TempDir,
    _database: Option<TestDatabase>,
}

async fn open(backend: Backend) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await),
    };
    let url = database.as_ref().map(|db| db.url.as_str());
    let store = store::open(url, dir.path(), 4)
        .await
        .expect("store opens and migrates");
    Opened {
        store,
        _dir: dir,
        _database: database,
    }
}

fn registration(provider: &str, url: &str) -> NewRegistration {
    NewRegistration {
        key: ProviderKey::parse("acme", provider).unwrap(),
        url: JwksUrl::parse(url, &EgressRules::default()).unwrap(),
        overrides: PolicyOverrides {
            max_ttl: Some(std::time::Duration::from_secs(900)),
            ..PolicyOverrides::default()
        },
    }
}

fn refreshed(record: &ProviderRecord, version: u64) -> ProviderRecord {
    let now = Utc::now().trunc_subsecs(6);
    let request = http::Request::get("https://idp.example.com/jwks")
        .body(())
        .unwrap();
    let response = http::Response::builder()
        .header("cache-control", "max-age=600")
        .header("etag", "\"v\"")
        .body(())
        .unwrap();
    let body = jwks(&["k1", "k2"]).to_string();
    ProviderRecord {
        registration: record.registration.clone(),
        keys: Some(CurrentKeys {
            version,
            document: Arc::new(KeySetDocument::parse(body.as_bytes()).unwrap().document),
            fetched_at: now,
            fresh_until: now + Duration::seconds(600),
        }),
        validators: Validators {
            etag: Some("\"v\"".into()),
            last_modified: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
            cache_policy: Some(http_cache_semantics::CachePolicy::new(&request, &response)),
        },
        status: RefreshStatus {
            last_attempt_at: Some(now),
            last_error: Some("previous failure text".into()),
            consecutive_failures: 3,
            next_refresh_at: Some(now + Duration::seconds(560)),
        },
    }
}

async fn registrations_are_created_then_updated(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let t0 = Utc::now().trunc_subsecs(6);
    let created = store
        .register(&registration("okta", "https://idp.example.com/jwks"), 7, t0)
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.record.registration.revision, 7);
    assert_eq!(created.record.registration.created_at, t0);
    assert!(created.record.keys.is_none());
    assert_eq!(
        created.record.registration.overrides.max_ttl,
        Some(std::time::Duration::from_secs(900))
    );

    let t1 = t0 + Duration::seconds(5);
    let updated = store
        .register(
            &registration("okta", "https://idp.example.com/jwks2"),
            8,
            t1,
        )
        .await
        .unwrap();
    assert!(!updated.created);
    assert_eq!(updated.record.registration.revision, 8);
    assert_eq!(updated.record.registration.created_at, t0);
    assert_eq!(updated.record.registration.updated_at, t1);
    assert_eq!(
        updated.record.registration.url.as_str(),
        "https://idp.example.com/jwks2"
    );
}

async fn refresh_results_read_back_exactly(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let record = store
        .register(
            &registration("okta", "https://idp.example.com/jwks"),
            1,
            Utc::now().trunc_subsecs(6),
        )
        .await
        .unwrap()
        .record;
    let written = refreshed(&record, 4);
    assert!(store.save_refresh(&written).await.unwrap());

    let loaded = store.load_all().await.unwrap();
    assert_eq!(loaded.len(), 1);
    let read = &loaded[0];
    assert_eq!(read.registration, written.registration);
    assert_eq!(read.keys, written.keys);
    assert_eq!(read.status, written.status);
    assert_eq!(read.validators.etag, written.validators.etag);
    assert_eq!(
        read.validators.last_modified,
        written.validators.last_modified
    );
    let now = std::time::SystemTime::now();
    assert_eq!(
        read.validators
            .cache_policy
            .as_ref()
            .map(|p| p.time_to_live(now).as_secs() / 10),
        written
            .validators
            .cache_policy
            .as_ref()
            .map(|p| p.time_to_live(now).as_secs() / 10),
    );
}

async fn changing_the_url_drops_the_validators_but_keeps_the_keys(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    let record = store
        .register(
            &registration("okta", "https://idp.example.com/jwks"),
            1,
            now,
        )
        .await
        .unwrap()
        .record;
    assert!(store.save_refresh(&refreshed(&record, 1)).await.unwrap());

    let same = store
        .register(
            &registration("okta", "https://idp.example.com/jwks"),
            2,
            now,
        )
        .await
        .unwrap()
        .record;
    assert_eq!(same.validators.etag.as_deref(), Some("\"v\""));
    let moved = store
        .register(
            &registration("okta", "https://other.example.com/jwks"),
            3,
            now,
        )
        .await
        .unwrap()
        .record;
    assert_eq!(
        (moved.validators.etag, moved.validators.last_modified),
        (None, None)
    );
    assert!(moved.validators.cache_policy.is_none());
    assert_eq!(
        moved.keys.map(|k| k.version),
        Some(1),
        "last good keys kept"
    );
}

async fn refresh_writes_are_fenced_by_the_registration_revision(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    let old = store
        .register(
            &registration("okta", "https://idp.example.com/jwks"),
            1,
            now,
        )
        .await
        .unwrap()
        .record;
    store
        .register(
            &registration("okta", "https://idp.example.com/jwks"),
            2,
            now,
        )
        .await
        .unwrap();
    assert!(
        !store.save_refresh(&refreshed(&old, 1)).await.unwrap(),
        "a stale revision writes nothing"
    );
    assert!(store.load_all().await.unwrap()[0].keys.is_none());

    let key = ProviderKey::parse("acme", "okta").unwrap();
    assert!(store.unregister(&key).await.unwrap());
    assert!(!store.unregister(&key).await.unwrap());
    let current = ProviderRecord {
        registration: old.registration.clone(),
        ..refreshed(&old, 1)
    };
    assert!(
        !store.save_refresh(&current).await.unwrap(),
        "nothing resurrects a removed provider"
    );
    assert!(store.load_all().await.unwrap().is_empty());
}

async fn load_all_returns_every_provider_in_key_order(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    for provider in ["zeta", "alpha", "mid"] {
        store
            .register(
                &registration(provider, "https://idp.example.com/jwks"),
                1,
                now,
            )
            .await
            .unwrap();
    }
    let names: Vec<_> = store
        .load_all()
        .await
        .unwrap()
        .iter()
        .map(|r| r.registration.key.provider.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Postgres).await; })*
        }
    };
}

store_suite!(
    registrations_are_created_then_updated,
    refresh_results_read_back_exactly,
    changing_the_url_drops_the_validators_but_keeps_the_keys,
    refresh_writes_are_fenced_by_the_registration_revision,
    load_all_returns_every_provider_in_key_order,
);
