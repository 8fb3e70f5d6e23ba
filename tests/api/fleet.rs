//! Fleet mode with real processes: `keyrelay serve` replicas on one Postgres database (each
//! test its own), a mock IdP in this process, and a TCP proxy in front of Postgres to cut
//! the database away. The providers hash to 64 shards, balanced over the replicas; each
//! provider is fetched by the replica holding its shard's lease. Lease timings are short
//! (TTL 3 s, renewal 1 s) so failovers fit in a test; every wait is bounded and tied to an
//! event (a log line, a request at the mock, an answer from a replica).

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener as StdListener},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keyrelay::{
    clock::SystemClock,
    cluster::ShardMap,
    domain::ProviderKey,
    proto::v1::{self as pb, watch_keys_response::Event},
};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Channel;

use crate::{
    helpers::{ADMIN_TOKEN, AdminClient, Bearer, TestDatabase, kids, known, selector},
    mock_idp::{Document, MockIdp, Mode, jwks},
};

const BINARY: &str = env!("CARGO_BIN_EXE_keyrelay");
const LEASE_TTL: Duration = Duration::from_secs(3);
/// The shard count of a new fleet.
const SHARDS: u32 = 64;
/// Every replica's timing flags, unless a test gives its own.
const TIMING: [(&str, &str); 4] = [
    ("--fetch-timeout", "1s"),
    ("--lease-ttl", "3s"),
    ("--lease-renew", "1s"),
    ("--shutdown-grace", "2s"),
];

/// One `keyrelay serve` process.
pub(crate) struct Replica {
    child: Child,
    id: String,
    endpoint: String,
    http: String,
    logs: Arc<Mutex<Vec<String>>>,
    lines: watch::Receiver<usize>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Replica {
    pub(crate) async fn start(id: &str, database_url: &str, extra: &[&str]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let data_dir = std::env::temp_dir().join(format!("keyrelay-fleet-{id}"));
        let mut child = Command::new(BINARY)
            .args([
                "serve",
                "--listen",
                &listen,
                "--replica-id",
                id,
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .args(["--database-url", database_url, "--dev-allow-http-loopback"])
            .args(["--http-listen", &http])
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(
                TIMING
                    .iter()
                    .filter(|(flag, _)| !extra.contains(flag))
                    .flat_map(|(flag, value)| [flag, value]),
            )
            .args(extra)
            .env("RUST_LOG", "keyrelay=debug")
            .env_remove("KEYRELAY_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keyrelay serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (count, lines) = watch::channel(0);
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
                count.send_modify(|n| *n += 1);
            }
        });
        let replica = Self {
            child,
            id: id.to_owned(),
            endpoint: format!("http://{listen}"),
            http: format!("http://{http}"),
            logs,
            lines,
        };
        replica.wait_for_log("keyrelay serving").await;
        replica
    }

    /// The lines logged so far that contain `needle`.
    pub(crate) fn logged(&self, needle: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until the replica has logged a line containing `needle`.
    pub(crate) async fn wait_for_log(&self, needle: &str) {
        self.wait_for_logs(needle, 1).await;
    }

    /// Waits until the replica has logged `count` lines containing `needle`.
    pub(crate) async fn wait_for_logs(&self, needle: &str, count: usize) {
        let mut lines = self.lines.clone();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if self.logged(needle).len() >= count {
                    return;
                }
                if lines.changed().await.is_err() {
                    panic!("replica {} exited before logging {needle:?}", self.id);
                }
            }
        })
        .await;
        if found.is_err() {
            let logs = self.logs.lock().unwrap().join("\n");
            panic!(
                "replica {} did not log {needle:?} within 15 s; its log:\n{logs}",
                self.id
            );
        }
    }

    /// The value of one sample of the replica's `/metrics`; 0 when absent.
    async fn metric(&self, sample: &str) -> f64 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a numeric sample"))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to replica")
    }

    async fn admin(&self) -> AdminClient {
        self.admin_with(ADMIN_TOKEN).await
    }

    pub(crate) async fn admin_with(&self, token: &str) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer::for_token(token),
        )
    }

    async fn keys(&self) -> pb::key_service_client::KeyServiceClient<Channel> {
        pb::key_service_client::KeyServiceClient::new(self.channel().await)
    }

    async fn status(&self) -> pb::GetClusterStatusResponse {
        let mut admin = self.admin().await;
        admin
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .expect("cluster status")
            .into_inner()
    }

    async fn resolve(
        &self,
        provider: &str,
        kid: Option<&str>,
    ) -> Result<pb::KeySet, tonic::Status> {
        let request = pb::ResolveRequest {
            tenant: "acme".into(),
            provider: provider.into(),
            kid: kid.map(str::to_owned),
            if_newer_than_version: None,
        };
        match self
            .keys()
            .await
            .resolve(request)
            .await?
            .into_inner()
            .result
        {
            Some(pb::resolve_response::Result::KeySet(set)) => Ok(set),
            other => panic!("expected a key set, got {other:?}"),
        }
    }
}

/// Polls `check` every 50 ms for at most `limit`: the effect happens in another process and
/// has no event this test can wait on.
async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shard of provider `acme/provider`.
fn shard_of(provider: &str) -> u32 {
    let key = ProviderKey::parse("acme", provider).unwrap();
    ShardMap::new(SHARDS).shard_of(&key)
}

/// The id of the replica holding the active lease of `provider`'s shard, as `replica` sees it.
async fn owner_seen_by(replica: &Replica, provider: &str) -> Option<String> {
    let status = replica.status().await;
    let shard = shard_of(provider);
    let lease = status
        .shards
        .into_iter()
        .find(|lease| lease.shard == shard)?;
    lease.active.then_some(lease.holder)
}

async fn start_fleet(database_url: &str, names: &[&str], extra: &[&str]) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for name in names {
        replicas.push(Replica::start(name, database_url, extra).await);
    }
    replicas
}

/// The index of the replica owning `provider`'s shard, once every replica agrees on it.
async fn agreed_owner(replicas: &[Replica], provider: &str) -> usize {
    within(LEASE_TTL * 3, "one owner all replicas agree on", || async {
        let mut seen = Vec::new();
        for replica in replicas {
            seen.push(owner_seen_by(replica, provider).await?);
        }
        let first = seen[0].clone();
        seen.iter().all(|id| *id == first).then_some(())?;
        replicas.iter().position(|r| r.id == first)
    })
    .await
}

/// Waits until `replicas` hold every shard between them, each its fair share (64 / n rounded
/// up, or the rest), as `observer` sees it; returns the shards each holds.
async fn balanced(observer: &Replica, replicas: &[&Replica], limit: Duration) -> Vec<Vec<u32>> {
    let share = SHARDS.div_ceil(replicas.len() as u32) as usize;
    let least = SHARDS as usize - share * (replicas.len() - 1);
    within(limit, "shards balanced over the replicas", || async {
        let status = observer.status().await;
        let held: Vec<Vec<u32>> = replicas
            .iter()
            .map(|replica| {
                let active = status.shards.iter().filter(|lease| lease.active);
                let mine = active.filter(|lease| lease.holder == replica.id);
                mine.map(|lease| lease.shard).collect()
            })
            .collect();
        let total: usize = held.iter().map(Vec::len).sum();
        let fair = held.iter().all(|h| (least..=share).contains(&h.len()));
        (status.shard_count == SHARDS && total == SHARDS as usize && fair).then_some(held)
    })
    .await
}

/// A provider name, `prefix-N`, whose shard is one of `shards`.
fn provider_in(prefix: &str, shards: &[u32]) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| shards.contains(&shard_of(name)))
        .unwrap()
}

async fn register(replica: &Replica, provider: &str, url: &str) -> pb::Provider {
    let request = pb::RegisterProviderRequest {
        tenant: "acme".into(),
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
        .expect("register")
        .into_inner()
        .provider
        .unwrap()
}

fn mock() -> impl std::future::Future<Output = MockIdp> {
    MockIdp::start(SystemClock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_balanced_each_provider_is_fetched_by_its_owner_and_changes_reach_all() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    let replicas = start_fleet(&database.url, &["r1", "r2", "r3"], &[]).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let held = balanced(&replicas[0], &all, LEASE_TTL * 4).await;
    let status = replicas[1].status().await;
    assert_eq!(status.replicas.len(), 3, "{status:?}");
    for (replica, shards) in replicas.iter().zip(&held) {
        let reported = status.replicas.iter().find(|r| r.id == replica.id).unwrap();
        assert_eq!(reported.shards_owned as usize, shards.len(), "{status:?}");
        let owned = replica.metric("keyrelay_shards_owned").await;
        assert_eq!(owned as usize, shards.len(), "{}", replica.id);
        assert_eq!(replica.metric("keyrelay_shards").await, f64::from(SHARDS));
    }

    // One provider in each replica's shards, registered on the next replica: the owner
    // fetches it, once, and nobody else does.
    for (i, shards) in held.iter().enumerate() {
        let provider = provider_in(&format!("owned-by-{i}"), shards);
        let registered = register(&replicas[(i + 1) % 3], &provider, &idp.jwks_url()).await;
        assert_eq!(registered.status.unwrap().version, 1, "{provider}");
    }
    assert_eq!(idp.request_count(), 3);
    for replica in &replicas {
        let fetched = replica
            .metric(r#"keyrelay_refreshes_total{outcome="modified"}"#)
            .await;
        assert_eq!(fetched, 1.0, "{} fetched its own provider only", replica.id);
    }

    let leader = agreed_owner(&replicas, "okta").await;
    let follower = (leader + 1) % 3;
    let registered = register(&replicas[follower], "okta", &idp.jwks_url()).await;
    assert_eq!(
        registered.status.unwrap().version,
        1,
        "a registration on another replica is fetched by the shard's owner"
    );
    for replica in &replicas {
        let set = within(Duration::from_secs(5), "registration visible", || async {
            replica.resolve("okta", None).await.ok()
        })
        .await;
        assert_eq!(set.version, 1);
    }

    let mut watches = Vec::new();
    for replica in &replicas {
        let request = pb::WatchKeysRequest {
            selectors: vec![selector("acme", "okta")],
            known_versions: vec![known("acme", "okta", 1)],
        };
        let mut stream = replica
            .keys()
            .await
            .watch_keys(request)
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(
            stream.message().await.unwrap().unwrap().event,
            Some(Event::Synced(_))
        ));
        watches.push(stream);
    }
    idp.serve_kids(&["key-1", "rotated"], None);
    let request = pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    let refreshed = replicas[(leader + 2) % 3]
        .admin()
        .await
        .refresh_provider(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refreshed.provider.unwrap().status.unwrap().version, 2);
    for stream in &mut watches {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event.event {
            Some(Event::KeySet(set)) => {
                assert_eq!((set.version, kids(&set)), (2, vec!["key-1", "rotated"]))
            }
            other => panic!("expected the rotation, got {other:?}"),
        }
    }
}

async fn open_watch(replica: &Replica, version: u64) -> tonic::Streaming<pb::WatchKeysResponse> {
    let request = pb::WatchKeysRequest {
        selectors: vec![selector("acme", "okta")],
        known_versions: vec![known("acme", "okta", version)],
    };
    let mut stream = replica
        .keys()
        .await
        .watch_keys(request)
        .await
        .expect("watch")
        .into_inner();
    assert!(matches!(
        stream.message().await.unwrap().unwrap().event,
        Some(Event::Synced(_))
    ));
    stream
}

async fn next_set(stream: &mut tonic::Streaming<pb::WatchKeysResponse>) -> pb::KeySet {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    match message
        .expect("an event within 5 s")
        .unwrap()
        .unwrap()
        .event
    {
        Some(Event::KeySet(set)) => set,
        other => panic!("expected a key set, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_reaches_every_replica_and_the_owner_keeps_it_out() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    idp.serve_kids(&["key-1", "key-2"], None);
    let replicas = start_fleet(&database.url, &["r1", "r2", "r3"], &[]).await;
    let leader = agreed_owner(&replicas, "okta").await;
    let follower = (leader + 1) % 3;
    register(&replicas[follower], "okta", &idp.jwks_url()).await;
    for replica in &replicas {
        within(Duration::from_secs(5), "registration visible", || async {
            replica.resolve("okta", None).await.ok()
        })
        .await;
    }
    let mut watches = Vec::new();
    for replica in &replicas {
        watches.push(open_watch(replica, 1).await);
    }

    let request = pb::RevokeKeyRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: "key-2".into(),
        reason: "leaked".into(),
    };
    let mut admin = replicas[follower].admin().await;
    admin.revoke_key(request).await.expect("revoke");
    for stream in &mut watches {
        let set = next_set(stream).await;
        assert_eq!((set.version, kids(&set)), (2, vec!["key-1"]));
        assert_eq!(set.revoked_kids, ["key-2"]);
    }

    let fetches = idp.request_count();
    let request = pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    let refreshed = replicas[(leader + 2) % 3]
        .admin()
        .await
        .refresh_provider(request)
        .await
        .expect("refresh")
        .into_inner();
    assert!(idp.request_count() > fetches, "the owner fetched again");
    assert_eq!(refreshed.provider.unwrap().status.unwrap().version, 2);
    for replica in &replicas {
        let refused = replica.resolve("okta", Some("key-2")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        assert_eq!(
            kids(&replica.resolve("okta", None).await.unwrap()),
            ["key-1"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_fetches_once_per_interval_and_an_unknown_kid_on_a_follower_fetches_once() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    let timing = [
        "--min-ttl",
        "1s",
        "--default-ttl",
        "2s",
        "--refresh-early",
        "1s",
    ];
    let replicas = start_fleet(&database.url, &["f1", "f2", "f3"], &timing).await;
    let owner = agreed_owner(&replicas, "okta").await;
    register(&replicas[(owner + 1) % 3], "okta", &idp.jwks_url()).await;

    // Lifetime 2 s, refreshed 1 s before expiry: one fetch a second for the whole fleet.
    let before = idp.request_count();
    idp.wait_for_requests(before + 6).await;
    let requests = idp.request_times();
    let gaps: Vec<Duration> = requests[before..].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap > Duration::from_millis(500)),
        "fetches too close together: {gaps:?}"
    );

    // A second IdP whose provider keeps its keys for an hour: no scheduled fetch interferes.
    let kid_idp = mock().await;
    let request = pb::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: "stable".into(),
        jwks_url: kid_idp.jwks_url(),
        policy: Some(pb::ProviderPolicy {
            default_ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    replicas[owner]
        .admin()
        .await
        .register_provider(request)
        .await
        .unwrap();
    let follower = &replicas[(agreed_owner(&replicas, "stable").await + 1) % 3];
    within(
        Duration::from_secs(5),
        "the follower has the provider",
        || async { follower.resolve("stable", None).await.ok() },
    )
    .await;
    let before = kid_idp.request_count();
    kid_idp.serve_kids(&["key-1", "new-kid"], None);
    let set = follower
        .resolve("stable", Some("new-kid"))
        .await
        .expect("new kid found through the shard's owner");
    assert!(set.keys.iter().any(|k| k.kid == "new-kid"));
    assert_eq!(
        kid_idp.request_count(),
        before + 1,
        "exactly one fetch for the follower's unknown kid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_shards_are_taken_over_within_the_lease_ttl() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    let timing = [
        "--min-ttl",
        "1s",
        "--default-ttl",
        "2s",
        "--refresh-early",
        "1s",
    ];
    let mut replicas = start_fleet(&database.url, &["k1", "k2", "k3"], &timing).await;
    balanced(
        &replicas[0],
        &replicas.iter().collect::<Vec<_>>(),
        LEASE_TTL * 4,
    )
    .await;
    let owner = agreed_owner(&replicas, "okta").await;
    register(&replicas[owner], "okta", &idp.jwks_url()).await;

    let killed = replicas.remove(owner);
    killed.signal("-KILL");
    let killed_at = Instant::now();
    // Its leases expire at most one TTL after it was killed; the survivors take them at once.
    let survivors: Vec<&Replica> = replicas.iter().collect();
    balanced(&replicas[0], &survivors, LEASE_TTL + Duration::from_secs(1)).await;
    eprintln!("shards taken over {:?} after the kill", killed_at.elapsed());
    let successor = agreed_owner(&replicas, "okta").await;
    assert_ne!(replicas[successor].id, killed.id);
    let seen = idp.request_count();
    idp.wait_for_requests(seen + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_gets_its_share_and_a_stopped_one_hands_its_shards_over_at_once() {
    let database = TestDatabase::create().await;
    // Leases long enough that no take-over below can come from an expiry.
    let long_leases = ["--lease-ttl", "30s", "--lease-renew", "1s"];
    let mut replicas = start_fleet(&database.url, &["j1", "j2"], &long_leases).await;
    balanced(
        &replicas[0],
        &replicas.iter().collect::<Vec<_>>(),
        LEASE_TTL * 4,
    )
    .await;

    replicas.push(Replica::start("j3", &database.url, &long_leases).await);
    balanced(
        &replicas[0],
        &replicas.iter().collect::<Vec<_>>(),
        LEASE_TTL * 2,
    )
    .await;
    for replica in &replicas[..2] {
        replica.wait_for_log("handed shard leases over").await;
    }

    let stopped = replicas.remove(0);
    stopped.signal("-TERM");
    stopped
        .wait_for_log("released the shard leases and left")
        .await;
    let released_at = Instant::now();
    // Its leases were renewed at most a second before it stopped and would expire 29 s later
    // at the earliest: taken within 10 s, they were handed over, not left to expire.
    let survivors: Vec<&Replica> = replicas.iter().collect();
    balanced(&replicas[0], &survivors, Duration::from_secs(10)).await;
    eprintln!("shards taken {:?} after the release", released_at.elapsed());
    let status = replicas[0].status().await;
    assert!(
        status.replicas.iter().all(|r| r.id != stopped.id),
        "the stopped replica removed its heartbeat: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_asked_while_its_shard_changes_hands_is_served_by_the_new_owner() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    // Shard 63 is the highest, so it is among what the first replica hands to a second.
    let (p, q) = (provider_in("p", &[63]), provider_in("q", &[63]));
    for path in ["/p", "/q"] {
        idp.set_route(
            path,
            Some(Document {
                body: jwks(&["k1"]).to_string(),
                ..Document::default()
            }),
        );
    }
    let slow_fetches = ["--fetch-timeout", "10s"];
    let first = Replica::start("h1", &database.url, &slow_fetches).await;
    balanced(&first, &[&first], LEASE_TTL * 2).await;
    register(&first, &p, &idp.url("/p")).await;
    register(&first, &q, &idp.url("/q")).await;

    // A refresh of q the IdP holds keeps shard 63 busy: its hand-over waits for the flight.
    idp.set_mode(Mode::Gated);
    let seen = idp.request_count();
    let mut admin = first.admin().await;
    let request = refresh_request(&q);
    let held = tokio::spawn(async move { admin.refresh_provider(request).await });
    idp.wait_for_requests(seen + 1).await;
    let second = Replica::start("h2", &database.url, &slow_fetches).await;
    first.wait_for_log("handed shard leases over").await;

    // Neither replica owns shard 63 now: the first hands it over, the second does not hold it.
    let mut admin = second.admin().await;
    let request = refresh_request(&p);
    let asked = tokio::spawn(async move { admin.refresh_provider(request).await });
    second
        .wait_for_log("asking the owner of the shard for a refresh")
        .await;
    idp.set_mode(Mode::Normal);
    idp.release(1);
    held.await.unwrap().expect("the held refresh completes");
    asked
        .await
        .unwrap()
        .expect("the refresh asked during the hand-over is served");

    assert_eq!(owner_seen_by(&first, &p).await.as_deref(), Some("h2"));
    let fetches_of_p = idp.requests().iter().filter(|r| r.path == "/p").count();
    assert_eq!(
        fetches_of_p, 2,
        "the registration's fetch and one for the request, however often it was resent"
    );
}

fn refresh_request(provider: &str) -> pb::RefreshProviderRequest {
    pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: provider.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_stands_down_and_its_late_write_is_fenced() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    let replicas = start_fleet(&database.url, &["p1", "p2", "p3"], &[]).await;
    let paused = agreed_owner(&replicas, "okta").await;
    register(&replicas[paused], "okta", &idp.jwks_url()).await;

    // The owner's next fetch hangs at the IdP; the owner is frozen while it hangs.
    idp.set_mode(Mode::Gated);
    let seen = idp.request_count();
    let request = pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    let mut admin = replicas[paused].admin().await;
    let refresh = tokio::spawn(async move { admin.refresh_provider(request).await });
    idp.wait_for_requests(seen + 1).await;
    replicas[paused].signal("-STOP");
    idp.set_mode(Mode::Normal);

    let others: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != paused)
        .map(|(_, r)| r)
        .collect();
    let successor = within(LEASE_TTL * 3, "a successor owns the shard", || async {
        let holder = owner_seen_by(others[0], "okta").await?;
        (holder != replicas[paused].id).then_some(holder)
    })
    .await;
    let new_owner = others.iter().find(|r| r.id == successor).unwrap();
    let request = pb::RefreshProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
    };
    new_owner
        .admin()
        .await
        .refresh_provider(request)
        .await
        .expect("the successor refreshes");

    replicas[paused].signal("-CONT");
    replicas[paused]
        .wait_for_log("refresh result not written")
        .await;
    replicas[paused].wait_for_log("standing down").await;
    drop(refresh);
    let status = new_owner
        .admin()
        .await
        .get_provider(pb::GetProviderRequest {
            tenant: "acme".into(),
            provider: "okta".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        status.last_error, "",
        "the deposed owner's timeout was not recorded"
    );
}

/// A TCP proxy in front of Postgres that can cut every connection and refuse new ones, as a
/// database restart looks to the replicas.
struct PgProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl PgProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = watch::channel(0u64);
        let accepting = Arc::clone(&up);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_database_outage_and_the_feed_resynchronises_after_it() {
    let database = TestDatabase::create().await;
    let idp = mock().await;
    let mut url = url::Url::parse(&database.url).unwrap();
    let target: SocketAddr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
        .parse()
        .unwrap();
    let proxy = PgProxy::start(target).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let replicas = start_fleet(url.as_str(), &["d1", "d2"], &[]).await;
    let leader = agreed_owner(&replicas, "okta").await;
    register(&replicas[leader], "okta", &idp.jwks_url()).await;
    register(&replicas[leader], "gone", &idp.jwks_url()).await;
    for replica in &replicas {
        within(Duration::from_secs(5), "both providers visible", || async {
            replica.resolve("gone", None).await.ok()
        })
        .await;
    }

    proxy.down();
    for replica in &replicas {
        assert_eq!(
            replica
                .resolve("okta", None)
                .await
                .expect("served from memory")
                .version,
            1
        );
    }
    // Changes another party makes while the replicas cannot hear them.
    let mut direct = PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("DELETE FROM providers WHERE provider = 'gone'")
        .execute(&mut direct)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE providers SET version = 7, jwks_json = convert_to('{\"keys\":[]}', 'UTF8'),
         change_seq = nextval('provider_change_seq') WHERE provider = 'okta'",
    )
    .execute(&mut direct)
    .await
    .unwrap();
    // An access token issued meanwhile: replicas learn of it only by resynchronising.
    let (token_id, secret) = ("00000000000000ab", "issued-during-the-outage");
    sqlx::query(
        "INSERT INTO access_tokens (id, secret_sha256, role, tenant, description, created_at, created_by)
         VALUES ($1, $2, 'admin', NULL, 'outage', now(), 'test')",
    )
    .bind(token_id)
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .execute(&mut direct)
    .await
    .unwrap();
    let bearer = format!("krt_{token_id}_{secret}");
    let listing = || pb::ListProvidersRequest::default();
    let refused = replicas[0]
        .admin_with(&bearer)
        .await
        .list_providers(listing())
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);

    proxy.up();
    for replica in &replicas {
        eprintln!(
            "LOGS {}:\n{}",
            replica.id,
            replica.logs.lock().unwrap().join("\n")
        );
    }
    for replica in &replicas {
        within(Duration::from_secs(15), "resynchronised", || async {
            let okta = replica.resolve("okta", None).await.ok()?;
            let gone = replica.resolve("gone", None).await;
            (okta.version == 7 && gone.is_err_and(|s| s.code() == tonic::Code::NotFound))
                .then_some(())
        })
        .await;
        within(Duration::from_secs(15), "access state reloaded", || async {
            let mut admin = replica.admin_with(&bearer).await;
            admin.list_providers(listing()).await.ok()
        })
        .await;
        eprintln!(
            "LOGS {}:\n{}",
            replica.id,
            replica.logs.lock().unwrap().join("\n")
        );
    }
}
