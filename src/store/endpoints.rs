//! Endpoints: the URLs of an application that receive deliveries.

use super::sql::{params, Conn, Dialect, Row};
use serde::{Deserialize, Serialize};

use super::encryption::{self, Cipher};
use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::{ids, Endpoint, Millis, PreviousSecret};

/// The columns of an endpoint. The two secret columns hold sealed values
/// when an encryption key is set (see [`encryption`]): they are sealed before
/// an INSERT and opened after a SELECT, in Rust, so both databases store the
/// same text.
const COLUMNS: &str =
    "id, app_id, uid, url, description, rate_limit, disabled, event_types, channels, \
     secret, previous_secrets, metadata, headers, retry_schedule_ms, created_at, updated_at";

/// A rotated-out secret as stored in the `previous_secrets` JSON column.
#[derive(Serialize, Deserialize)]
struct StoredSecret {
    secret: String,
    expires_at: Millis,
}

struct RawRow {
    endpoint: Endpoint,
    event_types: Option<String>,
    channels: Option<String>,
    previous_secrets: String,
    metadata: String,
    headers: String,
    retry_schedule: Option<String>,
}

fn from_row(row: &Row) -> Result<RawRow> {
    Ok(RawRow {
        endpoint: Endpoint {
            id: row.get(0)?,
            app_id: row.get(1)?,
            uid: row.get(2)?,
            url: row.get(3)?,
            description: row.get(4)?,
            rate_limit: row.get(5)?,
            disabled: row.get(6)?,
            event_types: None,
            channels: None,
            secret: row.get(9)?,
            previous_secrets: Vec::new(),
            metadata: Default::default(),
            headers: Default::default(),
            retry_schedule_ms: None,
            created_at: row.get(14)?,
            updated_at: row.get(15)?,
        },
        event_types: row.get(7)?,
        channels: row.get(8)?,
        previous_secrets: row.get(10)?,
        metadata: row.get(11)?,
        headers: row.get(12)?,
        retry_schedule: row.get(13)?,
    })
}

fn finish(cipher: Option<&Cipher>, raw: RawRow) -> Result<Endpoint> {
    let mut endpoint = raw.endpoint;
    endpoint.secret = encryption::open(
        cipher,
        &endpoint.secret,
        &encryption::context("endpoints.secret", &endpoint.id),
    )?;
    let previous_secrets = encryption::open(
        cipher,
        &raw.previous_secrets,
        &encryption::context("endpoints.previous_secrets", &endpoint.id),
    )?;
    endpoint.event_types = raw
        .event_types
        .map(|v| from_json(&v, "endpoints.event_types"))
        .transpose()?;
    endpoint.channels = raw
        .channels
        .map(|v| from_json(&v, "endpoints.channels"))
        .transpose()?;
    let previous: Vec<StoredSecret> = from_json(&previous_secrets, "endpoints.previous_secrets")?;
    endpoint.previous_secrets = previous
        .into_iter()
        .map(|s| PreviousSecret {
            secret: s.secret,
            expires_at: s.expires_at,
        })
        .collect();
    endpoint.metadata = from_json(&raw.metadata, "endpoints.metadata")?;
    endpoint.headers = from_json(&raw.headers, "endpoints.headers")?;
    endpoint.retry_schedule_ms = raw
        .retry_schedule
        .map(|v| from_json(&v, "endpoints.retry_schedule_ms"))
        .transpose()?;
    Ok(endpoint)
}

fn previous_json(endpoint: &Endpoint) -> String {
    let stored: Vec<StoredSecret> = endpoint
        .previous_secrets
        .iter()
        .map(|s| StoredSecret {
            secret: s.secret.clone(),
            expires_at: s.expires_at,
        })
        .collect();
    to_json(&stored)
}

/// Inserts a new endpoint, or with `replace` updates the one with the same
/// id. An update keeps the columns the model does not carry (`failing_since`).
pub fn save(conn: &Conn, endpoint: &Endpoint, replace: bool) -> Result<()> {
    clear_writer_caches();
    let on_conflict = if replace {
        " ON CONFLICT (id) DO UPDATE SET uid = excluded.uid, url = excluded.url, \
         description = excluded.description, rate_limit = excluded.rate_limit, disabled = excluded.disabled, \
         event_types = excluded.event_types, channels = excluded.channels, secret = excluded.secret, \
         previous_secrets = excluded.previous_secrets, metadata = excluded.metadata, headers = excluded.headers, \
         retry_schedule_ms = excluded.retry_schedule_ms, updated_at = excluded.updated_at"
    } else {
        ""
    };
    conn.execute(
        &format!(
            "INSERT INTO endpoints ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16){on_conflict}"
        ),
        params![
            endpoint.id,
            endpoint.app_id,
            endpoint.uid,
            endpoint.url,
            endpoint.description,
            endpoint.rate_limit,
            endpoint.disabled,
            endpoint.event_types.as_ref().map(to_json),
            endpoint.channels.as_ref().map(to_json),
            encryption::seal(
                conn.cipher(),
                &endpoint.secret,
                &encryption::context("endpoints.secret", &endpoint.id)
            ),
            encryption::seal(
                conn.cipher(),
                &previous_json(endpoint),
                &encryption::context("endpoints.previous_secrets", &endpoint.id)
            ),
            to_json(&endpoint.metadata),
            to_json(&endpoint.headers),
            endpoint.retry_schedule_ms.as_ref().map(to_json),
            endpoint.created_at,
            endpoint.updated_at
        ],
    )
    .map_err(|err| StoreError::conflict_on(err, "uid"))?;
    Ok(())
}

/// Saves a changed endpoint like [`save`], and when the change enables or
/// disables it, resets its failure clock and stores an `endpoint.enabled` or
/// `endpoint.disabled` operational event. Returns the deliveries created.
pub fn save_with_events(
    conn: &Conn,
    endpoint: &Endpoint,
    was_disabled: bool,
    operational_app_id: Option<&str>,
    now: Millis,
) -> Result<Vec<super::messages::NewDelivery>> {
    save(conn, endpoint, true)?;
    if was_disabled == endpoint.disabled {
        return Ok(Vec::new());
    }
    conn.execute(
        "UPDATE endpoints SET failing_since = NULL WHERE id = ?1",
        params![endpoint.id],
    )?;
    let Some(app_id) = operational_app_id.filter(|app_id| *app_id != endpoint.app_id) else {
        return Ok(Vec::new());
    };
    let mut data = super::operational::endpoint_data(conn, endpoint, None)?;
    let event_type = if endpoint.disabled {
        data["trigger"] = serde_json::json!("manual");
        super::operational::ENDPOINT_DISABLED
    } else {
        super::operational::ENDPOINT_ENABLED
    };
    super::operational::emit(conn, app_id, event_type, data, now)
}

/// Finds an endpoint of an application by its id or, failing that, by its uid.
pub fn get(conn: &Conn, app_id: &str, id_or_uid: &str) -> Result<Option<Endpoint>> {
    let mut found = None;
    if ids::has_prefix(id_or_uid, ids::ENDPOINT) {
        found = conn.query_opt(
            &format!("SELECT {COLUMNS} FROM endpoints WHERE app_id = ?1 AND id = ?2"),
            params![app_id, id_or_uid],
            from_row,
        )?;
    }
    if found.is_none() {
        found = conn.query_opt(
            &format!("SELECT {COLUMNS} FROM endpoints WHERE app_id = ?1 AND uid = ?2"),
            params![app_id, id_or_uid],
            from_row,
        )?;
    }
    found.map(|raw| finish(conn.cipher(), raw)).transpose()
}

/// Finds an endpoint by id alone, for the delivery engine.
pub fn get_by_id(conn: &Conn, id: &str) -> Result<Option<Endpoint>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM endpoints WHERE id = ?1"),
        params![id],
        from_row,
    )?
    .map(|raw| finish(conn.cipher(), raw))
    .transpose()
}

pub fn list(conn: &Conn, app_id: &str, page: &PageRequest) -> Result<Vec<Endpoint>> {
    let (condition, order) = page.clause("id", 2);
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM endpoints WHERE app_id = ?1 AND {condition} {order}"),
        params![app_id, page.iterator],
        |row| finish(conn.cipher(), from_row(row)?),
    )
}

thread_local! {
    /// Enabled endpoints by application, for fan-out. Fan-out and every
    /// endpoint change run on the store's writer thread, so a cache per thread
    /// observes every change. Each change, and each rolled-back job, clears it.
    /// Only SQLite uses it: on PostgreSQL other nodes change endpoints too.
    static FAN_OUT_CACHE: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<[Endpoint]>>> =
        Default::default();
}

/// Applications whose endpoints the fan-out cache keeps at most.
const FAN_OUT_CACHE_APPS: usize = 10_000;

thread_local! {
    /// Endpoints whose `failing_since` is known to be NULL, so that a
    /// success need not write it again. Kept and cleared like the fan-out cache.
    static NOT_FAILING: std::cell::RefCell<std::collections::HashSet<String>> = Default::default();
}

/// Forgets everything the writer thread caches about endpoints.
pub fn clear_writer_caches() {
    FAN_OUT_CACHE.with(|cache| cache.borrow_mut().clear());
    NOT_FAILING.with(|set| set.borrow_mut().clear());
}

/// Clears an endpoint's failure clock after a success, writing only when it
/// may be set.
pub fn mark_not_failing(conn: &Conn, endpoint_id: &str) -> Result<()> {
    let cached = conn.dialect() == Dialect::Sqlite;
    if cached && NOT_FAILING.with(|set| set.borrow().contains(endpoint_id)) {
        return Ok(());
    }
    conn.execute(
        "UPDATE endpoints SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL",
        params![endpoint_id],
    )?;
    if !cached {
        return Ok(());
    }
    NOT_FAILING.with(|set| {
        let mut set = set.borrow_mut();
        if set.len() >= 100_000 {
            set.clear();
        }
        set.insert(endpoint_id.to_owned());
    });
    Ok(())
}

/// Starts an endpoint's failure clock at `now` unless it is running.
pub fn mark_failing(conn: &Conn, endpoint_id: &str, now: Millis) -> Result<()> {
    NOT_FAILING.with(|set| set.borrow_mut().remove(endpoint_id));
    conn.execute(
        "UPDATE endpoints SET failing_since = ?2 WHERE id = ?1 AND failing_since IS NULL",
        params![endpoint_id, now],
    )?;
    Ok(())
}

/// Lists the enabled endpoints of an application for fan-out, from the cache
/// of this thread when it has them.
pub fn list_enabled_cached(conn: &Conn, app_id: &str) -> Result<std::rc::Rc<[Endpoint]>> {
    if conn.dialect() != Dialect::Sqlite {
        return Ok(list_enabled(conn, app_id)?.into());
    }
    if let Some(found) = FAN_OUT_CACHE.with(|cache| cache.borrow().get(app_id).cloned()) {
        return Ok(found);
    }
    let endpoints: std::rc::Rc<[Endpoint]> = list_enabled(conn, app_id)?.into();
    FAN_OUT_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= FAN_OUT_CACHE_APPS {
            cache.clear();
        }
        cache.insert(app_id.to_owned(), endpoints.clone());
    });
    Ok(endpoints)
}

/// Lists every enabled endpoint of an application.
pub fn list_enabled(conn: &Conn, app_id: &str) -> Result<Vec<Endpoint>> {
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM endpoints WHERE app_id = ?1 AND disabled = 0 ORDER BY id"),
        params![app_id],
        |row| finish(conn.cipher(), from_row(row)?),
    )
}

/// Checks every stored secret against the key at start. With a key, seals
/// the secrets still stored as plaintext and returns how many endpoints it
/// changed. Fails when a sealed secret does not open: there is no key, or it
/// is not the key the secret was sealed with.
pub fn seal_secrets(conn: &Conn, cipher: Option<&Cipher>) -> Result<usize> {
    let rows = conn.query_map(
        "SELECT id, secret, previous_secrets FROM endpoints",
        params![],
        |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<String>(1)?,
                row.get::<String>(2)?,
            ))
        },
    )?;
    let mut sealed = 0;
    for (id, stored_secret, stored_previous) in rows {
        let secret_context = encryption::context("endpoints.secret", &id);
        let previous_context = encryption::context("endpoints.previous_secrets", &id);
        let secret = encryption::open(cipher, &stored_secret, &secret_context)?;
        let previous = encryption::open(cipher, &stored_previous, &previous_context)?;
        let Some(cipher) = cipher else {
            continue;
        };
        if encryption::is_sealed(&stored_secret) && encryption::is_sealed(&stored_previous) {
            continue;
        }
        conn.execute(
            "UPDATE endpoints SET secret = ?2, previous_secrets = ?3 WHERE id = ?1",
            params![
                id,
                cipher.seal(&secret, &secret_context),
                cipher.seal(&previous, &previous_context)
            ],
        )?;
        sealed += 1;
    }
    Ok(sealed)
}

/// Deletes an endpoint and cancels its pending deliveries.
pub fn delete(conn: &Conn, id: &str, now: Millis) -> Result<bool> {
    clear_writer_caches();
    super::deliveries::cancel_pending_for_endpoint(conn, id, now)?;
    Ok(conn.execute("DELETE FROM endpoints WHERE id = ?1", params![id])? > 0)
}

/// Disables an endpoint (after a 410 Gone) and cancels its pending deliveries.
pub fn disable(conn: &Conn, id: &str, now: Millis) -> Result<()> {
    clear_writer_caches();
    conn.execute(
        "UPDATE endpoints SET disabled = 1, updated_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    super::deliveries::cancel_pending_for_endpoint(conn, id, now)?;
    Ok(())
}
