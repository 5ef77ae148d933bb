//! The message feed of an endpoint for receivers that poll: the messages of
//! its application that the endpoint's filters accept, in creation order,
//! and the stored position of each named consumer.

use super::sql::{params, Conn};

use super::messages::{finish, from_row, COLUMNS};
use super::Result;
use crate::model::{Endpoint, Message, Millis};

/// Rows read at most per page, whatever the filters, so a poll of a feed
/// whose filters match few messages still returns quickly. The iterator then
/// points past the rows read.
const MAX_ROWS_READ: usize = 5000;

/// Optional filters of a poll, on top of the endpoint's own.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub event_type: Option<String>,
    pub channel: Option<String>,
}

/// One page of a feed.
#[derive(Debug)]
pub struct Page {
    pub messages: Vec<Message>,
    /// The position after this page: the id of the last message read.
    pub iterator: String,
    /// True when the page reached the newest message.
    pub done: bool,
}

/// Reads up to `limit` messages after `iterator` (a message id, or any
/// string that sorts before the first id to start at the beginning) that
/// `endpoint` accepts.
pub fn page(
    conn: &Conn,
    endpoint: &Endpoint,
    iterator: &str,
    limit: usize,
    filters: &Filters,
) -> Result<Page> {
    let mut messages = Vec::new();
    let mut position = iterator.to_owned();
    let mut rows_read = 0;
    let mut filled = false;
    conn.query_while(
        &format!(
            "SELECT {COLUMNS} FROM messages WHERE app_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ),
        params![endpoint.app_id, iterator, MAX_ROWS_READ as i64],
        |row| {
            rows_read += 1;
            let message = finish(from_row(row)?)?;
            position.clone_from(&message.id);
            let channels = message.channels.as_deref();
            let wanted = endpoint.accepts(&message.event_type, channels)
                && filters
                    .event_type
                    .as_ref()
                    .is_none_or(|t| *t == message.event_type)
                && filters
                    .channel
                    .as_ref()
                    .is_none_or(|c| channels.is_some_and(|list| list.contains(c)));
            if wanted {
                messages.push(message);
                // More may follow a full page, so it is not done.
                filled = messages.len() == limit;
            }
            Ok(!filled)
        },
    )?;
    if filled {
        return Ok(Page {
            messages,
            iterator: position,
            done: false,
        });
    }
    Ok(Page {
        messages,
        iterator: position,
        done: rows_read < MAX_ROWS_READ,
    })
}

/// Returns the stored position of a consumer, if it has polled or sought before.
pub fn consumer_position(
    conn: &Conn,
    endpoint_id: &str,
    consumer_id: &str,
) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT iterator FROM poller_consumers WHERE endpoint_id = ?1 AND consumer_id = ?2",
        params![endpoint_id, consumer_id],
        |row| row.get(0),
    )
}

/// Stores a consumer's position.
pub fn set_consumer_position(
    conn: &Conn,
    endpoint_id: &str,
    consumer_id: &str,
    iterator: &str,
    now: Millis,
) -> Result<()> {
    conn.execute(
        "INSERT INTO poller_consumers (endpoint_id, consumer_id, iterator, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (endpoint_id, consumer_id) DO UPDATE SET iterator = ?3, updated_at = ?4",
        params![endpoint_id, consumer_id, iterator, now],
    )?;
    Ok(())
}
