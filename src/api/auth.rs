//! Bearer-token authentication. The admin token is kept only as a SHA-256
//! hash and compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Returns the SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Rejects a request without `Authorization: Bearer <admin token>` with 401,
/// and a request over its token's rate limit with 429.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
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
    let token_hash = hash_token(token.trim());
    let matches: bool = token_hash.ct_eq(state.admin_token_hash.as_ref()).into();
    if !matches {
        return ApiError::unauthorized("invalid token").into_response();
    }
    // Counted only after the token is known to be valid, so that requests
    // with a wrong token cannot use up a valid token's budget.
    if let Some(limiter) = &state.api_rate_limiter {
        if let Err(wait) = limiter.check(&token_hash) {
            return limiter.rejection(wait);
        }
    }
    next.run(request).await
}
