//! What differs between the two databases, and nothing else: where change sequences come
//! from and in which order a write locks its row and takes one (so that sequence order is
//! commit order), whether a committed change is announced to other replicas (NOTIFY on
//! Postgres; a single node has nobody to tell), and the two statements whose text differs
//! (the fenced refresh write, and a token read under a row lock).

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};

use super::{
    Fence, StoreError,
    change::{ACCESS_CHANNEL, CHANGES_CHANNEL, Change},
    sql::{Arg, Sql},
};
use crate::domain::ProviderKey;

/// A registration as stored, for its audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredRegistration {
    /// The registered JWKS URL; empty for a provider registered by issuer.
    pub jwks_url: String,
    /// The registered issuer; empty for a provider registered by URL.
    pub issuer: String,
    /// Whether its key sets are pushed rather than fetched.
    pub pushed: bool,
    /// The policy overrides, as JSON.
    pub policy: String,
}

/// A database keyrelay can store in.
#[async_trait]
pub(super) trait Backend: Sql {
    /// The refresh write: the refresh columns as `$4` to `$16`, the change sequence as
    /// `$17`, for the registration revision `$3`, then `fence_args`.
    const SAVE_REFRESH: &'static str;

    /// The token `$1` within the scope `$2` (any tenant when NULL), locked where the database
    /// can.
    const TOKEN_FOR_WRITE: &'static str;

    /// Starts a write of `key`'s row: reads its registration (locking the row where the
    /// database can) and takes the write's change sequence, in the order that makes
    /// sequence order commit order.
    async fn begin_write(
        conn: &mut Self::Connection,
        key: &ProviderKey,
    ) -> Result<(Option<StoredRegistration>, i64), StoreError>;

    /// The parameters after `$17` of `SAVE_REFRESH`.
    fn fence_args(fence: Option<&Fence>) -> Vec<Arg<'_>>;

    /// Tells the other replicas about a provider change, on commit.
    async fn announce(conn: &mut Self::Connection, change: &Change) -> Result<(), StoreError>;

    /// Tells the other replicas that the access state changed, on commit.
    async fn announce_access(conn: &mut Self::Connection) -> Result<(), StoreError>;
}

const SELECT_REGISTRATION: &str = "SELECT jwks_url, policy, COALESCE(issuer, ''), pushed FROM providers WHERE tenant = $1 AND provider = $2";

const SELECT_REGISTRATION_FOR_UPDATE: &str = "SELECT jwks_url, policy, COALESCE(issuer, ''), pushed FROM providers WHERE tenant = $1 AND provider = $2 FOR UPDATE";

/// The refresh columns `$4` to `$16` and the change sequence `$17`, as a SET clause.
macro_rules! refresh_columns {
    () => {
        "UPDATE providers SET
            version = $4, jwks_json = $5, etag = $6, last_modified = $7, cache_policy = $8,
            fetched_at = $9, fresh_until = $10, last_attempt_at = $11, last_error = $12,
            consecutive_failures = $13, next_refresh_at = $14, skipped_keys = $15,
            discovery = $16, change_seq = $17"
    };
}

/// The refresh write; `$fence` adds conditions to its WHERE clause.
macro_rules! save_refresh {
    ($fence:literal) => {
        concat!(
            refresh_columns!(),
            " WHERE tenant = $1 AND provider = $2 AND revision = $3",
            $fence,
            " RETURNING change_seq"
        )
    };
}

/// A pushed key set's write: the refresh columns, only while the row is at change sequence
/// `$3`.
pub(super) const SAVE_PUSHED: &str = concat!(
    refresh_columns!(),
    " WHERE tenant = $1 AND provider = $2 AND change_seq = $3"
);

async fn registration<B: Sql>(
    conn: &mut B::Connection,
    sql: &'static str,
    key: &ProviderKey,
) -> Result<Option<StoredRegistration>, StoreError> {
    let args = [
        Arg::text(key.tenant().as_str()),
        Arg::text(key.provider().as_str()),
    ];
    match B::row(conn, sql, &args).await? {
        Some(row) => Ok(Some(StoredRegistration {
            jwks_url: B::text(&row, 0)?,
            policy: B::text(&row, 1)?,
            issuer: B::text(&row, 2)?,
            pushed: B::bool(&row, 3)?,
        })),
        None => Ok(None),
    }
}

async fn scalar<B: Sql>(conn: &mut B::Connection, sql: &'static str) -> Result<i64, StoreError> {
    match B::row(conn, sql, &[]).await? {
        Some(row) => B::int(&row, 0),
        None => Err(StoreError::Corrupt {
            key: "change sequence".into(),
            reason: format!("{sql} returned no row"),
        }),
    }
}

/// The production store, shared by every replica of a fleet.
#[async_trait]
impl Backend for Postgres {
    /// Applied only while the writer holds the shard lease term it names (database clock):
    /// a deposed owner that wakes up late writes nothing.
    const SAVE_REFRESH: &'static str = save_refresh!(
        " AND ($18::bigint IS NULL OR EXISTS (SELECT 1 FROM shard_leases
              WHERE shard = $18 AND holder = $19 AND term = $20 AND expires_at > now()))"
    );

    const TOKEN_FOR_WRITE: &'static str = "SELECT * FROM access_tokens WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE";

    /// The row lock first, then the sequence: of two writes of one provider, the one that
    /// commits later takes the higher sequence.
    async fn begin_write(
        conn: &mut Self::Connection,
        key: &ProviderKey,
    ) -> Result<(Option<StoredRegistration>, i64), StoreError> {
        let before = registration::<Self>(conn, SELECT_REGISTRATION_FOR_UPDATE, key).await?;
        let seq = scalar::<Self>(conn, "SELECT nextval('provider_change_seq')").await?;
        Ok((before, seq))
    }

    fn fence_args(fence: Option<&Fence>) -> Vec<Arg<'_>> {
        vec![
            Arg::Int(fence.map(|f| i64::from(f.shard))),
            Arg::Text(fence.map(|f| f.holder.as_str())),
            Arg::Int(fence.map(|f| f.term)),
        ]
    }

    async fn announce(conn: &mut Self::Connection, change: &Change) -> Result<(), StoreError> {
        let payload = change.payload();
        let args = [Arg::text(CHANGES_CHANNEL), Arg::text(&payload)];
        Self::execute(conn, "SELECT pg_notify($1, $2)", &args).await?;
        Ok(())
    }

    async fn announce_access(conn: &mut Self::Connection) -> Result<(), StoreError> {
        let args = [Arg::text(ACCESS_CHANNEL), Arg::text("")];
        Self::execute(conn, "SELECT pg_notify($1, $2)", &args).await?;
        Ok(())
    }
}

/// The embedded single-node store.
#[async_trait]
impl Backend for Sqlite {
    const SAVE_REFRESH: &'static str = save_refresh!("");

    const TOKEN_FOR_WRITE: &'static str =
        "SELECT * FROM access_tokens WHERE id = $1 AND ($2 IS NULL OR tenant = $2)";

    /// The sequence first: taking it writes the counter row, which serialises writers from
    /// the start of the transaction (a read first would let two writers deadlock).
    async fn begin_write(
        conn: &mut Self::Connection,
        key: &ProviderKey,
    ) -> Result<(Option<StoredRegistration>, i64), StoreError> {
        let next = "UPDATE change_counter SET value = value + 1 RETURNING value";
        let seq = scalar::<Self>(conn, next).await?;
        let before = registration::<Self>(conn, SELECT_REGISTRATION, key).await?;
        Ok((before, seq))
    }

    fn fence_args(_: Option<&Fence>) -> Vec<Arg<'_>> {
        Vec::new()
    }

    async fn announce(_: &mut Self::Connection, _: &Change) -> Result<(), StoreError> {
        Ok(())
    }

    async fn announce_access(_: &mut Self::Connection) -> Result<(), StoreError> {
        Ok(())
    }
}
