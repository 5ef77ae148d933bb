//! `/api/v1/app/{app_id}/endpoint`: endpoints, their secrets, headers and
//! statistics. Recover and replay are in [`super::recovery`].

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::applications::{double_option, load as load_app};
use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path, QueryParams};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{ids, now_ms, secret, Endpoint, Millis, PreviousSecret};
use crate::store::deliveries;
use crate::store::endpoints as store;

/// Grace period of a rotated-out secret when the request names none.
const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 24 * 3600;
const MAX_GRACE_PERIOD_SECONDS: u64 = 7 * 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/{app_id}/endpoint", get(list).post(create))
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}",
            get(fetch).put(upsert).patch(patch).delete(remove),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/secret",
            get(get_secret),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/secret/rotate",
            post(rotate_secret),
        )
        .route(
            "/app/{app_id}/endpoint/{endpoint_id}/headers",
            get(get_headers).put(set_headers).patch(patch_headers),
        )
        .route("/app/{app_id}/endpoint/{endpoint_id}/stats", get(stats))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointIn {
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default, alias = "throttleRate")]
    rate_limit: Option<u32>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default, alias = "filterTypes")]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// hookd extension: delays before each retry, such as `["5s", "1m"]`,
    /// overriding the global `retry_schedule` for this endpoint.
    #[serde(default)]
    retry_schedule: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointPatch {
    url: Option<String>,
    description: Option<String>,
    #[serde(default, alias = "throttleRate", with = "double_option")]
    rate_limit: Option<Option<u32>>,
    #[serde(default, with = "double_option")]
    uid: Option<Option<String>>,
    disabled: Option<bool>,
    #[serde(default, alias = "filterTypes", with = "double_option")]
    event_types: Option<Option<Vec<String>>>,
    #[serde(default, with = "double_option")]
    channels: Option<Option<Vec<String>>>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default, with = "double_option")]
    retry_schedule: Option<Option<Vec<String>>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOut {
    pub id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub rate_limit: Option<u32>,
    pub throttle_rate: Option<u32>,
    pub disabled: bool,
    pub event_types: Option<Vec<String>>,
    pub filter_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub metadata: BTreeMap<String, String>,
    /// The endpoint's own retry schedule, or `null` for the global one.
    pub retry_schedule: Option<Vec<String>>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Endpoint> for EndpointOut {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            uid: e.uid,
            url: e.url,
            description: e.description,
            rate_limit: e.rate_limit,
            throttle_rate: e.rate_limit,
            disabled: e.disabled,
            filter_types: e.event_types.clone(),
            event_types: e.event_types,
            channels: e.channels,
            metadata: e.metadata,
            retry_schedule: e.retry_schedule_ms.map(|delays| {
                delays
                    .into_iter()
                    .map(|ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    })
                    .collect()
            }),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// Validates every client-chosen field of an endpoint and normalises its URL.
async fn check(state: &AppState, endpoint: &mut Endpoint) -> ApiResult<()> {
    endpoint.url = validate::endpoint_url(
        "url",
        &endpoint.url,
        &state.network_policy,
        state.https_only,
    )?;
    validate::description("description", &endpoint.description)?;
    validate::rate_limit("rateLimit", endpoint.rate_limit)?;
    if let Some(uid) = &endpoint.uid {
        validate::uid("uid", uid)?;
    }
    if let Some(types) = &endpoint.event_types {
        validate::event_type_list("eventTypes", types)?;
    }
    if let Some(channels) = &endpoint.channels {
        validate::channels("channels", channels)?;
    }
    validate::metadata("metadata", &endpoint.metadata)?;
    validate::headers("headers", &endpoint.headers)?;

    // As in the Svix API, a filter may name only event types that exist and
    // are not archived, so a typo does not silently filter everything out.
    if let Some(types) = endpoint.event_types.clone() {
        let unknown = state
            .store
            .read(move |conn| {
                for name in &types {
                    match crate::store::event_types::get(conn, name)? {
                        Some(found) if !found.archived => {}
                        _ => return Ok(Some(name.clone())),
                    }
                }
                Ok(None)
            })
            .await?;
        if let Some(name) = unknown {
            return Err(ApiError::field(
                "eventTypes",
                format!("event type {name:?} does not exist or is archived; create it with POST /api/v1/event-type first"),
            ));
        }
    }
    Ok(())
}

/// Parses an endpoint's retry schedule, such as `["5s", "1m"]`, into milliseconds.
fn parse_retry_schedule(delays: &[String]) -> ApiResult<Vec<u64>> {
    crate::config::parse_schedule(&delays.join(","))
        .map(|schedule| schedule.iter().map(|d| d.as_millis() as u64).collect())
        .map_err(|reason| {
            ApiError::field(
                "retrySchedule",
                format!("{reason}; example: [\"30s\", \"5m\", \"1h\"]"),
            )
        })
}

/// Saves a changed endpoint; enabling or disabling it also stores an
/// operational event, whose deliveries are handed to the scheduler.
async fn save_with_events(
    state: &AppState,
    endpoint: &Endpoint,
    was_disabled: bool,
) -> ApiResult<()> {
    let saved = endpoint.clone();
    let operational = state.operational_app_id.clone();
    let now = now_ms();
    let created = state
        .store
        .write(move |conn| {
            store::save_with_events(conn, &saved, was_disabled, operational.as_deref(), now)
        })
        .await?;
    state.engine.enqueue(created);
    Ok(())
}

/// Loads an endpoint of an application by id or uid, or returns 404.
pub async fn load(state: &AppState, app_id: &str, endpoint_id: &str) -> ApiResult<Endpoint> {
    let app = load_app(state, app_id).await?;
    let key = endpoint_id.to_owned();
    state
        .store
        .read(move |conn| store::get(conn, &app.id, &key))
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

fn endpoint_from_input(app_id: &str, input: EndpointIn) -> ApiResult<Endpoint> {
    let secret = match input.secret {
        Some(given) => {
            validate::secret("secret", &given)?;
            given
        }
        None => secret::generate(),
    };
    let now = now_ms();
    Ok(Endpoint {
        id: ids::new_id(ids::ENDPOINT),
        app_id: app_id.to_owned(),
        uid: input.uid,
        url: input.url,
        description: input.description,
        rate_limit: input.rate_limit,
        disabled: input.disabled,
        event_types: input.event_types.filter(|types| !types.is_empty()),
        channels: input.channels.filter(|channels| !channels.is_empty()),
        secret,
        previous_secrets: Vec::new(),
        metadata: input.metadata.unwrap_or_default(),
        headers: input.headers.unwrap_or_default(),
        retry_schedule_ms: input
            .retry_schedule
            .as_deref()
            .map(parse_retry_schedule)
            .transpose()?,
        created_at: now,
        updated_at: now,
    })
}

async fn list(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<EndpointOut>>> {
    let app = load_app(&state, &app_id).await?;
    let page = query.page(false)?;
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| store::list(conn, &app.id, &page))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |e| e.id.clone(),
        EndpointOut::from,
    )))
}

async fn create(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    JsonBody(input): JsonBody<EndpointIn>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let app = load_app(&state, &app_id).await?;
    let mut endpoint = endpoint_from_input(&app.id, input)?;
    check(&state, &mut endpoint).await?;
    let saved = endpoint.clone();
    state
        .store
        .write(move |conn| store::save(conn, &saved, false))
        .await?;
    tracing::info!(app_id = %endpoint.app_id, endpoint_id = %endpoint.id, "endpoint created");
    Ok((StatusCode::CREATED, Json(endpoint.into())))
}

async fn fetch(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> ApiResult<Json<EndpointOut>> {
    Ok(Json(load(&state, &app_id, &endpoint_id).await?.into()))
}

/// PUT: replaces the endpoint's settings, or creates it with the path as its uid.
async fn upsert(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<EndpointIn>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let app = load_app(&state, &app_id).await?;
    let (app_key, key) = (app.id.clone(), endpoint_id.clone());
    let existing = state
        .store
        .read(move |conn| store::get(conn, &app_key, &key))
        .await?;
    let previously_disabled = existing.as_ref().map(|e| e.disabled);
    let (mut endpoint, status) = match existing {
        Some(current) => {
            let mut replaced = endpoint_from_input(
                &app.id,
                EndpointIn {
                    secret: None,
                    ..input
                },
            )?;
            replaced.id = current.id;
            replaced.uid = replaced.uid.or(current.uid);
            replaced.secret = current.secret;
            replaced.previous_secrets = current.previous_secrets;
            replaced.created_at = current.created_at;
            (replaced, StatusCode::OK)
        }
        None => {
            if ids::has_prefix(&endpoint_id, ids::ENDPOINT) {
                return Err(ApiError::not_found("endpoint"));
            }
            validate::uid("uid", &endpoint_id)?;
            let mut created = endpoint_from_input(&app.id, input)?;
            created.uid = created.uid.or(Some(endpoint_id));
            (created, StatusCode::CREATED)
        }
    };
    check(&state, &mut endpoint).await?;
    // A new endpoint has no transition to report.
    let was_disabled = previously_disabled.unwrap_or(endpoint.disabled);
    save_with_events(&state, &endpoint, was_disabled).await?;
    Ok((status, Json(endpoint.into())))
}

async fn patch(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<EndpointPatch>,
) -> ApiResult<Json<EndpointOut>> {
    let mut endpoint = load(&state, &app_id, &endpoint_id).await?;
    let was_disabled = endpoint.disabled;
    if let Some(url) = input.url {
        endpoint.url = url;
    }
    if let Some(description) = input.description {
        endpoint.description = description;
    }
    if let Some(rate_limit) = input.rate_limit {
        endpoint.rate_limit = rate_limit;
    }
    if let Some(uid) = input.uid {
        endpoint.uid = uid;
    }
    if let Some(disabled) = input.disabled {
        endpoint.disabled = disabled;
    }
    if let Some(types) = input.event_types {
        endpoint.event_types = types.filter(|t| !t.is_empty());
    }
    if let Some(channels) = input.channels {
        endpoint.channels = channels.filter(|c| !c.is_empty());
    }
    if let Some(metadata) = input.metadata {
        endpoint.metadata = metadata;
    }
    if let Some(schedule) = input.retry_schedule {
        endpoint.retry_schedule_ms = schedule.as_deref().map(parse_retry_schedule).transpose()?;
    }
    endpoint.updated_at = now_ms();
    check(&state, &mut endpoint).await?;
    save_with_events(&state, &endpoint, was_disabled).await?;
    Ok(Json(endpoint.into()))
}

async fn remove(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let endpoint = load(&state, &app_id, &endpoint_id).await?;
    let now = now_ms();
    state
        .store
        .write(move |conn| store::delete(conn, &endpoint.id, now))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
struct SecretOut {
    key: String,
}

async fn get_secret(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> ApiResult<Json<SecretOut>> {
    let endpoint = load(&state, &app_id, &endpoint_id).await?;
    Ok(Json(SecretOut {
        key: endpoint.secret,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotateIn {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    grace_period_seconds: Option<u64>,
}

/// Replaces the signing secret. The old secret keeps signing, next to the
/// new one, for the grace period (default 24 hours).
async fn rotate_secret(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<RotateIn>,
) -> ApiResult<Json<SecretOut>> {
    let mut endpoint = load(&state, &app_id, &endpoint_id).await?;
    let new_secret = match input.key {
        Some(key) => {
            validate::secret("key", &key)?;
            key
        }
        None => secret::generate(),
    };
    let grace = input
        .grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    if grace > MAX_GRACE_PERIOD_SECONDS {
        return Err(ApiError::field(
            "gracePeriodSeconds",
            format!("must be at most {MAX_GRACE_PERIOD_SECONDS} (7 days), got {grace}"),
        ));
    }
    let now = now_ms();
    endpoint.previous_secrets.retain(|s| s.expires_at > now);
    if grace > 0 {
        endpoint.previous_secrets.push(PreviousSecret {
            secret: std::mem::replace(&mut endpoint.secret, new_secret.clone()),
            expires_at: now + (grace as Millis) * 1000,
        });
    } else {
        endpoint.secret = new_secret.clone();
    }
    endpoint.updated_at = now;
    state
        .store
        .write(move |conn| store::save(conn, &endpoint, true))
        .await?;
    Ok(Json(SecretOut { key: new_secret }))
}

#[derive(Debug, Serialize)]
struct HeadersOut {
    headers: BTreeMap<String, String>,
    sensitive: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadersIn {
    headers: BTreeMap<String, String>,
    #[serde(default)]
    delete_headers: Option<Vec<String>>,
}

async fn get_headers(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> ApiResult<Json<HeadersOut>> {
    let endpoint = load(&state, &app_id, &endpoint_id).await?;
    Ok(Json(HeadersOut {
        headers: endpoint.headers,
        sensitive: Vec::new(),
    }))
}

async fn set_headers(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<HeadersIn>,
) -> ApiResult<StatusCode> {
    let mut endpoint = load(&state, &app_id, &endpoint_id).await?;
    validate::headers("headers", &input.headers)?;
    endpoint.headers = input.headers;
    endpoint.updated_at = now_ms();
    state
        .store
        .write(move |conn| store::save(conn, &endpoint, true))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// PATCH: sets the given headers and removes those in `deleteHeaders`.
async fn patch_headers(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<HeadersIn>,
) -> ApiResult<StatusCode> {
    let mut endpoint = load(&state, &app_id, &endpoint_id).await?;
    for name in input.delete_headers.unwrap_or_default() {
        endpoint
            .headers
            .retain(|k, _| !k.eq_ignore_ascii_case(&name));
    }
    endpoint.headers.extend(input.headers);
    validate::headers("headers", &endpoint.headers)?;
    endpoint.updated_at = now_ms();
    state
        .store
        .write(move |conn| store::save(conn, &endpoint, true))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
struct StatsOut {
    success: u64,
    pending: u64,
    sending: u64,
    fail: u64,
    canceled: u64,
}

async fn stats(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> ApiResult<Json<StatsOut>> {
    let endpoint = load(&state, &app_id, &endpoint_id).await?;
    let stats = state
        .store
        .read_blocking(move |conn| deliveries::endpoint_stats(conn, &endpoint.id))
        .await?;
    Ok(Json(StatsOut {
        success: stats.success,
        pending: stats.pending,
        sending: stats.sending,
        fail: stats.fail,
        canceled: stats.canceled,
    }))
}
