//! The WatchKeys fan-out against the limit of keyrelay's own stack.
//!
//! Starts the real `keyrelay serve` as a child process and a JWKS server in this process,
//! opens STREAMS WatchKeys streams over CONNECTIONS HTTP/2 connections (this process is the
//! load generator), then rotates the key ROTATIONS times: each time it changes the JWKS,
//! calls RefreshProvider and measures, per stream, the time from the call to the arrival of
//! the new version. Then it revokes and reinstates the rotating key REVOCATIONS times in
//! turn (RevokeKey, ReinstateKey: no fetch involved) and measures the same way until every
//! stream holds the set without (or again with) the key. Also reports the server's resident
//! memory per idle stream.
//!
//! The baseline is a bare tonic server, a separate process (the bench binary, re-executed), that
//! sends every stream the very key-set messages keyrelay sent during the rotations, one per
//! call of its Resolve (the trigger), doing no other work. The same streams are opened to it
//! and the same rotations measured, and keyrelay's p99 and memory per idle stream are printed
//! over the baseline's.
//!
//! Environment: STREAMS (10000), CONNECTIONS (10; at most 1024 streams per connection),
//! ROTATIONS (5), REVOCATIONS (6).

use super::{BaselineRole, TOKEN, cpu_time, env_or, free_port, rss_kib};

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{Stream, StreamExt};
use keyrelay::{
    api::{encoded::EncodedEvent, grpc::key_service_server},
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient,
        watch_keys_response::Event,
    },
};
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, transport::Channel};

/// This bench's baseline server.
pub const BASELINE: BaselineRole = BaselineRole {
    env: "KEYRELAY_BENCH_FANOUT_BASELINE",
    serve: |path, port| Box::pin(baseline_server(path, port)),
};

fn jwks(kid: &str) -> String {
    let modulus = |seed: u8| URL_SAFE_NO_PAD.encode([0x80 | seed; 256]);
    serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "stable", "alg": "RS256", "use": "sig", "e": "AQAB", "n": modulus(7)},
        {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "e": "AQAB", "n": modulus(9)},
    ]})
    .to_string()
}

/// One key set a stream received: its version, how many keys, and when.
struct Delivery {
    version: u64,
    keys: usize,
    at: Instant,
}

/// Waits until every one of `streams` received `version` holding `keys` keys, and returns
/// each stream's time from `started`.
async fn deliveries(
    received: &mut mpsc::UnboundedReceiver<Delivery>,
    streams: usize,
    version: u64,
    keys: usize,
    started: Instant,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(streams);
    while latencies.len() < streams {
        let delivery = received.recv().await.expect("event");
        assert_eq!(
            (delivery.version, delivery.keys),
            (version, keys),
            "only the new version arrives"
        );
        latencies.push(delivery.at - started);
    }
    latencies
}

/// The baseline: every WatchKeys stream gets `synced`, then each recorded key-set message as
/// its Resolve (the trigger) is called.
struct Baseline {
    recorded: Mutex<std::vec::IntoIter<EncodedEvent>>,
    sent: broadcast::Sender<EncodedEvent>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

#[tonic::async_trait]
impl key_service_server::KeyService for Baseline {
    async fn resolve(
        &self,
        _request: Request<pb::ResolveRequest>,
    ) -> Result<Response<EncodedEvent>, Status> {
        let next = self.recorded.lock().unwrap().next();
        let event = next.ok_or_else(|| Status::out_of_range("no recorded event left"))?;
        self.sent
            .send(event)
            .map_err(|_| Status::unavailable("no stream"))?;
        Ok(Response::new(EncodedEvent::not_modified()))
    }

    type WatchKeysStream = EventStream;

    async fn watch_keys(
        &self,
        _request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let changes = futures::stream::unfold(self.sent.subscribe(), |mut receiver| async move {
            receiver
                .recv()
                .await
                .ok()
                .map(|event| (Ok(event), receiver))
        });
        let stream = futures::stream::once(async { Ok(EncodedEvent::synced()) }).chain(changes);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The baseline role: the length-delimited messages in the file named by the environment,
/// served on `port`.
async fn baseline_server(path: String, port: u16) {
    let bytes = std::fs::read(path).expect("recorded events");
    let mut buffer = bytes.as_slice();
    let mut recorded = Vec::new();
    while !buffer.is_empty() {
        let message = pb::WatchKeysResponse::decode_length_delimited(&mut buffer).expect("event");
        recorded.push(EncodedEvent::from_bytes(message.encode_to_vec().into()));
    }
    let baseline = Baseline {
        recorded: Mutex::new(recorded.into_iter()),
        sent: broadcast::Sender::new(16),
    };
    tonic::transport::Server::builder()
        .add_service(key_service_server::KeyServiceServer::new(baseline))
        .serve(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("baseline serves");
}

async fn connect(endpoint: &str) -> Channel {
    loop {
        match Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Opens `streams` WatchKeys streams over `connections` connections to `endpoint`, each
/// reporting the key sets it receives to `events`; the first stream also sends each key-set
/// message it receives, encoded, to `recorder`. Returns once every stream is synced.
async fn open_streams(
    endpoint: &str,
    streams: usize,
    connections: usize,
    events: &mpsc::UnboundedSender<Delivery>,
    recorder: Option<mpsc::UnboundedSender<Vec<u8>>>,
) -> Duration {
    let (ready, mut all_ready) = mpsc::unbounded_channel::<()>();
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(connect(endpoint).await);
    }
    let opened = Instant::now();
    for index in 0..streams {
        let mut client = KeyServiceClient::new(channels[index % connections].clone());
        let events = events.clone();
        let ready = ready.clone();
        let recorder = recorder.clone().filter(|_| index == 0);
        tokio::spawn(async move {
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
            let mut stream = client
                .watch_keys(request)
                .await
                .expect("watch")
                .into_inner();
            while let Ok(Some(message)) = stream.message().await {
                if let (Some(recorder), Some(Event::KeySet(_))) = (&recorder, &message.event) {
                    drop(recorder.send(message.encode_length_delimited_to_vec()));
                }
                match message.event {
                    Some(Event::Synced(_)) => drop(ready.send(())),
                    Some(Event::KeySet(set)) => drop(events.send(Delivery {
                        version: set.version,
                        keys: set.keys.len(),
                        at: Instant::now(),
                    })),
                    _ => {}
                }
            }
        });
    }
    for _ in 0..streams {
        all_ready.recv().await.expect("stream synced");
    }
    opened.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Keyrelay's figures and the baseline's: p99 from the trigger to every stream, and bytes of
/// resident memory per idle stream.
pub struct Report {
    pub p99: Duration,
    pub per_stream: f64,
    pub baseline: BaselineRun,
}

/// Runs the fan-out against keyrelay and then the baseline, printing the figures.
pub async fn run() -> Report {
    let streams = env_or("STREAMS", 10_000);
    let connections = env_or("CONNECTIONS", 10);
    let rotations = env_or("ROTATIONS", 5);
    let revocations = env_or("REVOCATIONS", 6);

    let document = Arc::new(Mutex::new(jwks("rotating-1")));
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_url = format!("http://{}/jwks", idp.local_addr().unwrap());
    let served = Arc::clone(&document);
    let app = Router::new().route(
        "/jwks",
        get(move || async move { served.lock().unwrap().clone() }),
    );
    tokio::spawn(async move { axum::serve(idp, app).await });

    let port = free_port();
    let data_dir = tempfile::tempdir().unwrap();
    let server = super::keyrelay(port, data_dir.path(), &[]);
    let pid = server.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = connect(&endpoint).await;
    let mut admin = AdminServiceClient::with_interceptor(channel, |mut request: Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(request)
    });
    admin
        .register_provider(pb::RegisterProviderRequest {
            tenant: "bench".into(),
            provider: "idp".into(),
            jwks_url: idp_url,
            policy: None,
            ..Default::default()
        })
        .await
        .expect("register");

    let rss_before = rss_kib(pid);
    let (events, mut received) = mpsc::unbounded_channel::<Delivery>();
    let (recorder, mut recorded) = mpsc::unbounded_channel();
    let open_time = open_streams(&endpoint, streams, connections, &events, Some(recorder)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(pid);

    let mut latencies = Vec::new();
    let (server_cpu, load_cpu) = (cpu_time(&pid.to_string()), cpu_time("self"));
    let rotating = Instant::now();
    for rotation in 1..=rotations {
        let version = 1 + rotation as u64;
        *document.lock().unwrap() = jwks(&format!("rotating-{version}"));
        let started = Instant::now();
        let provider = admin
            .refresh_provider(pb::RefreshProviderRequest {
                tenant: "bench".into(),
                provider: "idp".into(),
            })
            .await
            .expect("refresh")
            .into_inner()
            .provider
            .unwrap();
        assert_eq!(
            provider.status.unwrap().version,
            version,
            "refresh made a new version"
        );
        let arrivals = deliveries(&mut received, streams, version, 2, started).await;
        latencies.extend(arrivals);
    }
    let rotating = rotating.elapsed();
    let server_cpu = cpu_time(&pid.to_string()) - server_cpu;
    let load_cpu = cpu_time("self") - load_cpu;
    latencies.sort();
    let mut rotation_events = Vec::new();
    while let Ok(event) = recorded.try_recv() {
        rotation_events.extend(event);
    }

    let kid = format!("rotating-{}", 1 + rotations);
    let mut revocation_latencies = Vec::new();
    let (mut answered, mut first_arrivals) = (Vec::new(), Vec::new());
    let (revoke_server_cpu, revoking) = (cpu_time(&pid.to_string()), Instant::now());
    for step in 1..=revocations {
        let version = 1 + (rotations + step) as u64;
        let started = Instant::now();
        let revoke = step % 2 == 1;
        if revoke {
            let request = pb::RevokeKeyRequest {
                tenant: "bench".into(),
                provider: "idp".into(),
                kid: kid.clone(),
                reason: "bench".into(),
            };
            admin.revoke_key(request).await.expect("revoke");
        } else {
            let request = pb::ReinstateKeyRequest {
                tenant: "bench".into(),
                provider: "idp".into(),
                kid: kid.clone(),
            };
            admin.reinstate_key(request).await.expect("reinstate");
        }
        answered.push(started.elapsed());
        let keys = if revoke { 1 } else { 2 };
        let arrivals = deliveries(&mut received, streams, version, keys, started).await;
        first_arrivals.extend(arrivals.iter().min().copied());
        revocation_latencies.extend(arrivals);
    }
    let revoking = revoking.elapsed();
    let revoke_server_cpu = cpu_time(&pid.to_string()) - revoke_server_cpu;
    revocation_latencies.sort();
    answered.sort();
    first_arrivals.sort();
    let per_stream = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / streams as f64;
    println!(
        "WatchKeys fan-out: {streams} streams over {connections} connections, {rotations} rotations"
    );
    println!("  streams opened and synced in {:.2?}", open_time);
    println!(
        "  rotation -> all streams: p50 {:.1?}  p99 {:.1?}  max {:.1?}  ({} deliveries)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        latencies.len()
    );
    println!(
        "  during the rotations ({:.2?} wall): server CPU {:.2?}, load generator CPU {:.2?}",
        rotating, server_cpu, load_cpu
    );
    println!(
        "  revoke/reinstate -> all streams: p50 {:.1?}  p99 {:.1?}  max {:.1?}  ({} deliveries, {revocations} changes)",
        percentile(&revocation_latencies, 0.50),
        percentile(&revocation_latencies, 0.99),
        revocation_latencies[revocation_latencies.len() - 1],
        revocation_latencies.len()
    );
    println!(
        "  the call answered after p50 {:.1?} (max {:.1?}); the first stream had the set after p50 {:.1?} (max {:.1?})",
        percentile(&answered, 0.50),
        answered[answered.len() - 1],
        percentile(&first_arrivals, 0.50),
        first_arrivals[first_arrivals.len() - 1],
    );
    println!(
        "  during the revocations ({:.2?} wall): server CPU {:.2?}",
        revoking, revoke_server_cpu
    );
    println!(
        "  server RSS: {} KiB before streams, {} KiB with {streams} idle streams: {:.0} bytes per idle stream",
        rss_before, rss_idle, per_stream
    );
    drop(server);

    let baseline = bare_tonic(&rotation_events, streams, connections, rotations).await;
    println!(
        "  baseline tonic stream server: rotation -> all streams p99 {:.1?}; {:.0} bytes per idle stream",
        baseline.p99, baseline.per_stream
    );
    let p99 = percentile(&latencies, 0.99);
    println!(
        "  keyrelay over the baseline: p99 {:.2}x, memory per idle stream {:.2}x",
        p99.as_secs_f64() / baseline.p99.as_secs_f64(),
        per_stream / baseline.per_stream
    );
    Report {
        p99,
        per_stream,
        baseline,
    }
}

/// The baseline's figures: p99 from trigger to every stream, and memory per idle stream.
pub struct BaselineRun {
    pub p99: Duration,
    pub per_stream: f64,
}

/// Runs the bare tonic stream server on `recorded` (the rotations' messages, length-delimited)
/// and measures it as keyrelay was measured.
async fn bare_tonic(
    recorded: &[u8],
    streams: usize,
    connections: usize,
    rotations: usize,
) -> BaselineRun {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), recorded).unwrap();
    let port = free_port();
    let server = super::baseline(&BASELINE, file.path(), port);
    let pid = server.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut trigger = KeyServiceClient::new(connect(&endpoint).await);
    let rss_before = rss_kib(pid);
    let (events, mut received) = mpsc::unbounded_channel::<Delivery>();
    open_streams(&endpoint, streams, connections, &events, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_stream = rss_kib(pid).saturating_sub(rss_before) as f64 * 1024.0 / streams as f64;
    let mut latencies = Vec::new();
    for rotation in 1..=rotations {
        let started = Instant::now();
        trigger
            .resolve(pb::ResolveRequest::default())
            .await
            .expect("trigger");
        let version = 1 + rotation as u64;
        latencies.extend(deliveries(&mut received, streams, version, 2, started).await);
    }
    latencies.sort();
    BaselineRun {
        p99: percentile(&latencies, 0.99),
        per_stream,
    }
}
