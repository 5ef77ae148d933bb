//! The Svix poller routes: a receiver reads the messages an endpoint would
//! receive, in creation order, instead of (or besides) having them pushed.
//!
//! `sink_id` is the id or uid of one of the application's endpoints, and the
//! feed contains the application's messages that the endpoint's event-type and
//! channel filters accept, whether or not the endpoint is enabled. The
//! iterator is the id of the last message read. A named consumer's position
//! is stored on the server, so it resumes where it stopped.
//!
//! When a poll finds nothing new, it waits up to [`LONG_POLL_WAIT`] for a new
//! message before it returns an empty page.

use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::endpoints::load as load_endpoint;
use super::error::{ApiError, ApiResult};
use super::extract::{deserialize_time, JsonBody, Path, QueryParams};
use super::messages::MessageOut;
use super::{validate, AppState};
use crate::model::{ids, now_ms, Endpoint, Millis};
use crate::store::poller::{self, Filters, Page};

/// The maximum time a poll waits for a new message when there is none.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(5);

/// An iterator before every message id.
const START: &str = "msg_00000000000000000000000000";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/{app_id}/poller/{sink_id}", get(poll))
        .route(
            "/app/{app_id}/poller/{sink_id}/consumer/{consumer_id}",
            get(consumer_poll),
        )
        .route(
            "/app/{app_id}/poller/{sink_id}/consumer/{consumer_id}/seek",
            post(consumer_seek),
        )
}

#[derive(Debug, Serialize)]
struct PollOut {
    data: Vec<MessageOut>,
    iterator: String,
    done: bool,
}

/// Returns an iterator that sorts before every message id created at or
/// after `time`, and after every id created before it.
fn iterator_at(time: Millis) -> String {
    let ulid = ulid::Ulid::from_parts(time.max(0) as u64, 0);
    format!("{}_{ulid}", ids::MESSAGE)
}

fn check_iterator(iterator: &str) -> ApiResult<()> {
    if ids::has_prefix(iterator, ids::MESSAGE) && iterator[4..].parse::<ulid::Ulid>().is_ok() {
        return Ok(());
    }
    Err(ApiError::query(
        "iterator",
        format!("must be an iterator returned by an earlier poll, got {iterator:?}"),
    ))
}

/// Reads a page after `iterator`, waiting up to [`LONG_POLL_WAIT`] for a
/// new message when there is none yet.
async fn read_page(
    state: &AppState,
    endpoint: Endpoint,
    iterator: String,
    limit: usize,
    filters: Filters,
) -> ApiResult<Page> {
    // Subscribe before reading, so a message stored between the read and
    // the wait still wakes this poll.
    let mut stored = state.engine.watch_messages();
    let deadline = tokio::time::Instant::now() + LONG_POLL_WAIT;
    loop {
        let (endpoint_now, iterator_now, filters_now) =
            (endpoint.clone(), iterator.clone(), filters.clone());
        let page = state
            .store
            .read_blocking(move |conn| {
                poller::page(conn, &endpoint_now, &iterator_now, limit, &filters_now)
            })
            .await?;
        if !page.messages.is_empty() || !page.done {
            return Ok(page);
        }
        let woken = tokio::time::timeout_at(deadline, stored.changed()).await;
        if !matches!(woken, Ok(Ok(()))) {
            return Ok(page);
        }
    }
}

fn to_out(page: Page) -> PollOut {
    PollOut {
        data: page
            .messages
            .into_iter()
            .map(|message| MessageOut::new(message, true))
            .collect(),
        iterator: page.iterator,
        done: page.done,
    }
}

async fn poll(
    State(state): State<AppState>,
    Path((app_id, sink_id)): Path<(String, String)>,
    query: QueryParams,
) -> ApiResult<Json<PollOut>> {
    let endpoint = load_endpoint(&state, &app_id, &sink_id).await?;
    let limit = query.page(false)?.limit;
    let iterator = match (
        query.get("iterator").filter(|s| !s.is_empty()),
        query.time("after")?,
    ) {
        (Some(iterator), _) => {
            check_iterator(iterator)?;
            iterator.to_owned()
        }
        (None, Some(after)) => iterator_at(after),
        (None, None) => START.to_owned(),
    };
    let filters = Filters {
        event_type: query.get("event_type").map(str::to_owned),
        channel: query.get("channel").map(str::to_owned),
    };
    if let Some(event_type) = &filters.event_type {
        validate::event_type_name("event_type", event_type)?;
    }
    let page = read_page(&state, endpoint, iterator, limit, filters).await?;
    Ok(Json(to_out(page)))
}

/// Reads the next page for a named consumer and stores its new position.
/// An `iterator` in the query overrides the stored position.
async fn consumer_poll(
    State(state): State<AppState>,
    Path((app_id, sink_id, consumer_id)): Path<(String, String, String)>,
    query: QueryParams,
) -> ApiResult<Json<PollOut>> {
    let endpoint = load_endpoint(&state, &app_id, &sink_id).await?;
    let limit = query.page(false)?.limit;
    let iterator = match query.get("iterator").filter(|s| !s.is_empty()) {
        Some(iterator) => {
            check_iterator(iterator)?;
            iterator.to_owned()
        }
        None => {
            let (endpoint_id, consumer) = (endpoint.id.clone(), consumer_id.clone());
            state
                .store
                .read(move |conn| poller::consumer_position(conn, &endpoint_id, &consumer))
                .await?
                .unwrap_or_else(|| START.to_owned())
        }
    };
    let endpoint_id = endpoint.id.clone();
    let page = read_page(&state, endpoint, iterator, limit, Filters::default()).await?;
    // The position moves only after the page is read; a consumer that loses
    // this response can read the same page again by passing its last iterator.
    let position = page.iterator.clone();
    state
        .store
        .write(move |conn| {
            poller::set_consumer_position(conn, &endpoint_id, &consumer_id, &position, now_ms())
        })
        .await?;
    Ok(Json(to_out(page)))
}

#[derive(Debug, Deserialize)]
struct SeekIn {
    #[serde(deserialize_with = "deserialize_time")]
    after: Millis,
}

#[derive(Debug, Serialize)]
struct SeekOut {
    iterator: String,
}

/// Moves a consumer to the first message created at or after `after`.
async fn consumer_seek(
    State(state): State<AppState>,
    Path((app_id, sink_id, consumer_id)): Path<(String, String, String)>,
    JsonBody(input): JsonBody<SeekIn>,
) -> ApiResult<Json<SeekOut>> {
    let endpoint = load_endpoint(&state, &app_id, &sink_id).await?;
    let iterator = iterator_at(input.after);
    let position = iterator.clone();
    state
        .store
        .write(move |conn| {
            poller::set_consumer_position(conn, &endpoint.id, &consumer_id, &position, now_ms())
        })
        .await?;
    Ok(Json(SeekOut { iterator }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterator_at_sorts_before_ids_of_that_millisecond() {
        let at = 1_764_892_800_000;
        let before = format!(
            "{}_{}",
            ids::MESSAGE,
            ulid::Ulid::from_parts(at as u64 - 1, u128::MAX >> 48)
        );
        let same = format!("{}_{}", ids::MESSAGE, ulid::Ulid::from_parts(at as u64, 1));
        let iterator = iterator_at(at);
        assert!(before < iterator, "{before} < {iterator}");
        assert!(iterator < same, "{iterator} < {same}");
    }

    #[test]
    fn start_sorts_before_every_id() {
        assert!(START < ids::new_id(ids::MESSAGE).as_str());
        assert!(check_iterator(START).is_ok());
        assert!(check_iterator("garbage").is_err());
    }
}
