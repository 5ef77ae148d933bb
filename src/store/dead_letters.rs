//! Records from a stream source that could not become messages, kept with
//! the reason so an operator can fix and replay them.

use rusqlite::{params, Connection, Row};

use super::{PageRequest, Result};
use crate::model::Millis;

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    /// Name of the source that read the record.
    pub source: String,
    /// The record's place in its stream, such as `events/0/1742`.
    pub origin: String,
    /// The reason the record did not become a message, for people.
    pub reason: String,
    /// The kind of reason, from a fixed set, for filters and metrics.
    pub reason_kind: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub created_at: Millis,
}

const COLUMNS: &str = "id, source, origin, reason, reason_kind, record_key, value, created_at";

fn from_row(row: &Row) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        source: row.get(1)?,
        origin: row.get(2)?,
        reason: row.get(3)?,
        reason_kind: row.get(4)?,
        key: row.get(5)?,
        value: row.get(6)?,
        created_at: row.get(7)?,
    })
}

/// Stores a dead letter unless the same record of the same source is
/// already stored. Returns true when it was new.
pub fn insert(conn: &Connection, letter: &DeadLetter) -> Result<bool> {
    let changed = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO dead_letters ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?
        .execute(params![
            letter.id,
            letter.source,
            letter.origin,
            letter.reason,
            letter.reason_kind,
            letter.key,
            letter.value,
            letter.created_at
        ])?;
    Ok(changed == 1)
}

/// Lists one page of a source's dead letters, in id (creation) order.
pub fn list(conn: &Connection, source: &str, page: &PageRequest) -> Result<Vec<DeadLetter>> {
    let (condition, order) = page.clause("id", 2);
    let mut statement = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE source = ?1 AND {condition} {order}"
    ))?;
    let rows = statement
        .query_map(params![source, page.iterator], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Number of dead letters of a source.
pub fn count(conn: &Connection, source: &str) -> Result<u64> {
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM dead_letters WHERE source = ?1",
        [source],
        |row| row.get(0),
    )?;
    Ok(count as u64)
}
