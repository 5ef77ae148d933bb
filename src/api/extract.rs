//! Request extractors whose errors use the API's error shape and name the field.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{validate, AppState};
use crate::model::Millis;
use crate::store::PageRequest;

/// Room for the fields around a message payload: a request body may be this
/// much larger than `max_payload_bytes`.
const BODY_OVERHEAD_BYTES: usize = 64 * 1024;

/// Bytes of an oversized body that are read and discarded before the 413 is
/// sent, unless the body limit is larger. A client that is still sending
/// when the server closes the connection gets a reset instead of the 413.
const MIN_DRAIN_BYTES: usize = 16 << 20;

/// Maximum time spent reading and discarding an oversized body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns the largest request body the API reads, in bytes.
pub fn body_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes + BODY_OVERHEAD_BYTES
}

/// The raw bytes of a JSON request body, at most [`body_limit`] long.
///
/// A `Content-Type` other than JSON gets 415, and a request without one is
/// read as JSON. A larger body gets 413.
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_content_type(request.headers())?;
        let limit = body_limit(state.max_payload_bytes);
        read_body(request, limit, state.max_payload_bytes)
            .await
            .map(JsonBytes)
    }
}

/// A JSON body. A syntax error or a wrong or missing field returns 422 naming it.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Accepts `application/json`, any `…+json` type and a missing `Content-Type`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let media_type = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type == "application/json" || media_type.ends_with("+json") {
        return Ok(());
    }
    Err(ApiError::Status {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        detail: format!("Content-Type must be application/json, got {text:?}"),
    })
}

/// Reads the whole body, or returns 413 when it is longer than `limit` bytes.
async fn read_body(
    request: Request,
    limit: usize,
    max_payload_bytes: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::Status {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        detail: format!(
            "request body is larger than {limit} bytes; a message payload may be at most \
             {max_payload_bytes} bytes (max_payload_bytes)"
        ),
    };
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    let waits_for_continue = headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let drain_limit = limit.max(MIN_DRAIN_BYTES);
    let mut body = request.into_body();

    // A declared length over the limit is rejected before the body is read.
    // A client that waits for `100 Continue` gets the 413 without sending the
    // body, because hyper sends `100 Continue` only once the body is read.
    // Other clients are already sending, so their body is drained first.
    if let Some(length) = declared.filter(|length| *length > limit) {
        if !waits_for_continue && length <= drain_limit {
            drain(body, length).await;
        }
        return Err(too_large());
    }

    let mut buffer = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ApiError::Status {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            detail: format!("failed to read the request body: {err}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buffer.len() + data.len() > limit {
            drain(body, drain_limit.saturating_sub(buffer.len() + data.len())).await;
            return Err(too_large());
        }
        buffer.extend_from_slice(&data);
    }
    Ok(Bytes::from(buffer))
}

/// Reads and discards up to `max_bytes` more of a body, for at most
/// [`DRAIN_TIMEOUT`], so that the client reads the error response instead
/// of a connection reset.
async fn drain(mut body: Body, max_bytes: usize) {
    let discard = async {
        let mut read = 0usize;
        while read <= max_bytes {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, discard).await;
}

/// Path parameters. Every parameter of the API is an id, a uid or an event
/// type name, so each must be 1 to 256 characters from `a-z A-Z 0-9 - _ .`.
/// Any other value gets 422 naming the parameter, such as `["path", "app_id"]`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_error)?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|err| ApiError::Validation {
                location: vec!["path".to_owned()],
                message: err.body_text(),
            })?;
        for (name, value) in &params {
            validate::path_param(name, value)?;
        }
        Ok(Path(value.0))
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    let mut location = vec!["path".to_owned()];
    if let PathRejection::FailedToDeserializePathParams(err) = &rejection {
        if let ErrorKind::InvalidUtf8InPathParam { key } = err.kind() {
            location.push(key.clone());
        }
    }
    ApiError::Validation {
        location,
        message: rejection.body_text(),
    }
}

/// Parses a JSON body, reporting the path of the field that failed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let mut location = vec!["body".to_owned()];
        if path != "." {
            location.extend(path.split('.').map(str::to_owned));
        }
        body_error(location, &err.into_inner())
    })
}

/// Builds the 422 for a body that did not deserialize. serde reports a
/// missing field at its parent, so the field's name is taken from the message.
pub fn body_error(mut location: Vec<String>, err: &serde_json::Error) -> ApiError {
    let message = err.to_string();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        location.push(field.to_owned());
    }
    ApiError::Validation { location, message }
}

/// Query parameters in order, keeping repeated keys.
pub struct QueryParams(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(Self(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

/// Largest page size.
pub const MAX_LIMIT: usize = 250;
const DEFAULT_LIMIT: usize = 50;

impl QueryParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Returns every value of a repeated key, also splitting comma-separated values.
    pub fn get_all(&self, key: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .0
            .iter()
            .filter(|(k, _)| k == key || k == &format!("{key}[]"))
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
            .collect();
        (!values.is_empty()).then_some(values)
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ApiError::query(
                key,
                format!("must be true or false, got {other:?}"),
            )),
        }
    }

    pub fn time(&self, key: &str) -> Result<Option<Millis>, ApiError> {
        self.get(key)
            .map(|value| {
                parse_time(value).ok_or_else(|| {
                    ApiError::query(
                        key,
                        format!(
                            "must be an RFC 3339 time such as 2024-01-31T12:00:00Z, got {value:?}"
                        ),
                    )
                })
            })
            .transpose()
    }

    /// Parses the page request: `limit` (1 to 250, default 50), `iterator`, and
    /// `order` (`ascending` or `descending`) with the list's default order.
    pub fn page(&self, descending_by_default: bool) -> Result<PageRequest, ApiError> {
        let limit = match self.get("limit") {
            None => DEFAULT_LIMIT,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    ApiError::query(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}, got {value:?}"),
                    )
                })?,
        };
        let descending = match self.get("order") {
            None => descending_by_default,
            Some("ascending") => false,
            Some("descending") => true,
            Some(other) => {
                return Err(ApiError::query(
                    "order",
                    format!("must be ascending or descending, got {other:?}"),
                ))
            }
        };
        let iterator = self
            .get("iterator")
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(iterator) = &iterator {
            if iterator.len() > 256 {
                return Err(ApiError::query(
                    "iterator",
                    "must be at most 256 characters",
                ));
            }
        }
        Ok(PageRequest {
            limit,
            iterator,
            descending,
        })
    }
}

/// Parses an RFC 3339 time into milliseconds since the epoch. A time without
/// an offset, as Python's `datetime.isoformat()` writes for naive times, is
/// taken as UTC.
pub fn parse_time(value: &str) -> Option<Millis> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(time.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc().timestamp_millis())
}

/// Deserializes an RFC 3339 time (or a naive one, as UTC) from a JSON string.
pub fn deserialize_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_time(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "must be an RFC 3339 time such as 2024-01-31T12:00:00Z, got {text:?}"
        ))
    })
}

/// Like [`deserialize_time`], for an optional field.
pub fn deserialize_optional_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Millis>, D::Error> {
    let text = <Option<String> as serde::Deserialize>::deserialize(d)?;
    text.map(|text| {
        parse_time(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "must be an RFC 3339 time such as 2024-01-31T12:00:00Z, got {text:?}"
            ))
        })
    })
    .transpose()
}
