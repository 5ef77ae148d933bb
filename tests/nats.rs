//! The NATS JetStream source against the real nats-server on
//! 127.0.0.1:4222: messages become signed webhooks, a bad message is
//! dead-lettered and terminated while the ones behind it are delivered, and
//! a kill -9 loses and duplicates nothing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::brokers::{nats_url, NatsStream};
use common::*;
use serde_json::{json, Value};

const EVENT: &str = "user.created";

/// A `[[sources.nats]]` entry reading the test stream, with the application
/// and event type taken from the subject `<prefix>.<app>.<event type>`.
fn source_config(stream: &NatsStream, extra: &str) -> String {
    format!(
        r#"
[[sources.nats]]
name = "{name}"
url = "{url}"
stream = "{name}"
consumer = "hookd"
batch_size = 50
ack_wait = "2s"
{extra}

[sources.nats.mapping]
application = {{ subject_token = 1 }}
event_type = {{ subject_tail = 2 }}
event_id = {{ pointer = "/id" }}
"#,
        name = stream.name,
        url = nats_url(),
    )
}

async fn source_status(api: &Api, stream: &NatsStream) -> Value {
    let path = format!("/api/v1/source/{}", stream.name);
    let reply = api.get(&path).await;
    assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
    reply.body
}

fn payload(n: usize) -> String {
    format!(r#"{{"id": "user-{n}", "email": "user{n}@example.com"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_signed_webhooks() {
    let stream = NatsStream::create().await;
    let hookd = Settings::new()
        .file(&source_config(&stream, ""))
        .start()
        .await;
    let app = hookd.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let secret = hookd.endpoint_secret(&app, &endpoint).await;

    let sent: BTreeSet<String> = (0..20).map(payload).collect();
    for body in &sent {
        stream
            .publish(&format!("acme.{EVENT}"), body.as_bytes())
            .await;
    }

    let received = receiver.wait_for_requests(20, WAIT).await;
    let mut bodies = BTreeSet::new();
    for request in &received {
        request.assert_signed(&secret);
        let id = request.webhook_id().to_owned();
        let message = hookd.get(&format!("/api/v1/app/{app}/msg/{id}")).await;
        assert_eq!(
            message.body["eventType"],
            json!(EVENT),
            "{:?}",
            message.body
        );
        bodies.insert(String::from_utf8(request.body.clone()).expect("UTF-8"));
    }
    assert_eq!(bodies, sent);

    // Every message is acknowledged once its batch is stored.
    let backlog = eventually(WAIT, "the consumer has nothing pending", || async {
        let backlog = stream.consumer_backlog("hookd").await;
        (backlog == (0, 0)).then_some(backlog)
    })
    .await;
    assert_eq!(backlog, (0, 0));
    let status = source_status(&hookd, &stream).await;
    assert_eq!(status["messagesCreated"], json!(20), "{status}");
    assert_eq!(status["kind"], json!("nats"));
    assert_eq!(status["lag"], json!(0));
    drop(hookd);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_dead_lettered_and_terminated() {
    let stream = NatsStream::create().await;
    let hookd = Settings::new()
        .file(&source_config(&stream, ""))
        .start()
        .await;
    let app = hookd.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    hookd.create_endpoint(&app, &receiver.url()).await;

    stream
        .publish(&format!("acme.{EVENT}"), payload(1).as_bytes())
        .await;
    stream.publish(&format!("acme.{EVENT}"), b"{broken").await;
    stream
        .publish(&format!("nobody.{EVENT}"), payload(2).as_bytes())
        .await;
    stream.publish("acme", payload(3).as_bytes()).await;
    stream
        .publish(&format!("acme.{EVENT}"), payload(4).as_bytes())
        .await;

    let received = receiver.wait_for_requests(2, WAIT).await;
    let bodies: BTreeSet<Vec<u8>> = received.iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        bodies,
        BTreeSet::from([payload(1).into_bytes(), payload(4).into_bytes()])
    );

    let path = format!("/api/v1/source/{}/dead-letter", stream.name);
    let letters = eventually(WAIT, "three dead letters", || async {
        let reply = hookd.get(&path).await;
        let data = reply.body["data"].as_array().cloned().unwrap_or_default();
        (data.len() == 3).then_some(data)
    })
    .await;
    let summary: Vec<(String, &str)> = letters
        .iter()
        .map(|l| {
            (
                l["origin"].as_str().unwrap().to_owned(),
                l["reasonKind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (format!("{}/2", stream.name), "invalid_json"),
            (format!("{}/3", stream.name), "unknown_application"),
            (format!("{}/4", stream.name), "missing_field"),
        ]
    );
    assert_eq!(
        letters[1]["key"],
        json!(format!("{}.nobody.{EVENT}", stream.prefix)),
        "the subject is kept with a NATS dead letter"
    );
    assert_eq!(
        letters[2]["reason"],
        json!("the event type (subject from token 2) is missing")
    );
    // Terminated and acknowledged messages leave nothing for redelivery.
    let backlog = eventually(WAIT, "nothing pending", || async {
        let backlog = stream.consumer_backlog("hookd").await;
        (backlog == (0, 0)).then_some(backlog)
    })
    .await;
    assert_eq!(backlog, (0, 0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = source_status(&hookd, &stream).await;
    assert_eq!(
        (
            status["recordsConsumed"].clone(),
            status["deadLettered"].clone()
        ),
        (json!(5), json!(3)),
        "no message came back after the 2 s ack wait: {status}"
    );
    drop(hookd);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_stream_loses_and_duplicates_nothing() {
    const MESSAGES: usize = 2000;
    let stream = NatsStream::create().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().join("data");
    let settings = Settings::new().file(&source_config(&stream, ""));
    let first = HookdProcess::spawn(&settings, &data_dir, "first.log").await;
    let app = first.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    first.create_endpoint(&app, &receiver.url()).await;

    let publisher = tokio::spawn({
        let context = stream.context.clone();
        let subject = format!("{}.acme.{EVENT}", stream.prefix);
        async move {
            for n in 0..MESSAGES {
                context
                    .publish(subject.clone(), payload(n).into_bytes().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("JetStream stores the message");
            }
        }
    });

    eventually(WAIT * 3, "hookd stores some messages", || async {
        let n = source_status(&first, &stream).await["recordsConsumed"]
            .as_u64()
            .unwrap_or(0);
        (n >= 200).then_some(n)
    })
    .await;
    first.kill().await;
    let second = HookdProcess::spawn(&settings, &data_dir, "second.log").await;
    publisher.await.expect("the publisher finishes");

    eventually(
        WAIT * 6,
        "every message is stored after the restart",
        || async {
            let backlog = stream.consumer_backlog("hookd").await;
            (backlog == (0, 0)).then_some(())
        },
    )
    .await;

    let messages = second.all_messages(&app).await;
    let count = messages.len();
    let event_ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m["eventId"].as_str().expect("an event id").to_owned())
        .collect();
    assert_eq!(count, MESSAGES, "one message per NATS message");
    assert_eq!(
        event_ids,
        (0..MESSAGES).map(|n| format!("user-{n}")).collect()
    );

    let delivered = receiver.wait_for_body_ids(MESSAGES, WAIT * 6).await;
    assert_eq!(delivered, event_ids);
    drop(second);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_update_the_consumer() {
    let stream = NatsStream::create().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().join("data");
    let first = HookdProcess::spawn(
        &Settings::new().file(&source_config(&stream, "")),
        &data_dir,
        "first.log",
    )
    .await;
    eventually(WAIT, "the source runs", || async {
        (source_status(&first, &stream).await["state"] == json!("running")).then_some(())
    })
    .await;
    let exit = first.terminate().await;
    assert!(exit.success(), "{exit}");
    assert_eq!(
        stream.consumer_settings("hookd").await,
        (String::new(), 200, Duration::from_secs(2))
    );

    // The same durable consumer, with another batch size and ack wait.
    let changed = source_config(&stream, "")
        .replace("batch_size = 50", "batch_size = 10")
        .replace("ack_wait = \"2s\"", "ack_wait = \"3s\"");
    let second =
        HookdProcess::spawn(&Settings::new().file(&changed), &data_dir, "second.log").await;
    let app = second.create_app_for_event(EVENT, "acme").await;
    let receiver = Receiver::always(Answer::ok());
    second.create_endpoint(&app, &receiver.url()).await;
    stream
        .publish(&format!("acme.{EVENT}"), payload(1).as_bytes())
        .await;
    let received = receiver.wait_for_requests(1, WAIT).await;
    assert_eq!(received[0].body, payload(1).into_bytes());
    assert_eq!(
        stream.consumer_settings("hookd").await,
        (String::new(), 40, Duration::from_secs(3))
    );
    let exit = second.terminate().await;
    assert!(exit.success(), "{exit}");

    // A new filter is refused with a message naming both filters.
    let filter = format!("{}.acme.>", stream.prefix);
    let refiltered = source_config(&stream, &format!("filter_subject = \"{filter}\""));
    let third =
        HookdProcess::spawn(&Settings::new().file(&refiltered), &data_dir, "third.log").await;
    let status = eventually(WAIT, "the source reports the filter", || async {
        let status = source_status(&third, &stream).await;
        (status["state"] == json!("retrying")).then_some(status)
    })
    .await;
    let error = status["lastError"].as_str().expect("an error");
    assert!(
        error.contains("exists with filter_subject \"\" but the config asks for")
            && error.contains(&filter),
        "{error}"
    );
    drop(third);
    stream.delete().await;
}
