//! Reads hookd's Prometheus `/metrics` (present since hookd commit 3194c68),
//! to report group-commit statistics over the measured window and, in a
//! cluster, the partitions each node holds. A hookd without `/metrics`
//! yields no statistics.

use std::collections::HashMap;

use crate::api::ApiTarget;

/// Metric histograms whose `_sum` and `_count` are compared between two scrapes.
const HISTOGRAMS: &[&str] = &[
    "hookd_store_commit_duration_seconds",
    "hookd_store_commit_jobs",
    "hookd_attempt_duration_seconds",
];

/// Gauge of the endpoint partitions that a node of a cluster holds.
pub const PARTITIONS_HELD: &str = "hookd_cluster_partitions_held";

/// Unlabelled `_sum` and `_count` values of one scrape, by series name, and
/// the partitions held.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    values: HashMap<String, f64>,
    /// Value of [`PARTITIONS_HELD`]; `None` when the scrape has no such line,
    /// as on a node that uses SQLite.
    pub partitions_held: Option<u32>,
}

impl Scrape {
    /// Scrapes `/metrics`; returns an empty scrape when it is missing or fails.
    pub async fn take(api: &ApiTarget) -> Self {
        let Ok(mut connection) = api.connect().await else {
            return Self::default();
        };
        match connection.get("/metrics").await {
            Ok((status, body)) if status.is_success() => {
                Self::parse(&String::from_utf8_lossy(&body))
            }
            _ => Self::default(),
        }
    }

    fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        let mut partitions_held = None;
        for line in text.lines() {
            let Some((name, value)) = line.split_once(' ') else {
                continue;
            };
            if name == PARTITIONS_HELD {
                partitions_held = value.trim().parse::<f64>().ok().map(|v| v as u32);
                continue;
            }
            let is_histogram_series = HISTOGRAMS.iter().any(|h| {
                name.strip_prefix(h)
                    .is_some_and(|rest| rest == "_sum" || rest == "_count")
            });
            if let (true, Ok(value)) = (is_histogram_series, value.trim().parse::<f64>()) {
                values.insert(name.to_owned(), value);
            }
        }
        Self {
            values,
            partitions_held,
        }
    }

    fn delta(&self, earlier: &Scrape, name: &str) -> Option<f64> {
        Some(self.values.get(name)? - earlier.values.get(name).copied().unwrap_or(0.0))
    }

    /// Describes the histograms' count and mean between `earlier` and `self`.
    pub fn summary_since(&self, earlier: &Scrape, window_seconds: f64) -> Option<String> {
        let commits = self.delta(earlier, "hookd_store_commit_duration_seconds_count")?;
        let commit_seconds = self.delta(earlier, "hookd_store_commit_duration_seconds_sum")?;
        let jobs = self.delta(earlier, "hookd_store_commit_jobs_sum")?;
        // A cluster node that owns none of the endpoints makes no attempts,
        // so its scrape has no attempt histogram.
        let attempts = self
            .delta(earlier, "hookd_attempt_duration_seconds_count")
            .unwrap_or(0.0);
        let attempt_seconds = self
            .delta(earlier, "hookd_attempt_duration_seconds_sum")
            .unwrap_or(0.0);
        if commits <= 0.0 {
            return None;
        }
        Some(format!(
            "{:.0} group commits/s, mean {:.2} ms and {:.1} jobs per commit (writer busy {:.0}% of the window); {:.0} attempts/s, mean attempt {:.2} ms",
            commits / window_seconds,
            1000.0 * commit_seconds / commits,
            jobs / commits,
            100.0 * commit_seconds / window_seconds,
            attempts / window_seconds,
            if attempts > 0.0 { 1000.0 * attempt_seconds / attempts } else { 0.0 },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_summary_uses_deltas() {
        let before = Scrape::parse(
            "hookd_store_commit_duration_seconds_sum 1\nhookd_store_commit_duration_seconds_count 100\nhookd_store_commit_jobs_sum 1000\nhookd_attempt_duration_seconds_sum 0\nhookd_attempt_duration_seconds_count 0\n",
        );
        let after = Scrape::parse(
            "# HELP x\nhookd_store_commit_duration_seconds_bucket{le=\"0.001\"} 5\nhookd_store_commit_duration_seconds_sum 3\nhookd_store_commit_duration_seconds_count 1100\nhookd_store_commit_jobs_sum 11000\nhookd_attempt_duration_seconds_sum 1\nhookd_attempt_duration_seconds_count 1000\n",
        );
        let summary = after.summary_since(&before, 10.0).unwrap();
        assert!(
            summary.starts_with(
                "100 group commits/s, mean 2.00 ms and 10.0 jobs per commit (writer busy 20%"
            ),
            "{summary}"
        );
        assert!(
            summary.ends_with("100 attempts/s, mean attempt 1.00 ms"),
            "{summary}"
        );
    }

    #[test]
    fn scrape_reads_partitions_held() {
        let scrape = Scrape::parse(
            "# TYPE hookd_cluster_partitions_held gauge\nhookd_cluster_partitions_held 22\nhookd_cluster_partitions_held_total 9\n",
        );
        assert_eq!(scrape.partitions_held, Some(22));
    }

    #[test]
    fn scrape_without_gauge_has_no_partitions() {
        let scrape = Scrape::parse("hookd_store_commit_jobs_sum 5\n");
        assert_eq!(scrape.partitions_held, None);
    }

    #[test]
    fn scrape_summary_without_attempts() {
        let before = Scrape::parse(
            "hookd_store_commit_duration_seconds_sum 0\nhookd_store_commit_duration_seconds_count 0\nhookd_store_commit_jobs_sum 0\n",
        );
        let after = Scrape::parse(
            "hookd_store_commit_duration_seconds_sum 1\nhookd_store_commit_duration_seconds_count 50\nhookd_store_commit_jobs_sum 500\n",
        );
        let summary = after.summary_since(&before, 10.0).unwrap();
        assert!(
            summary.ends_with("0 attempts/s, mean attempt 0.00 ms"),
            "{summary}"
        );
    }

    #[test]
    fn scrape_without_metrics_has_no_summary() {
        assert!(Scrape::default()
            .summary_since(&Scrape::default(), 1.0)
            .is_none());
    }
}
