//! Records attempts in batches: every attempt that finishes while the
//! previous batch is being committed goes into the next store job together,
//! so the single store writer runs one job per batch instead of one per
//! attempt.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::model::{Attempt, Millis};
use crate::store::deliveries::{self, NextStep, RecordRules};
use crate::store::messages::NewDelivery;
use crate::store::{Store, StoreError};

/// Attempts in one store job at most.
const MAX_BATCH: usize = 4096;
/// Batches being committed at once at most: one in the commit under way and
/// one gathering into the next.
const BATCHES_IN_FLIGHT: usize = 2;

struct Record {
    attempt: Attempt,
    next: NextStep,
    finished: Millis,
    reply: oneshot::Sender<Result<Vec<NewDelivery>, StoreError>>,
}

/// Handle to the recording task; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    records: mpsc::UnboundedSender<Record>,
}

impl Recorder {
    /// Starts the recording task, which runs until every handle is dropped.
    pub fn start(
        store: Store,
        disable_after_ms: Option<Millis>,
        operational_app_id: Option<String>,
    ) -> Self {
        let (records, mut incoming) = mpsc::unbounded_channel::<Record>();
        let operational_app_id: Option<Arc<str>> = operational_app_id.map(Arc::from);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = incoming.recv().await {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(record) => batch.push(record),
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                let operational_app_id = operational_app_id.clone();
                tokio::spawn(async move {
                    commit_batch(&store, batch, disable_after_ms, operational_app_id).await;
                    drop(permit);
                });
            }
        });
        Self { records }
    }

    /// Records an attempt and the delivery's next step; returns once durable.
    pub async fn record(
        &self,
        attempt: Attempt,
        next: NextStep,
        finished: Millis,
    ) -> Result<Vec<NewDelivery>, StoreError> {
        let (reply, result) = oneshot::channel();
        self.records
            .send(Record {
                attempt,
                next,
                finished,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Unavailable)?
    }
}

async fn commit_batch(
    store: &Store,
    batch: Vec<Record>,
    disable_after_ms: Option<Millis>,
    operational_app_id: Option<Arc<str>>,
) {
    let (work, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|record| ((record.attempt, record.next, record.finished), record.reply))
        .unzip();
    let size = work.len();
    let result = store
        .write(move |conn| {
            let rules = RecordRules {
                disable_after_ms,
                operational_app_id: operational_app_id.as_deref(),
            };
            work.iter()
                .map(|(attempt, next, finished)| {
                    deliveries::record_attempt(conn, attempt, *next, *finished, &rules)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    match result {
        Ok(created) => {
            for (reply, new_deliveries) in replies.into_iter().zip(created) {
                let _ = reply.send(Ok(new_deliveries));
            }
        }
        Err(err) => {
            // The whole batch rolled back; every delivery in it stays pending.
            tracing::error!(error = %err, attempts = size, "cannot record a batch of attempts");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
        }
    }
}
