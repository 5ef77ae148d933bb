//! Durability across process ends: the real `hookd serve` binary is killed
//! with SIGKILL or stopped with SIGTERM, then started again on the same data
//! folder.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use common::{read_log, Answer, Api, ClosedPort, HookdProcess, Received, Receiver, Settings, WAIT};

const MESSAGES: usize = 300;
const KILL_AFTER_ACCEPTED: usize = 100;

/// What the API returned for one message of the crash test.
#[derive(Debug, Clone)]
enum Outcome {
    /// 202 with this message id.
    Accepted(String),
    /// The connection was refused, so hookd never saw the request.
    Refused,
    /// The request failed after it may have reached hookd, so the message
    /// may or may not be stored.
    Unknown(String),
}

/// Reads the `seq` of a crash-test payload `{"seq":N}`.
fn seq_of(request: &Received) -> usize {
    let payload: Value = serde_json::from_slice(&request.body).unwrap_or_else(|err| {
        panic!(
            "body {:?} is not JSON: {err}",
            String::from_utf8_lossy(&request.body)
        )
    });
    payload["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("body {payload} has no seq")) as usize
}

/// Sends the messages `{"seq":N}` for N taken from `next` until `MESSAGES`,
/// recording each outcome. Stops at the first request that fails.
async fn send_until_error(
    api: Api,
    app: String,
    next: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<BTreeMap<usize, Outcome>>>,
) {
    loop {
        let seq = next.fetch_add(1, Ordering::SeqCst);
        if seq >= MESSAGES {
            return;
        }
        let body = common::message_body(&format!("{{\"seq\":{seq}}}"), None);
        let outcome = match api.post_message_raw(&app, body).await {
            Ok(reply) if reply.status == 202 => Outcome::Accepted(common::id_of(&reply.body)),
            Ok(reply) => panic!("message {seq}: {} {:?}", reply.status, reply.body),
            Err(err) if err.is_connect() => Outcome::Refused,
            Err(err) => Outcome::Unknown(err.to_string()),
        };
        let failed = !matches!(outcome, Outcome::Accepted(_));
        outcomes.lock().expect("lock outcomes").insert(seq, outcome);
        if failed {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_messages_survive_kill() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let settings = Settings::new();
    let receiver = Receiver::always(Answer::ok().after(Duration::from_millis(20)));

    let first = HookdProcess::spawn(&settings, &data_dir, "hookd-1.log").await;
    let app = first.create_app().await;
    first.create_endpoint(&app, &receiver.url()).await;

    // Four senders at once, so that requests are in flight when hookd dies.
    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        senders.spawn(send_until_error(
            first.api.clone(),
            app.clone(),
            next.clone(),
            outcomes.clone(),
        ));
    }
    common::eventually(WAIT, "100 accepted messages", || async {
        let accepted = outcomes
            .lock()
            .expect("lock outcomes")
            .values()
            .filter(|o| matches!(o, Outcome::Accepted(_)))
            .count();
        (accepted >= KILL_AFTER_ACCEPTED).then_some(())
    })
    .await;
    first.kill().await;
    while let Some(joined) = senders.join_next().await {
        joined.expect("a sender panicked");
    }
    let accepted_before_kill = outcomes
        .lock()
        .expect("lock outcomes")
        .values()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    assert!(
        accepted_before_kill < MESSAGES,
        "all {MESSAGES} messages were accepted before the kill, so it did not hit mid-way"
    );

    let second = HookdProcess::spawn(&settings, &data_dir, "hookd-2.log").await;
    senders.spawn(send_until_error(
        second.api.clone(),
        app.clone(),
        next.clone(),
        outcomes.clone(),
    ));
    while let Some(joined) = senders.join_next().await {
        joined.expect("a sender panicked");
    }
    let outcomes = outcomes.lock().expect("lock outcomes").clone();
    let accepted: BTreeMap<usize, String> = outcomes
        .iter()
        .filter_map(|(seq, o)| match o {
            Outcome::Accepted(id) => Some((*seq, id.clone())),
            _ => None,
        })
        .collect();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let arrived: BTreeSet<String> = receiver
            .requests()
            .iter()
            .map(|r| r.webhook_id().to_owned())
            .collect();
        let missing: Vec<(&usize, &String)> = accepted
            .iter()
            .filter(|(_, id)| !arrived.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} accepted messages never arrived, such as {:?}; log: {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            read_log(&second.log_path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every delivery of one message carries the same webhook-id.
    let mut ids_by_seq: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for request in receiver.requests() {
        ids_by_seq
            .entry(seq_of(&request))
            .or_default()
            .insert(request.webhook_id().to_owned());
    }
    for (seq, ids) in &ids_by_seq {
        assert_eq!(ids.len(), 1, "webhook-ids of message {seq}: {ids:?}");
        let id = ids.first().expect("one id");
        match outcomes.get(seq) {
            Some(Outcome::Accepted(accepted_id)) => {
                assert_eq!(id, accepted_id, "webhook-id of message {seq}")
            }
            Some(Outcome::Refused) => {
                panic!("message {seq} arrived although its connection was refused")
            }
            Some(Outcome::Unknown(error)) => {
                // The request broke off when hookd died. A message that was
                // delivered must also have been stored.
                let reply = second.get(&format!("/api/v1/app/{app}/msg/{id}")).await;
                assert_eq!(
                    reply.status, 200,
                    "message {seq} ({id}) arrived after its request failed with {error:?}, but is not stored: {:?}",
                    reply.body
                );
            }
            None => panic!("message {seq} arrived but was never sent"),
        }
    }
    assert!(
        accepted.len() >= MESSAGES - 4,
        "only {} of {MESSAGES} messages were accepted: {:?}",
        accepted.len(),
        outcomes
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Accepted(_)))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_resume_after_restart() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let schedule = vec!["300ms"; 20].join(",");
    let settings = Settings::new().set("HOOKD_RETRY_SCHEDULE", &schedule);
    let port = ClosedPort::reserve();

    let first = HookdProcess::spawn(&settings, &data_dir, "hookd-1.log").await;
    let app = first.create_app().await;
    let endpoint = first.create_endpoint(&app, &port.url()).await;
    let mut sent = Vec::new();
    for seq in 0..3 {
        sent.push(
            first
                .send_message(&app, &format!("{{\"seq\":{seq}}}"))
                .await,
        );
    }
    for msg in &sent {
        let status = first.wait_for_status(&app, msg, &endpoint, &[3]).await;
        assert_eq!(status, 3, "{msg} is retrying while the receiver is down");
    }
    let exit = first.terminate().await;
    assert!(exit.success(), "hookd exit status after SIGTERM: {exit}");
    // Stay stopped until every scheduled retry is more than 2 s overdue, so
    // the restart must find them as overdue work, not as retries falling due.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let receiver = port.open(|_, _| Answer::ok());
    let second = HookdProcess::spawn(&settings, &data_dir, "hookd-2.log").await;
    let requests = receiver.wait_for_requests(3, WAIT).await;
    let arrived: BTreeSet<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    let expected: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    assert_eq!(arrived, expected, "webhook-ids delivered after the restart");
    for msg in &sent {
        let status = second.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, 0, "{msg} after the restart");
    }
}
