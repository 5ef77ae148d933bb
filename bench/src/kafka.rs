//! The `kafka` scenario: records of 1 KB are put on a topic of a tansu
//! broker first, then hookd starts with a Kafka source on that topic and the
//! harness measures how fast it consumes, stores and commits them.
//!
//! Producing first keeps the producer's cost out of the measured window, so
//! the rate is hookd's (and the broker's fetch path), not the producer's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::hookd::{free_port, Hookd, ProcSample};
use crate::receiver::{Behaviour, Receiver};
use crate::report::Row;
use crate::scenarios::{hookd_settings, RunSettings, WorkDir, STOP_TIMEOUT};

const TOPIC: &str = "bench-events";
const EVENT_TYPE: &str = "bench.event";
const APP_UID: &str = "bench-app-0";
const SOURCE: &str = "bench";

/// Settings of the `kafka` scenario.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub tansu: PathBuf,
    pub records: u64,
    pub partitions: u32,
    /// Endpoints of the application: 0 measures ingestion alone.
    pub endpoints: usize,
    pub batch_size: usize,
    /// Extra librdkafka settings for hookd's consumer.
    pub properties: Vec<(String, String)>,
}

/// A tansu broker with in-memory storage, killed when dropped.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start tansu at {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("tansu did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, binary: &Path, partitions: u32) -> anyhow::Result<()> {
        let output = Command::new(binary)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), TOPIC])
            .output()
            .context("cannot run tansu topic create")?;
        if !output.status.success() {
            bail!(
                "tansu topic create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record of exactly 1,024 bytes in the shape of the sources guide.
fn record(n: u64) -> String {
    let head = format!(
        r#"{{"app_id": "{APP_UID}", "type": "{EVENT_TYPE}", "id": "r-{n}", "user_id": {n}, "padding": ""#
    );
    let tail = "\"}";
    let fill = 1024 - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill))
}

async fn produce_all(brokers: &str, records: u64) -> anyhow::Result<Duration> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("cannot create the producer")?;
    let started = Instant::now();
    let mut next = 0;
    while next < records {
        let chunk_end = (next + 20_000).min(records);
        let sends = (next..chunk_end).map(|n| {
            let producer = &producer;
            async move {
                let value = record(n);
                producer
                    .send(
                        FutureRecord::<(), str>::to(TOPIC).payload(value.as_str()),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(err, _)| anyhow::anyhow!("the broker rejected a record: {err}"))
            }
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        next = chunk_end;
    }
    Ok(started.elapsed())
}

fn config_file(brokers: &str, kafka: &KafkaSettings) -> String {
    let batch_size = kafka.batch_size;
    let mut properties = String::from("\n[sources.kafka.properties]\n");
    for (key, value) in &kafka.properties {
        properties.push_str(&format!("{key:?} = {value:?}\n"));
    }
    let mapping = format!(
        r#"
[[sources.kafka]]
name = "{SOURCE}"
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "hookd-bench"
batch_size = {batch_size}

[sources.kafka.mapping]
application = {{ pointer = "/app_id" }}
event_type = {{ pointer = "/type" }}
event_id = {{ pointer = "/id" }}
"#
    );
    format!("{mapping}{properties}")
}

async fn records_consumed(hookd: &Hookd) -> anyhow::Result<u64> {
    let mut connection = hookd.api.connect().await?;
    let (status, body) = connection.get(&format!("/api/v1/source/{SOURCE}")).await?;
    if !status.is_success() {
        bail!("GET /api/v1/source/{SOURCE} returned {status}");
    }
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    if value["deadLettered"].as_u64().unwrap_or(0) > 0 {
        bail!("records were dead-lettered: {value}");
    }
    Ok(value["recordsConsumed"].as_u64().unwrap_or(0))
}

pub async fn run_kafka(run: &RunSettings, kafka: &KafkaSettings) -> anyhow::Result<Row> {
    let workdir = WorkDir::create("kafka", run.keep_data)?;
    let tansu = Tansu::start(&kafka.tansu)?;
    tansu.create_topic(&kafka.tansu, kafka.partitions)?;
    let produced_in = produce_all(&tansu.brokers(), kafka.records).await?;
    eprintln!(
        "produced {} records of 1 KB to {} partitions in {:.1}s ({:.0}/s)",
        kafka.records,
        kafka.partitions,
        produced_in.as_secs_f64(),
        kafka.records as f64 / produced_in.as_secs_f64()
    );

    // Create the application, event type and endpoints with no source running.
    let receiver = Receiver::start(vec![true; kafka.endpoints]).await?;
    let settings = hookd_settings(run, &workdir);
    let hookd = Hookd::start(&settings).await?;
    {
        let mut connection = hookd.api.connect().await?;
        connection
            .create(
                "/api/v1/event-type",
                &serde_json::json!({"name": EVENT_TYPE, "description": "bench"}),
            )
            .await
            .ok();
        let app = connection
            .create(
                "/api/v1/app",
                &serde_json::json!({"name": APP_UID, "uid": APP_UID}),
            )
            .await?;
        for index in 0..kafka.endpoints {
            connection
                .create(
                    &format!("/api/v1/app/{app}/endpoint"),
                    &serde_json::json!({"url": receiver.url(index, Behaviour::Ok)}),
                )
                .await?;
        }
    }
    hookd.stop(STOP_TIMEOUT).await?;

    let config_path = workdir.path().join("hookd.toml");
    std::fs::write(&config_path, config_file(&tansu.brokers(), kafka))?;
    let mut settings = settings;
    settings
        .env
        .push(("HOOKD_CONFIG".to_owned(), config_path.display().to_string()));
    let hookd = Hookd::start(&settings).await?;
    let started = Instant::now();

    // The measured window runs from the first stored record to the last, so
    // the consumer group's join is not counted.
    let mut first: Option<(Instant, u64, ProcSample)> = None;
    let deadline = started + run.duration;
    let (done_at, end_sample) = loop {
        let consumed = records_consumed(&hookd).await?;
        if consumed > 0 && first.is_none() {
            first = Some((Instant::now(), consumed, hookd.sample()?));
        }
        if consumed >= kafka.records {
            break (Instant::now(), hookd.sample()?);
        }
        if Instant::now() > deadline {
            bail!(
                "only {consumed} of {} records were consumed within {:?}",
                kafka.records,
                run.duration
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (first_at, first_count, first_sample) = first.expect("set before the loop ends");
    let window = done_at.duration_since(first_at).as_secs_f64();
    let per_second = (kafka.records - first_count) as f64 / window;
    eprintln!(
        "consumed {} records: first batch after {:.2}s, the rest in {window:.2}s",
        kafka.records,
        first_at.duration_since(started).as_secs_f64()
    );

    let deliveries_per_second = if kafka.endpoints > 0 {
        let expected = kafka.records * kafka.endpoints as u64;
        let drain_deadline = Instant::now() + run.drain_timeout;
        while receiver.state.measured_requests.load(Ordering::Relaxed) < expected
            && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = receiver.state.measured_requests.load(Ordering::Relaxed);
        let all_delivered_in = first_at.elapsed().as_secs_f64();
        eprintln!("{delivered} of {expected} deliveries arrived {all_delivered_in:.2}s after the first record was stored");
        Some(delivered as f64 / all_delivered_in)
    } else {
        None
    };

    let threads = end_sample.threads_since(&first_sample);
    eprintln!(
        "hookd CPU by thread in the window: {}",
        threads
            .iter()
            .filter(|(_, s)| *s >= 0.05)
            .map(|(name, s)| format!("{name} {s:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let peak = hookd.sample()?.peak_rss_kib as f64 / 1024.0;
    hookd.stop(STOP_TIMEOUT).await?;

    Ok(Row {
        scenario: format!(
            "kafka, {} records of 1 KB, {} partitions, batch {}, {} endpoint(s)",
            kafka.records, kafka.partitions, kafka.batch_size, kafka.endpoints
        ),
        accepted_per_second: Some(per_second),
        deliveries_per_second,
        latency_ms: None,
        hookd_cpu: Some((end_sample.cpu_seconds - first_sample.cpu_seconds, window)),
        peak_rss_mb: peak,
        bench_cpu_seconds: None,
        cost: None,
        notes: format!(
            "records consumed and stored per second; broker {} on the same cores{}",
            kafka.tansu.display(),
            if kafka.properties.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = kafka
                    .properties
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("; consumer {}", list.join(", "))
            }
        ),
    })
}
