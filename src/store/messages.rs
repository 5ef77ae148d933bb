//! Messages, and their fan-out into one delivery per matching endpoint.

use super::sql::{params, Conn, Row};

use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::{ids, DeliveryStatus, Message, Millis, Trigger};

pub(crate) const COLUMNS: &str =
    "id, app_id, event_type, event_id, channels, tags, payload, created_at";

pub(crate) type RawRow = (Message, Option<String>, Option<String>);

pub(crate) fn from_row(row: &Row) -> Result<RawRow> {
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

/// The trigger of the deliveries that [`create`] makes.
pub(crate) const FAN_OUT_TRIGGER: Trigger = Trigger::Scheduled;

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
pub fn create(conn: &Conn, message: Message) -> Result<Created> {
    if let Some(event_id) = &message.event_id {
        if let Some(existing) = get_by_event_id(conn, &message.app_id, event_id)? {
            return Ok(Created {
                message: existing,
                deliveries: Vec::new(),
                is_new: false,
            });
        }
    }

    if !insert(conn, &message)? {
        // Another writer stored a message with this event id after the
        // lookup above: another node on PostgreSQL, whose transaction this
        // insert waited for.
        let event_id = message.event_id.as_deref().unwrap_or_default();
        let existing = get_by_event_id(conn, &message.app_id, event_id)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the insert of event id {event_id:?} of application {} conflicted, \
                 but no message has that event id",
                message.app_id
            ))
        })?;
        return Ok(Created {
            message: existing,
            deliveries: Vec::new(),
            is_new: false,
        });
    }

    let endpoints = super::endpoints::list_enabled_cached(conn, &message.app_id)?;
    let targets: Vec<&str> = endpoints
        .iter()
        .filter(|endpoint| endpoint.accepts(&message.event_type, message.channels.as_deref()))
        .map(|endpoint| endpoint.id.as_str())
        .collect();
    let deliveries = super::deliveries::insert_many(
        conn,
        &message.id,
        &targets,
        &message.app_id,
        FAN_OUT_TRIGGER,
        message.created_at,
    )?;

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
    conn: &Conn,
    message: &Message,
    endpoint_id: &str,
) -> Result<NewDelivery> {
    if !insert(conn, message)? {
        return Err(StoreError::Conflict("eventId".to_owned()));
    }
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

/// Inserts a message unless the application has one with its `event_id`,
/// and returns whether it did.
fn insert(conn: &Conn, message: &Message) -> Result<bool> {
    let changed = conn.execute(
        &format!(
            "INSERT INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (app_id, event_id) DO NOTHING"
        ),
        params![
            message.id,
            message.app_id,
            message.event_type,
            message.event_id,
            message.channels.as_ref().map(to_json),
            message.tags.as_ref().map(to_json),
            message.payload,
            message.created_at
        ],
    )?;
    Ok(changed == 1)
}

fn get_by_event_id(conn: &Conn, app_id: &str, event_id: &str) -> Result<Option<Message>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND event_id = ?2"),
        params![app_id, event_id],
        from_row,
    )?
    .map(finish)
    .transpose()
}

/// Finds a message of an application by its id or, failing that, by its `event_id`.
pub fn get(conn: &Conn, app_id: &str, id_or_event_id: &str) -> Result<Option<Message>> {
    if ids::has_prefix(id_or_event_id, ids::MESSAGE) {
        let found = conn.query_opt(
            &format!("SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND id = ?2"),
            params![app_id, id_or_event_id],
            from_row,
        )?;
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
    conn: &Conn,
    app_id: &str,
    page: &PageRequest,
    filter: &MessageFilter,
) -> Result<Vec<Message>> {
    let (condition, order) = page.clause("id", 2);
    let mut sql = format!("SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND {condition}");
    append_filter(conn, &mut sql, filter);
    sql.push(' ');
    sql.push_str(&order);
    conn.query_map(&sql, params![app_id, page.iterator], |row| {
        finish(from_row(row)?)
    })
}

/// Appends the filter's conditions. Values are inlined only after being
/// escaped as SQL string literals or formatted as integers.
fn append_filter(conn: &Conn, sql: &mut String, filter: &MessageFilter) {
    if let Some(types) = &filter.event_types {
        let quoted: Vec<String> = types.iter().map(|t| quote(t)).collect();
        sql.push_str(&format!(" AND event_type IN ({})", quoted.join(", ")));
    }
    if let Some(channel) = &filter.channel {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM {} WHERE channel.value = {})",
            conn.json_each("messages.channels", "channel"),
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
pub fn expunge_payload(conn: &Conn, id: &str) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE messages SET payload = NULL WHERE id = ?1",
        params![id],
    )? > 0)
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
pub fn status_by_endpoint(conn: &Conn, msg_id: &str) -> Result<Vec<EndpointStatus>> {
    conn.query_map(
        "SELECT endpoint_id, status, attempts, next_attempt_at FROM deliveries d
         WHERE msg_id = ?1 AND id = (SELECT MAX(id) FROM deliveries WHERE msg_id = d.msg_id AND endpoint_id = d.endpoint_id)
         ORDER BY endpoint_id",
        params![msg_id],
        |row| {
        let endpoint_id: String = row.get(0)?;
        let status: i64 = row.get(1)?;
        let attempts: u32 = row.get(2)?;
        let next_attempt_at: Option<Millis> = row.get(3)?;
        let status = DeliveryStatus::from_code(status)
            .ok_or_else(|| super::StoreError::Corrupt(format!("delivery status {status}")))?;
        Ok(EndpointStatus {
            endpoint_id,
            status,
            attempts,
            next_attempt_at,
        })
    })
}
