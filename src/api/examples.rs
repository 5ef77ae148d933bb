//! `/api/v1/app/{app_id}/endpoint/{endpoint_id}/send-example`: sending an example message of
//! an event type to one endpoint, so that its owner can test the receiver.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::auth::Principal;
use super::endpoints::load as load_endpoint;
use super::error::{ApiError, ApiResult};
use super::extract::JsonBody;
use super::messages::MessageOut;
use super::{validate, AppState};
use crate::model::{ids, now_ms, EventType, Message};
use crate::store::event_types;
use crate::store::messages as store;
use crate::telemetry::metric;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/app/{app_id}/endpoint/{endpoint_id}/send-example",
        post(send_example),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventExampleIn {
    event_type: String,
    /// Index into the `examples` array of the event type's schema, 0 when absent.
    #[serde(default)]
    example_index: Option<usize>,
}

/// Stores a new message of the event type whose payload is an example from the event type's
/// schema, with one delivery to this endpoint only, whatever its event type filter. Returns the
/// message with 202, as `POST /msg` does.
async fn send_example(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(input): JsonBody<EventExampleIn>,
) -> ApiResult<(StatusCode, Json<MessageOut>)> {
    validate::event_type_name("eventType", &input.event_type)?;
    let endpoint = load_endpoint(&state, &app_id, &endpoint_id).await?;
    if endpoint.disabled {
        return Err(ApiError::bad_request(
            "endpoint_disabled",
            "the endpoint is disabled; enable it before sending an example",
        ));
    }

    let name = input.event_type.clone();
    let event_type = state
        .store
        .read(move |conn| event_types::get(conn, &name))
        .await?
        .filter(|event_type| principal.sees_event_type(event_type))
        .ok_or_else(|| ApiError::not_found("event type"))?;
    let payload = example_payload(&event_type, input.example_index.unwrap_or(0))?;
    if payload.len() > state.max_payload_bytes {
        return Err(ApiError::field(
            "exampleIndex",
            format!(
                "the example is {} bytes, more than max_payload_bytes ({})",
                payload.len(),
                state.max_payload_bytes
            ),
        ));
    }

    let message = Message {
        id: ids::new_id(ids::MESSAGE),
        app_id: endpoint.app_id.clone(),
        event_type: input.event_type,
        event_id: None,
        channels: None,
        tags: None,
        payload: Some(payload),
        created_at: now_ms(),
    };
    let saved = message.clone();
    let endpoint_key = endpoint.id.clone();
    let delivery = state
        .store
        .write(move |conn| store::create_for_endpoint(conn, &saved, &endpoint_key))
        .await?;
    metrics::counter!(metric::MESSAGES_ACCEPTED).increment(1);
    state.engine.enqueue(vec![delivery]);
    state.engine.messages_stored();
    tracing::info!(app_id = %endpoint.app_id, endpoint_id = %endpoint.id, msg_id = %message.id, "example message queued");

    Ok((StatusCode::ACCEPTED, Json(MessageOut::new(message, true))))
}

/// Returns the JSON text of `examples[index]` in the event type's newest schema, the one with
/// the highest numeric version key, or `{}` when that schema has no `examples` array.
fn example_payload(event_type: &EventType, index: usize) -> ApiResult<String> {
    let examples = event_type
        .schemas
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|schemas| {
            schemas
                .iter()
                .filter_map(|(version, schema)| Some((version.parse::<u64>().ok()?, schema)))
                .max_by_key(|(version, _)| *version)
        })
        .and_then(|(_, schema)| schema.get("examples"))
        .and_then(Value::as_array);
    let Some(examples) = examples else {
        return Ok("{}".to_owned());
    };

    let Some(example) = examples.get(index) else {
        return Err(ApiError::field(
            "exampleIndex",
            format!(
                "event type {:?} has {} examples in its schema, so the index must be less than {}",
                event_type.name,
                examples.len(),
                examples.len()
            ),
        ));
    };
    if !example.is_object() {
        return Err(ApiError::field(
            "exampleIndex",
            format!(
                "example {index} of event type {:?} is not a JSON object, and a message payload must be one",
                event_type.name
            ),
        ));
    }
    Ok(example.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_type(schemas: Option<Value>) -> EventType {
        EventType {
            name: "user.created".to_owned(),
            description: String::new(),
            archived: false,
            deprecated: false,
            schemas,
            group_name: None,
            feature_flags: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn example_from_newest_schema() {
        let schemas = json!({
            "1": {"examples": [{"version": 1}]},
            "10": {"examples": [{"version": 10, "n": 0}, {"version": 10, "n": 1}]},
            "2": {"examples": [{"version": 2}]},
        });
        let event_type = event_type(Some(schemas));

        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        assert_eq!(
            parse(example_payload(&event_type, 0).unwrap()),
            json!({"version": 10, "n": 0})
        );
        assert_eq!(
            parse(example_payload(&event_type, 1).unwrap()),
            json!({"version": 10, "n": 1})
        );
    }

    #[test]
    fn example_without_examples_is_empty_object() {
        let cases = [
            None,
            Some(json!({})),
            Some(json!({"1": {"type": "object"}})),
            Some(json!({"1": {"examples": "not a list"}})),
        ];
        for schemas in cases {
            let text = format!("{schemas:?}");
            let payload = example_payload(&event_type(schemas), 3).unwrap();
            assert_eq!(payload, "{}", "schemas {text}");
        }
    }

    #[test]
    fn example_index_out_of_range_rejected() {
        let event_type = event_type(Some(json!({"1": {"examples": [{"a": 1}]}})));
        let error = example_payload(&event_type, 1).unwrap_err();
        match error {
            ApiError::Validation { location, message } => {
                assert_eq!(location, vec!["body", "exampleIndex"]);
                assert_eq!(
                    message,
                    "event type \"user.created\" has 1 examples in its schema, so the index must be less than 1"
                );
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn example_not_object_rejected() {
        let event_type = event_type(Some(json!({"1": {"examples": [[1, 2]]}})));
        let error = example_payload(&event_type, 0).unwrap_err();
        assert!(
            matches!(&error, ApiError::Validation { location, .. } if location == &["body", "exampleIndex"]),
            "{error:?}"
        );
    }
}
