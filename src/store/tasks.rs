//! Recover and replay tasks: their rows, and the two halves of one step.
//!
//! A step of a task has two halves. First [`scan`], on a read connection,
//! pages through the messages after the task's cursor in id order (which is
//! creation order) and picks the ones to send. Then [`apply_page`], in one
//! write job, checks each pick again, creates its delivery and moves the
//! cursor past every message the scan looked at. Because the cursor moves in
//! the same transaction as the deliveries, a task that restarts, even after
//! `kill -9`, resumes after the last committed page. It neither skips a
//! message nor sends one twice.

use super::sql::{params, Conn, Row};

use super::messages::NewDelivery;
use super::{from_json, to_json, PageRequest, Result, StoreError};
use crate::model::{
    ids, DeliveryStatus, Endpoint, Millis, Task, TaskFilter, TaskKind, TaskStatus, Trigger,
};

/// How far a message's `created_at` may be from the time in its id. Both
/// are read from the clock when the message is made, but operational events
/// and stream records take `created_at` before their store job waits in the
/// writer's queue, so the two can be seconds apart under load. A scan reads
/// ids this much beyond each end of the window and filters on `created_at`.
/// NOTE: a message made while the system clock stepped by more than this
/// can be missed by a window that ends or starts right next to it.
const ID_TIME_SLACK_MS: Millis = 60_000;

const COLUMNS: &str = "id, kind, app_id, endpoint_id, filter, since, until, cursor, \
     messages_scanned, messages_sent, messages_expunged, status, error, created_at, updated_at";

type RawRow = (Task, String, String, String);

fn from_row(row: &Row) -> Result<RawRow> {
    Ok((
        Task {
            id: row.get(0)?,
            kind: TaskKind::Recover,
            app_id: row.get(2)?,
            endpoint_id: row.get(3)?,
            filter: TaskFilter::default(),
            since: row.get(5)?,
            until: row.get(6)?,
            cursor: row.get(7)?,
            messages_scanned: row.get(8)?,
            messages_sent: row.get(9)?,
            messages_expunged: row.get(10)?,
            status: TaskStatus::Running,
            error: row.get(12)?,
            created_at: row.get(13)?,
            updated_at: row.get(14)?,
        },
        row.get(1)?,
        row.get(4)?,
        row.get(11)?,
    ))
}

fn finish((mut task, kind, filter, status): RawRow) -> Result<Task> {
    task.kind = TaskKind::from_name(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("task kind {kind:?}")))?;
    task.filter = from_json(&filter, "tasks.filter")?;
    task.status = TaskStatus::from_name(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?;
    Ok(task)
}

pub fn insert(conn: &Conn, task: &Task) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO tasks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        params![
        task.id,
        task.kind.name(),
        task.app_id,
        task.endpoint_id,
        to_json(&task.filter),
        task.since,
        task.until,
        task.cursor,
        task.messages_scanned,
        task.messages_sent,
        task.messages_expunged,
        task.status.name(),
        task.error,
        task.created_at,
        task.updated_at
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Conn, id: &str) -> Result<Option<Task>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        params![id],
        from_row,
    )?
    .map(finish)
    .transpose()
}

/// Filters of a task list.
#[derive(Debug, Clone, Default)]
pub struct TaskListFilter {
    pub status: Option<TaskStatus>,
    pub kind: Option<TaskKind>,
    /// Only the tasks of this application.
    pub app_id: Option<String>,
}

pub fn list(conn: &Conn, page: &PageRequest, filter: &TaskListFilter) -> Result<Vec<Task>> {
    let (condition, order) = page.clause("id", 1);
    conn.query_map(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE {condition}
               AND (CAST(?2 AS TEXT) IS NULL OR status = ?2) AND (CAST(?3 AS TEXT) IS NULL OR kind = ?3)
               AND (CAST(?4 AS TEXT) IS NULL OR app_id = ?4) {order}"
        ),
        params![
            page.iterator,
            filter.status.map(TaskStatus::name),
            filter.kind.map(TaskKind::name),
            filter.app_id
        ],
        |row| finish(from_row(row)?),
    )
}

/// Running tasks, oldest first, at most `limit`.
pub fn running(conn: &Conn, limit: usize) -> Result<Vec<Task>> {
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM tasks WHERE status = 'running' ORDER BY id LIMIT ?1"),
        params![limit as i64],
        |row| finish(from_row(row)?),
    )
}

/// Deletes finished and failed tasks last changed before `before`, at most
/// `limit` of them, and returns how many it deleted.
pub fn delete_ended_before(conn: &Conn, before: Millis, limit: usize) -> Result<usize> {
    conn.execute(
        "DELETE FROM tasks WHERE id IN (
             SELECT id FROM tasks WHERE status != 'running' AND updated_at < ?1 LIMIT ?2)",
        params![before, limit as i64],
    )
}

/// The fields of a message that decide whether a task sends it.
#[derive(Debug, Clone)]
pub struct MessageFacts {
    pub id: String,
    pub event_type: String,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub created_at: Millis,
}

/// The result of [`scan`]: the messages a step of a task will send.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The task's cursor when the scan started; [`apply_page`] does nothing
    /// unless the cursor is still there.
    pub from: Option<String>,
    /// The messages picked, in id order.
    pub picked: Vec<MessageFacts>,
    /// The id of the last message looked at, or `None` when none remained.
    pub last: Option<String>,
    /// Messages looked at that lie in the task's window.
    pub in_window: u64,
    /// True when no message of the window lies after `last`.
    pub done: bool,
}

/// Looks at up to `limit` messages after the task's cursor, in id order,
/// and picks those the task should send. Runs on a read connection, so the
/// writer is not held while messages that do not qualify are read.
pub fn scan(conn: &Conn, task: &Task, endpoint: &Endpoint, limit: usize) -> Result<Scan> {
    let after = task.cursor.clone().unwrap_or_else(|| {
        // One below the first id of the window's slack.
        ids::last_at(ids::MESSAGE, task.since - ID_TIME_SLACK_MS - 1)
    });
    let before = ids::first_at(ids::MESSAGE, task.until + ID_TIME_SLACK_MS + 1);
    let rows = match task.kind {
        // A message the endpoint never had a delivery of can only be found
        // among all the application's messages.
        TaskKind::ReplayMissing => messages_between(conn, &task.app_id, &after, &before, limit)?,
        // The other kinds only take messages the endpoint has deliveries
        // of, so they read the endpoint's index of deliveries instead.
        TaskKind::Recover | TaskKind::BulkReplay => {
            delivered_messages_between(conn, &task.endpoint_id, &after, &before, limit)?
        }
    };

    let mut scan = Scan {
        from: task.cursor.clone(),
        picked: Vec::new(),
        last: rows.last().map(|(id, _)| id.clone()),
        in_window: 0,
        done: rows.len() < limit,
    };
    for (_, facts) in rows {
        let Some(facts) = facts else { continue };
        if facts.created_at < task.since || facts.created_at >= task.until {
            continue;
        }
        scan.in_window += 1;
        if qualifies(conn, task, endpoint, &facts)? {
            scan.picked.push(facts);
        }
    }
    Ok(scan)
}

/// Messages of an application with ids in `(after, before)`, in id order.
fn messages_between(
    conn: &Conn,
    app_id: &str,
    after: &str,
    before: &str,
    limit: usize,
) -> Result<Vec<(String, Option<MessageFacts>)>> {
    conn.query_map(
        "SELECT id, event_type, channels, tags, created_at FROM messages
         WHERE app_id = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4",
        params![app_id, after, before, limit as i64],
        |row| {
            let facts = finish_facts(facts_from_row(row)?)?;
            Ok((facts.id.clone(), Some(facts)))
        },
    )
}

/// Messages with a delivery to the endpoint and ids in `(after, before)`,
/// in id order. A message id whose message is gone has no facts.
fn delivered_messages_between(
    conn: &Conn,
    endpoint_id: &str,
    after: &str,
    before: &str,
    limit: usize,
) -> Result<Vec<(String, Option<MessageFacts>)>> {
    let ids: Vec<String> = conn.query_map(
        "SELECT DISTINCT msg_id FROM deliveries
         WHERE endpoint_id = ?1 AND msg_id > ?2 AND msg_id < ?3 ORDER BY msg_id LIMIT ?4",
        params![endpoint_id, after, before, limit as i64],
        |row| row.get(0),
    )?;
    ids.into_iter()
        .map(|id| {
            let facts = conn
                .query_opt(
                    "SELECT id, event_type, channels, tags, created_at FROM messages WHERE id = ?1",
                    params![id],
                    facts_from_row,
                )?
                .map(finish_facts)
                .transpose()?;
            Ok((id, facts))
        })
        .collect()
}

type RawFacts = (MessageFacts, Option<String>, Option<String>);

fn facts_from_row(row: &Row) -> Result<RawFacts> {
    Ok((
        MessageFacts {
            id: row.get(0)?,
            event_type: row.get(1)?,
            channels: None,
            tags: None,
            created_at: row.get(4)?,
        },
        row.get(2)?,
        row.get(3)?,
    ))
}

fn finish_facts((mut facts, channels, tags): RawFacts) -> Result<MessageFacts> {
    facts.channels = channels
        .map(|c| from_json(&c, "messages.channels"))
        .transpose()?;
    facts.tags = tags.map(|t| from_json(&t, "messages.tags")).transpose()?;
    Ok(facts)
}

/// The combined state of the deliveries of one message to one endpoint.
#[derive(Debug, Clone, Copy, Default)]
struct DeliveryHistory {
    any: bool,
    /// One of them is pending: waiting for its first attempt or a retry.
    pending: bool,
    /// One of them succeeded.
    delivered: bool,
    /// One of them made at least one attempt.
    attempted: bool,
}

fn delivery_history(conn: &Conn, msg_id: &str, endpoint_id: &str) -> Result<DeliveryHistory> {
    conn.query_one(
        "SELECT COUNT(*),
                COALESCE(MAX(CASE WHEN status = 1 THEN 1 ELSE 0 END), 0),
                COALESCE(MAX(CASE WHEN status = 0 THEN 1 ELSE 0 END), 0),
                COALESCE(MAX(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0)
         FROM deliveries WHERE msg_id = ?1 AND endpoint_id = ?2",
        params![msg_id, endpoint_id],
        |row| {
            Ok(DeliveryHistory {
                any: row.get(0)?,
                pending: row.get(1)?,
                delivered: row.get(2)?,
                attempted: row.get(3)?,
            })
        },
    )
}

/// Returns true when the task should send this message to the endpoint.
///
/// - Recover: attempted at the endpoint, never delivered, and nothing is
///   pending, so a delivery that is still retrying keeps its schedule and
///   gets no second copy.
/// - Replay-missing: the endpoint's filters accept it, and no delivery of it
///   to the endpoint was ever attempted or is pending. Deliveries canceled
///   before their first attempt, because the endpoint was disabled, count as
///   missing.
/// - Bulk replay: it matches the filter and has a delivery to the endpoint.
///   Without a `status` filter, a message with a pending delivery is left
///   to that delivery.
fn qualifies(
    conn: &Conn,
    task: &Task,
    endpoint: &Endpoint,
    message: &MessageFacts,
) -> Result<bool> {
    let history = delivery_history(conn, &message.id, &endpoint.id)?;
    match task.kind {
        TaskKind::Recover => Ok(history.attempted && !history.delivered && !history.pending),
        TaskKind::ReplayMissing => Ok(endpoint
            .accepts(&message.event_type, message.channels.as_deref())
            && !history.attempted
            && !history.pending),
        TaskKind::BulkReplay => {
            if !history.any || !matches_filter(&task.filter, message) {
                return Ok(false);
            }
            let status_matches = match task.filter.delivery_status() {
                Some(wanted) => {
                    newest_shown_status(conn, &message.id, &endpoint.id)? == Some(wanted)
                }
                None => !history.pending,
            };
            if !status_matches {
                return Ok(false);
            }
            match task.filter.status_code_class {
                Some(class) => {
                    Ok(newest_status_class(conn, &message.id, &endpoint.id)? == Some(class))
                }
                None => Ok(true),
            }
        }
    }
}

/// Checks a bulk replay's conditions on the message's own fields.
fn matches_filter(filter: &TaskFilter, message: &MessageFacts) -> bool {
    let has = |values: &Option<Vec<String>>, wanted: &str| {
        values
            .as_deref()
            .is_some_and(|values| values.iter().any(|v| v == wanted))
    };
    if let Some(types) = &filter.event_types {
        if !types.contains(&message.event_type) {
            return false;
        }
    }
    if let Some(channel) = &filter.channel {
        if !has(&message.channels, channel) {
            return false;
        }
    }
    if let Some(tag) = &filter.tag {
        if !has(&message.tags, tag) {
            return false;
        }
    }
    true
}

fn newest_shown_status(
    conn: &Conn,
    msg_id: &str,
    endpoint_id: &str,
) -> Result<Option<DeliveryStatus>> {
    let newest: Option<(i64, u32)> = conn.query_opt(
        "SELECT status, attempts FROM deliveries WHERE msg_id = ?1 AND endpoint_id = ?2
         ORDER BY id DESC LIMIT 1",
        params![msg_id, endpoint_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    newest
        .map(|(status, attempts)| {
            DeliveryStatus::from_code(status)
                .map(|status| status.shown(attempts))
                .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))
        })
        .transpose()
}

/// Returns the class (0, 100, … 500) of the newest attempt's response status.
fn newest_status_class(conn: &Conn, msg_id: &str, endpoint_id: &str) -> Result<Option<u16>> {
    let status: Option<u16> = conn.query_opt(
        "SELECT response_status FROM attempts WHERE msg_id = ?1 AND endpoint_id = ?2
         ORDER BY id DESC LIMIT 1",
        params![msg_id, endpoint_id],
        |row| row.get(0),
    )?;
    Ok(status.map(|code| code / 100 * 100))
}

/// The result of [`apply_page`].
#[derive(Debug, Default)]
pub struct PageOutcome {
    /// Deliveries created, in message creation order, for the scheduler.
    pub deliveries: Vec<NewDelivery>,
    /// The task after the page, or `None` when it no longer exists.
    pub task: Option<Task>,
}

/// Creates the deliveries of a scan and moves the task's cursor past it, in
/// the caller's transaction. Each pick is checked again, so a message that
/// was delivered, or got a pending delivery, since the scan is skipped.
/// Does nothing when the task is no longer running or its cursor moved.
pub fn apply_page(conn: &Conn, task_id: &str, scan: &Scan, now: Millis) -> Result<PageOutcome> {
    let Some(mut task) = get(conn, task_id)? else {
        return Ok(PageOutcome::default());
    };
    if task.status != TaskStatus::Running || task.cursor != scan.from {
        return Ok(PageOutcome {
            deliveries: Vec::new(),
            task: Some(task),
        });
    }

    let endpoint = match super::endpoints::get_by_id(conn, &task.endpoint_id)? {
        Some(endpoint) if !endpoint.disabled => endpoint,
        found => {
            let reason = if found.is_none() {
                "the endpoint was deleted"
            } else {
                "the endpoint was disabled; enable it and start a new task"
            };
            task.status = TaskStatus::Failed;
            task.error = Some(reason.to_owned());
            task.updated_at = now;
            save_progress(conn, &task)?;
            return Ok(PageOutcome {
                deliveries: Vec::new(),
                task: Some(task),
            });
        }
    };

    let mut deliveries = Vec::new();
    for message in &scan.picked {
        if !qualifies(conn, &task, &endpoint, message)? {
            continue;
        }
        let expunged: bool = conn
            .query_opt(
                "SELECT payload IS NULL FROM messages WHERE id = ?1",
                params![message.id],
                |row| row.get(0),
            )?
            .unwrap_or(true);
        if expunged {
            task.messages_expunged += 1;
            continue;
        }
        let delivery_id = super::deliveries::insert(
            conn,
            &message.id,
            &endpoint.id,
            &task.app_id,
            Trigger::Manual,
            now,
        )?;
        deliveries.push(NewDelivery {
            delivery_id,
            endpoint_id: endpoint.id.clone(),
        });
    }

    task.messages_sent += deliveries.len() as u64;
    task.messages_scanned += scan.in_window;
    if scan.last.is_some() {
        task.cursor = scan.last.clone();
    }
    if scan.done {
        task.status = TaskStatus::Finished;
    }
    task.updated_at = now;
    save_progress(conn, &task)?;
    Ok(PageOutcome {
        deliveries,
        task: Some(task),
    })
}

fn save_progress(conn: &Conn, task: &Task) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET cursor = ?2, messages_scanned = ?3, messages_sent = ?4,
             messages_expunged = ?5, status = ?6, error = ?7, updated_at = ?8
         WHERE id = ?1",
        params![
            task.id,
            task.cursor,
            task.messages_scanned,
            task.messages_sent,
            task.messages_expunged,
            task.status.name(),
            task.error,
            task.updated_at
        ],
    )?;
    Ok(())
}
