//! `/api/v1/event-type`: event types.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path, QueryParams};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{now_ms, EventType};
use crate::store::event_types as store;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/event-type", get(list).post(create))
        .route(
            "/event-type/{name}",
            get(fetch).put(upsert).patch(patch).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventTypeIn {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    schemas: Option<serde_json::Value>,
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    feature_flags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventTypeUpdate {
    #[serde(default)]
    description: String,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    schemas: Option<serde_json::Value>,
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    feature_flags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventTypePatch {
    description: Option<String>,
    archived: Option<bool>,
    deprecated: Option<bool>,
    #[serde(default, with = "super::applications::double_option")]
    schemas: Option<Option<serde_json::Value>>,
    #[serde(default, with = "super::applications::double_option")]
    group_name: Option<Option<String>>,
    #[serde(default, with = "super::applications::double_option")]
    feature_flags: Option<Option<Vec<String>>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventTypeOut {
    name: String,
    description: String,
    archived: bool,
    deprecated: bool,
    schemas: Option<serde_json::Value>,
    group_name: Option<String>,
    feature_flags: Option<Vec<String>>,
    created_at: String,
    updated_at: String,
}

impl From<EventType> for EventTypeOut {
    fn from(e: EventType) -> Self {
        Self {
            name: e.name,
            description: e.description,
            archived: e.archived,
            deprecated: e.deprecated,
            schemas: e.schemas,
            group_name: e.group_name,
            feature_flags: e.feature_flags,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

fn check(event_type: &EventType) -> ApiResult<()> {
    validate::event_type_name("name", &event_type.name)?;
    validate::description("description", &event_type.description)?;
    if let Some(group_name) = &event_type.group_name {
        validate::uid("groupName", group_name)?;
    }
    if let Some(flags) = &event_type.feature_flags {
        validate::feature_flags("featureFlags", flags)?;
    }
    if let Some(schemas) = &event_type.schemas {
        if !schemas.is_object() {
            return Err(ApiError::field(
                "schemas",
                "must be an object of JSON schemas keyed by version, such as {\"1\": {...}}",
            ));
        }
    }
    Ok(())
}

async fn load(state: &AppState, name: &str) -> ApiResult<EventType> {
    let key = name.to_owned();
    state
        .store
        .read(move |conn| store::get(conn, &key))
        .await?
        .ok_or_else(|| ApiError::not_found("event type"))
}

/// Lists event types; an application token sees only those whose feature
/// flags it carries.
async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<EventTypeOut>>> {
    let page = query.page(false)?;
    let include_archived = query.bool("include_archived", false)?;
    let limit = page.limit;
    let flags = principal.feature_flags().map(<[String]>::to_vec);
    let rows = state
        .store
        .read_blocking(move |conn| store::list(conn, &page, include_archived, flags.as_deref()))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |e| e.name.clone(),
        EventTypeOut::from,
    )))
}

async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<EventTypeIn>,
) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    let now = now_ms();
    let event_type = EventType {
        name: input.name,
        description: input.description,
        archived: input.archived,
        deprecated: input.deprecated,
        schemas: input.schemas,
        group_name: input.group_name,
        feature_flags: input.feature_flags,
        created_at: now,
        updated_at: now,
    };
    check(&event_type)?;
    let saved = event_type.clone();
    state
        .store
        .write(move |conn| store::save(conn, &saved, false))
        .await?;
    Ok((StatusCode::CREATED, Json(event_type.into())))
}

/// Returns an event type; one that an application token may not see gets 404.
async fn fetch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<EventTypeOut>> {
    let event_type = load(&state, &name).await?;
    if !principal.sees_event_type(&event_type) {
        return Err(ApiError::not_found("event type"));
    }
    Ok(Json(event_type.into()))
}

async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<EventTypeUpdate>,
) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    let key = name.clone();
    let existing = state.store.read(move |conn| store::get(conn, &key)).await?;
    let now = now_ms();
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let event_type = EventType {
        name,
        description: input.description,
        archived: input.archived,
        deprecated: input.deprecated,
        schemas: input.schemas,
        group_name: input.group_name,
        feature_flags: input.feature_flags,
        created_at: existing.map_or(now, |e| e.created_at),
        updated_at: now,
    };
    check(&event_type)?;
    let saved = event_type.clone();
    state
        .store
        .write(move |conn| store::save(conn, &saved, true))
        .await?;
    Ok((status, Json(event_type.into())))
}

async fn patch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<EventTypePatch>,
) -> ApiResult<Json<EventTypeOut>> {
    let mut event_type = load(&state, &name).await?;
    if let Some(description) = input.description {
        event_type.description = description;
    }
    if let Some(archived) = input.archived {
        event_type.archived = archived;
    }
    if let Some(deprecated) = input.deprecated {
        event_type.deprecated = deprecated;
    }
    if let Some(schemas) = input.schemas {
        event_type.schemas = schemas;
    }
    if let Some(group_name) = input.group_name {
        event_type.group_name = group_name;
    }
    if let Some(flags) = input.feature_flags {
        event_type.feature_flags = flags;
    }
    event_type.updated_at = now_ms();
    check(&event_type)?;
    let saved = event_type.clone();
    state
        .store
        .write(move |conn| store::save(conn, &saved, true))
        .await?;
    Ok(Json(event_type.into()))
}

/// DELETE archives the event type, as in the Svix API; `?expunge=true` deletes it.
async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: QueryParams,
) -> ApiResult<StatusCode> {
    let mut event_type = load(&state, &name).await?;
    if query.bool("expunge", false)? {
        state
            .store
            .write(move |conn| store::delete(conn, &name))
            .await?;
    } else {
        event_type.archived = true;
        event_type.updated_at = now_ms();
        state
            .store
            .write(move |conn| store::save(conn, &event_type, true))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
