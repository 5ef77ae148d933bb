//! Stream sources: Kafka topics and NATS JetStream streams whose records
//! become messages.
//!
//! Each source reads records in batches, maps them with its [`Mapping`],
//! stores the whole batch (messages, their deliveries and dead letters) in
//! one store job, and acknowledges the records to the broker only after that
//! job has committed. A record read twice maps to the same event id, so it
//! becomes one message. A record that cannot become a message is stored as a
//! dead letter with its reason and acknowledged like the others, so it never
//! blocks the records behind it.
//!
//! - [`mapping`]: record to message.
//! - [`kafka`], [`nats`]: the consumers.

pub mod kafka;
pub mod mapping;
pub mod nats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use mapping::{Mapping, Rejection};

use crate::delivery::Engine;
use crate::model::{ids, now_ms, Message, Millis};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::{applications, event_types, messages, Store, StoreError};
use crate::telemetry::metric;

/// Records taken into one batch at most, unless a source sets `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// The `[sources]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub kafka: Vec<kafka::KafkaConfig>,
    #[serde(default)]
    pub nats: Vec<nats::NatsConfig>,
}

impl SourcesConfig {
    /// Checks every source, naming the key of the first invalid value.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = Vec::new();
        for (index, source) in self.kafka.iter().enumerate() {
            source.validate(&format!("sources.kafka[{index}]"))?;
            names.push(source.name(index));
        }
        for (index, source) in self.nats.iter().enumerate() {
            source.validate(&format!("sources.nats[{index}]"))?;
            names.push(source.name(index));
        }
        for (i, name) in names.iter().enumerate() {
            crate::api::validate::uid("name", name).map_err(|_| {
                format!("source name {name:?} must be 1 to 256 characters from a-z, A-Z, 0-9, '-', '_' and '.'")
            })?;
            if names[..i].contains(name) {
                return Err(format!(
                    "two sources are named {name:?}; give each a unique name"
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.kafka.is_empty() && self.nats.is_empty()
    }
}

/// Counters and state of one running source, shown by the API.
#[derive(Debug)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    records: AtomicU64,
    created: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    /// Records in the stream not yet consumed; -1 when unknown.
    lag: AtomicI64,
    state: Mutex<State>,
}

#[derive(Debug, Clone)]
struct State {
    state: &'static str,
    last_error: Option<String>,
    last_batch_at: Option<Millis>,
}

/// A snapshot of [`SourceStatus`] in the API's shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusOut {
    pub name: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub records_consumed: u64,
    pub messages_created: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub lag: Option<i64>,
    pub last_error: Option<String>,
    pub last_batch_at: Option<String>,
}

impl SourceStatus {
    pub fn new(name: String, kind: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            kind,
            records: AtomicU64::new(0),
            created: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            state: Mutex::new(State {
                state: "starting",
                last_error: None,
                last_batch_at: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("status lock is never poisoned")
    }

    /// Sets the state: `starting`, `running`, `retrying` or `stopped`.
    pub fn set_state(&self, state: &'static str) {
        self.lock().state = state;
    }

    /// Records a failure; the source goes on retrying.
    pub fn set_error(&self, error: String) {
        let mut guard = self.lock();
        guard.state = "retrying";
        guard.last_error = Some(error);
    }

    pub fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
        metrics::gauge!(metric::SOURCE_LAG, "source" => self.name.clone()).set(lag as f64);
    }

    fn count(&self, outcomes: &[Outcome]) {
        let mut created = 0;
        let mut duplicates = 0;
        for outcome in outcomes {
            match outcome {
                Outcome::Created => created += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::DeadLettered(kind) => {
                    self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric::SOURCE_DEAD_LETTERS, "source" => self.name.clone(), "reason" => *kind)
                        .increment(1);
                }
            }
        }
        self.records
            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        self.created.fetch_add(created, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        let name = self.name.clone();
        metrics::counter!(metric::SOURCE_RECORDS, "source" => name.clone())
            .increment(outcomes.len() as u64);
        metrics::counter!(metric::SOURCE_MESSAGES, "source" => name.clone()).increment(created);
        metrics::counter!(metric::MESSAGES_ACCEPTED).increment(created);
        metrics::counter!(metric::MESSAGES_DEDUPLICATED).increment(duplicates);
        let mut guard = self.lock();
        guard.state = "running";
        guard.last_error = None;
        guard.last_batch_at = Some(now_ms());
    }

    pub fn snapshot(&self) -> StatusOut {
        let state = self.lock().clone();
        let lag = self.lag.load(Ordering::Relaxed);
        StatusOut {
            name: self.name.clone(),
            kind: self.kind,
            state: state.state,
            records_consumed: self.records.load(Ordering::Relaxed),
            messages_created: self.created.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            lag: (lag >= 0).then_some(lag),
            last_error: state.last_error,
            last_batch_at: state.last_batch_at.map(crate::api::rfc3339),
        }
    }
}

/// One record of a batch, mapped or rejected, with what a dead letter keeps.
#[derive(Debug)]
pub struct Item {
    pub origin: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub mapped: Result<mapping::Mapped, Rejection>,
}

/// The outcome of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// The event id was already used: the record was read before.
    Duplicate,
    /// Stored as a dead letter, with the reason's kind.
    DeadLettered(&'static str),
}

/// Stores records as messages or dead letters, and hands the new deliveries
/// to the delivery engine.
#[derive(Clone)]
pub struct Ingest {
    pub store: Store,
    pub engine: Engine,
    pub max_payload_bytes: usize,
}

impl Ingest {
    /// Stores a batch in one store job and returns each record's outcome, in
    /// order. When it fails, nothing of the batch is stored.
    pub async fn store_batch(
        &self,
        status: &SourceStatus,
        items: Arc<Vec<Item>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let source = status.name.clone();
        let (outcomes, deliveries) = self
            .store
            .write(move |conn| store_items(conn, &source, &items))
            .await?;
        self.engine.enqueue(deliveries);
        if outcomes.contains(&Outcome::Created) {
            self.engine.messages_stored();
        }
        status.count(&outcomes);
        Ok(outcomes)
    }
}

fn store_items(
    conn: &crate::store::Conn,
    source: &str,
    items: &[Item],
) -> Result<(Vec<Outcome>, Vec<messages::NewDelivery>), StoreError> {
    let now = now_ms();
    // Lookups repeat within a batch: most records name few applications.
    let mut apps: HashMap<String, Option<String>> = HashMap::new();
    let mut known_types: HashMap<String, bool> = HashMap::new();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut deliveries = Vec::new();

    for item in items {
        let rejection = match &item.mapped {
            Err(rejection) => rejection.clone(),
            Ok(mapped) => {
                let app_id = match apps.get(&mapped.application) {
                    Some(found) => found.clone(),
                    None => {
                        let found = applications::get(conn, &mapped.application)?.map(|a| a.id);
                        apps.insert(mapped.application.clone(), found.clone());
                        found
                    }
                };
                let type_known = match known_types.get(&mapped.event_type) {
                    Some(known) => *known,
                    None => {
                        let known = event_types::get(conn, &mapped.event_type)?
                            .is_some_and(|t| !t.archived);
                        known_types.insert(mapped.event_type.clone(), known);
                        known
                    }
                };
                match (app_id, type_known) {
                    (None, _) => Rejection::new(
                        mapping::reason::UNKNOWN_APPLICATION,
                        format!("no application has the id or uid {:?}", mapped.application),
                    ),
                    (Some(_), false) => Rejection::new(
                        mapping::reason::UNKNOWN_EVENT_TYPE,
                        format!(
                            "the event type {:?} does not exist or is archived; create it with POST /api/v1/event-type",
                            mapped.event_type
                        ),
                    ),
                    (Some(app_id), true) => {
                        let created = messages::create(
                            conn,
                            Message {
                                id: ids::new_id(ids::MESSAGE),
                                app_id,
                                event_type: mapped.event_type.clone(),
                                event_id: Some(mapped.event_id.clone()),
                                channels: None,
                                tags: None,
                                payload: Some(mapped.payload.clone()),
                                created_at: now,
                            },
                        )?;
                        if created.is_new {
                            deliveries.extend(created.deliveries);
                            outcomes.push(Outcome::Created);
                        } else {
                            outcomes.push(Outcome::Duplicate);
                        }
                        continue;
                    }
                }
            }
        };
        dead_letters::insert(
            conn,
            &DeadLetter {
                id: ids::new_id(ids::DEAD_LETTER),
                source: source.to_owned(),
                origin: item.origin.clone(),
                reason: rejection.reason,
                reason_kind: rejection.kind.to_owned(),
                key: item.key.clone(),
                value: item.value.clone(),
                created_at: now,
            },
        )?;
        outcomes.push(Outcome::DeadLettered(rejection.kind));
    }
    Ok((outcomes, deliveries))
}

/// The running sources, shared with the API.
pub type Registry = Arc<Vec<Arc<SourceStatus>>>;

/// Starts every configured source. Each stops when `stop` turns true,
/// after acknowledging what it stored.
pub fn start(
    config: &SourcesConfig,
    ingest: Ingest,
    stop: watch::Receiver<bool>,
) -> (Registry, Vec<JoinHandle<()>>) {
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    for (index, source) in config.kafka.iter().enumerate() {
        let status = SourceStatus::new(source.name(index), "kafka");
        statuses.push(status.clone());
        tasks.push(tokio::spawn(kafka::run(
            source.clone(),
            ingest.clone(),
            status,
            stop.clone(),
        )));
    }
    for (index, source) in config.nats.iter().enumerate() {
        let status = SourceStatus::new(source.name(index), "nats");
        statuses.push(status.clone());
        tasks.push(tokio::spawn(nats::run(
            source.clone(),
            ingest.clone(),
            status,
            stop.clone(),
        )));
    }
    (Arc::new(statuses), tasks)
}

/// Waits `delay`, or less when `stop` turns true. Returns true when stopping.
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(|stopped| *stopped) => return true,
    }
    *stop.borrow()
}

/// Stores a batch, retrying with backoff while the store fails. Returns
/// `None` when asked to stop before the batch was stored, so the caller
/// acknowledges nothing.
pub(crate) async fn store_with_retry(
    ingest: &Ingest,
    status: &SourceStatus,
    stop: &mut watch::Receiver<bool>,
    items: Vec<Item>,
) -> Option<Vec<Outcome>> {
    let items = Arc::new(items);
    let mut delay = Duration::from_millis(100);
    loop {
        match ingest.store_batch(status, items.clone()).await {
            Ok(outcomes) => return Some(outcomes),
            Err(err) => {
                tracing::warn!(source = %status.name, error = %err, "cannot store a batch of records; retrying");
                metrics::counter!(metric::STORE_ERRORS, "operation" => "source_batch").increment(1);
                status.set_error(format!("cannot store records: {err}"));
                if pause(stop, delay).await {
                    return None;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
