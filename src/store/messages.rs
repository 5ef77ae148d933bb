//! Messages, and their fan-out into one delivery per matching endpoint.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_json, to_json, PageRequest, Result};
use crate::model::{ids, DeliveryStatus, Message, Millis, Trigger};

pub(crate) const COLUMNS: &str =
    "id, app_id, event_type, event_id, channels, tags, payload, created_at";

pub(crate) type RawRow = (Message, Option<String>, Option<String>);

pub(crate) fn from_row(row: &Row) -> rusqlite::Result<RawRow> {
    Ok((
        Message {
            id: row.get(0)?,
            app_id: row.get(1)?,
            event_type: row.get(2)?,
            event_id: row.get(3)?,
            channels: None,
            tags: None,
            payload: row.get(6)?,
            created_at: row.get(7)?,
        },
        row.get(4)?,
        row.get(5)?,
    ))
}

pub(crate) fn finish((mut message, channels, tags): RawRow) -> Result<Message> {
    message.channels = channels
        .map(|c| from_json(&c, "messages.channels"))
        .transpose()?;
    message.tags = tags.map(|t| from_json(&t, "messages.tags")).transpose()?;
    Ok(message)
}

/// A delivery created by fan-out, for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub delivery_id: i64,
    pub endpoint_id: String,
}

/// The result of [`create`].
#[derive(Debug)]
pub struct Created {
    pub message: Message,
    /// Deliveries to schedule; empty when the message already existed.
    pub deliveries: Vec<NewDelivery>,
    /// False when an earlier message with the same `event_id` was returned instead.
    pub is_new: bool,
}

/// Stores a message and one pending delivery per enabled endpoint whose
/// filters match it, in the caller's transaction. A message whose `event_id`
/// the application already used is not stored again: the earlier one is returned.
pub fn create(conn: &Connection, message: Message) -> Result<Created> {
    if let Some(event_id) = &message.event_id {
        if let Some(existing) = get_by_event_id(conn, &message.app_id, event_id)? {
            return Ok(Created {
                message: existing,
                deliveries: Vec::new(),
                is_new: false,
            });
        }
    }

    insert(conn, &message)?;

    let mut deliveries = Vec::new();
    for endpoint in super::endpoints::list_enabled_cached(conn, &message.app_id)?.iter() {
        if endpoint.accepts(&message.event_type, message.channels.as_deref()) {
            let delivery_id = super::deliveries::insert(
                conn,
                &message.id,
                &endpoint.id,
                &message.app_id,
                Trigger::Scheduled,
                message.created_at,
            )?;
            deliveries.push(NewDelivery {
                delivery_id,
                endpoint_id: endpoint.id.clone(),
            });
        }
    }

    Ok(Created {
        message,
        deliveries,
        is_new: true,
    })
}

/// Stores a message with one manual delivery to `endpoint_id`, and none to the application's
/// other endpoints, in the caller's transaction. Unlike [`create`], it does not look for an
/// earlier message with the same `event_id`.
pub fn create_for_endpoint(
    conn: &Connection,
    message: &Message,
    endpoint_id: &str,
) -> Result<NewDelivery> {
    insert(conn, message)?;
    let delivery_id = super::deliveries::insert(
        conn,
        &message.id,
        endpoint_id,
        &message.app_id,
        Trigger::Manual,
        message.created_at,
    )?;
    Ok(NewDelivery {
        delivery_id,
        endpoint_id: endpoint_id.to_owned(),
    })
}

fn insert(conn: &Connection, message: &Message) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        message.id,
        message.app_id,
        message.event_type,
        message.event_id,
        message.channels.as_ref().map(to_json),
        message.tags.as_ref().map(to_json),
        message.payload,
        message.created_at
    ])?;
    Ok(())
}

fn get_by_event_id(conn: &Connection, app_id: &str, event_id: &str) -> Result<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND event_id = ?2"
    ))?
    .query_row([app_id, event_id], from_row)
    .optional()?
    .map(finish)
    .transpose()
}

/// Finds a message of an application by its id or, failing that, by its `event_id`.
pub fn get(conn: &Connection, app_id: &str, id_or_event_id: &str) -> Result<Option<Message>> {
    if ids::has_prefix(id_or_event_id, ids::MESSAGE) {
        let found = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND id = ?2"
            ))?
            .query_row([app_id, id_or_event_id], from_row)
            .optional()?;
        if let Some(found) = found {
            return finish(found).map(Some);
        }
    }
    get_by_event_id(conn, app_id, id_or_event_id)
}

/// Filters of a message list.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub event_types: Option<Vec<String>>,
    pub channel: Option<String>,
    pub before: Option<Millis>,
    pub after: Option<Millis>,
}

pub fn list(
    conn: &Connection,
    app_id: &str,
    page: &PageRequest,
    filter: &MessageFilter,
) -> Result<Vec<Message>> {
    let (condition, order) = page.clause("id", 2);
    let mut sql = format!("SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND {condition}");
    append_filter(&mut sql, filter);
    sql.push(' ');
    sql.push_str(&order);
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map(params![app_id, page.iterator], from_row)?;
    rows.map(|row| finish(row?)).collect()
}

/// Appends the filter's conditions. Values are inlined only after being
/// escaped as SQL string literals or formatted as integers.
fn append_filter(sql: &mut String, filter: &MessageFilter) {
    if let Some(types) = &filter.event_types {
        let quoted: Vec<String> = types.iter().map(|t| quote(t)).collect();
        sql.push_str(&format!(" AND event_type IN ({})", quoted.join(", ")));
    }
    if let Some(channel) = &filter.channel {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(messages.channels) WHERE value = {})",
            quote(channel)
        ));
    }
    if let Some(before) = filter.before {
        sql.push_str(&format!(" AND created_at < {before}"));
    }
    if let Some(after) = filter.after {
        sql.push_str(&format!(" AND created_at > {after}"));
    }
}

/// Quotes a string as an SQL literal.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Removes a message's payload, keeping its metadata and attempts.
pub fn expunge_payload(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.execute("UPDATE messages SET payload = NULL WHERE id = ?1", [id])? > 0)
}

/// The state of a message's newest delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
}

/// Returns the status of the newest delivery of a message to each endpoint
/// it has a delivery for, in endpoint id order.
pub fn status_by_endpoint(conn: &Connection, msg_id: &str) -> Result<Vec<EndpointStatus>> {
    let mut statement = conn.prepare(
        "SELECT endpoint_id, status, attempts, next_attempt_at FROM deliveries d
         WHERE msg_id = ?1 AND id = (SELECT MAX(id) FROM deliveries WHERE msg_id = d.msg_id AND endpoint_id = d.endpoint_id)
         ORDER BY endpoint_id",
    )?;
    let rows = statement.query_map([msg_id], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, u32>(2)?,
            row.get(3)?,
        ))
    })?;
    rows.map(|row| {
        let (endpoint_id, status, attempts, next_attempt_at) = row?;
        let status = DeliveryStatus::from_code(status)
            .ok_or_else(|| super::StoreError::Corrupt(format!("delivery status {status}")))?;
        Ok(EndpointStatus {
            endpoint_id,
            status,
            attempts,
            next_attempt_at,
        })
    })
    .collect()
}
