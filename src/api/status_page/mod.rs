//! The status page for people, on the HTTP listener: `GET /` shows the fleet and every
//! provider the caller administers (state, version, keys, freshness, the next refresh,
//! failures and the last error), filtered by tenant, reloading itself. It needs an admin
//! token: sent as `Authorization: Bearer`, or given once to the login form (`POST /login`),
//! which sets an HttpOnly session cookie (`POST /logout` ends it). The page never shows a
//! token or the database URL, and its Content-Security-Policy allows nothing but its own
//! inline stylesheet.

mod render;
mod sessions;

use std::{net::IpAddr, sync::Arc};

use axum::{
    Form, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use maud::Markup;
use rand::RngCore;
use serde::Deserialize;

use super::auth_failures::{AuthFailures, Service};
use crate::{
    access::{AccessRegistry, AuthError, Principal},
    clock::Clock,
    cluster::Cluster,
    core::providers::Providers,
    domain::TenantId,
};
use render::View;
use sessions::{SESSION_TTL, Sessions};

/// The session cookie.
const COOKIE: &str = "keyrelay_session";

/// What the page reads and checks callers against.
pub struct StatusPage {
    /// The providers.
    pub providers: Arc<Providers>,
    /// The fleet.
    pub cluster: Arc<Cluster>,
    /// Who may log in.
    pub access: Arc<AccessRegistry>,
    /// Time for sessions, tokens and relative times.
    pub clock: Arc<dyn Clock>,
    /// Where failed logins are counted and limited.
    pub failures: Arc<AuthFailures>,
}

struct Shared {
    page: StatusPage,
    sessions: Sessions,
}

/// The page's routes.
pub fn router(page: StatusPage) -> Router {
    let shared = Arc::new(Shared {
        page,
        sessions: Sessions::default(),
    });
    Router::new()
        .route("/", get(show))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .with_state(shared)
}

/// `GET /?tenant=...`.
#[derive(Deserialize)]
struct Filter {
    tenant: Option<String>,
}

/// `POST /login`.
#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Who asks: a bearer token, or a session cookie.
enum Caller {
    Anonymous,
    Admin(Principal),
    Refused(StatusCode, &'static str),
}

impl Shared {
    fn caller(&self, request: &Parts) -> Caller {
        let now = self.page.clock.now();
        let client = super::http_client_ip(&request.extensions);
        if let Some(authorization) = request.headers.get(header::AUTHORIZATION) {
            return match self.page.access.caller(Some(authorization.as_bytes()), now) {
                Ok(Some(principal)) => self.admin_only(principal, client),
                Ok(None) => Caller::Anonymous,
                Err(err) => {
                    self.page
                        .failures
                        .failed(Service::StatusPage, err.kind(), client);
                    Caller::Refused(StatusCode::UNAUTHORIZED, "That token is not valid.")
                }
            };
        }
        let session = session_id(&request.headers)
            .and_then(|id| self.sessions.principal(id, now))
            .filter(|principal| self.page.access.still_accepts(principal, now));
        match session {
            Some(principal) => Caller::Admin(principal),
            None => Caller::Anonymous,
        }
    }

    fn admin_only(&self, principal: Principal, client: Option<IpAddr>) -> Caller {
        if principal.is_admin() {
            return Caller::Admin(principal);
        }
        self.page
            .failures
            .failed(Service::StatusPage, "verifier_token", client);
        Caller::Refused(
            StatusCode::FORBIDDEN,
            "Verifier tokens cannot see the status page; use an admin token.",
        )
    }

    async fn view_of(&self, caller: &Principal, tenant: Option<&TenantId>) -> Response {
        let now = self.page.clock.now();
        let tenant = tenant.or(caller.tenant_scope());
        let providers: Vec<_> = self
            .page
            .providers
            .list(tenant, None, usize::MAX)
            .providers
            .into_iter()
            .filter(|snapshot| caller.administers(snapshot.record.registration.key.tenant()))
            .collect();
        let fleet = match caller.administers_everything() {
            true => self.page.cluster.status(now).await.ok(),
            false => None,
        };
        let view = View {
            providers: &providers,
            fleet: fleet.as_ref(),
            tenant,
            now,
            actor: caller.actor(),
        };
        let nonce = nonce();
        respond(StatusCode::OK, &nonce, render::status(&nonce, &view))
    }
}

async fn show(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<Filter>,
    request: Parts,
) -> Response {
    let caller = match shared.caller(&request) {
        Caller::Admin(principal) => principal,
        Caller::Anonymous => return login_page(StatusCode::OK, None),
        Caller::Refused(status, problem) => return login_page(status, Some(problem)),
    };
    let tenant = match filter.tenant.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(tenant) => match TenantId::parse("tenant", tenant) {
            Ok(tenant) => Some(tenant),
            Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
        },
    };
    shared.view_of(&caller, tenant.as_ref()).await
}

async fn login(
    State(shared): State<Arc<Shared>>,
    request: Parts,
    Form(form): Form<Login>,
) -> Response {
    let page = &shared.page;
    let client = super::http_client_ip(&request.extensions);
    if let Err(wait) = page.failures.admit(Service::StatusPage, client) {
        let problem = format!(
            "Too many failed logins from this address; retry in {}s.",
            wait.as_secs().max(1)
        );
        return login_page(StatusCode::TOO_MANY_REQUESTS, Some(&problem));
    }
    let now = page.clock.now();
    let principal = match page.access.authenticate(form.token.trim(), now) {
        Some(principal) => principal,
        None => {
            page.failures
                .failed(Service::StatusPage, AuthError::Rejected.kind(), client);
            return login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid."));
        }
    };
    if let Caller::Refused(status, problem) = shared.admin_only(principal.clone(), client) {
        return login_page(status, Some(problem));
    }
    let session = shared.sessions.start(principal, now);
    let cookie = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    redirect_home(&cookie)
}

async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        shared.sessions.end(id);
    }
    redirect_home(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

fn redirect_home(cookie: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(cookie) = HeaderValue::from_str(cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The session id in the request's cookies.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|cookie| cookie.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let nonce = nonce();
    respond(status, &nonce, render::login(&nonce, problem))
}

/// The page with headers that keep it private and inert: no caching, no framing, no
/// script, no other origin; the stylesheet runs under `nonce` only.
fn respond(status: StatusCode, nonce: &str, markup: Markup) -> Response {
    let policy = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// A fresh CSP nonce.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD_NO_PAD.encode(bytes)
}
