//! `keyrelay serve` configuration: one typed struct, every knob a flag with a `KEYRELAY_*`
//! environment equivalent and a default shown in `--help`, checked once at start.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use ipnet::IpNet;

use clap::{ArgAction, Args};

use crate::{
    cluster::LeaseSettings,
    domain::{EgressRules, Policy, ValidationError},
    observability::telemetry::LogFormat,
    refresh::freshness::Backoff,
    server::tls::{TlsFiles, TlsSettings},
    upstream::dns::HostLookup,
    upstream::fetch::FetchSettings,
    upstream::tls::{UpstreamTlsError, UpstreamTrustRoots, load_ca_bundle},
};

/// Settings of `keyrelay serve`, one group per subsystem (flattened: the flags are flat).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Listeners.
    #[command(flatten)]
    pub listener: ListenerConfig,

    /// Store.
    #[command(flatten)]
    pub store: StoreConfig,

    /// Fleet.
    #[command(flatten)]
    pub fleet: FleetConfig,

    /// Access.
    #[command(flatten)]
    pub access: AccessConfig,

    /// Fetching from identity providers.
    #[command(flatten)]
    pub upstream: UpstreamConfig,

    /// Refresh policy defaults.
    #[command(flatten)]
    pub policy: PolicyConfig,

    /// Refreshing.
    #[command(flatten)]
    pub refresh: RefreshConfig,

    /// How long shutdown waits for in-flight calls and refreshes.
    #[arg(long, help_heading = "Process", env = "KEYRELAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, help_heading = "Process", env = "KEYRELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where the gRPC and HTTP listeners bind, and the gRPC listener's TLS.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners")]
pub struct ListenerConfig {
    /// Address of the gRPC listener.
    #[arg(long, env = "KEYRELAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYRELAY_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// PEM certificate chain (leaf first) for the gRPC listener. With --tls-key, that
    /// listener speaks TLS only, and the JWKS mirror is served there only, not on the plain
    /// HTTP listener. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "KEYRELAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYRELAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of CA certificates: clients must present a certificate issued by one of
    /// them (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = "KEYRELAY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes.
    #[arg(long, env = "KEYRELAY_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
}

/// Where registrations and key sets are kept.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store")]
pub struct StoreConfig {
    /// Directory for the embedded database and the generated admin token.
    #[arg(long, env = "KEYRELAY_DATA_DIR", default_value = "keyrelay-data")]
    pub data_dir: PathBuf,

    /// Store: postgres://... for Postgres; unset for the embedded SQLite file in the data
    /// directory (single node).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most connections to the database.
    #[arg(long, env = "KEYRELAY_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Do not apply database migrations at start (run `keyrelay migrate` instead).
    #[arg(long, env = "KEYRELAY_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

/// This replica's place in a fleet.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fleet (Postgres)")]
pub struct FleetConfig {
    /// This replica's id in the fleet. Default: host name, process id and a random suffix.
    #[arg(long, env = "KEYRELAY_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Address other people reach this replica at, shown in the cluster status. Default: the
    /// listen address.
    #[arg(long, env = "KEYRELAY_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Postgres fleets: how long a shard lease lasts without renewal. A replica that cannot
    /// renew stands down from its shards after four fifths of it.
    #[arg(long, env = "KEYRELAY_LEASE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// Postgres fleets: how often every replica heartbeats, renews its shard leases and
    /// rebalances the shards.
    #[arg(long, env = "KEYRELAY_LEASE_RENEW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew: Duration,
}

/// Admin credentials and the limit on failed authentications.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access")]
pub struct AccessConfig {
    /// Admin token for AdminService calls. Unset: generated at first start and kept in
    /// <data-dir>/admin-token (mode 0600).
    #[arg(long, env = "KEYRELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Failed AdminService authentications one client address may make per second (bursts
    /// of twice that); beyond, its calls answer RESOURCE_EXHAUSTED until the bucket refills.
    #[arg(long, env = "KEYRELAY_ADMIN_AUTH_FAILURE_RATE", default_value_t = NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN))]
    pub admin_auth_failure_rate: NonZeroU32,
}

/// Where and how JWKS documents may be fetched.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fetching from identity providers")]
pub struct UpstreamConfig {
    /// Development only: accept plain-http JWKS URLs and loopback hosts.
    #[arg(
        long,
        env = "KEYRELAY_DEV_ALLOW_HTTP_LOOPBACK",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        overrides_with = "dev_allow_http_loopback"
    )]
    pub dev_allow_http_loopback: bool,

    /// Networks keyrelay may fetch JWKS from although they are not public (CIDR; repeatable or
    /// comma-separated). Everything private, link-local, CGNAT, unique-local, multicast and
    /// the cloud metadata address are refused otherwise, for every resolved address and
    /// every redirect hop.
    #[arg(long, env = "KEYRELAY_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<IpNet>,

    /// PEM bundle of extra CA certificates trusted for IdPs (an internal CA, say), on top of
    /// the system's roots.
    #[arg(long, env = "KEYRELAY_IDP_CA_FILE")]
    pub idp_ca_file: Option<PathBuf>,

    /// Deadline for one whole fetch, body included.
    #[arg(long, env = "KEYRELAY_FETCH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,

    /// Deadline for connecting to an IdP.
    #[arg(long, env = "KEYRELAY_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Redirects followed per fetch; every hop is re-checked against the URL rules.
    #[arg(long, env = "KEYRELAY_MAX_REDIRECTS", default_value_t = 3)]
    pub max_redirects: usize,
}

/// The server-wide refresh policy; registrations may override each knob.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Refresh policy defaults")]
pub struct PolicyConfig {
    /// Lower bound of the freshness lifetime taken from an IdP's cache headers.
    #[arg(long, env = "KEYRELAY_MIN_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub min_ttl: Duration,

    /// Upper bound of the freshness lifetime taken from an IdP's cache headers.
    #[arg(long, env = "KEYRELAY_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// Freshness lifetime when an IdP sends neither Cache-Control nor Expires.
    #[arg(long, env = "KEYRELAY_DEFAULT_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Refresh this long before keys stop being fresh (plus a jitter of up to 10% of the
    /// lifetime, at most 30s).
    #[arg(long, env = "KEYRELAY_REFRESH_EARLY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub refresh_early: Duration,

    /// Keep serving the last good keys this long after they stop being fresh.
    #[arg(long, env = "KEYRELAY_MAX_STALE", default_value = "7days", value_parser = humantime::parse_duration)]
    pub max_stale: Duration,

    /// Largest JWKS response body, in bytes; enforced while streaming.
    #[arg(long, env = "KEYRELAY_MAX_RESPONSE_BYTES", default_value_t = 512 * 1024)]
    pub max_response_bytes: u32,
}

/// How refreshes are triggered, retried and bounded.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Refreshing")]
pub struct RefreshConfig {
    /// Minimum time between two refreshes of one provider triggered by unknown kids.
    #[arg(long, env = "KEYRELAY_UNKNOWN_KID_COOLDOWN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub unknown_kid_cooldown: Duration,

    /// Lookups of unknown kids one client address may make per second (bursts of twice that);
    /// beyond, Resolve answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "KEYRELAY_UNKNOWN_KID_RATE", default_value_t = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))]
    pub unknown_kid_rate: NonZeroU32,

    /// How long a Resolve with an unknown kid waits for the refresh it triggered.
    #[arg(long, env = "KEYRELAY_UNKNOWN_KID_WAIT", default_value = "6s", value_parser = humantime::parse_duration)]
    pub unknown_kid_wait: Duration,

    /// First retry delay bound after a failed fetch; doubles per failure, full jitter.
    #[arg(long, env = "KEYRELAY_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_initial: Duration,

    /// Largest retry delay after failed fetches.
    #[arg(long, env = "KEYRELAY_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// Most scheduled fetches in flight at once.
    #[arg(long, env = "KEYRELAY_MAX_CONCURRENT_FETCHES", default_value_t = 16)]
    pub max_concurrent_fetches: usize,
}

impl PolicyConfig {
    /// The server-wide policy defaults, checked for coherence.
    pub fn defaults(&self) -> Result<Policy, ValidationError> {
        let policy = Policy {
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            default_ttl: self.default_ttl,
            refresh_early: self.refresh_early,
            max_stale: self.max_stale,
            max_response_bytes: self.max_response_bytes,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl UpstreamConfig {
    /// Which URLs may be fetched.
    pub fn egress(&self) -> EgressRules {
        EgressRules {
            allow_http_and_loopback: self.dev_allow_http_loopback,
            allowed_networks: self.egress_allow.clone(),
        }
    }

    /// Transport settings of the fetcher, resolving names through `lookup`; reads the IdP
    /// CA bundle.
    pub fn fetch_settings(
        &self,
        lookup: Arc<dyn HostLookup>,
    ) -> Result<FetchSettings, UpstreamTlsError> {
        let extra_roots = match &self.idp_ca_file {
            Some(path) => load_ca_bundle(path)?,
            None => Vec::new(),
        };
        Ok(FetchSettings {
            timeout: self.fetch_timeout,
            connect_timeout: self.connect_timeout,
            max_redirects: self.max_redirects,
            egress: Arc::new(self.egress()),
            lookup,
            trust_roots: UpstreamTrustRoots::new(extra_roots)?,
        })
    }
}

impl ListenerConfig {
    /// TLS of the gRPC listener; none for plain TCP. Certificate and key come together.
    pub fn tls(&self) -> Result<Option<TlsSettings>, ValidationError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
            (None, None, None) => return Ok(None),
            (None, None, Some(_)) => {
                return Err(ValidationError::new(
                    "tls-client-ca",
                    "needs --tls-cert and --tls-key",
                ));
            }
            (Some(_), None, _) => return Err(ValidationError::new("tls-cert", "needs --tls-key")),
            (None, Some(_), _) => return Err(ValidationError::new("tls-key", "needs --tls-cert")),
        };
        if self.tls_reload_interval.is_zero() {
            return Err(ValidationError::new(
                "tls-reload-interval",
                "must be above zero",
            ));
        }
        Ok(Some(TlsSettings {
            files: TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca.clone(),
            },
            reload_interval: self.tls_reload_interval,
        }))
    }
}

impl FleetConfig {
    /// Lease timing, checked: renewals must fit at least twice in the standing-down window.
    pub fn lease_settings(&self) -> Result<LeaseSettings, ValidationError> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ValidationError::new("lease-ttl", "must be at least 1s"));
        }
        if self.lease_renew.is_zero() || self.lease_renew * 5 > self.lease_ttl * 2 {
            return Err(ValidationError::new(
                "lease-renew",
                "must be above zero and at most two fifths of lease-ttl",
            ));
        }
        Ok(LeaseSettings {
            ttl: self.lease_ttl,
            renew_every: self.lease_renew,
        })
    }
}

impl RefreshConfig {
    /// Retry bounds after failed fetches.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        config: ServeConfig,
    }

    fn listener_tls(args: &[&str]) -> Result<Option<TlsSettings>, ValidationError> {
        let args = std::iter::once("keyrelay").chain(args.iter().copied());
        Serve::try_parse_from(args).unwrap().config.listener.tls()
    }

    fn refused(args: &[&str]) -> String {
        listener_tls(args).unwrap_err().to_string()
    }

    #[test]
    fn the_listener_is_plain_unless_a_certificate_and_key_are_given() {
        assert_eq!(listener_tls(&[]), Ok(None));
        let settings = listener_tls(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        let settings = settings.unwrap().unwrap();
        assert_eq!(settings.files.cert, PathBuf::from("c.pem"));
        assert_eq!(settings.files.client_ca, None);
        assert_eq!(settings.reload_interval, Duration::from_secs(5));
    }

    #[test]
    fn tls_flags_that_cannot_work_alone_are_refused() {
        assert_eq!(
            refused(&["--tls-cert", "c.pem"]),
            "invalid tls-cert: needs --tls-key"
        );
        assert_eq!(
            refused(&["--tls-key", "k.pem"]),
            "invalid tls-key: needs --tls-cert"
        );
        assert_eq!(
            refused(&["--tls-client-ca", "ca.pem"]),
            "invalid tls-client-ca: needs --tls-cert and --tls-key"
        );
        let zero = [
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--tls-reload-interval",
            "0s",
        ];
        assert_eq!(
            refused(&zero),
            "invalid tls-reload-interval: must be above zero"
        );
    }
}
