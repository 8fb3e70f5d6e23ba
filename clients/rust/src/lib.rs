//! Verify JWTs with keys from keyrelay.
//!
//! A [`Verifier`] opens one `WatchKeys` stream for a tenant (or some of its providers) and
//! holds the key sets in memory; every rotation arrives as it happens. [`Verifier::verify`]
//! checks a token against them: the algorithm comes from the key, never from the token alone
//! (`none` and HMAC are refused), `exp`/`nbf` are checked with leeway, and `iss`/`aud` when
//! expected. Across providers the token's `iss` picks first: a provider registered by issuer
//! verifies only tokens of that issuer. A token whose `kid` is unknown triggers one `Resolve`
//! for that kid, shared by concurrent callers. The stream reconnects with backoff and resumes from the versions held;
//! while disconnected, verification goes on with the keys held, whose age [`Verifier::status`]
//! reports.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrelay_verifier::{Expectations, Verifier};
//!
//! let verifier = Verifier::builder("http://127.0.0.1:50051", "acme").connect().await?;
//! let expected = Expectations::new().issuer("https://acme.okta.com").audience("api");
//! let claims: serde_json::Value = verifier.verify("eyJ...", &expected).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Over TLS, with the CA to trust and, where keyrelay requires one, a client certificate:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrelay_verifier::{Certificate, ClientTlsConfig, Identity, Verifier};
//!
//! let tls = ClientTlsConfig::new()
//!     .ca_certificate(Certificate::from_pem(std::fs::read("ca.pem")?))
//!     .identity(Identity::from_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?));
//! let verifier = Verifier::builder("https://keyrelay.internal:50051", "acme")
//!     .tls(tls)
//!     .connect()
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod algorithms;
mod endpoint;
mod keys;
mod verify;
mod watch;

/// Generated keyrelay.v1 messages and clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("keyrelay.v1");
}

pub use endpoint::endpoint;
pub use keys::{ProviderKeys, Status};
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
pub use verify::{Expectations, VerifyError, verify_with_key_set};
pub use watch::{ConnectError, Verifier, VerifierBuilder};
