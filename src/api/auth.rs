//! Bearer-token authentication and the scope of each token.
//!
//! Two kinds of token open the API:
//!
//! - The admin token may use every route. Only its SHA-256 hash is kept, and
//!   it is compared in constant time.
//! - An application token, issued by `POST /api/v1/auth/app-portal-access/{app_id}`,
//!   may use only the routes of its own application (see [`check_scope`]).
//!   It is found by the SHA-256 hash of its text, so the store contains no
//!   token and a lookup's timing depends only on the hash.
//!
//! A request carries its [`Principal`] as a request extension for the handlers.

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::model::{now_ms, EventType};
use crate::store::{app_tokens, applications};

/// Prefix of every application token, so that other tokens need no lookup.
pub const APP_TOKEN_PREFIX: &str = "hkapp_";

/// Random bytes in an application token.
const APP_TOKEN_BYTES: usize = 32;

/// Returns the SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Generates a new application token: the prefix and 32 random bytes in
/// URL-safe base64.
pub fn generate_app_token() -> String {
    let mut raw = [0u8; APP_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{APP_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The sender of a request, as proven by its bearer token.
#[derive(Debug, Clone)]
pub enum Principal {
    Admin,
    App(AppScope),
}

/// The limits of an application token.
#[derive(Debug, Clone)]
pub struct AppScope {
    /// Id of the only application the token may act on.
    pub app_id: String,
    /// SHA-256 of the token, which logout revokes.
    pub token_sha256: [u8; 32],
    /// Allows only GET, besides logging out.
    pub read_only: bool,
    /// Feature flags that show the event types gated by them.
    pub feature_flags: Vec<String>,
}

impl Principal {
    /// Returns the feature flags that limit which event types this principal
    /// may read, or `None` when it may read them all.
    pub fn feature_flags(&self) -> Option<&[String]> {
        match self {
            Self::Admin => None,
            Self::App(scope) => Some(&scope.feature_flags),
        }
    }

    /// Returns true when this principal may read the event type. The admin
    /// may read every one, and an application token those whose feature
    /// flags it carries, all of them.
    pub fn sees_event_type(&self, event_type: &EventType) -> bool {
        let (Some(granted), Some(required)) = (self.feature_flags(), &event_type.feature_flags)
        else {
            return true;
        };
        required.iter().all(|flag| granted.contains(flag))
    }
}

/// Rejects a request without a valid `Authorization: Bearer <token>` with
/// 401, a request over its token's rate limit with 429, and a request that
/// the token's scope does not cover with 403. Passes the [`Principal`] on.
pub async fn require_token(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        });
    let Some(token) = presented else {
        return ApiError::unauthorized(
            "missing Authorization header; send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let token = token.trim();
    let token_hash = hash_token(token);
    let principal = match authenticate(&state, token, token_hash).await {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    // Counted only after the token is known to be valid, so that requests
    // with a wrong token cannot use up a valid token's budget.
    if let Some(limiter) = &state.api_rate_limiter {
        if let Err(wait) = limiter.check(&token_hash) {
            return limiter.rejection(wait);
        }
    }
    if let Principal::App(scope) = &principal {
        let route = route.as_ref().map(MatchedPath::as_str);
        let app_param = params.ok().and_then(|params| {
            params
                .iter()
                .find(|(name, _)| *name == "app_id")
                .map(|(_, value)| value.to_owned())
        });
        if let Err(err) =
            check_scope(&state, scope, request.method(), route, app_param.as_deref()).await
        {
            return err.into_response();
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Finds the principal of a token: the admin, or a valid application token.
async fn authenticate(
    state: &AppState,
    token: &str,
    token_hash: [u8; 32],
) -> Result<Principal, ApiError> {
    let is_admin: bool = token_hash.ct_eq(state.admin_token_hash.as_ref()).into();
    if is_admin {
        return Ok(Principal::Admin);
    }
    if !token.starts_with(APP_TOKEN_PREFIX) {
        return Err(ApiError::unauthorized("invalid token"));
    }
    let found = state
        .store
        .read(move |conn| app_tokens::get(conn, &token_hash))
        .await?;
    let Some(found) = found else {
        return Err(ApiError::unauthorized("invalid token"));
    };
    if found.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this token was logged out"));
    }
    if !found.is_valid_at(now_ms()) {
        return Err(ApiError::unauthorized(
            "this token has expired; request a new one",
        ));
    }
    Ok(Principal::App(AppScope {
        app_id: found.app_id,
        token_sha256: token_hash,
        read_only: found.read_only,
        feature_flags: found.feature_flags,
    }))
}

/// Allows an application token only on these routes:
///
/// - every route under `/api/v1/app/{app_id}/`, and `GET /api/v1/app/{app_id}`,
///   where `{app_id}` (an id or a uid) names the token's own application;
/// - `GET /api/v1/event-type` and `GET /api/v1/event-type/{name}`;
/// - `GET /api/v1/background-task` and `GET /api/v1/background-task/{task_id}`,
///   whose handlers show only the token's own application's tasks;
/// - `POST /api/v1/auth/logout`.
///
/// Any other route, including one added later, is for the admin token only.
/// A read-only token may use GET alone, besides logging out. `route` is the
/// matched route template, `None` when no route matched.
async fn check_scope(
    state: &AppState,
    scope: &AppScope,
    method: &Method,
    route: Option<&str>,
    app_param: Option<&str>,
) -> Result<(), ApiError> {
    let Some(route) = route else {
        return Err(forbidden("an application token may not use this route"));
    };
    let is_read = method == Method::GET || method == Method::HEAD;
    let in_app = route.starts_with("/api/v1/app/{app_id}/");
    let allowed = match route {
        "/api/v1/auth/logout" => return Ok(()),
        "/api/v1/event-type" | "/api/v1/event-type/{name}" | "/api/v1/app/{app_id}" => is_read,
        // The handlers show an application token only its own tasks.
        "/api/v1/background-task" | "/api/v1/background-task/{task_id}" => is_read,
        _ => in_app,
    };
    if !allowed {
        return Err(forbidden("an application token may not use this route"));
    }
    if scope.read_only && !is_read {
        return Err(forbidden("this application token is read-only"));
    }
    if !route.starts_with("/api/v1/app/{app_id}") {
        return Ok(());
    }

    // The path may name the application by id or by uid.
    let Some(key) = app_param else {
        return Err(forbidden("an application token may not use this route"));
    };
    if key == scope.app_id {
        return Ok(());
    }
    let key = key.to_owned();
    let app = state
        .store
        .read(move |conn| applications::get(conn, &key))
        .await?;
    // An unknown application gets the same 403 as another one, so a token
    // cannot learn which other uids exist.
    match app {
        Some(app) if app.id == scope.app_id => Ok(()),
        _ => Err(forbidden(
            "this token may act only on the application it was issued for",
        )),
    }
}

fn forbidden(detail: &str) -> ApiError {
    ApiError::Status {
        status: StatusCode::FORBIDDEN,
        code: "forbidden",
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_principal(flags: &[&str]) -> Principal {
        Principal::App(AppScope {
            app_id: "app_1".to_owned(),
            token_sha256: [0; 32],
            read_only: false,
            feature_flags: flags.iter().map(|f| f.to_string()).collect(),
        })
    }

    fn event_type(flags: Option<&[&str]>) -> EventType {
        EventType {
            name: "user.created".to_owned(),
            description: String::new(),
            archived: false,
            deprecated: false,
            schemas: None,
            group_name: None,
            feature_flags: flags.map(|f| f.iter().map(|s| s.to_string()).collect()),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn app_token_needs_every_feature_flag() {
        let token = app_principal(&["beta"]);

        assert!(token.sees_event_type(&event_type(None)));
        assert!(token.sees_event_type(&event_type(Some(&[]))));
        assert!(token.sees_event_type(&event_type(Some(&["beta"]))));
        assert!(!token.sees_event_type(&event_type(Some(&["gamma"]))));
        assert!(!token.sees_event_type(&event_type(Some(&["beta", "gamma"]))));
        assert!(Principal::Admin.sees_event_type(&event_type(Some(&["gamma"]))));
    }

    #[test]
    fn generated_app_tokens_differ_and_carry_the_prefix() {
        let first = generate_app_token();
        let second = generate_app_token();

        assert_ne!(first, second);
        assert!(first.starts_with(APP_TOKEN_PREFIX), "{first}");
        assert_eq!(first.len(), APP_TOKEN_PREFIX.len() + 43, "{first}");
    }
}
