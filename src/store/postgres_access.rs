//! Access control on Postgres: every change is announced on `keyrelay_access` in its
//! transaction, so each replica reloads its access registry when it commits.

use sqlx::{Postgres, Transaction};

use super::{PostgresStore, StoreError, access::TokenRow, postgres::insert_audit};
use crate::{
    access::{TokenId, TokenRecord},
    domain::TenantId,
};

/// The NOTIFY channel of committed access changes (the payload is empty: reload).
pub const ACCESS_CHANNEL: &str = "keyrelay_access";

const SELECT_TOKEN_FOR_UPDATE: &str =
    "SELECT * FROM access_tokens WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE";

async fn announce(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify('keyrelay_access', '')")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn token_in_scope(
    tx: &mut Transaction<'static, Postgres>,
    id: &TokenId,
    scope: Option<&TenantId>,
) -> Result<Option<TokenRecord>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(SELECT_TOKEN_FOR_UPDATE)
        .bind(id.as_str())
        .bind(scope.map(TenantId::as_str))
        .fetch_optional(&mut **tx)
        .await?;
    row.map(TokenRow::into_record).transpose()
}

super::access::impl_access_store!(PostgresStore, announce, token_in_scope, insert_audit);
