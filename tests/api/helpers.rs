//! Spawning the real server on a random port against a fresh store, and gRPC clients for it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{SubsecRound, Utc};
use clap::Parser;
use keyrelay::{
    clock::ManualClock,
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient,
    },
    server::Application,
    server::config::ServeConfig,
    server::tls::ReloadHandle,
};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig},
};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    serve: ServeConfig,
}

/// A Postgres database created for one test and dropped when the test ends, pass or fail.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL").expect(
            "TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, which provides Postgres",
        );
        let name = format!("keyrelay_test_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach Postgres at TEST_DATABASE_URL: {err}"));
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            admin_url,
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside async context guarantees: use a private runtime on its own thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                conn.execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()
            })
        });
        let _ = dropped.join();
    }
}

/// Where a server keeps its state: survives `TestApp::stop` so the next server can restart on it.
pub struct Storage {
    pub backend: Backend,
    pub data_dir: Arc<TempDir>,
    pub database: Option<Arc<TestDatabase>>,
}

impl Storage {
    pub async fn new(backend: Backend) -> Self {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Arc::new(TestDatabase::create().await)),
        };
        Self {
            backend,
            data_dir: Arc::new(tempfile::tempdir().expect("temp data dir")),
            database,
        }
    }

    /// Overwrites `column` of `provider`'s row (tenant acme) with `value`, behind the
    /// server's back, as a disk fault or a manual edit would.
    pub async fn corrupt(&self, provider: &str, column: &str, value: &str) {
        let sql =
            format!("UPDATE providers SET {column} = $1 WHERE tenant = 'acme' AND provider = $2");
        let binary = column == "jwks_json";
        assert_eq!(
            self.execute(&sql, value, binary, provider).await,
            1,
            "one row corrupted"
        );
    }

    /// Runs `sql` on the store's database behind the server's back, with `$1` bound to
    /// `value` (as bytes when `binary`) and `$2` to `key`; returns the rows affected.
    pub async fn execute(&self, sql: &str, value: &str, binary: bool, key: &str) -> u64 {
        macro_rules! run {
            ($conn:expr) => {{
                let query = sqlx::query(AssertSqlSafe(sql.to_owned()));
                let query = if binary {
                    query.bind(value.as_bytes())
                } else {
                    query.bind(value)
                };
                let done = query.bind(key).execute(&mut $conn).await;
                done.expect("statement behind the server's back")
                    .rows_affected()
            }};
        }
        match &self.database {
            Some(database) => {
                let mut conn = PgConnection::connect(&database.url).await.expect("connect");
                run!(conn)
            }
            None => {
                let file = self.data_dir.path().join(keyrelay::store::SQLITE_FILE);
                let url = format!("sqlite://{}", file.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
                run!(conn)
            }
        }
    }

    fn share(&self) -> Self {
        Self {
            backend: self.backend,
            data_dir: Arc::clone(&self.data_dir),
            database: self.database.clone(),
        }
    }
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub clock: ManualClock,
    pub storage: Storage,
    /// Reloads the listener's TLS files, when the server has TLS.
    pub tls: Option<ReloadHandle>,
    /// How the helpers' clients connect: plaintext, or TLS with these settings.
    client_tls: Option<ClientTlsConfig>,
    extra_args: Vec<String>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

/// A server on `backend` with test defaults (loopback allowed, short fetch deadline).
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// A server on `backend` with extra `keyrelay serve` flags.
pub async fn spawn_app_with(backend: Backend, extra_args: &[&str]) -> TestApp {
    let clock = ManualClock::new(Utc::now().trunc_subsecs(0));
    let extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
    start(
        Storage::new(backend).await,
        clock,
        extra_args,
        "127.0.0.1:0",
    )
    .await
}

async fn start(
    storage: Storage,
    clock: ManualClock,
    extra_args: Vec<String>,
    listen: &str,
) -> TestApp {
    // Server logs in test output, filtered by RUST_LOG (silent by default).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let data_dir = storage
        .data_dir
        .path()
        .to_str()
        .expect("utf-8 temp dir")
        .to_owned();
    let mut args: Vec<String> = [
        "keyrelay",
        "--listen",
        listen,
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--admin-token",
        ADMIN_TOKEN,
        "--dev-allow-http-loopback",
        "--fetch-timeout",
        "1s",
        "--shutdown-grace",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(database) = &storage.database {
        args.extend(["--database-url".to_owned(), database.url.clone()]);
    }
    args.extend(extra_args.iter().cloned());
    let config = TestCli::try_parse_from(&args)
        .expect("test flags parse")
        .serve;
    assert_eq!(
        config.store.database_url.as_deref(),
        storage.database.as_ref().map(|db| db.url.as_str()),
        "DATABASE_URL in the environment would redirect this test's store; unset it"
    );
    let app = Application::build(config, Arc::new(clock.clone()))
        .await
        .expect("server builds");
    let addr = app.local_addr();
    let http_addr = app.http_addr();
    let tls = app.tls_reload_handle();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { app.run(shutdown).await.expect("server runs") }
    });
    TestApp {
        addr,
        http_addr,
        clock,
        storage,
        tls,
        client_tls: None,
        extra_args,
        shutdown,
        server,
    }
}

#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Bearer {
    pub fn for_token(token: &str) -> Self {
        Self(Some(token.to_owned()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
        Ok(request)
    }
}

pub type AdminClient = AdminServiceClient<InterceptedService<Channel, Bearer>>;
pub type KeysClient = KeyServiceClient<InterceptedService<Channel, Bearer>>;

impl TestApp {
    /// The helpers' clients connect over TLS with `tls` from now on.
    pub fn with_client_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.client_tls = Some(tls);
        self
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        keyrelay_verifier::endpoint(self.endpoint(), self.client_tls.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to keyrelay")
    }

    pub async fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient {
        self.admin_with_token(Some(ADMIN_TOKEN)).await
    }

    pub async fn admin_with_token(&self, token: Option<&str>) -> AdminClient {
        AdminServiceClient::with_interceptor(self.channel().await, Bearer(token.map(str::to_owned)))
    }

    /// A KeyService client sending `token` as a bearer token, if any.
    pub async fn keys_with_token(&self, token: Option<&str>) -> KeysClient {
        KeyServiceClient::with_interceptor(self.channel().await, Bearer(token.map(str::to_owned)))
    }

    /// Issues a verifier token for `tenant` and returns its bearer secret.
    pub async fn verifier_token(&self, tenant: &str) -> String {
        let request = pb::CreateTokenRequest {
            role: pb::TokenRole::Verifier.into(),
            tenant: tenant.into(),
            description: format!("test verifier of {tenant}"),
            ttl: None,
        };
        let created = self.admin().await.create_token(request).await;
        created.expect("create token").into_inner().secret
    }

    /// Makes reading `tenant`'s keys need a verifier token, or stop needing one.
    pub async fn require_verifier_token(&self, tenant: &str, required: bool) {
        let request = pb::SetTenantAccessRequest {
            tenant: tenant.into(),
            verifier_token_required: required,
        };
        let set = self.admin().await.set_tenant_access(request).await;
        set.expect("set tenant access");
    }

    /// A second server on the same store and clock, running beside this one.
    pub async fn spawn_peer(&self) -> TestApp {
        start(
            self.storage.share(),
            self.clock.clone(),
            self.extra_args.clone(),
            "127.0.0.1:0",
        )
        .await
    }

    /// Registers `tenant/provider` at `url` with no policy overrides.
    pub async fn register(&self, tenant: &str, provider: &str, url: &str) -> pb::Provider {
        self.register_with(tenant, provider, url, None).await
    }

    pub async fn register_with(
        &self,
        tenant: &str,
        provider: &str,
        url: &str,
        policy: Option<pb::ProviderPolicy>,
    ) -> pb::Provider {
        self.try_register_with(tenant, provider, url, policy)
            .await
            .expect("register")
    }

    pub async fn try_register_with(
        &self,
        tenant: &str,
        provider: &str,
        url: &str,
        policy: Option<pb::ProviderPolicy>,
    ) -> Result<pb::Provider, tonic::Status> {
        let request = pb::RegisterProviderRequest {
            tenant: tenant.into(),
            provider: provider.into(),
            jwks_url: url.into(),
            policy,
            ..Default::default()
        };
        let response = self.admin().await.register_provider(request).await?;
        Ok(response
            .into_inner()
            .provider
            .expect("provider in response"))
    }

    pub async fn get(&self, tenant: &str, provider: &str) -> pb::Provider {
        let request = pb::GetProviderRequest {
            tenant: tenant.into(),
            provider: provider.into(),
        };
        self.admin()
            .await
            .get_provider(request)
            .await
            .expect("get")
            .into_inner()
            .provider
            .expect("provider")
    }

    pub async fn refresh(&self, tenant: &str, provider: &str) -> pb::Provider {
        let request = pb::RefreshProviderRequest {
            tenant: tenant.into(),
            provider: provider.into(),
        };
        self.admin()
            .await
            .refresh_provider(request)
            .await
            .expect("refresh")
            .into_inner()
            .provider
            .expect("provider")
    }

    pub async fn resolve(
        &self,
        tenant: &str,
        provider: &str,
        kid: Option<&str>,
    ) -> Result<pb::KeySet, Status> {
        let request = pb::ResolveRequest {
            tenant: tenant.into(),
            provider: provider.into(),
            kid: kid.map(str::to_owned),
            if_newer_than_version: None,
        };
        let response = self.keys().await.resolve(request).await?.into_inner();
        match response.result {
            Some(pb::resolve_response::Result::KeySet(set)) => Ok(set),
            other => panic!("expected a key set, got {other:?}"),
        }
    }

    /// GETs a path of the HTTP listener: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.http_addr))
            .await
            .expect("HTTP listener answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("HTTP body"))
    }

    /// The value of one sample of `/metrics`, named with its labels exactly as exported
    /// (`keyrelay_shards_owned`, `keyrelay_providers{state="ready"}`); 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (status, text) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "/metrics answers");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a numeric sample"))
    }

    /// Moves the server's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> (Storage, ManualClock, Vec<String>) {
        self.shutdown.cancel();
        self.server.await.expect("server task");
        (self.storage, self.clock, self.extra_args)
    }

    /// Stops this server and starts a new one on the same store and clock.
    pub async fn restart(self) -> TestApp {
        let (storage, clock, extra_args) = self.stop().await;
        restart_from(storage, clock, extra_args).await
    }
}

/// Starts a server on what a stopped one left behind.
pub async fn restart_from(
    storage: Storage,
    clock: ManualClock,
    extra_args: Vec<String>,
) -> TestApp {
    start(storage.share(), clock, extra_args, "127.0.0.1:0").await
}

/// Starts a server on what a stopped one left behind, listening where it listened.
pub async fn restart_at(
    addr: SocketAddr,
    storage: Storage,
    clock: ManualClock,
    extra_args: Vec<String>,
) -> TestApp {
    start(storage.share(), clock, extra_args, &addr.to_string()).await
}

/// Status of a provider, present in every Provider keyrelay returns.
pub fn status(provider: &pb::Provider) -> &pb::ProviderStatus {
    provider.status.as_ref().expect("status")
}

/// Seconds between two timestamps.
pub fn seconds_between(from: &prost_types::Timestamp, to: &prost_types::Timestamp) -> f64 {
    (to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9
}

/// Kids of a key set, in order.
pub fn kids(set: &pb::KeySet) -> Vec<&str> {
    set.keys.iter().map(|k| k.kid.as_str()).collect()
}

/// A policy message with only these durations set.
pub fn policy(
    min_ttl: Option<u64>,
    max_ttl: Option<u64>,
    max_stale: Option<u64>,
) -> pb::ProviderPolicy {
    let seconds = |s: u64| prost_types::Duration {
        seconds: s as i64,
        nanos: 0,
    };
    pb::ProviderPolicy {
        min_ttl: min_ttl.map(seconds),
        max_ttl: max_ttl.map(seconds),
        max_stale: max_stale.map(seconds),
        ..Default::default()
    }
}

/// Polls `check` until it yields a value, for effects that have no event to wait on (a
/// background refresh committing). Gives up after 10 s.
pub async fn wait_until<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A selector for `WatchKeys`: a tenant, or one provider of it.
pub fn selector(tenant: &str, provider: &str) -> pb::WatchSelector {
    pb::WatchSelector {
        tenant: tenant.into(),
        provider: provider.into(),
    }
}

/// A version the client holds.
pub fn known(tenant: &str, provider: &str, version: u64) -> pb::KnownVersion {
    pb::KnownVersion {
        tenant: tenant.into(),
        provider: provider.into(),
        version,
    }
}

/// An open WatchKeys stream.
pub struct Watch(tonic::Streaming<pb::WatchKeysResponse>);

impl Watch {
    /// The next event; fails the test if none comes within 10 s.
    pub async fn next(&mut self) -> pb::watch_keys_response::Event {
        self.next_result()
            .await
            .expect("stream error")
            .expect("an event")
    }

    /// The next item, including the status the stream ends with.
    pub async fn next_result(&mut self) -> Result<Option<pb::watch_keys_response::Event>, Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), self.0.message())
            .await
            .expect("no WatchKeys event within 10 s")?;
        Ok(message.map(|m| m.event.expect("event set")))
    }

    /// The next event, which must be a key set.
    pub async fn next_key_set(&mut self) -> pb::KeySet {
        match self.next().await {
            pb::watch_keys_response::Event::KeySet(set) => set,
            other => panic!("expected a key set, got {other:?}"),
        }
    }

    /// The next event, which must be `synced`.
    pub async fn expect_synced(&mut self) {
        match self.next().await {
            pb::watch_keys_response::Event::Synced(_) => {}
            other => panic!("expected synced, got {other:?}"),
        }
    }
}

impl TestApp {
    pub async fn watch(
        &self,
        selectors: Vec<pb::WatchSelector>,
        known_versions: Vec<pb::KnownVersion>,
    ) -> Watch {
        self.try_watch(selectors, known_versions)
            .await
            .expect("WatchKeys starts")
    }

    pub async fn try_watch(
        &self,
        selectors: Vec<pb::WatchSelector>,
        known_versions: Vec<pb::KnownVersion>,
    ) -> Result<Watch, Status> {
        let request = pb::WatchKeysRequest {
            selectors,
            known_versions,
        };
        Ok(Watch(
            self.keys().await.watch_keys(request).await?.into_inner(),
        ))
    }
}
