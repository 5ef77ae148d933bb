//! Expunging message payloads and attempt response bodies older than the
//! retention period, in batches small enough not to hold the writer long.
//!
//! Age is the time in the row's id (a ULID made when the row was created).
//! Each table has a watermark in `settings`, the id through which every row
//! has been handled. A batch reads only rows after it, so the work of a run
//! grows with what aged since the last run, not with the table.

use super::sql::{params, Conn};

use super::Result;
use crate::model::{ids, Millis};

/// Text that replaces an expunged attempt response, as in the Svix API.
pub const EXPUNGED_RESPONSE: &str = "EXPUNGED";

const MESSAGES_WATERMARK: &str = "retention_messages_through";
const ATTEMPTS_WATERMARK: &str = "retention_attempts_through";

/// The result of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Rows the batch looked at; fewer than the limit means the table is done.
    pub examined: usize,
    /// Rows whose payload or response it removed.
    pub expunged: usize,
}

/// Removes the payloads of up to `limit` messages made before `cutoff`.
pub fn expunge_messages(conn: &Conn, cutoff: Millis, limit: usize) -> Result<Batch> {
    expunge_batch(
        conn,
        &Target {
            table: "messages",
            prefix: ids::MESSAGE,
            watermark: MESSAGES_WATERMARK,
            expunge: "UPDATE messages SET payload = NULL
                      WHERE id > ?1 AND id <= ?2 AND payload IS NOT NULL",
        },
        cutoff,
        limit,
    )
}

/// Replaces the response bodies of up to `limit` attempts made before
/// `cutoff` with [`EXPUNGED_RESPONSE`]. Empty bodies stay empty.
pub fn expunge_attempts(conn: &Conn, cutoff: Millis, limit: usize) -> Result<Batch> {
    expunge_batch(
        conn,
        &Target {
            table: "attempts",
            prefix: ids::ATTEMPT,
            watermark: ATTEMPTS_WATERMARK,
            expunge: "UPDATE attempts SET response = 'EXPUNGED'
                      WHERE id > ?1 AND id <= ?2 AND response NOT IN ('', 'EXPUNGED')",
        },
        cutoff,
        limit,
    )
}

struct Target {
    table: &'static str,
    prefix: &'static str,
    watermark: &'static str,
    /// Expunges the rows with ids in `(?1, ?2]`.
    expunge: &'static str,
}

fn expunge_batch(conn: &Conn, target: &Target, cutoff: Millis, limit: usize) -> Result<Batch> {
    // A bare prefix sorts before every id that starts with it.
    let after = super::settings::get(conn, target.watermark)?.unwrap_or_default();
    let through = ids::last_at(target.prefix, cutoff);
    if after.as_str() >= through.as_str() {
        return Ok(Batch::default());
    }
    let (examined, last): (usize, Option<String>) = conn.query_one(
        &format!(
            "SELECT COUNT(*), MAX(id) FROM (SELECT id FROM {} WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3) AS batch",
            target.table
        ),
        params![after, through, limit as i64],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let Some(last) = last else {
        return Ok(Batch::default());
    };
    let expunged = conn.execute(target.expunge, params![after, last])?;
    super::settings::put(conn, target.watermark, &last)?;
    Ok(Batch { examined, expunged })
}
