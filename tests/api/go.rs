//! The Go recipe (`clients/go/verify`): go-oidc's `RemoteKeySet` pointed at the JWKS mirror.
//! It is built with the Go toolchain and the go-oidc that scripts/test.sh installs from
//! Debian (go-oidc 2.1.0, GOPATH mode, nothing downloaded), and run against the real server.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::{OnceCell, mpsc},
};

use crate::{
    helpers::{Backend, TestApp, policy, spawn_app},
    mock_idp::{Document, MockIdp},
    signing::{EC_1, ED_1, ED_2, SigningKey, claims, jwks},
};

const ISSUER: &str = "https://idp.example.com";

/// The recipe's binary, built once per test run.
async fn recipe_binary() -> &'static PathBuf {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    BUILT.get_or_init(build).await
}

async fn build() -> PathBuf {
    let go = std::env::var_os("KEYRELAY_TEST_GO").expect(
        "KEYRELAY_TEST_GO is not set: run the tests with scripts/test.sh, which installs \
         Debian's golang-go and exports the path of `go`",
    );
    let gopath = std::env::var_os("KEYRELAY_TEST_GOPATH").expect(
        "KEYRELAY_TEST_GOPATH is not set: run the tests with scripts/test.sh, which installs \
         Debian's golang-github-coreos-go-oidc-dev and exports its GOPATH",
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-verify");
    let binary = out.join("verify");
    let built = Command::new(&go)
        .args(["build", "-o"])
        .arg(&binary)
        .arg("./clients/go/verify")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // GOPATH mode, offline: go-oidc and go-jose come from Debian's packages.
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOPATH", gopath)
        .env("GOCACHE", out.join("cache"))
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run KEYRELAY_TEST_GO ({go:?}): {err}"));
    assert!(
        built.status.success(),
        "go build ./clients/go/verify failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    binary
}

/// The recipe's flags for this mirror URL and audience.
fn flags(jwks_url: &str, audience: &str) -> Vec<String> {
    ["-jwks", jwks_url, "-issuer", ISSUER, "-audience", audience]
        .map(str::to_owned)
        .to_vec()
}

/// Asserts that the recipe refused a token, giving `reason`.
#[track_caller]
fn assert_refused(verdict: Result<Value, String>, reason: &str) {
    match verdict {
        Ok(claims) => panic!("accepted {claims}; expected a refusal with {reason:?}"),
        Err(err) => assert!(err.contains(reason), "refused with {err:?}, not {reason:?}"),
    }
}

/// Runs the recipe once on `token`: the claims it printed (exit 0), or what it printed on
/// standard error (exit 1).
async fn verify_once(jwks_url: &str, audience: &str, token: &str) -> Result<Value, String> {
    let run = Command::new(recipe_binary().await)
        .args(flags(jwks_url, audience))
        .arg(token)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the recipe answers within 10 s")
        .expect("run the recipe");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(0) => Ok(serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("claims as JSON: {err}; stderr: {stderr}"))),
        Some(1) => {
            assert!(output.stdout.is_empty(), "nothing on stdout when refused");
            Err(stderr)
        }
        other => panic!("exit status {other:?}: {stderr}"),
    }
}

/// One long-lived recipe process reading tokens from its standard input, so that its
/// go-oidc key set lives across a rotation.
struct RecipeProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// One line per token: the claims, or the refusal.
    verdicts: mpsc::UnboundedReceiver<Result<Value, String>>,
}

impl RecipeProcess {
    async fn start(jwks_url: &str) -> Self {
        let mut child = Command::new(recipe_binary().await)
            .args(flags(jwks_url, "api"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the recipe");
        let (send, verdicts) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn({
            let send = send.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let claims = serde_json::from_str(&line).expect("claims as JSON");
                    let _ = send.send(Ok(claims));
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = send.send(Err(line));
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            verdicts,
        }
    }

    /// Sends one token and waits for its verdict.
    async fn verify(&mut self, token: &str) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{token}\n").as_bytes())
            .await
            .expect("write a token");
        tokio::time::timeout(Duration::from_secs(10), self.verdicts.recv())
            .await
            .expect("a verdict within 10 s")
            .expect("the recipe is running")
    }

    /// Closes standard input and returns the exit status.
    async fn finish(mut self) -> Option<i32> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the recipe exits when its input ends")
            .expect("wait for the recipe");
        status.code()
    }
}

/// A pass-through to keyrelay that counts the requests it forwards: the recipe's fetches of
/// the mirror.
struct CountingProxy {
    base: String,
    fetches: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(app: &TestApp) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let base = format!("http://{}", listener.local_addr().expect("proxy address"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state = (app.endpoint(), Arc::clone(&fetches));
        let router = Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { base, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn forward(
    State((upstream, fetches)): State<(String, Arc<AtomicUsize>)>,
    request: Request,
) -> Response {
    fetches.fetch_add(1, Ordering::SeqCst);
    let url = format!("{upstream}{}", request.uri().path());
    let answer = reqwest::get(url).await.expect("keyrelay answers the proxy");
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status().as_u16()).expect("a status"));
    for name in [header::CACHE_CONTROL, header::ETAG, header::CONTENT_TYPE] {
        if let Some(value) = answer.headers().get(name.as_str()) {
            response = response.header(name, value.as_bytes());
        }
    }
    let body = answer.bytes().await.expect("the mirror's body");
    response.body(Body::from(body)).expect("a response")
}

/// keyrelay serving `keys` for acme/okta, from an IdP that says `max-age`; keyrelay's own
/// clock stands still, so the mirror says the same `max-age` throughout.
async fn serve(keys: &[&SigningKey], max_age: u64) -> (TestApp, MockIdp) {
    let app = spawn_app(Backend::Sqlite).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    publish(&idp, keys, max_age);
    let short = policy(Some(10), None, None);
    app.register_with("acme", "okta", &idp.jwks_url(), Some(short))
        .await;
    (app, idp)
}

fn publish(idp: &MockIdp, keys: &[&SigningKey], max_age: u64) {
    idp.set_document(Document {
        body: jwks(keys),
        cache_control: Some(format!("max-age={max_age}")),
        ..Document::default()
    });
}

const MIRROR_PATH: &str = "/v1/jwks/acme/okta";

/// The mirror's `Cache-Control`, which go-oidc's key set obeys.
async fn mirror_cache_control(app: &TestApp) -> String {
    let response = reqwest::get(format!("{}{MIRROR_PATH}", app.endpoint())).await;
    let response = response.expect("the mirror answers");
    let value = response
        .headers()
        .get(header::CACHE_CONTROL)
        .expect("Cache-Control");
    value.to_str().expect("ASCII").to_owned()
}

/// Rotates the IdP to `keys` and has keyrelay fetch them now (standing in for its schedule).
async fn rotate(app: &TestApp, idp: &MockIdp, keys: &[&SigningKey], max_age: u64) {
    publish(idp, keys, max_age);
    app.refresh("acme", "okta").await;
    let (status, body) = app.http_get(MIRROR_PATH).await;
    assert_eq!(status, 200);
    for key in keys {
        assert!(body.contains(key.kid), "the mirror serves {}", key.kid);
    }
}

#[tokio::test]
async fn the_go_recipe_verifies_through_the_mirror_and_refuses_what_it_should() {
    let (app, _idp) = serve(&[&ED_1], 600).await;
    let grpc_port = format!("{}{}", app.endpoint(), MIRROR_PATH);
    let http_listener = format!("http://{}{}", app.http_addr, MIRROR_PATH);

    for url in [&grpc_port, &http_listener] {
        let verified = verify_once(url, "api", &ED_1.sign(&claims("alice"))).await;
        let verified = verified.unwrap_or_else(|err| panic!("{url}: {err}"));
        assert_eq!(
            (&verified["sub"], &verified["aud"]),
            (&json!("alice"), &json!("api"))
        );
    }

    let refused = verify_once(&grpc_port, "billing", &ED_1.sign(&claims("x"))).await;
    assert_refused(refused, "expected audience \"billing\"");

    let mut expired = claims("x");
    expired["exp"] = json!(expired["iat"].as_u64().expect("iat") - 3600);
    let refused = verify_once(&grpc_port, "api", &ED_1.sign(&expired)).await;
    assert_refused(refused, "token is expired");
    let mut no_exp = claims("x");
    no_exp.as_object_mut().expect("an object").remove("exp");
    let refused = verify_once(&grpc_port, "api", &ED_1.sign(&no_exp)).await;
    assert_refused(refused, "token is expired");

    let mut other_issuer = claims("x");
    other_issuer["iss"] = json!("https://evil.example.com");
    let refused = verify_once(&grpc_port, "api", &ED_1.sign(&other_issuer)).await;
    assert_refused(refused, "issued by a different provider");

    // Signed by a key the provider never published, under the provider's kid.
    let header_of = |key: &SigningKey| {
        let token = key.sign(&claims("x"));
        token.split('.').next().expect("a header").to_owned()
    };
    let forged = ED_2
        .sign(&claims("x"))
        .replacen(&header_of(&ED_2), &header_of(&ED_1), 1);
    let refused = verify_once(&grpc_port, "api", &forged).await;
    assert_refused(refused, "failed to verify signature");

    // HS256 with the public key as the HMAC secret: not an algorithm the recipe accepts.
    let secret = ED_1.jwk()["x"].as_str().expect("x").to_owned();
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(ED_1.kid.into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("x"),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs");
    let refused = verify_once(&grpc_port, "api", &hmac).await;
    assert_refused(refused, "unsupported algorithm");
}

// go-oidc 2.1.0 fetches the mirror again for a kid it does not hold only when its copy is
// within 30 s of the end of the mirror's max-age. Here the mirror says max-age=20, so it does
// every time.
#[tokio::test]
async fn the_go_recipe_fetches_a_rotated_key_from_the_mirror_on_an_unknown_kid() {
    let (app, idp) = serve(&[&ED_1], 20).await;
    let proxy = CountingProxy::start(&app).await;
    let mut recipe = RecipeProcess::start(&format!("{}{}", proxy.base, MIRROR_PATH)).await;

    let alice = recipe.verify(&ED_1.sign(&claims("alice"))).await;
    assert_eq!(alice.expect("the current key verifies")["sub"], "alice");
    let again = recipe.verify(&ED_1.sign(&claims("alice"))).await;
    assert_eq!(again.expect("still")["sub"], "alice");
    assert_eq!(proxy.fetches(), 1, "the second token used the keys held");

    rotate(&app, &idp, &[&ED_1, &ED_2], 20).await;
    assert_eq!(mirror_cache_control(&app).await, "public, max-age=20");
    let bob = recipe.verify(&ED_2.sign(&claims("bob"))).await;
    assert_eq!(bob.expect("the rotated key verifies")["sub"], "bob");
    assert_eq!(proxy.fetches(), 2, "one fetch for the unknown kid");

    // A kid nobody published costs one fetch too; the mirror answers it from memory.
    let refused = recipe.verify(&EC_1.sign(&claims("mallory"))).await;
    assert_refused(refused, "failed to verify signature");
    assert_eq!(proxy.fetches(), 3);
    assert_eq!(idp.request_count(), 2, "registration and the rotation only");
    assert_eq!(
        recipe.finish().await,
        Some(1),
        "exit 1: a token was refused"
    );
}

// With a long max-age go-oidc 2.1.0 keeps its copy: a token from a key rotated in after its
// fetch is refused until that copy is within 30 s of expiring, with no request to the mirror.
#[tokio::test]
async fn with_a_long_max_age_the_go_recipe_keeps_its_keys_and_refuses_a_newer_kid() {
    let (app, idp) = serve(&[&ED_1], 600).await;
    let proxy = CountingProxy::start(&app).await;
    let mut recipe = RecipeProcess::start(&format!("{}{}", proxy.base, MIRROR_PATH)).await;

    let alice = recipe.verify(&ED_1.sign(&claims("alice"))).await;
    assert_eq!(alice.expect("the current key verifies")["sub"], "alice");

    rotate(&app, &idp, &[&ED_1, &ED_2], 600).await;
    assert_eq!(mirror_cache_control(&app).await, "public, max-age=600");
    let refused = recipe.verify(&ED_2.sign(&claims("bob"))).await;
    assert_refused(refused, "failed to verify id token signature");
    assert_eq!(proxy.fetches(), 1, "no fetch while its copy is fresh");
    let alice = recipe.verify(&ED_1.sign(&claims("alice"))).await;
    assert!(alice.is_ok(), "the held key still verifies");
    assert_eq!(recipe.finish().await, Some(1));
}
