//! The hookd processes of one run: a single node on SQLite, or `--nodes N`
//! nodes sharing one PostgreSQL database, each with its own port, data
//! directory, `HOOKD_NODE_ID` and log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::ApiTarget;
use crate::hookd::{Hookd, HookdSettings, ProcSample};
use crate::metrics::Scrape;

/// Endpoint partitions of a hookd cluster (`PARTITIONS` in hookd's `cluster.rs`).
pub const CLUSTER_PARTITIONS: u32 = 64;
/// Time the nodes get to share the partitions out. A node that gives a
/// partition to a newer node first drains it for hookd's request timeout
/// (10 s by default) plus 2 s.
const PARTITIONS_TIMEOUT: Duration = Duration::from_secs(120);

/// The cluster settings of a run.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `HOOKD_DATABASE_URL` of every node: the run's own database.
    pub database_url: String,
    pub nodes: usize,
}

/// Running hookd processes, in the order they were started.
pub struct Nodes {
    pub nodes: Vec<Hookd>,
}

impl Nodes {
    /// Starts one node on `workdir/data` (SQLite), or with `cluster` each
    /// node `i` on `workdir/node-{i}/data` with its log beside it.
    pub async fn start(
        base: &HookdSettings,
        workdir: &Path,
        cluster: Option<&ClusterSettings>,
    ) -> anyhow::Result<Self> {
        let Some(cluster) = cluster else {
            return Ok(Self {
                nodes: vec![Hookd::start(base).await?],
            });
        };
        let mut nodes = Vec::with_capacity(cluster.nodes);
        for index in 0..cluster.nodes {
            let node_dir = workdir.join(format!("node-{index}"));
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("cannot create {}", node_dir.display()))?;
            let settings = node_settings(base, &node_dir, cluster, index);
            let hookd = Hookd::start(&settings).await?;
            eprintln!(
                "node {index}: hookd {} ready in {:.2}s at {}, log {}",
                hookd.pid,
                hookd.ready_after.as_secs_f64(),
                hookd.api.addr,
                hookd.log_path.display()
            );
            nodes.push(hookd);
        }
        Ok(Self { nodes })
    }

    /// Returns the first node, on which the harness creates applications and endpoints.
    pub fn first(&self) -> &Hookd {
        &self.nodes[0]
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|node| node.pid).collect()
    }

    pub fn apis(&self) -> Vec<ApiTarget> {
        self.nodes.iter().map(|node| node.api.clone()).collect()
    }

    pub fn sample(&self) -> anyhow::Result<Vec<ProcSample>> {
        self.nodes.iter().map(Hookd::sample).collect()
    }

    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .map(|node| node.log_path.clone())
            .collect()
    }

    /// Waits until the nodes' `hookd_cluster_partitions_held` add up to
    /// [`CLUSTER_PARTITIONS`] with every node holding some, and returns
    /// each node's count.
    pub async fn wait_for_partitions(&self) -> anyhow::Result<Vec<u32>> {
        let started = Instant::now();
        loop {
            let mut held_by_node = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                held_by_node.push(Scrape::take(&node.api).await.partitions_held);
            }
            if partitions_shared(&held_by_node) {
                let held: Vec<u32> = held_by_node.into_iter().flatten().collect();
                eprintln!(
                    "partitions held {} after {:.1}s",
                    format_partitions(&held),
                    started.elapsed().as_secs_f64()
                );
                return Ok(held);
            }
            if started.elapsed() > PARTITIONS_TIMEOUT {
                let logs: Vec<String> = self
                    .log_paths()
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect();
                bail!(
                    "the nodes did not share the {CLUSTER_PARTITIONS} partitions within {}s (held by node: {held_by_node:?}); see the logs {}",
                    PARTITIONS_TIMEOUT.as_secs(),
                    logs.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every node at once with SIGTERM and returns how long each took.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        let stops = self.nodes.into_iter().map(|node| node.stop(timeout));
        futures_util::future::join_all(stops)
            .await
            .into_iter()
            .collect()
    }
}

/// Builds the settings of cluster node `index`: its own data directory and
/// node id, and the shared database, before the `--hookd-env` overrides.
fn node_settings(
    base: &HookdSettings,
    node_dir: &Path,
    cluster: &ClusterSettings,
    index: usize,
) -> HookdSettings {
    let mut env = vec![
        (
            "HOOKD_DATABASE_URL".to_owned(),
            cluster.database_url.clone(),
        ),
        ("HOOKD_NODE_ID".to_owned(), format!("bench-node-{index}")),
    ];
    env.extend(base.env.iter().cloned());
    HookdSettings {
        binary: base.binary.clone(),
        data_dir: node_dir.join("data"),
        env,
    }
}

/// True when every node reports a share and the shares add up to all
/// [`CLUSTER_PARTITIONS`].
pub fn partitions_shared(held: &[Option<u32>]) -> bool {
    !held.is_empty()
        && held.iter().all(|count| count.is_some_and(|c| c > 0))
        && held.iter().flatten().sum::<u32>() == CLUSTER_PARTITIONS
}

/// Formats per-node counts as `22/22/20`.
pub fn format_partitions(held: &[u32]) -> String {
    held.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// Counts the lines of a text log at WARN and at ERROR level.
pub fn count_log_levels(log: &str) -> (usize, usize) {
    let mut warnings = 0;
    let mut errors = 0;
    for line in log.lines() {
        let mut words = line.split_whitespace();
        // A text line starts with the timestamp, then the level.
        match words.nth(1) {
            Some("WARN") => warnings += 1,
            Some("ERROR") => errors += 1,
            _ => {}
        }
    }
    (warnings, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_shared_needs_every_node() {
        assert!(partitions_shared(&[Some(64)]));
        assert!(partitions_shared(&[Some(22), Some(22), Some(20)]));
        assert!(!partitions_shared(&[Some(64), Some(0)]));
        assert!(!partitions_shared(&[Some(32), None]));
    }

    #[test]
    fn partitions_shared_needs_all_partitions() {
        assert!(!partitions_shared(&[Some(22), Some(20)]));
        assert!(!partitions_shared(&[Some(40), Some(32)]));
        assert!(!partitions_shared(&[]));
    }

    #[test]
    fn partitions_format_with_slashes() {
        assert_eq!(format_partitions(&[22, 22, 20]), "22/22/20");
        assert_eq!(format_partitions(&[64]), "64");
    }

    #[test]
    fn node_settings_put_overrides_last() {
        let base = HookdSettings {
            binary: PathBuf::from("/bin/hookd"),
            data_dir: PathBuf::from("/tmp/x/data"),
            env: vec![("HOOKD_NODE_ID".to_owned(), "mine".to_owned())],
        };
        let cluster = ClusterSettings {
            database_url: "postgres://u@h/db".to_owned(),
            nodes: 3,
        };
        let settings = node_settings(&base, Path::new("/tmp/x/node-2"), &cluster, 2);
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/x/node-2/data"));
        assert_eq!(
            settings.env[0],
            (
                "HOOKD_DATABASE_URL".to_owned(),
                "postgres://u@h/db".to_owned()
            )
        );
        assert_eq!(
            settings.env[1],
            ("HOOKD_NODE_ID".to_owned(), "bench-node-2".to_owned())
        );
        assert_eq!(
            settings.env[2],
            ("HOOKD_NODE_ID".to_owned(), "mine".to_owned())
        );
    }

    #[test]
    fn log_levels_count_by_second_word() {
        let log = "2026-12-05T02:00:00.000Z  INFO hookd: started\n\
                   2026-12-05T02:00:01.000Z  WARN hookd::delivery: attempt failed\n\
                   2026-12-05T02:00:02.000Z ERROR hookd::store: commit failed\n\
                   a message that mentions WARN and ERROR\n";
        assert_eq!(count_log_levels(log), (1, 1));
    }
}
