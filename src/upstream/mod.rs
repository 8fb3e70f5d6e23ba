//! Talking to identity providers: the JWKS fetcher (deadlines, streamed size cap, redirects
//! re-checked, HTTP cache semantics), the guarded DNS resolver that enforces the egress rules,
//! and the TLS client configuration (extra CA, SPKI pins).

pub mod dns;
pub mod fetch;
pub mod tls;
