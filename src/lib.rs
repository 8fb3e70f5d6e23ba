//! keyrelay: a central JWKS key-distribution service.
//!
//! Identity providers' key sets are fetched once for the whole fleet (HTTP-cache aware,
//! conditional, size- and time-bounded), stored durably, held in memory and served to
//! verifiers over gRPC. The binary (`main.rs`) only parses the command line; everything
//! lives here so that tests drive the very same code.

pub mod access;
pub mod admin_token;
pub mod api;
pub mod cache;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod dns;
pub mod domain;
pub mod due_queue;
pub mod error;
pub mod fetch;
pub mod freshness;
pub mod http;
pub mod jwks;
pub mod metrics;
pub mod mirror;
pub mod outcome;
pub mod proto;
pub mod provider;
pub mod rate_limit;
pub mod refresh;
pub mod relay;
pub mod schedule;
pub mod staleness;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream_tls;
pub mod watch;
