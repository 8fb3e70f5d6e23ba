//! keyrelay: a central JWKS key-distribution service.
//!
//! Identity providers' key sets are fetched once for the whole fleet (HTTP-cache aware,
//! conditional, size- and time-bounded), stored durably, held in memory and served to
//! verifiers over gRPC. The binary (`main.rs`) only parses the command line; everything
//! lives here so that tests drive the very same code.
//!
//! # Layout
//!
//! Subsystems are folders; each depends only on the ones listed after it (the test command
//! checks this with `scripts/check_layers.py`).
//!
//! - [`cli`]: the command line: `serve`, `migrate`, and the client commands for people.
//! - [`server`]: building and running the server: configuration, storage, fleet, services,
//!   the gRPC and HTTP listeners (with their TLS), background tasks and shutdown.
//! - [`api`]: the edges: gRPC handlers and interceptors, protobuf conversions, WatchKeys
//!   streams, the JWKS mirror, the HTTP listener, and the one mapping of errors to status
//!   codes.
//! - [`core`]: the operations on providers and on access control, independent of gRPC, and
//!   their error type.
//! - [`refresh`]: keeping keys fresh: one flight per provider, how a fetch changes a record,
//!   freshness and backoff, the scheduler and the staleness timer.
//! - [`cluster`]: the fleet on Postgres: the lease with its fencing term, the change feed,
//!   refresh requests from followers, the cluster status.
//! - [`upstream`]: talking to identity providers: the fetcher, the guarded DNS resolver,
//!   upstream TLS.
//! - [`store`]: durable storage, one SQL store for Postgres and SQLite.
//! - [`state`]: the provider record, its snapshot at an instant, and the in-memory cache.
//! - [`access`]: access tokens, principals, the audit log's records, the access registry.
//! - [`domain`]: values parsed once at the edge: identifiers, JWKS URLs, policies, upstream
//!   trust, key-set documents and their guardrails.
//! - [`observability`]: Prometheus metrics and tracing/OpenTelemetry.
//! - [`proto`] (generated messages and clients) and [`clock`] (injectable time): leaves.

pub mod access;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod core;
pub mod domain;
pub mod observability;
pub mod proto;
pub mod refresh;
pub mod server;
pub mod state;
pub mod store;
pub mod upstream;
