//! Metrics, health endpoints and traces. Traces are checked end to end: real `keyrelay serve`
//! processes export over OTLP to a collector running in this test (a tonic server of the
//! OTLP TraceService), and the test asserts on span names, attributes and parent links.

use std::{
    collections::HashMap,
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use keyrelay::{clock::SystemClock, proto::v1 as pb};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    helpers::{ADMIN_TOKEN, Backend, TestDatabase, spawn_app},
    mock_idp::MockIdp,
};

#[tokio::test]
async fn metrics_count_calls_cache_results_refreshes_and_watchers() {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    app.register("acme", "okta", &idp.jwks_url()).await;
    app.resolve("acme", "okta", None).await.unwrap();
    app.resolve("acme", "okta", Some("missing"))
        .await
        .unwrap_err();
    let _watch = app
        .watch(vec![crate::helpers::selector("acme", "")], vec![])
        .await;

    let (status, text) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"keyrelay_rpc_requests_total{method="keyrelay.v1.KeyService/Resolve",code="OK"} 1"#,
        r#"keyrelay_rpc_requests_total{method="keyrelay.v1.KeyService/Resolve",code="NOT_FOUND"} 1"#,
        r#"keyrelay_rpc_requests_total{method="keyrelay.v1.AdminService/RegisterProvider",code="OK"} 1"#,
        r#"keyrelay_rpc_duration_seconds_bucket{le="#,
        r#"keyrelay_resolve_cache_total{result="hit"} 1"#,
        r#"keyrelay_resolve_cache_total{result="miss"} 1"#,
        r#"keyrelay_refreshes_total{outcome="modified"} 2"#,
        "keyrelay_fetch_duration_seconds_count 2",
        "keyrelay_fetched_bytes_total ",
        "keyrelay_key_set_changes_total 1",
        "keyrelay_watch_subscribers 1",
        "keyrelay_shards 1",
        "keyrelay_shards_owned 1",
        "keyrelay_shard_acquisitions_total 0",
        r#"keyrelay_providers{state="ready"} 1"#,
        r#"keyrelay_provider_time_until_unusable_seconds{tenant="acme",provider="okta"} "#,
        "keyrelay_min_time_until_unusable_seconds ",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[tokio::test]
async fn health_endpoints_answer_over_plain_http() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.http_get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(app.http_get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(app.http_get("/nope").await.0, 404);
}

/// An OTLP trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, endpoint)
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    fn one(&self, name: &str) -> Span {
        let spans = self.named(name);
        assert_eq!(spans.len(), 1, "spans named {name}: {:?}", self.names());
        spans.into_iter().next().unwrap()
    }

    fn names(&self) -> Vec<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn spawn(endpoint: &str, args: &[&str]) -> Self {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--admin-token",
                ADMIN_TOKEN,
                "--dev-allow-http-loopback",
                "--fetch-timeout",
                "2s",
            ])
            .args(args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_SERVICE_NAME", "keyrelay-under-test")
            .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keyrelay");
        Self { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> tonic::transport::Channel {
        for _ in 0..200 {
            if let Ok(channel) = tonic::transport::Channel::from_shared(self.endpoint())
                .unwrap()
                .connect()
                .await
            {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("keyrelay did not start");
    }

    /// Stops gracefully (which flushes the traces) and waits for the exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "keyrelay exited with {exit}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn register(channel: tonic::transport::Channel, url: &str) {
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        |mut request: Request<()>| {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
            );
            Ok(request)
        },
    );
    let request = pb::RegisterProviderRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        jwks_url: url.into(),
        policy: None,
        ..Default::default()
    };
    admin.register_provider(request).await.expect("register");
}

/// A Resolve for an unknown kid, sent inside the caller's trace.
async fn resolve_in_trace(
    channel: tonic::transport::Channel,
    kid: &str,
) -> Result<pb::ResolveResponse, Status> {
    let mut request = Request::new(pb::ResolveRequest {
        tenant: "acme".into(),
        provider: "okta".into(),
        kid: Some(kid.into()),
        if_newer_than_version: None,
    });
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    pb::key_service_client::KeyServiceClient::new(channel)
        .resolve(request)
        .await
        .map(Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_for_an_unknown_kid_is_one_trace_with_the_refresh_and_fetch_it_caused() {
    let (collector, endpoint) = Collector::start().await;
    let idp = MockIdp::start(SystemClock).await;
    let data = tempfile::tempdir().unwrap();
    let server = Process::spawn(&endpoint, &["--data-dir", data.path().to_str().unwrap()]);
    register(server.channel().await, &idp.url("/jwks?secret=hunter2")).await;
    idp.serve_kids(&["key-1", "rotated"], None);
    resolve_in_trace(server.channel().await, "rotated")
        .await
        .expect("rotated kid found");
    server.stop();

    let resolve = collector.one("keyrelay.v1.KeyService/Resolve");
    assert_eq!(
        hex(&resolve.trace_id),
        TRACE_ID,
        "the caller's trace continues"
    );
    assert_eq!(hex(&resolve.parent_span_id), CALLER_SPAN);
    let attrs = attributes(&resolve);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "keyrelay.v1.KeyService"),
        ("rpc.method", "Resolve"),
        ("rpc.grpc.status_code", "0"),
        ("server.address", "127.0.0.1"),
        ("keyrelay.tenant", "acme"),
        ("keyrelay.provider", "okta"),
    ] {
        assert_eq!(
            attrs.get(key).map(String::as_str),
            Some(value),
            "{key} on {attrs:?}"
        );
    }
    assert_eq!(resolve.kind, 2, "SPAN_KIND_SERVER");

    let refreshes: Vec<Span> = collector
        .named("keyrelay.refresh")
        .into_iter()
        .filter(|s| s.trace_id == resolve.trace_id)
        .collect();
    assert_eq!(refreshes.len(), 1, "one refresh in the caller's trace");
    let refresh = &refreshes[0];
    assert_eq!(
        refresh.parent_span_id, resolve.span_id,
        "the refresh is a child of the Resolve"
    );
    let attrs = attributes(refresh);
    assert_eq!(
        attrs.get("keyrelay.refresh.trigger").map(String::as_str),
        Some("unknown_kid")
    );
    assert_eq!(
        attrs.get("keyrelay.refresh.outcome").map(String::as_str),
        Some("modified")
    );
    assert_eq!(
        attrs.get("keyrelay.key_set.version").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        attrs.get("keyrelay.keys.count").map(String::as_str),
        Some("2")
    );

    let fetch = collector
        .named("GET")
        .into_iter()
        .find(|s| s.parent_span_id == refresh.span_id)
        .expect("fetch span");
    assert_eq!(fetch.kind, 3, "SPAN_KIND_CLIENT");
    let attrs = attributes(&fetch);
    assert_eq!(
        attrs.get("http.request.method").map(String::as_str),
        Some("GET")
    );
    assert_eq!(
        attrs.get("http.response.status_code").map(String::as_str),
        Some("200")
    );
    assert_eq!(
        attrs.get("keyrelay.fetch.outcome").map(String::as_str),
        Some("modified")
    );
    let url = attrs.get("url.full").expect("url.full");
    assert!(
        url.ends_with("/jwks?<redacted>") && !url.contains("hunter2"),
        "query secrets never exported: {url}"
    );

    let publish = collector
        .named("keyrelay.publish")
        .into_iter()
        .find(|s| s.parent_span_id == refresh.span_id);
    assert!(
        publish.is_some(),
        "the publish that followed is in the trace: {:?}",
        collector.names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_s_wait_and_the_leader_s_fetch_are_one_trace() {
    let database = TestDatabase::create().await;
    let (collector, endpoint) = Collector::start().await;
    let idp = MockIdp::start(SystemClock).await;
    let first = Process::spawn(
        &endpoint,
        &["--database-url", &database.url, "--replica-id", "first"],
    );
    register(first.channel().await, &idp.jwks_url()).await;
    let second = Process::spawn(
        &endpoint,
        &["--database-url", &database.url, "--replica-id", "second"],
    );
    let second_channel = second.channel().await;
    // `first` started alone, so it leads; `second` follows and must forward.
    idp.serve_kids(&["key-1", "rotated"], None);
    let mut found = false;
    for _ in 0..100 {
        if resolve_in_trace(second_channel.clone(), "rotated")
            .await
            .is_ok()
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        found,
        "the follower resolved the rotated kid through the leader"
    );
    second.stop();
    first.stop();

    let in_trace = |name: &str| -> Vec<Span> {
        collector
            .named(name)
            .into_iter()
            .filter(|s| hex(&s.trace_id) == TRACE_ID)
            .collect()
    };
    let forwards = in_trace("keyrelay.refresh.forward");
    let serves = in_trace("keyrelay.refresh.serve");
    let refreshes = in_trace("keyrelay.refresh");
    assert!(
        !forwards.is_empty(),
        "the follower's wait is traced: {:?}",
        collector.names()
    );
    let serve = serves
        .iter()
        .find(|serve| forwards.iter().any(|f| f.span_id == serve.parent_span_id))
        .expect("the leader's work continues the follower's forward span");
    assert!(
        refreshes.iter().any(|r| r.parent_span_id == serve.span_id),
        "the leader's refresh is a child of the request it served"
    );
}
