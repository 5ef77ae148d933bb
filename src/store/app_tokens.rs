//! Application tokens: bearer tokens limited to one application, with an
//! expiry. Only the SHA-256 of each token is stored, so the database cannot
//! give a token back.

use super::sql::{params, Conn, Row};

use super::{from_json, to_json, Result};
use crate::model::Millis;

const COLUMNS: &str =
    "token_sha256, app_id, session_id, read_only, feature_flags, created_at, expires_at, revoked_at";

/// One issued application token, without the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AppToken {
    /// SHA-256 of the token, the table's key.
    pub token_sha256: [u8; 32],
    /// Id of the only application the token may act on.
    pub app_id: String,
    /// The client's name for the session, which `expire-all` can select on.
    pub session_id: Option<String>,
    /// Allows only reads (GET) besides logging out.
    pub read_only: bool,
    /// Feature flags that show the event types gated by them.
    pub feature_flags: Vec<String>,
    pub created_at: Millis,
    /// The token is rejected from this time on.
    pub expires_at: Millis,
    /// When the token was logged out. It is rejected from then on.
    pub revoked_at: Option<Millis>,
}

impl AppToken {
    /// Returns true when the token may be used at `now`.
    pub fn is_valid_at(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

fn from_row(row: &Row) -> Result<(AppToken, String)> {
    Ok((
        AppToken {
            token_sha256: row.get(0)?,
            app_id: row.get(1)?,
            session_id: row.get(2)?,
            read_only: row.get(3)?,
            feature_flags: Vec::new(),
            created_at: row.get(5)?,
            expires_at: row.get(6)?,
            revoked_at: row.get(7)?,
        },
        row.get(4)?,
    ))
}

pub fn insert(conn: &Conn, token: &AppToken) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO app_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            token.token_sha256,
            token.app_id,
            token.session_id,
            token.read_only,
            to_json(&token.feature_flags),
            token.created_at,
            token.expires_at,
            token.revoked_at
        ],
    )?;
    Ok(())
}

/// Finds a token by the SHA-256 of its text.
pub fn get(conn: &Conn, token_sha256: &[u8; 32]) -> Result<Option<AppToken>> {
    let found = conn.query_opt(
        &format!("SELECT {COLUMNS} FROM app_tokens WHERE token_sha256 = ?1"),
        params![token_sha256],
        from_row,
    )?;
    let Some((mut token, flags)) = found else {
        return Ok(None);
    };
    token.feature_flags = from_json(&flags, "app_tokens.feature_flags")?;
    Ok(Some(token))
}

/// Revokes one token at `now`. Returns false when it is unknown or was
/// already revoked.
pub fn revoke(conn: &Conn, token_sha256: &[u8; 32], now: Millis) -> Result<bool> {
    let changed = conn.execute(
        "UPDATE app_tokens SET revoked_at = ?2 WHERE token_sha256 = ?1 AND revoked_at IS NULL",
        params![token_sha256, now],
    )?;
    Ok(changed > 0)
}

/// Moves the expiry of an application's tokens forward to `expires_at`
/// where it is later than that. With `session_ids`, only the tokens issued
/// with one of those session ids change. Returns how many tokens changed.
pub fn expire_all(
    conn: &Conn,
    app_id: &str,
    expires_at: Millis,
    session_ids: Option<&[String]>,
) -> Result<usize> {
    let changed = match session_ids {
        None => conn.execute(
            "UPDATE app_tokens SET expires_at = ?2 WHERE app_id = ?1 AND expires_at > ?2",
            params![app_id, expires_at],
        )?,
        Some(sessions) => conn.execute(
            &format!(
                "UPDATE app_tokens SET expires_at = ?2 WHERE app_id = ?1 AND expires_at > ?2 \
                 AND session_id IN (SELECT sessions.value FROM {})",
                conn.json_each("CAST(?3 AS TEXT)", "sessions")
            ),
            params![app_id, expires_at, to_json(&sessions)],
        )?,
    };
    Ok(changed)
}

/// Deletes the tokens that expired before `before`, revoked or not, and
/// returns how many.
pub fn delete_expired(conn: &Conn, before: Millis) -> Result<usize> {
    conn.execute(
        "DELETE FROM app_tokens WHERE expires_at < ?1",
        params![before],
    )
}
