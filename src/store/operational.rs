//! Operational webhooks: events about hookd itself (an endpoint disabled,
//! a delivery that used up its retries), sent to URLs the operator configures.
//!
//! They travel as ordinary messages of an internal application whose
//! endpoints are the configured URLs, so they are stored in the same
//! transaction as the change they report, signed, retried and listed like any
//! other message. Events about the internal application's own deliveries are
//! not reported, so a failing operational URL cannot feed itself.

use super::sql::Conn;
use serde_json::json;

use super::messages::{self, NewDelivery};
use super::Result;
use crate::model::{ids, Application, Endpoint, Message, Millis};

/// The uid of the internal application that carries operational webhooks.
pub const APPLICATION_UID: &str = "hookd-operational";

pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";
pub const ENDPOINT_ENABLED: &str = "endpoint.enabled";
pub const ATTEMPT_EXHAUSTED: &str = "message.attempt.exhausted";
pub const ATTEMPT_FAILING: &str = "message.attempt.failing";

/// Failed attempts of one delivery after which `message.attempt.failing` is sent once.
pub const FAILING_AFTER_ATTEMPTS: u32 = 4;

/// Key of the PostgreSQL advisory lock taken by [`sync`] (ASCII "hookdops").
const SYNC_LOCK: i64 = 0x686f_6f6b_646f_7073;

/// Makes the internal application's endpoints match the configured URLs and
/// secret. Returns the application id, or `None` when no URL is configured.
pub fn sync(conn: &Conn, urls: &[String], secret: &str, now: Millis) -> Result<Option<String>> {
    // Nodes of a cluster that start together would each create the
    // application; the lock, held to the end of the transaction, lets one
    // create it and the others find it.
    if conn.dialect() == super::Dialect::Postgres {
        conn.execute(
            "SELECT pg_advisory_xact_lock(?1)",
            super::sql::params![SYNC_LOCK],
        )?;
    }
    let existing = super::applications::get(conn, APPLICATION_UID)?;
    if urls.is_empty() {
        if let Some(app) = existing {
            for endpoint in super::endpoints::list_enabled(conn, &app.id)? {
                super::endpoints::delete(conn, &endpoint.id, now)?;
            }
        }
        return Ok(None);
    }
    let app = match existing {
        Some(app) => app,
        None => {
            let app = Application {
                id: ids::new_id(ids::APPLICATION),
                uid: Some(APPLICATION_UID.to_owned()),
                name: "hookd operational webhooks".to_owned(),
                rate_limit: None,
                metadata: Default::default(),
                created_at: now,
                updated_at: now,
            };
            super::applications::insert(conn, &app)?;
            app
        }
    };

    // One endpoint per URL, with uid `operational-N`; others are removed.
    let page = super::PageRequest {
        limit: 1000,
        iterator: None,
        descending: false,
    };
    let current = super::endpoints::list(conn, &app.id, &page)?;
    for endpoint in &current {
        let configured = endpoint
            .uid
            .as_deref()
            .and_then(|uid| uid.strip_prefix("operational-"))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < urls.len());
        if !configured {
            super::endpoints::delete(conn, &endpoint.id, now)?;
        }
    }
    for (index, url) in urls.iter().enumerate() {
        let uid = format!("operational-{index}");
        let mut endpoint = match current
            .iter()
            .find(|e| e.uid.as_deref() == Some(uid.as_str()))
        {
            Some(found) => found.clone(),
            None => Endpoint {
                id: ids::new_id(ids::ENDPOINT),
                app_id: app.id.clone(),
                uid: Some(uid),
                url: String::new(),
                description: "operational webhooks".to_owned(),
                rate_limit: None,
                disabled: false,
                event_types: None,
                channels: None,
                secret: String::new(),
                previous_secrets: Vec::new(),
                metadata: Default::default(),
                headers: Default::default(),
                retry_schedule_ms: None,
                created_at: now,
                updated_at: now,
            },
        };
        endpoint.url = url.clone();
        endpoint.secret = secret.to_owned();
        endpoint.disabled = false;
        endpoint.updated_at = now;
        super::endpoints::save(conn, &endpoint, true)?;
    }
    Ok(Some(app.id))
}

/// Stores one operational event as a message of the internal application.
pub fn emit(
    conn: &Conn,
    operational_app_id: &str,
    event_type: &str,
    data: serde_json::Value,
    now: Millis,
) -> Result<Vec<NewDelivery>> {
    let payload = json!({
        "type": event_type,
        "timestamp": chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    let message = Message {
        id: ids::new_id(ids::MESSAGE),
        app_id: operational_app_id.to_owned(),
        event_type: event_type.to_owned(),
        event_id: None,
        channels: None,
        tags: None,
        payload: Some(payload.to_string()),
        created_at: now,
    };
    Ok(messages::create(conn, message)?.deliveries)
}

/// Builds the `data` of an event about an endpoint.
pub fn endpoint_data(
    conn: &Conn,
    endpoint: &Endpoint,
    fail_since: Option<Millis>,
) -> Result<serde_json::Value> {
    let app_uid = super::applications::get(conn, &endpoint.app_id)?.and_then(|app| app.uid);
    let mut data = json!({
        "appId": endpoint.app_id,
        "appUid": app_uid,
        "endpointId": endpoint.id,
        "endpointUid": endpoint.uid,
    });
    if let Some(since) = fail_since {
        data["failSince"] = json!(chrono::DateTime::from_timestamp_millis(since)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    Ok(data)
}
