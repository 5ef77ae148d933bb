//! Recover, replay-missing and bulk replay tasks against real receivers on
//! 127.0.0.1. The tests check what each task sends and in which order, that
//! each message goes out once per task with its original webhook-id, that a
//! task leaves pending retries alone, and that a task survives `kill -9` of
//! the real binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    eventually, expected_signature, read_log, Answer, Api, Hookd, HookdProcess, Received, Receiver,
    Settings, WAIT,
};

/// How long to keep watching for a request that must not come.
const QUIET: Duration = Duration::from_millis(800);

/// Returns an RFC 3339 time `seconds` before now.
fn seconds_ago(seconds: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// Sends a message with this event type, channels and payload, and returns its id.
async fn send(api: &Api, app: &str, event_type: &str, channels: &[&str], payload: Value) -> String {
    let mut body = json!({ "eventType": event_type, "payload": payload });
    if !channels.is_empty() {
        body["channels"] = json!(channels);
    }
    let path = format!("/api/v1/app/{app}/msg");
    let reply = api.post(&path, &body).await;
    assert_eq!(reply.status, 202, "POST {path} {body}: {:?}", reply.body);
    common::id_of(&reply.body)
}

async fn patch_endpoint(api: &Api, app: &str, endpoint: &str, body: Value) {
    let path = format!("/api/v1/app/{app}/endpoint/{endpoint}");
    let reply = api.call(reqwest::Method::PATCH, &path, Some(&body)).await;
    assert_eq!(reply.status, 200, "PATCH {path} {body}: {:?}", reply.body);
}

/// Starts a task with `POST …/endpoint/{endpoint}/{route}`, checks the
/// 202 response's shape and returns the task id.
async fn start_task(api: &Api, app: &str, endpoint: &str, route: &str, body: Value) -> String {
    let path = format!("/api/v1/app/{app}/endpoint/{endpoint}/{route}");
    let reply = api.post(&path, &body).await;
    assert_eq!(reply.status, 202, "POST {path} {body}: {:?}", reply.body);
    let expected_task = match route {
        "recover" => "endpoint.recover",
        "replay-missing" => "endpoint.replay",
        "bulk-replay" => "endpoint.bulk-replay",
        other => panic!("no task route {other}"),
    };
    assert_eq!(reply.body["task"], expected_task, "task of {path}");
    assert_eq!(reply.body["status"], "running", "status of {path}");
    assert!(
        reply.body["updatedAt"].is_string(),
        "updatedAt of {path}: {:?}",
        reply.body
    );
    let id = common::id_of(&reply.body);
    assert!(id.starts_with("qtask_"), "task id {id}");
    id
}

/// Waits until the task is no longer running and returns it.
async fn wait_ended(api: &Api, task: &str) -> Value {
    let path = format!("/api/v1/background-task/{task}");
    eventually(WAIT, &format!("task {task} to end"), || async {
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        (reply.body["status"] != "running").then_some(reply.body)
    })
    .await
}

/// Waits until the task finished and checks its counts.
async fn assert_finished(api: &Api, task: &str, scanned: u64, sent: u64) -> Value {
    let ended = wait_ended(api, task).await;
    assert_eq!(ended["status"], "finished", "task {task}: {ended}");
    assert_eq!(
        ended["data"]["messagesScanned"], scanned,
        "messages of the window looked at by {task}: {ended}"
    );
    assert_eq!(
        ended["data"]["messagesSent"], sent,
        "messages sent by {task}: {ended}"
    );
    assert_eq!(ended["data"]["messagesExpunged"], 0, "task {task}: {ended}");
    ended
}

/// Returns the webhook-ids of requests `from..` in arrival order, after
/// waiting for `count` of them and then for quiet.
async fn arrivals_after(receiver: &Receiver, from: usize, count: usize) -> Vec<String> {
    receiver.wait_for_requests(from + count, WAIT).await;
    tokio::time::sleep(QUIET).await;
    receiver.requests()[from..]
        .iter()
        .map(|r| r.webhook_id().to_owned())
        .collect()
}

/// hookd with one request in flight per endpoint, so that arrival order
/// is the order hookd sends in.
async fn start_serial(retry_schedule: &str) -> Hookd {
    Settings::new()
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "1")
        .set("HOOKD_RETRY_SCHEDULE", retry_schedule)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_missing_sends_what_disabled_endpoint_missed() {
    let hookd = start_serial("100ms").await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let secret = hookd.endpoint_secret(&app, &endpoint).await;
    let since = seconds_ago(1);

    let before = send(&hookd, &app, "test.event", &[], json!({"seq": 0})).await;
    receiver.wait_for_requests(1, WAIT).await;
    patch_endpoint(&hookd, &app, &endpoint, json!({"disabled": true})).await;
    let mut missed = Vec::new();
    for seq in 1..=5 {
        missed.push(send(&hookd, &app, "test.event", &[], json!({ "seq": seq })).await);
    }
    patch_endpoint(&hookd, &app, &endpoint, json!({"disabled": false})).await;
    let after = send(&hookd, &app, "test.event", &[], json!({"seq": 6})).await;
    receiver.wait_for_requests(2, WAIT).await;

    let task = start_task(
        &hookd,
        &app,
        &endpoint,
        "replay-missing",
        json!({ "since": since }),
    )
    .await;
    assert_finished(&hookd, &task, 7, 5).await;
    let arrived = arrivals_after(&receiver, 2, 5).await;
    assert_eq!(
        arrived, missed,
        "webhook-ids replayed, in arrival order, against creation order"
    );

    let requests = receiver.requests();
    let delivered_before: Vec<&str> = requests[..2].iter().map(|r| r.webhook_id()).collect();
    assert_eq!(delivered_before, [before.as_str(), after.as_str()]);
    for (seq, request) in (1..=5).zip(&requests[2..]) {
        assert_eq!(
            request.body,
            format!("{{\"seq\":{seq}}}").into_bytes(),
            "body of replayed {}",
            request.webhook_id()
        );
        let timestamp = request.header("webhook-timestamp").unwrap_or_default();
        assert_eq!(
            request.header("webhook-signature"),
            Some(
                expected_signature(&secret, request.webhook_id(), timestamp, &request.body)
                    .as_str()
            ),
            "signature of replayed {}",
            request.webhook_id()
        );
    }
    let attempts = hookd.attempts_for_message(&app, &missed[0]).await;
    assert_eq!(attempts.len(), 1, "attempts of {}: {attempts:?}", missed[0]);
    assert_eq!(
        attempts[0]["triggerType"], 1,
        "a replay is a manual attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_missing_reaches_new_endpoint_through_filters() {
    let hookd = start_serial("100ms").await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    for name in ["a.one", "b.two"] {
        let reply = hookd
            .post(
                "/api/v1/event-type",
                &json!({"name": name, "description": name}),
            )
            .await;
        assert_eq!(reply.status, 201, "event type {name}: {:?}", reply.body);
    }
    let since = seconds_ago(1);
    let on_x = send(&hookd, &app, "a.one", &["x"], json!({"n": 1})).await;
    send(&hookd, &app, "b.two", &["x"], json!({"n": 2})).await;
    let on_y = send(&hookd, &app, "a.one", &["y"], json!({"n": 3})).await;
    send(&hookd, &app, "a.one", &[], json!({"n": 4})).await;
    send(&hookd, &app, "a.one", &["z"], json!({"n": 5})).await;

    let endpoint = hookd
        .create_endpoint_with(
            &app,
            json!({"url": receiver.url(), "eventTypes": ["a.one"], "channels": ["x", "y"]}),
        )
        .await;
    let task = start_task(
        &hookd,
        &app,
        &endpoint,
        "replay-missing",
        json!({ "since": since }),
    )
    .await;
    assert_finished(&hookd, &task, 5, 2).await;
    assert_eq!(
        arrivals_after(&receiver, 0, 2).await,
        [on_x, on_y],
        "messages the new endpoint's filters accept, in creation order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_sends_each_failed_message_once() {
    let hookd = start_serial("100ms").await;
    let healed = Arc::new(AtomicBool::new(false));
    let receiver = Receiver::start({
        let healed = healed.clone();
        move |_, request: &Received| {
            let failing = String::from_utf8_lossy(&request.body).contains("\"fail\":true");
            if failing && !healed.load(Ordering::SeqCst) {
                Answer::status(500)
            } else {
                Answer::ok()
            }
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let since = seconds_ago(1);

    let mut sent = Vec::new();
    for (seq, fail) in [(0, false), (1, true), (2, false), (3, true), (4, true)] {
        let payload = json!({ "seq": seq, "fail": fail });
        sent.push((send(&hookd, &app, "test.event", &[], payload).await, fail));
    }
    for (msg, fail) in &sent {
        let status = hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, if *fail { 2 } else { 0 }, "{msg} before recover");
    }
    // 2 successes, then 3 failures of 2 attempts each.
    let before = receiver.request_count();
    assert_eq!(before, 8, "requests before recover");

    healed.store(true, Ordering::SeqCst);
    let task = start_task(
        &hookd,
        &app,
        &endpoint,
        "recover",
        json!({ "since": since }),
    )
    .await;
    assert_finished(&hookd, &task, 5, 3).await;
    let failed: Vec<String> = sent
        .iter()
        .filter(|(_, fail)| *fail)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        arrivals_after(&receiver, before, 3).await,
        failed,
        "recovered webhook-ids, in arrival order, against creation order"
    );
    for msg in &failed {
        let status = hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, 0, "{msg} after recover");
    }

    // Everything is delivered now, so a second recover sends nothing.
    let again = start_task(
        &hookd,
        &app,
        &endpoint,
        "recover",
        json!({ "since": since }),
    )
    .await;
    assert_finished(&hookd, &again, 5, 0).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(receiver.request_count(), before + 3, "requests in total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_filters_messages() {
    // No retries, so a failed attempt ends its delivery at once.
    let hookd = start_serial("").await;
    let receiver = Receiver::start(|_, request: &Received| {
        if String::from_utf8_lossy(&request.body).contains("\"bad\":true") {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let since = seconds_ago(1);
    let a_on_x = send(&hookd, &app, "a.one", &["x"], json!({"n": 1})).await;
    let b_on_y = send(&hookd, &app, "b.two", &["y"], json!({"n": 2})).await;
    let a_on_y_bad = send(&hookd, &app, "a.one", &["y"], json!({"n": 3, "bad": true})).await;
    let b_on_x = send(&hookd, &app, "b.two", &["x"], json!({"n": 4})).await;
    for msg in [&a_on_x, &b_on_y, &a_on_y_bad, &b_on_x] {
        hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
    }

    let cases = [
        (json!({"eventTypes": ["a.one"]}), vec![&a_on_x, &a_on_y_bad]),
        (json!({"channel": "x"}), vec![&a_on_x, &b_on_x]),
        (json!({"status": 2}), vec![&a_on_y_bad]),
        (
            json!({"statusCodeClass": 200, "channel": "y"}),
            vec![&b_on_y],
        ),
        (json!({}), vec![&a_on_x, &b_on_y, &a_on_y_bad, &b_on_x]),
    ];
    for (filter, expected) in cases {
        let mut body = filter.clone();
        body["since"] = json!(since);
        let from = receiver.request_count();
        let task = start_task(&hookd, &app, &endpoint, "bulk-replay", body).await;
        let ended = assert_finished(&hookd, &task, 4, expected.len() as u64).await;
        let arrived = arrivals_after(&receiver, from, expected.len()).await;
        let expected_ids: Vec<String> = expected.iter().map(|id| (*id).clone()).collect();
        assert_eq!(arrived, expected_ids, "webhook-ids replayed with {filter}");
        assert_eq!(
            ended["data"]["filter"],
            if filter == json!({}) {
                Value::Null
            } else {
                filter.clone()
            },
            "filter shown with the task"
        );
        // Let the replayed deliveries finish, so the next case sees no pending one.
        for msg in expected {
            hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_keep_pending_retry() {
    let hookd = start_serial("3s").await;
    let receiver = Receiver::start(|index, _| {
        if index == 0 {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let since = seconds_ago(1);
    let msg = send(&hookd, &app, "test.event", &[], json!({"n": 1})).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[3]).await;
    assert_eq!(status, 3, "{msg} waits for its retry");
    let next_attempt = || async {
        let reply = hookd
            .get(&format!("/api/v1/app/{app}/msg/{msg}/endpoint"))
            .await;
        reply.body["data"][0]["nextAttempt"].clone()
    };
    let scheduled = next_attempt().await;
    assert!(scheduled.is_string(), "next attempt of {msg}: {scheduled}");

    for route in ["recover", "replay-missing", "bulk-replay"] {
        let task = start_task(&hookd, &app, &endpoint, route, json!({ "since": since })).await;
        assert_finished(&hookd, &task, 1, 0).await;
    }
    assert_eq!(next_attempt().await, scheduled, "the retry keeps its time");

    let requests = receiver.wait_for_requests(2, WAIT).await;
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(2400),
        "the retry came {gap:?} after the first attempt, before its time (0.8 x 3 s)"
    );
    tokio::time::sleep(QUIET).await;
    let requests = receiver.requests();
    let ids: Vec<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(
        ids,
        [msg.as_str(), msg.as_str()],
        "the attempt and its retry only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_skips_expunged_payloads() {
    let hookd = start_serial("100ms").await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd
        .create_endpoint_with(&app, json!({"url": receiver.url(), "disabled": true}))
        .await;
    let since = seconds_ago(1);
    let expunged = send(&hookd, &app, "test.event", &[], json!({"n": 1})).await;
    let kept = send(&hookd, &app, "test.event", &[], json!({"n": 2})).await;
    let path = format!("/api/v1/app/{app}/msg/{expunged}/content");
    let reply = hookd.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(reply.status, 204, "DELETE {path}: {:?}", reply.body);
    patch_endpoint(&hookd, &app, &endpoint, json!({"disabled": false})).await;

    let task = start_task(
        &hookd,
        &app,
        &endpoint,
        "replay-missing",
        json!({ "since": since }),
    )
    .await;
    let ended = wait_ended(&hookd, &task).await;
    assert_eq!(ended["status"], "finished", "{ended}");
    assert_eq!(ended["data"]["messagesSent"], 1, "{ended}");
    assert_eq!(ended["data"]["messagesExpunged"], 1, "{ended}");
    assert_eq!(arrivals_after(&receiver, 0, 1).await, [kept]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_requests_are_checked() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let path = |route: &str| format!("/api/v1/app/{app}/endpoint/{endpoint}/{route}");

    let cases = [
        ("recover", json!({}), "since"),
        ("recover", json!({"since": "yesterday"}), "since"),
        ("recover", json!({"since": "2999-01-01T00:00:00Z"}), "since"),
        (
            "replay-missing",
            json!({"since": seconds_ago(10), "until": seconds_ago(20)}),
            "until",
        ),
        (
            "bulk-replay",
            json!({"since": seconds_ago(10), "status": 5}),
            "status",
        ),
        (
            "bulk-replay",
            json!({"since": seconds_ago(10), "statusCodeClass": 250}),
            "statusCodeClass",
        ),
        (
            "bulk-replay",
            json!({"since": seconds_ago(10), "channel": "no spaces"}),
            "channel",
        ),
    ];
    for (route, body, field) in cases {
        let reply = hookd.post(&path(route), &body).await;
        assert_eq!(reply.status, 422, "{route} {body}: {:?}", reply.body);
        assert_eq!(
            common::error_location(&reply.body),
            ["body", field],
            "{route} {body}"
        );
    }

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint/ep_missing/recover"),
            &json!({"since": seconds_ago(10)}),
        )
        .await;
    assert_eq!(reply.status, 404, "unknown endpoint: {:?}", reply.body);

    patch_endpoint(&hookd, &app, &endpoint, json!({"disabled": true})).await;
    let reply = hookd
        .post(&path("replay-missing"), &json!({"since": seconds_ago(10)}))
        .await;
    assert_eq!(reply.status, 400, "disabled endpoint: {:?}", reply.body);
    assert_eq!(reply.body["code"], "endpoint_disabled");

    let reply = hookd.get("/api/v1/background-task/qtask_unknown").await;
    assert_eq!(reply.status, 404, "unknown task: {:?}", reply.body);
    let reply = hookd.get("/api/v1/background-task?status=done").await;
    assert_eq!(reply.status, 422, "unknown status: {:?}", reply.body);
    assert_eq!(common::error_location(&reply.body), ["query", "status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_list_by_kind_and_status() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let since = json!({ "since": seconds_ago(10) });
    let recover = start_task(&hookd, &app, &endpoint, "recover", since.clone()).await;
    let replay = start_task(&hookd, &app, &endpoint, "replay-missing", since.clone()).await;
    wait_ended(&hookd, &recover).await;
    wait_ended(&hookd, &replay).await;

    let ids = |reply: common::Reply| -> Vec<String> {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(common::id_of)
            .collect()
    };
    assert_eq!(
        ids(hookd.get("/api/v1/background-task").await),
        [replay.as_str(), recover.as_str()],
        "newest first"
    );
    assert_eq!(
        ids(hookd
            .get("/api/v1/background-task?task=endpoint.recover")
            .await),
        [recover.as_str()]
    );
    assert_eq!(
        ids(hookd
            .get("/api/v1/background-task?status=finished&order=ascending")
            .await),
        [recover.as_str(), replay.as_str()]
    );
    assert!(ids(hookd.get("/api/v1/background-task?status=running").await).is_empty());
}

// ---------------------------------------------------------------------------
// Durability across kill -9, with the real binary
// ---------------------------------------------------------------------------

const REPLAYED: usize = 3000;
/// The task is killed once it has created at least this many deliveries.
const KILL_AFTER_SENT: u64 = 1000;

/// Sends `count` messages `{"seq":N}` with 8 requests at once and returns
/// their ids by seq.
async fn send_many(api: &Api, app: &str, count: usize) -> Vec<String> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (api, app, next) = (api.clone(), app.to_owned(), next.clone());
        senders.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if seq >= count {
                    return sent;
                }
                let id = api.send_message(&app, &format!("{{\"seq\":{seq}}}")).await;
                sent.push((seq, id));
            }
        });
    }
    let mut by_seq = BTreeMap::new();
    while let Some(joined) = senders.join_next().await {
        by_seq.extend(joined.expect("a sender panicked"));
    }
    by_seq.into_values().collect()
}

/// Returns every attempt of an endpoint, following the pages.
async fn all_attempts(api: &Api, app: &str, endpoint: &str) -> Vec<Value> {
    let mut attempts = Vec::new();
    let mut iterator = String::new();
    loop {
        let path = format!(
            "/api/v1/app/{app}/attempt/endpoint/{endpoint}?limit=250&order=ascending&iterator={iterator}"
        );
        let reply = api.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        attempts.extend(reply.body["data"].as_array().expect("a list").clone());
        if reply.body["done"] == true {
            return attempts;
        }
        iterator = reply.body["iterator"]
            .as_str()
            .expect("a page that is not done has an iterator")
            .to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_replay_survives_kill() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let settings = Settings::new().set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "4");
    let first_receiver = Receiver::always(Answer::ok());
    // A slow receiver, so the task is still running when hookd is killed.
    let replay_receiver = Receiver::always(Answer::ok().after(Duration::from_millis(5)));

    let first = HookdProcess::spawn(&settings, &data_dir, "hookd-1.log").await;
    let app = first.create_app().await;
    let endpoint = first.create_endpoint(&app, &first_receiver.url()).await;
    let since = seconds_ago(1);
    let sent = send_many(&first, &app, REPLAYED).await;
    let stats = format!("/api/v1/app/{app}/endpoint/{endpoint}/stats");
    eventually(
        Duration::from_secs(60),
        "every message delivered once",
        || async {
            let reply = first.get(&stats).await;
            (reply.body["success"] == REPLAYED).then_some(())
        },
    )
    .await;
    // Every later request goes to the slow receiver, and only the replay sends.
    patch_endpoint(
        &first,
        &app,
        &endpoint,
        json!({"url": replay_receiver.url()}),
    )
    .await;

    let task = start_task(
        &first,
        &app,
        &endpoint,
        "bulk-replay",
        json!({ "since": since }),
    )
    .await;
    let task_path = format!("/api/v1/background-task/{task}");
    let seen = eventually(WAIT, "the task to send 1000 messages", || async {
        let reply = first.get(&task_path).await;
        let sent = reply.body["data"]["messagesSent"].as_u64().unwrap_or(0);
        (sent >= KILL_AFTER_SENT).then_some(reply.body)
    })
    .await;
    first.kill().await;
    let killed_at = Instant::now();
    assert_eq!(
        seen["status"], "running",
        "the task when hookd was killed: {seen}"
    );
    let sent_before_kill = seen["data"]["messagesSent"].as_u64().unwrap_or(0);
    assert!(
        sent_before_kill < REPLAYED as u64,
        "the task had sent everything before the kill: {seen}"
    );

    let restarted_at = chrono::Utc::now();
    let second = HookdProcess::spawn(&settings, &data_dir, "hookd-2.log").await;
    let ended = eventually(Duration::from_secs(60), "the task to end", || async {
        let reply = second.get(&task_path).await;
        (reply.body["status"] != "running").then_some(reply.body)
    })
    .await;
    assert_eq!(
        ended["status"], "finished",
        "task after the restart: {ended}"
    );
    assert_eq!(ended["data"]["messagesSent"], REPLAYED, "task: {ended}");
    assert_eq!(ended["data"]["messagesScanned"], REPLAYED, "task: {ended}");

    let expected: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let requests = replay_receiver.requests();
        let arrived: BTreeSet<&str> = requests.iter().map(|r| r.webhook_id()).collect();
        if arrived == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {REPLAYED} replayed messages arrived; log: {}",
            arrived.intersection(&expected).count(),
            read_log(&second.log_path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;

    // The task created one delivery per message: each message has exactly
    // one replay attempt recorded, and it succeeded.
    let mut replay_attempts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for attempt in all_attempts(&second, &app, &endpoint).await {
        if attempt["triggerType"] == 1 {
            let msg = attempt["msgId"].as_str().expect("msgId").to_owned();
            replay_attempts.entry(msg).or_default().push(attempt);
        }
    }
    assert_eq!(
        replay_attempts.len(),
        REPLAYED,
        "messages with a replay attempt"
    );
    for (msg, attempts) in &replay_attempts {
        assert_eq!(attempts.len(), 1, "replay attempts of {msg}: {attempts:?}");
        assert_eq!(attempts[0]["status"], 0, "replay attempt of {msg}");
    }

    // A message arrives twice only when the killed process sent it and died
    // before recording the attempt: the restarted hookd then sends the same
    // delivery again, and only that second attempt is recorded.
    let mut arrivals: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for request in replay_receiver.requests() {
        arrivals
            .entry(request.webhook_id().to_owned())
            .or_default()
            .push(request.at);
    }
    for (msg, times) in arrivals.iter().filter(|(_, times)| times.len() > 1) {
        assert_eq!(times.len(), 2, "arrivals of {msg}");
        assert!(
            times[0] < killed_at && times[1] > killed_at,
            "{msg} arrived twice, not across the kill"
        );
        let recorded = replay_attempts[msg][0]["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .expect("an attempt timestamp");
        assert!(
            recorded >= restarted_at,
            "{msg} arrived twice but its attempt before the kill was recorded at {recorded}"
        );
    }
}
