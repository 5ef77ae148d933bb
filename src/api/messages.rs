//! `/api/v1/app/{app_id}/msg`: messages, and resending one to an endpoint.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::applications::{check as check_app, load as load_app, ApplicationIn};
use super::endpoints::load as load_endpoint;
use super::error::{ApiError, ApiResult};
use super::extract::{body_error, JsonBytes, Path, QueryParams};
use super::{rfc3339, validate, AppState, ListResponse};
use crate::model::{ids, now_ms, Application, DeliveryStatus, Message, Millis};
use crate::store::messages::{self as store, MessageFilter, NewDelivery};
use crate::store::{applications, deliveries, endpoints};
use crate::telemetry::metric;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/{app_id}/msg", get(list).post(create))
        .route("/app/{app_id}/msg/{msg_id}", get(fetch))
        .route(
            "/app/{app_id}/msg/{msg_id}/content",
            delete(expunge_content),
        )
        .route(
            "/app/{app_id}/msg/{msg_id}/endpoint",
            get(list_destinations),
        )
        .route(
            "/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend",
            post(resend),
        )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageIn {
    event_type: String,
    payload: Box<RawValue>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    application: Option<ApplicationIn>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: String,
    pub event_type: String,
    pub event_id: Option<String>,
    pub payload: Box<RawValue>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub timestamp: String,
}

impl MessageOut {
    /// Builds the response body. The payload is the stored bytes, unchanged,
    /// or `{}` when it was not requested. An expunged payload reads
    /// `{"expired":true}`, as in the Svix API.
    pub fn new(message: Message, with_content: bool) -> Self {
        let payload = if with_content {
            message
                .payload
                .and_then(|p| RawValue::from_string(p).ok())
                .unwrap_or_else(expired_object)
        } else {
            empty_object()
        };
        Self {
            id: message.id,
            event_type: message.event_type,
            event_id: message.event_id,
            payload,
            channels: message.channels,
            tags: message.tags,
            timestamp: rfc3339(message.created_at),
        }
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("{} is valid JSON")
}

fn expired_object() -> Box<RawValue> {
    RawValue::from_string(r#"{"expired":true}"#.to_owned()).expect("the marker is valid JSON")
}

/// Parses the body of a message, keeping the payload's exact bytes.
fn parse_message(bytes: &[u8], max_payload_bytes: usize) -> ApiResult<MessageIn> {
    let input: MessageIn =
        serde_json::from_slice(bytes).map_err(|err| body_error(vec!["body".to_owned()], &err))?;
    validate::event_type_name("eventType", &input.event_type)?;
    if !input.payload.get().starts_with('{') {
        return Err(ApiError::field("payload", "must be a JSON object"));
    }
    if input.payload.get().len() > max_payload_bytes {
        return Err(ApiError::field(
            "payload",
            format!(
                "must be at most {max_payload_bytes} bytes, got {}",
                input.payload.get().len()
            ),
        ));
    }
    validate::payload_depth("payload", input.payload.get())?;
    if let Some(event_id) = &input.event_id {
        validate::uid("eventId", event_id)?;
    }
    if let Some(channels) = &input.channels {
        validate::channels("channels", channels)?;
    }
    if let Some(tags) = &input.tags {
        validate::channels("tags", tags)?;
    }
    if let Some(application) = &input.application {
        check_app(application).map_err(|err| err.nested_in("application"))?;
    }
    Ok(input)
}

/// Finds the application, or creates it from the message's `application`
/// field when the path names a uid that does not exist yet.
async fn app_for_message(
    state: &AppState,
    app_id: &str,
    inline: Option<ApplicationIn>,
) -> ApiResult<Application> {
    match load_app(state, app_id).await {
        Err(ApiError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        }) if inline.is_some() => {
            let input = inline.expect("checked by the guard");
            let uid = input.uid.clone().unwrap_or_else(|| app_id.to_owned());
            validate::uid("application.uid", &uid)?;
            let now = now_ms();
            let app = Application {
                id: ids::new_id(ids::APPLICATION),
                uid: Some(uid),
                name: input.name,
                rate_limit: input.rate_limit,
                metadata: input.metadata.unwrap_or_default(),
                created_at: now,
                updated_at: now,
            };
            let saved = app.clone();
            state
                .store
                .write(move |conn| applications::insert(conn, &saved))
                .await?;
            Ok(app)
        }
        other => other,
    }
}

/// Stores the message and its deliveries in one commit, then hands the
/// deliveries to the scheduler. Returns 202 only after the commit.
async fn create(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    query: QueryParams,
    JsonBytes(body): JsonBytes,
) -> ApiResult<(StatusCode, Json<MessageOut>)> {
    let input = parse_message(&body, state.max_payload_bytes)?;
    let with_content = query.bool("with_content", true)?;
    let app = app_for_message(&state, &app_id, input.application).await?;

    let message = Message {
        id: ids::new_id(ids::MESSAGE),
        app_id: app.id,
        event_type: input.event_type,
        event_id: input.event_id,
        channels: input.channels.filter(|c| !c.is_empty()),
        tags: input.tags.filter(|t| !t.is_empty()),
        payload: Some(input.payload.get().to_owned()),
        created_at: now_ms(),
    };
    let created = state.store.create_message(message).await?;
    if created.is_new {
        state.engine.messages_stored();
        metrics::counter!(metric::MESSAGES_ACCEPTED).increment(1);
    } else {
        metrics::counter!(metric::MESSAGES_DEDUPLICATED).increment(1);
    }
    state.engine.enqueue(created.deliveries);
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageOut::new(created.message, with_content)),
    ))
}

async fn load(state: &AppState, app_id: &str, msg_id: &str) -> ApiResult<Message> {
    let app = load_app(state, app_id).await?;
    let key = msg_id.to_owned();
    state
        .store
        .read(move |conn| store::get(conn, &app.id, &key))
        .await?
        .ok_or_else(|| ApiError::not_found("message"))
}

async fn list(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<MessageOut>>> {
    let app = load_app(&state, &app_id).await?;
    let page = query.page(true)?;
    let with_content = query.bool("with_content", true)?;
    let filter = MessageFilter {
        event_types: query.get_all("event_types"),
        channel: query.get("channel").map(str::to_owned),
        before: query.time("before")?,
        after: query.time("after")?,
    };
    if let Some(types) = &filter.event_types {
        validate::event_type_list("event_types", types).map_err(|err| err.located_in("query"))?;
    }
    if let Some(channel) = &filter.channel {
        validate::channels("channel", std::slice::from_ref(channel))
            .map_err(|err| err.located_in("query"))?;
    }
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| store::list(conn, &app.id, &page, &filter))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |m| m.id.clone(),
        |m| MessageOut::new(m, with_content),
    )))
}

async fn fetch(
    State(state): State<AppState>,
    Path((app_id, msg_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<MessageOut>> {
    let with_content = query.bool("with_content", true)?;
    Ok(Json(MessageOut::new(
        load(&state, &app_id, &msg_id).await?,
        with_content,
    )))
}

async fn expunge_content(
    State(state): State<AppState>,
    Path((app_id, msg_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let message = load(&state, &app_id, &msg_id).await?;
    state
        .store
        .write(move |conn| store::expunge_payload(conn, &message.id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds one manual delivery of the message to the endpoint. The message's
/// other deliveries, and their scheduled retries, are left as they are.
async fn resend(
    State(state): State<AppState>,
    Path((app_id, msg_id, endpoint_id)): Path<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let message = load(&state, &app_id, &msg_id).await?;
    let endpoint = load_endpoint(&state, &app_id, &endpoint_id).await?;
    if endpoint.disabled {
        return Err(ApiError::bad_request(
            "endpoint_disabled",
            "the endpoint is disabled; enable it before resending",
        ));
    }
    if message.payload.is_none() {
        return Err(ApiError::bad_request(
            "payload_expunged",
            "the message payload was expunged and cannot be resent",
        ));
    }
    let now = now_ms();
    let (msg_key, endpoint_key, app_key) = (
        message.id.clone(),
        endpoint.id.clone(),
        message.app_id.clone(),
    );
    let delivery_id = state
        .store
        .write(move |conn| deliveries::create_manual(conn, &msg_key, &endpoint_key, &app_key, now))
        .await?;
    state.engine.enqueue(vec![NewDelivery {
        delivery_id,
        endpoint_id: endpoint.id.clone(),
    }]);
    tracing::info!(msg_id = %message.id, endpoint_id = %endpoint.id, "resend queued");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({}))))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageEndpointOut {
    #[serde(flatten)]
    endpoint: super::endpoints::EndpointOut,
    status: u8,
    status_text: &'static str,
    next_attempt: Option<String>,
}

/// Lists the status of the message at each endpoint it was sent to.
async fn list_destinations(
    State(state): State<AppState>,
    Path((app_id, msg_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<MessageEndpointOut>>> {
    let message = load(&state, &app_id, &msg_id).await?;
    let page = query.page(false)?;
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| {
            let mut out = Vec::new();
            for row in store::status_by_endpoint(conn, &message.id)? {
                if page
                    .iterator
                    .as_deref()
                    .is_some_and(|after| row.endpoint_id.as_str() <= after)
                {
                    continue;
                }
                if let Some(endpoint) = endpoints::get_by_id(conn, &row.endpoint_id)? {
                    out.push((endpoint, row.status, row.attempts, row.next_attempt_at));
                }
                if out.len() > page.limit {
                    break;
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |(endpoint, ..)| endpoint.id.clone(),
        |(endpoint, status, attempts, next)| {
            let shown = shown_status(status, attempts);
            MessageEndpointOut {
                endpoint: endpoint.into(),
                status: shown as u8,
                status_text: shown.text(),
                next_attempt: next.map(rfc3339),
            }
        },
    )))
}

/// Returns the status shown for a delivery: pending before its first attempt,
/// sending while retries remain, then its final status.
pub fn shown_status(status: DeliveryStatus, attempts: u32) -> DeliveryStatus {
    status.shown(attempts)
}

/// Formats an optional time for the API.
pub fn optional_time(time: Option<Millis>) -> Option<String> {
    time.map(rfc3339)
}
