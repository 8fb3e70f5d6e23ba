//! Fleet benchmark (run with `cargo bench --bench fleet`; needs Postgres at
//! TEST_DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres).
//!
//! Runs real `keyrelay serve` processes on a fresh database with the default lease timing
//! (TTL 15 s, renewal 5 s) and measures:
//! - propagation: RefreshProvider on the owner of the provider's shard (which fetches a
//!   rotated JWKS) until a WatchKeys subscriber on another replica has the new version,
//!   ROTATIONS times;
//! - failover: SIGKILL of that owner until another replica holds the shard's lease;
//! - graceful handover: SIGTERM of the new owner until another replica holds it;
//! - upstream fetches in WINDOW seconds with one replica and with three (2 s key lifetime);
//! - the spread: SPREAD providers on three replicas for WINDOW seconds, each replica's
//!   fetches (its `keyrelay_refreshes_total`) against the IdP's count.

#[allow(dead_code)]
mod support;

use support::{
    env_or,
    fleet::{Replica, drop_databases, fresh_database, start},
};

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use keyrelay::{
    cluster::ShardMap,
    domain::ProviderKey,
    proto::v1::{self as pb, key_service_client::KeyServiceClient, watch_keys_response::Event},
};
use tonic::transport::Channel;

/// The replica holding the active lease of the shard of provider `bench/provider`.
async fn shard_owner(replica: &Replica, provider: &str) -> Option<String> {
    let status = replica.status().await?;
    let key = ProviderKey::parse("bench", provider).ok()?;
    let shard = ShardMap::new(status.shard_count).shard_of(&key);
    let lease = status.shards.into_iter().find(|l| l.shard == shard);
    lease.filter(|l| l.active).map(|l| l.holder)
}

async fn wait_for_owner(observer: &Replica, provider: &str, not: Option<&str>) -> String {
    loop {
        if let Some(holder) = shard_owner(observer, provider).await
            && Some(holder.as_str()) != not
        {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SPREAD providers on three replicas: how many of the fetches each replica made.
async fn spread(base: &str, spread_fetches: &Arc<Mutex<u64>>, window: Duration, timing: &[&str]) {
    let providers = env_or::<usize>("SPREAD", 300);
    let database = fresh_database().await;
    let mut fleet = Vec::new();
    for n in 0..3 {
        fleet.push(start(&format!("s{n}"), &database, timing).await);
    }
    for n in 0..providers {
        register(&fleet[n % 3], &format!("p{n}"), &format!("{base}/spread")).await;
    }
    // Every provider has had its first fetch; count from here.
    while (*spread_fetches.lock().unwrap() as usize) < providers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut before = Vec::new();
    for replica in &fleet {
        before.push(replica.refreshes().await);
    }
    let from = *spread_fetches.lock().unwrap();
    tokio::time::sleep(window).await;
    let at_idp = *spread_fetches.lock().unwrap() - from;
    println!("spread, {providers} providers on 3 replicas for {window:?}, 2 s key lifetime:");
    let mut total = 0.0;
    for (replica, before) in fleet.iter().zip(before) {
        let made = replica.refreshes().await - before;
        total += made;
        println!("  {}: {made} fetches", replica.id);
    }
    println!("  sum {total}, seen by the IdP {at_idp}");
}

fn jwks(kid: &str) -> String {
    serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}).to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn register(replica: &Replica, provider: &str, url: &str) {
    let request = pb::RegisterProviderRequest {
        tenant: "bench".into(),
        provider: provider.into(),
        jwks_url: url.into(),
        policy: None,
        ..Default::default()
    };
    replica
        .admin()
        .await
        .register_provider(request)
        .await
        .expect("register");
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rotations = env_or::<usize>("ROTATIONS", 200);
    let window = Duration::from_secs(env_or("WINDOW", 20));
    let document = Arc::new(Mutex::new(jwks("k0")));
    let fetches = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let spread_fetches = Arc::new(Mutex::new(0_u64));
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", idp.local_addr().unwrap());
    let (served, counted) = (Arc::clone(&document), Arc::clone(&fetches));
    let spread_count = Arc::clone(&spread_fetches);
    let app = Router::new()
        .route(
            "/jwks",
            get(move || async move { served.lock().unwrap().clone() }),
        )
        .route(
            "/counted",
            get(move || async move {
                counted.lock().unwrap().push(Instant::now());
                jwks("steady")
            }),
        )
        .route(
            "/spread",
            get(move || async move {
                *spread_count.lock().unwrap() += 1;
                jwks("spread")
            }),
        );
    tokio::spawn(async move { axum::serve(idp, app).await });

    // Propagation.
    let database = fresh_database().await;
    let mut replicas = vec![
        start("a", &database, &[]).await,
        start("b", &database, &[]).await,
        start("c", &database, &[]).await,
    ];
    let leader_id = wait_for_owner(&replicas[0], "idp", None).await;
    let leader = replicas.iter().position(|r| r.id == leader_id).unwrap();
    let follower = (leader + 1) % 3;
    register(&replicas[leader], "idp", &format!("{base}/jwks")).await;
    let channel = Channel::from_shared(replicas[follower].endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = pb::WatchKeysRequest {
        selectors: vec![pb::WatchSelector {
            tenant: "bench".into(),
            provider: "idp".into(),
        }],
        known_versions: vec![pb::KnownVersion {
            tenant: "bench".into(),
            provider: "idp".into(),
            version: 1,
        }],
    };
    let mut stream = KeyServiceClient::new(channel)
        .watch_keys(request)
        .await
        .unwrap()
        .into_inner();
    // The provider may reach this replica just after the stream opens: wait for Synced.
    while !matches!(
        stream.message().await.unwrap().unwrap().event,
        Some(Event::Synced(_))
    ) {}
    let mut leader_admin = replicas[leader].admin().await;
    let mut propagation = Vec::new();
    for rotation in 1..=rotations {
        *document.lock().unwrap() = jwks(&format!("k{rotation}"));
        let started = Instant::now();
        let refresh = pb::RefreshProviderRequest {
            tenant: "bench".into(),
            provider: "idp".into(),
        };
        leader_admin.refresh_provider(refresh).await.unwrap();
        loop {
            match stream.message().await.unwrap().unwrap().event {
                Some(Event::KeySet(set)) if set.version == 1 + rotation as u64 => break,
                _ => {}
            }
        }
        propagation.push(started.elapsed());
    }
    propagation.sort();
    println!(
        "propagation, RefreshProvider on the shard's owner -> WatchKeys event on another replica ({rotations} rotations):"
    );
    println!(
        "  p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        percentile(&propagation, 0.5),
        percentile(&propagation, 0.99),
        propagation[propagation.len() - 1]
    );

    // Failover after SIGKILL, then graceful handover after SIGTERM.
    let killed = replicas.remove(leader);
    killed.signal("-KILL");
    let killed_at = Instant::now();
    let successor = wait_for_owner(&replicas[0], "idp", Some(&killed.id)).await;
    println!(
        "failover after SIGKILL of the shard's owner: {:.2?} (lease TTL 15 s)",
        killed_at.elapsed()
    );
    drop(killed);
    let index = replicas.iter().position(|r| r.id == successor).unwrap();
    let observer = (index + 1) % replicas.len();
    replicas[index].signal("-TERM");
    let stopped_at = Instant::now();
    let next = wait_for_owner(&replicas[observer], "idp", Some(&successor)).await;
    println!(
        "graceful handover after SIGTERM of the shard's owner: {:.0?} (to {next})",
        stopped_at.elapsed()
    );
    drop(replicas);

    // Upstream fetches per interval, 1 replica versus 3.
    let timing = [
        "--min-ttl",
        "1s",
        "--default-ttl",
        "2s",
        "--refresh-early",
        "1s",
    ];
    for count in [1, 3] {
        let database = fresh_database().await;
        let mut fleet = Vec::new();
        for n in 0..count {
            fleet.push(start(&format!("w{count}-{n}"), &database, &timing).await);
        }
        let lead = wait_for_owner(&fleet[0], "counted", None).await;
        let lead = fleet.iter().find(|r| r.id == lead).unwrap();
        register(lead, "counted", &format!("{base}/counted")).await;
        let from = fetches.lock().unwrap().len();
        tokio::time::sleep(window).await;
        let fetched = fetches.lock().unwrap().len() - from;
        println!(
            "upstream fetches in {window:?} with {count} replica(s), 2 s key lifetime: {fetched}"
        );
    }
    spread(&base, &spread_fetches, window, &timing).await;
    drop_databases().await;
}
