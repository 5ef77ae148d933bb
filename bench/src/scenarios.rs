//! The scenarios: each starts a receiver and a fresh hookd, creates
//! applications and endpoints, sends load, waits for the tail of deliveries
//! and returns a table row.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::{self, ApiConnection};
use crate::clock;
use crate::hookd::{free_port, Hookd, HookdSettings, ProcSample};
use crate::load::{self, LoadCounters, LoadSettings, Target};
use crate::nodes::{count_log_levels, format_partitions, ClusterSettings, Nodes};
use crate::receiver::{Behaviour, Receiver, ReceiverState};
use crate::report::{self, CostFigures, Row, Window};
use crate::window::{self, EdgeSample, WindowCpu};

/// Connections used to create applications and endpoints.
const SETUP_CONNECTIONS: usize = 16;
/// Time a stopped hookd gets to exit before it is killed. hookd itself waits
/// up to its request timeout (10 s by default) plus 1 s for attempts in flight.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often progress is printed to standard error.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Target of an endpoint URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// A path of the receiver.
    Receiver(Behaviour),
    /// A port of 127.0.0.1 with no listener: every connection is refused.
    Closed,
}

/// Applications and endpoints of a scenario. Endpoint `i` belongs to
/// application `i * apps / endpoints.len()`, so every application gets the
/// same share.
#[derive(Debug, Clone)]
pub struct Layout {
    pub label: String,
    pub apps: usize,
    /// Each endpoint's kind and whether its deliveries are measured.
    pub endpoints: Vec<(EndpointKind, bool)>,
}

impl Layout {
    fn app_of(&self, endpoint: usize) -> usize {
        endpoint * self.apps / self.endpoints.len()
    }

    fn measured_per_app(&self) -> Vec<u64> {
        let mut counts = vec![0; self.apps];
        for (index, (_, measured)) in self.endpoints.iter().enumerate() {
            if *measured {
                counts[self.app_of(index)] += 1;
            }
        }
        counts
    }
}

/// Settings shared by every scenario, from the command line.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub hookd: PathBuf,
    pub hookd_env: Vec<(String, String)>,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain_timeout: Duration,
    pub connections: usize,
    pub rate: Option<f64>,
    pub max_messages: u64,
    pub keep_data: bool,
    /// Nodes on PostgreSQL instead of one node on SQLite.
    pub cluster: Option<ClusterSettings>,
    /// Print the row in the wide table even on SQLite.
    pub wide: bool,
}

/// A temporary folder with hookd's data directory and log.
pub(crate) struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub(crate) fn create(name: &str, keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("hookd-bench-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    fn log_megabytes(&self) -> f64 {
        std::fs::metadata(self.path.join("hookd.log")).map_or(0.0, |m| m.len() as f64 / 1e6)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept hookd data and log in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Prints counters to standard error every [`PROGRESS_EVERY`] until aborted.
/// The CPU and RSS figures add up the hookd processes `pids`.
fn spawn_progress(
    pids: Vec<u32>,
    counters: Arc<LoadCounters>,
    receiver: Arc<ReceiverState>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut previous = sum_samples(&pids);
        let mut previous_at = Instant::now();
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let sample = sum_samples(&pids);
            let cpu_percent = 100.0 * (sample.cpu_seconds - previous.cpu_seconds)
                / previous_at.elapsed().as_secs_f64();
            eprintln!(
                "[{:>4}s] accepted {} (failed {}), measured deliveries {}/{}, all requests {}, receiver connections {} (hanging {}), hookd CPU {:.0}%, RSS {:.0} MB",
                started.elapsed().as_secs(),
                counters.accepted.load(Ordering::Relaxed),
                counters.failed.load(Ordering::Relaxed),
                receiver.measured_requests.load(Ordering::Relaxed),
                counters.expected_measured.load(Ordering::Relaxed),
                receiver.total_requests.load(Ordering::Relaxed),
                receiver.open_connections.load(Ordering::Relaxed),
                receiver.hanging.load(Ordering::Relaxed),
                cpu_percent,
                sample.rss_kib as f64 / 1024.0,
            );
            previous = sample;
            previous_at = Instant::now();
        }
    })
}

/// CPU seconds and RSS of the processes `pids` added up; a process that
/// cannot be read counts as 0.
fn sum_samples(pids: &[u32]) -> ProcSample {
    let mut total = ProcSample::default();
    for pid in pids {
        let sample = ProcSample::read(*pid).unwrap_or_default();
        total.cpu_seconds += sample.cpu_seconds;
        total.rss_kib += sample.rss_kib;
    }
    total
}

/// Starts the receiver and hookd and creates the layout's applications and
/// endpoints. Returns the application ids.
async fn set_up(
    layout: &Layout,
    receiver: &Receiver,
    hookd: &Hookd,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let app_ids = api::create_apps(&hookd.api, layout.apps, SETUP_CONNECTIONS).await?;
    let closed_port = free_port()?;
    let endpoints: Vec<(String, String)> = layout
        .endpoints
        .iter()
        .enumerate()
        .map(|(index, (kind, _))| {
            let url = match kind {
                EndpointKind::Receiver(behaviour) => receiver.url(index, *behaviour),
                EndpointKind::Closed => format!("http://127.0.0.1:{closed_port}/{index}/closed"),
            };
            (app_ids[layout.app_of(index)].clone(), url)
        })
        .collect();
    api::create_endpoints(&hookd.api, &endpoints, SETUP_CONNECTIONS).await?;
    eprintln!(
        "created {} applications and {} endpoints in {:.1}s",
        layout.apps,
        layout.endpoints.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(app_ids)
}

pub(crate) fn hookd_settings(run: &RunSettings, workdir: &WorkDir) -> HookdSettings {
    HookdSettings {
        binary: run.hookd.clone(),
        data_dir: workdir.data_dir(),
        env: run.hookd_env.clone(),
    }
}

/// Runs a scenario that sends messages for `warmup + duration`, measures the
/// window after the warm-up, then waits for the tail of deliveries. With
/// `run.cluster` it runs that many nodes on PostgreSQL and waits until they
/// share the partitions before it sends.
pub async fn run_deliveries(run: &RunSettings, layout: Layout) -> anyhow::Result<Row> {
    let workdir = WorkDir::create("run", run.keep_data)?;
    let measured: Vec<bool> = layout.endpoints.iter().map(|(_, m)| *m).collect();
    let receiver = Receiver::start(measured).await?;
    let nodes = Nodes::start(
        &hookd_settings(run, &workdir),
        workdir.path(),
        run.cluster.as_ref(),
    )
    .await?;
    let partitions = match &run.cluster {
        Some(_) => Some(nodes.wait_for_partitions().await?),
        None => {
            let hookd = nodes.first();
            eprintln!(
                "hookd {} ready in {:.2}s at {}, log {}",
                hookd.pid,
                hookd.ready_after.as_secs_f64(),
                hookd.api.addr,
                hookd.log_path.display()
            );
            None
        }
    };
    let app_ids = set_up(&layout, &receiver, nodes.first()).await?;
    let measured_per_app = layout.measured_per_app();
    let targets: Arc<Vec<Target>> = Arc::new(
        app_ids
            .iter()
            .zip(&measured_per_app)
            .map(|(app_id, measured)| Target {
                app_id: app_id.clone(),
                measured_endpoints: *measured,
            })
            .collect(),
    );

    let counters = Arc::new(LoadCounters::default());
    let progress = spawn_progress(nodes.pids(), counters.clone(), receiver.state.clone());
    let load_start_us = clock::now_us();
    let window = Window {
        start_us: load_start_us + run.warmup.as_micros() as u64,
        end_us: load_start_us + (run.warmup + run.duration).as_micros() as u64,
    };
    let postgres_url = run.cluster.as_ref().map(|c| c.database_url.clone());
    let sampler = window::spawn_sampler(nodes.pids(), nodes.apis(), postgres_url, window);
    let settings = LoadSettings {
        connections: run.connections,
        rate: run.rate,
        run_for: run.warmup + run.duration,
        max_messages: run.max_messages,
    };
    let result = load::run(&nodes.apis(), targets, &settings, counters.clone()).await?;
    let (before, after) = sampler.await??;

    let drain_started = Instant::now();
    while receiver.state.measured_requests.load(Ordering::Relaxed)
        < counters.expected_measured.load(Ordering::Relaxed)
        && drain_started.elapsed() < run.drain_timeout
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_in = drain_started.elapsed();
    progress.abort();
    let end = nodes.sample()?;
    let cpu = WindowCpu::between(&before, &after);

    let arrivals = receiver.state.take_arrivals();
    let analysis = report::analyse(&result.accepted, &arrivals, &measured_per_app, window);
    let pids = nodes.pids();
    let log_paths = nodes.log_paths();
    let stopped_in = nodes.stop(STOP_TIMEOUT).await?;
    let slowest_stop = stopped_in.iter().max().copied().unwrap_or_default();

    for (index, pid) in pids.iter().enumerate() {
        let threads = after.hookd[index].threads_since(&before.hookd[index]);
        eprintln!(
            "hookd {pid} CPU by thread in the window: {}",
            format_threads(&threads)
        );
        let summary =
            after.metrics[index].summary_since(&before.metrics[index], run.duration.as_secs_f64());
        if let Some(summary) = summary {
            if run.cluster.is_some() {
                eprintln!("node {index}: hookd /metrics in the window: {summary}");
            } else {
                eprintln!("hookd /metrics in the window: {summary}");
            }
        }
    }
    let mut log_warnings = 0;
    let mut log_errors = 0;
    for path in &log_paths {
        let (warnings, errors) =
            count_log_levels(&std::fs::read_to_string(path).unwrap_or_default());
        eprintln!(
            "{}: {warnings} WARN and {errors} ERROR lines",
            path.display()
        );
        log_warnings += warnings;
        log_errors += errors;
    }
    eprintln!(
        "sent for {:.1}s; window {:.0}s; accepted {} in window ({} in all); measured deliveries in window {}; tail drained in {:.1}s; missing {}; duplicates {}; arrived before the 202 was read {}; unknown ids {}; send errors {:?}; hookd stopped in {:.1}s",
        (result.stopped_us - result.started_us) as f64 / 1e6,
        run.duration.as_secs_f64(),
        analysis.accepted_in_window,
        result.accepted.len(),
        analysis.delivered_in_window,
        drained_in.as_secs_f64(),
        analysis.missing,
        analysis.duplicates,
        analysis.before_accept,
        analysis.unknown,
        result.errors,
        slowest_stop.as_secs_f64(),
    );

    let api_latency = report::percentiles_ms(&result.api_latency);
    let mut notes = Vec::new();
    if let Some((p50, p99, _)) = api_latency {
        notes.push(format!("API p50/p99 {p50:.1}/{p99:.1} ms"));
    }
    if analysis.missing > 0 {
        notes.push(format!(
            "{} deliveries not received {:.0}s after sending stopped",
            analysis.missing,
            drained_in.as_secs_f64()
        ));
    }
    if analysis.duplicates > 0 {
        notes.push(format!("{} duplicate deliveries", analysis.duplicates));
    }
    let failed: u64 = result.errors.values().sum();
    if failed > 0 {
        notes.push(format!("{failed} sends failed"));
    }
    if let Some(held) = &partitions {
        notes.push(cluster_notes(held, &before, &after));
    }
    notes.push(format!(
        "rest of the machine {:.0}% of 1 core, steal {:.0}%",
        100.0 * cpu.rest_of_machine / run.duration.as_secs_f64(),
        100.0 * cpu.steal / run.duration.as_secs_f64()
    ));
    let log_megabytes: f64 = log_paths
        .iter()
        .map(|path| std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6))
        .sum();
    notes.push(format!("hookd log {log_megabytes:.0} MB"));
    if run.cluster.is_some() {
        notes.push(format!(
            "{log_warnings} WARN and {log_errors} ERROR log lines"
        ));
    }

    let peak_rss_mb: Vec<f64> = end
        .iter()
        .map(|sample| sample.peak_rss_kib as f64 / 1024.0)
        .collect();
    let cost = (run.wide || run.cluster.is_some()).then(|| CostFigures {
        store: if run.cluster.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        nodes: pids.len(),
        postgres_cpu_seconds: cpu.postgres,
        peak_rss_mb_per_node: peak_rss_mb.clone(),
        accepted_in_window: analysis.accepted_in_window,
        delivered_in_window: analysis.delivered_in_window,
    });
    Ok(Row {
        scenario: layout.label,
        accepted_per_second: Some(analysis.accepted_per_second),
        deliveries_per_second: Some(analysis.deliveries_per_second),
        latency_ms: report::percentiles_ms(&analysis.latency),
        hookd_cpu: Some((cpu.hookd, run.duration.as_secs_f64())),
        peak_rss_mb: peak_rss_mb.iter().copied().fold(0.0, f64::max),
        bench_cpu_seconds: Some(cpu.harness),
        notes: notes.join("; "),
        cost,
    })
}

/// Notes of a cluster run: the partitions each node held when sending
/// started, and at the window's edges when they differ, and the other
/// databases' transactions on the PostgreSQL server.
fn cluster_notes(held: &[u32], before: &EdgeSample, after: &EdgeSample) -> String {
    let at_edge = |edge: &EdgeSample| -> Vec<u32> {
        edge.metrics
            .iter()
            .map(|scrape| scrape.partitions_held.unwrap_or(0))
            .collect()
    };
    let mut note = format!("partitions {}", format_partitions(held));
    let (start, end) = (at_edge(before), at_edge(after));
    if start != held || end != held {
        note.push_str(&format!(
            " (window start {}, end {})",
            format_partitions(&start),
            format_partitions(&end)
        ));
    }
    if let Some(count) = window::other_transactions(before, after) {
        note.push_str(&format!(
            "; {count} transactions in other databases on the PostgreSQL server in the window"
        ));
    }
    note
}

fn format_threads(threads: &[(String, f64)]) -> String {
    threads
        .iter()
        .filter(|(_, seconds)| *seconds >= 0.05)
        .map(|(name, seconds)| format!("{name} {seconds:.1}s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Settings of the backlog scenario.
#[derive(Debug, Clone)]
pub struct BacklogSettings {
    /// Messages sent to fill the backlog; each reaches every endpoint of its application.
    pub messages: u64,
    /// Wait after the fill before memory is sampled and hookd is restarted.
    pub settle: Duration,
    /// How long to wait for each new message after the restart.
    pub deliver_timeout: Duration,
    /// When, after the restart's spawn, to send the second new message.
    pub probe_again_after: Duration,
}

/// Sends one message to the healthy endpoint `index` of application
/// `app_id` and returns the time from its 202 to its arrival, or `None` when
/// it did not arrive within the timeout.
async fn probe(
    connection: &mut ApiConnection,
    app_id: &str,
    receiver: &Receiver,
    index: usize,
    backlog: &BacklogSettings,
) -> anyhow::Result<Option<Duration>> {
    let before = receiver.state.requests_to(index);
    let msg_id = connection
        .create(
            &format!("/api/v1/app/{app_id}/msg"),
            &serde_json::json!({ "eventType": "bench.event", "payload": { "probe": true } }),
        )
        .await?;
    let accepted_us = clock::now_us();
    let deadline = Instant::now() + backlog.deliver_timeout;
    while receiver.state.requests_to(index) == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if receiver.state.requests_to(index) == before {
        return Ok(None);
    }
    let arrivals = receiver.state.take_arrivals();
    let Some(arrival) = arrivals.iter().find(|a| *a.msg_id == *msg_id) else {
        bail!("the healthy endpoint received a message other than {msg_id}");
    };
    Ok(Some(Duration::from_micros(
        arrival.at_us.saturating_sub(accepted_us),
    )))
}

/// Fills a backlog of pending deliveries to endpoints that never succeed,
/// samples memory, restarts hookd on the same data directory, and times the
/// delivery of a new message to a new healthy endpoint.
pub async fn run_backlog(
    run: &RunSettings,
    layout: Layout,
    backlog: &BacklogSettings,
) -> anyhow::Result<Row> {
    let workdir = WorkDir::create("backlog", run.keep_data)?;
    // One more endpoint than the layout: the healthy one created after the restart.
    let healthy_index = layout.endpoints.len();
    let mut measured = vec![false; layout.endpoints.len()];
    measured.push(true);
    let receiver = Receiver::start(measured).await?;
    let settings = hookd_settings(run, &workdir);
    let hookd = Hookd::start(&settings).await?;
    eprintln!(
        "hookd {} ready in {:.2}s, log {}",
        hookd.pid,
        hookd.ready_after.as_secs_f64(),
        hookd.log_path.display()
    );
    let app_ids = set_up(&layout, &receiver, &hookd).await?;
    let targets: Arc<Vec<Target>> = Arc::new(
        app_ids
            .iter()
            .map(|app_id| Target {
                app_id: app_id.clone(),
                measured_endpoints: 0,
            })
            .collect(),
    );

    // Fill: send `messages` as fast as the API accepts them, bounded in time.
    let counters = Arc::new(LoadCounters::default());
    let progress = spawn_progress(vec![hookd.pid], counters.clone(), receiver.state.clone());
    let before_fill = hookd.sample()?;
    let fill = LoadSettings {
        connections: run.connections,
        rate: None,
        run_for: run.duration,
        max_messages: backlog.messages,
    };
    let result = load::run(
        std::slice::from_ref(&hookd.api),
        targets,
        &fill,
        counters.clone(),
    )
    .await?;
    let fill_seconds = (result.stopped_us - result.started_us) as f64 / 1e6;
    let after_fill = hookd.sample()?;
    eprintln!(
        "fill: {} messages accepted in {fill_seconds:.1}s, errors {:?}; settling for {}s",
        result.accepted.len(),
        result.errors,
        backlog.settle.as_secs()
    );
    tokio::time::sleep(backlog.settle).await;
    let settled = hookd.sample()?;
    let pending = count_pending(&workdir.data_dir())?;
    eprintln!(
        "pending deliveries in the store: {pending}; hookd peak RSS {:.0} MB, RSS now {:.0} MB",
        settled.peak_rss_kib as f64 / 1024.0,
        settled.rss_kib as f64 / 1024.0
    );
    eprintln!(
        "hookd CPU by thread during fill and settle: {}",
        format_threads(&settled.threads_since(&before_fill))
    );
    progress.abort();

    // Restart on the same data directory.
    let stopped_in = hookd.stop(STOP_TIMEOUT).await?;
    eprintln!(
        "hookd stopped in {:.1}s; restarting",
        stopped_in.as_secs_f64()
    );
    let hookd = Hookd::start(&settings).await?;
    eprintln!(
        "hookd {} ready again in {:.2}s",
        hookd.pid,
        hookd.ready_after.as_secs_f64()
    );
    let ready_after = hookd.ready_after;
    let progress = spawn_progress(vec![hookd.pid], counters.clone(), receiver.state.clone());
    let mut connection = hookd.api.connect().await?;
    let app_id = connection
        .create(
            "/api/v1/app",
            &serde_json::json!({ "name": "bench-app-new", "uid": "bench-app-new" }),
        )
        .await?;
    connection
        .create(
            &format!("/api/v1/app/{app_id}/endpoint"),
            &serde_json::json!({ "url": receiver.url(healthy_index, Behaviour::Ok) }),
        )
        .await?;
    let first = probe(&mut connection, &app_id, &receiver, healthy_index, backlog).await?;
    let first_after_spawn = hookd.spawned.elapsed();
    // A second message once the resumed backlog has had time to take the
    // delivery slots.
    tokio::time::sleep_until((hookd.spawned + backlog.probe_again_after).into()).await;
    let second_sent_after_spawn = hookd.spawned.elapsed();
    let second = probe(&mut connection, &app_id, &receiver, healthy_index, backlog).await?;
    progress.abort();
    let restarted = hookd.sample()?;
    let stopped_again_in = hookd.stop(STOP_TIMEOUT).await?;

    let describe = |result: Option<Duration>| match result {
        Some(time) => format!("delivered {:.2}s after its 202", time.as_secs_f64()),
        None => format!(
            "NOT delivered within {}s of its 202",
            backlog.deliver_timeout.as_secs()
        ),
    };
    let outcome = format!(
        "after restart: /health 200 in {:.2}s; a new message to a new healthy endpoint sent at once {} ({:.2}s after the spawn); another sent {:.0}s after the spawn {}",
        ready_after.as_secs_f64(),
        describe(first),
        first_after_spawn.as_secs_f64(),
        second_sent_after_spawn.as_secs_f64(),
        describe(second),
    );
    eprintln!(
        "{outcome}; peak RSS after restart {:.0} MB; stopped in {:.1}s",
        restarted.peak_rss_kib as f64 / 1024.0,
        stopped_again_in.as_secs_f64()
    );

    let latency = first.map(|time| {
        let ms = time.as_secs_f64() * 1000.0;
        (ms, ms, ms)
    });
    Ok(Row {
        scenario: layout.label,
        accepted_per_second: Some(result.accepted.len() as f64 / fill_seconds),
        deliveries_per_second: None,
        latency_ms: latency,
        hookd_cpu: Some((
            after_fill.cpu_seconds - before_fill.cpu_seconds,
            fill_seconds,
        )),
        peak_rss_mb: settled.peak_rss_kib as f64 / 1024.0,
        bench_cpu_seconds: None,
        cost: None,
        notes: format!(
            "{pending} pending after fill; {outcome}; peak RSS after restart {:.0} MB; hookd log {:.0} MB",
            restarted.peak_rss_kib as f64 / 1024.0,
            workdir.log_megabytes()
        ),
    })
}

/// Counts pending deliveries (status 1) straight from hookd's SQLite file.
/// NOTE: this reads hookd's private schema (table `deliveries`, column
/// `status`) and must follow it if the schema changes.
fn count_pending(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let path = data_dir.join("hookd.sqlite3");
    let connection = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} read-only", path.display()))?;
    connection.busy_timeout(Duration::from_secs(30))?;
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM deliveries WHERE status = 1",
        [],
        |row| row.get(0),
    )?;
    Ok(count as u64)
}
