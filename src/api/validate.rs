//! Rules for the values clients choose. Each failure is a 422 naming the field.

use std::collections::BTreeMap;

use super::error::ApiError;
use crate::delivery::ssrf::{validate_endpoint_url, NetworkPolicy};
use crate::model::secret;

const MAX_NAME_LEN: usize = 256;
const MAX_CHANNELS: usize = 10;
const MAX_CHANNEL_LEN: usize = 128;
const MAX_EVENT_TYPES: usize = 1000;
const MAX_FEATURE_FLAGS: usize = 20;
const MAX_HEADERS: usize = 20;
const MAX_HEADER_NAME_LEN: usize = 256;
const MAX_HEADER_VALUE_LEN: usize = 4096;
const MAX_DESCRIPTION_LEN: usize = 4096;
const MAX_METADATA_ENTRIES: usize = 50;

/// Deepest nesting of arrays and objects in a message payload: the most that
/// serde_json 1.x parses by default, so receivers built on it accept every
/// payload hookd accepts.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// Characters of a rejected value that an error message repeats.
const MAX_SHOWN_LEN: usize = 64;

/// Headers a client may not set on deliveries: they would break the request
/// or forge the signature headers.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "expect",
    "user-agent",
];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn is_name(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_NAME_LEN && value.chars().all(is_name_char)
}

/// Quotes a rejected value for an error message, cut to [`MAX_SHOWN_LEN`]
/// characters so that a huge value does not make a huge response.
fn shown(value: &str) -> String {
    match value.char_indices().nth(MAX_SHOWN_LEN) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
        None => format!("{value:?}"),
    }
}

/// Checks a uid: 1 to 256 characters from `a-z A-Z 0-9 - _ .`.
pub fn uid(field: &str, value: &str) -> Result<(), ApiError> {
    if !is_name(value) {
        return Err(ApiError::field(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} characters from a-z, A-Z, 0-9, '-', '_' and '.', got {}",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// Checks a path parameter. Every one is an id, a uid or an event type name,
/// which share the characters of a uid.
pub fn path_param(name: &str, value: &str) -> Result<(), ApiError> {
    if !is_name(value) {
        return Err(ApiError::Validation {
            location: vec!["path".to_owned(), name.to_owned()],
            message: format!(
                "must be an id, uid or event type name of 1 to {MAX_NAME_LEN} characters from a-z, A-Z, 0-9, '-', '_' and '.', got {}",
                shown(value)
            ),
        });
    }
    Ok(())
}

/// Checks an event type name such as `invoice.paid`: same characters as a uid.
pub fn event_type_name(field: &str, value: &str) -> Result<(), ApiError> {
    if !is_name(value) {
        return Err(ApiError::field(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} characters from a-z, A-Z, 0-9, '-', '_' and '.', such as \"invoice.paid\", got {}",
                shown(value)
            ),
        ));
    }
    Ok(())
}

pub fn channels(field: &str, values: &[String]) -> Result<(), ApiError> {
    if values.len() > MAX_CHANNELS {
        return Err(ApiError::field(
            field,
            format!(
                "at most {MAX_CHANNELS} channels are allowed, got {}",
                values.len()
            ),
        ));
    }
    for value in values {
        if value.is_empty()
            || value.len() > MAX_CHANNEL_LEN
            || !value.chars().all(|c| is_name_char(c) || c == ':')
        {
            return Err(ApiError::field(
                field,
                format!(
                    "each channel must be 1 to {MAX_CHANNEL_LEN} characters from a-z, A-Z, 0-9, '-', '_', '.' and ':', got {}",
                    shown(value)
                ),
            ));
        }
    }
    Ok(())
}

pub fn event_type_list(field: &str, values: &[String]) -> Result<(), ApiError> {
    if values.len() > MAX_EVENT_TYPES {
        return Err(ApiError::field(
            field,
            format!(
                "at most {MAX_EVENT_TYPES} event types are allowed, got {}",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .try_for_each(|value| event_type_name(field, value))
}

/// Checks the feature flags of an event type: at most [`MAX_FEATURE_FLAGS`],
/// each with the characters of a uid.
pub fn feature_flags(field: &str, values: &[String]) -> Result<(), ApiError> {
    if values.len() > MAX_FEATURE_FLAGS {
        return Err(ApiError::field(
            field,
            format!(
                "at most {MAX_FEATURE_FLAGS} feature flags are allowed, got {}",
                values.len()
            ),
        ));
    }
    values.iter().try_for_each(|value| uid(field, value))
}

/// Checks an endpoint URL: http or https (only https when `https_only` is
/// set), within length, and not aimed at a blocked address.
pub fn endpoint_url(
    field: &str,
    value: &str,
    policy: &NetworkPolicy,
    https_only: bool,
) -> Result<String, ApiError> {
    let url = validate_endpoint_url(value, policy)
        .map_err(|err| ApiError::field(field, err.to_string()))?;
    if https_only && url.scheme() != "https" {
        return Err(ApiError::field(
            field,
            format!(
                "url scheme must be https because this server sets https_only, got {}",
                url.scheme()
            ),
        ));
    }
    Ok(url.to_string())
}

/// Checks that a JSON document nests arrays and objects at most
/// [`MAX_PAYLOAD_DEPTH`] levels deep. `json` must already be valid JSON.
pub fn payload_depth(field: &str, json: &str) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in json.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_PAYLOAD_DEPTH {
                    return Err(ApiError::field(
                        field,
                        format!(
                            "must nest arrays and objects at most {MAX_PAYLOAD_DEPTH} levels deep"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

pub fn secret(field: &str, value: &str) -> Result<(), ApiError> {
    secret::decode(value)
        .map(|_| ())
        .map_err(|reason| ApiError::field(field, format!("invalid secret: {reason}")))
}

pub fn description(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::field(
            field,
            format!("must be at most {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    no_nul(field, value)
}

/// Rejects the NUL character, which PostgreSQL cannot store in text, so a
/// value is accepted or rejected the same way on both stores.
pub fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::field(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    Ok(())
}

pub fn metadata(field: &str, values: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if values.len() > MAX_METADATA_ENTRIES {
        return Err(ApiError::field(
            field,
            format!("at most {MAX_METADATA_ENTRIES} entries are allowed"),
        ));
    }
    if values
        .iter()
        .any(|(k, v)| k.len() > MAX_NAME_LEN || v.len() > MAX_DESCRIPTION_LEN)
    {
        return Err(ApiError::field(
            field,
            format!("keys must be at most {MAX_NAME_LEN} bytes and values at most {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Custom delivery headers: valid names, no CR or LF, none that would break
/// the request (`Host`, `Content-Length`, `Transfer-Encoding`, …) or override
/// the `webhook-*` signature headers.
pub fn headers(field: &str, values: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if values.len() > MAX_HEADERS {
        return Err(ApiError::field(
            field,
            format!(
                "at most {MAX_HEADERS} headers are allowed, got {}",
                values.len()
            ),
        ));
    }
    for (name, value) in values {
        let lower = name.to_ascii_lowercase();
        if name.len() > MAX_HEADER_NAME_LEN {
            return Err(ApiError::field(
                field,
                format!(
                    "header name {} is longer than {MAX_HEADER_NAME_LEN} bytes",
                    shown(name)
                ),
            ));
        }
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ApiError::field(
                field,
                format!("{name:?} is not a valid header name"),
            ));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("svix-")
        {
            return Err(ApiError::field(
                field,
                format!("header {name:?} is set by hookd and cannot be overridden"),
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(ApiError::field(
                field,
                format!("header {name:?} value must be at most {MAX_HEADER_VALUE_LEN} bytes"),
            ));
        }
        if value.contains(['\r', '\n']) || axum::http::HeaderValue::from_str(value).is_err() {
            return Err(ApiError::field(field, format!("header {name:?} value contains characters not allowed in a header, such as CR or LF")));
        }
    }
    Ok(())
}

pub fn rate_limit(field: &str, value: Option<u32>) -> Result<(), ApiError> {
    if value == Some(0) {
        return Err(ApiError::field(
            field,
            "must be at least 1 message per second, or omitted for no limit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn headers_reject_request_breaking_names() {
        for name in [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "webhook-signature",
            "Connection",
        ] {
            assert!(
                headers("headers", &headers_of(&[(name, "x")])).is_err(),
                "{name}"
            );
        }
        assert!(headers("headers", &headers_of(&[("X-Tenant", "a\r\nInjected: 1")])).is_err());
        assert!(headers("headers", &headers_of(&[("Bad Name", "x")])).is_err());
        assert!(headers("headers", &headers_of(&[("X-Tenant", "acme")])).is_ok());
    }

    fn nested(depth: usize) -> String {
        format!(
            "{{\"a\":{}\"x\\\"[\"{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn payload_depth_matches_serde_json_default() {
        let deepest = nested(MAX_PAYLOAD_DEPTH);
        let too_deep = nested(MAX_PAYLOAD_DEPTH + 1);

        assert!(payload_depth("payload", &deepest).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deepest).is_ok());
        assert!(payload_depth("payload", &too_deep).is_err());
        assert!(serde_json::from_str::<serde_json::Value>(&too_deep).is_err());
    }

    #[test]
    fn uid_allows_only_listed_characters() {
        assert!(uid("uid", "tenant-1_a.b").is_ok());
        assert!(uid("uid", "").is_err());
        assert!(uid("uid", "has space").is_err());
        assert!(uid("uid", &"a".repeat(257)).is_err());
    }
}
