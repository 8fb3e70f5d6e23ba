//! What the store asks of a database driver, for any sqlx database that has it: run a
//! statement with parameters of the few types keyrelay stores, and decode the rows it reads.
//! Written once, as a blanket implementation, so the store's logic is generic over the
//! database and needs no bounds of its own.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Row, Type,
    postgres::PgQueryResult, sqlite::SqliteQueryResult,
};

use super::{
    StoreError, UnreadableRows,
    access::{AuditRow, TokenRow, active_tokens},
    batch_decode::BatchDecoder,
    row::{RefreshColumns, RegistrationColumns, StoredRow, decode_row},
};
use crate::{
    access::{AuditRecord, TokenRecord},
    state::record::ProviderRecord,
};

/// A statement parameter, in one of the types both databases store.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    /// TEXT, or NULL.
    Text(Option<&'a str>),
    /// BIGINT (INTEGER in SQLite), or NULL.
    Int(Option<i64>),
    /// BOOLEAN.
    Bool(bool),
    /// BYTEA (BLOB in SQLite), or NULL.
    Bytes(Option<&'a [u8]>),
    /// TIMESTAMPTZ (RFC 3339 text in SQLite), or NULL.
    Time(Option<DateTime<Utc>>),
}

impl<'a> Arg<'a> {
    /// A text parameter.
    pub fn text(value: &'a str) -> Self {
        Arg::Text(Some(value))
    }

    /// An integer parameter.
    pub fn int(value: i64) -> Self {
        Arg::Int(Some(value))
    }

    /// A timestamp parameter.
    pub fn time(value: DateTime<Utc>) -> Self {
        Arg::Time(Some(value))
    }
}

/// The number of rows a statement changed, which sqlx reports per database.
pub(super) trait RowsAffected {
    /// Rows inserted, updated or deleted.
    fn rows(&self) -> u64;
}

impl RowsAffected for PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Statements and row decoding, on a connection (a pooled one, or a transaction's).
#[async_trait]
pub(super) trait Sql: Database {
    /// Runs `sql` with `args`; the number of rows it changed.
    async fn execute(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<u64, StoreError>;

    /// Runs `sql` with `args`; every row it returns.
    async fn rows(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Self::Row>, StoreError>;

    /// Runs `sql` with `args`; the first row it returns, if any.
    async fn row(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<Self::Row>, StoreError>;

    /// Column `index` of `row` as an integer.
    fn int(row: &Self::Row, index: usize) -> Result<i64, StoreError>;

    /// Column `index` of `row` as text.
    fn text(row: &Self::Row, index: usize) -> Result<String, StoreError>;

    /// Column `index` of `row` as a boolean.
    fn bool(row: &Self::Row, index: usize) -> Result<bool, StoreError>;

    /// Column `index` of `row` as a timestamp.
    fn time(row: &Self::Row, index: usize) -> Result<DateTime<Utc>, StoreError>;

    /// The provider records of `rows`; unreadable rows are reported and affect their own
    /// provider only.
    fn provider_records(rows: &[Self::Row], unreadable: &UnreadableRows) -> Vec<ProviderRecord>;

    /// Runs `sql` and decodes the provider rows as they arrive, so only a few rows are held
    /// at a time (a start with 100,000 providers would otherwise hold every row at once, and
    /// the allocator keeps that peak); unreadable rows as `provider_records`. The records
    /// are built on the blocking pool while the next rows are read (`BatchDecoder`), each
    /// straight behind its own `Arc`, so no list of whole records is ever held either.
    async fn streamed_provider_records(
        conn: &mut Self::Connection,
        sql: &'static str,
        unreadable: &Arc<UnreadableRows>,
    ) -> Result<Vec<Arc<ProviderRecord>>, StoreError>;

    /// The access tokens of `rows`; unreadable rows are reported and left out.
    fn readable_tokens(rows: &[Self::Row], unreadable: &UnreadableRows) -> Vec<TokenRecord>;

    /// The access token of `row`.
    fn token(row: &Self::Row) -> Result<TokenRecord, StoreError>;

    /// The audit record of `row`.
    fn audit_record(row: &Self::Row) -> Result<AuditRecord, StoreError>;
}

/// `sql` with `args` bound in order.
fn statement<'q, DB>(
    sql: &'static str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    args.iter().fold(sqlx::query(sql), |query, arg| match *arg {
        Arg::Text(value) => query.bind(value),
        Arg::Int(value) => query.bind(value),
        Arg::Bool(value) => query.bind(value),
        Arg::Bytes(value) => query.bind(value),
        Arg::Time(value) => query.bind(value),
    })
}

#[async_trait]
impl<DB> Sql for DB
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB> + Decode<'q, DB>,
    for<'q> Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> DateTime<Utc>: Decode<'r, DB> + Type<DB>,
    for<'r> RegistrationColumns: FromRow<'r, DB::Row>,
    for<'r> RefreshColumns: FromRow<'r, DB::Row>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
    for<'r> AuditRow: FromRow<'r, DB::Row>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    async fn execute(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<u64, StoreError> {
        let done = statement(sql, args).execute(conn).await?;
        Ok(done.rows())
    }

    async fn rows(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Self::Row>, StoreError> {
        Ok(statement(sql, args).fetch_all(conn).await?)
    }

    async fn row(
        conn: &mut Self::Connection,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<Self::Row>, StoreError> {
        Ok(statement(sql, args).fetch_optional(conn).await?)
    }

    fn int(row: &Self::Row, index: usize) -> Result<i64, StoreError> {
        Ok(row.try_get(index)?)
    }

    fn text(row: &Self::Row, index: usize) -> Result<String, StoreError> {
        Ok(row.try_get(index)?)
    }

    fn bool(row: &Self::Row, index: usize) -> Result<bool, StoreError> {
        Ok(row.try_get(index)?)
    }

    fn time(row: &Self::Row, index: usize) -> Result<DateTime<Utc>, StoreError> {
        Ok(row.try_get(index)?)
    }

    fn provider_records(rows: &[Self::Row], unreadable: &UnreadableRows) -> Vec<ProviderRecord> {
        rows.iter()
            .filter_map(|row| decode_row(row, unreadable))
            .collect()
    }

    async fn streamed_provider_records(
        conn: &mut Self::Connection,
        sql: &'static str,
        unreadable: &Arc<UnreadableRows>,
    ) -> Result<Vec<Arc<ProviderRecord>>, StoreError> {
        let mut rows = sqlx::query(sql).fetch(conn);
        let mut decoder = BatchDecoder::new(unreadable);
        while let Some(row) = rows.try_next().await? {
            if let Some(stored) = StoredRow::decode(&row, unreadable) {
                decoder.push(stored).await?;
            }
        }
        decoder.finish().await
    }

    fn readable_tokens(rows: &[Self::Row], unreadable: &UnreadableRows) -> Vec<TokenRecord> {
        active_tokens(rows, unreadable)
    }

    fn token(row: &Self::Row) -> Result<TokenRecord, StoreError> {
        TokenRow::from_row(row)?.into_record()
    }

    fn audit_record(row: &Self::Row) -> Result<AuditRecord, StoreError> {
        Ok(AuditRecord::from(AuditRow::from_row(row)?))
    }
}
