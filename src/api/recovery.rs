//! Recover, replay-missing and bulk replay of an endpoint, and the
//! background-task routes that show their progress.
//!
//! Each POST stores a task and returns 202 with it, status `running`; the
//! runner in [`crate::recovery`] does the work. Bodies and responses have
//! the shapes of the Svix API (`RecoverIn`, `ReplayIn`, `BulkReplayIn`,
//! `BackgroundTaskOut`), so the Svix SDKs parse them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::endpoints::load as load_endpoint;
use super::error::{ApiError, ApiResult};
use super::extract::{deserialize_optional_time, deserialize_time, JsonBody, Path, QueryParams};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{now_ms, Millis, Task, TaskFilter, TaskKind, TaskStatus};
use crate::store::tasks::{self as store, TaskListFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/recover",
            post(recover),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/replay-missing",
            post(replay_missing),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/bulk-replay",
            post(bulk_replay),
        )
        .route("/background-task", get(list))
        .route("/background-task/{task_id}", get(fetch))
}

/// The body of recover and replay-missing: a window of message creation times.
#[derive(Debug, Deserialize)]
struct WindowIn {
    #[serde(deserialize_with = "deserialize_time")]
    since: Millis,
    #[serde(default, deserialize_with = "deserialize_optional_time")]
    until: Option<Millis>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkReplayIn {
    #[serde(deserialize_with = "deserialize_time")]
    since: Millis,
    #[serde(default, deserialize_with = "deserialize_optional_time")]
    until: Option<Millis>,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    status: Option<u8>,
    #[serde(default)]
    status_code_class: Option<u16>,
}

/// A task in the shape of the Svix API's `BackgroundTaskOut`, which is a
/// superset of `RecoverOut` and `ReplayOut`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskOut {
    id: String,
    status: &'static str,
    task: &'static str,
    updated_at: String,
    data: TaskData,
}

/// The task's window and progress; the fields are hookd's own.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskData {
    app_id: String,
    endpoint_id: String,
    since: String,
    until: String,
    /// Messages of the window looked at so far.
    messages_scanned: u64,
    /// Deliveries created so far, one per message at most.
    messages_sent: u64,
    /// Messages that qualified but whose payload was expunged, so were not sent.
    messages_expunged: u64,
    /// The id of the last message looked at; the task resumes after it.
    cursor: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<TaskFilter>,
}

impl From<Task> for TaskOut {
    fn from(task: Task) -> Self {
        Self {
            id: task.id,
            status: task.status.name(),
            task: task.kind.name(),
            updated_at: rfc3339(task.updated_at),
            data: TaskData {
                app_id: task.app_id,
                endpoint_id: task.endpoint_id,
                since: rfc3339(task.since),
                until: rfc3339(task.until),
                messages_scanned: task.messages_scanned,
                messages_sent: task.messages_sent,
                messages_expunged: task.messages_expunged,
                cursor: task.cursor,
                created_at: rfc3339(task.created_at),
                error: task.error,
                filter: (task.filter != TaskFilter::default()).then_some(task.filter),
            },
        }
    }
}

/// Re-delivers every message created in `[since, until)` that was attempted
/// at this endpoint and never delivered. Messages with a pending delivery
/// keep their own retries and get no second copy.
async fn recover(
    state: State<AppState>,
    path: Path<(String, String)>,
    JsonBody(input): JsonBody<WindowIn>,
) -> ApiResult<(StatusCode, Json<TaskOut>)> {
    start(
        state,
        path,
        TaskKind::Recover,
        input.since,
        input.until,
        TaskFilter::default(),
    )
    .await
}

/// Delivers every message created in `[since, until)` that this endpoint's
/// filters accept and that was never attempted at it, such as messages sent
/// while it was disabled or before it existed.
async fn replay_missing(
    state: State<AppState>,
    path: Path<(String, String)>,
    JsonBody(input): JsonBody<WindowIn>,
) -> ApiResult<(StatusCode, Json<TaskOut>)> {
    start(
        state,
        path,
        TaskKind::ReplayMissing,
        input.since,
        input.until,
        TaskFilter::default(),
    )
    .await
}

/// Sends again the messages created in `[since, until)` that were sent to
/// this endpoint and match the filters, whether they succeeded or failed.
async fn bulk_replay(
    state: State<AppState>,
    path: Path<(String, String)>,
    JsonBody(input): JsonBody<BulkReplayIn>,
) -> ApiResult<(StatusCode, Json<TaskOut>)> {
    if let Some(types) = &input.event_types {
        validate::event_type_list("eventTypes", types)?;
    }
    if let Some(channel) = &input.channel {
        validate::channels("channel", std::slice::from_ref(channel))?;
    }
    if let Some(tag) = &input.tag {
        validate::channels("tag", std::slice::from_ref(tag))?;
    }
    if let Some(status) = input.status {
        if status > 4 {
            return Err(ApiError::field(
                "status",
                format!("must be 0 (success), 1 (pending), 2 (fail), 3 (sending) or 4 (canceled), got {status}"),
            ));
        }
    }
    if let Some(class) = input.status_code_class {
        if !matches!(class, 0 | 100 | 200 | 300 | 400 | 500) {
            return Err(ApiError::field(
                "statusCodeClass",
                format!("must be 0 (no response), 100, 200, 300, 400 or 500, got {class}"),
            ));
        }
    }
    let filter = TaskFilter {
        event_types: input.event_types.filter(|types| !types.is_empty()),
        channel: input.channel,
        tag: input.tag,
        status: input.status,
        status_code_class: input.status_code_class,
    };
    start(
        state,
        path,
        TaskKind::BulkReplay,
        input.since,
        input.until,
        filter,
    )
    .await
}

/// Checks the request, stores a running task and wakes the runner.
async fn start(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    kind: TaskKind,
    since: Millis,
    until: Option<Millis>,
    filter: TaskFilter,
) -> ApiResult<(StatusCode, Json<TaskOut>)> {
    let endpoint = load_endpoint(&state, &app_id, &endpoint_id).await?;
    let now = now_ms();
    let until = match until {
        Some(until) if until <= since => {
            return Err(ApiError::field("until", "must be later than since"));
        }
        Some(until) => until,
        None if since >= now => {
            return Err(ApiError::field(
                "since",
                "must be in the past when until is not given, since until defaults to now",
            ));
        }
        None => now,
    };
    if endpoint.disabled {
        return Err(ApiError::bad_request(
            "endpoint_disabled",
            "the endpoint is disabled; enable it before recovering or replaying messages",
        ));
    }

    let task = Task::new(kind, &endpoint, filter, since, until, now);
    let saved = task.clone();
    state
        .store
        .write(move |conn| store::insert(conn, &saved))
        .await?;
    state.recovery.wake();
    tracing::info!(
        app_id = %task.app_id,
        endpoint_id = %task.endpoint_id,
        task_id = %task.id,
        task = kind.name(),
        "task started"
    );
    Ok((StatusCode::ACCEPTED, Json(task.into())))
}

/// The application whose tasks an application token may see; `None` for
/// the admin token, which sees every task.
fn own_app(principal: &Principal) -> Option<String> {
    match principal {
        Principal::Admin => None,
        Principal::App(scope) => Some(scope.app_id.clone()),
    }
}

async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<TaskOut>>> {
    let page = query.page(true)?;
    let status = query
        .get("status")
        .map(|value| {
            TaskStatus::from_name(value).ok_or_else(|| {
                ApiError::query(
                    "status",
                    format!("must be running, finished or failed, got {value:?}"),
                )
            })
        })
        .transpose()?;
    let kind = query
        .get("task")
        .map(|value| {
            TaskKind::from_name(value).ok_or_else(|| {
                ApiError::query(
                    "task",
                    format!("must be endpoint.recover, endpoint.replay or endpoint.bulk-replay, got {value:?}"),
                )
            })
        })
        .transpose()?;
    let filter = TaskListFilter {
        status,
        kind,
        app_id: own_app(&principal),
    };
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| store::list(conn, &page, &filter))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |task| task.id.clone(),
        TaskOut::from,
    )))
}

async fn fetch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(task_id): Path<String>,
) -> ApiResult<Json<TaskOut>> {
    let own = own_app(&principal);
    state
        .store
        .read(move |conn| store::get(conn, &task_id))
        .await?
        .filter(|task| own.as_ref().is_none_or(|app_id| *app_id == task.app_id))
        .map(|task| Json(task.into()))
        .ok_or_else(|| ApiError::not_found("background task"))
}
