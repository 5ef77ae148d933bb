//! Logging through `tracing`. Filter with `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Metric names, all prefixed `hookd_`. Label values come from small fixed
/// sets; there are no per-endpoint or per-application labels.
pub mod metric {
    /// Counter: messages stored, from the API or a source.
    pub const MESSAGES_ACCEPTED: &str = "hookd_messages_accepted_total";
    /// Counter: messages not stored again because their event id was known.
    pub const MESSAGES_DEDUPLICATED: &str = "hookd_messages_deduplicated_total";
    /// Counter, label `outcome`: success, retry, failed, gone, canceled.
    pub const DELIVERY_OUTCOMES: &str = "hookd_delivery_outcomes_total";
    /// Counter, label `reason`: attempts that waited for the endpoint's rate
    /// limit (`rate_limit`), or were put back because the node's lease on the
    /// endpoint ran low while they waited (`lease`).
    pub const DEFERRED: &str = "hookd_deferred_attempts_total";
    /// Counter: API requests rejected with 429 because their token was over
    /// `api_requests_per_second`.
    pub const API_REQUESTS_RATE_LIMITED: &str = "hookd_api_requests_rate_limited_total";
    /// Counter: log lines left out because their kind was over its per-second budget.
    pub const LOG_LINES_SUPPRESSED: &str = "hookd_log_lines_suppressed_total";
    /// Histogram: seconds per attempt, connect to last byte read.
    pub const ATTEMPT_DURATION: &str = "hookd_attempt_duration_seconds";
    /// Gauge: deliveries queued in memory, waiting for a free slot.
    pub const QUEUED: &str = "hookd_queued_deliveries";
    /// Gauge: requests in flight.
    pub const IN_FLIGHT: &str = "hookd_in_flight_requests";
    /// Gauge: attempts that have their response and wait for the commit
    /// that records them. They no longer hold a request slot.
    pub const RECORDING: &str = "hookd_attempts_recording";
    /// Gauge: endpoints with more due work in the store than in memory.
    pub const BACKLOGGED_ENDPOINTS: &str = "hookd_backlogged_endpoints";
    /// Gauge, label `state`: endpoints whose breaker is open, probing, or
    /// closed with a concurrency limit below the maximum. Healthy endpoints
    /// are not counted.
    pub const ENDPOINTS_BY_BREAKER_STATE: &str = "hookd_endpoints_by_breaker_state";
    /// Histogram: seconds per group commit, from BEGIN to the end of COMMIT.
    pub const STORE_COMMIT_DURATION: &str = "hookd_store_commit_duration_seconds";
    /// Histogram: jobs per group commit.
    pub const STORE_COMMIT_JOBS: &str = "hookd_store_commit_jobs";
    /// Counter: group commits rolled back and run again because a job failed
    /// after changing rows.
    pub const STORE_BATCH_RERUNS: &str = "hookd_store_batch_reruns_total";
    /// Counter, label `operation`: begin, commit, connect, record_attempt,
    /// refill, retry_scan, task_step, retention, lease, notify.
    pub const STORE_ERRORS: &str = "hookd_store_errors_total";
    /// Gauge: partitions whose lease this node holds in a cluster.
    pub const CLUSTER_PARTITIONS_HELD: &str = "hookd_cluster_partitions_held";
    /// Gauge: held partitions this node is draining to give to other nodes.
    pub const CLUSTER_PARTITIONS_DRAINING: &str = "hookd_cluster_partitions_draining";
    /// Counter: endpoints of this node named in notifications of new
    /// deliveries, which other nodes send after storing them.
    pub const CLUSTER_ENDPOINTS_WOKEN: &str = "hookd_cluster_endpoints_woken_total";
    /// Counter, label `source`: records read from a stream source.
    pub const SOURCE_RECORDS: &str = "hookd_source_records_total";
    /// Counter, label `source`: messages created from a source's records.
    pub const SOURCE_MESSAGES: &str = "hookd_source_messages_total";
    /// Counter, labels `source` and `reason`: records stored as dead letters.
    pub const SOURCE_DEAD_LETTERS: &str = "hookd_source_dead_letters_total";
    /// Gauge, label `source`: records in the stream not yet consumed, as the
    /// broker reports it.
    pub const SOURCE_LAG: &str = "hookd_source_lag";
    /// Counter, labels `source` and `kind` (consume, ack, dead_letter_topic):
    /// broker operations that failed and are retried or skipped.
    pub const SOURCE_ERRORS: &str = "hookd_source_errors_total";
}

/// Installs the Prometheus recorder once per process and returns the handle
/// that renders `/metrics`.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let jobs = [
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2048.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(metric::ATTEMPT_DURATION.to_owned()),
                    &seconds,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metric::STORE_COMMIT_DURATION.to_owned()),
                        &seconds,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metric::STORE_COMMIT_JOBS.to_owned()),
                        &jobs,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed, by an embedding
            // program; then this handle renders nothing, but nothing breaks.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A per-second budget for a kind of log line that can repeat once per
/// attempt, so that thousands of failing endpoints cannot flood the log.
/// Lines over the budget are counted, and the count is logged with the next
/// line that fits.
pub struct LogBudget {
    per_second: u32,
    /// The second (since the epoch) the counts below belong to.
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU32,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: std::sync::atomic::AtomicU64::new(0),
            used: std::sync::atomic::AtomicU32::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Returns `Some(lines suppressed since the last allowed one)` when a line
    /// may be written now, and `None` when it is over the budget.
    pub fn allow(&self, now_second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.second.swap(now_second, Relaxed) != now_second {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            metrics::counter!(metric::LOG_LINES_SUPPRESSED).increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    #[test]
    fn log_budget_suppresses_over_the_rate() {
        let budget = LogBudget::new(3);
        let allowed: Vec<Option<u64>> = (0..5).map(|_| budget.allow(100)).collect();
        assert_eq!(allowed, vec![Some(0), Some(0), Some(0), None, None]);
        // The next second starts a new budget and reports the two suppressed.
        assert_eq!(budget.allow(101), Some(2));
        assert_eq!(budget.allow(101), Some(0));
    }
}
