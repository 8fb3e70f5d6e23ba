//! TLS on the gRPC listener: certificates from the test CA, clients that trust it or not,
//! client certificates (mutual TLS), reloads that keep open streams, and handshakes that do
//! not wait for each other. Everything talks to 127.0.0.1.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use keyrelay::server::tls::TlsError;
use keyrelay_verifier::{Expectations, Verifier};
use tempfile::TempDir;
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::mpsc};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    cli::{BINARY, Server, free_port},
    helpers::{Backend, TestApp, selector, spawn_app_with},
    mock_idp::MockIdp,
    pki::{Leaf, TestCa},
    signing::{ED_1, claims},
    verifiers::{keyrelay, rotate},
};

/// The names the server's certificates carry.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// The server's TLS files in a directory of their own.
struct ServerFiles {
    dir: TempDir,
}

impl ServerFiles {
    /// A certificate and key from `ca`.
    fn issued_by(ca: &TestCa) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.install(&ca.leaf(SERVER_NAMES));
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces certificate and key, each renamed into place as an operator would.
    fn install(&self, leaf: &Leaf) {
        self.write("cert.pem", &leaf.chain_pem);
        self.write("key.pem", &leaf.key_pem);
    }

    fn write(&self, name: &str, contents: &str) {
        let staged = self.path(&format!("{name}.new"));
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(staged, self.path(name)).unwrap();
    }

    /// `keyrelay serve` flags for these files, plus a client CA bundle when given.
    fn args(&self, client_ca: Option<&TestCa>) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            arg(&self.path("cert.pem")),
            "--tls-key".to_owned(),
            arg(&self.path("key.pem")),
        ];
        if let Some(ca) = client_ca {
            self.write("client-ca.pem", &ca.pem());
            args.extend([
                "--tls-client-ca".to_owned(),
                arg(&self.path("client-ca.pem")),
            ]);
        }
        args
    }
}

fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// Client settings trusting `ca` only.
fn trusting(ca: &TestCa) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()))
}

/// Client settings trusting `ca` and presenting `leaf`.
fn presenting(ca: &TestCa, leaf: &Leaf) -> ClientTlsConfig {
    trusting(ca).identity(Identity::from_pem(&leaf.chain_pem, &leaf.key_pem))
}

/// A server with a certificate from a new CA, whose helpers connect trusting that CA. With
/// `clients`, the server requires certificates from that client CA, and the helpers present
/// that certificate.
async fn serve_tls(
    clients: Option<(&TestCa, &Leaf)>,
    extra_args: &[&str],
) -> (TestCa, ServerFiles, TestApp) {
    let ca = TestCa::new("keyrelay test CA");
    let files = ServerFiles::issued_by(&ca);
    let mut args = files.args(clients.map(|(client_ca, _)| client_ca));
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tls = match clients {
        Some((_, client)) => presenting(&ca, client),
        None => trusting(&ca),
    };
    let app = spawn_app_with(Backend::Sqlite, &args)
        .await
        .with_client_tls(tls);
    (ca, files, app)
}

/// A mock IdP serving one key, registered as acme/okta.
async fn register_okta(app: &TestApp) -> MockIdp {
    let idp = MockIdp::start(app.clock.clone()).await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    app.register("acme", "okta", &idp.jwks_url()).await;
    idp
}

/// Asserts the server counted `count` reloads with `outcome`.
async fn assert_reloads_counted(app: &TestApp, outcome: &str, count: u32) {
    let (_, metrics) = app.http_get("/metrics").await;
    let line = format!(r#"keyrelay_tls_reloads_total{{outcome="{outcome}"}} {count}"#);
    assert!(metrics.contains(&line), "{line} not in {metrics}");
}

/// A health check over a new connection to `addr`: TLS with `tls`, or plaintext.
async fn health_over(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = keyrelay_verifier::endpoint(format!("{scheme}://{addr}"), tls).unwrap();
    let call = async {
        let channel = endpoint.connect().await.map_err(|err| format!("{err:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(drop)
            .map_err(|status| format!("{status:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the server answers or refuses within 10 s")
}

fn refused(outcome: Result<(), String>, what: &str) {
    assert!(outcome.is_err(), "{what} got in");
}

#[tokio::test]
async fn a_client_trusting_the_ca_resolves_and_watches_over_tls() {
    let (_ca, _files, app) = serve_tls(None, &[]).await;
    register_okta(&app).await;
    let set = app.resolve("acme", "okta", None).await.expect("resolved");
    assert_eq!(set.version, 1);
    let mut watch = app.watch(vec![selector("acme", "")], vec![]).await;
    assert_eq!(watch.next_key_set().await.provider, "okta");
    watch.expect_synced().await;
}

#[tokio::test]
async fn a_plaintext_client_is_refused() {
    let (ca, _files, app) = serve_tls(None, &[]).await;
    let addr = app.addr.to_string();
    refused(health_over(&addr, None).await, "a plaintext client");
    health_over(&addr, Some(trusting(&ca))).await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let (_ca, _files, app) = serve_tls(None, &[]).await;
    let stranger = TestCa::new("someone else's CA");
    let outcome = health_over(&app.addr.to_string(), Some(trusting(&stranger))).await;
    refused(outcome, "a client trusting another CA");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_from_it_get_in() {
    let client_ca = TestCa::new("client CA");
    let good = client_ca.leaf(&["client"]);
    let (ca, _files, app) = serve_tls(Some((&client_ca, &good)), &[]).await;
    let stranger = TestCa::new("someone else's CA");
    let addr = app.addr.to_string();

    refused(
        health_over(&addr, Some(trusting(&ca))).await,
        "a client without a certificate",
    );
    let foreign = stranger.leaf(&["client"]);
    refused(
        health_over(&addr, Some(presenting(&ca, &foreign))).await,
        "a client with a certificate from another CA",
    );
    health_over(&addr, Some(presenting(&ca, &good)))
        .await
        .expect("a client with a certificate from the client CA gets in");
}

// Multi-threaded: the CLI runs as blocking child processes while the server must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_sdk_connect_with_a_ca_and_a_client_certificate() {
    let client_ca = TestCa::new("client CA");
    let client = client_ca.leaf(&["client"]);
    let (ca, files, app) = serve_tls(Some((&client_ca, &client)), &[]).await;
    let idp = MockIdp::start(app.clock.clone()).await;
    rotate(&idp, &[&ED_1]);
    app.register("acme", "okta", &idp.jwks_url()).await;
    files.write("ca.pem", &ca.pem());
    files.write("client.pem", &client.chain_pem);
    files.write("client.key", &client.key_pem);
    let (ca_pem, client_pem, client_key) = (
        arg(&files.path("ca.pem")),
        arg(&files.path("client.pem")),
        arg(&files.path("client.key")),
    );
    let server = format!("https://127.0.0.1:{}", app.addr.port());
    let tls = ["--server", &server, "--ca-cert", &ca_pem];
    let mtls = [
        &tls[..],
        &["--client-cert", &client_pem, "--client-key", &client_key],
    ]
    .concat();

    let resolved = keyrelay(&[&["resolve", "acme", "okta", "--json"], &mtls[..]].concat());
    let stdout = String::from_utf8_lossy(&resolved.stdout);
    assert!(resolved.status.success(), "{resolved:?}");
    let resolved: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(resolved["version"], 1);
    let token = ED_1.sign(&claims("erin"));
    let verify = [
        "verify",
        "--tenant",
        "acme",
        "--audience",
        "api",
        "--json",
        &token,
    ];
    let verified = keyrelay(&[&verify[..], &mtls[..]].concat());
    assert!(verified.status.success(), "{verified:?}");

    assert!(!keyrelay(&[&["health"], &tls[..]].concat()).status.success());
    let plain = format!("http://{}", app.addr);
    let mismatched = keyrelay(&["health", "--server", &plain, "--ca-cert", &ca_pem]);
    assert!(
        String::from_utf8_lossy(&mismatched.stderr).contains("need an https:// endpoint"),
        "{mismatched:?}"
    );

    let verifier = Verifier::builder(server, "acme")
        .tls(presenting(&ca, &client))
        .connect()
        .await
        .expect("the SDK syncs over mutual TLS");
    let claims: serde_json::Value = verifier
        .verify(&token, &Expectations::new().audience("api"))
        .await
        .expect("valid");
    assert_eq!(claims["sub"], "erin");
}

#[tokio::test]
async fn the_mirror_moves_to_the_tls_port_and_metrics_stay_on_plain_http() {
    let (ca, _files, app) = serve_tls(None, &[]).await;
    register_okta(&app).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut http1 = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(http1)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/v1/jwks/acme/okta", app.addr.port());
    let response = client.get(url).send().await.expect("mirror over TLS");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["keys"][0]["kid"], "k1");

    assert_eq!(app.http_get("/v1/jwks/acme/okta").await.0, 404);
    assert_eq!(app.http_get("/metrics").await.0, 200);
}

#[tokio::test]
async fn a_reload_gives_new_connections_the_new_certificate_and_keeps_open_streams() {
    let (old_ca, files, app) = serve_tls(None, &[]).await;
    let new_ca = TestCa::new("new CA");
    let idp = register_okta(&app).await;
    let mut watch = app.watch(vec![selector("acme", "")], vec![]).await;
    watch.next_key_set().await;
    watch.expect_synced().await;

    files.install(&new_ca.leaf(SERVER_NAMES));
    app.tls.as_ref().unwrap().reload().await.expect("reloaded");

    let addr = app.addr.to_string();
    refused(
        health_over(&addr, Some(trusting(&old_ca))).await,
        "a new client trusting only the old CA",
    );
    let app = app.with_client_tls(trusting(&new_ca));
    app.register("acme", "auth0", &idp.jwks_url()).await;
    let set = watch.next_key_set().await;
    assert_eq!(
        (set.provider.as_str(), set.version),
        ("auth0", 1),
        "the stream opened before the reload goes on"
    );
    assert_reloads_counted(&app, "ok", 1).await;
}

#[tokio::test]
async fn a_broken_file_on_reload_keeps_the_old_certificate_and_counts_an_error() {
    let (ca, files, app) = serve_tls(None, &[]).await;
    files.write("cert.pem", "not a certificate\n");
    let error = app.tls.as_ref().unwrap().reload().await.unwrap_err();
    assert!(
        matches!(error, TlsError::NoCertificate { ref path } if path.ends_with("cert.pem")),
        "{error}"
    );

    health_over(&app.addr.to_string(), Some(trusting(&ca)))
        .await
        .expect("the old certificate still serves");
    assert_reloads_counted(&app, "error", 1).await;
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let (_old_ca, files, app) = serve_tls(None, &["--tls-reload-interval", "20ms"]).await;
    let new_ca = TestCa::new("new CA");
    let mut configs = app.tls.as_ref().unwrap().subscribe();
    configs.borrow_and_update();

    files.install(&new_ca.leaf(SERVER_NAMES));
    tokio::time::timeout(Duration::from_secs(10), configs.changed())
        .await
        .expect("reloaded within 10 s")
        .unwrap();
    health_over(&app.addr.to_string(), Some(trusting(&new_ca)))
        .await
        .expect("the new certificate serves");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_another_clients_handshake() {
    let (ca, _files, app) = serve_tls(None, &[]).await;
    // The start of a TLS record announcing 128 bytes that never come.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    silent
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .await
        .unwrap();

    health_over(&app.addr.to_string(), Some(trusting(&ca)))
        .await
        .expect("another client gets through");
    let mut buf = [0; 16];
    assert_eq!(
        silent.try_read(&mut buf).map_err(|err| err.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the silent client's handshake is still waiting"
    );
}

#[test]
fn the_binary_refuses_to_start_with_unusable_tls_files() {
    let ca = TestCa::new("keyrelay test CA");
    let files = ServerFiles::issued_by(&ca);
    files.write("key.pem", &ca.leaf(SERVER_NAMES).key_pem);
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", data_dir.path().to_str().unwrap()])
        .args(files.args(None))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run keyrelay serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("listener TLS: the private key in") && stderr.contains("key.pem"),
        "{stderr}"
    );
}

/// The lines a child process writes to stderr, as they come.
struct Log(mpsc::UnboundedReceiver<String>);

impl Log {
    fn of(stderr: impl std::io::Read + Send + 'static) -> Self {
        let (lines, receiver) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Self(receiver)
    }

    /// Waits for a line containing every one of `needles`.
    async fn wait_for(&mut self, needles: &[&str]) -> String {
        let found = async {
            while let Some(line) = self.0.recv().await {
                if needles.iter().all(|needle| line.contains(needle)) {
                    return line;
                }
            }
            panic!("the server exited before logging {needles:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), found)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needles:?} within 30 s"))
    }
}

// Multi-threaded: `kill` runs as a blocking child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_binary() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let files = ServerFiles::issued_by(&old_ca);
    let data_dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", &listen, "--http-listen", "127.0.0.1:0"])
        .args(["--data-dir", data_dir.path().to_str().unwrap()])
        .args(["--tls-reload-interval", "1h"])
        .args(files.args(None))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyrelay serve");
    let mut log = Log::of(child.stderr.take().unwrap());
    let server = Server(child);
    log.wait_for(&["keyrelay serving"]).await;
    health_over(&listen, Some(trusting(&old_ca))).await.unwrap();

    files.install(&new_ca.leaf(SERVER_NAMES));
    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
    log.wait_for(&["TLS configuration reloaded", "Signal"])
        .await;

    health_over(&listen, Some(trusting(&new_ca)))
        .await
        .expect("the new certificate serves");
    refused(
        health_over(&listen, Some(trusting(&old_ca))).await,
        "a new client trusting only the old CA",
    );
}
