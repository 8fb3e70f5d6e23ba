//! Fuzzes request validation at the gRPC edge: arbitrary bytes decoded as RegisterProvider,
//! Resolve and WatchKeys requests and parsed into domain values must be refused with an
//! error, never a panic, and anything accepted must satisfy the documented bounds.
#![no_main]

use keyrelay::{
    cache::KeyCache,
    convert,
    domain::{EgressRules, Kid, ProviderKey},
    proto::v1 as pb,
    watch::{WatchRequest, limits},
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
});
