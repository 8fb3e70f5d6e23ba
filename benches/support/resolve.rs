//! Resolve throughput and latency against the limit of keyrelay's own stack.
//!
//! The baseline is a minimal tonic server, a separate process (the bench binary, re-executed),
//! that answers every Resolve with the very bytes keyrelay answers, doing no work. Both are
//! driven by the same client from this process, in PAIRS alternating pairs (the first server
//! of a pair goes second in the next): closed loop (CONCURRENCY calls in flight over
//! CONNECTIONS HTTP/2 connections, DURATION_SECS each) for saturation, then open loop for both
//! at half of the lower of the two saturated rates, latency measured from each call's
//! scheduled start. Each pair prints keyrelay's throughput and p99 over the baseline's, and the
//! end their medians. Both processes share the machine's cores: the CPU each process used is
//! reported next to the numbers.

use super::{BaselineRole, TOKEN, cpu_time, env_or, free_port};

use std::{
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

/// This bench's baseline server.
pub const BASELINE: BaselineRole = BaselineRole {
    env: "KEYRELAY_BENCH_BASELINE",
    serve: |path, port| Box::pin(baseline_server(path, port)),
};

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
        .max_concurrent_streams(1024)
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

/// An open-loop run: the latencies of the answered calls, and the calls that failed.
#[derive(Default)]
struct Paced {
    latencies: Vec<Duration>,
    failed: u64,
    first_failure: Option<Status>,
}

/// Open loop at `rate` calls per second: every millisecond the calls that have fallen due are
/// sent, each latency counted from the moment it was sent. A failed call is counted, not
/// timed: a run with failures has no p99 to compare.
async fn paced(channels: &[Channel], rate: f64, duration: Duration) -> Paced {
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = Instant::now();
    let run = Arc::new(Mutex::new(Paced {
        latencies: Vec::with_capacity(total as usize),
        ..Paced::default()
    }));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        for call in sent..due {
            let mut client =
                KeyServiceClient::new(channels[call as usize % channels.len()].clone());
            let run = Arc::clone(&run);
            tasks.spawn(async move {
                let started = Instant::now();
                let answer = client.resolve(request()).await;
                let mut run = run.lock().unwrap();
                match answer {
                    Ok(_) => run.latencies.push(started.elapsed()),
                    Err(status) => {
                        run.failed += 1;
                        run.first_failure.get_or_insert(status);
                    }
                }
            });
        }
        sent = due;
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *run.lock().unwrap())
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

/// One server's saturated run.
struct Saturated {
    rate: f64,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    client_cpu: Duration,
}

/// A server under test: its name, its connections and its process.
struct Target {
    name: &'static str,
    channels: Vec<Channel>,
    pid: u32,
}

async fn saturated(target: &Target) -> Saturated {
    let concurrency = env_or("CONCURRENCY", 64);
    let seconds = Duration::from_secs(env_or("DURATION_SECS", 6));
    saturate(&target.channels, concurrency, Duration::from_secs(2)).await;
    let pid = target.pid.to_string();
    let (server_before, client_before) = (cpu_time(&pid), cpu_time("self"));
    let (rate, latencies) = saturate(&target.channels, concurrency, seconds).await;
    Saturated {
        rate,
        latencies,
        server_cpu: cpu_time(&pid) - server_before,
        client_cpu: cpu_time("self") - client_before,
    }
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * 0.99).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One alternating pair: both saturated in `order`, then both paced at half of the lower
/// rate. Returns keyrelay's throughput and p99 at that load over the baseline's, the latter
/// only when no paced call failed.
async fn pair(number: usize, order: [&Target; 2]) -> (f64, Option<f64>) {
    let mut runs = Vec::new();
    for target in order {
        let run = saturated(target).await;
        println!(
            "  pair {number}, {}: {:.0} calls/s saturated ({}); CPU server {:.2?}, load generator {:.2?}",
            target.name,
            run.rate,
            summary(run.latencies.clone()),
            run.server_cpu,
            run.client_cpu
        );
        runs.push(run);
    }
    let rate = runs
        .iter()
        .map(|run| run.rate)
        .fold(f64::INFINITY, f64::min)
        / 2.0;
    let seconds = Duration::from_secs(env_or("DURATION_SECS", 6));
    let mut tails = Vec::new();
    for target in order {
        let mut half = paced(&target.channels, rate, seconds).await;
        if let Some(status) = &half.first_failure {
            println!(
                "  pair {number}, {} at {rate:.0}/s: {} calls failed, the first with {status}",
                target.name, half.failed
            );
            tails.push(None);
        } else {
            tails.push(Some(p99(&mut half.latencies)));
            println!(
                "  pair {number}, {} at {rate:.0}/s: {}",
                target.name,
                summary(half.latencies)
            );
        }
    }
    let keyrelay = usize::from(order[0].name != "keyrelay");
    let baseline = 1 - keyrelay;
    let throughput = runs[keyrelay].rate / runs[baseline].rate;
    let tail = match (tails[keyrelay], tails[baseline]) {
        (Some(ours), Some(theirs)) => Some(ours.as_secs_f64() / theirs.as_secs_f64()),
        _ => None,
    };
    match tail {
        Some(tail) => {
            println!("  pair {number}: throughput {throughput:.3}x, p99 at {rate:.0}/s {tail:.3}x")
        }
        None => println!(
            "  pair {number}: throughput {throughput:.3}x, p99 not compared (calls failed)"
        ),
    }
    (throughput, tail)
}

/// Keyrelay's figures over the baseline's, medians of the pairs.
pub struct Report {
    pub pairs: usize,
    pub throughput: f64,
    /// The pairs whose paced runs had no failed call, and the median of their p99 ratios.
    pub tails_compared: usize,
    pub tail: Option<f64>,
}

/// Runs the pairs, printing each, and returns their medians.
pub async fn run() -> Report {
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
    let keyrelay_process = super::keyrelay(port, data_dir.path(), &[]);
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
    let baseline_process = super::baseline(&BASELINE, response_file.path(), baseline_port);
    println!(
        "Resolve, {} byte response, key set of {} bytes:",
        answer.encoded_len(),
        document.len()
    );
    let connections = env_or("CONNECTIONS", 4);
    let baseline = Target {
        name: "baseline tonic server",
        channels: channels(&format!("http://127.0.0.1:{baseline_port}"), connections).await,
        pid: baseline_process.0.id(),
    };
    let keyrelay = Target {
        name: "keyrelay",
        channels: channels(&endpoint, connections).await,
        pid: keyrelay_process.0.id(),
    };
    let (mut throughputs, mut tails) = (Vec::new(), Vec::new());
    for number in 1..=env_or("PAIRS", 5) {
        let order = if number % 2 == 1 {
            [&baseline, &keyrelay]
        } else {
            [&keyrelay, &baseline]
        };
        let (throughput, tail) = pair(number, order).await;
        throughputs.push(throughput);
        tails.extend(tail);
    }
    let report = Report {
        pairs: throughputs.len(),
        throughput: median(throughputs),
        tails_compared: tails.len(),
        tail: (!tails.is_empty()).then(|| median(tails)),
    };
    println!(
        "keyrelay over the baseline, medians of {} pairs: throughput {:.3}x; p99 at half of saturation, {} pairs without failed calls: {}",
        report.pairs,
        report.throughput,
        report.tails_compared,
        report
            .tail
            .map_or("not compared".to_owned(), |tail| format!("{tail:.3}x"))
    );
    report
}
