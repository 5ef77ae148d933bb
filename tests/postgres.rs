//! hookd on a PostgreSQL database, run as a process and driven through its
//! API: deliveries, and a database that drops its connections for a while.

mod common;

use std::collections::BTreeMap;

use common::postgres::TestDatabase;
use common::*;
use serde_json::json;

/// Retries of the test's deliveries: 50 (the maximum) every 300 ms, so a
/// delivery that fails during the outage is still retried after it.
fn retry_schedule() -> String {
    vec!["300ms"; 50].join(",")
}

/// Counts the requests of each `webhook-id`.
fn count_ids(requests: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(request.webhook_id().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_answers_503_and_loses_nothing() {
    let database = TestDatabase::create();
    let live = Receiver::always(Answer::ok());
    // Refuses connections until after the outage, so the deliveries to it
    // stay pending through the outage.
    let late = ClosedPort::reserve();
    let settings = Settings::new()
        .set("HOOKD_DATABASE_URL", &database.url)
        .set("HOOKD_RETRY_SCHEDULE", &retry_schedule())
        .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "0");
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let hookd = HookdProcess::spawn(&settings, &data_dir, "hookd.log").await;

    let app = hookd.create_app_for_event(EVENT_TYPE, "shop").await;
    let live_id = hookd.create_endpoint(&app, &live.url()).await;
    let late_id = hookd.create_endpoint(&app, &late.url()).await;
    let live_secret = hookd.endpoint_secret(&app, &live_id).await;
    let late_secret = hookd.endpoint_secret(&app, &late_id).await;

    let mut before = Vec::new();
    for n in 0..5 {
        before.push(hookd.send_message(&app, &format!(r#"{{"n":{n}}}"#)).await);
    }
    for msg in &before {
        hookd.wait_for_status(&app, msg, &live_id, &[0]).await;
    }

    database.refuse_connections();
    for n in 0..3 {
        let reply = hookd
            .post_message_raw(&app, message_body(&format!(r#"{{"during":{n}}}"#), None))
            .await
            .expect("hookd answers during the outage");
        assert_eq!(
            reply.status, 503,
            "POST during the outage: {:?}",
            reply.body
        );
        assert_eq!(
            reply.body,
            json!({
                "code": "store_unavailable",
                "detail": "the store cannot take writes right now; try again",
            })
        );
    }

    database.allow_connections();
    let first_after = eventually(WAIT, "a message accepted after the outage", || async {
        let reply = hookd
            .post_message_raw(&app, message_body(r#"{"after":0}"#, None))
            .await
            .expect("hookd answers after the outage");
        match reply.status {
            202 => Some(id_of(&reply.body)),
            503 => None,
            status => panic!("POST after the outage: {status} {:?}", reply.body),
        }
    })
    .await;
    let mut after = vec![first_after];
    for n in 1..5 {
        after.push(
            hookd
                .send_message(&app, &format!(r#"{{"after":{n}}}"#))
                .await,
        );
    }
    let late = late.open(|_, _| Answer::ok());

    // Every message accepted, and only those, reaches each endpoint once.
    let accepted: Vec<&String> = before.iter().chain(&after).collect();
    for msg in &accepted {
        for endpoint in [&live_id, &late_id] {
            hookd.wait_for_status(&app, msg, endpoint, &[0]).await;
        }
    }
    let expected: BTreeMap<String, usize> = accepted.iter().map(|id| ((*id).clone(), 1)).collect();
    for (receiver, secret, name) in [(&live, &live_secret, "live"), (&late, &late_secret, "late")] {
        let requests = receiver.requests();
        assert_eq!(
            count_ids(&requests),
            expected,
            "webhook ids at the {name} receiver"
        );
        for request in &requests {
            request.assert_signed(secret);
        }
    }
    let listed: Vec<String> = hookd.all_messages(&app).await.iter().map(id_of).collect();
    let accepted: Vec<String> = accepted.into_iter().cloned().collect();
    assert_eq!(listed, accepted, "the messages stored, oldest first");

    let log_path = hookd.log_path.clone();
    let status = hookd.terminate().await;
    let log = std::fs::read_to_string(&log_path).expect("read the hookd log");
    assert!(!log.contains("panicked"), "hookd panicked: {log}");
    assert!(
        log.contains("the store writer reconnected to the database"),
        "no reconnect logged: {log}"
    );
    assert!(
        status.success(),
        "hookd exited with {status}; log: {}",
        read_log(&log_path)
    );
}
