//! keyrelay: a central JWKS key-distribution service.
//!
//! Identity providers' key sets are fetched once for the whole fleet (HTTP-cache aware,
//! conditional, size- and time-bounded), stored durably, held in memory and served to
//! verifiers over gRPC. The binary (`main.rs`) only parses the command line; everything
//! lives here so that tests drive the very same code.

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
