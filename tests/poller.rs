//! The poller routes: an endpoint's feed contains the messages its filters
//! accept, in creation order; a named consumer's position survives a
//! restart; seek moves it; an empty poll waits for the next message.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn send(api: &Api, app: &str, event_type: &str, n: usize, channels: &[&str]) -> String {
    let reply = api
        .post(
            &format!("/api/v1/app/{app}/msg"),
            &json!({"eventType": event_type, "payload": {"n": n}, "channels": channels}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    id_of(&reply.body)
}

async fn poll(api: &Api, path: &str) -> Value {
    let reply = api.get(path).await;
    assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
    reply.body
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(id_of)
        .collect()
}

#[tokio::test]
async fn feed_holds_filtered_messages_in_order() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    for name in ["a.b", "c.d"] {
        let reply = hookd
            .post(
                "/api/v1/event-type",
                &json!({"name": name, "description": name}),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
    let sink = hookd
        .create_endpoint_with(
            &app,
            json!({"url": "http://127.0.0.1:9/", "uid": "sink", "filterTypes": ["a.b"], "disabled": true}),
        )
        .await;
    let mut wanted = Vec::new();
    let mut last = String::new();
    for n in 0..6 {
        let id = send(
            &hookd,
            &app,
            if n % 2 == 0 { "a.b" } else { "c.d" },
            n,
            &["eu"],
        )
        .await;
        if n % 2 == 0 {
            wanted.push(id.clone());
        }
        last = id;
    }

    // The sink's uid works as well as its id; the endpoint being disabled
    // does not matter.
    let page = poll(&hookd, &format!("/api/v1/app/{app}/poller/sink")).await;
    assert_eq!(ids(&page), wanted);
    assert_eq!(page["done"], json!(true));
    // The iterator points past every message read, filtered out or not.
    assert_eq!(page["iterator"], json!(last));
    assert_eq!(page["data"][1]["payload"], json!({"n": 2}));
    assert_eq!(page["data"][1]["eventType"], json!("a.b"));

    let first_two = poll(&hookd, &format!("/api/v1/app/{app}/poller/{sink}?limit=2")).await;
    assert_eq!(ids(&first_two), wanted[..2]);
    assert_eq!(first_two["done"], json!(false));
    let iterator = first_two["iterator"].as_str().unwrap();
    let rest = poll(
        &hookd,
        &format!("/api/v1/app/{app}/poller/{sink}?iterator={iterator}"),
    )
    .await;
    assert_eq!(ids(&rest), wanted[2..]);

    let other_channel = poll(
        &hookd,
        &format!("/api/v1/app/{app}/poller/{sink}?channel=us"),
    )
    .await;
    assert_eq!(ids(&other_channel), Vec::<String>::new());

    let bad = hookd
        .get(&format!(
            "/api/v1/app/{app}/poller/{sink}?iterator=nonsense"
        ))
        .await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    let unknown = hookd.get(&format!("/api/v1/app/{app}/poller/nobody")).await;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
}

#[tokio::test]
async fn empty_poll_waits_for_next_message() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let sink = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let first = send(&hookd, &app, EVENT_TYPE, 0, &[]).await;

    let path = format!("/api/v1/app/{app}/poller/{sink}?iterator={first}");
    let waiting = tokio::spawn({
        let api = hookd.api.clone();
        async move {
            let started = Instant::now();
            let page = poll(&api, &path).await;
            (page, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = send(&hookd, &app, EVENT_TYPE, 1, &[]).await;
    let (page, waited) = waiting.await.expect("the poll returns");
    assert_eq!(ids(&page), vec![second.clone()]);
    assert!(
        waited >= Duration::from_millis(500),
        "returned after {waited:?}, before the message existed"
    );
    assert!(
        waited < Duration::from_secs(4),
        "returned after {waited:?}, not when the message arrived"
    );

    // With nothing new, the poll gives up after its bounded wait.
    let started = Instant::now();
    let page = poll(
        &hookd,
        &format!("/api/v1/app/{app}/poller/{sink}?iterator={second}"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(ids(&page), Vec::<String>::new());
    assert_eq!(page["iterator"], json!(second));
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&waited),
        "an empty poll waited {waited:?}"
    );
}

#[tokio::test]
async fn consumer_position_survives_restart_and_seek() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let data_dir = dir.path().join("data");
    let settings = Settings::new();
    let first = HookdProcess::spawn(&settings, &data_dir, "first.log").await;
    let app = first.create_app().await;
    let sink = first.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let mut sent = Vec::new();
    for n in 0..8 {
        sent.push(send(&first, &app, EVENT_TYPE, n, &[]).await);
    }
    let consumer = format!("/api/v1/app/{app}/poller/{sink}/consumer/reader-1");

    assert_eq!(
        ids(&poll(&first, &format!("{consumer}?limit=3")).await),
        sent[..3]
    );
    assert_eq!(
        ids(&poll(&first, &format!("{consumer}?limit=3")).await),
        sent[3..6]
    );
    first.kill().await;

    let second = HookdProcess::spawn(&settings, &data_dir, "second.log").await;
    let page = poll(&second, &format!("{consumer}?limit=3")).await;
    assert_eq!(ids(&page), sent[6..]);
    assert_eq!(page["done"], json!(true));
    // Another consumer of the same sink starts at the beginning.
    let other = format!("/api/v1/app/{app}/poller/{sink}/consumer/reader-2?limit=2");
    assert_eq!(ids(&poll(&second, &other).await), sent[..2]);

    // Seek to the creation time of message 4: the consumer reads from it on.
    let message = second
        .get(&format!("/api/v1/app/{app}/msg/{}", sent[4]))
        .await;
    let created = message.body["timestamp"]
        .as_str()
        .expect("a timestamp")
        .to_owned();
    let reply = second
        .post(&format!("{consumer}/seek"), &json!({"after": created}))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.body["iterator"]
        .as_str()
        .is_some_and(|i| i < sent[4].as_str()));
    let page = poll(&second, &format!("{consumer}?limit=250")).await;
    let read = ids(&page);
    // Messages created in the same millisecond as message 4 may come first.
    let from = read
        .iter()
        .position(|id| *id == sent[4])
        .expect("message 4 is read again");
    assert_eq!(read[from..], sent[4..]);
    assert!(read[..from].iter().all(|id| sent[..4].contains(id)));

    let bad = second
        .post(&format!("{consumer}/seek"), &json!({"after": "yesterday"}))
        .await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
}
