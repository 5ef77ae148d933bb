//! The Kafka source: a consumer-group member that turns records into
//! messages, using librdkafka through `rdkafka`.
//!
//! Offsets are handed to librdkafka only after the batch that contains their
//! records has committed in the store; librdkafka then commits them to the
//! group, periodically and when partitions are revoked. A crash between the
//! store commit and the offset commit makes the group read those records
//! again, and their event ids turn them into the messages already stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use serde::Deserialize;
use tokio::sync::watch;

use super::mapping::{self, Mapping, Record, StreamKind};
use super::{pause, store_with_retry, Ingest, Item, Outcome, SourceStatus, DEFAULT_BATCH_SIZE};

/// One `[[sources.kafka]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Name in the API, metrics and dead letters; default `kafka-N`.
    pub name: Option<String>,
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// Records stored in one transaction at most.
    pub batch_size: Option<usize>,
    /// A topic that receives a copy of every dead-lettered record.
    pub dead_letter_topic: Option<String>,
    /// Further librdkafka settings, such as `security.protocol`. Values
    /// are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub mapping: Mapping,
}

/// Properties that only a consumer accepts; librdkafka warns when a
/// producer is given them.
const CONSUMER_ONLY_PREFIXES: &[&str] = &[
    "queued.",
    "fetch.",
    "max.partition.fetch.bytes",
    "auto.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "statistics.interval.ms",
];

/// First and longest wait after a consumer error.
const MIN_ERROR_DELAY: Duration = Duration::from_millis(500);
const MAX_ERROR_DELAY: Duration = Duration::from_secs(10);

/// How long shutdown waits for the final offset commit and group leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka settings that hookd sets itself, because the guarantees
/// depend on them.
const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

impl KafkaConfig {
    pub fn name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("kafka-{index}"))
    }

    pub(super) fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err(format!(
                "{prefix}.brokers must list at least one broker, such as \"127.0.0.1:9092\""
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return Err(format!(
                "{prefix}.topics must list at least one topic, such as [\"events\"]"
            ));
        }
        if self.group_id.is_empty() {
            return Err(format!(
                "{prefix}.group_id must not be empty, such as \"hookd\""
            ));
        }
        check_batch_size(prefix, self.batch_size)?;
        if let Some(reserved) = self
            .properties
            .keys()
            .find(|k| RESERVED_PROPERTIES.contains(&k.as_str()))
        {
            return Err(format!(
                "{prefix}.properties: {reserved:?} is set by hookd; use brokers and group_id for the first two"
            ));
        }
        self.mapping
            .validate(&format!("{prefix}.mapping"), StreamKind::Kafka)
    }

    /// Settings shared by the consumer and the dead-letter producer.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Returns the consumer's settings: hookd's defaults, then the operator's properties.
    fn consumer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            // Bound what librdkafka prefetches while the store is busy:
            // the consumer then stops fetching instead of buffering more.
            .set("queued.max.messages.kbytes", "16384")
            // The lag in the source status comes from these statistics.
            .set("statistics.interval.ms", "5000");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Returns the dead-letter producer's settings: the operator's properties
    /// that are not consumer-only, so security settings apply to both clients.
    fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        for (key, value) in &self.properties {
            if !CONSUMER_ONLY_PREFIXES.iter().any(|p| key.starts_with(p)) {
                config.set(key, value);
            }
        }
        config
    }
}

pub(super) fn check_batch_size(prefix: &str, batch_size: Option<usize>) -> Result<(), String> {
    match batch_size {
        Some(size) if !(1..=10_000).contains(&size) => Err(format!(
            "{prefix}.batch_size must be from 1 to 10000, got {size}; such as 1000"
        )),
        _ => Ok(()),
    }
}

/// Reports the group's lag from librdkafka's periodic statistics.
struct LagReporter {
    status: Arc<SourceStatus>,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let lags = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag);
        let mut total = None;
        for lag in lags {
            *total.get_or_insert(0) += lag;
        }
        if let Some(total) = total {
            self.status.set_lag(total);
        }
    }
}

impl ConsumerContext for LagReporter {}

type KafkaConsumer = StreamConsumer<LagReporter>;

/// A record copied out of librdkafka's buffer.
struct Raw {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Raw {
    fn origin(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Consumes until `stop` turns true, then commits the offsets of what was
/// stored and leaves the group.
pub async fn run(
    config: KafkaConfig,
    ingest: Ingest,
    status: Arc<SourceStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let consumer = loop {
        match connect(&config, status.clone()) {
            Ok(consumer) => break Arc::new(consumer),
            Err(err) => {
                tracing::error!(source = %status.name, error = %err, "cannot start the Kafka consumer; retrying in 5 s");
                status.set_error(format!("cannot start the consumer: {err}"));
                if pause(&mut stop, Duration::from_secs(5)).await {
                    status.set_state("stopped");
                    return;
                }
            }
        }
    };
    let producer = match &config.dead_letter_topic {
        None => None,
        Some(_) => match config.producer_config().create::<FutureProducer>() {
            Ok(producer) => Some(producer),
            Err(err) => {
                tracing::error!(source = %status.name, error = %err, "cannot create the dead-letter producer; dead letters go to the table only");
                None
            }
        },
    };
    status.set_state("running");
    tracing::info!(source = %status.name, topics = ?config.topics, "Kafka source started");

    let batch_size = config.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    // Doubles with each consecutive consumer error, so a broker that stays
    // down is not reported twice a second.
    let mut error_delay = MIN_ERROR_DELAY;
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            batch = next_batch(&consumer, batch_size) => batch,
        };
        let raws = match batch {
            Ok(raws) => {
                error_delay = MIN_ERROR_DELAY;
                raws
            }
            Err(err) => {
                tracing::warn!(source = %status.name, error = %err, retry_in_ms = error_delay.as_millis() as u64, "Kafka consumer error");
                metrics::counter!(crate::telemetry::metric::SOURCE_ERRORS, "source" => status.name.clone(), "kind" => "consume").increment(1);
                status.set_error(format!("consumer error: {err}"));
                if pause(&mut stop, error_delay).await {
                    break;
                }
                error_delay = (error_delay * 2).min(MAX_ERROR_DELAY);
                continue;
            }
        };
        let items: Vec<Item> = raws
            .iter()
            .map(|raw| to_item(&config.mapping, raw, ingest.max_payload_bytes))
            .collect();
        let stored_at = std::time::Instant::now();
        let Some(outcomes) = store_with_retry(&ingest, &status, &mut stop, items).await else {
            break;
        };
        tracing::debug!(source = %status.name, records = raws.len(), store_us = stored_at.elapsed().as_micros() as u64, "stored a batch");
        if let (Some(producer), Some(topic)) = (&producer, &config.dead_letter_topic) {
            publish_dead_letters(producer, topic, &status, &raws, &outcomes).await;
        }
        store_offsets(&consumer, &raws);
    }

    // Commit the offsets stored so far before leaving the group, so the next
    // member starts right after the last stored record. librdkafka may block
    // for long when the broker is gone, so this runs on its own thread and
    // shutdown waits for it only a bounded time: uncommitted records are
    // read again by the next member and deduplicated.
    let name = status.name.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let closer = std::thread::Builder::new()
        .name("hookd-kafka-close".into())
        .spawn(move || {
            if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(source = %name, error = %err, "no offsets committed at shutdown");
            }
            drop(consumer);
            let _ = done_tx.send(());
        });
    if closer.is_ok() && tokio::time::timeout(CLOSE_TIMEOUT, done_rx).await.is_err() {
        tracing::warn!(source = %status.name, "the Kafka consumer did not close within {CLOSE_TIMEOUT:?}; its last offsets may be committed by the next member instead");
    }
    status.set_state("stopped");
    tracing::info!(source = %status.name, "Kafka source stopped");
}

fn connect(
    config: &KafkaConfig,
    status: Arc<SourceStatus>,
) -> rdkafka::error::KafkaResult<KafkaConsumer> {
    let mut client = config.consumer_config();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    // A new group starts at the oldest record, so nothing published before
    // hookd first started is skipped, unless the operator chose otherwise.
    if client.get("auto.offset.reset").is_none() {
        client.set("auto.offset.reset", "earliest");
    }
    let consumer: KafkaConsumer = client.create_with_context(LagReporter { status })?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Waits for one record, then takes the records already fetched, up to `max`.
async fn next_batch(consumer: &KafkaConsumer, max: usize) -> rdkafka::error::KafkaResult<Vec<Raw>> {
    let stream = consumer.stream();
    let mut stream = std::pin::pin!(stream);
    use futures_util::StreamExt;
    let first = stream
        .next()
        .await
        .expect("a Kafka message stream never ends")?;
    let mut batch = vec![copy(&first)];
    drop(first);
    while batch.len() < max {
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(copy(&message)),
            // An error ends the batch; the next call reports it if it persists.
            _ => break,
        }
    }
    Ok(batch)
}

fn copy(message: &rdkafka::message::BorrowedMessage<'_>) -> Raw {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|h| Some((h.key.to_owned(), h.value?.to_vec())))
                .collect()
        })
        .unwrap_or_default();
    Raw {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

fn to_item(mapping: &Mapping, raw: &Raw, max_payload_bytes: usize) -> Item {
    let origin = raw.origin();
    let header = |name: &str| {
        raw.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    };
    let record = Record {
        value: &raw.value,
        key: raw.key.as_deref(),
        header: &header,
        subject: None,
        origin: &origin,
    };
    let mapped = mapping::map_record(mapping, &record, max_payload_bytes);
    Item {
        origin,
        key: raw.key.clone(),
        value: raw.value.clone(),
        mapped,
    }
}

/// Hands the offset after the last record of each partition to librdkafka,
/// which commits it to the group.
fn store_offsets(consumer: &KafkaConsumer, raws: &[Raw]) {
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for raw in raws {
        let entry = last
            .entry((raw.topic.as_str(), raw.partition))
            .or_insert(raw.offset);
        *entry = (*entry).max(raw.offset);
    }
    for ((topic, partition), offset) in last {
        // `store_offset` stores offset + 1, the next record to read. It fails
        // for a partition revoked meanwhile; its new owner reads the records
        // again and their event ids deduplicate them.
        if let Err(err) = consumer.store_offset(topic, partition, offset) {
            tracing::debug!(topic, partition, offset, error = %err, "offset not stored");
        }
    }
}

async fn publish_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    status: &SourceStatus,
    raws: &[Raw],
    outcomes: &[Outcome],
) {
    for (raw, outcome) in raws.iter().zip(outcomes) {
        let Outcome::DeadLettered(kind) = outcome else {
            continue;
        };
        let origin = raw.origin();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "hookd-dead-letter-reason",
                value: Some(*kind),
            })
            .insert(Header {
                key: "hookd-origin",
                value: Some(origin.as_str()),
            });
        for (key, value) in &raw.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_slice()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(raw.value.as_slice())
            .headers(headers);
        if let Some(key) = &raw.key {
            record = record.key(key.as_slice());
        }
        if let Err((err, _)) = producer.send(record, Duration::from_secs(10)).await {
            // The dead letter is in the table; the topic copy is best effort.
            tracing::warn!(source = %status.name, %origin, error = %err, "cannot publish a dead letter to the dead-letter topic");
            metrics::counter!(crate::telemetry::metric::SOURCE_ERRORS, "source" => status.name.clone(), "kind" => "dead_letter_topic").increment(1);
        }
    }
}
