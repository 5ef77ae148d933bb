//! Attempts: `/api/v1/app/{app_id}/attempt/…`, one attempt by id, and the
//! messages sent to an endpoint.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;

use super::applications::load as load_app;
use super::endpoints::load as load_endpoint;
use super::error::{ApiError, ApiResult};
use super::extract::{Path, QueryParams};
use super::messages::{optional_time, shown_status, MessageOut};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{Attempt, DeliveryStatus};
use crate::store::attempts::{self as store, AttemptFilter};
use crate::store::{deliveries, messages};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/app/{app_id}/attempt/endpoint/{endpoint_id}",
            get(list_by_endpoint),
        )
        .route("/app/{app_id}/attempt/msg/{msg_id}", get(list_by_message))
        .route(
            "/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}",
            get(fetch),
        )
        .route(
            "/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}/content",
            delete(expunge_content),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/msg",
            get(list_endpoint_messages),
        )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptOut {
    id: String,
    msg_id: String,
    endpoint_id: String,
    url: String,
    response: String,
    response_status_code: u16,
    response_duration_ms: i64,
    /// True when the receiver sent more than the stored prefix of its body.
    response_truncated: bool,
    /// Why no response arrived: `timeout`, `connect`, `blocked` or `request`.
    error_kind: Option<String>,
    status: u8,
    status_text: &'static str,
    trigger_type: u8,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg: Option<MessageOut>,
}

impl AttemptOut {
    fn new(attempt: Attempt, msg: Option<MessageOut>) -> Self {
        Self {
            id: attempt.id,
            msg_id: attempt.msg_id,
            endpoint_id: attempt.endpoint_id,
            url: attempt.url,
            response: attempt.response,
            response_status_code: attempt.response_status,
            response_duration_ms: attempt.duration_ms,
            response_truncated: attempt.response_truncated,
            error_kind: attempt.error_kind,
            status: attempt.status as u8,
            status_text: attempt.status.text(),
            trigger_type: attempt.trigger as u8,
            timestamp: rfc3339(attempt.created_at),
            msg,
        }
    }
}

fn filter_from(query: &QueryParams) -> ApiResult<AttemptFilter> {
    let status = match query.get("status") {
        None => None,
        Some(value) => Some(
            value
                .parse::<i64>()
                .ok()
                .and_then(DeliveryStatus::from_code)
                .ok_or_else(|| ApiError::query("status", format!("must be 0 (success), 1 (pending), 2 (fail), 3 (sending) or 4 (canceled), got {value:?}")))?,
        ),
    };
    let endpoint_id = query.get("endpoint_id");
    if let Some(id) = endpoint_id {
        validate::uid("endpoint_id", id).map_err(|err| err.located_in("query"))?;
    }
    Ok(AttemptFilter {
        status,
        endpoint_id: endpoint_id.map(str::to_owned),
        before: query.time("before")?,
        after: query.time("after")?,
    })
}

async fn list_by_endpoint(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<AttemptOut>>> {
    let endpoint = load_endpoint(&state, &app_id, &endpoint_id).await?;
    list(state, endpoint.app_id, "endpoint_id", endpoint.id, query).await
}

async fn list_by_message(
    State(state): State<AppState>,
    Path((app_id, msg_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<AttemptOut>>> {
    let app = load_app(&state, &app_id).await?;
    let (app_key, msg_key) = (app.id.clone(), msg_id.clone());
    let message = state
        .store
        .read(move |conn| messages::get(conn, &app_key, &msg_key))
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    list(state, app.id, "msg_id", message.id, query).await
}

async fn list(
    state: AppState,
    app_id: String,
    by: &'static str,
    value: String,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<AttemptOut>>> {
    let page = query.page(true)?;
    let filter = filter_from(&query)?;
    let with_msg = query.bool("with_msg", false)?;
    let with_content = query.bool("with_content", true)?;
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| {
            let attempts = store::list(conn, &app_id, by, &value, &page, &filter)?;
            let mut out = Vec::with_capacity(attempts.len());
            for attempt in attempts {
                let msg = if with_msg {
                    messages::get(conn, &app_id, &attempt.msg_id)?
                } else {
                    None
                };
                out.push((attempt, msg));
            }
            Ok(out)
        })
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |(attempt, _)| attempt.id.clone(),
        |(attempt, msg)| AttemptOut::new(attempt, msg.map(|m| MessageOut::new(m, with_content))),
    )))
}

async fn fetch(
    State(state): State<AppState>,
    Path((app_id, msg_id, attempt_id)): Path<(String, String, String)>,
) -> ApiResult<Json<AttemptOut>> {
    let app = load_app(&state, &app_id).await?;
    let attempt = state
        .store
        .read(move |conn| {
            let Some(message) = messages::get(conn, &app.id, &msg_id)? else {
                return Ok(None);
            };
            store::get(conn, &app.id, &message.id, &attempt_id)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("attempt"))?;
    Ok(Json(AttemptOut::new(attempt, None)))
}

async fn expunge_content(
    State(state): State<AppState>,
    Path((app_id, msg_id, attempt_id)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let app = load_app(&state, &app_id).await?;
    let found = state
        .store
        .read(move |conn| {
            let Some(message) = messages::get(conn, &app.id, &msg_id)? else {
                return Ok(None);
            };
            store::get(conn, &app.id, &message.id, &attempt_id)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("attempt"))?;
    state
        .store
        .write(move |conn| store::expunge_response(conn, &found.id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointMessageOut {
    #[serde(flatten)]
    message: MessageOut,
    status: u8,
    status_text: &'static str,
    next_attempt: Option<String>,
}

/// Messages sent to an endpoint, newest first, each with its delivery status there.
async fn list_endpoint_messages(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<EndpointMessageOut>>> {
    let endpoint = load_endpoint(&state, &app_id, &endpoint_id).await?;
    let page = query.page(true)?;
    let with_content = query.bool("with_content", true)?;
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| {
            deliveries::messages_for_endpoint(conn, &endpoint.id, &endpoint.app_id, &page)
        })
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |row| row.message.id.clone(),
        |row| {
            let shown = shown_status(row.status, row.attempts);
            EndpointMessageOut {
                message: MessageOut::new(row.message, with_content),
                status: shown as u8,
                status_text: shown.text(),
                next_attempt: optional_time(row.next_attempt_at),
            }
        },
    )))
}
