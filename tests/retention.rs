//! Expunging content: the retention job, and `DELETE …/content` on
//! messages and attempts, checked through the API of a running hookd.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{eventually, Answer, Api, Hookd, Receiver, Settings, WAIT};

/// Waits for the first attempt of a message and returns it.
async fn first_attempt(api: &Api, app: &str, msg: &str) -> Value {
    eventually(WAIT, &format!("an attempt of {msg}"), || async {
        api.attempts_for_message(app, msg).await.into_iter().next()
    })
    .await
}

async fn delete(api: &Api, path: &str) -> common::Reply {
    api.call(reqwest::Method::DELETE, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expunges_old_payloads_and_responses() {
    let hookd = Settings::new()
        .set("HOOKD_RETENTION_PERIOD", "2s")
        .set("HOOKD_RETENTION_INTERVAL", "200ms")
        .start()
        .await;
    let receiver = Receiver::always(Answer::ok().body(b"thanks".to_vec()));
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    let sent_at = Instant::now();
    let old = hookd.send_message(&app, r#"{"n":1}"#).await;
    let attempt = first_attempt(&hookd, &app, &old).await;
    assert_eq!(attempt["response"], "thanks", "response before expiry");
    let message_path = format!("/api/v1/app/{app}/msg/{old}");
    let attempt_path = format!("{message_path}/attempt/{}", common::id_of(&attempt));

    let expired = eventually(WAIT, "the payload to be expunged", || async {
        let reply = hookd.get(&message_path).await;
        (reply.body["payload"] != json!({"n": 1})).then_some(reply.body)
    })
    .await;
    let age = sent_at.elapsed();
    assert!(
        age >= Duration::from_millis(1900),
        "the payload was expunged {age:?} after it was sent, before the 2 s period"
    );
    assert_eq!(expired["payload"], json!({"expired": true}), "{expired}");
    assert_eq!(expired["eventType"], common::EVENT_TYPE, "metadata stays");
    let attempt = eventually(WAIT, "the response to be expunged", || async {
        let reply = hookd.get(&attempt_path).await;
        (reply.body["response"] != "thanks").then_some(reply.body)
    })
    .await;
    assert_eq!(attempt["response"], "EXPUNGED", "{attempt}");
    assert_eq!(attempt["responseStatusCode"], 200, "metadata stays");

    // A message younger than the period keeps its payload.
    let young = hookd.send_message(&app, r#"{"n":2}"#).await;
    let reply = hookd.get(&format!("/api/v1/app/{app}/msg/{young}")).await;
    assert_eq!(reply.body["payload"], json!({"n": 2}), "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunged_message_reads_expired() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let msg = hookd.send_message(&app, r#"{"secret":"s3cr3t"}"#).await;
    let kept = hookd.send_message(&app, r#"{"n":2}"#).await;
    receiver.wait_for_requests(2, WAIT).await;

    let reply = delete(&hookd, &format!("/api/v1/app/{app}/msg/{msg}/content")).await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);

    let path = format!("/api/v1/app/{app}/msg/{msg}");
    let reply = hookd.get(&path).await;
    assert_eq!(
        reply.body["payload"],
        json!({"expired": true}),
        "{:?}",
        reply.body
    );
    let reply = hookd.get(&format!("{path}?with_content=false")).await;
    assert_eq!(reply.body["payload"], json!({}), "without content");
    let reply = hookd.get(&format!("/api/v1/app/{app}/msg/{kept}")).await;
    assert_eq!(reply.body["payload"], json!({"n": 2}), "another message");

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/msg/{msg}/endpoint/{endpoint}/resend"),
            &json!({}),
        )
        .await;
    assert_eq!(
        reply.status, 400,
        "resend of an expunged message: {:?}",
        reply.body
    );
    assert_eq!(reply.body["code"], "payload_expunged");

    let reply = delete(
        &hookd,
        &format!("/api/v1/app/{app}/msg/msg_missing/content"),
    )
    .await;
    assert_eq!(reply.status, 404, "unknown message: {:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunged_attempt_reads_expunged() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok().body(b"account 42".to_vec()));
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let other = hookd.send_message(&app, r#"{"n":2}"#).await;
    let attempt = common::id_of(&first_attempt(&hookd, &app, &msg).await);
    let other_attempt = common::id_of(&first_attempt(&hookd, &app, &other).await);

    let path = format!("/api/v1/app/{app}/msg/{msg}/attempt/{attempt}");
    let reply = delete(&hookd, &format!("{path}/content")).await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
    let reply = hookd.get(&path).await;
    assert_eq!(reply.body["response"], "EXPUNGED", "{:?}", reply.body);
    assert_eq!(reply.body["responseStatusCode"], 200, "{:?}", reply.body);
    let reply = hookd
        .get(&format!(
            "/api/v1/app/{app}/msg/{other}/attempt/{other_attempt}"
        ))
        .await;
    assert_eq!(reply.body["response"], "account 42", "another attempt");

    let reply = delete(
        &hookd,
        &format!("/api/v1/app/{app}/msg/{msg}/attempt/atmpt_missing/content"),
    )
    .await;
    assert_eq!(reply.status, 404, "unknown attempt: {:?}", reply.body);
}
