//! The `keyrelay` binary end to end: a person starts the server on the embedded store, adds a
//! provider with the CLI (admin token read from the data directory), lists and resolves it.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
};

use keyrelay::clock::ManualClock;

use crate::{
    mock_idp::{Document, MockIdp},
    pki::TestCa,
};

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_keyrelay");

pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(server: &str, data_dir: &str, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .args(["--server", server, "--data-dir", data_dir])
        .env_remove("KEYRELAY_ADMIN_TOKEN")
        .env_remove("KEYRELAY_ACCESS_TOKEN")
        .output()
        .expect("run keyrelay")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `keyrelay serve` on the embedded store in `data`, once it reports serving: the process and
/// its gRPC endpoint.
async fn serve(data: &str) -> (Server, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data,
            "--dev-allow-http-loopback",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("KEYRELAY_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyrelay serve");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let seen = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("keyrelay serving"));
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        seen
    });
    assert!(
        ready.await.unwrap().is_some(),
        "server did not report serving"
    );

    (server, format!("http://{listen}"))
}

/// The README's memory limits assume small pages: the server turns transparent huge pages
/// off for its process whatever the host's setting (the kernel shows it in `THP_enabled`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_server_runs_with_transparent_huge_pages_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let (server, _) = serve(data_dir.path().to_str().unwrap()).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}

// Multi-threaded: the CLI runs as blocking child processes while the mock IdP must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_the_server_adds_a_provider_and_resolves_it() {
    let idp = MockIdp::start(ManualClock::new(chrono::Utc::now())).await;
    idp.serve_kids(&["k1"], Some("max-age=600"));
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let (server, endpoint) = serve(data).await;
    let added = stdout(&cli(
        &endpoint,
        data,
        &["providers", "add", "acme", "okta", &idp.jwks_url()],
    ));
    assert!(
        added.contains("acme/okta: READY (version 1, 1 keys)"),
        "{added}"
    );

    let listed = stdout(&cli(&endpoint, data, &["providers", "list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    assert_eq!(
        (listed["tenant"].as_str(), listed["state"].as_str()),
        (Some("acme"), Some("READY"))
    );

    let resolved = stdout(&cli(
        &endpoint,
        data,
        &["resolve", "acme", "okta", "--json"],
    ));
    let resolved: serde_json::Value = serde_json::from_str(resolved.trim()).unwrap();
    assert_eq!(resolved["version"], 1);
    assert_eq!(resolved["jwks"]["keys"][0]["kid"], "k1");

    let confined = cli(
        &endpoint,
        data,
        &[
            "providers",
            "add",
            "acme",
            "confined",
            &idp.jwks_url(),
            "--allowed-host",
            "idp.example.com",
        ],
    );
    assert!(!confined.status.success());
    let stderr = String::from_utf8_lossy(&confined.stderr);
    assert!(
        stderr.contains("is not in policy.allowed_hosts"),
        "{stderr}"
    );

    let mut two_algorithms = crate::mock_idp::jwks(&["k1", "k2"]);
    two_algorithms["keys"][1]["alg"] = serde_json::json!("PS256");
    idp.set_route(
        "/strict",
        Some(Document {
            body: two_algorithms.to_string(),
            ..Document::default()
        }),
    );
    let strict = stdout(&cli(
        &endpoint,
        data,
        &[
            "providers",
            "add",
            "acme",
            "strict",
            &idp.url("/strict"),
            "--allowed-algorithm",
            "PS256",
            "--require-kid",
        ],
    ));
    assert!(
        strict.contains(
            "skipped:      k1: algorithm RS256 is not in the provider's policy.allowed_algorithms"
        ),
        "{strict}"
    );
    let strict = stdout(&cli(
        &endpoint,
        data,
        &["providers", "get", "acme", "strict", "--json"],
    ));
    let strict: serde_json::Value = serde_json::from_str(strict.trim()).expect("one JSON line");
    assert_eq!(strict["skipped_keys"][0]["kind"], "algorithm_not_allowed");
    assert_eq!(
        strict["key_policy"],
        serde_json::json!({"allowed_algorithms": ["PS256"], "include_encryption_keys": false, "require_kid": true, "trust_anchors": []})
    );

    let (root, other) = (TestCa::new("Bank Root"), TestCa::new("Other Root"));
    let chained = serde_json::json!({"keys": [
        root.signing_jwk("by-root", (2099, 1, 1)),
        other.signing_jwk("by-other", (2099, 1, 1)),
    ]});
    idp.set_route(
        "/bank",
        Some(Document {
            body: chained.to_string(),
            ..Document::default()
        }),
    );
    let bundle = std::path::Path::new(data).join("anchors.pem");
    std::fs::write(&bundle, format!("{}{}", root.pem(), other.pem())).expect("write anchors");
    let bundle = bundle.to_string_lossy();
    let bank_url = idp.url("/bank");
    let add_bank = |anchors: &str| {
        let args = [
            "providers",
            "add",
            "acme",
            "bank",
            &bank_url,
            "--trust-anchor",
            anchors,
        ];
        cli(&endpoint, data, &args)
    };
    let bank = stdout(&add_bank(&bundle));
    assert!(bank.contains("(version 1, 2 keys)"), "{bank}");
    assert!(
        bank.contains("trust anchor: CN=Bank Root\n  trust anchor: CN=Other Root"),
        "one line per certificate of the file: {bank}"
    );
    let absent = std::path::Path::new(data).join("absent.pem");
    let absent = absent.to_string_lossy();
    let unreadable = add_bank(&absent);
    assert!(!unreadable.status.success());
    assert!(
        String::from_utf8_lossy(&unreadable.stderr).contains(&format!("cannot read {absent}")),
        "{}",
        String::from_utf8_lossy(&unreadable.stderr)
    );

    let missing = cli(&endpoint, data, &["providers", "get", "acme", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not registered"));

    let created = stdout(&cli(
        &endpoint,
        data,
        &[
            "tokens",
            "create",
            "--role",
            "verifier",
            "--tenant",
            "acme",
            "--description",
            "payments api",
            "--json",
        ],
    ));
    let created: serde_json::Value = serde_json::from_str(created.trim()).unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    let protected = stdout(&cli(
        &endpoint,
        data,
        &["tenant-access", "acme", "--require-verifier-token", "true"],
    ));
    assert!(
        protected.contains("acme: verifier token required"),
        "{protected}"
    );
    let anonymous = cli(&endpoint, data, &["resolve", "acme", "okta"]);
    assert!(!anonymous.status.success());
    let with_token = stdout(&cli(
        &endpoint,
        data,
        &["resolve", "acme", "okta", "--access-token", secret],
    ));
    assert!(with_token.contains("k1"), "{with_token}");
    stdout(&cli(&endpoint, data, &["tokens", "revoke", id]));
    let listed = stdout(&cli(
        &endpoint,
        data,
        &["tokens", "list", "--include-revoked", "--json"],
    ));
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert!(listed["revoked_at"].is_string(), "{listed}");
    let audit = stdout(&cli(
        &endpoint,
        data,
        &["audit", "--tenant", "acme", "--limit", "3"],
    ));
    let actions: Vec<&str> = audit
        .lines()
        .filter(|line| !line.starts_with(' '))
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        actions,
        ["token.revoke", "tenant.set_access", "token.create"],
        "{audit}"
    );

    let wrong_dir = tempfile::tempdir().unwrap();
    let no_token = cli(
        &endpoint,
        wrong_dir.path().to_str().unwrap(),
        &["providers", "list"],
    );
    assert!(!no_token.status.success());
    let said = String::from_utf8_lossy(&no_token.stderr);
    assert!(said.starts_with("error: no admin token: "), "{said}");
    assert_eq!(
        said.matches("No such file or directory").count(),
        1,
        "the cause is said once: {said}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_revokes_a_key_lists_it_and_reinstates_it() {
    let idp = MockIdp::start(ManualClock::new(chrono::Utc::now())).await;
    idp.serve_kids(&["k1", "k2"], Some("max-age=600"));
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let (_server, endpoint) = serve(data).await;
    stdout(&cli(
        &endpoint,
        data,
        &["providers", "add", "acme", "okta", &idp.jwks_url()],
    ));

    let revoked = stdout(&cli(
        &endpoint,
        data,
        &[
            "keys",
            "revoke",
            "acme",
            "okta",
            "k2",
            "--reason",
            "leaked in CI logs",
        ],
    ));
    assert_eq!(
        revoked.trim(),
        r#"revoked "k2" of acme/okta: withheld from every verifier (version 2)"#
    );
    let typo = stdout(&cli(
        &endpoint,
        data,
        &["keys", "revoke", "acme", "okta", "k9", "--reason", "typo"],
    ));
    assert!(typo.contains("check the kid for a typo"), "{typo}");

    let listed = stdout(&cli(&endpoint, data, &["keys", "list-revoked", "--json"]));
    let listed: Vec<serde_json::Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let kids: Vec<_> = listed.iter().map(|r| r["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k2", "k9"]);
    assert_eq!(listed[0]["reason"], "leaked in CI logs");
    assert_eq!(listed[0]["published_by_provider"], true);
    let shown = stdout(&cli(&endpoint, data, &["providers", "get", "acme", "okta"]));
    assert!(shown.contains(r#"revoked:      "k2" at "#), "{shown}");

    let resolved = stdout(&cli(
        &endpoint,
        data,
        &["resolve", "acme", "okta", "--json"],
    ));
    let resolved: serde_json::Value = serde_json::from_str(resolved.trim()).unwrap();
    assert_eq!(resolved["jwks"]["keys"].as_array().unwrap().len(), 1);

    let reinstated = stdout(&cli(
        &endpoint,
        data,
        &["keys", "reinstate", "acme", "okta", "k2"],
    ));
    assert_eq!(
        reinstated.trim(),
        r#"reinstated "k2" of acme/okta: served again (version 3)"#
    );
    let again = cli(
        &endpoint,
        data,
        &["keys", "reinstate", "acme", "okta", "k2"],
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(r#"is not revoked (revoked: "k9")"#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_a_provider_by_issuer_and_sees_what_was_discovered() {
    let idp = MockIdp::start(ManualClock::new(chrono::Utc::now())).await;
    let issuer = idp.url("");
    let metadata = serde_json::json!({"issuer": issuer, "jwks_uri": idp.jwks_url()});
    idp.set_route(
        "/.well-known/openid-configuration",
        Some(Document {
            body: metadata.to_string(),
            ..Document::default()
        }),
    );
    idp.serve_kids(&["k1"], Some("max-age=600"));
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let (_server, endpoint) = serve(data).await;
    let args = [
        "providers",
        "add",
        "acme",
        "okta",
        "--issuer",
        issuer.as_str(),
    ];
    let added = stdout(&cli(&endpoint, data, &args));
    assert!(
        added.contains("acme/okta: READY (version 1, 1 keys)"),
        "{added}"
    );
    assert!(
        added.contains(&format!("issuer:       {issuer}")),
        "{added}"
    );
    assert!(
        added.contains(&format!(
            "discovered:   {} (openid-configuration)",
            idp.jwks_url()
        )),
        "{added}"
    );

    let got = stdout(&cli(
        &endpoint,
        data,
        &["providers", "get", "acme", "okta", "--json"],
    ));
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("one JSON line");
    assert_eq!(got["issuer"], serde_json::json!(issuer));
    assert_eq!(
        got["discovery"]["jwks_uri"],
        serde_json::json!(idp.jwks_url())
    );

    let both = cli(
        &endpoint,
        data,
        &[
            "providers",
            "add",
            "acme",
            "okta",
            &idp.jwks_url(),
            "--issuer",
            &issuer,
        ],
    );
    assert!(
        !both.status.success(),
        "a JWKS URL and an issuer together are refused"
    );
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_pushes_key_sets_for_a_provider_without_a_url() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    let (_server, endpoint) = serve(data).await;
    let added = stdout(&cli(
        &endpoint,
        data,
        &["providers", "add", "acme", "internal", "--pushed"],
    ));
    assert!(
        added.contains("acme/internal: PENDING (version 0, 0 keys)\n  url:          (pushed)\n"),
        "{added}"
    );
    let file = data_dir.path().join("keys.json");
    std::fs::write(&file, crate::mock_idp::jwks(&["k1"]).to_string()).unwrap();
    let file = file.to_str().unwrap();
    let args = ["providers", "publish", "acme", "internal", file];
    let published = stdout(&cli(&endpoint, data, &args));
    assert!(published.starts_with("published\n"), "{published}");
    assert!(
        published.contains("acme/internal: READY (version 1, 1 keys)"),
        "{published}"
    );
    let again = stdout(&cli(&endpoint, data, &args));
    assert!(again.starts_with("unchanged"), "{again}");
    let got = stdout(&cli(
        &endpoint,
        data,
        &["providers", "get", "acme", "internal", "--json"],
    ));
    let got: serde_json::Value = serde_json::from_str(got.trim()).expect("one JSON line");
    assert_eq!(
        (got["pushed"].as_bool(), got["jwks_url"].as_str()),
        (Some(true), Some(""))
    );

    std::fs::write(data_dir.path().join("keys.json"), "{}").unwrap();
    let refused = cli(&endpoint, data, &args);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "error: Client specified an invalid argument: key set for acme/internal refused: response has no \"keys\" array\n",
        "one line, the cause said once"
    );
}
