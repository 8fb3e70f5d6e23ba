//! The store and what is loaded from it before anything is served: the access state (with the
//! server's admin token) and every provider, into the in-memory cache.

use std::sync::Arc;

use sqlx::PgPool;

use super::{
    StartupError,
    config::{AccessConfig, StoreConfig},
};
use crate::{
    access::{AccessRegistry, admin_token::AdminToken},
    state::cache::KeyCache,
    store::{self, Store, UnreadableRows},
};

/// The opened store and the state loaded from it.
pub(super) struct Storage {
    pub store: Arc<dyn Store>,
    /// The Postgres pool, for the fleet; `None` on the embedded store.
    pub postgres: Option<PgPool>,
    pub unreadable: Arc<UnreadableRows>,
    pub access: Arc<AccessRegistry>,
    pub cache: Arc<KeyCache>,
}

impl Storage {
    /// Opens (and migrates) the store, then loads the access state and every provider.
    pub async fn open(config: &StoreConfig, access: &AccessConfig) -> Result<Self, StartupError> {
        let admin_token = admin_token(config, access)?;
        let opened = store::open(
            config.database_url.as_deref(),
            &config.data_dir,
            config.db_max_connections,
            config.skip_migrations,
        )
        .await?;
        let store = opened.store;
        let access = Arc::new(AccessRegistry::new(admin_token, store.load_access().await?));
        let records = store.load_all().await?;
        tracing::info!(providers = records.len(), "key sets loaded from the store");
        Ok(Self {
            store,
            postgres: opened.postgres,
            unreadable: opened.unreadable,
            access,
            cache: Arc::new(KeyCache::with_records(records)),
        })
    }
}

/// The configured admin token, or the one kept in (or generated into) the data directory.
fn admin_token(store: &StoreConfig, access: &AccessConfig) -> Result<AdminToken, StartupError> {
    if let Some(token) = access.admin_token.as_deref().and_then(AdminToken::new) {
        return Ok(token);
    }
    let path = AdminToken::path_in(&store.data_dir);
    let (token, generated) = AdminToken::load_or_generate(&store.data_dir).map_err(|source| {
        StartupError::AdminToken {
            path: path.display().to_string(),
            source,
        }
    })?;
    if generated {
        tracing::info!(path = %path.display(), "generated an admin token; the CLI reads it from there");
    } else {
        tracing::info!(path = %path.display(), "using the admin token kept in the data directory");
    }
    Ok(token)
}
