//! Applications: the tenants that own endpoints and messages.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::{ids, Application};

const COLUMNS: &str = "id, uid, name, rate_limit, metadata, created_at, updated_at";

fn from_row(row: &Row) -> rusqlite::Result<(Application, String)> {
    Ok((
        Application {
            id: row.get(0)?,
            uid: row.get(1)?,
            name: row.get(2)?,
            rate_limit: row.get(3)?,
            metadata: Default::default(),
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
        },
        row.get(4)?,
    ))
}

fn finish((mut app, metadata): (Application, String)) -> Result<Application> {
    app.metadata = from_json(&metadata, "applications.metadata")?;
    Ok(app)
}

pub fn insert(conn: &Connection, app: &Application) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO applications ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            app.id,
            app.uid,
            app.name,
            app.rate_limit,
            to_json(&app.metadata),
            app.created_at,
            app.updated_at
        ],
    )
    .map_err(|err| StoreError::conflict_on(err, "uid"))?;
    Ok(())
}

pub fn update(conn: &Connection, app: &Application) -> Result<()> {
    conn.execute(
        "UPDATE applications SET uid = ?2, name = ?3, rate_limit = ?4, metadata = ?5, updated_at = ?6 WHERE id = ?1",
        params![app.id, app.uid, app.name, app.rate_limit, to_json(&app.metadata), app.updated_at],
    )
    .map_err(|err| StoreError::conflict_on(err, "uid"))?;
    Ok(())
}

/// Finds an application by its id or, failing that, by its uid.
pub fn get(conn: &Connection, id_or_uid: &str) -> Result<Option<Application>> {
    let by = if ids::has_prefix(id_or_uid, ids::APPLICATION) {
        "id"
    } else {
        "uid"
    };
    let found = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM applications WHERE {by} = ?1"
        ))?
        .query_row([id_or_uid], from_row)
        .optional()?;
    let found = match found {
        Some(found) => Some(found),
        // A uid may itself look like an id.
        None if by == "id" => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM applications WHERE uid = ?1"
            ))?
            .query_row([id_or_uid], from_row)
            .optional()?,
        None => None,
    };
    found.map(finish).transpose()
}

pub fn list(conn: &Connection, page: &PageRequest) -> Result<Vec<Application>> {
    let (condition, order) = page.clause("id", 1);
    let mut statement = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM applications WHERE {condition} {order}"
    ))?;
    let rows = statement.query_map(params![page.iterator], from_row)?;
    rows.map(|row| finish(row?)).collect()
}

/// Deletes an application with its endpoints, messages, deliveries,
/// attempts, application tokens and recover or replay tasks.
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    super::endpoints::clear_writer_caches();
    for table in [
        "tasks",
        "attempts",
        "deliveries",
        "messages",
        "endpoints",
        "app_tokens",
    ] {
        conn.execute(&format!("DELETE FROM {table} WHERE app_id = ?1"), [id])?;
    }
    Ok(conn.execute("DELETE FROM applications WHERE id = ?1", [id])? > 0)
}
