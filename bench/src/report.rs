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
    /// Columns of the wide table; `None` prints the row in [`TABLE_HEADER`]'s table.
    pub cost: Option<CostFigures>,
}

/// The columns that only the wide table has: the store, the nodes, the CPU
/// time of PostgreSQL and the CPU time per message.
#[derive(Debug, Clone)]
pub struct CostFigures {
    /// `SQLite` or `PostgreSQL`.
    pub store: &'static str,
    pub nodes: usize,
    /// CPU seconds of every `postgres` process inside the window.
    pub postgres_cpu_seconds: Option<f64>,
    /// `VmHWM` of each node at the end of the run, in MB.
    pub peak_rss_mb_per_node: Vec<f64>,
    pub accepted_in_window: u64,
    /// Deliveries to measured endpoints that arrived inside the window.
    pub delivered_in_window: u64,
}

/// CPU milliseconds per 1,000 of `count`, or `None` when `count` is 0.
pub fn ms_per_thousand(cpu_seconds: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| cpu_seconds * 1000.0 * 1000.0 / count as f64)
}

pub const TABLE_HEADER: &str = "| Scenario | Accepted msg/s | Deliveries/s | Latency p50 / p99 / max (ms) | hookd CPU s (% of 1 core) | hookd peak RSS (MB) | Harness CPU s | Notes |\n|---|---:|---:|---:|---:|---:|---:|---|";

/// Header of the wide table, which [`Row::markdown`] uses for rows with [`CostFigures`].
pub const WIDE_TABLE_HEADER: &str = "| Scenario | Store, nodes | Accepted msg/s | Deliveries/s | Latency p50 / p99 / max (ms) | hookd CPU s (% of 1 core) | PostgreSQL CPU s (% of 1 core) | CPU ms per 1,000 msg: hookd / PostgreSQL | CPU ms per 1,000 deliveries: hookd / PostgreSQL | hookd peak RSS per node (MB) | Harness CPU s | Notes |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

impl Row {
    /// Returns the header of the table that this row belongs to.
    pub fn header(&self) -> &'static str {
        if self.cost.is_some() {
            WIDE_TABLE_HEADER
        } else {
            TABLE_HEADER
        }
    }

    pub fn markdown(&self) -> String {
        match &self.cost {
            Some(cost) => self.wide_markdown(cost),
            None => self.classic_markdown(),
        }
    }

    fn classic_markdown(&self) -> String {
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

    fn wide_markdown(&self, cost: &CostFigures) -> String {
        let dash = || "–".to_owned();
        let rate = |value: Option<f64>| value.map_or_else(dash, |v| format!("{v:.0}"));
        let latency = self.latency_ms.map_or_else(dash, |(p50, p99, max)| {
            format!("{p50:.1} / {p99:.1} / {max:.1}")
        });
        let window = self.hookd_cpu.map(|(_, window)| window);
        let cpu_share = |seconds: Option<f64>| match (seconds, window) {
            (Some(seconds), Some(window)) => {
                format!("{seconds:.1} ({:.0}%)", 100.0 * seconds / window)
            }
            _ => dash(),
        };
        let hookd_cpu = self.hookd_cpu.map(|(seconds, _)| seconds);
        let per_thousand = |count: u64| {
            let hookd = hookd_cpu
                .and_then(|s| ms_per_thousand(s, count))
                .map_or_else(dash, |ms| format!("{ms:.0}"));
            let postgres = cost
                .postgres_cpu_seconds
                .and_then(|s| ms_per_thousand(s, count))
                .map_or_else(dash, |ms| format!("{ms:.0}"));
            format!("{hookd} / {postgres}")
        };
        let rss: Vec<String> = cost
            .peak_rss_mb_per_node
            .iter()
            .map(|mb| format!("{mb:.0}"))
            .collect();
        let bench_cpu = self
            .bench_cpu_seconds
            .map_or_else(dash, |s| format!("{s:.1}"));
        format!(
            "| {} | {}, {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            cost.store,
            if cost.nodes == 1 {
                "1 node".to_owned()
            } else {
                format!("{} nodes", cost.nodes)
            },
            rate(self.accepted_per_second),
            rate(self.deliveries_per_second),
            latency,
            cpu_share(hookd_cpu),
            cpu_share(cost.postgres_cpu_seconds),
            per_thousand(cost.accepted_in_window),
            per_thousand(cost.delivered_in_window),
            rss.join(" / "),
            bench_cpu,
            self.notes
        )
    }
}

/// True when a row in `header`'s table appended to a file with the text
/// `existing` needs the header first: the file is empty, or its last table
/// has another header.
pub fn needs_header(existing: &str, header: &str) -> bool {
    if existing.is_empty() {
        return true;
    }
    let first_line = header.lines().next().unwrap_or(header);
    match existing
        .lines()
        .rev()
        .find(|line| line.starts_with("| Scenario |"))
    {
        Some(last_header) => last_header != first_line,
        None => false,
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
/// (with the header first when the file is new or empty, or when its last
/// table has another header).
pub fn emit(row: &Row, markdown: Option<&Path>) -> anyhow::Result<()> {
    let header = row.header();
    println!("{header}\n{}", row.markdown());
    if let Some(path) = markdown {
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let needs_header = needs_header(&existing, header);
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        if needs_header {
            writeln!(file, "{header}")?;
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

    fn row(cost: Option<CostFigures>) -> Row {
        Row {
            scenario: "throughput, 1 endpoint, max rate".to_owned(),
            accepted_per_second: Some(1000.0),
            deliveries_per_second: Some(990.0),
            latency_ms: Some((1.0, 2.0, 3.0)),
            hookd_cpu: Some((15.0, 30.0)),
            peak_rss_mb: 60.0,
            bench_cpu_seconds: Some(4.0),
            notes: "n".to_owned(),
            cost,
        }
    }

    #[test]
    fn classic_row_keeps_its_columns() {
        let row = row(None);
        assert_eq!(row.header(), TABLE_HEADER);
        assert_eq!(
            row.markdown(),
            "| throughput, 1 endpoint, max rate | 1000 | 990 | 1.0 / 2.0 / 3.0 | 15.0 (50%) | 60 | 4.0 | n |"
        );
    }

    #[test]
    fn wide_row_has_cost_per_thousand() {
        let row = row(Some(CostFigures {
            store: "PostgreSQL",
            nodes: 2,
            postgres_cpu_seconds: Some(6.0),
            peak_rss_mb_per_node: vec![50.4, 61.6],
            accepted_in_window: 30_000,
            delivered_in_window: 60_000,
        }));
        assert_eq!(row.header(), WIDE_TABLE_HEADER);
        assert_eq!(
            row.markdown(),
            "| throughput, 1 endpoint, max rate | PostgreSQL, 2 nodes | 1000 | 990 | 1.0 / 2.0 / 3.0 | 15.0 (50%) | 6.0 (20%) | 500 / 200 | 250 / 100 | 50 / 62 | 4.0 | n |"
        );
    }

    #[test]
    fn wide_row_without_postgres_or_messages_has_dashes() {
        let row = row(Some(CostFigures {
            store: "SQLite",
            nodes: 1,
            postgres_cpu_seconds: None,
            peak_rss_mb_per_node: vec![60.0],
            accepted_in_window: 0,
            delivered_in_window: 15_000,
        }));
        let markdown = row.markdown();
        assert!(
            markdown.contains("| SQLite, 1 node | 1000 | 990 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| 15.0 (50%) | – | – / – | 1000 / – | 60 |"),
            "{markdown}"
        );
    }

    #[test]
    fn wide_and_classic_headers_have_matching_columns() {
        for (header, row) in [
            (TABLE_HEADER, row(None)),
            (
                WIDE_TABLE_HEADER,
                row(Some(CostFigures {
                    store: "SQLite",
                    nodes: 1,
                    postgres_cpu_seconds: None,
                    peak_rss_mb_per_node: vec![1.0],
                    accepted_in_window: 1,
                    delivered_in_window: 1,
                })),
            ),
        ] {
            let columns = |line: &str| line.matches('|').count();
            let mut lines = header.lines();
            let names = lines.next().unwrap();
            let alignment = lines.next().unwrap();
            assert_eq!(columns(names), columns(alignment), "{header}");
            assert_eq!(columns(names), columns(&row.markdown()), "{header}");
        }
    }

    #[test]
    fn ms_per_thousand_of_nothing_is_none() {
        assert_eq!(ms_per_thousand(3.0, 0), None);
        assert_eq!(ms_per_thousand(3.0, 30_000), Some(100.0));
    }

    #[test]
    fn header_written_for_new_or_other_table() {
        assert!(needs_header("", TABLE_HEADER));
        let classic = format!("{TABLE_HEADER}\n| a | 1 |\n");
        assert!(!needs_header(&classic, TABLE_HEADER));
        assert!(needs_header(&classic, WIDE_TABLE_HEADER));
        let both = format!("{classic}{WIDE_TABLE_HEADER}\n| b | 2 |\n");
        assert!(!needs_header(&both, WIDE_TABLE_HEADER));
        assert!(needs_header(&both, TABLE_HEADER));
    }

    #[test]
    fn header_not_written_into_text_without_table() {
        assert!(!needs_header("some notes\n", TABLE_HEADER));
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
