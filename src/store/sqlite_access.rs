//! Access control on the embedded single-node store: there is no other replica to tell.

use sqlx::{Sqlite, Transaction};

use super::{
    SqliteStore, StoreError,
    access::{SELECT_TOKEN_IN_SCOPE, TokenRow},
    sqlite::insert_audit,
};
use crate::{
    access::{TokenId, TokenRecord},
    domain::TenantId,
};

async fn announce(_tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
    Ok(())
}

async fn token_in_scope(
    tx: &mut Transaction<'static, Sqlite>,
    id: &TokenId,
    scope: Option<&TenantId>,
) -> Result<Option<TokenRecord>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(SELECT_TOKEN_IN_SCOPE)
        .bind(id.as_str())
        .bind(scope.map(TenantId::as_str))
        .fetch_optional(&mut **tx)
        .await?;
    row.map(TokenRow::into_record).transpose()
}

super::access::impl_access_store!(SqliteStore, announce, token_in_scope, insert_audit);
