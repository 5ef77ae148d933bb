//! The runner of recover, replay-missing and bulk replay tasks.
//!
//! The API stores a task and returns. One Tokio task then advances every
//! running task, a page at a time and one task after another. For each page
//! it reads the messages on a read connection, then creates their
//! deliveries and moves the task's cursor in one write job (see
//! [`crate::store::tasks`]). Tasks found running at start are resumed from
//! their cursor.
//!
//! A task yields to the endpoint's normal traffic: it adds no page while the
//! endpoint has [`MAX_DUE_BEFORE_PAGE`] or more deliveries due, so new
//! messages never wait behind a whole recovery, and a task for an endpoint
//! whose circuit breaker is open waits for it to recover.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::delivery::Engine;
use crate::model::{now_ms, Task, TaskStatus};
use crate::store::tasks::{self, Scan};
use crate::store::{deliveries, endpoints, Store, StoreError};
use crate::telemetry::metric;

/// Messages one step of a task looks at, at most. It creates at most this
/// many deliveries in one transaction.
pub const PAGE_MESSAGES: usize = 500;
/// A task adds no page while its endpoint has this many deliveries due.
pub const MAX_DUE_BEFORE_PAGE: usize = 500;
/// Running tasks loaded per round at most; later ones wait for a round
/// with room.
const TASKS_PER_ROUND: usize = 100;
/// Pause when no task could take a step, such as when every endpoint has
/// enough work due.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Time between two checks of a cluster node that does not run the tasks
/// whether it has become the one that does.
const FOLLOWER_WAIT: Duration = Duration::from_secs(1);
/// Pause after a store error before the next round.
const ERROR_WAIT: Duration = Duration::from_secs(1);

/// Tells whether this node runs the jobs that only one node of a cluster
/// may run; always true on a single node.
pub type Leader = Arc<dyn Fn() -> bool + Send + Sync>;

/// Handle to the runner; cheap to clone.
#[derive(Clone)]
pub struct Recovery {
    /// Wakes the runner when it sleeps for want of running tasks.
    wake: Arc<Notify>,
}

impl Recovery {
    /// Starts the runner, which stops between two steps once `stop` turns
    /// true, and runs tasks only while `is_leader` returns true.
    pub fn start(
        store: Store,
        engine: Engine,
        is_leader: Leader,
        stop: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let handle = tokio::spawn(run(store, engine, wake.clone(), is_leader, stop));
        (Self { wake }, handle)
    }

    /// Tells the runner that a task was created.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn run(
    store: Store,
    engine: Engine,
    wake: Arc<Notify>,
    is_leader: Leader,
    mut stop: watch::Receiver<bool>,
) {
    let mut first_round = true;
    loop {
        if *stop.borrow() {
            return;
        }
        // In a cluster one node runs the tasks; two would step the same
        // task at once and create its deliveries twice.
        if !is_leader() {
            pause(FOLLOWER_WAIT, &wake, &mut stop).await;
            continue;
        }
        let running = match store
            .read(|conn| tasks::running(conn, TASKS_PER_ROUND))
            .await
        {
            Ok(running) => running,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the running tasks; will try again");
                metrics::counter!(metric::STORE_ERRORS, "operation" => "task_step").increment(1);
                pause(ERROR_WAIT, &wake, &mut stop).await;
                continue;
            }
        };
        if first_round && !running.is_empty() {
            tracing::info!(tasks = running.len(), "resuming recover and replay tasks");
        }
        first_round = false;
        if running.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }

        let mut progressed = false;
        let mut failed = false;
        for task in running {
            if *stop.borrow() {
                return;
            }
            let task_id = task.id.clone();
            match step(&store, &engine, task).await {
                Ok(stepped) => progressed |= stepped,
                Err(err) => {
                    tracing::error!(task_id = %task_id, error = %err, "a recover or replay step failed; it is tried again");
                    metrics::counter!(metric::STORE_ERRORS, "operation" => "task_step")
                        .increment(1);
                    failed = true;
                }
            }
        }
        if failed {
            pause(ERROR_WAIT, &wake, &mut stop).await;
        } else if !progressed {
            pause(IDLE_WAIT, &wake, &mut stop).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn pause(duration: Duration, wake: &Notify, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = wake.notified() => {}
        _ = stop.changed() => {}
    }
}

/// Advances a task by one page. Returns false when it had to wait for its
/// endpoint's due work to drain.
async fn step(store: &Store, engine: &Engine, task: Task) -> Result<bool, StoreError> {
    let endpoint_id = task.endpoint_id.clone();
    let endpoint = store
        .read(move |conn| endpoints::get_by_id(conn, &endpoint_id))
        .await?;
    let scan = match endpoint {
        Some(endpoint) if !endpoint.disabled => {
            let (id, now) = (endpoint.id.clone(), now_ms());
            let due = store
                .read(move |conn| {
                    deliveries::count_due_for_endpoint(conn, &id, now, MAX_DUE_BEFORE_PAGE)
                })
                .await?;
            if due >= MAX_DUE_BEFORE_PAGE {
                return Ok(false);
            }
            let scanned = task.clone();
            store
                .read_blocking(move |conn| tasks::scan(conn, &scanned, &endpoint, PAGE_MESSAGES))
                .await?
        }
        // Applying an empty page to a task whose endpoint is gone or
        // disabled marks the task failed.
        _ => Scan {
            from: task.cursor.clone(),
            picked: Vec::new(),
            last: None,
            in_window: 0,
            done: false,
        },
    };

    let task_id = task.id.clone();
    let outcome = store
        .write(move |conn| tasks::apply_page(conn, &task_id, &scan, now_ms()))
        .await?;
    engine.enqueue(outcome.deliveries);
    if let Some(done) = outcome.task.filter(|t| t.status != TaskStatus::Running) {
        log_end(&done);
    }
    Ok(true)
}

fn log_end(task: &Task) {
    match task.status {
        TaskStatus::Failed => tracing::warn!(
            task_id = %task.id,
            task = task.kind.name(),
            endpoint_id = %task.endpoint_id,
            messages_sent = task.messages_sent,
            error = task.error.as_deref().unwrap_or(""),
            "task stopped before its end"
        ),
        _ => tracing::info!(
            task_id = %task.id,
            task = task.kind.name(),
            endpoint_id = %task.endpoint_id,
            messages_scanned = task.messages_scanned,
            messages_sent = task.messages_sent,
            messages_expunged = task.messages_expunged,
            "task finished"
        ),
    }
}
