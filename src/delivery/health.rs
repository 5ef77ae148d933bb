//! Per-endpoint health: a circuit breaker and an adaptive concurrency limit.
//!
//! The breaker opens after a run of consecutive failed attempts. While it is
//! open, the endpoint gets no requests until the next probe is due, and then
//! exactly one at a time; the deliveries held back keep their place and their
//! retry count, because no attempt is made for them. Probes are spaced by the
//! retry schedule's delays, so a down endpoint sees one request per backoff
//! step instead of one per pending delivery. A successful probe closes the
//! breaker with a concurrency limit of one, which then grows again.
//!
//! The concurrency limit follows AIMD: it grows by about one per round of
//! successful requests and halves on 429, 503, a timeout, or a response much
//! slower than the endpoint's usual latency, within the operator's bounds.

use std::time::{Duration, Instant};

use rand::Rng;

/// The outcome of an attempt, as far as the endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx response, and how long it took.
    Success(Duration),
    /// The receiver is overloaded: 429, 503 or a timeout.
    Overload,
    /// Any other failed attempt: another status, a refused connection.
    Failure,
}

/// Bounds and thresholds shared by every endpoint.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Lowest concurrency limit; at least 1.
    pub min_limit: usize,
    /// Highest concurrency limit.
    pub max_limit: usize,
    /// The limit an endpoint starts with. Starting low means an endpoint that
    /// hangs holds only a few requests until its timeouts shrink its limit and
    /// open its breaker, while an endpoint that answers ramps up within
    /// a few hundred requests.
    pub initial_limit: usize,
    /// Consecutive failed attempts that open the breaker; 0 never opens it.
    pub failures_to_open: u32,
    /// Delays between probes: the first after opening, then the next after
    /// each failed probe, staying at the last one.
    pub probe_delays: Vec<Duration>,
}

impl HealthSettings {
    fn probe_delay(&self, failed_probes: u32) -> Duration {
        let base = self
            .probe_delays
            .get(failed_probes as usize)
            .or(self.probe_delays.last())
            .copied()
            .unwrap_or(Duration::from_secs(30));
        base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

/// State of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// No requests until `probe_at`; `failed_probes` probes have failed since it opened.
    Open {
        probe_at: Instant,
        failed_probes: u32,
    },
    /// One probe is in flight.
    Probing {
        failed_probes: u32,
    },
}

/// The health of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointHealth {
    /// Requests allowed in flight, as a real number so that it can grow by fractions.
    limit: f64,
    consecutive_failures: u32,
    breaker: BreakerState,
    /// A smoothed low-water mark of response times, in seconds.
    usual_latency: Option<f64>,
}

impl EndpointHealth {
    pub fn new(settings: &HealthSettings) -> Self {
        Self {
            limit: settings
                .initial_limit
                .clamp(settings.min_limit.max(1), settings.max_limit) as f64,
            consecutive_failures: 0,
            breaker: BreakerState::Closed,
            usual_latency: None,
        }
    }

    pub fn breaker(&self) -> BreakerState {
        self.breaker
    }

    /// Returns how many requests may be in flight to the endpoint at `now`.
    pub fn capacity(&self, settings: &HealthSettings, now: Instant) -> usize {
        match self.breaker {
            BreakerState::Closed => {
                (self.limit.floor() as usize).clamp(settings.min_limit.max(1), settings.max_limit)
            }
            BreakerState::Open { probe_at, .. } if now >= probe_at => 1,
            BreakerState::Open { .. } | BreakerState::Probing { .. } => 0,
        }
    }

    /// Returns when an open breaker lets the next probe through.
    pub fn probe_at(&self) -> Option<Instant> {
        match self.breaker {
            BreakerState::Open { probe_at, .. } => Some(probe_at),
            _ => None,
        }
    }

    /// Notes that a request is sent; a request sent while open is the probe.
    pub fn on_dispatch(&mut self) {
        if let BreakerState::Open { failed_probes, .. } = self.breaker {
            self.breaker = BreakerState::Probing { failed_probes };
        }
    }

    /// Updates the limit and the breaker with the outcome of an attempt.
    pub fn on_result(&mut self, signal: Signal, settings: &HealthSettings, now: Instant) {
        match signal {
            Signal::Success(duration) => {
                self.consecutive_failures = 0;
                let seconds = duration.as_secs_f64();
                let usual = self.usual_latency.unwrap_or(seconds);
                if self.breaker != BreakerState::Closed {
                    // A successful probe: close, and ramp up again from one
                    // request at a time.
                    self.breaker = BreakerState::Closed;
                    self.limit = settings.min_limit.max(1) as f64;
                } else if seconds > usual * 4.0 + 0.05 {
                    // Much slower than usual: the receiver is queueing.
                    self.limit = (self.limit * 0.9).max(settings.min_limit.max(1) as f64);
                } else {
                    self.limit =
                        (self.limit + 1.0 / self.limit.max(1.0)).min(settings.max_limit as f64);
                }
                // Follow decreases at once and increases slowly, so the
                // baseline tracks what the receiver does when it is well.
                self.usual_latency = Some(if seconds < usual {
                    seconds
                } else {
                    usual * 0.95 + seconds * 0.05
                });
            }
            Signal::Overload | Signal::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if signal == Signal::Overload {
                    self.limit = (self.limit / 2.0).max(settings.min_limit.max(1) as f64);
                }
                match self.breaker {
                    BreakerState::Probing { failed_probes } => {
                        self.breaker = BreakerState::Open {
                            probe_at: now + settings.probe_delay(failed_probes + 1),
                            failed_probes: failed_probes + 1,
                        };
                    }
                    BreakerState::Closed
                        if settings.failures_to_open > 0
                            && self.consecutive_failures >= settings.failures_to_open =>
                    {
                        self.breaker = BreakerState::Open {
                            probe_at: now + settings.probe_delay(0),
                            failed_probes: 0,
                        };
                    }
                    // Results of requests sent before the breaker opened
                    // change nothing more.
                    _ => {}
                }
            }
        }
    }

    /// Returns true when nothing but the limit sets this endpoint apart from
    /// a new one, so its state can be dropped when memory is short.
    pub fn is_calm(&self) -> bool {
        self.breaker == BreakerState::Closed && self.consecutive_failures == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            min_limit: 1,
            max_limit: 16,
            initial_limit: 16,
            failures_to_open: 5,
            probe_delays: vec![Duration::from_secs(30), Duration::from_secs(90)],
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..4 {
            health.on_result(Signal::Failure, &settings, now);
        }
        assert_eq!(health.breaker(), BreakerState::Closed);
        assert_eq!(health.capacity(&settings, now), 16);
        health.on_result(Signal::Failure, &settings, now);
        assert!(matches!(
            health.breaker(),
            BreakerState::Open {
                failed_probes: 0,
                ..
            }
        ));
        assert_eq!(health.capacity(&settings, now), 0);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..4 {
            health.on_result(Signal::Failure, &settings, now);
        }
        health.on_result(Signal::Success(Duration::from_millis(5)), &settings, now);
        for _ in 0..4 {
            health.on_result(Signal::Failure, &settings, now);
        }
        assert_eq!(health.breaker(), BreakerState::Closed);
    }

    #[test]
    fn open_breaker_allows_one_probe_when_due() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..5 {
            health.on_result(Signal::Failure, &settings, now);
        }
        let probe_at = health.probe_at().unwrap();
        let delay = probe_at - now;
        assert!(
            delay >= Duration::from_secs(24) && delay < Duration::from_secs(36),
            "{delay:?}"
        );
        assert_eq!(
            health.capacity(&settings, probe_at - Duration::from_millis(1)),
            0
        );
        assert_eq!(health.capacity(&settings, probe_at), 1);

        health.on_dispatch();
        assert_eq!(
            health.capacity(&settings, probe_at),
            0,
            "only one probe at a time"
        );
    }

    #[test]
    fn failed_probe_backs_off_further() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..5 {
            health.on_result(Signal::Failure, &settings, now);
        }
        health.on_dispatch();
        health.on_result(Signal::Failure, &settings, now);
        let delay = health.probe_at().unwrap() - now;
        assert!(
            delay >= Duration::from_secs(72) && delay < Duration::from_secs(108),
            "{delay:?}"
        );
        // Past the end of the list, the last delay repeats.
        health.on_dispatch();
        health.on_result(Signal::Failure, &settings, now);
        let delay = health.probe_at().unwrap() - now;
        assert!(
            delay >= Duration::from_secs(72) && delay < Duration::from_secs(108),
            "{delay:?}"
        );
    }

    #[test]
    fn successful_probe_closes_and_ramps_up() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..5 {
            health.on_result(Signal::Failure, &settings, now);
        }
        health.on_dispatch();
        health.on_result(Signal::Success(Duration::from_millis(5)), &settings, now);
        assert_eq!(health.breaker(), BreakerState::Closed);
        assert_eq!(health.capacity(&settings, now), 1);

        let mut capacities = Vec::new();
        for _ in 0..200 {
            health.on_result(Signal::Success(Duration::from_millis(5)), &settings, now);
            capacities.push(health.capacity(&settings, now));
        }
        assert!(
            capacities.windows(2).all(|w| w[1] >= w[0]),
            "the limit never drops while healthy"
        );
        assert_eq!(capacities[0], 2);
        assert_eq!(*capacities.last().unwrap(), 16);
        assert!(health.is_calm());
    }

    #[test]
    fn overload_halves_the_limit_within_bounds() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        health.on_result(Signal::Overload, &settings, now);
        assert_eq!(health.capacity(&settings, now), 8);
        health.on_result(Signal::Overload, &settings, now);
        health.on_result(Signal::Overload, &settings, now);
        assert_eq!(health.capacity(&settings, now), 2);
        health.on_result(Signal::Overload, &settings, now);
        health.on_result(Signal::Success(Duration::from_millis(5)), &settings, now);
        assert_eq!(
            health.capacity(&settings, now),
            2,
            "1 + 1/1 after a success"
        );
        health.on_result(Signal::Overload, &settings, now);
        health.on_result(Signal::Overload, &settings, now);
        assert_eq!(health.capacity(&settings, now), 1, "never below min_limit");
    }

    #[test]
    fn rising_latency_shrinks_the_limit() {
        let settings = settings();
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..10 {
            health.on_result(Signal::Success(Duration::from_millis(10)), &settings, now);
        }
        assert_eq!(health.capacity(&settings, now), 16);
        for _ in 0..10 {
            health.on_result(Signal::Success(Duration::from_millis(900)), &settings, now);
        }
        assert!(
            health.capacity(&settings, now) < 16,
            "{}",
            health.capacity(&settings, now)
        );
    }

    #[test]
    fn new_endpoint_starts_at_initial_limit() {
        let mut settings = settings();
        settings.initial_limit = 2;
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        assert_eq!(health.capacity(&settings, now), 2);
        for _ in 0..3 {
            health.on_result(Signal::Success(Duration::from_millis(5)), &settings, now);
        }
        // 2, then 2.5, 2.9 and 3.24.
        assert_eq!(health.capacity(&settings, now), 3);
    }

    #[test]
    fn zero_threshold_never_opens() {
        let mut settings = settings();
        settings.failures_to_open = 0;
        let now = Instant::now();
        let mut health = EndpointHealth::new(&settings);
        for _ in 0..100 {
            health.on_result(Signal::Failure, &settings, now);
        }
        assert_eq!(health.breaker(), BreakerState::Closed);
    }
}
