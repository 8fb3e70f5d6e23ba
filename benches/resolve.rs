//! Resolve throughput and latency: keyrelay against the limit of its own stack (run with
//! `cargo bench --bench resolve`).
//!
//! The baseline is a minimal tonic server, a separate process (this binary, re-executed),
//! that answers every Resolve with the very bytes keyrelay answers, doing no work. Both are
//! driven by the same client from this process: closed loop (CONCURRENCY calls in flight over
//! CONNECTIONS HTTP/2 connections) for saturation, then open loop at half of each server's
//! saturated rate, latency measured from each call's scheduled start. Both processes share
//! the machine's cores: the CPU each process used is reported next to the numbers.

#[allow(dead_code)]
mod support;

use support::{Server, TOKEN, cpu_time, env_or, free_port};

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use keyrelay::{
    api::encoded::EncodedEvent,
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient,
    },
};
use prost::Message;
use tonic::{Request, Response, Status, transport::Channel};

const BASELINE_ROLE: &str = "KEYRELAY_BENCH_BASELINE";

/// About 2 KB: four 2048-bit RSA public keys.
fn jwks() -> String {
    let keys: Vec<_> = (0..4u8)
        .map(|i| {
            serde_json::json!({"kty": "RSA", "kid": format!("key-{i}"), "alg": "RS256", "use": "sig",
                "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0x80 | (i + 1); 256])})
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Answers every Resolve with the same bytes, shared, as keyrelay does with a cached answer.
struct Baseline(EncodedEvent);

#[tonic::async_trait]
impl keyrelay::api::grpc::key_service_server::KeyService for Baseline {
    async fn resolve(
        &self,
        _request: Request<pb::ResolveRequest>,
    ) -> Result<Response<EncodedEvent>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    type WatchKeysStream = futures::stream::Empty<Result<EncodedEvent, Status>>;

    async fn watch_keys(
        &self,
        _request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// The baseline role: serve the response in the file named by the environment on `port`.
async fn baseline_server(path: String, port: u16) {
    let bytes = std::fs::read(path).expect("response file");
    pb::ResolveResponse::decode(bytes.as_slice()).expect("a ResolveResponse");
    let response = EncodedEvent::from_bytes(bytes.into());
    tonic::transport::Server::builder()
        .add_service(
            keyrelay::api::grpc::key_service_server::KeyServiceServer::new(Baseline(response)),
        )
        .serve(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("baseline serves");
}

async fn channels(endpoint: &str, count: u64) -> Vec<Channel> {
    let mut all = Vec::new();
    for _ in 0..count {
        loop {
            match Channel::from_shared(endpoint.to_owned())
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => break all.push(channel),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    all
}

fn request() -> pb::ResolveRequest {
    pb::ResolveRequest {
        tenant: "bench".into(),
        provider: "idp".into(),
        kid: Some("key-2".into()),
        if_newer_than_version: None,
    }
}

/// Closed loop: `concurrency` callers back to back for `duration`. Returns calls per second.
async fn saturate(
    channels: &[Channel],
    concurrency: u64,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + duration;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for caller in 0..concurrency {
        let mut client = KeyServiceClient::new(channels[caller as usize % channels.len()].clone());
        let latencies = Arc::clone(&latencies);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                client.resolve(request()).await.expect("resolve");
                mine.push(started.elapsed());
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (latencies.len() as f64 / duration.as_secs_f64(), latencies)
}

/// Open loop at `rate` calls per second: every millisecond the calls that have fallen due are
/// sent, each latency counted from the moment it was sent.
async fn paced(channels: &[Channel], rate: f64, duration: Duration) -> Vec<Duration> {
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        for call in sent..due {
            let mut client =
                KeyServiceClient::new(channels[call as usize % channels.len()].clone());
            let latencies = Arc::clone(&latencies);
            tasks.spawn(async move {
                let started = Instant::now();
                client.resolve(request()).await.expect("resolve");
                latencies.lock().unwrap().push(started.elapsed());
            });
        }
        sent = due;
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *latencies.lock().unwrap())
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {:.0?}  p99 {:.0?}  p999 {:.0?}",
        at(0.5),
        at(0.99),
        at(0.999)
    )
}

struct Measured {
    rate: f64,
    saturated: String,
    half: String,
    server_cpu: Duration,
    client_cpu: Duration,
}

async fn measure(endpoint: &str, pid: u32) -> Measured {
    let connections = env_or("CONNECTIONS", 4);
    let concurrency = env_or("CONCURRENCY", 64);
    let seconds = Duration::from_secs(env_or("DURATION_SECS", 10));
    let channels = channels(endpoint, connections).await;
    saturate(&channels, concurrency, Duration::from_secs(2)).await;
    let (server_before, client_before) = (cpu_time(&pid.to_string()), cpu_time("self"));
    let (rate, latencies) = saturate(&channels, concurrency, seconds).await;
    let (server_cpu, client_cpu) = (
        cpu_time(&pid.to_string()) - server_before,
        cpu_time("self") - client_before,
    );
    let half = paced(&channels, rate / 2.0, seconds).await;
    Measured {
        rate,
        saturated: summary(latencies),
        half: summary(half),
        server_cpu,
        client_cpu,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(path) = std::env::var(BASELINE_ROLE) {
        let port = env_or("KEYRELAY_BENCH_PORT", 0) as u16;
        return runtime.block_on(baseline_server(path, port));
    }
    runtime.block_on(run());
}

async fn run() {
    let document = jwks();
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_url = format!("http://{}/jwks", idp.local_addr().unwrap());
    let served = document.clone();
    tokio::spawn(async move {
        axum::serve(
            idp,
            Router::new().route("/jwks", get(move || async move { served.clone() })),
        )
        .await
    });

    let port = free_port();
    let data_dir = tempfile::tempdir().unwrap();
    let keyrelay = support::keyrelay(port, data_dir.path(), &[]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = channels(&endpoint, 1).await.remove(0);
    let mut admin =
        AdminServiceClient::with_interceptor(channel.clone(), |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            Ok(request)
        });
    let register = pb::RegisterProviderRequest {
        tenant: "bench".into(),
        provider: "idp".into(),
        jwks_url: idp_url,
        policy: None,
        ..Default::default()
    };
    admin.register_provider(register).await.expect("register");
    let answer = KeyServiceClient::new(channel)
        .resolve(request())
        .await
        .unwrap()
        .into_inner();
    let response_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(response_file.path(), answer.encode_to_vec()).unwrap();

    let baseline_port = free_port();
    let baseline = Server(
        Command::new(std::env::current_exe().unwrap())
            .env(BASELINE_ROLE, response_file.path())
            .env("KEYRELAY_BENCH_PORT", baseline_port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the baseline"),
    );
    println!(
        "Resolve, {} byte response, key set of {} bytes:",
        answer.encoded_len(),
        document.len()
    );
    let targets = [
        (
            "baseline tonic server",
            format!("http://127.0.0.1:{baseline_port}"),
            baseline.0.id(),
        ),
        ("keyrelay", endpoint.clone(), keyrelay.0.id()),
    ];
    let only = std::env::var("ONLY").ok();
    for (name, endpoint, pid) in targets {
        if only.as_deref().is_some_and(|only| !name.starts_with(only)) {
            continue;
        }
        println!("  measuring {name} (pid {pid})");
        let m = measure(&endpoint, pid).await;
        println!(
            "  {name}: {:.0} calls/s saturated ({}); at half load ({:.0}/s): {}",
            m.rate,
            m.saturated,
            m.rate / 2.0,
            m.half
        );
        println!(
            "    CPU while saturated: server {:.2?}, load generator {:.2?}",
            m.server_cpu, m.client_cpu
        );
    }
}
