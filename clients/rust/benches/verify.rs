//! `verify()` of the Rust SDK against bare `jsonwebtoken::decode` on the same tokens, in one run
//! (a bench, not a test; `scripts/bench_sdks.sh` runs it with the other SDKs' benches):
//!
//! ```sh
//! KEYRELAY_BIN=target/debug/keyrelay KEYRELAY_BENCH_FIXTURE=fixture.json \
//!   KEYRELAY_BENCH_OUT=results.json cargo bench -p keyrelay-verifier --bench verify
//! ```
//!
//! The fixture (`clients/python/bench/fixture.py`) holds the keys and tokens. The bench starts
//! `KEYRELAY_BIN` on 127.0.0.1 (embedded store in a temporary directory), serves the fixture's
//! JWKS documents from a local IdP, registers them, and connects a [`Verifier`], which then holds
//! the keys keyrelay pushed. For each algorithm it times, in `ROUNDS` rounds (41) of
//! `BATCH_SECONDS` (0.1) each, the order alternating from one round to the next:
//!
//! - `Verifier::verify` on the held keys;
//! - `verify_with_key_set` on the JWKS document (which it parses on every call);
//! - bare `jsonwebtoken::decode` with a `DecodingKey` built once and a `Validation` made once
//!   with the checks the SDK makes (issuer, audience, `exp` and `nbf` with 60 s of leeway).
//!
//! Each verification runs after the previous one, on one thread. The ratio of a round is the
//! SDK's rate over jsonwebtoken's in that round; the results are the medians over the rounds.
//! Then the memory of held key sets: the resident memory (VmRSS) a `Verifier` holding N sets
//! adds, less that of one holding a single set, over N - 1; and, as a lower bound, the bytes of
//! the held structures themselves, counted from their sizes and string lengths.

use std::{
    collections::HashMap,
    hint::black_box,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{
    DecodingKey, Validation, decode, decode_header,
    jwk::{AlgorithmParameters, Jwk},
};
use keyrelay_verifier::{
    Expectations, ProviderKeys, Verifier,
    proto::{RegisterProviderRequest, admin_service_client::AdminServiceClient},
    verify_with_key_set,
};
use serde_json::{Value, json};
use tonic::{Request, transport::Channel};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// `name` from the environment, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `keyrelay serve` as a child process, killed (and its data removed) when dropped.
struct Server {
    child: Child,
    data_dir: PathBuf,
    grpc_port: u16,
}

impl Server {
    fn start(binary: &Path) -> Self {
        let grpc_port = free_port();
        let http_port = free_port();
        let data_dir =
            std::env::temp_dir().join(format!("keyrelay-rs-bench-{}", std::process::id()));
        std::fs::create_dir_all(&data_dir).expect("create the data directory");
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--admin-token", ADMIN_TOKEN, "--dev-allow-http-loopback"])
            .args(["--shutdown-grace", "1s", "--data-dir"])
            .arg(&data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, _) in std::env::vars() {
            if name.starts_with("KEYRELAY_") || name.starts_with("OTEL_") || name == "DATABASE_URL"
            {
                command.env_remove(name);
            }
        }
        let server = Server {
            child: command.spawn().expect("start keyrelay"),
            data_dir,
            grpc_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(http_port) {
            assert!(Instant::now() < deadline, "keyrelay not ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Whether keyrelay's /readyz answers 200.
fn ready(http_port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", http_port)) else {
        return false;
    };
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// JWKS documents at fixed paths on 127.0.0.1, one thread per connection; returns the base URL.
fn static_idp(documents: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the IdP");
    let base = format!("http://{}", listener.local_addr().expect("IdP address"));
    let documents = Arc::new(documents);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let documents = Arc::clone(&documents);
            std::thread::spawn(move || answer(stream, &documents));
        }
    });
    base
}

fn answer(mut stream: TcpStream, documents: &HashMap<String, Vec<u8>>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
        line.clear();
    }
    let path = first.split(' ').nth(1).unwrap_or("");
    let response = match documents.get(path) {
        Some(body) => {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Cache-Control: public, max-age=3600\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(body);
            response
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&response);
}

/// Registers every (tenant, provider, url), eight at a time.
async fn register_all(endpoint: &str, sets: Vec<(String, String, String)>) {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to keyrelay");
    let sets = Arc::new(sets);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (sets, next) = (Arc::clone(&sets), Arc::clone(&next));
        let mut admin = AdminServiceClient::new(channel.clone());
        workers.spawn(async move {
            while let Some((tenant, provider, url)) = sets.get(next.fetch_add(1, Ordering::SeqCst))
            {
                let mut request = Request::new(RegisterProviderRequest {
                    tenant: tenant.clone(),
                    provider: provider.clone(),
                    jwks_url: url.clone(),
                    policy: None,
                    ..Default::default()
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {ADMIN_TOKEN}").parse().expect("metadata"),
                );
                let registered = admin
                    .register_provider(request)
                    .await
                    .expect("register a provider")
                    .into_inner();
                let version = registered
                    .provider
                    .and_then(|p| p.status)
                    .map_or(0, |s| s.version);
                assert!(version >= 1, "first fetch of {url} failed");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a registration worker");
    }
}

/// Runs n verifications.
type Batch<'a> = Box<dyn FnMut(u64) + 'a>;

/// Verifications per second of each variant (the last is the bare library), per round.
fn compare(variants: &mut [(&str, Batch<'_>)], rounds: usize, seconds: f64) -> Vec<Vec<f64>> {
    let bare = variants.len() - 1;
    let mut n = 16u64;
    let n = loop {
        let started = Instant::now();
        (variants[bare].1)(n);
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= 0.05 {
            break ((n as f64 * seconds / elapsed) as u64).max(16);
        }
        n *= 2;
    };
    for (_, run) in variants.iter_mut() {
        run((n / 10).max(1));
    }
    let mut rates = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..variants.len()).collect()
        } else {
            (0..variants.len()).rev().collect()
        };
        for index in order {
            let started = Instant::now();
            (variants[index].1)(n);
            rates[index].push(n as f64 / started.elapsed().as_secs_f64());
        }
    }
    rates
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn rows_of(names: &[&str], rates: &[Vec<f64>], alg: &str, library: &str, note: &str) -> Vec<Value> {
    let bare = &rates[rates.len() - 1];
    names
        .iter()
        .zip(rates)
        .take(rates.len() - 1)
        .map(|(name, values)| {
            let ratios: Vec<f64> = values.iter().zip(bare).map(|(s, b)| s / b).collect();
            json!({
                "sdk": "Rust",
                "path": format!("{name}{note}"),
                "alg": alg,
                "bare": library,
                "sdk_ops": median(values),
                "bare_ops": median(bare),
                "ratio": median(&ratios),
                "ratio_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
                "ratio_max": ratios.iter().copied().fold(0.0, f64::max),
                "rounds": values.len(),
            })
        })
        .collect()
}

/// Resident memory of this process, in bytes.
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// A lower bound of the heap bytes one held set takes: its `Arc<ProviderKeys>`, its entry in the
/// verifier's map (provider name, pointer), the keys (`Jwk`s and their strings) and each key's
/// `alg` as written, with no allocator overhead and no spare capacity.
fn structure_bytes(keys: &ProviderKeys) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let arc = 2 * size_of::<usize>() + size_of::<ProviderKeys>();
    let entry = size_of::<String>() + size_of::<usize>() + 1 + 2 * keys.provider.len();
    let jwks: usize = keys
        .keys
        .keys
        .iter()
        .map(|jwk: &Jwk| {
            let common = &jwk.common;
            let material = match &jwk.algorithm {
                AlgorithmParameters::RSA(rsa) => rsa.n.len() + rsa.e.len(),
                AlgorithmParameters::EllipticCurve(ec) => ec.x.len() + ec.y.len(),
                AlgorithmParameters::OctetKeyPair(okp) => okp.x.len(),
                _ => 0,
            };
            let named_alg = match (&common.key_id, &common.key_algorithm) {
                (Some(kid), Some(alg)) => {
                    2 * size_of::<String>() + 1 + kid.len() + format!("{alg:?}").len()
                }
                _ => 0,
            };
            size_of::<Jwk>() + string(&common.key_id) + material + named_alg
        })
        .sum();
    arc + entry + jwks
}

struct Fixture {
    value: Value,
}

impl Fixture {
    fn str(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{pointer} in the fixture"))
    }

    fn list(&self, pointer: &str) -> &Vec<Value> {
        self.value
            .pointer(pointer)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{pointer} in the fixture"))
    }

    /// The JWK with `kid` in the JWKS document `jwks`.
    fn jwk(jwks: &Value, kid: &str) -> Jwk {
        let key = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|key| key["kid"] == kid))
            .unwrap_or_else(|| panic!("key {kid} in the fixture"));
        serde_json::from_value(key.clone()).expect("a JWK")
    }
}

fn main() {
    let binary = PathBuf::from(
        std::env::var("KEYRELAY_BIN").unwrap_or_else(|_| "../../target/debug/keyrelay".into()),
    );
    let fixture_path = std::env::var("KEYRELAY_BENCH_FIXTURE")
        .expect("KEYRELAY_BENCH_FIXTURE: the fixture (clients/python/bench/fixture.py)");
    let out = std::env::var("KEYRELAY_BENCH_OUT").ok();
    let rounds: usize = env_or("ROUNDS", 41);
    let seconds: f64 = env_or("BATCH_SECONDS", 0.1);
    let fixture = Fixture {
        value: serde_json::from_slice(&std::fs::read(&fixture_path).expect("read the fixture"))
            .expect("the fixture is JSON"),
    };
    let (issuer, audience) = (fixture.str("/issuer"), fixture.str("/audience"));
    let library = "jsonwebtoken 11 (rust_crypto)";
    let bench_jwks = &fixture.value["bench"]["jwks"];
    let providers: Vec<String> = fixture
        .list("/memory/providers")
        .iter()
        .map(|p| p.as_str().expect("a provider name").to_owned())
        .collect();
    let memory_jwks = fixture.list("/memory/jwks");

    let mut documents = HashMap::new();
    documents.insert(
        "/bench.json".to_owned(),
        serde_json::to_vec(bench_jwks).unwrap(),
    );
    for (provider, jwks) in providers.iter().zip(memory_jwks) {
        documents.insert(
            format!("/{provider}.json"),
            serde_json::to_vec(jwks).unwrap(),
        );
    }
    let idp = static_idp(documents);
    let server = Server::start(&binary);
    let endpoint = server.endpoint();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let (bench_tenant, memory_tenant, single_tenant) = (
        fixture.str("/bench/tenant"),
        fixture.str("/memory/tenant"),
        fixture.str("/memory/single_tenant"),
    );
    let started = Instant::now();
    let mut sets = vec![(
        bench_tenant.to_owned(),
        fixture.str("/bench/provider").to_owned(),
        format!("{idp}/bench.json"),
    )];
    sets.extend(providers.iter().map(|provider| {
        (
            memory_tenant.to_owned(),
            provider.clone(),
            format!("{idp}/{provider}.json"),
        )
    }));
    sets.push((
        single_tenant.to_owned(),
        providers[0].clone(),
        format!("{idp}/{}.json", providers[0]),
    ));
    let registered = sets.len();
    runtime.block_on(register_all(&endpoint, sets));
    println!(
        "rust: {registered} providers registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let connect = |tenant: &str| {
        runtime
            .block_on(
                Verifier::builder(endpoint.clone(), tenant)
                    .first_sync_timeout(Duration::from_secs(60))
                    .connect(),
            )
            .expect("the verifier connects")
    };
    let verifier = connect(bench_tenant);
    let expected = Expectations::new().issuer(issuer).audience(audience);
    let jwks_bytes = serde_json::to_vec(bench_jwks).unwrap();
    let mut rows = Vec::new();
    let tokens = fixture.value["tokens"].as_object().expect("tokens");
    for (alg_name, token) in tokens {
        let token = token.as_str().expect("a token");
        let header = decode_header(token).expect("a token header");
        let kid = header.kid.expect("a kid");
        let key = DecodingKey::from_jwk(&Fixture::jwk(bench_jwks, &kid)).expect("a key");
        let validation = bare_validation(header.alg, issuer, audience);
        let claims = decode::<Value>(token, &key, &validation)
            .expect("bare verifies")
            .claims;
        let sdk: Value = runtime
            .block_on(verifier.verify(token, &expected))
            .expect("the SDK verifies");
        assert_eq!(sdk, claims);
        let offline: Value = verify_with_key_set(token, &jwks_bytes, &expected).expect("verifies");
        assert_eq!(offline, claims);
        let names = ["Verifier::verify", "verify_with_key_set", "bare"];
        let mut variants: Vec<(&str, Batch<'_>)> = vec![
            (
                names[0],
                Box::new(|n| {
                    runtime.block_on(async {
                        for _ in 0..n {
                            let claims: Value =
                                verifier.verify(token, &expected).await.expect("verifies");
                            black_box(claims);
                        }
                    })
                }),
            ),
            (
                names[1],
                Box::new(|n| {
                    for _ in 0..n {
                        let claims: Value =
                            verify_with_key_set(token, &jwks_bytes, &expected).expect("verifies");
                        black_box(claims);
                    }
                }),
            ),
            (names[2], bare_batch(token, &key, &validation)),
        ];
        let rates = compare(&mut variants, rounds, seconds);
        rows.extend(rows_of(&names, &rates, alg_name, library, ""));
    }

    let n = providers.len();
    let before = rss();
    let single = connect(single_tenant);
    let one = rss() - before;
    let before = rss();
    let many = connect(memory_tenant);
    let held = rss() - before;
    let status = many.status();
    assert_eq!(status.providers.len(), n, "not every key set arrived");
    let structure = status.providers.iter().map(structure_bytes).sum::<usize>() as f64 / n as f64;
    rows.push(json!({
        "sdk": "Rust",
        "kind": "memory",
        "sets": n,
        "keys_per_set": 2,
        "bytes_per_set": (held - one) as f64 / (n - 1) as f64,
        "structure_bytes_per_set": structure,
        "verifier_one_set": one,
        "verifier_all_sets": held,
        "method": "VmRSS: (with N sets - with 1 set) / (N - 1); structure: sizes and string lengths",
    }));

    let memory_token = fixture.str("/memory/token");
    let header = decode_header(memory_token).expect("a token header");
    let index = providers
        .iter()
        .position(|p| p == fixture.str("/memory/token_provider"))
        .expect("the token's provider");
    let key = DecodingKey::from_jwk(&Fixture::jwk(
        &memory_jwks[index],
        &header.kid.expect("a kid"),
    ))
    .expect("a key");
    let validation = bare_validation(header.alg, issuer, audience);
    let names = ["Verifier::verify", "bare"];
    let mut variants: Vec<(&str, Batch<'_>)> = vec![
        (
            names[0],
            Box::new(|n| {
                runtime.block_on(async {
                    for _ in 0..n {
                        let claims: Value = many
                            .verify(memory_token, &expected)
                            .await
                            .expect("verifies");
                        black_box(claims);
                    }
                })
            }),
        ),
        (names[1], bare_batch(memory_token, &key, &validation)),
    ];
    let rates = compare(&mut variants, rounds, seconds);
    let note = format!(", {n} sets held");
    rows.extend(rows_of(
        &names,
        &rates,
        fixture.str("/memory/token_alg"),
        library,
        &note,
    ));
    drop(variants);
    drop((single, many, verifier));
    drop(server);

    let meta = json!({
        "sdk": "Rust",
        "kind": "meta",
        "runtime": format!("release profile, {}", std::env::consts::ARCH),
        "library": library,
        "rounds": rounds,
        "seconds_per_batch": seconds,
        "clock": "wall",
    });
    for row in &rows {
        if row["kind"] == "memory" {
            println!(
                "rust: {:.0} B per key set held by RSS, {:.0} B counted in the structure ({n} sets)",
                row["bytes_per_set"].as_f64().unwrap_or(0.0),
                row["structure_bytes_per_set"].as_f64().unwrap_or(0.0)
            );
        } else {
            println!(
                "rust: {:<34} {:<6} {:>8.0}/s bare {:>8.0}/s ratio {:.3} ({:.2}-{:.2})",
                row["path"].as_str().unwrap_or(""),
                row["alg"].as_str().unwrap_or(""),
                row["sdk_ops"].as_f64().unwrap_or(0.0),
                row["bare_ops"].as_f64().unwrap_or(0.0),
                row["ratio"].as_f64().unwrap_or(0.0),
                row["ratio_min"].as_f64().unwrap_or(0.0),
                row["ratio_max"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(out) = out {
        let mut all = vec![meta];
        all.extend(rows);
        std::fs::write(&out, serde_json::to_vec_pretty(&all).unwrap()).expect("write the results");
    }
}

/// The checks the SDK makes, as a `Validation` made once: the algorithm, issuer and audience
/// (both required), `exp` (required) and `nbf`, with 60 s of leeway.
fn bare_validation(alg: jsonwebtoken::Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = 60;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

fn bare_batch<'a>(token: &'a str, key: &'a DecodingKey, validation: &'a Validation) -> Batch<'a> {
    Box::new(move |n| {
        for _ in 0..n {
            let claims = decode::<Value>(token, key, validation).expect("verifies");
            black_box(claims.claims);
        }
    })
}
