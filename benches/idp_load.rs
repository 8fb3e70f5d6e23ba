//! IdP load: verifiers polling the identity provider themselves against the same verifiers on
//! keyrelay (run with `cargo bench --bench idp_load`).
//!
//! VERIFIERS verifiers each need a tenant's keys. Directly, each polls the JWKS every
//! INTERVAL_SECS and refetches at once on an unknown kid (at most once per interval), the way
//! jose, jwx and keyfunc work. On keyrelay, each holds a `keyrelay-verifier` stream and
//! keyrelay refreshes the provider every INTERVAL_SECS (the key lifetime). Over WINDOW_SECS
//! the bench counts the IdP's requests; then it rotates a new key in, hands every verifier a
//! token signed with it, and measures how long each takes to accept it.

#[allow(dead_code)]
mod support;

use support::{TOKEN, env_or, free_port};

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use keyrelay::proto::v1 as pb;
use keyrelay_verifier::{Expectations, Verifier};
use serde_json::{Value, json};
use tonic::Request;

const OLD_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGU0ZA4nd57WJxsUZM/iR4fnh60njuVi2Bz2OW9VJjFA\n-----END PRIVATE KEY-----\n";
const NEW_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKToznNCFzcr5w3jtnurvbSWIl7Uf/UlIrZTci+R94/I\n-----END PRIVATE KEY-----\n";

fn key(kid: &str, x: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": x})
}

fn old_key() -> Value {
    key("old", "uV8nFHuNEdTc6Kxy_kqz3Xtg8JZstNh5Xjh15ErYpY4")
}

fn new_key() -> Value {
    key("new", "v0Hndat-_5tbx31fAFaUqQlze6kikC3v8CSucFw9pm8")
}

fn token(kid: &str, pem: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "bench", "exp": now + 600});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

struct Idp {
    url: String,
    requests: Arc<AtomicU64>,
    keys: Arc<Mutex<Vec<Value>>>,
}

async fn idp() -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let keys = Arc::new(Mutex::new(vec![old_key()]));
    let (counted, served) = (Arc::clone(&requests), Arc::clone(&keys));
    let app = Router::new().route(
        "/jwks",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            json!({ "keys": *served.lock().unwrap() }).to_string()
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Idp {
        url,
        requests,
        keys,
    }
}

/// A verifier that polls the IdP itself.
struct Poller {
    keys: Mutex<Option<JwkSet>>,
    last_fetch: Mutex<Instant>,
}

impl Poller {
    async fn fetch(&self, url: &str) {
        if let Ok(response) = reqwest::get(url).await
            && let Ok(body) = response.bytes().await
            && let Ok(set) = serde_json::from_slice::<JwkSet>(&body)
        {
            *self.keys.lock().unwrap() = Some(set);
            *self.last_fetch.lock().unwrap() = Instant::now();
        }
    }

    async fn verify(&self, token: &str, url: &str, interval: Duration) -> bool {
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let found = |poller: &Self| {
            poller
                .keys
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|s| s.find(&kid).cloned())
        };
        let mut jwk = found(self);
        if jwk.is_none() && self.last_fetch.lock().unwrap().elapsed() >= interval {
            self.fetch(url).await;
            jwk = found(self);
        }
        let Some(jwk) = jwk else { return false };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .is_ok()
    }
}

/// How long each verifier took to accept `token` (trying every 10 ms).
async fn time_to_accept<F, Fut>(count: usize, verify: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let tries = (0..count).map(|i| {
        let verify = &verify;
        async move {
            while !verify(i).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            start.elapsed()
        }
    });
    let mut times = futures::future::join_all(tries).await;
    times.sort();
    times
}

fn describe(times: &[Duration]) -> String {
    format!(
        "first {:.1?}, median {:.1?}, last {:.1?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    )
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let verifiers = env_or::<usize>("VERIFIERS", 50);
    let interval = Duration::from_secs(env_or("INTERVAL_SECS", 2));
    let window = Duration::from_secs(env_or("WINDOW_SECS", 20));
    println!("{verifiers} verifiers, key refresh every {interval:?}, counted over {window:?}:");

    // Direct polling.
    let direct = idp().await;
    let pollers: Arc<Vec<Poller>> = Arc::new(
        (0..verifiers)
            .map(|_| Poller {
                keys: Mutex::new(None),
                last_fetch: Mutex::new(Instant::now()),
            })
            .collect(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    for (i, _) in pollers.iter().enumerate() {
        let (pollers, url, stop) = (Arc::clone(&pollers), direct.url.clone(), stop.clone());
        let offset = interval.mul_f64(i as f64 / verifiers as f64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            while tokio::select! { _ = tick.tick() => true, () = stop.cancelled() => false } {
                pollers[i].fetch(&url).await;
            }
        });
    }
    tokio::time::sleep(interval * 2).await;
    let before = direct.requests.load(Ordering::SeqCst);
    tokio::time::sleep(window).await;
    let polled = direct.requests.load(Ordering::SeqCst) - before;
    direct.keys.lock().unwrap().push(new_key());
    let rotated_token = token("new", NEW_PEM);
    let before_rotation = direct.requests.load(Ordering::SeqCst);
    let times = time_to_accept(verifiers, |i| {
        let (pollers, url, token) = (
            Arc::clone(&pollers),
            direct.url.clone(),
            rotated_token.clone(),
        );
        async move { pollers[i].verify(&token, &url, interval).await }
    })
    .await;
    let rotation_requests = direct.requests.load(Ordering::SeqCst) - before_rotation;
    stop.cancel();
    let per_hour = |count: u64| count as f64 * 3600.0 / window.as_secs_f64();
    println!(
        "  polling directly: {polled} IdP requests ({:.0}/hour); new key accepted: {}; {rotation_requests} IdP requests during the rotation",
        per_hour(polled),
        describe(&times)
    );

    // On keyrelay.
    let relayed = idp().await;
    let port = free_port();
    let data_dir = tempfile::tempdir().unwrap();
    let default_ttl = format!("{}s", interval.as_secs());
    let server = support::keyrelay(
        port,
        data_dir.path(),
        &[
            "--min-ttl",
            "1s",
            "--default-ttl",
            &default_ttl,
            "--refresh-early",
            "1s",
            "--unknown-kid-cooldown",
            "1s",
        ],
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = loop {
        match tonic::transport::Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            Ok(request)
        },
    );
    let register = pb::RegisterProviderRequest {
        tenant: "bench".into(),
        provider: "idp".into(),
        jwks_url: relayed.url.clone(),
        policy: None,
        ..Default::default()
    };
    admin.register_provider(register).await.unwrap();
    let mut sdk = Vec::new();
    for _ in 0..verifiers {
        sdk.push(
            Verifier::builder(endpoint.clone(), "bench")
                .connect()
                .await
                .expect("verifier connects"),
        );
    }
    let old_token = token("old", OLD_PEM);
    for verifier in &sdk {
        verifier
            .verify::<Value>(&old_token, &Expectations::new())
            .await
            .expect("old key verifies");
    }
    let before = relayed.requests.load(Ordering::SeqCst);
    tokio::time::sleep(window).await;
    let relayed_count = relayed.requests.load(Ordering::SeqCst) - before;
    relayed.keys.lock().unwrap().push(new_key());
    let before_rotation = relayed.requests.load(Ordering::SeqCst);
    let sdk = Arc::new(sdk);
    let times = time_to_accept(verifiers, |i| {
        let (sdk, token) = (Arc::clone(&sdk), rotated_token.clone());
        async move {
            sdk[i]
                .verify::<Value>(&token, &Expectations::new())
                .await
                .is_ok()
        }
    })
    .await;
    let rotation_requests = relayed.requests.load(Ordering::SeqCst) - before_rotation;
    println!(
        "  on keyrelay:      {relayed_count} IdP requests ({:.0}/hour); new key accepted: {}; {rotation_requests} IdP requests during the rotation",
        per_hour(relayed_count),
        describe(&times)
    );
    drop(server);
}
