//! `hookd-bench`: starts a hookd release binary, drives it through its API
//! with an in-process load generator, receives its webhooks with an
//! in-process receiver, and reports rates, latencies, CPU time and memory.

mod api;
mod clock;
mod hookd;
mod kafka;
mod load;
mod metrics;
mod nodes;
mod postgres;
mod receiver;
mod report;
mod scenarios;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use nodes::ClusterSettings;
use receiver::Behaviour;
use scenarios::{BacklogSettings, EndpointKind, Layout, RunSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1 application, 1 endpoint, messages as fast as the API accepts them.
    Throughput,
    /// 1 application, 100 endpoints: every message goes to all 100.
    Fanout,
    /// 1 endpoint at a fixed rate (--rate, default 7500 msg/s).
    Latency,
    /// 1,000 endpoints over 10 applications, 900 of them bad (--bad) and 100
    /// healthy; measures the healthy ones at a fixed rate (--rate, default 20 msg/s).
    Isolation,
    /// 10,000 endpoints over 100 applications that never succeed (--bad hang
    /// or closed), filled with --messages messages, then a restart.
    Backlog,
    /// --messages records of 1 KB put on a tansu topic first, then consumed
    /// by hookd's Kafka source into 1 application with --endpoints endpoints
    /// (default 1; 0 measures ingestion alone).
    Kafka,
}

/// Behaviour of the bad endpoints of `isolation` and `backlog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bad {
    /// Send no response and keep the connection open until hookd's request timeout.
    Hang,
    /// Respond 200 after --slow-delay.
    Slow,
    /// Respond 500 at once.
    Fail,
    /// Respond 200 at once: the all-healthy baseline.
    Ok,
    /// Refuse the connection: a port with no listener.
    Closed,
}

#[derive(Debug, Parser)]
#[command(
    name = "hookd-bench",
    about = "Benchmark a hookd release binary end to end on 127.0.0.1"
)]
struct Cli {
    scenario: Scenario,
    /// Measured window after the warm-up (default 60s; 30s for fanout and
    /// isolation). For backlog: the longest time the fill may take (default 600s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Sending time before the measured window starts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// After sending stops, how long to wait for the remaining deliveries.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Messages per second over all connections. Without it, throughput and
    /// fanout send as fast as the API responds.
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent keep-alive connections to the API.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages sent at most, whatever the duration.
    #[arg(long, default_value_t = 5_000_000)]
    max_messages: u64,
    /// Behaviour of the bad endpoints (isolation and backlog).
    #[arg(long, value_enum, default_value = "hang")]
    bad: Bad,
    /// Delay of `--bad slow` endpoints.
    #[arg(long, default_value = "9.9s", value_parser = humantime::parse_duration)]
    slow_delay: Duration,
    /// Endpoints (isolation: default 1000, backlog: default 10000).
    #[arg(long)]
    endpoints: Option<usize>,
    /// Applications the endpoints are spread over (isolation: default 10, backlog: default 100).
    #[arg(long)]
    apps: Option<usize>,
    /// Backlog: messages sent to fill the backlog; each creates one delivery
    /// per endpoint of its application.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Backlog: wait after the fill before sampling memory and restarting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Backlog: when, after the restart, to send the second new message.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    probe_again_after: Duration,
    /// Kafka: the tansu binary (default: where `.ci/run` installs it).
    #[arg(long, env = "HOOKD_TANSU_BIN")]
    tansu: Option<PathBuf>,
    /// Kafka: partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Kafka: records stored in one batch at most (the source's batch_size).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Kafka: a librdkafka setting for hookd's consumer, as KEY=VALUE (repeatable).
    #[arg(long = "kafka-property", value_parser = parse_key_value)]
    kafka_properties: Vec<(String, String)>,
    /// Path of the hookd binary.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/hookd"))]
    hookd: PathBuf,
    /// Extra environment variable for hookd, as KEY=VALUE (repeatable), for
    /// example HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT=64.
    #[arg(long = "hookd-env", value_parser = parse_key_value)]
    hookd_env: Vec<(String, String)>,
    /// PostgreSQL server to run hookd on instead of SQLite, as the URL of a
    /// database the harness may connect to and run CREATE DATABASE from, for
    /// example postgres://postgres@127.0.0.1:5432/postgres. The harness
    /// creates a fresh database for the run, gives its URL to every node as
    /// HOOKD_DATABASE_URL, and drops it at the end. Throughput, fanout,
    /// latency and isolation only.
    #[arg(long)]
    database_url: Option<String>,
    /// hookd nodes sharing the --database-url database, each with its own
    /// port, data directory, log and HOOKD_NODE_ID (bench-node-0, …). The
    /// load generator spreads its connections over their APIs.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Print the row in the wide table of cluster runs (store, nodes,
    /// PostgreSQL CPU, CPU per 1,000 messages) on SQLite too; always on with
    /// --database-url.
    #[arg(long)]
    wide: bool,
    /// Append the result row to this Markdown file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Keep hookd's data directory and log instead of deleting them.
    #[arg(long)]
    keep_data: bool,
    /// Keep the run's PostgreSQL database instead of dropping it.
    #[arg(long)]
    keep_database: bool,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("invalid {text:?}; expected KEY=VALUE")),
    }
}

fn main() -> anyhow::Result<()> {
    clock::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let mut row = runtime.block_on(run_on_store(&cli))?;
    if !cli.hookd_env.is_empty() {
        let overrides: Vec<String> = cli
            .hookd_env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        row.scenario = format!("{} ({})", row.scenario, overrides.join(", "));
    }
    report::emit(&row, cli.markdown.as_deref())?;
    // Hung receiver connections would keep the runtime's shutdown waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Checks the cluster options, creates the run's database when there is a
/// --database-url, runs the scenario, and drops the database whatever the
/// outcome (unless --keep-database).
async fn run_on_store(cli: &Cli) -> anyhow::Result<report::Row> {
    check_cluster_options(cli.scenario, cli.database_url.is_some(), cli.nodes)?;
    let Some(server_url) = &cli.database_url else {
        return run(cli, None).await;
    };
    let database = postgres::RunDatabase::create(server_url).await?;
    eprintln!(
        "created database {} for {} node(s)",
        database.name, cli.nodes
    );
    let cluster = ClusterSettings {
        database_url: database.url.clone(),
        nodes: cli.nodes,
    };
    let outcome = run(cli, Some(cluster)).await;
    if cli.keep_database {
        eprintln!(
            "kept database {}; drop it with DROP DATABASE {} WITH (FORCE)",
            database.name, database.name
        );
    } else {
        let name = database.name.clone();
        match database.drop_database().await {
            Ok(()) => eprintln!("dropped database {name}"),
            Err(err) => eprintln!("{err:#}"),
        }
    }
    outcome
}

/// Rejects --nodes without --database-url, and --database-url with a
/// scenario that reads hookd's SQLite file or does not use the load generator.
fn check_cluster_options(scenario: Scenario, database: bool, nodes: usize) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("invalid --nodes 0; expected 1 or more");
    }
    if nodes > 1 && !database {
        bail!("--nodes {nodes} needs --database-url: only nodes on PostgreSQL can share work");
    }
    if database && matches!(scenario, Scenario::Backlog | Scenario::Kafka) {
        bail!(
            "--database-url works with throughput, fanout, latency and isolation, not with {scenario:?}"
        );
    }
    Ok(())
}

async fn run(cli: &Cli, cluster: Option<ClusterSettings>) -> anyhow::Result<report::Row> {
    if !cli.hookd.is_file() {
        bail!(
            "no hookd binary at {}; run `cargo build --release` in the hookd crate or pass --hookd PATH",
            cli.hookd.display()
        );
    }
    let default_duration = match cli.scenario {
        Scenario::Fanout | Scenario::Isolation => Duration::from_secs(30),
        Scenario::Backlog | Scenario::Kafka => Duration::from_secs(600),
        Scenario::Throughput | Scenario::Latency => Duration::from_secs(60),
    };
    let rate = match cli.scenario {
        Scenario::Latency => Some(cli.rate.unwrap_or(7500.0)),
        Scenario::Isolation => Some(cli.rate.unwrap_or(20.0)),
        _ => cli.rate,
    };
    if let Some(invalid) = rate.filter(|r| !(*r > 0.0 && r.is_finite())) {
        bail!("invalid --rate {invalid}; expected a positive number of messages per second");
    }
    let settings = RunSettings {
        hookd: cli
            .hookd
            .canonicalize()
            .with_context(|| format!("invalid --hookd {}", cli.hookd.display()))?,
        hookd_env: cli.hookd_env.clone(),
        warmup: cli.warmup,
        duration: cli.duration.unwrap_or(default_duration),
        drain_timeout: cli.drain_timeout,
        connections: cli.connections,
        rate,
        max_messages: cli.max_messages,
        keep_data: cli.keep_data,
        cluster,
        wide: cli.wide,
    };
    let ok = (EndpointKind::Receiver(Behaviour::Ok), true);
    let rate_label = |r: Option<f64>| r.map_or("max rate".to_owned(), |r| format!("{r:.0} msg/s"));

    match cli.scenario {
        Scenario::Throughput => {
            let layout = Layout {
                label: format!("throughput, 1 endpoint, {}", rate_label(rate)),
                apps: 1,
                endpoints: vec![ok],
            };
            scenarios::run_deliveries(&settings, layout).await
        }
        Scenario::Fanout => {
            let layout = Layout {
                label: format!("fanout, 100 endpoints, {}", rate_label(rate)),
                apps: 1,
                endpoints: vec![ok; 100],
            };
            scenarios::run_deliveries(&settings, layout).await
        }
        Scenario::Latency => {
            let layout = Layout {
                label: format!("latency, 1 endpoint, {}", rate_label(rate)),
                apps: 1,
                endpoints: vec![ok],
            };
            scenarios::run_deliveries(&settings, layout).await
        }
        Scenario::Isolation => {
            let endpoints = cli.endpoints.unwrap_or(1000);
            let apps = cli.apps.unwrap_or(10);
            check_layout(endpoints, apps)?;
            let per_app = endpoints / apps;
            let healthy_per_app = (per_app / 10).max(1);
            let bad = bad_kind(cli.bad, cli.slow_delay);
            // Within each application the first tenth of the endpoints are healthy.
            let layout = Layout {
                label: format!(
                    "isolation, {endpoints} endpoints ({} healthy, rest {}), {}",
                    healthy_per_app * apps,
                    bad_name(cli.bad, cli.slow_delay),
                    rate_label(rate)
                ),
                apps,
                endpoints: (0..endpoints)
                    .map(|i| {
                        if i % per_app < healthy_per_app {
                            ok
                        } else {
                            (bad, false)
                        }
                    })
                    .collect(),
            };
            scenarios::run_deliveries(&settings, layout).await
        }
        Scenario::Backlog => {
            let endpoints = cli.endpoints.unwrap_or(10_000);
            let apps = cli.apps.unwrap_or(100);
            check_layout(endpoints, apps)?;
            if matches!(cli.bad, Bad::Ok | Bad::Slow) {
                bail!("backlog needs endpoints that never succeed: use --bad hang, fail or closed");
            }
            let layout = Layout {
                label: format!(
                    "backlog, {endpoints} endpoints {}, {} messages",
                    bad_name(cli.bad, cli.slow_delay),
                    cli.messages
                ),
                apps,
                endpoints: vec![(bad_kind(cli.bad, cli.slow_delay), false); endpoints],
            };
            let backlog = BacklogSettings {
                messages: cli.messages,
                settle: cli.settle,
                deliver_timeout: Duration::from_secs(120),
                probe_again_after: cli.probe_again_after,
            };
            scenarios::run_backlog(&settings, layout, &backlog).await
        }
        Scenario::Kafka => {
            let tansu = match &cli.tansu {
                Some(path) => path.clone(),
                None => PathBuf::from(std::env::var("HOME").context("HOME is not set")?)
                    .join(".cache/hookd-ci/tansu-0.6.0/bin/tansu"),
            };
            let kafka = kafka::KafkaSettings {
                tansu,
                records: cli.messages,
                partitions: cli.partitions,
                endpoints: cli.endpoints.unwrap_or(1),
                batch_size: cli.batch_size,
                properties: cli.kafka_properties.clone(),
            };
            kafka::run_kafka(&settings, &kafka).await
        }
    }
}

fn check_layout(endpoints: usize, apps: usize) -> anyhow::Result<()> {
    if apps == 0 || endpoints == 0 || !endpoints.is_multiple_of(apps) {
        bail!(
            "invalid layout: --endpoints {endpoints} must be a positive multiple of --apps {apps}"
        );
    }
    Ok(())
}

fn bad_kind(bad: Bad, slow_delay: Duration) -> EndpointKind {
    match bad {
        Bad::Hang => EndpointKind::Receiver(Behaviour::Hang),
        Bad::Slow => EndpointKind::Receiver(Behaviour::Slow(slow_delay)),
        Bad::Fail => EndpointKind::Receiver(Behaviour::Fail),
        Bad::Ok => EndpointKind::Receiver(Behaviour::Ok),
        Bad::Closed => EndpointKind::Closed,
    }
}

fn bad_name(bad: Bad, slow_delay: Duration) -> String {
    match bad {
        Bad::Slow => format!("slow {}", humantime::format_duration(slow_delay)),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_options_accept_nodes_on_postgres() {
        assert!(check_cluster_options(Scenario::Throughput, false, 1).is_ok());
        assert!(check_cluster_options(Scenario::Throughput, true, 3).is_ok());
        assert!(check_cluster_options(Scenario::Fanout, true, 1).is_ok());
    }

    #[test]
    fn cluster_options_reject_nodes_without_database() {
        let err = check_cluster_options(Scenario::Throughput, false, 2).unwrap_err();
        assert!(err.to_string().contains("needs --database-url"), "{err}");
        assert!(check_cluster_options(Scenario::Throughput, true, 0).is_err());
    }

    #[test]
    fn cluster_options_reject_sqlite_only_scenarios() {
        assert!(check_cluster_options(Scenario::Backlog, true, 1).is_err());
        assert!(check_cluster_options(Scenario::Kafka, true, 1).is_err());
        assert!(check_cluster_options(Scenario::Backlog, false, 1).is_ok());
    }
}
