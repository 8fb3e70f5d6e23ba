//! Scale of registrations: `count` providers in the embedded store, each with a ~1 KB key set,
//! an ETag and its caching headers, their next refreshes spread over the next hour. Measures
//! keyrelay's warm start (process start to gRPC health SERVING), resident memory, and, after
//! `settle` (the refreshes that fell due while seeding), over `steady` of steady state (a mock
//! IdP answering 304 with max-age=3600) its CPU use and the refreshes it writes per second.

use super::{cpu_time, free_port, rss_kib};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use chrono::{DateTime, Utc};
use sqlx::{Connection, SqliteConnection, sqlite::SqliteConnectOptions};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const ETAG: &str = "\"v1\"";

/// The key set of provider `i`: two RSA-2048 keys with kid, alg and use, about 1 KB.
pub fn jwks(i: u64) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let keys: Vec<_> = (0..2u8)
        .map(|k| serde_json::json!({"kty": "RSA", "kid": format!("p{i}-k{k}"), "alg": "RS256", "use": "sig", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0x80 | (k + 1); 256])}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn cached_response() -> String {
    let response = http::Response::builder()
        .header("cache-control", "max-age=3600")
        .header("etag", ETAG)
        .body(())
        .unwrap();
    let cached = keyrelay::state::CachedResponse::from_headers(response.headers());
    serde_json::to_string(&cached).unwrap()
}

async fn seed(data_dir: &std::path::Path, count: u64, url: &str) {
    let opened = keyrelay::store::open(None, data_dir, 1, false)
        .await
        .expect("store migrates");
    opened.store.close().await;
    let options = SqliteConnectOptions::new().filename(data_dir.join(keyrelay::store::SQLITE_FILE));
    let mut db = SqliteConnection::connect_with(&options).await.unwrap();
    let now: DateTime<Utc> = Utc::now();
    let cached = cached_response();
    let mut tx = db.begin().await.unwrap();
    for i in 0..count {
        let next = now + chrono::Duration::milliseconds((i * 3_600_000 / count) as i64);
        sqlx::query(
            "INSERT INTO providers (tenant, provider, jwks_url, policy, revision, created_at, updated_at, version,
             jwks_json, etag, cache_policy, fetched_at, fresh_until, last_attempt_at, next_refresh_at, change_seq)
             VALUES ($1, $2, $3, '{}', 1, $4, $4, 1, $5, $6, $7, $4, $8, $4, $9, $10)",
        )
        .bind(format!("tenant-{}", i / 100))
        .bind(format!("provider-{i}"))
        .bind(url)
        .bind(now)
        .bind(jwks(i).into_bytes())
        .bind(ETAG)
        .bind(&cached)
        .bind(now + chrono::Duration::hours(1))
        .bind(next)
        .bind(i as i64 + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE change_counter SET value = $1")
        .bind(count as i64 + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Settle the store as a clean shutdown leaves it: one transaction of every row leaves
    // them all in the write-ahead log, and a start reading through a log of 1,000,000 rows
    // measures SQLite's log lookups, not keyrelay's start.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// The figures of one run.
pub struct Report {
    pub providers: u64,
    pub warm_start: Duration,
    pub start_mib: u64,
    pub steady_mib: u64,
    pub cpu_percent: f64,
    pub refreshes_per_second: f64,
}

/// Seeds `count` providers, starts keyrelay on them and measures it, printing the figures.
pub async fn run(count: u64, settle: Duration, steady: Duration) -> Report {
    let _ = rustls::crypto::ring::default_provider().install_default();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let app = Router::new().route(
        "/jwks",
        get(move |headers: HeaderMap| async move {
            counted.fetch_add(1, Ordering::Relaxed);
            let cache = [("cache-control", "max-age=3600"), ("etag", ETAG)];
            if headers.get("if-none-match").is_some_and(|v| v == ETAG) {
                (StatusCode::NOT_MODIFIED, cache).into_response()
            } else {
                (StatusCode::OK, cache, jwks(0)).into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let data_dir = tempfile::tempdir().unwrap();
    let seeding = Instant::now();
    seed(data_dir.path(), count, &url).await;
    println!("{count} providers seeded in {:.1?}", seeding.elapsed());

    let port = free_port();
    let started = Instant::now();
    let server = super::keyrelay(port, data_dir.path(), &[]);
    let endpoint = format!("http://127.0.0.1:{port}");
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if answer.is_ok_and(|a| a.into_inner().status() == ServingStatus::Serving) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm_start = started.elapsed();
    let pid = server.0.id();
    let start_mib = rss_kib(pid) / 1024;
    println!(
        "warm start (process start to SERVING): {warm_start:.2?}; resident memory {start_mib} MiB"
    );

    tokio::time::sleep(settle).await;
    let (cpu_before, requests_before) =
        (cpu_time(&pid.to_string()), requests.load(Ordering::Relaxed));
    tokio::time::sleep(steady).await;
    let cpu = cpu_time(&pid.to_string()) - cpu_before;
    let refreshes = requests.load(Ordering::Relaxed) - requests_before;
    let report = Report {
        providers: count,
        warm_start,
        start_mib,
        steady_mib: rss_kib(pid) / 1024,
        cpu_percent: cpu.as_secs_f64() * 100.0 / steady.as_secs_f64(),
        refreshes_per_second: refreshes as f64 / steady.as_secs_f64(),
    };
    println!(
        "steady state over {steady:?} after {settle:?}: CPU {:.1}% of one core, {refreshes} refreshes (304) = {:.1} store writes/s; resident memory {} MiB",
        report.cpu_percent, report.refreshes_per_second, report.steady_mib
    );
    report
}
