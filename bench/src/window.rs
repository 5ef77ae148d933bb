//! Samples taken at the two edges of the measured window: CPU time and
//! memory of every hookd node and of this harness, the machine's busy time,
//! each node's `/metrics`, and with PostgreSQL the server's CPU time.

use std::collections::BTreeMap;

use crate::api::ApiTarget;
use crate::clock;
use crate::hookd::{machine_cpu_seconds, MachineCpu, ProcSample};
use crate::metrics::Scrape;
use crate::postgres;
use crate::report::Window;

/// Samples of the processes at one edge of the window.
pub struct EdgeSample {
    /// One sample per hookd node, in node order.
    pub hookd: Vec<ProcSample>,
    pub harness: ProcSample,
    /// CPU seconds of the whole machine since boot.
    pub machine: MachineCpu,
    /// One scrape per hookd node, in node order.
    pub metrics: Vec<Scrape>,
    /// Present on cluster runs.
    pub postgres: Option<PostgresSample>,
}

/// The PostgreSQL server at one edge of the window.
pub struct PostgresSample {
    /// CPU seconds of each `postgres` process.
    pub cpu_by_pid: BTreeMap<u32, f64>,
    /// Transactions in the server's other databases so far; `None` when the
    /// query failed.
    pub other_transactions: Option<i64>,
}

/// CPU seconds spent inside the window, split by who spent them.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCpu {
    /// Summed over the hookd nodes.
    pub hookd: f64,
    pub harness: f64,
    /// Every `postgres` process; `None` on SQLite runs.
    pub postgres: Option<f64>,
    /// Everything else in this machine: other processes and the kernel's
    /// own work. A measure of interference.
    pub rest_of_machine: f64,
    /// Taken by the hypervisor for other guests: another measure of
    /// interference, which the processes' own CPU times do not show.
    pub steal: f64,
}

impl WindowCpu {
    pub fn between(before: &EdgeSample, after: &EdgeSample) -> Self {
        let hookd: f64 = after
            .hookd
            .iter()
            .zip(&before.hookd)
            .map(|(after, before)| after.cpu_seconds - before.cpu_seconds)
            .sum();
        let harness = after.harness.cpu_seconds - before.harness.cpu_seconds;
        let postgres = match (&before.postgres, &after.postgres) {
            (Some(before), Some(after)) => Some(postgres::cpu_seconds_between(
                &before.cpu_by_pid,
                &after.cpu_by_pid,
            )),
            _ => None,
        };
        let busy = after.machine.busy - before.machine.busy;
        Self {
            hookd,
            harness,
            postgres,
            rest_of_machine: busy - hookd - harness - postgres.unwrap_or(0.0),
            steal: after.machine.steal - before.machine.steal,
        }
    }
}

/// Transactions in the server's other databases inside the window, when
/// both edges have the count.
pub fn other_transactions(before: &EdgeSample, after: &EdgeSample) -> Option<i64> {
    let before = before.postgres.as_ref()?.other_transactions?;
    let after = after.postgres.as_ref()?.other_transactions?;
    Some(after - before)
}

/// Samples hookd, this process and, with `postgres_url`, the PostgreSQL
/// server at the start and at the end of the window.
pub fn spawn_sampler(
    pids: Vec<u32>,
    apis: Vec<ApiTarget>,
    postgres_url: Option<String>,
    window: Window,
) -> tokio::task::JoinHandle<anyhow::Result<(EdgeSample, EdgeSample)>> {
    tokio::spawn(async move {
        let client = match &postgres_url {
            Some(url) => Some(postgres::connect(url).await?),
            None => None,
        };
        let sample = || async {
            let mut hookd = Vec::with_capacity(pids.len());
            for pid in &pids {
                hookd.push(ProcSample::read(*pid)?);
            }
            let harness = ProcSample::read(std::process::id())?;
            let machine = machine_cpu_seconds()?;
            let postgres = match &client {
                Some(client) => Some(PostgresSample {
                    cpu_by_pid: postgres::postgres_cpu_by_pid()?,
                    other_transactions: match postgres::other_database_transactions(client).await {
                        Ok(count) => Some(count),
                        Err(err) => {
                            eprintln!("{err:#}");
                            None
                        }
                    },
                }),
                None => None,
            };
            let mut metrics = Vec::with_capacity(apis.len());
            for api in &apis {
                metrics.push(Scrape::take(api).await);
            }
            anyhow::Ok(EdgeSample {
                hookd,
                harness,
                machine,
                metrics,
                postgres,
            })
        };
        tokio::time::sleep_until(clock::instant_at(window.start_us).into()).await;
        let before = sample().await?;
        tokio::time::sleep_until(clock::instant_at(window.end_us).into()).await;
        let after = sample().await?;
        Ok((before, after))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(
        hookd: &[f64],
        harness: f64,
        machine: (f64, f64),
        postgres: Option<&[(u32, f64)]>,
    ) -> EdgeSample {
        let process = |cpu_seconds: f64| ProcSample {
            cpu_seconds,
            ..ProcSample::default()
        };
        EdgeSample {
            hookd: hookd.iter().map(|s| process(*s)).collect(),
            harness: process(harness),
            machine: MachineCpu {
                busy: machine.0,
                steal: machine.1,
            },
            metrics: Vec::new(),
            postgres: postgres.map(|pids| PostgresSample {
                cpu_by_pid: pids.iter().copied().collect(),
                other_transactions: Some(100),
            }),
        }
    }

    #[test]
    fn window_cpu_sums_nodes_and_postgres() {
        let before = edge(&[1.0, 2.0, 3.0], 1.0, (100.0, 4.0), Some(&[(7, 10.0)]));
        let after = edge(
            &[11.0, 12.0, 13.0],
            3.0,
            (150.0, 6.5),
            Some(&[(7, 14.0), (8, 1.0)]),
        );
        let cpu = WindowCpu::between(&before, &after);
        assert_eq!(cpu.hookd, 30.0);
        assert_eq!(cpu.harness, 2.0);
        assert_eq!(cpu.postgres, Some(5.0));
        assert_eq!(cpu.rest_of_machine, 13.0);
        assert_eq!(cpu.steal, 2.5);
    }

    #[test]
    fn window_cpu_without_postgres_matches_one_node() {
        let before = edge(&[5.0], 1.0, (100.0, 0.0), None);
        let after = edge(&[45.0], 6.0, (150.0, 0.0), None);
        let cpu = WindowCpu::between(&before, &after);
        assert_eq!(cpu.hookd, 40.0);
        assert_eq!(cpu.postgres, None);
        assert_eq!(cpu.rest_of_machine, 5.0);
    }

    #[test]
    fn other_transactions_needs_both_edges() {
        let before = edge(&[0.0], 0.0, (0.0, 0.0), Some(&[]));
        let mut after = edge(&[0.0], 0.0, (0.0, 0.0), Some(&[]));
        after.postgres.as_mut().unwrap().other_transactions = Some(160);
        assert_eq!(other_transactions(&before, &after), Some(60));
        after.postgres.as_mut().unwrap().other_transactions = None;
        assert_eq!(other_transactions(&before, &after), None);
        assert_eq!(
            other_transactions(
                &edge(&[0.0], 0.0, (0.0, 0.0), None),
                &edge(&[0.0], 0.0, (0.0, 0.0), None)
            ),
            None
        );
    }
}
