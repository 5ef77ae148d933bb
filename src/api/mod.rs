//! The REST API under `/api/v1`, compatible with the Svix v1 API so that the
//! official Svix SDKs work against hookd unchanged.
//!
//! - [`applications`], [`event_types`], [`endpoints`], [`messages`], [`attempts`]: one router per resource.
//! - [`poller`]: the message feed of an endpoint for receivers that poll.
//! - [`examples`]: sending an event type's example message to one endpoint.
//! - [`recovery`]: recover, replay-missing and bulk replay tasks, and their progress.
//! - [`tokens`]: issuing, logging out and expiring application tokens.
//! - [`auth`]: the bearer-token check and the scope of application tokens.
//! - [`rate_limit`]: the limit of requests per second for each token.
//! - [`error`]: the single error shape.
//! - [`extract`]: JSON bodies and query parameters with errors that name the field.
//! - [`validate`]: rules for uids, names, URLs, headers and secrets.

pub mod applications;
pub mod attempts;
pub mod auth;
pub mod endpoints;
pub mod error;
pub mod event_types;
pub mod examples;
pub mod extract;
pub mod messages;
pub mod poller;
pub mod rate_limit;
pub mod recovery;
pub mod sources;
pub mod tokens;
pub mod validate;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::config::Config;
use crate::delivery::ssrf::NetworkPolicy;
use crate::delivery::Engine;
use crate::model::Millis;
use crate::store::Store;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: Engine,
    /// The running stream sources, for their status.
    pub sources: crate::source::Registry,
    /// The SSRF rules, applied to endpoint URLs when they are set.
    pub network_policy: Arc<NetworkPolicy>,
    /// SHA-256 of the admin token.
    pub admin_token_hash: Arc<[u8; 32]>,
    pub max_payload_bytes: usize,
    /// Rejects endpoint URLs that are not https (`https_only`).
    pub https_only: bool,
    /// Limit of requests per second for each token; `None` when
    /// `api_requests_per_second` is 0.
    pub api_rate_limiter: Option<Arc<rate_limit::ApiRateLimiter>>,
    /// The internal application of operational webhooks, when configured.
    pub operational_app_id: Option<String>,
    /// The runner of recover and replay tasks, woken when one is created.
    pub recovery: crate::recovery::Recovery,
}

impl AppState {
    /// Builds the handlers' state from the validated settings and the parts
    /// that [`crate::server::Server::run`] starts before the API.
    pub fn new(
        config: &Config,
        store: Store,
        engine: Engine,
        sources: crate::source::Registry,
        admin_token_hash: [u8; 32],
        operational_app_id: Option<String>,
        recovery: crate::recovery::Recovery,
    ) -> Self {
        Self {
            store,
            engine,
            sources,
            network_policy: Arc::new(NetworkPolicy::new(config.allowed_networks.clone())),
            admin_token_hash: Arc::new(admin_token_hash),
            max_payload_bytes: config.max_payload_bytes,
            https_only: config.https_only,
            api_rate_limiter: std::num::NonZeroU32::new(config.api_requests_per_second)
                .map(|per_second| Arc::new(rate_limit::ApiRateLimiter::new(per_second))),
            operational_app_id,
            recovery,
        }
    }
}

/// Builds the whole HTTP router: the API, `/health` and `/api/v1/health`.
pub fn router(state: AppState) -> Router {
    let body_limit = extract::body_limit(state.max_payload_bytes);
    let api = Router::new()
        .merge(applications::routes())
        .merge(event_types::routes())
        .merge(endpoints::routes())
        .merge(messages::routes())
        .merge(attempts::routes())
        .merge(sources::routes())
        .merge(poller::routes())
        .merge(examples::routes())
        .merge(tokens::routes())
        .merge(recovery::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .route("/api/v1/health", get(health_no_content))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::Status {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        detail: "this route does not accept this method".to_owned(),
    }
}

/// Renders the Prometheus metrics. Like `/health`, it needs no token: it
/// shows counts and timings only, never ids, payloads or secrets.
async fn render_metrics() -> String {
    crate::telemetry::metrics_handle().render()
}

async fn health_no_content() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn not_found() -> error::ApiError {
    error::ApiError::Status {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        detail: "no such route".to_owned(),
    }
}

/// Formats a time as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A page of a list in the Svix shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    pub iterator: Option<String>,
    pub prev_iterator: Option<String>,
    pub done: bool,
}

impl<T> ListResponse<T> {
    /// Builds a page from up to `limit + 1` rows; the extra row only shows
    /// that the list is not done. `key` gives the iterator of a row.
    pub fn from_rows<R>(
        mut rows: Vec<R>,
        limit: usize,
        key: impl Fn(&R) -> String,
        map: impl Fn(R) -> T,
    ) -> Self {
        let done = rows.len() <= limit;
        rows.truncate(limit);
        let iterator = rows.last().map(&key);
        let prev_iterator = rows.first().map(&key);
        Self {
            data: rows.into_iter().map(map).collect(),
            iterator,
            prev_iterator,
            done,
        }
    }
}
