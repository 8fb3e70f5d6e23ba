//! The command line's shape: every subcommand and flag, parsed by clap.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::server::config::ServeConfig;

/// What `keyrelay serve` reads from the environment besides its flags' variables.
const SERVE_ENVIRONMENT: &str = "\
Environment read besides the flags' variables:
  RUST_LOG                            log filter (default info)
  OTEL_EXPORTER_OTLP_ENDPOINT         export traces over OTLP/gRPC to this endpoint
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the same, for traces only
  OTEL_SERVICE_NAME                   service name of the traces (default keyrelay)
  OTEL_RESOURCE_ATTRIBUTES            extra resource attributes of the traces
  OTEL_TRACES_SAMPLER                 sampler, e.g. parentbased_always_on
  OTEL_TRACES_SAMPLER_ARG             the sampler's argument";

/// keyrelay: fetch every identity provider's JWKS once, serve it to all verifiers.
#[derive(Debug, Parser)]
#[command(name = "keyrelay", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the keyrelay server.
    #[command(after_long_help = SERVE_ENVIRONMENT)]
    Serve(Box<ServeConfig>),
    /// Apply database migrations and exit (`serve` applies them too, unless
    /// --skip-migrations).
    Migrate {
        /// Store: postgres://... for Postgres; unset for the embedded SQLite file.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Directory of the embedded database.
        #[arg(long, env = "KEYRELAY_DATA_DIR", default_value = "keyrelay-data")]
        data_dir: PathBuf,
    },
    /// A client command, talking gRPC to a running server.
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

/// The subcommands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Manage provider registrations on a running server.
    Providers {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// The action.
        #[command(subcommand)]
        action: ProvidersCommand,
    },
    /// Exit 0 when the server reports SERVING on gRPC health (for container health checks).
    Health {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Show which replica leads and which replicas are alive.
    Cluster {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Print key-set events as they arrive (WatchKeys).
    Watch {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// Tenant to watch; all tenants registered now when omitted (needs the admin token).
        tenant: Option<String>,
        /// One provider of the tenant; every provider when omitted.
        provider: Option<String>,
    },
    /// Verify a JWT with the keys keyrelay serves; prints the claims or why it is refused.
    Verify {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// Tenant whose keys verify the token.
        #[arg(long)]
        tenant: String,
        /// Only this provider's keys.
        #[arg(long)]
        provider: Option<String>,
        /// Accepted issuer (repeatable).
        #[arg(long)]
        issuer: Vec<String>,
        /// Accepted audience (repeatable).
        #[arg(long)]
        audience: Vec<String>,
        /// The token.
        token: String,
    },
    /// Issue, list and revoke access tokens.
    Tokens {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// The action.
        #[command(subcommand)]
        action: TokensCommand,
    },
    /// Show whether a tenant's keys need a verifier token, or change it.
    TenantAccess {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// Tenant identifier.
        tenant: String,
        /// Require (true) or stop requiring (false) a verifier token for Resolve, WatchKeys
        /// and the JWKS mirror; omitted: only show the setting.
        #[arg(long)]
        require_verifier_token: Option<bool>,
    },
    /// Print the audit log, newest first.
    Audit {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
        /// Most events printed.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print the current key set of a provider.
    Resolve {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
        /// A key id that must be in the set (triggers a refresh when it is not).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Revoke a provider's key in an emergency, reinstate it, or list what is revoked.
    Keys {
        /// Connection settings.
        #[command(flatten)]
        client: ClientOptions,
        /// The action.
        #[command(subcommand)]
        action: KeysCommand,
    },
}

/// `keyrelay keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Withhold a key id from every verifier and replica at once, whatever the identity
    /// provider keeps publishing, until reinstated.
    Revoke {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
        /// The key id to withhold.
        kid: String,
        /// Why (kept in the audit log and shown in the provider's status).
        #[arg(long)]
        reason: String,
    },
    /// Serve a revoked key id again.
    Reinstate {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
        /// The revoked key id.
        kid: String,
    },
    /// List the revoked key ids of every provider the admin token may see.
    ListRevoked {
        /// Only this tenant's providers.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// How the client reaches the server.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// Server address.
    #[arg(
        long,
        env = "KEYRELAY_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Admin token, or an admin access token; defaults to the one kept in
    /// <data-dir>/admin-token.
    #[arg(
        long,
        env = "KEYRELAY_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// Access token sent on Resolve, WatchKeys and verify calls, for tenants that require
    /// a verifier token.
    #[arg(
        long,
        env = "KEYRELAY_ACCESS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub access_token: Option<String>,
    /// The server's data directory, to read the generated admin token from.
    #[arg(
        long,
        env = "KEYRELAY_DATA_DIR",
        default_value = "keyrelay-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM CA certificate(s) to trust for an https:// --server, instead of the system's roots.
    #[arg(long, env = "KEYRELAY_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain to present to a server that requires one (mutual TLS).
    #[arg(
        long,
        env = "KEYRELAY_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "KEYRELAY_CLIENT_KEY",
        hide_env_values = true,
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// `keyrelay providers ...`
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Register a provider (or update its registration) and fetch its keys once.
    Add {
        /// Tenant identifier: 1-64 characters of [a-z0-9._-].
        tenant: String,
        /// Provider identifier: 1-64 characters of [a-z0-9._-].
        provider: String,
        /// HTTPS URL of the provider's JWKS.
        #[arg(
            required_unless_present_any = ["issuer", "pushed"],
            conflicts_with_all = ["issuer", "pushed"]
        )]
        jwks_url: Option<String>,
        /// The issuer instead of a JWKS URL (`https://acme.okta.com`): keyrelay discovers the
        /// JWKS URL from its OpenID Connect or RFC 8414 metadata, and again on its own
        /// schedule.
        #[arg(long, conflicts_with = "pushed")]
        issuer: Option<String>,
        /// Fetch nothing: key sets are pushed with `keyrelay providers publish` (a signer with
        /// no reachable JWKS URL).
        #[arg(long)]
        pushed: bool,
        /// Policy overrides.
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// Store a key set for a provider registered with --pushed, under the next version.
    Publish {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
        /// The JWKS document ({"keys": [...]}); `-` reads standard input.
        file: PathBuf,
    },
    /// List registrations.
    List {
        /// Only this tenant's providers.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one registration and its status.
    Get {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
    },
    /// Remove a registration and its keys.
    Rm {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
    },
    /// Fetch a provider's keys now and show the outcome.
    Refresh {
        /// Tenant identifier.
        tenant: String,
        /// Provider identifier.
        provider: String,
    },
}

/// What an access token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRoleArg {
    /// AdminService calls within the token's tenant (or every tenant without one).
    Admin,
    /// Reading the keys of the token's tenant.
    Verifier,
}

/// `keyrelay tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token; its secret is printed once.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: TokenRoleArg,
        /// Tenant the token is scoped to (required for verifier tokens).
        #[arg(long)]
        tenant: Option<String>,
        /// Who or what holds the token.
        #[arg(long)]
        description: String,
        /// How long the token is valid (e.g. 90days); until revoked when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
        /// Also list revoked tokens.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a token.
    Revoke {
        /// The token id.
        id: String,
    },
}

/// Per-provider policy overrides; unset means the server default.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Lower bound of the freshness lifetime.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_ttl: Option<Duration>,
    /// Upper bound of the freshness lifetime.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_ttl: Option<Duration>,
    /// Lifetime when the IdP sends no cache headers.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub default_ttl: Option<Duration>,
    /// Refresh this long before the keys stop being fresh.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub refresh_early: Option<Duration>,
    /// Serve the last good keys this long after they stop being fresh.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_stale: Option<Duration>,
    /// Largest JWKS response body, in bytes.
    #[arg(long)]
    pub max_response_bytes: Option<u32>,
    /// Host the JWKS URL and its redirects may name (`idp.example.com` or `*.example.com`);
    /// repeat for several.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// Base64 SHA-256 pin of a public key the IdP's certificate chain must carry; repeat for
    /// several.
    #[arg(long = "spki-pin")]
    pub spki_sha256_pins: Vec<String>,
    /// Signature algorithm whose keys are published (RS256, ES256, EdDSA, ...); repeat for
    /// several. Unset: every one keyrelay knows.
    #[arg(long = "allowed-algorithm")]
    pub allowed_algorithms: Vec<String>,
    /// Publish encryption keys (`use: enc`) too; by default they are left out.
    #[arg(long)]
    pub include_encryption_keys: bool,
    /// Leave out keys without a kid when the set publishes more than one key.
    #[arg(long)]
    pub require_kid: bool,
    /// PEM file of CA certificates (one or more) a key's x5c chain must validate to for the
    /// key to be published; repeat for several files.
    #[arg(long = "trust-anchor", value_name = "PEM_FILE")]
    pub trust_anchors: Vec<PathBuf>,
}
