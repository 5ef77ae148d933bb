//! Deliveries: one row per (message, endpoint) task, with its retry state.
//!
//! A delivery is pending (status 1) while it has an attempt to make, and its
//! `next_attempt_at` is the time it is due. A finished delivery (success, fail or
//! canceled) has no `next_attempt_at`.

use std::sync::Arc;

use super::send_cache::SendCache;
use super::sql::{params, Conn, Row};

use super::messages::NewDelivery;
use super::{Result, StoreError};
use crate::model::{Attempt, Delivery, DeliveryStatus, Endpoint, Message, Millis, Trigger};

const COLUMNS: &str =
    "id, msg_id, endpoint_id, app_id, trigger, status, attempts, next_attempt_at, created_at";

fn from_row(row: &Row) -> Result<(Delivery, i64)> {
    Ok((
        Delivery {
            id: row.get(0)?,
            msg_id: row.get(1)?,
            endpoint_id: row.get(2)?,
            app_id: row.get(3)?,
            trigger: Trigger::from_code(row.get(4)?),
            status: DeliveryStatus::Pending,
            attempts: row.get(6)?,
            next_attempt_at: row.get(7)?,
            created_at: row.get(8)?,
        },
        row.get(5)?,
    ))
}

fn finish((mut delivery, status): (Delivery, i64)) -> Result<Delivery> {
    delivery.status = DeliveryStatus::from_code(status)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?;
    Ok(delivery)
}

/// Inserts a pending delivery due at `now` and returns its id.
pub fn insert(
    conn: &Conn,
    msg_id: &str,
    endpoint_id: &str,
    app_id: &str,
    trigger: Trigger,
    now: Millis,
) -> Result<i64> {
    conn.query_one(
        "INSERT INTO deliveries (msg_id, endpoint_id, app_id, trigger, status, attempts, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 1, 0, ?5, ?5, ?5) RETURNING id",
        params![msg_id, endpoint_id, app_id, trigger as i64, now],
        |row| row.get(0),
    )
}

/// Returns the row that [`insert`] and [`insert_many`] write for a new
/// delivery.
pub fn new_pending(
    id: i64,
    msg_id: &str,
    endpoint_id: &str,
    app_id: &str,
    trigger: Trigger,
    now: Millis,
) -> Delivery {
    Delivery {
        id,
        msg_id: msg_id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        app_id: app_id.to_owned(),
        trigger,
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: Some(now),
        created_at: now,
    }
}

/// Rows of one multi-row INSERT at most.
const INSERT_ROWS: usize = 100;

/// Inserts one pending delivery of a message per endpoint, due at `now`,
/// and returns them in the order of `endpoint_ids`. Many endpoints take one
/// statement per [`INSERT_ROWS`], which saves PostgreSQL a round trip per
/// delivery.
pub fn insert_many(
    conn: &Conn,
    msg_id: &str,
    endpoint_ids: &[&str],
    app_id: &str,
    trigger: Trigger,
    now: Millis,
) -> Result<Vec<NewDelivery>> {
    if let [endpoint_id] = endpoint_ids {
        let delivery_id = insert(conn, msg_id, endpoint_id, app_id, trigger, now)?;
        return Ok(vec![NewDelivery {
            delivery_id,
            endpoint_id: (*endpoint_id).to_owned(),
        }]);
    }
    let trigger = trigger as i64;
    let mut out = Vec::with_capacity(endpoint_ids.len());
    for chunk in endpoint_ids.chunks(INSERT_ROWS) {
        // ?1 to ?4 are shared; each row adds its endpoint id as ?5, ?6, ...
        let rows: Vec<String> = (0..chunk.len())
            .map(|index| format!("(?1, ?{}, ?2, ?3, 1, 0, ?4, ?4, ?4)", index + 5))
            .collect();
        let sql = format!(
            "INSERT INTO deliveries (msg_id, endpoint_id, app_id, trigger, status, attempts, next_attempt_at, created_at, updated_at)
             VALUES {} RETURNING id, endpoint_id",
            rows.join(", ")
        );
        let mut values: Vec<&dyn super::sql::ToValue> = vec![&msg_id, &app_id, &trigger, &now];
        values.extend(chunk.iter().map(|id| id as &dyn super::sql::ToValue));
        let inserted: std::collections::HashMap<String, i64> = conn
            .query_map(&sql, &values, |row| Ok((row.get(1)?, row.get(0)?)))?
            .into_iter()
            .collect();
        for endpoint_id in chunk {
            let delivery_id = *inserted.get(*endpoint_id).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the insert of deliveries of {msg_id} returned none for {endpoint_id}"
                ))
            })?;
            out.push(NewDelivery {
                delivery_id,
                endpoint_id: (*endpoint_id).to_owned(),
            });
        }
    }
    Ok(out)
}

pub fn get(conn: &Conn, id: i64) -> Result<Option<Delivery>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?1"),
        params![id],
        from_row,
    )?
    .map(finish)
    .transpose()
}

/// Everything the sender needs for one attempt.
#[derive(Debug)]
pub struct SendContext {
    pub delivery: Delivery,
    pub message: Arc<Message>,
    /// `None` when the endpoint was deleted.
    pub endpoint: Option<Arc<Endpoint>>,
}

/// Loads a delivery with its message and endpoint.
pub fn load_for_send(conn: &Conn, id: i64) -> Result<Option<SendContext>> {
    load_for_send_cached(conn, id, None)
}

/// Loads a delivery, and its message and endpoint from `cache` when it
/// contains them or else from the store, keeping what it read in `cache`.
pub(super) fn load_for_send_cached(
    conn: &Conn,
    id: i64,
    cache: Option<&SendCache>,
) -> Result<Option<SendContext>> {
    let from_memory = cache.and_then(|cache| cache.take_new_delivery(id));
    let delivery = match from_memory {
        Some(delivery) => delivery,
        None => match get(conn, id)? {
            Some(delivery) => delivery,
            None => return Ok(None),
        },
    };
    // The generation is read before the message and endpoint rows, so that
    // a row read from a snapshot older than a change committed meanwhile is
    // not kept.
    let (seen, kept_message, kept_endpoint) = match cache {
        Some(cache) => {
            let found = cache.lookup(&delivery.msg_id, &delivery.endpoint_id);
            (Some((cache, found.seen)), found.message, found.endpoint)
        }
        None => (None, None, None),
    };
    let message = match kept_message {
        Some(message) if message.app_id == delivery.app_id => message,
        _ => {
            let Some(message) = super::messages::get(conn, &delivery.app_id, &delivery.msg_id)?
            else {
                return Ok(None);
            };
            let message = Arc::new(message);
            if let Some((cache, seen)) = seen {
                cache.keep_message(seen, message.clone(), None);
            }
            message
        }
    };
    let endpoint = match kept_endpoint {
        Some(endpoint) => Some(endpoint),
        None => {
            let endpoint = super::endpoints::get_by_id(conn, &delivery.endpoint_id)?.map(Arc::new);
            if let (Some((cache, seen)), Some(endpoint)) = (seen, &endpoint) {
                cache.keep_endpoint(seen, endpoint.clone());
            }
            endpoint
        }
    };
    Ok(Some(SendContext {
        delivery,
        message,
        endpoint,
    }))
}

/// The next step of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Succeeded,
    /// Try again at this time.
    RetryAt(Millis),
    /// No retries left.
    GaveUp,
    /// The endpoint returned 410 Gone, so disable it and cancel its pending deliveries.
    DisableEndpoint,
}

/// Stores an attempt and moves its delivery to the next step, in one transaction.
pub fn record_attempt(
    conn: &Conn,
    attempt: &Attempt,
    next: NextStep,
    now: Millis,
    rules: &RecordRules,
) -> Result<Vec<NewDelivery>> {
    super::attempts::insert(conn, attempt)?;
    let (status, next_at) = match next {
        NextStep::Succeeded => (DeliveryStatus::Success, None),
        NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
        NextStep::GaveUp | NextStep::DisableEndpoint => (DeliveryStatus::Fail, None),
    };
    conn.execute(
        "UPDATE deliveries SET status = ?2, attempts = attempts + 1, next_attempt_at = ?3, updated_at = ?4 WHERE id = ?1 AND status = 1",
        params![attempt.delivery_id, status as i64, next_at, now],
    )?;
    // The status check above keeps a delivery canceled while its attempt
    // was in flight (its endpoint was disabled or deleted) canceled.

    // Events about the operational application's own deliveries are not
    // reported, so that a failing operational URL cannot feed itself.
    let operational = rules
        .operational_app_id
        .filter(|app_id| *app_id != attempt.app_id);
    let mut new_deliveries = Vec::new();

    if next == NextStep::Succeeded {
        super::endpoints::mark_not_failing(conn, &attempt.endpoint_id)?;
        return Ok(new_deliveries);
    }

    super::endpoints::mark_failing(conn, &attempt.endpoint_id, now)?;
    let (failing_since, disabled): (Option<Millis>, bool) = conn
        .query_opt(
            "SELECT failing_since, disabled FROM endpoints WHERE id = ?1",
            params![attempt.endpoint_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?
        .unwrap_or((None, true));
    let failed_too_long = rules
        .disable_after_ms
        .zip(failing_since)
        .is_some_and(|(limit, since)| now - since >= limit);
    let disable = !disabled && (next == NextStep::DisableEndpoint || failed_too_long);

    if disable {
        super::endpoints::disable(conn, &attempt.endpoint_id, now)?;
        tracing::error!(
            endpoint_id = %attempt.endpoint_id,
            reason = if next == NextStep::DisableEndpoint { "410 Gone" } else { "failing too long" },
            "endpoint disabled; its pending deliveries are canceled"
        );
        if let Some(app_id) = operational {
            if let Some(endpoint) = super::endpoints::get_by_id(conn, &attempt.endpoint_id)? {
                let mut data = super::operational::endpoint_data(conn, &endpoint, failing_since)?;
                data["trigger"] = serde_json::json!("automatic");
                new_deliveries.extend(super::operational::emit(
                    conn,
                    app_id,
                    super::operational::ENDPOINT_DISABLED,
                    data,
                    now,
                )?);
            }
        }
    }

    if let Some(app_id) = operational {
        let attempts: u32 = conn.query_one(
            "SELECT attempts FROM deliveries WHERE id = ?1",
            params![attempt.delivery_id],
            |row| row.get(0),
        )?;
        let event_type = match next {
            NextStep::GaveUp | NextStep::DisableEndpoint => {
                Some(super::operational::ATTEMPT_EXHAUSTED)
            }
            NextStep::RetryAt(_) if attempts == super::operational::FAILING_AFTER_ATTEMPTS => {
                Some(super::operational::ATTEMPT_FAILING)
            }
            _ => None,
        };
        if let Some(event_type) = event_type {
            let message = super::messages::get(conn, &attempt.app_id, &attempt.msg_id)?;
            let app_uid = super::applications::get(conn, &attempt.app_id)?.and_then(|app| app.uid);
            let data = serde_json::json!({
                "appId": attempt.app_id,
                "appUid": app_uid,
                "msgId": attempt.msg_id,
                "msgEventId": message.and_then(|m| m.event_id),
                "endpointId": attempt.endpoint_id,
                "lastAttempt": {
                    "id": attempt.id,
                    "timestamp": chrono::DateTime::from_timestamp_millis(attempt.created_at)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "responseStatusCode": attempt.response_status,
                },
            });
            new_deliveries.extend(super::operational::emit(
                conn, app_id, event_type, data, now,
            )?);
        }
    }
    Ok(new_deliveries)
}

/// Rules applied when an attempt is recorded.
#[derive(Debug, Clone, Default)]
pub struct RecordRules<'a> {
    /// An endpoint whose attempts have all failed for this long is disabled; `None` never.
    pub disable_after_ms: Option<Millis>,
    /// The internal application of operational webhooks, when configured.
    pub operational_app_id: Option<&'a str>,
}

/// Cancels a delivery without an attempt, for example because its endpoint is gone.
pub fn cancel(conn: &Conn, id: i64, now: Millis) -> Result<()> {
    conn.execute(
        "UPDATE deliveries SET status = 4, next_attempt_at = NULL, updated_at = ?2 WHERE id = ?1 AND status = 1",
        params![id, now],
    )?;
    Ok(())
}

pub fn cancel_pending_for_endpoint(conn: &Conn, endpoint_id: &str, now: Millis) -> Result<usize> {
    conn.execute(
        "UPDATE deliveries SET status = 4, next_attempt_at = NULL, updated_at = ?2 WHERE endpoint_id = ?1 AND status = 1",
        params![endpoint_id, now],
    )
}

/// Ids of an endpoint's deliveries that are due by `now`, oldest due first.
pub fn due_for_endpoint(
    conn: &Conn,
    endpoint_id: &str,
    now: Millis,
    limit: usize,
) -> Result<Vec<i64>> {
    conn.query_map(
        "SELECT id FROM deliveries WHERE endpoint_id = ?1 AND status = 1 AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, id LIMIT ?3",
        params![endpoint_id, now, limit as i64],
        |row| row.get(0),
    )
}

/// Counts an endpoint's pending deliveries that are due by `now`, counting
/// no further than `cap`.
pub fn count_due_for_endpoint(
    conn: &Conn,
    endpoint_id: &str,
    now: Millis,
    cap: usize,
) -> Result<usize> {
    conn.query_one(
        "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
         WHERE endpoint_id = ?1 AND status = 1 AND next_attempt_at <= ?2 LIMIT ?3) AS due",
        params![endpoint_id, now, cap as i64],
        |row| row.get(0),
    )
}

/// A retry that becomes due, for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRetry {
    pub delivery_id: i64,
    pub endpoint_id: String,
    pub next_attempt_at: Millis,
}

/// Retries (deliveries with at least one attempt) that become due in
/// `(after, until]`, ordered by due time then id, starting after `cursor`.
pub fn retries_due_between(
    conn: &Conn,
    after: Millis,
    until: Millis,
    cursor: Option<(Millis, i64)>,
    limit: usize,
) -> Result<Vec<DueRetry>> {
    let (cursor_at, cursor_id) = cursor.unwrap_or((after, i64::MIN));
    conn.query_map(
        "SELECT id, endpoint_id, next_attempt_at FROM deliveries
         WHERE status = 1 AND attempts > 0 AND next_attempt_at > ?1 AND next_attempt_at <= ?2
           AND (next_attempt_at > ?3 OR (next_attempt_at = ?3 AND id > ?4))
         ORDER BY next_attempt_at, id LIMIT ?5",
        params![after, until, cursor_at, cursor_id, limit as i64],
        |row| {
            Ok(DueRetry {
                delivery_id: row.get(0)?,
                endpoint_id: row.get(1)?,
                next_attempt_at: row.get(2)?,
            })
        },
    )
}

/// Endpoints that have at least one pending delivery due by `now`.
pub fn endpoints_with_due(conn: &Conn, now: Millis) -> Result<Vec<String>> {
    conn.query_map(
        "SELECT DISTINCT endpoint_id FROM deliveries WHERE status = 1 AND next_attempt_at <= ?1",
        params![now],
        |row| row.get(0),
    )
}

/// Adds a manual delivery of a message to an endpoint (a resend). Existing
/// deliveries and their scheduled retries are left as they are.
pub fn create_manual(
    conn: &Conn,
    msg_id: &str,
    endpoint_id: &str,
    app_id: &str,
    now: Millis,
) -> Result<i64> {
    insert(conn, msg_id, endpoint_id, app_id, Trigger::Manual, now)
}

/// Counts of an endpoint's messages by the status of their newest delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub success: u64,
    pub pending: u64,
    pub sending: u64,
    pub fail: u64,
    pub canceled: u64,
}

pub fn endpoint_stats(conn: &Conn, endpoint_id: &str) -> Result<EndpointStats> {
    let rows = conn.query_map(
        "SELECT CASE WHEN d.status = 1 AND d.attempts > 0 THEN 3 ELSE d.status END AS s, COUNT(*) FROM deliveries d
         WHERE d.endpoint_id = ?1
           AND d.id = (SELECT MAX(id) FROM deliveries WHERE msg_id = d.msg_id AND endpoint_id = d.endpoint_id)
         GROUP BY s",
        params![endpoint_id],
        |row| Ok((row.get::<i64>(0)?, row.get::<u64>(1)?)),
    )?;
    let mut stats = EndpointStats::default();
    for (status, count) in rows {
        match DeliveryStatus::from_code(status) {
            Some(DeliveryStatus::Success) => stats.success = count,
            Some(DeliveryStatus::Pending) => stats.pending = count,
            Some(DeliveryStatus::Sending) => stats.sending = count,
            Some(DeliveryStatus::Fail) => stats.fail = count,
            Some(DeliveryStatus::Canceled) => stats.canceled = count,
            None => return Err(StoreError::Corrupt(format!("delivery status {status}"))),
        }
    }
    Ok(stats)
}

/// A message with the status of its newest delivery to one endpoint.
#[derive(Debug)]
pub struct EndpointMessage {
    pub message: Message,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
}

/// Messages delivered (or being delivered) to an endpoint, newest first.
pub fn messages_for_endpoint(
    conn: &Conn,
    endpoint_id: &str,
    app_id: &str,
    page: &super::PageRequest,
) -> Result<Vec<EndpointMessage>> {
    let (condition, order) = page.clause("d.msg_id", 2);
    let rows: Vec<(String, i64, u32, Option<Millis>)> = conn.query_map(
        &format!(
            "SELECT d.msg_id, d.status, d.attempts, d.next_attempt_at FROM deliveries d
             WHERE d.endpoint_id = ?1 AND {condition}
               AND d.id = (SELECT MAX(id) FROM deliveries WHERE msg_id = d.msg_id AND endpoint_id = d.endpoint_id)
             {order}"
        ),
        params![endpoint_id, page.iterator],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (msg_id, status, attempts, next_attempt_at) in rows {
        let Some(message) = super::messages::get(conn, app_id, &msg_id)? else {
            continue;
        };
        let status = DeliveryStatus::from_code(status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?;
        out.push(EndpointMessage {
            message,
            status,
            attempts,
            next_attempt_at,
        });
    }
    Ok(out)
}
