//! Applications: the tenants that own endpoints and messages.

use super::sql::{params, Conn, Row};

use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::{ids, Application};

const COLUMNS: &str = "id, uid, name, rate_limit, metadata, created_at, updated_at";

fn from_row(row: &Row) -> Result<(Application, String)> {
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

pub fn insert(conn: &Conn, app: &Application) -> Result<()> {
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

pub fn update(conn: &Conn, app: &Application) -> Result<()> {
    conn.execute(
        "UPDATE applications SET uid = ?2, name = ?3, rate_limit = ?4, metadata = ?5, updated_at = ?6 WHERE id = ?1",
        params![app.id, app.uid, app.name, app.rate_limit, to_json(&app.metadata), app.updated_at],
    )
    .map_err(|err| StoreError::conflict_on(err, "uid"))?;
    Ok(())
}

/// Finds an application by its id or, failing that, by its uid.
pub fn get(conn: &Conn, id_or_uid: &str) -> Result<Option<Application>> {
    let by = if ids::has_prefix(id_or_uid, ids::APPLICATION) {
        "id"
    } else {
        "uid"
    };
    let found = conn.query_opt(
        &format!("SELECT {COLUMNS} FROM applications WHERE {by} = ?1"),
        params![id_or_uid],
        from_row,
    )?;
    let found = match found {
        Some(found) => Some(found),
        // A uid may itself look like an id.
        None if by == "id" => conn.query_opt(
            &format!("SELECT {COLUMNS} FROM applications WHERE uid = ?1"),
            params![id_or_uid],
            from_row,
        )?,
        None => None,
    };
    found.map(finish).transpose()
}

pub fn list(conn: &Conn, page: &PageRequest) -> Result<Vec<Application>> {
    let (condition, order) = page.clause("id", 1);
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM applications WHERE {condition} {order}"),
        params![page.iterator],
        |row| finish(from_row(row)?),
    )
}

/// Deletes an application with its endpoints, messages, deliveries,
/// attempts, application tokens and recover or replay tasks.
pub fn delete(conn: &Conn, id: &str) -> Result<bool> {
    super::endpoints::clear_writer_caches();
    for table in [
        "tasks",
        "attempts",
        "deliveries",
        "messages",
        "endpoints",
        "app_tokens",
    ] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE app_id = ?1"),
            params![id],
        )?;
    }
    Ok(conn.execute("DELETE FROM applications WHERE id = ?1", params![id])? > 0)
}
