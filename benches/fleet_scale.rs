//! The fleet at scale (run with `cargo bench --bench fleet_scale`; needs Postgres at
//! TEST_DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres). PROVIDERS providers
//! (100,000) are seeded into a fresh database, each with a ~1 KB key set, an ETag and a
//! LIFETIME-second (300) cache lifetime, their next refreshes spread evenly over one refresh
//! interval (so the fetch rate is steady from the start); a mock IdP answers every
//! revalidation with 304. Real `keyrelay serve` replicas with the
//! default lease timing (TTL 15 s, renewal 5 s). Measured over WINDOW seconds (60) of steady
//! state, first with one replica and then with three on the same database:
//! - upstream fetches seen by the IdP, and each replica's own (`keyrelay_refreshes_total`);
//! - refetches: a provider fetched again less than half a lifetime after its last fetch
//!   (what two replicas refreshing one shard would cause);
//! - each replica's CPU and resident memory, and the database's load: commits, rows
//!   updated, WAL written and the CPU of every Postgres process.
//!
//! Then one of the three is killed (SIGKILL): the time until its shards' leases are held
//! again, until every one of its shards has had a fetch, and until every provider of its
//! shards whose refresh came due while nobody owned them has been fetched.

#[allow(dead_code)]
mod support;

use support::{
    cpu_time, env_or,
    fleet::{Replica, drop_databases, fresh_database, start},
    rss_kib,
};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Utc};
use keyrelay::{cluster::ShardMap, domain::ProviderKey};
use sqlx::{Connection, PgConnection};

const ETAG: &str = "\"v1\"";
/// The fleet's shard count (the default).
const SHARDS: u32 = 64;

/// What the mock IdP saw, per provider, in milliseconds since the bench started (0: never).
struct Seen {
    started: Instant,
    lifetime: Duration,
    total: AtomicU64,
    refetches: AtomicU64,
    last_fetch: Vec<AtomicU64>,
    /// The first fetch at or after `mark`.
    first_since_mark: Vec<AtomicU64>,
    mark: AtomicU64,
}

impl Seen {
    fn new(providers: usize, lifetime: Duration) -> Self {
        let zeros = || (0..providers).map(|_| AtomicU64::new(0)).collect();
        Self {
            started: Instant::now(),
            lifetime,
            total: AtomicU64::new(0),
            refetches: AtomicU64::new(0),
            last_fetch: zeros(),
            first_since_mark: zeros(),
            mark: AtomicU64::new(u64::MAX),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn record(&self, provider: usize) {
        let now = self.now();
        self.total.fetch_add(1, Ordering::Relaxed);
        let last = self.last_fetch[provider].swap(now, Ordering::Relaxed);
        if last != 0 && now - last < self.lifetime.as_millis() as u64 / 2 {
            self.refetches.fetch_add(1, Ordering::Relaxed);
        }
        if now >= self.mark.load(Ordering::Relaxed) {
            let _ = self.first_since_mark[provider].compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Starts recording first fetches from now; returns the mark.
    fn set_mark(&self) -> u64 {
        let mark = self.now();
        self.mark.store(mark, Ordering::Relaxed);
        mark
    }

    fn counts(&self) -> (u64, u64) {
        let total = self.total.load(Ordering::Relaxed);
        (total, self.refetches.load(Ordering::Relaxed))
    }
}

fn jwks_template() -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let keys: Vec<_> = (0..2u8)
        .map(|k| serde_json::json!({"kty": "RSA", "kid": format!("p@-k{k}"), "alg": "RS256", "use": "sig", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0x80 | (k + 1); 256])}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

async fn idp(
    State((seen, max_age)): State<(Arc<Seen>, String)>,
    Path(provider): Path<usize>,
    headers: HeaderMap,
) -> Response {
    if provider >= seen.last_fetch.len() {
        return StatusCode::NOT_FOUND.into_response();
    }
    seen.record(provider);
    let cache = [("cache-control", max_age), ("etag", ETAG.to_owned())];
    if headers.get("if-none-match").is_some_and(|v| v == ETAG) {
        (StatusCode::NOT_MODIFIED, cache).into_response()
    } else {
        let body = jwks_template().replace('@', &provider.to_string());
        (StatusCode::OK, cache, body).into_response()
    }
}

/// Provider `n` is `tenant-{n / 100}/provider-{n}`, fetched from `{base}/jwks/{n}`.
fn key_of(n: usize) -> ProviderKey {
    ProviderKey::parse(&format!("tenant-{}", n / 100), &format!("provider-{n}")).unwrap()
}

/// How long after a fetch keyrelay refreshes, on average: before expiry by the default
/// `--refresh-early` (30 s) plus a jitter of up to a tenth of the lifetime (at most 30 s),
/// by at most half the lifetime.
fn refresh_interval(lifetime: Duration) -> Duration {
    let mean_jitter = (lifetime / 10).min(Duration::from_secs(30)) / 2;
    lifetime - (Duration::from_secs(30) + mean_jitter).min(lifetime / 2)
}

async fn seed(database_url: &str, count: usize, base: &str, lifetime: Duration) {
    let temp = tempfile::tempdir().unwrap();
    let opened = keyrelay::store::open(Some(database_url), temp.path(), 1, false)
        .await
        .expect("store migrates");
    opened.store.close().await;
    let response = http::Response::builder()
        .header("cache-control", format!("max-age={}", lifetime.as_secs()))
        .header("etag", ETAG)
        .body(())
        .unwrap();
    let cached = keyrelay::state::CachedResponse::from_headers(response.headers());
    let mut db = PgConnection::connect(database_url).await.unwrap();
    sqlx::query(
        "INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at,
             version, jwks_json, etag, cache_policy, fetched_at, fresh_until, last_attempt_at,
             next_refresh_at)
         SELECT 'tenant-' || (n / 100), 'provider-' || n, $1 || n, '{}', 1, now(), now(), 1,
             convert_to(replace($2, '@', n::text), 'UTF8'), $3, $4, now(),
             now() + make_interval(secs => $5), now(), now() + make_interval(secs => $7 * n / $6)
         FROM generate_series(0, $6 - 1) AS n",
    )
    .bind(format!("{base}/jwks/"))
    .bind(jwks_template())
    .bind(ETAG)
    .bind(serde_json::to_string(&cached).unwrap())
    .bind(lifetime.as_secs_f64())
    .bind(count as i64)
    .bind(refresh_interval(lifetime).as_secs_f64())
    .execute(&mut db)
    .await
    .unwrap();
}

/// The database's counters and the CPU of every Postgres process.
#[derive(Debug, Clone, Copy)]
struct DbLoad {
    commits: i64,
    updated: i64,
    wal: f64,
    cpu: Duration,
}

async fn db_load(database_url: &str) -> DbLoad {
    let mut db = PgConnection::connect(database_url).await.unwrap();
    let (commits, updated, wal): (i64, i64, f64) = sqlx::query_as(
        "SELECT xact_commit, tup_updated, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    DbLoad {
        commits,
        updated,
        wal,
        cpu: postgres_cpu(),
    }
}

fn postgres_cpu() -> Duration {
    let processes = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = processes.filter_map(|entry| {
        let pid = entry.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "postgres").then_some(pid)
    });
    pids.map(|pid| cpu_time(&pid)).sum()
}

/// Waits until `fleet` holds every shard, each replica its fair share (64 / n rounded up, or
/// the rest), as `fleet[0]` sees it.
async fn balanced(fleet: &[Replica]) -> Duration {
    let started = Instant::now();
    let share = SHARDS.div_ceil(fleet.len() as u32);
    let least = SHARDS - share * (fleet.len() as u32 - 1);
    loop {
        if let Some(status) = fleet[0].status().await {
            let owned = |r: &Replica| {
                let seen = status.replicas.iter().find(|s| s.id == r.id);
                seen.map_or(0, |s| s.shards_owned)
            };
            let counts: Vec<u32> = fleet.iter().map(owned).collect();
            let total: u32 = counts.iter().sum();
            if total == SHARDS && counts.iter().all(|c| (least..=share).contains(c)) {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `count` replicas named `{prefix}{n}`, each waited for until SERVING, and prints
/// each one's warm start and memory.
async fn start_fleet(prefix: &str, count: usize, database_url: &str) -> Vec<Replica> {
    let mut fleet = Vec::new();
    for n in 0..count {
        let started = Instant::now();
        let replica = start(&format!("{prefix}{n}"), database_url, &[]).await;
        replica.wait_serving().await;
        println!(
            "  {} SERVING {:.2?} after start, resident {} MiB",
            replica.id,
            started.elapsed(),
            rss_kib(replica.pid()) / 1024
        );
        fleet.push(replica);
    }
    println!("  shards balanced {:.1?} later", balanced(&fleet).await);
    fleet
}

/// One steady-state window: fetches, CPU, memory and database load.
async fn measure(fleet: &[Replica], seen: &Seen, database_url: &str, window: Duration) -> u64 {
    let mut before = Vec::new();
    for replica in fleet {
        before.push((
            replica.refreshes().await,
            cpu_time(&replica.pid().to_string()),
        ));
    }
    let (total_before, refetches_before) = seen.counts();
    let db_before = db_load(database_url).await;
    tokio::time::sleep(window).await;
    let (total, refetches) = seen.counts();
    let db = db_load(database_url).await;
    let secs = window.as_secs_f64();
    let fetched = total - total_before;
    println!(
        "  over {window:?}: {fetched} fetches at the IdP ({:.1}/s), {} refetches within half a lifetime",
        fetched as f64 / secs,
        refetches - refetches_before
    );
    for (replica, (refreshes, cpu)) in fleet.iter().zip(before) {
        let made = replica.refreshes().await - refreshes;
        let cpu = cpu_time(&replica.pid().to_string()) - cpu;
        println!(
            "    {}: {made} fetches ({:.1} % of the IdP's), CPU {:.1} % of one core, resident {} MiB",
            replica.id,
            made * 100.0 / fetched as f64,
            cpu.as_secs_f64() * 100.0 / secs,
            rss_kib(replica.pid()) / 1024
        );
    }
    println!(
        "    database: {:.1} commits/s, {:.1} rows updated/s, {:.1} KiB WAL/s, Postgres CPU {:.1} % of one core",
        (db.commits - db_before.commits) as f64 / secs,
        (db.updated - db_before.updated) as f64 / secs,
        (db.wal - db_before.wal) / 1024.0 / secs,
        (db.cpu - db_before.cpu).as_secs_f64() * 100.0 / secs
    );
    fetched
}

/// The next refresh of every provider in `shards`, as stored now.
async fn due_in(database_url: &str, shards: &[u32], map: ShardMap) -> Vec<(usize, DateTime<Utc>)> {
    let mut db = PgConnection::connect(database_url).await.unwrap();
    let rows: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT provider, next_refresh_at FROM providers")
            .fetch_all(&mut db)
            .await
            .unwrap();
    rows.into_iter()
        .filter_map(|(provider, next)| {
            let n: usize = provider.strip_prefix("provider-")?.parse().ok()?;
            shards
                .contains(&map.shard_of(&key_of(n)))
                .then_some((n, next))
        })
        .collect()
}

/// When the last of `shards` had its first fetch since the mark (in `seen`'s milliseconds),
/// from the fetches of its providers `stored`.
fn last_shard_refreshed(
    stored: &[(usize, DateTime<Utc>)],
    shards: &[u32],
    seen: &Seen,
    map: ShardMap,
) -> Option<u64> {
    let mut first_per_shard = vec![u64::MAX; SHARDS as usize];
    for (n, _) in stored {
        let at = seen.first_since_mark[*n].load(Ordering::Relaxed);
        let shard = map.shard_of(&key_of(*n)) as usize;
        if at != 0 {
            first_per_shard[shard] = first_per_shard[shard].min(at);
        }
    }
    shards.iter().map(|s| first_per_shard[*s as usize]).max()
}

/// SIGKILL of `fleet[1]`, then the takeover and the catch-up of its shards.
async fn kill_one(fleet: &mut Vec<Replica>, seen: &Seen, database_url: &str) {
    let map = ShardMap::new(SHARDS);
    let status = fleet[0].status().await.unwrap();
    let victim = fleet.remove(1);
    let shards: Vec<u32> = status
        .shards
        .iter()
        .filter(|lease| lease.active && lease.holder == victim.id)
        .map(|lease| lease.shard)
        .collect();
    victim.signal("-KILL");
    let killed_at = Instant::now();
    let killed_wall = Utc::now();
    let mark = seen.set_mark();
    drop(victim);
    let stored = due_in(database_url, &shards, map).await;
    let taken_over = loop {
        if let Some(status) = fleet[0].status().await {
            let held = status.shards.iter().filter(|l| shards.contains(&l.shard));
            let by_survivors = held
                .filter(|l| l.active && fleet.iter().any(|r| r.id == l.holder))
                .count();
            if by_survivors == shards.len() {
                break killed_at.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let taken_wall = killed_wall + chrono::Duration::from_std(taken_over).unwrap();
    let overdue: Vec<usize> = stored
        .iter()
        .filter(|(_, next)| *next <= taken_wall)
        .map(|(n, _)| *n)
        .collect();
    let limit = Instant::now() + Duration::from_secs(120);
    let fetched_since = |n: &usize| seen.first_since_mark[*n].load(Ordering::Relaxed);
    while overdue.iter().any(|n| fetched_since(n) == 0) && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since_kill = |at: u64| Duration::from_millis(at.saturating_sub(mark));
    let caught_up = overdue.iter().map(fetched_since).max().unwrap_or(mark);
    let missing = overdue.iter().filter(|n| fetched_since(n) == 0).count();
    let last_first = last_shard_refreshed(&stored, &shards, seen, map).unwrap_or(mark);
    println!(
        "  SIGKILL of a replica holding {} shards ({} providers): leases held again after {taken_over:.2?}, every one of its shards fetched again after {:.2?}",
        shards.len(),
        stored.len(),
        since_kill(last_first)
    );
    println!(
        "  {} of its providers came due while their shards had no owner; all fetched {:.2?} after the kill ({missing} not within 120 s)",
        overdue.len(),
        since_kill(caught_up)
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let providers = env_or("PROVIDERS", 100_000_usize);
    let lifetime = Duration::from_secs(env_or("LIFETIME", 300));
    let window = Duration::from_secs(env_or("WINDOW", 60));
    let settle = Duration::from_secs(10);

    let seen = Arc::new(Seen::new(providers, lifetime));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let max_age = format!("max-age={}", lifetime.as_secs());
    let app = Router::new()
        .route("/jwks/{provider}", get(idp))
        .with_state((Arc::clone(&seen), max_age));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let database = fresh_database().await;
    let seeding = Instant::now();
    seed(&database, providers, &base, lifetime).await;
    let interval = refresh_interval(lifetime);
    println!(
        "{providers} providers seeded in {:.1?}, {lifetime:?} lifetime, 304 from the IdP: {:.1} fetches/s expected (one per provider every {interval:.0?})",
        seeding.elapsed(),
        providers as f64 / interval.as_secs_f64()
    );

    println!("one replica:");
    let fleet = start_fleet("one-", 1, &database).await;
    tokio::time::sleep(settle).await;
    let alone = measure(&fleet, &seen, &database, window).await;
    fleet.into_iter().for_each(Replica::stop);

    println!("three replicas:");
    let mut fleet = start_fleet("three-", 3, &database).await;
    tokio::time::sleep(settle).await;
    let shared = measure(&fleet, &seen, &database, window).await;
    println!(
        "  three replicas fetched {:.3}x what one did",
        shared as f64 / alone as f64
    );
    kill_one(&mut fleet, &seen, &database).await;
    drop(fleet);
    drop_databases().await;
}
