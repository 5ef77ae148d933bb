//! `/api/v1/auth`: issuing, logging out and expiring application tokens.
//!
//! An application token may act on one application only, as [`super::auth`]
//! enforces. Issuing and expiring tokens needs the admin token, and logging
//! out needs the application token itself.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::applications::load as load_app;
use super::auth::{self, hash_token, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{parse_json, JsonBytes, Path};
use super::{validate, AppState};
use crate::model::{now_ms, Millis};
use crate::store::app_tokens::{self as store, AppToken};

/// Lifetime of a token when the request names none, and the longest one: 7 days.
const MAX_EXPIRY_SECONDS: u64 = 7 * 24 * 3600;

/// Expired tokens are kept this long, so that using one gets "expired"
/// rather than "invalid", then deleted when the next token is issued.
const EXPIRED_RETENTION_MS: Millis = 24 * 3600 * 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/app-portal-access/{app_id}", post(app_portal_access))
        .route("/auth/dashboard-access/{app_id}", post(app_portal_access))
        .route("/auth/logout", post(logout))
        .route("/auth/app/{app_id}/expire-all", post(expire_all))
}

/// The request body of app-portal-access, as in the Svix API.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppPortalAccessIn {
    /// Lifetime of the token in seconds, 1 to 7 days' worth; 7 days when absent.
    #[serde(default)]
    expiry: Option<u64>,
    #[serde(default)]
    feature_flags: Option<Vec<String>>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    session_id: Option<String>,
    /// Svix's finer permissions, which hookd cannot enforce (see [`check_access_in`]).
    #[serde(default)]
    capabilities: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct AppPortalAccessOut {
    url: String,
    token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplicationTokenExpireIn {
    /// Seconds until the tokens expire, 0 (at once) when absent.
    #[serde(default)]
    expiry: Option<u64>,
    #[serde(default)]
    session_ids: Option<Vec<String>>,
}

/// Parses an optional JSON body: an empty body is the default value.
fn optional_body<T: Default + serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(bytes)
}

fn check_access_in(input: &AppPortalAccessIn) -> ApiResult<()> {
    if let Some(expiry) = input.expiry {
        if !(1..=MAX_EXPIRY_SECONDS).contains(&expiry) {
            return Err(ApiError::field(
                "expiry",
                format!("must be 1 to {MAX_EXPIRY_SECONDS} seconds (7 days), got {expiry}"),
            ));
        }
    }
    if let Some(flags) = &input.feature_flags {
        validate::feature_flags("featureFlags", flags)?;
    }
    if let Some(session_id) = &input.session_id {
        validate::uid("sessionId", session_id)?;
    }
    // Ignoring a capability list would give the token more than was asked for.
    if input.capabilities.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::field(
            "capabilities",
            "capabilities are not supported; leave them out for full access to the \
             application, or set readOnly for read-only access",
        ));
    }
    Ok(())
}

/// Issues a token for one application. Only its hash is stored, so the
/// token is in this response and nowhere else.
async fn app_portal_access(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Json<AppPortalAccessOut>> {
    let input: AppPortalAccessIn = optional_body(&body)?;
    check_access_in(&input)?;
    let app = load_app(&state, &app_id).await?;

    let token = auth::generate_app_token();
    let now = now_ms();
    let expiry_ms = input.expiry.unwrap_or(MAX_EXPIRY_SECONDS) as Millis * 1000;
    let record = AppToken {
        token_sha256: hash_token(&token),
        app_id: app.id.clone(),
        session_id: input.session_id,
        read_only: input.read_only.unwrap_or(false),
        feature_flags: input.feature_flags.unwrap_or_default(),
        created_at: now,
        expires_at: now + expiry_ms,
        revoked_at: None,
    };
    state
        .store
        .write(move |conn| {
            store::delete_expired(conn, now - EXPIRED_RETENTION_MS)?;
            store::insert(conn, &record)
        })
        .await?;
    tracing::info!(app_id = %app.id, expiry_ms, "application token issued");
    Ok(Json(AppPortalAccessOut {
        // hookd has no portal UI: the URL is the application's API path,
        // relative to hookd's address, and carries no token.
        url: format!("/api/v1/app/{}", app.id),
        token,
    }))
}

/// Revokes the application token that sends the request.
async fn logout(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<StatusCode> {
    let Principal::App(scope) = principal else {
        return Err(ApiError::Status {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            detail: "only an application token can log out; the admin token is set by \
                     HOOKD_ADMIN_TOKEN or generated at first start"
                .to_owned(),
        });
    };
    let now = now_ms();
    state
        .store
        .write(move |conn| store::revoke(conn, &scope.token_sha256, now))
        .await?;
    tracing::info!(app_id = %scope.app_id, "application token logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Makes every token of an application, or those of the given sessions,
/// expire after `expiry` seconds (now when absent).
async fn expire_all(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> ApiResult<StatusCode> {
    let input: ApplicationTokenExpireIn = optional_body(&body)?;
    let expiry = input.expiry.unwrap_or(0);
    if expiry > MAX_EXPIRY_SECONDS {
        return Err(ApiError::field(
            "expiry",
            format!("must be 0 to {MAX_EXPIRY_SECONDS} seconds (7 days), got {expiry}"),
        ));
    }
    if let Some(sessions) = &input.session_ids {
        sessions
            .iter()
            .try_for_each(|session| validate::uid("sessionIds", session))?;
    }
    let app = load_app(&state, &app_id).await?;

    let expires_at = now_ms() + expiry as Millis * 1000;
    let key = app.id.clone();
    let changed = state
        .store
        .write(move |conn| store::expire_all(conn, &key, expires_at, input.session_ids.as_deref()))
        .await?;
    tracing::info!(app_id = %app.id, tokens = changed, expiry_s = expiry, "application tokens expired");
    Ok(StatusCode::NO_CONTENT)
}
