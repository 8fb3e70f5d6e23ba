//! The refresh stack and the service core, wired from the configuration: the fetcher, the
//! refresher with its scheduler and staleness timer, the operations on providers and on
//! access, and the JWKS mirror.

use std::{sync::Arc, time::Duration};

use tokio_util::task::TaskTracker;

use super::{StartupError, config::ServeConfig, storage::Storage};
use crate::{
    api::{auth_failures::AuthFailures, mirror::Mirror},
    clock::Clock,
    cluster::Cluster,
    core::{
        access::AccessControl,
        failure_limiter::FailureLimiter,
        providers::{Providers, ProvidersParts},
    },
    domain::Policy,
    observability::metrics::Metrics,
    refresh::{Refresher, RefresherParts, scheduler::Scheduler, staleness::StalenessTimer},
    upstream::{
        dns::SystemLookup,
        fetch::{FetchSetupError, Fetcher},
    },
};

/// A replica waits this much longer than one fetch for the result of another shard's owner.
const OWNER_WAIT_MARGIN: Duration = Duration::from_secs(2);

/// What the services are built from, besides the configuration.
pub(super) struct Foundation<'a> {
    pub storage: &'a Storage,
    pub cluster: &'a Arc<Cluster>,
    pub metrics: &'a Arc<Metrics>,
    pub clock: &'a Arc<dyn Clock>,
    pub defaults: Policy,
}

/// The services, before they run.
pub(super) struct Services {
    pub refresher: Arc<Refresher>,
    pub scheduler: Scheduler,
    pub staleness: StalenessTimer,
    pub providers: Arc<Providers>,
    pub access: Arc<AccessControl>,
    pub auth_failures: Arc<AuthFailures>,
    pub mirror: Mirror,
    /// The refresher's flights, awaited at shutdown.
    pub flights: TaskTracker,
}

impl Services {
    /// Builds every service over `base`.
    pub fn build(config: &ServeConfig, base: Foundation<'_>) -> Result<Self, StartupError> {
        let Foundation {
            storage,
            cluster,
            metrics,
            clock,
            defaults,
        } = base;
        let settings = config
            .upstream
            .fetch_settings(Arc::new(SystemLookup))
            .map_err(FetchSetupError::from)?;
        let flights = TaskTracker::new();
        let owner_wait = config.upstream.fetch_timeout + OWNER_WAIT_MARGIN;
        let refresher = Refresher::new(RefresherParts {
            store: Arc::clone(&storage.store),
            cache: Arc::clone(&storage.cache),
            fetcher: Arc::new(Fetcher::new(&settings)?),
            clock: Arc::clone(clock),
            defaults,
            backoff: config.refresh.backoff(),
            unknown_kid_cooldown: config.refresh.unknown_kid_cooldown,
            cluster: Arc::clone(cluster),
            owner_wait,
            tasks: flights.clone(),
            metrics: Arc::clone(metrics),
        });
        let scheduler = Scheduler::new(
            Arc::clone(&storage.cache),
            Arc::clone(clock),
            Arc::clone(&refresher),
            Arc::clone(cluster.ownership()),
            config.refresh.max_concurrent_fetches,
        );
        let providers = Arc::new(Providers::new(ProvidersParts {
            store: Arc::clone(&storage.store),
            cache: Arc::clone(&storage.cache),
            refresher: Arc::clone(&refresher),
            clock: Arc::clone(clock),
            defaults,
            unknown_kid_wait: config.refresh.unknown_kid_wait,
            first_fetch_grace: owner_wait,
            metrics: Arc::clone(metrics),
            unknown_kid_limiter: FailureLimiter::new(config.refresh.unknown_kid_rate),
        }));
        let auth_failures = Arc::new(AuthFailures::new(
            Arc::clone(metrics),
            config.access.admin_auth_failure_rate,
        ));
        let mirror = Mirror {
            providers: Arc::clone(&providers),
            access: Arc::clone(&storage.access),
            clock: Arc::clone(clock),
            failures: Arc::clone(&auth_failures),
        };
        let access = Arc::new(AccessControl::new(
            Arc::clone(&storage.store),
            Arc::clone(&storage.access),
            Arc::clone(clock),
        ));
        Ok(Self {
            staleness: StalenessTimer::new(Arc::clone(&storage.cache), Arc::clone(clock)),
            refresher,
            scheduler,
            providers,
            access,
            auth_failures,
            mirror,
            flights,
        })
    }
}
