//! Fuzzes request validation at the gRPC edge: arbitrary bytes decoded as RegisterProvider,
//! Resolve, WatchKeys, CreateToken and RevokeToken requests and parsed into domain values,
//! and presented as `authorization` metadata, must be refused with an error, never a panic;
//! anything accepted must satisfy the documented bounds.
#![no_main]

use keyrelay::{
    access::{AccessRegistry, AccessState, Principal, TokenId},
    access::admin_token::AdminToken,
    state::cache::KeyCache,
    clock::{Clock, SystemClock},
    api::convert,
    domain::{EgressRules, Kid, ProviderKey},
    proto::v1 as pb,
    api::watch::{WatchRequest, limits},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::RegisterProviderRequest::decode(data) {
        let production = EgressRules::default();
        if let Ok(registration) = convert::new_registration(request, &production) {
            assert_eq!(registration.url.as_url().scheme(), "https");
        }
    }
    if let Ok(request) = pb::ResolveRequest::decode(data) {
        let _ = ProviderKey::parse(&request.tenant, &request.provider);
        if let Some(kid) = &request.kid {
            let _ = Kid::parse(kid);
        }
    }
    if let Ok(request) = pb::WatchKeysRequest::decode(data) {
        let cache = KeyCache::with_records([]);
        if let Ok(parsed) = WatchRequest::parse(&request, &cache) {
            let selected = parsed.tenants.len() + parsed.providers.len();
            assert!(selected <= limits::MAX_SELECTORS);
            assert!(parsed.providers.len() <= limits::MAX_UNKNOWN_PROVIDERS);
        }
    }
    if let Ok(request) = pb::CreateTokenRequest::decode(data) {
        if let Ok(parsed) = convert::token_request(request) {
            assert!(!parsed.description.is_empty() && parsed.description.chars().count() <= 200);
        }
    }
    if let Ok(request) = pb::RevokeTokenRequest::decode(data) {
        if let Ok(id) = TokenId::parse(&request.id) {
            assert_eq!(id.as_str().len(), 16);
        }
    }
    if let Some(admin) = AdminToken::new("fuzz-admin-token") {
        let registry = AccessRegistry::new(admin, AccessState::default());
        if let Ok(Some(caller)) = registry.caller(Some(data), SystemClock.now()) {
            assert_eq!(caller, Principal::ServerAdmin);
            let presented = data.strip_prefix(b"Bearer ").map(std::str::from_utf8);
            assert_eq!(presented.map(|p| p.map(str::trim)), Some(Ok("fuzz-admin-token")));
        }
    }
});
