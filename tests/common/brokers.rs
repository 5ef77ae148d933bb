//! Real brokers for the source tests: a tansu Kafka broker started per test,
//! and the NATS JetStream server on 127.0.0.1:4222 with a stream per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Where `.ci/run` installs tansu; `HOOKD_TANSU_BIN` overrides it.
fn tansu_bin() -> PathBuf {
    if let Ok(path) = std::env::var("HOOKD_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    let path = PathBuf::from(home).join(".cache/hookd-ci/tansu-0.6.0/bin/tansu");
    assert!(
        path.exists(),
        "the Kafka tests need the tansu broker at {} (or HOOKD_TANSU_BIN); `.ci/run` installs it, \
         or run: cargo install tansu --version 0.6.0 --locked --features dynostore --debug --root ~/.cache/hookd-ci/tansu-0.6.0",
        path.display()
    );
    path
}

/// A tansu broker on a free 127.0.0.1 port with in-memory storage. It is
/// killed when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    pub brokers: String,
}

impl Tansu {
    pub fn start() -> Self {
        let bin = tansu_bin();
        for _ in 0..5 {
            let port = super::free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(&bin)
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
                .expect("start tansu");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        brokers: format!("127.0.0.1:{port}"),
                    };
                }
                if child.try_wait().expect("poll tansu").is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tansu did not start on 127.0.0.1");
    }

    /// Creates a topic; tansu 0.6.0 does not create topics on first use.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let output = Command::new(tansu_bin())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .expect("run tansu topic create");
        assert!(
            output.status.success(),
            "tansu topic create {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .expect("create a Kafka producer")
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one record and waits until the broker has it.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).payload(value).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(err, _)| err)
        .expect("the broker accepts the record");
}

/// The NATS server this machine runs; `HOOKD_NATS_URL` overrides it.
pub fn nats_url() -> String {
    std::env::var("HOOKD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A JetStream stream created for one test, with subjects `<prefix>.>`.
pub struct NatsStream {
    pub context: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl NatsStream {
    /// Creates a stream with a name no other test uses.
    pub async fn create() -> Self {
        let client = async_nats::connect(nats_url()).await.unwrap_or_else(|err| {
            panic!(
                "the NATS tests need nats-server with JetStream on {} (`.ci/run` starts it): {err}",
                nats_url()
            )
        });
        let context = jetstream::new(client);
        let tag = ulid::Ulid::new().to_string().to_lowercase();
        let name = format!("HOOKD_TEST_{tag}");
        let prefix = format!("hookdtest{tag}");
        context
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                ..Default::default()
            })
            .await
            .expect("create a JetStream stream");
        Self {
            context,
            name,
            prefix,
        }
    }

    /// Publishes to `<prefix>.<subject>` and waits for the stream's ack.
    pub async fn publish(&self, subject: &str, payload: &[u8]) {
        self.context
            .publish(
                format!("{}.{subject}", self.prefix),
                payload.to_vec().into(),
            )
            .await
            .expect("publish to JetStream")
            .await
            .expect("JetStream stores the message");
    }

    /// Messages of the durable consumer not yet acknowledged or not yet delivered.
    pub async fn consumer_backlog(&self, consumer: &str) -> (u64, usize) {
        let stream = self
            .context
            .get_stream(&self.name)
            .await
            .expect("the test stream exists");
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(consumer)
            .await
            .expect("the consumer exists");
        let info = consumer.info().await.expect("consumer info");
        (info.num_pending, info.num_ack_pending)
    }

    /// The filter subject, max ack pending and ack wait of a durable consumer.
    pub async fn consumer_settings(&self, consumer: &str) -> (String, i64, Duration) {
        let stream = self
            .context
            .get_stream(&self.name)
            .await
            .expect("the test stream exists");
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(consumer)
            .await
            .expect("the consumer exists");
        let config = consumer.info().await.expect("consumer info").config.clone();
        (
            config.filter_subject,
            config.max_ack_pending,
            config.ack_wait,
        )
    }

    pub async fn delete(self) {
        let _ = self.context.delete_stream(&self.name).await;
    }
}
