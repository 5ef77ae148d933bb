//! Versioned schema migrations, applied in order at open.
//!
//! `PRAGMA user_version` stores the number of migrations applied. A migration
//! is never edited once released; a change to the schema is a new entry.

use rusqlite::Connection;

use super::Result;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE applications (
        id TEXT PRIMARY KEY,
        uid TEXT UNIQUE,
        name TEXT NOT NULL,
        rate_limit INTEGER,
        metadata TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE event_types (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL,
        archived INTEGER NOT NULL,
        deprecated INTEGER NOT NULL,
        schemas TEXT,
        group_name TEXT,
        feature_flags TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        uid TEXT,
        url TEXT NOT NULL,
        description TEXT NOT NULL,
        rate_limit INTEGER,
        disabled INTEGER NOT NULL,
        event_types TEXT,
        channels TEXT,
        secret TEXT NOT NULL,
        previous_secrets TEXT NOT NULL,
        metadata TEXT NOT NULL,
        headers TEXT NOT NULL,
        retry_schedule_ms TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (app_id, uid)
    );
    CREATE INDEX endpoints_by_app ON endpoints (app_id, id);
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_id TEXT,
        channels TEXT,
        tags TEXT,
        payload TEXT,
        created_at INTEGER NOT NULL,
        UNIQUE (app_id, event_id)
    );
    CREATE INDEX messages_by_app ON messages (app_id, id);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        msg_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        trigger INTEGER NOT NULL,
        status INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX deliveries_pending_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
        WHERE status = 1;
    CREATE INDEX deliveries_pending_retries ON deliveries (next_attempt_at)
        WHERE status = 1 AND attempts > 0;
    CREATE INDEX deliveries_by_message ON deliveries (msg_id, endpoint_id);
    CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, msg_id);
    CREATE TABLE attempts (
        id TEXT PRIMARY KEY,
        delivery_id INTEGER NOT NULL,
        msg_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        url TEXT NOT NULL,
        status INTEGER NOT NULL,
        response_status INTEGER NOT NULL,
        response TEXT NOT NULL,
        response_truncated INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        error_kind TEXT,
        trigger INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);
    CREATE INDEX attempts_by_message ON attempts (msg_id, id);
    "#,
    // 2: when an endpoint started failing without a success since, for
    // disabling endpoints that fail for too long.
    r#"
    ALTER TABLE endpoints ADD COLUMN failing_since INTEGER;
    "#,
    // 3: records from Kafka or NATS that could not become messages. `origin`
    // names the record in its stream, so a record read twice is kept once.
    r#"
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        origin TEXT NOT NULL,
        reason TEXT NOT NULL,
        reason_kind TEXT NOT NULL,
        record_key BLOB,
        value BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (source, origin)
    );
    CREATE INDEX dead_letters_by_source ON dead_letters (source, id);
    "#,
    // 4: the position of each named consumer of an endpoint's message feed,
    // kept on the server so a consumer resumes where it stopped.
    r#"
    CREATE TABLE poller_consumers (
        endpoint_id TEXT NOT NULL,
        consumer_id TEXT NOT NULL,
        iterator TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (endpoint_id, consumer_id)
    );
    "#,
    // 5: tokens limited to one application, kept as the SHA-256 of the
    // token. `feature_flags` is a JSON list; `revoked_at` is set by logout.
    r#"
    CREATE TABLE app_tokens (
        token_sha256 BLOB PRIMARY KEY,
        app_id TEXT NOT NULL,
        session_id TEXT,
        read_only INTEGER NOT NULL,
        feature_flags TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX app_tokens_by_app ON app_tokens (app_id);
    "#,
    // 6: recover and replay tasks. `cursor` is the id of the last message a
    // task considered; it advances in the same transaction as the deliveries
    // the task creates, so a restart resumes after it.
    r#"
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        app_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        filter TEXT NOT NULL,
        since INTEGER NOT NULL,
        until INTEGER NOT NULL,
        cursor TEXT,
        messages_scanned INTEGER NOT NULL,
        messages_sent INTEGER NOT NULL,
        messages_expunged INTEGER NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX tasks_running ON tasks (id) WHERE status = 'running';
    "#,
];

/// Applies every migration the database has not seen yet.
pub fn migrate(conn: &Connection) -> Result<()> {
    let applied: usize =
        conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(super::StoreError::Corrupt(format!(
            "the database has schema version {applied}, newer than this hookd knows ({}); run a newer hookd",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

/// Returns the number of migrations the database has applied.
pub fn version(conn: &Connection) -> Result<usize> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))? as usize)
}
