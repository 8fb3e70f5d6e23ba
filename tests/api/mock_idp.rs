//! A mock identity provider: a real HTTP server on 127.0.0.1 whose JWKS responses, headers
//! and failure modes each test controls, which can serve other documents (discovery metadata)
//! at chosen paths, and which records every request it receives.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use futures::stream;
use keyrelay::clock::Clock;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// How the mock answers `/jwks`.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Serve the current document, answering conditional requests with 304 when they match.
    Normal,
    /// Answer this status with an empty body, and a Retry-After when given.
    Status(u16, Option<&'static str>),
    /// Accept the request and never answer.
    Hang,
    /// Send headers, then one byte every 100 ms, forever.
    Dribble,
    /// Stream this many bytes of a never-ending JSON string, chunked, no Content-Length.
    Oversize(u64),
    /// Like `Normal`, but only after `release` is called once per request.
    Gated,
    /// Answer 200 with exactly these bytes (invalid UTF-8, say).
    Raw(Bytes),
    /// Announce the document's length, send half of it, then break the connection.
    Truncated,
}

/// The document and the caching headers of a 200.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub body: String,
    pub cache_control: Option<String>,
    pub expires: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What one request carried.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: std::time::Instant,
    pub path: String,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

struct Shared {
    document: Mutex<Document>,
    routes: Mutex<HashMap<String, Option<Document>>>,
    mode: Mutex<Mode>,
    validators_in_304: Mutex<bool>,
    requests: Mutex<Vec<Recorded>>,
    count: watch::Sender<usize>,
    bytes_streamed: AtomicU64,
    gate: Semaphore,
    clock: Box<dyn Clock>,
}

/// A running mock IdP.
#[derive(Clone)]
pub struct MockIdp {
    /// `scheme://host:port` the mock answers on.
    base: String,
    port: u16,
    shared: Arc<Shared>,
}

/// Accepts TCP connections and completes a TLS handshake on each before handing it to axum.
/// Failed handshakes (a client refusing the certificate) are skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A JWKS of RSA keys with these kids (dummy material: keyrelay never verifies with it).
pub fn jwks(kids: &[&str]) -> Value {
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}))
        .collect();
    json!({ "keys": keys })
}

impl MockIdp {
    /// Starts the mock on a random loopback port; its `Date` headers follow `clock`.
    pub async fn start(clock: impl Clock) -> Self {
        let listener = bind("127.0.0.1", 0).await;
        let port = listener.local_addr().expect("mock IdP address").port();
        let (app, shared) = app(clock);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            shared,
        }
    }

    /// Starts the mock over TLS on `ip` (a loopback address) with this certificate, addressed
    /// as `https://{host}:<port>` (a name the test's resolver maps to `ip`).
    pub async fn start_tls(ip: &str, host: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_tls_on(ip, 0, host, tls).await
    }

    /// Like `start_tls`, on a given port (0 for any).
    pub async fn start_tls_on(
        ip: &str,
        port: u16,
        host: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        let tcp = bind(ip, port).await;
        let port = tcp.local_addr().expect("mock IdP address").port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let (app, shared) = app(keyrelay::clock::SystemClock);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("https://{host}:{port}"),
            port,
            shared,
        }
    }

    /// The port the mock listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<scheme>://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The usual JWKS URL.
    pub fn jwks_url(&self) -> String {
        self.url("/jwks")
    }

    /// Serves this document from now on.
    pub fn set_document(&self, document: Document) {
        *self.shared.document.lock().unwrap() = document;
    }

    /// Serves `document` at exactly `path` (answering conditional requests as for the JWKS),
    /// or 404 there when `None`, whatever the mode.
    pub fn set_route(&self, path: &str, document: Option<Document>) {
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), document);
    }

    /// Serves a JWKS with these kids and these caching headers.
    pub fn serve_kids(&self, kids: &[&str], cache_control: Option<&str>) {
        self.set_document(Document {
            body: jwks(kids).to_string(),
            cache_control: cache_control.map(str::to_owned),
            ..Document::default()
        });
    }

    /// Changes the failure mode.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Whether 304 responses repeat the ETag / Last-Modified (RFC 9110 requires only ETag).
    pub fn set_validators_in_304(&self, include: bool) {
        *self.shared.validators_in_304.lock().unwrap() = include;
    }

    /// Lets one gated request through.
    pub fn release(&self, requests: usize) {
        self.shared.gate.add_permits(requests);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// When each request arrived.
    pub fn request_times(&self) -> Vec<std::time::Instant> {
        self.requests().iter().map(|r| r.at).collect()
    }

    /// How many requests so far.
    pub fn request_count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut count = self.shared.count.subscribe();
        tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "mock IdP saw {} requests, expected {n}",
                    self.request_count()
                )
            })
            .expect("mock IdP stopped");
    }

    /// Bytes handed to the connection by `Mode::Oversize`.
    pub fn bytes_streamed(&self) -> u64 {
        self.shared.bytes_streamed.load(Ordering::SeqCst)
    }
}

async fn bind(ip: &str, port: u16) -> tokio::net::TcpListener {
    assert!(
        ip.parse::<std::net::IpAddr>().unwrap().is_loopback(),
        "the mock IdP listens on loopback only"
    );
    tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind mock IdP")
}

fn app(clock: impl Clock) -> (Router, Arc<Shared>) {
    let (count, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        document: Mutex::new(Document {
            body: jwks(&["key-1"]).to_string(),
            ..Document::default()
        }),
        routes: Mutex::default(),
        mode: Mutex::new(Mode::Normal),
        validators_in_304: Mutex::new(true),
        requests: Mutex::default(),
        count,
        bytes_streamed: AtomicU64::new(0),
        gate: Semaphore::new(0),
        clock: Box::new(clock),
    });
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    (router, shared)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (request, _body) = request.into_parts();
    let path = request.uri.path().to_owned();
    let text = |name| {
        request
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    shared.requests.lock().unwrap().push(Recorded {
        at: std::time::Instant::now(),
        path: path.clone(),
        if_none_match: text(header::IF_NONE_MATCH),
        if_modified_since: text(header::IF_MODIFIED_SINCE),
    });
    shared.count.send_modify(|c| *c += 1);
    let date = httpdate::fmt_http_date(shared.clock.now().into());
    let mut response = if let Some(hops) = path.strip_prefix("/hop/") {
        redirect(hops)
    } else if path == "/loop-a" || path == "/loop-b" {
        redirect_to(if path == "/loop-a" {
            "/loop-b"
        } else {
            "/loop-a"
        })
    } else if let Some(target) = path.strip_prefix("/redirect-to/") {
        redirect_to(&target.replace('|', "/"))
    } else if let Some(route) = shared.routes.lock().unwrap().get(&path).cloned() {
        match route {
            Some(document) => document_response(document, true, &request.headers),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::empty())
                .unwrap(),
        }
    } else {
        let mode = shared.mode.lock().unwrap().clone();
        serve(Arc::clone(&shared), mode, &request.headers).await
    };
    response
        .headers_mut()
        .insert(header::DATE, date.parse().unwrap());
    response
}

fn redirect(hops: &str) -> Response {
    let remaining: u32 = hops.parse().unwrap_or(0);
    let location = if remaining == 0 {
        "/jwks".to_owned()
    } else {
        format!("/hop/{}", remaining - 1)
    };
    redirect_to(&location)
}

fn redirect_to(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap()
}

async fn serve(shared: Arc<Shared>, mode: Mode, request: &HeaderMap) -> Response {
    match mode {
        Mode::Normal => jwks_response(&shared, request),
        Mode::Gated => {
            shared.gate.acquire().await.expect("gate closed").forget();
            jwks_response(&shared, request)
        }
        Mode::Status(code, retry_after) => {
            let mut response = Response::builder().status(code);
            if let Some(after) = retry_after {
                response = response.header(header::RETRY_AFTER, after);
            }
            response.body(Body::empty()).unwrap()
        }
        Mode::Hang => std::future::pending().await,
        Mode::Dribble => {
            let chunks = stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, Infallible>(Bytes::from_static(b" ")), ()))
            });
            Response::new(Body::from_stream(chunks))
        }
        Mode::Oversize(total) => oversize(shared, total),
        Mode::Raw(bytes) => Response::new(Body::from(bytes)),
        Mode::Truncated => truncated(&shared),
    }
}

fn truncated(shared: &Shared) -> Response {
    let body = Bytes::from(shared.document.lock().unwrap().body.clone());
    let half = body.slice(..body.len() / 2);
    let chunks = stream::iter([
        Ok(half),
        Err(std::io::Error::other("connection broken by the mock")),
    ]);
    Response::builder()
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from_stream(chunks))
        .unwrap()
}

fn oversize(shared: Arc<Shared>, total: u64) -> Response {
    const CHUNK: usize = 16 * 1024;
    shared.bytes_streamed.store(0, Ordering::SeqCst);
    let chunks = stream::unfold(0u64, move |sent| {
        let shared = Arc::clone(&shared);
        async move {
            if sent >= total {
                return None;
            }
            let chunk = if sent == 0 {
                Bytes::from_static(b"{\"keys\": [], \"pad\": \"")
            } else {
                Bytes::from(vec![b'a'; CHUNK])
            };
            let len = chunk.len() as u64;
            shared.bytes_streamed.fetch_add(len, Ordering::SeqCst);
            Some((Ok::<_, Infallible>(chunk), sent + len))
        }
    });
    Response::new(Body::from_stream(chunks))
}

fn jwks_response(shared: &Shared, request: &HeaderMap) -> Response {
    let document = shared.document.lock().unwrap().clone();
    let validators_in_304 = *shared.validators_in_304.lock().unwrap();
    document_response(document, validators_in_304, request)
}

fn document_response(document: Document, validators_in_304: bool, request: &HeaderMap) -> Response {
    let header_text = |name| {
        request
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let etag_matches =
        document.etag.is_some() && header_text(header::IF_NONE_MATCH) == document.etag.as_deref();
    let unmodified = document.etag.is_none()
        && document.last_modified.is_some()
        && header_text(header::IF_MODIFIED_SINCE) == document.last_modified.as_deref();
    let not_modified = etag_matches || unmodified;
    let mut response = Response::builder().status(if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    });
    let mut headers = vec![
        (header::CACHE_CONTROL, document.cache_control.clone()),
        (header::EXPIRES, document.expires.clone()),
    ];
    if !not_modified || validators_in_304 {
        headers.push((header::ETAG, document.etag.clone()));
        headers.push((header::LAST_MODIFIED, document.last_modified.clone()));
    }
    for (name, value) in headers {
        if let Some(value) = value {
            response = response.header(name, value);
        }
    }
    if not_modified {
        return response.body(Body::empty()).unwrap();
    }
    response
        .header(header::CONTENT_TYPE, "application/jwk-set+json")
        .body(Body::from(document.body))
        .unwrap()
}
