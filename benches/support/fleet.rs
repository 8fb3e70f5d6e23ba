//! What the fleet benches share: `keyrelay serve` replicas on a Postgres database (a fresh one
//! per run, dropped at the end), their admin client, cluster status and fetch counters.

use std::{
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use keyrelay::proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{Server, TOKEN, free_port};

/// One replica: its process, id, gRPC endpoint and metrics address.
pub struct Replica {
    pub server: Server,
    pub id: String,
    pub endpoint: String,
    pub metrics: String,
}

/// Starts replica `id` on `database_url` with `extra` flags, and returns once its gRPC port
/// accepts connections.
pub async fn start(id: &str, database_url: &str, extra: &[&str]) -> Replica {
    let port = free_port();
    let http_port = free_port();
    let data_dir = std::env::temp_dir().join(format!("keyrelay-bench-{id}"));
    let child = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--replica-id", id, "--database-url", database_url])
        .args(["--admin-token", TOKEN, "--dev-allow-http-loopback"])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start keyrelay");
    let replica = Replica {
        server: Server(child),
        id: id.to_owned(),
        endpoint: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{http_port}/metrics"),
    };
    while replica.channel().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica
}

impl Replica {
    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
    }

    /// Waits until the replica reports SERVING (its feed has synchronised with the store).
    pub async fn wait_serving(&self) {
        loop {
            let channel = self.channel().await.unwrap();
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let answer = HealthClient::new(channel).check(request).await;
            if answer.is_ok_and(|a| a.into_inner().status() == ServingStatus::Serving) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An admin client with the bench token.
    pub async fn admin(
        &self,
    ) -> AdminServiceClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            impl tonic::service::Interceptor + Clone + use<>,
        >,
    > {
        let channel = self.channel().await.unwrap();
        AdminServiceClient::with_interceptor(channel, |mut request: Request<()>| {
            let bearer = format!("Bearer {TOKEN}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
            Ok(request)
        })
    }

    /// The fleet as this replica sees it, if it answers.
    pub async fn status(&self) -> Option<pb::GetClusterStatusResponse> {
        let mut admin = self.admin().await;
        let status = admin.get_cluster_status(pb::GetClusterStatusRequest {});
        Some(status.await.ok()?.into_inner())
    }

    /// The fetches this replica made: the sum of its `keyrelay_refreshes_total` series.
    pub async fn refreshes(&self) -> f64 {
        let text = reqwest::get(&self.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let samples = text
            .lines()
            .filter(|line| line.starts_with("keyrelay_refreshes_total{"));
        samples
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.server.0.id()
    }

    /// SIGTERM, then waits for the process to exit (it hands its shards over first).
    pub fn stop(mut self) {
        self.signal("-TERM");
        let _ = self.server.0.wait();
    }

    /// Sends `signal` (`-KILL`, `-TERM`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
    }
}

/// The databases this process made, dropped at the end (another run's stay).
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A new database on the server at TEST_DATABASE_URL; its URL.
pub async fn fresh_database() -> String {
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .expect("set TEST_DATABASE_URL to a Postgres superuser URL");
    let name = format!("keyrelay_bench_{:08x}", rand::random::<u32>());
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .expect("reach Postgres");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    CREATED.lock().unwrap().push(name.clone());
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// Drops every database `fresh_database` made in this process.
pub async fn drop_databases() {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .expect("reach Postgres");
    let names = std::mem::take(&mut *CREATED.lock().unwrap());
    for name in names {
        conn.execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .await
            .unwrap();
    }
}
