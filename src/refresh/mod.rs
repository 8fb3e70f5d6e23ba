//! Keeping every provider's keys fresh: one flight per provider at a time, discovering the
//! JWKS URL of providers registered by issuer, how a fetch result changes the record, freshness and backoff, the scheduler with its time-ordered queue, and
//! the timer that announces keys turning stale.

pub mod discovery;
pub mod due_queue;
pub mod flights;
pub mod freshness;
pub mod outcome;
pub mod scheduler;
pub mod staleness;

pub use flights::{FlightResult, RefreshError, Refresher, RefresherParts};

#[cfg(test)]
pub(crate) mod testing;
