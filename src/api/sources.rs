//! `/api/v1/source`: the status of each stream source and the records it
//! dead-lettered. These routes are hookd's own; the Svix API has none.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::extract::QueryParams;
use super::{rfc3339, AppState, ListResponse};
use crate::source::StatusOut;
use crate::store::dead_letters::{self, DeadLetter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/source", get(list))
        .route("/source/{name}", get(status))
        .route("/source/{name}/dead-letter", get(list_dead_letters))
}

async fn list(State(state): State<AppState>) -> Json<ListResponse<StatusOut>> {
    let data: Vec<StatusOut> = state.sources.iter().map(|s| s.snapshot()).collect();
    Json(ListResponse {
        iterator: None,
        prev_iterator: None,
        done: true,
        data,
    })
}

fn find(state: &AppState, name: &str) -> ApiResult<StatusOut> {
    state
        .sources
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.snapshot())
        .ok_or_else(|| ApiError::not_found("source"))
}

async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<StatusOut>> {
    find(&state, &name).map(Json)
}

/// A dead letter as the API shows it. The value is text when it is UTF-8,
/// and base64 otherwise.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterOut {
    id: String,
    source: String,
    origin: String,
    reason: String,
    reason_kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    timestamp: String,
}

/// Splits bytes into (text, base64): exactly one is set.
fn text_or_base64(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(err) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(err.as_bytes())),
        ),
    }
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(letter: DeadLetter) -> Self {
        let (key, key_base64) = match letter.key {
            Some(key) => text_or_base64(key),
            None => (None, None),
        };
        let (value, value_base64) = text_or_base64(letter.value);
        Self {
            id: letter.id,
            source: letter.source,
            origin: letter.origin,
            reason: letter.reason,
            reason_kind: letter.reason_kind,
            key,
            key_base64,
            value,
            value_base64,
            timestamp: rfc3339(letter.created_at),
        }
    }
}

async fn list_dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<ListResponse<DeadLetterOut>>> {
    // A typo in the name must not read as "no dead letters".
    find(&state, &name)?;
    let page = query.page(false)?;
    if let Some(iterator) = &page.iterator {
        if !crate::model::ids::has_prefix(iterator, crate::model::ids::DEAD_LETTER) {
            return Err(ApiError::query(
                "iterator",
                format!("must be the id of a dead letter from an earlier page, got {iterator:?}"),
            ));
        }
    }
    let limit = page.limit;
    let rows = state
        .store
        .read_blocking(move |conn| dead_letters::list(conn, &name, &page))
        .await?;
    Ok(Json(ListResponse::from_rows(
        rows,
        limit,
        |letter| letter.id.clone(),
        DeadLetterOut::from,
    )))
}
