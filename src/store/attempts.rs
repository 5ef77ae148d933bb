//! Attempts: one row per HTTP request made for a delivery.

use std::borrow::Cow;

use super::sql::{params, Conn, Row};

use super::{messages::quote, PageRequest, Result, StoreError};
use crate::model::{Attempt, DeliveryStatus, Millis, Trigger};

const COLUMNS: &str =
    "id, delivery_id, msg_id, endpoint_id, app_id, url, status, response_status, response, \
     response_truncated, duration_ms, error_kind, trigger, created_at";

fn from_row(row: &Row) -> Result<(Attempt, i64)> {
    Ok((
        Attempt {
            id: row.get(0)?,
            delivery_id: row.get(1)?,
            msg_id: row.get(2)?,
            endpoint_id: row.get(3)?,
            app_id: row.get(4)?,
            url: row.get(5)?,
            status: DeliveryStatus::Fail,
            response_status: row.get(7)?,
            response: row.get(8)?,
            response_truncated: row.get(9)?,
            duration_ms: row.get(10)?,
            error_kind: row.get(11)?,
            trigger: Trigger::from_code(row.get(12)?),
            created_at: row.get(13)?,
        },
        row.get(6)?,
    ))
}

fn finish((mut attempt, status): (Attempt, i64)) -> Result<Attempt> {
    attempt.status = DeliveryStatus::from_code(status)
        .ok_or_else(|| StoreError::Corrupt(format!("attempt status {status}")))?;
    Ok(attempt)
}

/// Stores an attempt. NUL characters of the response body become U+FFFD,
/// because PostgreSQL text cannot hold them, so both databases store the
/// same text.
pub fn insert(conn: &Conn, attempt: &Attempt) -> Result<()> {
    let response = if attempt.response.contains('\0') {
        Cow::Owned(attempt.response.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(attempt.response.as_str())
    };
    conn.execute(
        &format!(
            "INSERT INTO attempts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
        attempt.id,
        attempt.delivery_id,
        attempt.msg_id,
        attempt.endpoint_id,
        attempt.app_id,
        attempt.url,
        attempt.status as i64,
        attempt.response_status,
        &*response,
        attempt.response_truncated,
        attempt.duration_ms,
        attempt.error_kind,
        attempt.trigger as i64,
            attempt.created_at
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Conn, app_id: &str, msg_id: &str, id: &str) -> Result<Option<Attempt>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM attempts WHERE app_id = ?1 AND msg_id = ?2 AND id = ?3"),
        params![app_id, msg_id, id],
        from_row,
    )?
    .map(finish)
    .transpose()
}

/// Filters of an attempt list.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub status: Option<DeliveryStatus>,
    pub endpoint_id: Option<String>,
    pub before: Option<Millis>,
    pub after: Option<Millis>,
}

/// Attempts of an application, by endpoint or by message (`by` is `endpoint_id` or `msg_id`), newest first.
pub fn list(
    conn: &Conn,
    app_id: &str,
    by: &str,
    value: &str,
    page: &PageRequest,
    filter: &AttemptFilter,
) -> Result<Vec<Attempt>> {
    debug_assert!(by == "endpoint_id" || by == "msg_id");
    let (condition, order) = page.clause("id", 3);
    let mut sql =
        format!("SELECT {COLUMNS} FROM attempts WHERE app_id = ?1 AND {by} = ?2 AND {condition}");
    if let Some(status) = filter.status {
        sql.push_str(&format!(" AND status = {}", status as i64));
    }
    if let Some(endpoint_id) = &filter.endpoint_id {
        sql.push_str(&format!(" AND endpoint_id = {}", quote(endpoint_id)));
    }
    if let Some(before) = filter.before {
        sql.push_str(&format!(" AND created_at < {before}"));
    }
    if let Some(after) = filter.after {
        sql.push_str(&format!(" AND created_at > {after}"));
    }
    sql.push(' ');
    sql.push_str(&order);
    conn.query_map(&sql, params![app_id, value, page.iterator], |row| {
        finish(from_row(row)?)
    })
}

/// Replaces the stored response body of an attempt with
/// [`EXPUNGED_RESPONSE`](super::retention::EXPUNGED_RESPONSE), as the Svix API does.
pub fn expunge_response(conn: &Conn, id: &str) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE attempts SET response = ?2 WHERE id = ?1",
        params![id, super::retention::EXPUNGED_RESPONSE],
    )? > 0)
}
