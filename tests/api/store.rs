//! The store suite, run against both backends: what is written reads back exactly, and
//! refresh writes are fenced by the registration revision.

use std::sync::Arc;

use chrono::{Duration, SubsecRound, Utc};
use keyrelay::{
    access::Origin,
    domain::key_set::{KeySetDocument, SkipReason, SkippedKey},
    domain::{EgressRules, JwksUrl, KeySource, PolicyOverrides, ProviderKey},
    state::CachedResponse,
    state::record::Validators,
    state::record::{CurrentKeys, ProviderRecord, RefreshStatus},
    store::{self, NewRegistration, Store},
};
use tempfile::TempDir;

use crate::{
    helpers::{Backend, TestDatabase},
    mock_idp::jwks,
};

/// Registration with the first fetch due five seconds later, as the core does.
trait RegisterAt {
    async fn register_at(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: chrono::DateTime<Utc>,
    ) -> Result<keyrelay::store::Registered, keyrelay::store::StoreError>;
}

impl RegisterAt for Arc<dyn Store> {
    async fn register_at(
        &self,
        registration: &NewRegistration,
        revision: i64,
        now: chrono::DateTime<Utc>,
    ) -> Result<keyrelay::store::Registered, keyrelay::store::StoreError> {
        self.register(
            registration,
            revision,
            now,
            now + Duration::seconds(5),
            &Origin::service(),
        )
        .await
    }
}

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
    let store = store::open(url, dir.path(), 4, false)
        .await
        .expect("store opens and migrates")
        .store;
    Opened {
        store,
        _dir: dir,
        _database: database,
    }
}

fn registration(provider: &str, url: &str) -> NewRegistration {
    NewRegistration {
        key: ProviderKey::parse("acme", provider).unwrap(),
        source: KeySource::JwksUrl(JwksUrl::parse(url, &EgressRules::default()).unwrap()),
        overrides: PolicyOverrides {
            max_ttl: Some(std::time::Duration::from_secs(900)),
            ..PolicyOverrides::default()
        },
    }
}

/// `acme/okta`, registered by URL under `revision` at `now`: the record the store returns.
async fn registered_okta(
    store: &Arc<dyn Store>,
    revision: i64,
    now: chrono::DateTime<Utc>,
) -> ProviderRecord {
    store
        .register_at(
            &registration("okta", "https://idp.example.com/jwks"),
            revision,
            now,
        )
        .await
        .unwrap()
        .record
}

fn refreshed(record: &ProviderRecord, version: u64) -> ProviderRecord {
    let now = Utc::now().trunc_subsecs(6);
    let response = http::Response::builder()
        .header("cache-control", "max-age=600")
        .header("etag", "\"v\"")
        .body(())
        .unwrap();
    let body = jwks(&["k1", "k2"]).to_string();
    let document = Arc::new(KeySetDocument::parse(body.as_bytes()).unwrap().document);
    ProviderRecord {
        change_seq: record.change_seq,
        registration: record.registration.clone(),
        keys: Some(CurrentKeys {
            version,
            fetched: Arc::clone(&document),
            document,
            fetched_at: now,
            fresh_until: now + Duration::seconds(600),
            skipped: Arc::from([SkippedKey {
                kid: Some("pq".into()),
                reason: SkipReason::UnsupportedKeyType("AKP".into()),
            }]),
            withheld: Arc::from([]),
        }),
        validators: Validators {
            etag: Some("\"v\"".into()),
            last_modified: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
            cached_response: Some(CachedResponse::from_headers(response.headers())),
        },
        pending_replacement: None,
        dropped_version: 0,
        discovery: record.discovery.clone(),
        status: RefreshStatus {
            last_attempt_at: Some(now),
            last_error: Some("previous failure text".into()),
            consecutive_failures: 3,
            next_refresh_at: Some(now + Duration::seconds(560)),
        },
    }
}

/// `read` holds what `written` held: registration, keys, status and validators.
fn assert_reads_back(read: &ProviderRecord, written: &ProviderRecord) {
    assert_eq!(read.registration, written.registration);
    assert_eq!(read.keys, written.keys);
    assert_eq!(read.status, written.status);
    assert_eq!(read.validators.etag, written.validators.etag);
    assert_eq!(
        read.validators.last_modified,
        written.validators.last_modified
    );
    assert_eq!(
        read.validators.cached_response,
        written.validators.cached_response
    );
}

async fn registrations_are_created_then_updated(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let t0 = Utc::now().trunc_subsecs(6);
    let created = store
        .register_at(&registration("okta", "https://idp.example.com/jwks"), 7, t0)
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.record.registration.revision, 7);
    assert_eq!(created.record.registration.created_at, t0);
    assert!(created.record.keys.is_none());
    assert_eq!(
        created.record.status.next_refresh_at,
        Some(t0 + Duration::seconds(5)),
        "the first fetch is claimed"
    );
    assert_eq!(
        created.record.registration.overrides.max_ttl,
        Some(std::time::Duration::from_secs(900))
    );

    let t1 = t0 + Duration::seconds(5);
    let updated = store
        .register_at(
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
        updated
            .record
            .jwks_url()
            .map(JwksUrl::as_str)
            .unwrap_or_default(),
        "https://idp.example.com/jwks2"
    );
}

async fn refresh_results_read_back_exactly(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let record = registered_okta(store, 1, Utc::now().trunc_subsecs(6)).await;
    let written = refreshed(&record, 4);
    assert!(
        store
            .save_refresh(&written, None, &[])
            .await
            .unwrap()
            .is_some()
    );

    let loaded = store.load_all().await.unwrap();
    assert_eq!(loaded.len(), 1);
    let read = &loaded[0];
    assert!(
        read.change_seq > record.change_seq,
        "every write takes a newer change sequence"
    );
    assert_reads_back(read, &written);
}

async fn changing_the_url_drops_the_validators_but_keeps_the_keys(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    let record = registered_okta(store, 1, now).await;
    assert!(
        store
            .save_refresh(&refreshed(&record, 1), None, &[])
            .await
            .unwrap()
            .is_some()
    );

    let same = registered_okta(store, 2, now).await;
    assert_eq!(same.validators.etag.as_deref(), Some("\"v\""));
    let moved = store
        .register_at(
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
    assert!(moved.validators.cached_response.is_none());
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
    let old = registered_okta(store, 1, now).await;
    store
        .register_at(
            &registration("okta", "https://idp.example.com/jwks"),
            2,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .save_refresh(&refreshed(&old, 1), None, &[])
            .await
            .unwrap(),
        None,
        "a stale revision writes nothing"
    );
    assert!(store.load_all().await.unwrap()[0].keys.is_none());

    let key = ProviderKey::parse("acme", "okta").unwrap();
    assert!(
        store
            .unregister(&key, Utc::now(), &Origin::service())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .unregister(&key, Utc::now(), &Origin::service())
            .await
            .unwrap(),
        None
    );
    let current = ProviderRecord {
        registration: old.registration.clone(),
        ..refreshed(&old, 1)
    };
    assert_eq!(
        store.save_refresh(&current, None, &[]).await.unwrap(),
        None,
        "nothing resurrects a removed provider"
    );
    assert!(store.load_all().await.unwrap().is_empty());
}

async fn load_all_returns_every_provider_in_key_order(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    // More rows than the start decodes in one batch, or holds in flight, registered out of
    // key order.
    let mut providers: Vec<String> = (0..1500).map(|i| format!("p{:04}", i * 7 % 1500)).collect();
    providers.extend(["zeta", "alpha", "mid"].map(String::from));
    for provider in &providers {
        store
            .register_at(
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
        .map(|r| r.registration.key.provider().as_str().to_owned())
        .collect();
    providers.sort();
    assert_eq!(names, providers);
    assert_eq!(names[..2], ["alpha", "mid"]);
}

async fn every_write_takes_a_newer_change_sequence(backend: Backend) {
    let opened = open(backend).await;
    let store = &opened.store;
    let now = Utc::now().trunc_subsecs(6);
    let key = ProviderKey::parse("acme", "okta").unwrap();
    let first = registered_okta(store, 1, now).await;
    let refreshed_seq = store
        .save_refresh(&refreshed(&first, 1), None, &[])
        .await
        .unwrap()
        .expect("written");
    let again = registered_okta(store, 2, now).await;
    let removed = store
        .unregister(&key, Utc::now(), &Origin::service())
        .await
        .unwrap()
        .expect("removed");
    assert!(
        first.change_seq < refreshed_seq
            && refreshed_seq < again.change_seq
            && again.change_seq < removed
    );
    assert!(store.get(&key).await.unwrap().is_none());
    let back = store
        .register_at(
            &registration("okta", "https://idp.example.com/jwks"),
            3,
            now,
        )
        .await
        .unwrap();
    assert!(back.created && back.record.change_seq > removed);
    assert_eq!(
        store.get(&key).await.unwrap().map(|r| r.change_seq),
        Some(back.record.change_seq)
    );
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
    every_write_takes_a_newer_change_sequence,
);

/// Postgres fences the leader's writes with its lease and announces every change.
mod postgres_fleet {
    use sqlx::{Connection, PgConnection, postgres::PgListener};

    use super::*;
    use keyrelay::{
        cluster::ShardMap,
        store::{CHANGES_CHANNEL, Change, Fence},
    };

    /// The lease of shard `shard` as held by `holder` at `term` for `valid_for_secs` more.
    async fn set_lease(url: &str, shard: u32, holder: &str, term: i64, valid_for_secs: f64) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query(
            "UPDATE shard_leases SET holder = $2, term = $3,
             expires_at = now() + make_interval(secs => $4) WHERE shard = $1",
        )
        .bind(i32::try_from(shard).unwrap())
        .bind(holder)
        .bind(term)
        .bind(valid_for_secs)
        .execute(&mut conn)
        .await
        .unwrap();
    }

    fn fence(shard: u32, holder: &str, term: i64) -> Fence {
        Fence {
            shard,
            holder: holder.into(),
            term,
        }
    }

    #[tokio::test]
    async fn only_the_current_lease_term_can_write_refresh_results() {
        let database = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(Some(&database.url), dir.path(), 2, false)
            .await
            .unwrap()
            .store;
        let record = registered_okta(&store, 1, Utc::now().trunc_subsecs(6)).await;
        // A new fleet has 64 shards; the lease of this provider's shard fences its writes.
        let shard = ShardMap::new(64).shard_of(&record.registration.key);
        let fence = |holder, term| fence(shard, holder, term);

        set_lease(&database.url, shard, "replica-a", 7, 30.0).await;
        assert!(
            store
                .save_refresh(&refreshed(&record, 1), Some(&fence("replica-a", 7)), &[])
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .save_refresh(&refreshed(&record, 2), Some(&fence("replica-a", 6)), &[])
                .await
                .unwrap(),
            None,
            "an old term"
        );
        assert_eq!(
            store
                .save_refresh(&refreshed(&record, 2), Some(&fence("replica-b", 7)), &[])
                .await
                .unwrap(),
            None,
            "another holder"
        );
        set_lease(&database.url, shard, "replica-a", 7, -1.0).await;
        assert_eq!(
            store
                .save_refresh(&refreshed(&record, 2), Some(&fence("replica-a", 7)), &[])
                .await
                .unwrap(),
            None,
            "an expired lease"
        );
        assert_eq!(
            store.load_all().await.unwrap()[0]
                .keys
                .as_ref()
                .map(|k| k.version),
            Some(1)
        );
    }

    #[tokio::test]
    async fn every_committed_change_is_notified_with_its_sequence() {
        let database = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(Some(&database.url), dir.path(), 2, false)
            .await
            .unwrap()
            .store;
        let mut listener = PgListener::connect(&database.url).await.unwrap();
        listener.listen(CHANGES_CHANNEL).await.unwrap();
        let key = ProviderKey::parse("acme", "okta").unwrap();

        let record = registered_okta(&store, 1, Utc::now().trunc_subsecs(6)).await;
        let seq = store
            .save_refresh(&refreshed(&record, 1), None, &[])
            .await
            .unwrap()
            .unwrap();
        let removed = store
            .unregister(&key, Utc::now(), &Origin::service())
            .await
            .unwrap()
            .unwrap();
        let mut received = Vec::new();
        for _ in 0..3 {
            let notification =
                tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
                    .await
                    .unwrap()
                    .unwrap();
            received.push(Change::parse(notification.payload()).expect("well-formed payload"));
        }
        assert_eq!(
            received,
            [
                Change::Updated(key.clone(), record.change_seq),
                Change::Updated(key.clone(), seq),
                Change::Removed(key, removed),
            ]
        );
    }

    /// README, "Changing the shard count": the stored count is what a starting replica uses,
    /// and it adds the (free) lease rows a larger count needs; counts outside 1..=4096 are
    /// refused by the database.
    #[tokio::test]
    async fn a_replica_starts_with_the_stored_shard_count_and_adds_the_missing_leases() {
        let database = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        store::open(Some(&database.url), dir.path(), 2, false)
            .await
            .unwrap();
        let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
        assert_eq!(
            keyrelay::cluster::shard_map(&pool).await.unwrap(),
            ShardMap::new(64)
        );
        for refused in [0, 4097] {
            let update = sqlx::query("UPDATE fleet_settings SET shard_count = $1")
                .bind(refused)
                .execute(&pool)
                .await;
            assert!(update.is_err(), "shard_count {refused} was accepted");
        }
        sqlx::query("UPDATE fleet_settings SET shard_count = 100")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            keyrelay::cluster::shard_map(&pool).await.unwrap(),
            ShardMap::new(100)
        );
        let leases: Vec<(i32, String, i64)> =
            sqlx::query_as("SELECT shard, holder, term FROM shard_leases ORDER BY shard")
                .fetch_all(&pool)
                .await
                .unwrap();
        let expected: Vec<(i32, String, i64)> = (0..100).map(|s| (s, String::new(), 0)).collect();
        assert_eq!(leases, expected, "every shard has a free lease row");
    }
}

/// A store written before `providers` became a rowid table reads back the same after the
/// migration rebuilds it, every column of every row.
mod sqlite_upgrade {
    use std::path::Path;

    use sqlx::{
        SqlitePool,
        migrate::Migrator,
        sqlite::{SqliteConnectOptions, SqlitePoolOptions},
    };

    use super::*;
    use keyrelay::domain::Issuer;

    /// The first migration after which `providers` is a rowid table.
    const ROWID_MIGRATION: &str = "20261205000001";

    async fn pool(path: &Path) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true),
            )
            .await
            .unwrap()
    }

    /// Brings the store at `path` up to the migration before `ROWID_MIGRATION`, from a copy of
    /// the older migration files.
    async fn migrate_to_before_rowid(path: &Path) {
        let older = tempfile::tempdir().unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(all).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().as_ref() < ROWID_MIGRATION {
                std::fs::copy(entry.path(), older.path().join(entry.file_name())).unwrap();
            }
        }
        let pool = pool(path).await;
        Migrator::new(older.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    async fn providers_table(path: &Path) -> String {
        let pool = pool(path).await;
        let sql: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'providers'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        sql
    }

    /// A provider of each kind: refreshed by URL (keys, validators, skipped keys, a failure),
    /// registered by issuer, and pushed.
    async fn write_one_of_each(store: &Arc<dyn Store>) {
        let now = Utc::now().trunc_subsecs(6);
        let fetched = registered_okta(store, 1, now).await;
        store
            .save_refresh(&refreshed(&fetched, 4), None, &[])
            .await
            .unwrap()
            .expect("written");
        let issuer = Issuer::parse("https://login.example.com", &EgressRules::default()).unwrap();
        for (provider, source) in [
            ("auth0", KeySource::Issuer(issuer)),
            ("signer", KeySource::Pushed),
        ] {
            let registration = NewRegistration {
                source,
                ..registration(provider, "https://idp.example.com/jwks")
            };
            store.register_at(&registration, 2, now).await.unwrap();
        }
    }

    fn assert_same(before: &[Arc<ProviderRecord>], after: &[Arc<ProviderRecord>]) {
        assert_eq!(before.len(), after.len());
        for (before, after) in before.iter().zip(after) {
            assert_eq!(after.change_seq, before.change_seq);
            assert_reads_back(after, before);
            assert_eq!(after.dropped_version, before.dropped_version);
        }
    }

    #[tokio::test]
    async fn rows_written_before_the_rowid_rebuild_read_back_whole_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(store::SQLITE_FILE);
        migrate_to_before_rowid(&path).await;
        assert!(providers_table(&path).await.contains("WITHOUT ROWID"));

        let old = store::open(None, dir.path(), 1, true).await.unwrap().store;
        write_one_of_each(&old).await;
        let before = old.load_all().await.unwrap();
        old.close().await;
        assert_eq!(before.len(), 3);

        let migrated = store::open(None, dir.path(), 1, false).await.unwrap().store;
        let after = migrated.load_all().await.unwrap();
        migrated.close().await;
        assert!(!providers_table(&path).await.contains("WITHOUT ROWID"));
        assert_same(&before, &after);
    }
}
