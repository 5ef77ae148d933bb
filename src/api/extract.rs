//! Request extractors whose errors use the API's error shape and name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::Millis;
use crate::store::PageRequest;

/// A JSON body. A syntax error or a wrong or missing field returns 422 naming it.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|err| ApiError::Status {
                status: err.status(),
                code: "invalid_body",
                detail: err.body_text(),
            })?;
        parse_json(&bytes).map(JsonBody)
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
