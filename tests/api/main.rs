//! Integration tests: the real server on a random port, real gRPC, a real mock IdP over
//! HTTP, and real SQLite and Postgres stores. One test binary for all of them.

mod access;
mod admin;
mod auth_failures;
mod cli;
mod deploy;
mod discovery;
mod egress;
mod failures;
mod fleet;
mod go;
mod helpers;
mod key_policy;
mod mock_idp;
mod observability;
mod pki;
mod pushed;
mod quarantine;
mod resolve;
mod restart;
mod revalidation;
mod revocation;
mod server;
mod signing;
mod status_page;
mod store;
mod timestamps;
mod tls;
mod trust_anchors;
mod unknown_keys;
mod upstream_tls;
mod verifiers;
mod watch;
mod x509;
