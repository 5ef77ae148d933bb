//! Event types: the names of the kinds of events an application can receive.

use super::sql::{params, Conn, Row};

use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::EventType;

const COLUMNS: &str =
    "name, description, archived, deprecated, schemas, group_name, feature_flags, created_at, updated_at";

type RawRow = (EventType, Option<String>, Option<String>);

fn from_row(row: &Row) -> Result<RawRow> {
    Ok((
        EventType {
            name: row.get(0)?,
            description: row.get(1)?,
            archived: row.get(2)?,
            deprecated: row.get(3)?,
            schemas: None,
            group_name: row.get(5)?,
            feature_flags: None,
            created_at: row.get(7)?,
            updated_at: row.get(8)?,
        },
        row.get(4)?,
        row.get(6)?,
    ))
}

fn finish((mut event_type, schemas, flags): RawRow) -> Result<EventType> {
    event_type.schemas = schemas
        .map(|s| from_json(&s, "event_types.schemas"))
        .transpose()?;
    event_type.feature_flags = flags
        .map(|f| from_json(&f, "event_types.feature_flags"))
        .transpose()?;
    Ok(event_type)
}

/// Inserts or, with `replace`, overwrites an event type.
pub fn save(conn: &Conn, event_type: &EventType, replace: bool) -> Result<()> {
    let on_conflict = if replace {
        " ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
         archived = excluded.archived, deprecated = excluded.deprecated, schemas = excluded.schemas, \
         group_name = excluded.group_name, feature_flags = excluded.feature_flags, \
         created_at = excluded.created_at, updated_at = excluded.updated_at"
    } else {
        ""
    };
    conn.execute(
        &format!("INSERT INTO event_types ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9){on_conflict}"),
        params![
            event_type.name,
            event_type.description,
            event_type.archived,
            event_type.deprecated,
            event_type.schemas.as_ref().map(to_json),
            event_type.group_name,
            event_type.feature_flags.as_ref().map(to_json),
            event_type.created_at,
            event_type.updated_at
        ],
    )
    .map_err(|err| StoreError::conflict_on(err, "name"))?;
    Ok(())
}

pub fn get(conn: &Conn, name: &str) -> Result<Option<EventType>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM event_types WHERE name = ?1"),
        params![name],
        from_row,
    )?
    .map(finish)
    .transpose()
}

/// Lists event types by name. With `granted_flags`, only those whose every
/// feature flag is in that list are returned.
pub fn list(
    conn: &Conn,
    page: &PageRequest,
    include_archived: bool,
    granted_flags: Option<&[String]>,
) -> Result<Vec<EventType>> {
    let (condition, order) = page.clause("name", 1);
    let archived = if include_archived {
        ""
    } else {
        "AND archived = 0"
    };
    let flags = if granted_flags.is_some() {
        format!(
            "AND NOT EXISTS (SELECT 1 FROM {} WHERE required.value NOT IN (SELECT granted.value FROM {}))",
            conn.json_each("event_types.feature_flags", "required"),
            conn.json_each("CAST(?2 AS TEXT)", "granted"),
        )
    } else {
        "AND CAST(?2 AS TEXT) IS NULL".to_owned()
    };
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM event_types WHERE {condition} {archived} {flags} {order}"),
        params![page.iterator, granted_flags.map(|flags| to_json(&flags))],
        |row| finish(from_row(row)?),
    )
}

pub fn delete(conn: &Conn, name: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM event_types WHERE name = ?1", params![name])? > 0)
}
