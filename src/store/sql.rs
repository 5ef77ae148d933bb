//! One connection type over the two databases hookd can store in: an
//! embedded SQLite file (rusqlite) or a PostgreSQL server (the synchronous
//! `postgres` client).
//!
//! The store's operations are written once against [`Conn`]. Their SQL uses
//! numbered placeholders (`?1`, `?2`, ...), which SQLite takes as they are and
//! which are rewritten to PostgreSQL's `$1`, `$2`, ... before a statement is
//! prepared. Both schemas keep integers as 64-bit integers, text as text and
//! bytes as blobs, so a row reads the same from either database. The few
//! statements that differ between the two branch on [`Conn::dialect`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::encryption::Cipher;
use super::{Result, StoreError};

/// Prepared statements a PostgreSQL connection keeps at most; the cache is
/// emptied when it would grow past this, because some statements inline
/// filter values and are rarely reused.
const PG_STATEMENT_CACHE: usize = 512;
/// Prepared statements a SQLite connection keeps, least recently used first out.
const SQLITE_STATEMENT_CACHE: usize = 256;

/// The SQL dialect of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a placeholder or read from a column.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Value<'_> {
    /// Names the value's type for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "NULL",
            Self::Int(_) => "an integer",
            Self::Real(_) => "a real",
            Self::Text(_) => "text",
            Self::Blob(_) => "a blob",
        }
    }
}

/// A Rust value that can be bound to a placeholder.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, u8, u16, u32, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(value) => value.to_value(),
            None => Value::Null,
        }
    }
}

impl<T: ToValue + ?Sized> ToValue for Arc<T> {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

/// Builds the parameter list of a statement, like `rusqlite::params!`.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_params {
    () => {
        &[] as &[&dyn $crate::store::sql::ToValue]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub use crate::sql_params as params;

/// A Rust value that can be read from a column.
pub trait FromValue: Sized {
    /// Converts the value, or returns what was expected instead.
    fn from_value(value: Value<'_>) -> Result<Self, &'static str>;
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
                match value {
                    Value::Int(v) => <$t>::try_from(v).map_err(|_| concat!("an integer that fits ", stringify!($t))),
                    _ => Err("an integer"),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u16, u32, u64, usize);

impl FromValue for bool {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Int(v) => Ok(v != 0),
            _ => Err("an integer"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Real(v) => Ok(v),
            Value::Int(v) => Ok(v as f64),
            _ => Err("a number"),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Text(v) => Ok(v.to_owned()),
            _ => Err("text"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Blob(v) => Ok(v.to_vec()),
            Value::Text(v) => Ok(v.as_bytes().to_vec()),
            _ => Err("a blob"),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Blob(v) => v.try_into().map_err(|_| "a blob of the expected length"),
            _ => Err("a blob"),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value<'_>) -> Result<Self, &'static str> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a query result.
pub struct Row<'a> {
    inner: RowInner<'a>,
}

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Reads column `index` (from 0) as `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = self.value(index)?;
        T::from_value(value).map_err(|expected| {
            StoreError::Corrupt(format!(
                "column {index} contains {}, expected {expected}",
                value.kind()
            ))
        })
    }

    fn value(&self, index: usize) -> Result<Value<'_>> {
        match &self.inner {
            RowInner::Sqlite(row) => Ok(match row.get_ref(index)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                rusqlite::types::ValueRef::Text(v) => Value::Text(
                    std::str::from_utf8(v)
                        .map_err(|_| StoreError::Corrupt(format!("column {index} is not UTF-8")))?,
                ),
                rusqlite::types::ValueRef::Blob(v) => Value::Blob(v),
            }),
            RowInner::Postgres(row) => postgres_value(row, index),
        }
    }
}

fn postgres_value(row: &postgres::Row, index: usize) -> Result<Value<'_>> {
    use postgres::types::Type;

    let Some(column) = row.columns().get(index) else {
        return Err(StoreError::Corrupt(format!("no column {index}")));
    };
    let ty = column.type_().clone();
    let value = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(index)?.map(Value::Int)
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(index)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(index)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(index)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(index)?.map(Value::Real)
    } else if ty == Type::BYTEA {
        row.try_get::<_, Option<&[u8]>>(index)?.map(Value::Blob)
    } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(&ty) {
        row.try_get::<_, Option<&str>>(index)?.map(Value::Text)
    } else {
        return Err(StoreError::Corrupt(format!(
            "column {} has type {ty}, which the store does not read; cast it to BIGINT or TEXT",
            column.name()
        )));
    };
    Ok(value.unwrap_or(Value::Null))
}

/// Binds a [`Value`] to whatever type PostgreSQL inferred for the placeholder.
#[derive(Debug)]
struct PgValue<'a>(Value<'a>);

impl postgres::types::ToSql for PgValue<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};

        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer to a {ty} parameter").into()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => Err(format!("cannot bind a real to a {ty} parameter").into()),
            },
            Value::Text(v) => match *ty {
                Type::BYTEA => v.as_bytes().to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A connection to the store's database, with the cipher that seals
/// endpoint secrets.
pub struct Conn {
    inner: ConnInner,
    cipher: Option<Arc<Cipher>>,
}

enum ConnInner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgConn>>),
}

struct PgConn {
    /// Always `Some` until the connection is dropped.
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Closing the client blocks on its own runtime, which panics on a
        // thread that drives async tasks; such a thread hands it to another.
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("hookd-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl PgConn {
    fn client(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("the client is taken only on drop")
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client().prepare(&to_postgres_placeholders(sql))?;
        if self.statements.len() >= PG_STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Conn {
    pub(crate) fn sqlite(conn: rusqlite::Connection, cipher: Option<Arc<Cipher>>) -> Self {
        conn.set_prepared_statement_cache_capacity(SQLITE_STATEMENT_CACHE);
        Self {
            inner: ConnInner::Sqlite(conn),
            cipher,
        }
    }

    pub(crate) fn postgres(client: postgres::Client, cipher: Option<Arc<Cipher>>) -> Self {
        Self {
            inner: ConnInner::Postgres(Box::new(RefCell::new(PgConn {
                client: Some(client),
                statements: HashMap::new(),
            }))),
            cipher,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            ConnInner::Sqlite(_) => Dialect::Sqlite,
            ConnInner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The cipher of endpoint secrets; `None` stores them as plaintext.
    pub(crate) fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_deref()
    }

    /// True when the connection to the server is lost; a SQLite file never is.
    pub(crate) fn is_broken(&self) -> bool {
        match &self.inner {
            ConnInner::Sqlite(_) => false,
            ConnInner::Postgres(pg) => pg.borrow_mut().client().is_closed(),
        }
    }

    /// Returns a FROM item over the elements of the JSON array in `expr`,
    /// named `alias`, whose text is in the column `alias.value`.
    /// Rows changed by the statements this SQLite connection completed so
    /// far; `None` on PostgreSQL.
    pub(crate) fn sqlite_total_changes(&self) -> Option<u64> {
        match &self.inner {
            ConnInner::Sqlite(conn) => Some(conn.total_changes()),
            ConnInner::Postgres(_) => None,
        }
    }

    /// Returns whether a job that failed after `sqlite_total_changes` returned
    /// `changes_before` left the transaction as it found it: on SQLite, when
    /// no statement of the job changed a row and SQLite did not roll the
    /// transaction back. On PostgreSQL a failed statement aborts the whole
    /// transaction, so never.
    pub(crate) fn failed_cleanly(&self, changes_before: Option<u64>) -> bool {
        match &self.inner {
            ConnInner::Sqlite(conn) => {
                changes_before == Some(conn.total_changes()) && !conn.is_autocommit()
            }
            ConnInner::Postgres(_) => false,
        }
    }

    pub fn json_each(&self, expr: &str, alias: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("json_each({expr}) AS {alias}"),
            Dialect::Postgres => {
                format!("json_array_elements_text(CAST({expr} AS json)) AS {alias}(value)")
            }
        }
    }

    /// Runs statements without parameters, separated by semicolons.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            ConnInner::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            ConnInner::Postgres(pg) => Ok(pg.borrow_mut().client().batch_execute(sql)?),
        }
    }

    /// Runs one statement and returns how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize> {
        match &self.inner {
            ConnInner::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                bind_sqlite(&mut statement, params)?;
                Ok(statement.raw_execute()?)
            }
            ConnInner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let statement = pg.statement(sql)?;
                let values = pg_values(params);
                let changed = pg.client().execute(&statement, &pg_refs(&values))?;
                Ok(changed as usize)
            }
        }
    }

    /// Runs a query and maps each row with `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_while(sql, params, |row| {
            out.push(f(row)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Runs a query and maps its first row with `f`; `None` when it returns no row.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut first = None;
        self.query_while(sql, params, |row| {
            if let Some(f) = f.take() {
                first = Some(f(row)?);
            }
            Ok(false)
        })?;
        Ok(first)
    }

    /// Runs a query and calls `f` on each row until it returns false, so a
    /// caller can stop reading early. The other query methods build on it.
    pub fn query_while(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row) -> Result<bool>,
    ) -> Result<()> {
        match &self.inner {
            ConnInner::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                bind_sqlite(&mut statement, params)?;
                let mut rows = statement.raw_query();
                while let Some(row) = rows.next()? {
                    if !f(&Row {
                        inner: RowInner::Sqlite(row),
                    })? {
                        break;
                    }
                }
            }
            ConnInner::Postgres(pg) => {
                let rows = {
                    let mut pg = pg.borrow_mut();
                    let statement = pg.statement(sql)?;
                    let values = pg_values(params);
                    pg.client().query(&statement, &pg_refs(&values))?
                };
                for row in &rows {
                    if !f(&Row {
                        inner: RowInner::Postgres(row),
                    })? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a query that returns exactly one row, such as a `COUNT(*)`.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row returned by: {sql}")))
    }
}

fn bind_sqlite(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: &[&dyn ToValue],
) -> Result<()> {
    use rusqlite::types::{ToSqlOutput, ValueRef as SqliteValue};

    let expected = statement.parameter_count();
    if expected != params.len() {
        return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterCount(
            params.len(),
            expected,
        )));
    }
    for (index, param) in params.iter().enumerate() {
        let value = match param.to_value() {
            Value::Null => SqliteValue::Null,
            Value::Int(v) => SqliteValue::Integer(v),
            Value::Real(v) => SqliteValue::Real(v),
            Value::Text(v) => SqliteValue::Text(v.as_bytes()),
            Value::Blob(v) => SqliteValue::Blob(v),
        };
        statement.raw_bind_parameter(index + 1, ToSqlOutput::Borrowed(value))?;
    }
    Ok(())
}

fn pg_values<'a>(params: &'a [&'a dyn ToValue]) -> Vec<PgValue<'a>> {
    params.iter().map(|p| PgValue(p.to_value())).collect()
}

fn pg_refs<'a>(values: &'a [PgValue<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// Rewrites `?N` placeholders to PostgreSQL's `$N`, leaving string literals,
/// quoted names and comments as they are.
pub(crate) fn to_postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_dollars() {
        assert_eq!(
            to_postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c > ?12"),
            "SELECT a FROM t WHERE b = $1 AND c > $12"
        );
    }

    #[test]
    fn placeholders_in_literals_stay() {
        assert_eq!(
            to_postgres_placeholders("SELECT '?1', \"?2\" -- ?3\n WHERE x = ?4"),
            "SELECT '?1', \"?2\" -- ?3\n WHERE x = $4"
        );
    }

    #[test]
    fn quote_inside_literal_is_kept() {
        assert_eq!(
            to_postgres_placeholders("SELECT 'it''s ?1' WHERE a = ?2"),
            "SELECT 'it''s ?1' WHERE a = $2"
        );
    }
}
