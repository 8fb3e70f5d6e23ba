//! The service core, independent of gRPC and HTTP: the operations on providers (register,
//! unregister, inspect, refresh, resolve, revoke keys, take pushed key sets) and on access
//! control, their error type, and the per-client failure limiter both use.

pub mod access;
pub mod error;
pub mod failure_limiter;
pub mod providers;
pub mod pushed;
pub mod revocation;
