//! The Kafka source against a real Kafka-protocol broker (tansu): records
//! become signed webhooks, bad records are dead-lettered without blocking
//! the ones behind them, a kill -9 loses and duplicates nothing, and a down
//! receiver does not hold back other applications.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::brokers::{produce, Tansu};
use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use serde_json::{json, Value};

const TOPIC: &str = "events";
const EVENT: &str = "sleep.updated";

/// A `[[sources.kafka]]` entry reading `TOPIC` with the mapping of the guide.
fn source_config(brokers: &str, extra: &str) -> String {
    named_source_config("events", brokers, extra)
}

fn named_source_config(name: &str, brokers: &str, extra: &str) -> String {
    format!(
        r#"
[[sources.kafka]]
name = "{name}"
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "hookd-test"
batch_size = 50
{extra}

[sources.kafka.mapping]
application = {{ pointer = "/app_id" }}
event_type = {{ pointer = "/type" }}
event_id = {{ pointer = "/id" }}
"#
    )
}

fn record(app: &str, n: usize) -> String {
    format!(r#"{{"user_id": {n}, "id": "evt-{n}", "type": "{EVENT}", "app_id": "{app}"}}"#)
}

async fn source_status(api: &Api) -> Value {
    named_source_status(api, "events").await
}

async fn named_source_status(api: &Api, name: &str) -> Value {
    let reply = api.get(&format!("/api/v1/source/{name}")).await;
    assert_eq!(
        reply.status, 200,
        "GET /api/v1/source/{name}: {:?}",
        reply.body
    );
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_become_signed_webhooks() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    // Metrics are global to the test process, so this source has its own name.
    let hookd = Settings::new()
        .file(&named_source_config("signed", &tansu.brokers, ""))
        .start()
        .await;
    let app = hookd.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let secret = hookd.endpoint_secret(&app, &endpoint).await;

    let producer = tansu.producer();
    let sent: Vec<String> = (0..20).map(|n| record("acme", n)).collect();
    for (n, value) in sent.iter().enumerate() {
        produce(
            &producer,
            TOPIC,
            Some(&format!("user-{n}")),
            value.as_bytes(),
            &[],
        )
        .await;
    }

    let received = receiver.wait_for_requests(20, WAIT).await;
    let mut bodies = BTreeSet::new();
    for request in &received {
        request.assert_signed(&secret);
        let id = request.webhook_id().to_owned();
        // The webhook id is the message id, and the message keeps the record's id.
        let message = hookd.get(&format!("/api/v1/app/{app}/msg/{id}")).await;
        assert_eq!(message.status, 200);
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON body");
        assert_eq!(message.body["eventId"], body["id"]);
        assert_eq!(message.body["eventType"], json!(EVENT));
        bodies.insert(String::from_utf8(request.body.clone()).expect("UTF-8 body"));
    }
    // The whole record value is the payload, byte for byte.
    assert_eq!(bodies, sent.iter().cloned().collect::<BTreeSet<_>>());

    let status = eventually(WAIT, "the source counts 20 records", || async {
        let status = named_source_status(&hookd, "signed").await;
        (status["recordsConsumed"] == json!(20)).then_some(status)
    })
    .await;
    assert_eq!(status["messagesCreated"], json!(20));
    assert_eq!(status["deadLettered"], json!(0));
    assert_eq!(status["kind"], json!("kafka"));
    assert_eq!(status["state"], json!("running"));
    // librdkafka reports the lag every 5 s.
    eventually(WAIT, "the source reports a lag of 0", || async {
        let status = named_source_status(&hookd, "signed").await;
        (status["lag"] == json!(0)).then_some(())
    })
    .await;

    let metrics = reqwest::get(format!("{}/metrics", hookd.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("hookd_source_messages_total{source=\"signed\"} 20"),
        "metrics: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_dead_lettered_next_delivered() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    tansu.create_topic("events.dead", 1);
    let hookd = Settings::new()
        .file(&source_config(
            &tansu.brokers,
            r#"dead_letter_topic = "events.dead""#,
        ))
        .start()
        .await;
    let app = hookd.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    hookd.create_endpoint(&app, &receiver.url()).await;

    let producer = tansu.producer();
    let values = [
        record("acme", 1),
        "this is not JSON".to_owned(),
        r#"{"id": "evt-2", "type": "sleep.updated"}"#.to_owned(),
        record("nobody", 3),
        r#"{"id": "evt-4", "type": "unknown.type", "app_id": "acme"}"#.to_owned(),
        record("acme", 5),
    ];
    for value in &values {
        produce(
            &producer,
            TOPIC,
            Some("k"),
            value.as_bytes(),
            &[("trace", "t-1")],
        )
        .await;
    }

    let received = receiver.wait_for_requests(2, WAIT).await;
    let bodies: BTreeSet<&[u8]> = received.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(
        bodies,
        BTreeSet::from([values[0].as_bytes(), values[5].as_bytes()])
    );

    let letters = eventually(WAIT, "four dead letters", || async {
        let reply = hookd.get("/api/v1/source/events/dead-letter").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let data = reply.body["data"].as_array().cloned().unwrap_or_default();
        (data.len() == 4).then_some(data)
    })
    .await;
    let summary: Vec<(&str, &str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l["origin"].as_str().unwrap(),
                l["reasonKind"].as_str().unwrap(),
                l["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("events/0/1", "invalid_json", values[1].as_str()),
            ("events/0/2", "missing_field", values[2].as_str()),
            ("events/0/3", "unknown_application", values[3].as_str()),
            ("events/0/4", "unknown_event_type", values[4].as_str()),
        ]
    );
    assert_eq!(letters[0]["key"], json!("k"));
    assert_eq!(
        letters[2]["reason"],
        json!("no application has the id or uid \"nobody\"")
    );
    let status = source_status(&hookd).await;
    assert_eq!(
        (
            status["recordsConsumed"].clone(),
            status["deadLettered"].clone()
        ),
        (json!(6), json!(4))
    );

    let unknown = hookd.get("/api/v1/source/evnets/dead-letter").await;
    assert_eq!(
        unknown.status, 404,
        "a misspelled source: {:?}",
        unknown.body
    );
    let garbage = hookd
        .get("/api/v1/source/events/dead-letter?iterator=garbage")
        .await;
    assert_eq!(garbage.status, 422, "{:?}", garbage.body);

    // The same four records, with their reason, are on the dead-letter topic.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create a consumer");
    consumer.subscribe(&["events.dead"]).expect("subscribe");
    let mut copies = Vec::new();
    while copies.len() < 4 {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("a dead letter arrives on the topic")
            .expect("read the dead-letter topic");
        let headers = message.headers().expect("dead letters carry headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "hookd-dead-letter-reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let trace = headers
            .iter()
            .any(|h| h.key == "trace" && h.value == Some(b"t-1".as_slice()));
        copies.push((
            String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            reason,
            trace,
        ));
    }
    let expected: Vec<(String, Option<String>, bool)> = summary
        .iter()
        .map(|(_, kind, value)| (value.to_string(), Some(kind.to_string()), true))
        .collect();
    assert_eq!(copies, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_stream_loses_and_duplicates_nothing() {
    const RECORDS: usize = 3000;
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().join("data");
    // No offset is committed before the kill, so every record stored before
    // it is read a second time after the restart.
    let settings = Settings::new().file(&source_config(
        &tansu.brokers,
        // A short session lets the group drop the killed member quickly.
        "[sources.kafka.properties]\n\"auto.commit.interval.ms\" = \"600000\"\n\"session.timeout.ms\" = \"6000\"",
    ));
    let first = HookdProcess::spawn(&settings, &data_dir, "first.log").await;
    let app = first.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    first.create_endpoint(&app, &receiver.url()).await;

    let producer = tansu.producer();
    let brokers_side = tokio::spawn(async move {
        for n in 0..RECORDS {
            produce(&producer, TOPIC, None, record("acme", n).as_bytes(), &[]).await;
        }
    });

    let consumed_before = eventually(WAIT * 3, "hookd stores some records", || async {
        let n = source_status(&first).await["recordsConsumed"]
            .as_u64()
            .unwrap_or(0);
        (n >= 300).then_some(n)
    })
    .await;
    first.kill().await;
    let second = HookdProcess::spawn(&settings, &data_dir, "second.log").await;
    brokers_side.await.expect("the producer finishes");

    let status = eventually(
        WAIT * 6,
        "every record is consumed after the restart",
        || async {
            let status = source_status(&second).await;
            let done = status["recordsConsumed"].as_u64().unwrap_or(0) >= RECORDS as u64
                && status["messagesCreated"].as_u64().unwrap_or(0)
                    + status["duplicates"].as_u64().unwrap_or(0)
                    >= RECORDS as u64;
            done.then_some(status)
        },
    )
    .await;
    // Records stored before the kill were read again and recognized.
    assert!(
        status["duplicates"].as_u64().unwrap() >= consumed_before,
        "{consumed_before} records were stored before the kill; status after restart: {status}"
    );

    let messages = second.all_messages(&app).await;
    let event_ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m["eventId"].as_str().expect("an event id").to_owned())
        .collect();
    assert_eq!(messages.len(), RECORDS, "one message per record");
    assert_eq!(
        event_ids,
        (0..RECORDS).map(|n| format!("evt-{n}")).collect()
    );

    let delivered = receiver.wait_for_body_ids(RECORDS, WAIT * 6).await;
    assert_eq!(delivered, event_ids, "every record reached the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_receiver_does_not_slow_other_apps() {
    const EACH: usize = 200;
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 2);
    let hookd = Settings::new()
        .set("HOOKD_REQUEST_TIMEOUT", "5s")
        .file(&source_config(&tansu.brokers, ""))
        .start()
        .await;
    let down_app = hookd.create_app_for_event(EVENT, "down").await;
    let up_app = hookd.create_app_for_event(EVENT, "up").await;
    let closed = ClosedPort::reserve();
    let hanging = Receiver::always(Answer::ok().after(Duration::from_secs(60)));
    hookd.create_endpoint(&down_app, &closed.url()).await;
    hookd.create_endpoint(&down_app, &hanging.url()).await;
    let healthy = Receiver::always(Answer::ok());
    hookd.create_endpoint(&up_app, &healthy.url()).await;

    let producer = tansu.producer();
    for n in 0..EACH {
        produce(&producer, TOPIC, None, record("down", n).as_bytes(), &[]).await;
        produce(
            &producer,
            TOPIC,
            None,
            record("up", EACH + n).as_bytes(),
            &[],
        )
        .await;
    }

    // Well within the 5 s deadline for which the hanging receiver keeps requests open.
    let received = healthy
        .wait_for_requests(EACH, Duration::from_secs(4))
        .await;
    assert_eq!(received.len(), EACH);
    let status = source_status(&hookd).await;
    assert_eq!(status["recordsConsumed"], json!(2 * EACH), "{status}");
    assert_eq!(hookd.all_messages(&down_app).await.len(), EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_commits_stored_offsets() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().join("data");
    // With periodic commits out of the way, only the commit at shutdown can
    // save the offsets.
    let settings = Settings::new().file(&source_config(
        &tansu.brokers,
        "[sources.kafka.properties]\n\"auto.commit.interval.ms\" = \"600000\"",
    ));
    let first = HookdProcess::spawn(&settings, &data_dir, "first.log").await;
    first.create_app_for_event(EVENT, "acme").await;
    let producer = tansu.producer();
    for n in 0..100 {
        produce(&producer, TOPIC, None, record("acme", n).as_bytes(), &[]).await;
    }
    eventually(WAIT, "hookd stores 100 records", || async {
        (source_status(&first).await["recordsConsumed"] == json!(100)).then_some(())
    })
    .await;
    let exit = first.terminate().await;
    assert!(exit.success(), "hookd exits cleanly on SIGTERM: {exit}");

    let second = HookdProcess::spawn(&settings, &data_dir, "second.log").await;
    produce(&producer, TOPIC, None, record("acme", 100).as_bytes(), &[]).await;
    let status = eventually(WAIT * 2, "the new record is stored", || async {
        let status = source_status(&second).await;
        (status["recordsConsumed"] == json!(1)).then_some(status)
    })
    .await;
    assert_eq!(status["duplicates"], json!(0), "{status}");
    assert_eq!(status["messagesCreated"], json!(1), "{status}");
}
