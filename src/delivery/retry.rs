//! Whether an attempt is retried ([`classify`]) and when ([`RetryPolicy`]).
//! Neither touches storage.

use std::time::Duration;

use rand::Rng;

/// The end of an attempt, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status and, for 429 and 503, an optional `Retry-After`.
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The deadline passed before the response was complete.
    Timeout,
    /// No connection could be made, or it broke before a response.
    ConnectionFailed,
    /// Every address of the host is blocked by the SSRF guard.
    Blocked,
}

/// The decision about a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Succeeded,
    /// Try again, not before `not_before` when the receiver asked for a delay.
    Retry {
        not_before: Option<Duration>,
    },
    /// 410 Gone: the receiver requests no further deliveries.
    Gone,
}

/// Classifies an attempt: any 2xx succeeds, 410 disables the endpoint, and
/// everything else (other statuses including 3xx, timeouts, connection
/// failures, blocked addresses) is retried.
pub fn classify(outcome: &Outcome) -> Decision {
    match outcome {
        Outcome::Response { status, .. } if (200..300).contains(status) => Decision::Succeeded,
        Outcome::Response { status: 410, .. } => Decision::Gone,
        Outcome::Response {
            status: 429 | 503,
            retry_after,
        } => Decision::Retry {
            not_before: *retry_after,
        },
        _ => Decision::Retry { not_before: None },
    }
}

/// The delays between attempts.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before retry 1, 2, …; its length is the number of retries.
    pub schedule: Vec<Duration>,
    /// The largest delay a `Retry-After` header can ask for.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// Returns this policy with another schedule, in milliseconds, as an
    /// endpoint's own schedule overrides the global one.
    pub fn with_schedule_ms(&self, schedule_ms: &[u64]) -> Self {
        Self {
            schedule: schedule_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_retry_after: self.max_retry_after,
        }
    }

    /// Returns the delay before the next attempt after `attempts_made`
    /// attempts, or `None` when the schedule is used up.
    ///
    /// Each scheduled delay is multiplied by a random factor in [0.8, 1.2) so
    /// that the retries of a burst spread out. A `Retry-After` can only make
    /// the delay longer, up to `max_retry_after`.
    pub fn next_delay(&self, attempts_made: u32, not_before: Option<Duration>) -> Option<Duration> {
        let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
        let base = *self.schedule.get(index)?;
        let factor = rand::thread_rng().gen_range(0.8..1.2);
        let jittered = base.mul_f64(factor);
        let requested = not_before.unwrap_or_default().min(self.max_retry_after);
        Some(jittered.max(requested))
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate_parse(value)?;
    Some(date.duration_since(now).unwrap_or_default())
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    let parsed = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let seconds = u64::try_from(parsed.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> Outcome {
        Outcome::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn any_2xx_succeeds() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(&response(status)),
                Decision::Succeeded,
                "status {status}"
            );
        }
    }

    #[test]
    fn gone_disables_and_redirects_retry() {
        assert_eq!(classify(&response(410)), Decision::Gone);
        for status in [301, 302, 307, 308, 400, 404, 500, 502] {
            assert_eq!(
                classify(&response(status)),
                Decision::Retry { not_before: None },
                "status {status}"
            );
        }
        assert_eq!(
            classify(&Outcome::Timeout),
            Decision::Retry { not_before: None }
        );
        assert_eq!(
            classify(&Outcome::ConnectionFailed),
            Decision::Retry { not_before: None }
        );
        assert_eq!(
            classify(&Outcome::Blocked),
            Decision::Retry { not_before: None }
        );
    }

    #[test]
    fn retry_after_kept_for_429_and_503_only() {
        let wait = Some(Duration::from_secs(7));
        for status in [429, 503] {
            let outcome = Outcome::Response {
                status,
                retry_after: wait,
            };
            assert_eq!(classify(&outcome), Decision::Retry { not_before: wait });
        }
        let outcome = Outcome::Response {
            status: 500,
            retry_after: wait,
        };
        assert_eq!(classify(&outcome), Decision::Retry { not_before: None });
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: [30, 90, 270, 810, 2430].map(Duration::from_secs).to_vec(),
            max_retry_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn delays_follow_schedule_within_jitter() {
        let policy = policy();
        for (attempts_made, base) in [(1u32, 30.0), (2, 90.0), (3, 270.0), (4, 810.0), (5, 2430.0)]
        {
            for _ in 0..200 {
                let delay = policy
                    .next_delay(attempts_made, None)
                    .unwrap()
                    .as_secs_f64();
                assert!(
                    delay >= base * 0.8 && delay < base * 1.2,
                    "attempt {attempts_made}: {delay}"
                );
            }
        }
        assert_eq!(policy.next_delay(6, None), None);
        assert_eq!(policy.next_delay(0, None), None);
    }

    #[test]
    fn jitter_spreads_a_burst() {
        let policy = policy();
        let delays: std::collections::HashSet<u128> = (0..100)
            .map(|_| policy.next_delay(1, None).unwrap().as_millis())
            .collect();
        assert!(
            delays.len() > 50,
            "only {} distinct delays out of 100",
            delays.len()
        );
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        let policy = policy();
        let delay = policy
            .next_delay(1, Some(Duration::from_secs(600)))
            .unwrap();
        assert_eq!(delay, Duration::from_secs(600));
        let delay = policy
            .next_delay(1, Some(Duration::from_secs(86_400)))
            .unwrap();
        assert_eq!(delay, Duration::from_secs(3600));
        let delay = policy.next_delay(1, Some(Duration::from_secs(1))).unwrap();
        assert!(delay >= Duration::from_secs(24), "{delay:?}");
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // 2023-11-14T22:13:20Z is 1_700_000_000; one minute later:
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
