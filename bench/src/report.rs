//! Turns accept times and arrivals into rates and latency percentiles, and
//! formats the result as a Markdown table row.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::load::{new_histogram, Accepted};
use crate::receiver::Arrival;

/// The measured window, in [`crate::clock::now_us`] time: `[start_us, end_us)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
}

impl Window {
    fn contains(&self, us: u64) -> bool {
        (self.start_us..self.end_us).contains(&us)
    }

    fn seconds(&self) -> f64 {
        (self.end_us - self.start_us) as f64 / 1e6
    }
}

/// Rates and latencies of the measured endpoints.
#[derive(Debug)]
pub struct Analysis {
    pub accepted_in_window: u64,
    pub accepted_per_second: f64,
    /// Deliveries to measured endpoints that arrived inside the window.
    pub delivered_in_window: u64,
    pub deliveries_per_second: f64,
    /// Accept-to-receipt time of the first arrival of each delivery whose
    /// message was accepted inside the window, in microseconds.
    pub latency: Histogram<u64>,
    /// Deliveries of messages accepted inside the window that never arrived.
    pub missing: u64,
    /// Repeated arrivals of the same message at the same endpoint.
    pub duplicates: u64,
    /// Arrivals recorded before the load generator read the 202 response;
    /// their latency counts as 0.
    pub before_accept: u64,
    /// Arrivals whose message id the load generator never saw accepted.
    pub unknown: u64,
}

/// Joins the arrivals with the accept times. `measured_per_app[a]` is the
/// number of measured endpoints that a message to application `a` reaches.
pub fn analyse(
    accepted: &[Accepted],
    arrivals: &[Arrival],
    measured_per_app: &[u64],
    window: Window,
) -> Analysis {
    let accept_times: HashMap<&str, (u64, u32)> = accepted
        .iter()
        .map(|a| (a.msg_id.as_ref(), (a.at_us, a.app)))
        .collect();
    let accepted_in_window: Vec<&Accepted> = accepted
        .iter()
        .filter(|a| window.contains(a.at_us))
        .collect();
    let expected_in_window: u64 = accepted_in_window
        .iter()
        .map(|a| measured_per_app[a.app as usize])
        .sum();

    let mut latency = new_histogram();
    let mut seen: HashSet<(&str, u32)> = HashSet::with_capacity(arrivals.len());
    let mut delivered_in_window = 0;
    let mut duplicates = 0;
    let mut before_accept = 0;
    let mut unknown = 0;
    let mut arrived_for_window = 0;
    for arrival in arrivals {
        if !seen.insert((arrival.msg_id.as_ref(), arrival.endpoint)) {
            duplicates += 1;
            continue;
        }
        if window.contains(arrival.at_us) {
            delivered_in_window += 1;
        }
        let Some(&(accepted_us, _)) = accept_times.get(arrival.msg_id.as_ref()) else {
            unknown += 1;
            continue;
        };
        if !window.contains(accepted_us) {
            continue;
        }
        arrived_for_window += 1;
        if arrival.at_us < accepted_us {
            before_accept += 1;
        }
        let _ = latency.record(arrival.at_us.saturating_sub(accepted_us).max(1));
    }

    Analysis {
        accepted_in_window: accepted_in_window.len() as u64,
        accepted_per_second: accepted_in_window.len() as f64 / window.seconds(),
        delivered_in_window,
        deliveries_per_second: delivered_in_window as f64 / window.seconds(),
        latency,
        missing: expected_in_window.saturating_sub(arrived_for_window),
        duplicates,
        before_accept,
        unknown,
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub accepted_per_second: Option<f64>,
    pub deliveries_per_second: Option<f64>,
    /// p50, p99 and max latency in milliseconds.
    pub latency_ms: Option<(f64, f64, f64)>,
    /// hookd CPU seconds inside the measured window, and the window's length.
    pub hookd_cpu: Option<(f64, f64)>,
    pub peak_rss_mb: f64,
    /// CPU seconds of this harness (load generator and receiver) inside the window.
    pub bench_cpu_seconds: Option<f64>,
    pub notes: String,
}

pub const TABLE_HEADER: &str = "| Scenario | Accepted msg/s | Deliveries/s | Latency p50 / p99 / max (ms) | hookd CPU s (% of 1 core) | hookd peak RSS (MB) | Harness CPU s | Notes |\n|---|---:|---:|---:|---:|---:|---:|---|";

impl Row {
    pub fn markdown(&self) -> String {
        let dash = || "–".to_owned();
        let rate = |value: Option<f64>| value.map_or_else(dash, |v| format!("{v:.0}"));
        let latency = self.latency_ms.map_or_else(dash, |(p50, p99, max)| {
            format!("{p50:.1} / {p99:.1} / {max:.1}")
        });
        let cpu = self.hookd_cpu.map_or_else(dash, |(seconds, window)| {
            format!("{seconds:.1} ({:.0}%)", 100.0 * seconds / window)
        });
        let bench_cpu = self
            .bench_cpu_seconds
            .map_or_else(dash, |s| format!("{s:.1}"));
        format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            self.scenario,
            rate(self.accepted_per_second),
            rate(self.deliveries_per_second),
            latency,
            cpu,
            self.peak_rss_mb,
            bench_cpu,
            self.notes
        )
    }
}

/// Percentiles of a microsecond histogram as milliseconds: (p50, p99, max),
/// or `None` when it is empty.
pub fn percentiles_ms(histogram: &Histogram<u64>) -> Option<(f64, f64, f64)> {
    if histogram.is_empty() {
        return None;
    }
    Some((
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
    ))
}

/// Prints the table header and the row, and appends the row to `markdown`
/// (with the header first when the file is new or empty).
pub fn emit(row: &Row, markdown: Option<&Path>) -> anyhow::Result<()> {
    println!("{TABLE_HEADER}\n{}", row.markdown());
    if let Some(path) = markdown {
        let needs_header = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        if needs_header {
            writeln!(file, "{TABLE_HEADER}")?;
        }
        writeln!(file, "{}", row.markdown())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(id: &str, at_us: u64) -> Accepted {
        Accepted {
            msg_id: id.into(),
            at_us,
            app: 0,
        }
    }

    fn arrival(id: &str, endpoint: u32, at_us: u64) -> Arrival {
        Arrival {
            msg_id: id.into(),
            endpoint,
            at_us,
        }
    }

    #[test]
    fn analyse_counts_window_and_latency() {
        let window = Window {
            start_us: 1_000_000,
            end_us: 3_000_000,
        };
        let accepted = vec![
            accepted("warmup", 500_000),
            accepted("a", 1_000_000),
            accepted("b", 2_000_000),
            accepted("lost", 2_500_000),
        ];
        let arrivals = vec![
            arrival("warmup", 0, 1_200_000),
            arrival("a", 0, 1_002_000),
            arrival("a", 0, 1_500_000),
            arrival("b", 0, 3_100_000),
            arrival("stranger", 0, 2_000_000),
        ];
        let analysis = analyse(&accepted, &arrivals, &[1], window);

        assert_eq!(analysis.accepted_in_window, 3);
        assert_eq!(analysis.accepted_per_second, 1.5);
        // warmup, a and stranger arrived inside; the duplicate of a does not count.
        assert_eq!(analysis.delivered_in_window, 3);
        assert_eq!(analysis.duplicates, 1);
        assert_eq!(analysis.unknown, 1);
        assert_eq!(analysis.missing, 1);
        assert_eq!(analysis.latency.len(), 2);
        assert_eq!(analysis.latency.min(), 2000);
        assert!(analysis.latency.max() >= 1_100_000);
    }

    #[test]
    fn analyse_clamps_arrival_before_accept() {
        let window = Window {
            start_us: 0,
            end_us: 10,
        };
        let analysis = analyse(&[accepted("a", 5)], &[arrival("a", 0, 4)], &[1], window);
        assert_eq!(analysis.before_accept, 1);
        assert_eq!(analysis.latency.max(), 1);
    }
}
