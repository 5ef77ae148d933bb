//! Records from a stream source that could not become messages, kept with
//! the reason so an operator can fix and replay them.

use super::sql::{params, Conn, Row};

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

fn from_row(row: &Row) -> Result<DeadLetter> {
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
pub fn insert(conn: &Conn, letter: &DeadLetter) -> Result<bool> {
    let changed = conn.execute(
        &format!(
            "INSERT INTO dead_letters ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT DO NOTHING"
        ),
        params![
            letter.id,
            letter.source,
            letter.origin,
            letter.reason,
            letter.reason_kind,
            letter.key,
            letter.value,
            letter.created_at
        ],
    )?;
    Ok(changed == 1)
}

/// Lists one page of a source's dead letters, in id (creation) order.
pub fn list(conn: &Conn, source: &str, page: &PageRequest) -> Result<Vec<DeadLetter>> {
    let (condition, order) = page.clause("id", 2);
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM dead_letters WHERE source = ?1 AND {condition} {order}"),
        params![source, page.iterator],
        from_row,
    )
}

/// Number of dead letters of a source.
pub fn count(conn: &Conn, source: &str) -> Result<u64> {
    conn.query_one(
        "SELECT COUNT(*) FROM dead_letters WHERE source = ?1",
        params![source],
        |row| row.get(0),
    )
}
