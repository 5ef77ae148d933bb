//! The NATS JetStream source: a durable pull consumer with explicit acks.
//!
//! A message is acknowledged only after the batch that contains it has
//! committed in the store; a dead-lettered one is terminated, so JetStream
//! never redelivers it. Messages not acknowledged before a crash are
//! redelivered after the consumer's ack wait, and their event ids turn them
//! into the messages already stored.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;

use super::kafka::check_batch_size;
use super::mapping::{self, Mapping, Record, StreamKind};
use super::{pause, store_with_retry, Ingest, Item, Outcome, SourceStatus, DEFAULT_BATCH_SIZE};
use crate::telemetry::metric;

/// One `[[sources.nats]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Name in the API, metrics and dead letters; default `nats-N`.
    pub name: Option<String>,
    /// Server URL, such as `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream to read; it must exist.
    pub stream: String,
    /// Durable consumer name; created when missing.
    pub consumer: String,
    /// Only subjects matching this filter, such as `events.>`.
    pub filter_subject: Option<String>,
    /// Messages stored in one transaction at most.
    pub batch_size: Option<usize>,
    /// How long JetStream waits for an ack before redelivering; default 30 s.
    pub ack_wait: Option<String>,
    pub mapping: Mapping,
}

impl NatsConfig {
    pub fn name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("nats-{index}"))
    }

    pub(super) fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.url.is_empty() {
            return Err(format!(
                "{prefix}.url must not be empty, such as \"nats://127.0.0.1:4222\""
            ));
        }
        if self.stream.is_empty() || self.consumer.is_empty() {
            return Err(format!(
                "{prefix}.stream and {prefix}.consumer must not be empty, such as \"EVENTS\" and \"hookd\""
            ));
        }
        check_batch_size(prefix, self.batch_size)?;
        self.ack_wait()
            .map_err(|err| format!("{prefix}.ack_wait: {err}; such as \"30s\""))?;
        self.mapping
            .validate(&format!("{prefix}.mapping"), StreamKind::Nats)
    }

    fn ack_wait(&self) -> Result<Duration, String> {
        match &self.ack_wait {
            None => Ok(Duration::from_secs(30)),
            Some(text) => match humantime::parse_duration(text) {
                Ok(wait) if wait >= Duration::from_secs(1) => Ok(wait),
                Ok(_) => Err("must be at least 1s".to_owned()),
                Err(err) => Err(err.to_string()),
            },
        }
    }
}

type Messages = pull::Stream;

/// Consumes until `stop` turns true. Acks go out right after each store
/// commit, so nothing stored is left unacknowledged at shutdown.
pub async fn run(
    config: NatsConfig,
    ingest: Ingest,
    status: Arc<SourceStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let batch_size = config.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    'connect: loop {
        let connected = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break 'connect,
            connected = connect(&config, batch_size) => connected,
        };
        let mut messages = match connected {
            Ok(messages) => messages,
            Err(err) => {
                tracing::error!(source = %status.name, error = %err, "cannot start the NATS consumer; retrying in 5 s");
                status.set_error(err);
                if pause(&mut stop, Duration::from_secs(5)).await {
                    break 'connect;
                }
                continue 'connect;
            }
        };
        status.set_state("running");
        tracing::info!(source = %status.name, stream = %config.stream, "NATS source started");

        loop {
            let batch = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break 'connect,
                batch = next_batch(&mut messages, batch_size) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(source = %status.name, error = %err, "NATS consumer error; reconnecting");
                    status.set_error(format!("consumer error: {err}"));
                    metrics::counter!(metric::SOURCE_ERRORS, "source" => status.name.clone(), "kind" => "consume").increment(1);
                    if pause(&mut stop, Duration::from_millis(500)).await {
                        break 'connect;
                    }
                    continue 'connect;
                }
            };
            if let Some(pending) = batch.last().and_then(|m| m.info().ok()).map(|i| i.pending) {
                status.set_lag(pending as i64);
            }
            let items: Vec<Item> = batch
                .iter()
                .map(|message| to_item(&config.mapping, message, ingest.max_payload_bytes))
                .collect();
            // Unacknowledged messages are redelivered after the ack wait.
            let Some(outcomes) = store_with_retry(&ingest, &status, &mut stop, items).await else {
                break 'connect;
            };
            acknowledge(&status, &batch, &outcomes).await;
        }
    }
    status.set_state("stopped");
    tracing::info!(source = %status.name, "NATS source stopped");
}

async fn connect(config: &NatsConfig, batch_size: usize) -> Result<Messages, String> {
    let client = async_nats::ConnectOptions::new()
        .name("hookd")
        .connect(config.url.as_str())
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", config.url))?;
    let context = jetstream::new(client);
    let stream = context
        .get_stream(&config.stream)
        .await
        .map_err(|err| format!("cannot open stream {:?}: {err}", config.stream))?;

    let wanted = pull::Config {
        durable_name: Some(config.consumer.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait()?,
        filter_subject: config.filter_subject.clone().unwrap_or_default(),
        // Bounds the messages handed out but not yet stored and acked:
        // while the store lags, JetStream stops sending.
        max_ack_pending: (batch_size * 4) as i64,
        ..Default::default()
    };

    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&config.consumer, wanted.clone())
        .await
        .map_err(|err| format!("cannot create consumer {:?}: {err}", config.consumer))?;
    // A durable consumer keeps the settings it was created with, so a
    // changed config is applied to it here instead of being ignored. A new
    // filter is refused: the server accepted such an update in tests here,
    // but the consumer then delivered nothing.
    let current = &consumer.cached_info().config;
    if current.filter_subject != wanted.filter_subject {
        return Err(format!(
            "consumer {:?} exists with filter_subject {:?} but the config asks for {:?}; \
             delete the consumer (nats consumer rm) or set another consumer name",
            config.consumer, current.filter_subject, wanted.filter_subject
        ));
    }
    if current.ack_wait != wanted.ack_wait || current.max_ack_pending != wanted.max_ack_pending {
        consumer = stream
            .update_consumer(wanted)
            .await
            .map_err(|err| format!("cannot update consumer {:?} to the configured filter_subject, ack_wait and batch_size: {err}", config.consumer))?;
        tracing::info!(consumer = %config.consumer, "updated the NATS consumer to the configured settings");
    }

    consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|err| format!("cannot start pulling messages: {err}"))
}

/// Waits for one message, then takes the messages already received, up to `max`.
async fn next_batch(
    messages: &mut Messages,
    max: usize,
) -> Result<Vec<jetstream::Message>, String> {
    let first = match messages.next().await {
        Some(Ok(message)) => message,
        Some(Err(err)) => return Err(err.to_string()),
        None => return Err("the message stream ended".to_owned()),
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match messages.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(message),
            _ => break,
        }
    }
    Ok(batch)
}

fn to_item(mapping: &Mapping, message: &jetstream::Message, max_payload_bytes: usize) -> Item {
    let origin = match message.info() {
        Ok(info) => format!("{}/{}", info.stream, info.stream_sequence),
        // JetStream always sends the ack subject that carries the sequence;
        // without it the subject is the best name left.
        Err(_) => message.subject.to_string(),
    };
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().as_bytes())
    };
    let record = Record {
        value: &message.payload,
        key: None,
        header: &header,
        subject: Some(message.subject.as_str()),
        origin: &origin,
    };
    let mapped = mapping::map_record(mapping, &record, max_payload_bytes);
    // NATS messages have no key; the subject takes its place in a dead
    // letter, because subject mappings decide on it.
    Item {
        origin,
        key: Some(message.subject.as_str().as_bytes().to_vec()),
        value: message.payload.to_vec(),
        mapped,
    }
}

async fn acknowledge(status: &SourceStatus, batch: &[jetstream::Message], outcomes: &[Outcome]) {
    for (message, outcome) in batch.iter().zip(outcomes) {
        let acked = match outcome {
            Outcome::DeadLettered(_) => message.ack_with(AckKind::Term).await,
            Outcome::Created | Outcome::Duplicate => message.ack().await,
        };
        if let Err(err) = acked {
            // The message is redelivered after the ack wait and deduplicated.
            tracing::warn!(source = %status.name, error = %err, "cannot acknowledge a NATS message");
            metrics::counter!(metric::SOURCE_ERRORS, "source" => status.name.clone(), "kind" => "ack").increment(1);
        }
    }
}
