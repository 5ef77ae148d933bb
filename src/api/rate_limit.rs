//! Per-token limit on API requests (`api_requests_per_second`).
//!
//! The limiter is keyed by the SHA-256 hash of the bearer token, so it never
//! stores a token. Only requests with a valid token are counted. A request
//! with a missing or wrong token is rejected with 401 before it reaches the
//! limiter, so it cannot use up a valid token's budget, and the limiter
//! contains one entry per valid token.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::ApiError;
use crate::telemetry::metric;

/// Limit of API requests per second for each token.
pub struct ApiRateLimiter {
    limiter: DefaultKeyedRateLimiter<[u8; 32]>,
    per_second: NonZeroU32,
}

impl ApiRateLimiter {
    /// Creates a limiter of `per_second` requests a second per token. A
    /// token may spend one second's worth at once, so a client that sends
    /// at a steady rate below the limit is never throttled.
    pub fn new(per_second: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second)),
            per_second,
        }
    }

    /// Counts one request of the token with this hash. Over the limit, returns
    /// the time until the token may send its next request.
    pub fn check(&self, token_hash: &[u8; 32]) -> Result<(), Duration> {
        self.limiter
            .check_key(token_hash)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Builds the 429 response for a request over the limit, with
    /// `Retry-After` in whole seconds, rounded up and at least 1.
    pub fn rejection(&self, wait: Duration) -> Response {
        metrics::counter!(metric::API_REQUESTS_RATE_LIMITED).increment(1);
        let retry_after_secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0))
            .max(1);
        let mut response = ApiError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            detail: format!(
                "this token is over its limit of {} API requests per second; retry after {retry_after_secs} s",
                self.per_second
            ),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_separate_budgets() {
        let limiter = ApiRateLimiter::new(NonZeroU32::new(2).expect("2 is not zero"));
        let first = [1u8; 32];
        let second = [2u8; 32];

        assert!(limiter.check(&first).is_ok());
        assert!(limiter.check(&first).is_ok());
        assert!(limiter.check(&first).is_err());
        assert!(limiter.check(&second).is_ok());
        assert!(limiter.check(&second).is_ok());
    }

    #[test]
    fn wait_is_at_most_one_refill_interval() {
        let limiter = ApiRateLimiter::new(NonZeroU32::new(4).expect("4 is not zero"));
        let token = [7u8; 32];
        for _ in 0..4 {
            assert!(limiter.check(&token).is_ok());
        }

        let wait = limiter
            .check(&token)
            .expect_err("the fifth request is over");
        assert!(wait > Duration::ZERO, "wait {wait:?}");
        assert!(wait <= Duration::from_millis(250), "wait {wait:?}");
    }

    #[test]
    fn rejection_rounds_retry_after_up() {
        let limiter = ApiRateLimiter::new(NonZeroU32::new(1).expect("1 is not zero"));

        let response = limiter.rejection(Duration::from_millis(10));

        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = limiter.rejection(Duration::from_millis(2100));
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
