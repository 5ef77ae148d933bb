//! The load generator: sends messages with 1 KiB JSON payloads to hookd's API
//! over N keep-alive connections, spread evenly over the APIs of the nodes,
//! either as fast as the API responds or on a fixed schedule, and records
//! when each message was accepted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

use crate::api::{self, ApiConnection, ApiTarget};
use crate::clock;

/// Size of each message payload, in bytes of JSON.
pub const PAYLOAD_BYTES: usize = 1024;
/// How long one API request may take before the connection is dropped and reopened.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An application that messages are sent to.
#[derive(Debug, Clone)]
pub struct Target {
    pub app_id: String,
    /// Deliveries to measured endpoints that one message to this app creates.
    pub measured_endpoints: u64,
}

#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub connections: usize,
    /// Messages per second over all connections; `None` sends as fast as the API responds.
    pub rate: Option<f64>,
    /// Stop sending after this long.
    pub run_for: Duration,
    /// Stop sending after this many messages.
    pub max_messages: u64,
}

/// A message that the API accepted with 202.
#[derive(Debug)]
pub struct Accepted {
    pub msg_id: Box<str>,
    /// [`clock::now_us`] when the 202 response was read.
    pub at_us: u64,
    /// Index of the target application.
    pub app: u32,
}

/// Progress counters, shared with the progress printer and the drain wait.
#[derive(Debug, Default)]
pub struct LoadCounters {
    pub accepted: AtomicU64,
    /// Deliveries to measured endpoints that the accepted messages created.
    pub expected_measured: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug)]
pub struct LoadResult {
    pub accepted: Vec<Accepted>,
    /// Failed sends by status code or error text.
    pub errors: BTreeMap<String, u64>,
    /// Time from sending a message to reading its 202, in microseconds.
    pub api_latency: Histogram<u64>,
    pub started_us: u64,
    pub stopped_us: u64,
}

/// Builds the request body of message number `seq`: a JSON object of exactly
/// [`PAYLOAD_BYTES`] bytes in the `payload` field.
pub fn message_body(seq: u64) -> Bytes {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let tail = "\"}";
    let padding = PAYLOAD_BYTES.saturating_sub(head.len() + tail.len());
    let payload = format!("{head}{}{tail}", "x".repeat(padding));
    Bytes::from(format!(
        "{{\"eventType\":\"bench.event\",\"payload\":{payload}}}"
    ))
}

/// Sends messages until `settings.run_for` has passed or
/// `settings.max_messages` were sent. Message `k` goes to `targets[k % len]`.
/// Connection `c` goes to the API [`api_of_connection`] picks from `apis`.
pub async fn run(
    apis: &[ApiTarget],
    targets: Arc<Vec<Target>>,
    settings: &LoadSettings,
    counters: Arc<LoadCounters>,
) -> anyhow::Result<LoadResult> {
    let started_us = clock::now_us();
    let end_us = started_us + settings.run_for.as_micros() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let paths: Arc<Vec<String>> = Arc::new(
        targets
            .iter()
            .map(|t| format!("/api/v1/app/{}/msg", t.app_id))
            .collect(),
    );

    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..settings.connections.max(1) {
        let worker = Worker {
            api: apis[api_of_connection(connection, apis.len())].clone(),
            targets: targets.clone(),
            paths: paths.clone(),
            next: next.clone(),
            counters: counters.clone(),
            errors: errors.clone(),
            rate: settings.rate,
            started_us,
            end_us,
            max_messages: settings.max_messages,
        };
        tasks.spawn(worker.run());
    }

    let mut accepted = Vec::new();
    let mut api_latency = new_histogram();
    while let Some(joined) = tasks.join_next().await {
        let (mut part, latency) = joined?;
        accepted.append(&mut part);
        api_latency.add(&latency)?;
    }
    accepted.sort_by_key(|a| a.at_us);
    let errors = std::mem::take(&mut *errors.lock().expect("error lock is never poisoned"));
    Ok(LoadResult {
        accepted,
        errors,
        api_latency,
        started_us,
        stopped_us: clock::now_us(),
    })
}

/// Index of the API that connection number `connection` sends to: the
/// connections go round the `apis` nodes in turn, so each node gets the
/// same number, give or take one.
pub fn api_of_connection(connection: usize, apis: usize) -> usize {
    assert!(apis > 0, "the load needs at least one API");
    connection % apis
}

/// Creates a latency histogram in microseconds, from 1 µs to 1 hour, with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("the bounds are valid")
}

struct Worker {
    api: ApiTarget,
    targets: Arc<Vec<Target>>,
    paths: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
    counters: Arc<LoadCounters>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    rate: Option<f64>,
    started_us: u64,
    end_us: u64,
    max_messages: u64,
}

impl Worker {
    async fn run(self) -> (Vec<Accepted>, Histogram<u64>) {
        let mut accepted = Vec::new();
        let mut latency = new_histogram();
        let mut connection: Option<ApiConnection> = None;
        loop {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            if seq >= self.max_messages {
                break;
            }
            if let Some(rate) = self.rate {
                let due_us = self.started_us + (seq as f64 * 1_000_000.0 / rate) as u64;
                if due_us >= self.end_us {
                    break;
                }
                tokio::time::sleep_until(clock::instant_at(due_us).into()).await;
            } else if clock::now_us() >= self.end_us {
                break;
            }

            let app = (seq % self.targets.len() as u64) as usize;
            let conn = match &mut connection {
                Some(conn) => conn,
                None => match self.api.connect().await {
                    Ok(conn) => connection.insert(conn),
                    Err(err) => {
                        self.record_error(format!("{err:#}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let sent_us = clock::now_us();
            let outcome = tokio::time::timeout(
                REQUEST_TIMEOUT,
                conn.send(Method::POST, &self.paths[app], message_body(seq)),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no API response within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            });
            let at_us = clock::now_us();
            match outcome {
                Ok((StatusCode::ACCEPTED, body)) => match api::message_id(&body) {
                    Ok(msg_id) => {
                        let _ = latency.record((at_us - sent_us).max(1));
                        accepted.push(Accepted {
                            msg_id: msg_id.into(),
                            at_us,
                            app: app as u32,
                        });
                        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .expected_measured
                            .fetch_add(self.targets[app].measured_endpoints, Ordering::Relaxed);
                    }
                    Err(err) => self.record_error(format!("{err:#}")),
                },
                Ok((status, _)) => self.record_error(format!("HTTP {status}")),
                Err(err) => {
                    self.record_error(format!("{err:#}"));
                    connection = None;
                }
            }
        }
        (accepted, latency)
    }

    fn record_error(&self, key: String) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .expect("error lock is never poisoned")
            .entry(key)
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_evenly_over_apis() {
        let mut per_api = [0; 3];
        for connection in 0..32 {
            per_api[api_of_connection(connection, 3)] += 1;
        }
        assert_eq!(per_api, [11, 11, 10]);
    }

    #[test]
    fn connections_with_one_api_share_it() {
        assert!((0..8).all(|connection| api_of_connection(connection, 1) == 0));
    }

    #[test]
    fn payload_is_exactly_one_kib() {
        for seq in [0, 7, 123_456_789] {
            let body: serde_json::Value = serde_json::from_slice(&message_body(seq)).unwrap();
            let payload = serde_json::to_string(&body["payload"]).unwrap();
            assert_eq!(payload.len(), PAYLOAD_BYTES);
            assert_eq!(body["payload"]["seq"], seq);
            assert_eq!(body["eventType"], "bench.event");
        }
    }
}
