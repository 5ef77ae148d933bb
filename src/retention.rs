//! The retention job: at start and then every `retention_interval`, it
//! expunges the payloads of messages and the response bodies of attempts
//! older than `retention_period`, and deletes ended recover and replay
//! tasks last changed before then.
//!
//! Rows stay: a message keeps its id, event type, channels and delivery
//! history, and an attempt its status code and timing, so listings, endpoint
//! statistics and recover windows keep working. The API shows an expunged
//! payload as `{"expired":true}` and an expunged response as `EXPUNGED`, as
//! the Svix API does. A pending delivery whose payload is expunged is
//! canceled at its next attempt.

use std::time::Duration;

use tokio::sync::watch;

use crate::model::{now_ms, Millis};
use crate::store::{retention, tasks, Store, StoreError};
use crate::telemetry::metric;

/// Rows changed per write job at most, so the writer is never held for long.
const BATCH_ROWS: usize = 1000;

/// Starts the job, which stops once `stop` turns true.
pub fn start(
    store: Store,
    period: Duration,
    interval: Duration,
    is_leader: crate::recovery::Leader,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let period_ms = period.as_millis() as Millis;
    tokio::spawn(async move {
        loop {
            let cutoff = now_ms() - period_ms;
            // In a cluster one node runs the job, at its own interval.
            let outcome = if is_leader() {
                expunge_before(&store, cutoff, &stop).await
            } else {
                Ok(Totals::default())
            };
            match outcome {
                Ok(totals) if totals.messages + totals.attempts + totals.tasks > 0 => {
                    tracing::info!(
                        messages = totals.messages,
                        attempts = totals.attempts,
                        tasks = totals.tasks,
                        "expunged content older than the retention period"
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "the retention job failed; it runs again at the next interval");
                    metrics::counter!(metric::STORE_ERRORS, "operation" => "retention")
                        .increment(1);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    })
}

/// Rows changed by one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Message payloads expunged.
    pub messages: usize,
    /// Attempt response bodies expunged.
    pub attempts: usize,
    /// Ended tasks deleted.
    pub tasks: usize,
}

/// Expunges what was made before `cutoff`, batch by batch, stopping early
/// when `stop` turns true.
pub async fn expunge_before(
    store: &Store,
    cutoff: Millis,
    stop: &watch::Receiver<bool>,
) -> Result<Totals, StoreError> {
    Ok(Totals {
        messages: in_batches(store, stop, move |conn| {
            retention::expunge_messages(conn, cutoff, BATCH_ROWS)
        })
        .await?,
        attempts: in_batches(store, stop, move |conn| {
            retention::expunge_attempts(conn, cutoff, BATCH_ROWS)
        })
        .await?,
        tasks: in_batches(store, stop, move |conn| {
            let deleted = tasks::delete_ended_before(conn, cutoff, BATCH_ROWS)?;
            Ok(retention::Batch {
                examined: deleted,
                expunged: deleted,
            })
        })
        .await?,
    })
}

/// Runs `batch` in one write job after another until one looks at fewer
/// than [`BATCH_ROWS`] rows or `stop` turns true, and returns the rows changed.
async fn in_batches(
    store: &Store,
    stop: &watch::Receiver<bool>,
    batch: impl Fn(&crate::store::Conn) -> Result<retention::Batch, StoreError> + Clone + Send + 'static,
) -> Result<usize, StoreError> {
    let mut changed = 0;
    loop {
        let done = store.write(batch.clone()).await?;
        changed += done.expunged;
        if done.examined < BATCH_ROWS || *stop.borrow() {
            return Ok(changed);
        }
        tokio::task::yield_now().await;
    }
}
