//! `/api/v1/app`: applications.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path, QueryParams};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{ids, now_ms, Application};
use crate::store::applications as store;

pub fn routes() -> Router<AppState> {
    Router::new().route("/app", get(list).post(create)).route(
        "/app/{app_id}",
        get(fetch).put(upsert).patch(patch).delete(remove),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationIn {
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default, alias = "throttleRate")]
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplicationPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, with = "double_option")]
    uid: Option<Option<String>>,
    #[serde(default, alias = "throttleRate", with = "double_option")]
    rate_limit: Option<Option<u32>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationOut {
    id: String,
    uid: Option<String>,
    name: String,
    rate_limit: Option<u32>,
    throttle_rate: Option<u32>,
    metadata: BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
}

impl From<Application> for ApplicationOut {
    fn from(app: Application) -> Self {
        Self {
            id: app.id,
            uid: app.uid,
            name: app.name,
            rate_limit: app.rate_limit,
            throttle_rate: app.rate_limit,
            metadata: app.metadata,
            created_at: rfc3339(app.created_at),
            updated_at: rfc3339(app.updated_at),
        }
    }
}

/// Distinguishes a field set to `null` (`Some(None)`) from an absent one (`None`).
pub mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Validates every client-chosen field of an application.
pub fn check(input: &ApplicationIn) -> ApiResult<()> {
    if input.name.trim().is_empty() || input.name.len() > 256 {
        return Err(ApiError::field("name", "must be 1 to 256 characters"));
    }
    validate::no_nul("name", &input.name)?;
    if let Some(uid) = &input.uid {
        validate::uid("uid", uid)?;
    }
    validate::rate_limit("rateLimit", input.rate_limit)?;
    if let Some(metadata) = &input.metadata {
        validate::metadata("metadata", metadata)?;
    }
    Ok(())
}

/// Loads an application by id or uid, or returns 404.
pub async fn load(state: &AppState, app_id: &str) -> ApiResult<Application> {
    state
        .store
        .application(app_id)
        .await?
        .map(Arc::unwrap_or_clone)
        .ok_or_else(|| ApiError::not_found("application"))
}

async fn list(
    State(state): State<AppState>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<ApplicationOut>>> {
    let page = query.page(false)?;
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| store::list(conn, &page))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |a| a.id.clone(),
        ApplicationOut::from,
    )))
}

async fn create(
    State(state): State<AppState>,
    query: QueryParams,
    JsonBody(input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    check(&input)?;
    if query.bool("get_if_exists", false)? {
        if let Some(uid) = &input.uid {
            let key = uid.clone();
            if let Some(existing) = state.store.read(move |conn| store::get(conn, &key)).await? {
                return Ok((StatusCode::OK, Json(existing.into())));
            }
        }
    }
    let app = new_application(input, None);
    let saved = app.clone();
    state
        .store
        .write(move |conn| store::insert(conn, &saved))
        .await?;
    Ok((StatusCode::CREATED, Json(app.into())))
}

fn new_application(input: ApplicationIn, uid_from_path: Option<&str>) -> Application {
    let now = now_ms();
    Application {
        id: ids::new_id(ids::APPLICATION),
        uid: input.uid.or(uid_from_path.map(str::to_owned)),
        name: input.name,
        rate_limit: input.rate_limit,
        metadata: input.metadata.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    }
}

async fn fetch(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
) -> ApiResult<Json<ApplicationOut>> {
    Ok(Json(load(&state, &app_id).await?.into()))
}

/// PUT: replaces the application, or creates it with the path as its uid.
async fn upsert(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    JsonBody(input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    check(&input)?;
    let key = app_id.clone();
    let existing = state.store.read(move |conn| store::get(conn, &key)).await?;
    match existing {
        Some(mut app) => {
            app.name = input.name;
            app.uid = input.uid.or(app.uid);
            app.rate_limit = input.rate_limit;
            app.metadata = input.metadata.unwrap_or_default();
            app.updated_at = now_ms();
            let saved = app.clone();
            state
                .store
                .write(move |conn| store::update(conn, &saved))
                .await?;
            Ok((StatusCode::OK, Json(app.into())))
        }
        None => {
            if ids::has_prefix(&app_id, ids::APPLICATION) {
                return Err(ApiError::not_found("application"));
            }
            validate::uid("uid", &app_id)?;
            let app = new_application(input, Some(&app_id));
            let saved = app.clone();
            state
                .store
                .write(move |conn| store::insert(conn, &saved))
                .await?;
            Ok((StatusCode::CREATED, Json(app.into())))
        }
    }
}

async fn patch(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    JsonBody(input): JsonBody<ApplicationPatch>,
) -> ApiResult<Json<ApplicationOut>> {
    let mut app = load(&state, &app_id).await?;
    if let Some(name) = input.name {
        app.name = name;
    }
    if let Some(uid) = input.uid {
        app.uid = uid;
    }
    if let Some(rate_limit) = input.rate_limit {
        app.rate_limit = rate_limit;
    }
    if let Some(metadata) = input.metadata {
        app.metadata = metadata;
    }
    check(&ApplicationIn {
        name: app.name.clone(),
        uid: app.uid.clone(),
        rate_limit: app.rate_limit,
        metadata: Some(app.metadata.clone()),
    })?;
    app.updated_at = now_ms();
    let saved = app.clone();
    state
        .store
        .write(move |conn| store::update(conn, &saved))
        .await?;
    Ok(Json(app.into()))
}

async fn remove(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
) -> ApiResult<StatusCode> {
    let app = load(&state, &app_id).await?;
    state
        .store
        .write(move |conn| store::delete(conn, &app.id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
