//! What keyrelay holds about providers, in memory: the provider record (registration, key
//! set, validators, refresh status), a snapshot of it at one instant, and the cache every
//! read is served from, with its feed of changes.

pub mod cache;
mod cached_response;
pub mod collector;
pub mod record;
mod snapshot;

pub use cached_response::CachedResponse;
pub use snapshot::Snapshot;
