//! Key-value settings that hookd keeps in its database, such as the admin token hash.

use super::sql::{params, Conn};

use super::Result;

pub fn get(conn: &Conn, key: &str) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT value FROM settings WHERE key = ?1",
        params![key],
        |row| row.get(0),
    )
}

/// Stores a value unless the key has one, and returns whether it stored it.
pub fn put_if_absent(conn: &Conn, key: &str, value: &str) -> Result<bool> {
    let inserted = conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        params![key, value],
    )?;
    Ok(inserted == 1)
}

pub fn put(conn: &Conn, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
