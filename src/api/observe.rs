//! One server span and one set of RPC metrics per gRPC call, following the OpenTelemetry
//! RPC conventions: the caller's W3C trace context is continued from the metadata, and the
//! span and metrics end when the response body ends (for streams, when the stream does),
//! with the status code taken from the trailers.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::observability::metrics::{Metrics, RpcLabels};

/// Wraps every call of the server.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    local: SocketAddr,
}

impl ObserveLayer {
    /// Observes calls into `metrics`; `local` is the server address reported on spans.
    pub fn new(metrics: Arc<Metrics>, local: SocketAddr) -> Self {
        Self { metrics, local }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// The wrapped service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn server_span(path: &str, headers: &HeaderMap, local: SocketAddr) -> Span {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    // At debug level: made (and its fields formatted) only when a layer takes it, the
    // OpenTelemetry exporter (see `observability::telemetry`) or logs at debug.
    let span = tracing::debug_span!(
        "grpc.server",
        otel.name = full,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        server.address = %local.ip(),
        server.port = local.port(),
        keyrelay.tenant = Empty,
        keyrelay.provider = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // A failure only means there is no OpenTelemetry layer installed.
    let _ = span.set_parent(parent);
    span
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !is_grpc(request.headers()) {
            // The JWKS mirror's plain HTTP: no RPC span or metrics (its paths are unbounded).
            let response = self.inner.call(request);
            return Box::pin(async move {
                let (parts, body) = response.await?.into_parts();
                Ok(Response::from_parts(
                    parts,
                    ObservedBody {
                        inner: body,
                        call: None,
                    },
                ))
            });
        }
        let path = request.uri().path().to_owned();
        let span = server_span(&path, request.headers(), self.layer.local);
        let call = Call {
            metrics: Arc::clone(&self.layer.metrics),
            method: path.trim_start_matches('/').to_owned(),
            started: Instant::now(),
            span: span.clone(),
        };
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let response = tracing::Instrument::instrument(response, call.span.clone()).await?;
            // A call that fails before its first message ends with the status in the headers.
            let early = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            let mut observed = ObservedBody {
                inner: body,
                call: Some(call),
            };
            if let Some(code) = early {
                observed.finish(code);
            }
            Ok(Response::from_parts(parts, observed))
        })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// The span and the start of one call, closed when its status is known.
struct Call {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    span: Span,
}

impl Call {
    fn finish(self, code: Code) {
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        let labels = RpcLabels {
            method: self.method,
            code: name.to_owned(),
        };
        self.metrics.rpc_finished(&labels, self.started.elapsed());
    }
}

/// A response body that closes the call's span and metrics when it ends.
pub struct ObservedBody {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl ObservedBody {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let span = self.call.as_ref().map(|call| call.span.clone());
        let _entered = span.as_ref().map(Span::enter);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.finish(status.code()),
            Poll::Ready(None) => self.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    /// A client that goes away mid-stream cancels the call.
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// Server-side errors per the OpenTelemetry gRPC conventions.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The canonical name of a status code, as used in metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
