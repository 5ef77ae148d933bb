//! hookd nodes sharing one PostgreSQL database: each endpoint is delivered
//! by one node at a time, work moves when a node dies or stops, and new
//! deliveries reach the node that owns their endpoint.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 with trust auth (or
//! `HOOKD_TEST_POSTGRES_URL`); each test creates its own database.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::{Answer, Api, HookdProcess, Received, Receiver, Settings};
use serde_json::json;

/// Settings of a node: the shared database, its name, a lease of 7 s (the
/// least allowed with the tests' 1 s request timeout) and quick retries.
fn node_settings(database: &TestDatabase, node_id: &str) -> Settings {
    Settings::new()
        .set("HOOKD_DATABASE_URL", &database.url)
        .set("HOOKD_NODE_ID", node_id)
        .set("HOOKD_LEASE_DURATION", "7s")
        .set("HOOKD_RETRY_SCHEDULE", "200ms,400ms,800ms,1s,1s,1s")
}

/// The requests in progress at one endpoint, by `webhook-id`, and any two
/// with the same id that were in progress at once.
#[derive(Default)]
struct OverlapWatch {
    /// Per webhook-id: until when the response to its latest request is sent.
    busy_until: HashMap<String, Instant>,
    overlaps: Vec<String>,
}

/// Starts a receiver that responds 200 after `delay` and records overlapping
/// requests with the same `webhook-id`.
fn watched_receiver(watch: Arc<Mutex<OverlapWatch>>, delay: Duration) -> Receiver {
    Receiver::start(move |_, request: &Received| {
        let now = Instant::now();
        let mut watch = watch.lock().unwrap();
        let id = request.webhook_id().to_owned();
        if watch.busy_until.get(&id).is_some_and(|until| *until > now) {
            watch.overlaps.push(id.clone());
        }
        watch.busy_until.insert(id, now + delay);
        Answer::ok().after(delay)
    })
}

/// Starts one hookd process per name on the shared database, each with its
/// own data folder and log under `dir`, and waits until they have split
/// the partitions between them.
async fn start_nodes(
    database: &TestDatabase,
    dir: &std::path::Path,
    names: &[&str],
    configure: impl Fn(Settings) -> Settings,
) -> Vec<HookdProcess> {
    let mut nodes = Vec::new();
    for name in names {
        let data_dir = dir.join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let settings = configure(node_settings(database, name));
        nodes.push(HookdProcess::spawn(&settings, &data_dir, &format!("{name}.log")).await);
    }
    let refs: Vec<&HookdProcess> = nodes.iter().collect();
    wait_balanced(&refs).await;
    nodes
}

/// Reads one gauge or counter from a node's `/metrics`, 0 when absent.
async fn metric(api: &Api, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// Waits until the nodes' held partitions add up to all 64 with each node
/// holding some, which means the cluster has balanced.
async fn wait_balanced(nodes: &[&HookdProcess]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held = Vec::new();
        for node in nodes {
            held.push(metric(&node.api, "hookd_cluster_partitions_held").await as u32);
        }
        if held.iter().sum::<u32>() == 64 && held.iter().all(|h| *h > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions held per node did not balance within 30 s: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_kill_and_stop() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(
        &database,
        dir.path(),
        &["node-a", "node-b", "node-c"],
        |s| s,
    )
    .await;

    // Twelve endpoints in four applications; every request takes 30 ms,
    // so copies in flight at the kill are likely.
    let mut watches = Vec::new();
    let mut apps = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..4 {
        let app = nodes[0].create_app().await;
        for _ in 0..3 {
            let watch = Arc::new(Mutex::new(OverlapWatch::default()));
            watches.push(watch.clone());
            let receiver = watched_receiver(watch, Duration::from_millis(30));
            nodes[0].create_endpoint(&app, &receiver.url()).await;
            receivers.push(receiver);
        }
        apps.push(app);
    }

    // Send 900 messages round-robin through the nodes that are up, from
    // three tasks at once. Node B is killed after 300 and node C stopped
    // cleanly after 600. Only messages whose POST returned 2xx count.
    let accepted: Arc<Mutex<BTreeMap<u32, String>>> = Default::default();
    let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let apis: Vec<Api> = nodes.iter().map(|node| node.api.clone()).collect();
    let down = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let mut senders = Vec::new();
    for task in 0..3 {
        let (apis, apps, accepted, sent, down) = (
            apis.clone(),
            apps.clone(),
            accepted.clone(),
            sent.clone(),
            down.clone(),
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        senders.push(tokio::spawn(async move {
            loop {
                let seq = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if seq >= 900 {
                    return;
                }
                let skip = down.lock().unwrap().clone();
                let up: Vec<usize> = (0..3).filter(|i| !skip.contains(i)).collect();
                let node = up[(seq as usize + task) % up.len()];
                let app = &apps[seq as usize % apps.len()];
                let body = json!({"eventType": common::EVENT_TYPE, "payload": {"seq": seq}});
                // A request to a node that is going down fails without a
                // response; its message was not accepted.
                let response = client
                    .post(format!("{}/api/v1/app/{app}/msg", apis[node].base))
                    .bearer_auth(common::TOKEN)
                    .json(&body)
                    .send()
                    .await;
                let Ok(response) = response else { continue };
                if !response.status().is_success() {
                    continue;
                }
                let Ok(reply) = response.json::<serde_json::Value>().await else {
                    continue;
                };
                let id = reply["id"].as_str().expect("a message id").to_owned();
                accepted.lock().unwrap().insert(seq, id);
            }
        }));
    }

    let wait_sent = |count: u32| {
        let sent = sent.clone();
        async move {
            while sent.load(std::sync::atomic::Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_sent(300).await;
    down.lock().unwrap().insert(1);
    let node_c = nodes.pop().expect("node C");
    let node_b = nodes.pop().expect("node B");
    node_b.kill().await;
    wait_sent(600).await;
    down.lock().unwrap().insert(2);
    let status = node_c.terminate().await;
    assert!(
        status.success(),
        "node C exits cleanly on SIGTERM: {status}"
    );
    for sender in senders {
        sender.await.unwrap();
    }
    let node_a = nodes.pop().expect("node A");

    // Node A takes every partition: node C's at once, node B's when their
    // leases expire.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&node_a.api, "hookd_cluster_partitions_held").await as u32 != 64 {
        assert!(
            Instant::now() < deadline,
            "node A holds every partition within 30 s of the kill; log: {}",
            common::read_log(&node_a.log_path)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every accepted message reaches each endpoint of its application.
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 850,
        "most messages are accepted while two nodes go away: {}",
        accepted.len()
    );
    let ids_by_seq: HashMap<u32, String> = accepted.clone().into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (index, receiver) in receivers.iter().enumerate() {
        let app_index = index / 3;
        let expected: BTreeSet<String> = accepted
            .iter()
            .filter(|(seq, _)| **seq as usize % apps.len() == app_index)
            .map(|(_, id)| id.clone())
            .collect();
        loop {
            let seen: BTreeSet<String> = receiver
                .requests()
                .iter()
                .map(|r| r.webhook_id().to_owned())
                .collect();
            if expected.is_subset(&seen) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "endpoint {index} got {} of {} accepted messages; log of node A: {}",
                expected.intersection(&seen).count(),
                expected.len(),
                common::read_log(&node_a.log_path)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Each request carries the id of the message whose payload it holds, so
    // a copy sent again after the crash has the same webhook-id.
    let mut duplicates = 0;
    for receiver in &receivers {
        let requests = receiver.requests();
        let mut seen = BTreeSet::new();
        for request in &requests {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let seq = body["seq"].as_u64().expect("the payload's seq") as u32;
            assert_eq!(
                Some(request.webhook_id()),
                ids_by_seq.get(&seq).map(String::as_str),
                "webhook-id of the request for message {seq}"
            );
            if !seen.insert(request.webhook_id().to_owned()) {
                duplicates += 1;
            }
        }
    }
    let overlaps: Vec<String> = watches
        .iter()
        .flat_map(|watch| watch.lock().unwrap().overlaps.clone())
        .collect();
    assert_eq!(
        overlaps,
        Vec::<String>::new(),
        "no two requests with the same webhook-id overlap at one endpoint"
    );
    eprintln!("{duplicates} requests were repeats of a message already received");

    // Nothing is left pending once the last attempts are recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = database.count("SELECT COUNT(*) FROM deliveries WHERE status = 1");
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} deliveries are still pending 30 s after the last message arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(node_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_deliveries_reach_the_owner_by_notification() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&database, dir.path(), &["node-a", "node-b"], |s| s).await;

    // Twenty endpoints spread over the partitions of both nodes; every
    // message goes in through node A.
    let app = nodes[0].create_app().await;
    let receiver = Receiver::always(Answer::ok());
    for index in 0..20 {
        nodes[0]
            .create_endpoint(&app, &format!("{}{index}", receiver.url()))
            .await;
    }
    let mut expected = BTreeSet::new();
    for seq in 0..10 {
        expected.insert(
            nodes[0]
                .send_message(&app, &format!(r#"{{"seq":{seq}}}"#))
                .await,
        );
    }

    // The safety scan runs every 15 s, so deliveries within 10 s came by
    // notification; node B's counter confirms it.
    let requests = receiver.wait_for_requests(200, common::WAIT).await;
    let ids: BTreeSet<String> = requests.iter().map(|r| r.webhook_id().to_owned()).collect();
    assert_eq!(ids, expected);
    assert!(
        metric(&nodes[1].api, "hookd_cluster_endpoints_woken_total").await > 0.0,
        "node B was notified of deliveries stored by node A"
    );
}

/// Returns the most requests that were in progress at once, for requests
/// that each take `delay` from the moment they were read.
fn max_concurrent(requests: &[Received], delay: Duration) -> usize {
    let mut starts: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    starts.sort();
    let mut most = 0;
    for (index, start) in starts.iter().enumerate() {
        let overlapping = starts[index..]
            .iter()
            .take_while(|later| later.duration_since(*start) < delay)
            .count();
        most = most.max(overlapping);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_limits_hold_across_nodes() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(
        &database,
        dir.path(),
        &["node-a", "node-b", "node-c"],
        |s| {
            s.set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "2")
                .set("HOOKD_INITIAL_IN_FLIGHT_PER_ENDPOINT", "2")
        },
    )
    .await;

    // One endpoint that takes 200 ms per request, and one limited to 5
    // messages per second. Every node accepts a third of the messages, so
    // without one owner per endpoint each node would send its own share.
    let delay = Duration::from_millis(200);
    let slow = Receiver::always(Answer::ok().after(delay));
    let limited = Receiver::always(Answer::ok());
    let slow_app = nodes[0].create_app().await;
    nodes[0].create_endpoint(&slow_app, &slow.url()).await;
    let limited_app = nodes[0].create_app().await;
    nodes[0]
        .create_endpoint_with(&limited_app, json!({"url": limited.url(), "rateLimit": 5}))
        .await;
    for n in 0..30 {
        let node = &nodes[n % 3];
        node.send_message(&slow_app, &format!(r#"{{"n":{n}}}"#))
            .await;
        node.send_message(&limited_app, &format!(r#"{{"n":{n}}}"#))
            .await;
    }

    let slow_requests = slow.wait_for_requests(30, Duration::from_secs(30)).await;
    assert_eq!(slow_requests.len(), 30);
    let concurrent = max_concurrent(&slow_requests, delay);
    assert!(
        concurrent <= 2,
        "{concurrent} requests were in flight at once to an endpoint capped at 2"
    );

    // A burst of 5, then one every 200 ms: the 30th request comes at least
    // 5 s after the first. Three nodes each sending at 5 per second would
    // finish in under 2 s.
    let limited_requests = limited.wait_for_requests(30, Duration::from_secs(30)).await;
    assert_eq!(limited_requests.len(), 30);
    let span = limited_requests[29]
        .at
        .duration_since(limited_requests[0].at);
    assert!(
        span >= Duration::from_millis(4600),
        "30 requests at 5 per second took only {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_started_together_agree() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let operational = Receiver::always(Answer::ok());
    let settings = |name: &str| {
        node_settings(&database, name)
            .unset("HOOKD_ADMIN_TOKEN")
            .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &operational.url())
            .set(
                "HOOKD_OPERATIONAL_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
    };
    let mut dirs = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        dirs.push(data_dir);
    }
    // All three start at once on an empty database.
    let (settings_a, settings_b, settings_c) =
        (settings("node-a"), settings("node-b"), settings("node-c"));
    let (a, b, c) = tokio::join!(
        HookdProcess::spawn(&settings_a, &dirs[0], "node-a.log"),
        HookdProcess::spawn(&settings_b, &dirs[1], "node-b.log"),
        HookdProcess::spawn(&settings_c, &dirs[2], "node-c.log"),
    );

    // One node generated the admin token and printed it; every node takes it.
    let printed: Vec<String> = [&a, &b, &c]
        .iter()
        .filter_map(|node| {
            let log = std::fs::read_to_string(&node.log_path).unwrap();
            log.lines()
                .find_map(|line| line.split("choose your own): ").nth(1))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(printed.len(), 1, "one node prints the token: {printed:?}");
    for node in [&a, &b, &c] {
        let reply = node.api.with_token(&printed[0]).get("/api/v1/app").await;
        assert_eq!(reply.status, 200, "{}: {:?}", node.api.base, reply.body);
    }

    // The operational application and its endpoint exist once.
    assert_eq!(
        database.count("SELECT COUNT(*) FROM applications WHERE uid = 'hookd-operational'"),
        1
    );
    assert_eq!(
        database.count(
            "SELECT COUNT(*) FROM endpoints e JOIN applications a ON a.id = e.app_id \
             WHERE a.uid = 'hookd-operational'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_leaving_mid_drain_leaves_none_stuck() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(
        &database,
        dir.path(),
        &["node-a", "node-b", "node-c"],
        |s| s,
    )
    .await;

    // A fourth node joins, so the others start draining partitions for it,
    // and it stops before their drains end.
    let data_dir = dir.path().join("node-d");
    std::fs::create_dir_all(&data_dir).unwrap();
    let node_d =
        HookdProcess::spawn(&node_settings(&database, "node-d"), &data_dir, "node-d.log").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut draining = 0.0;
        for node in &nodes {
            draining += metric(&node.api, "hookd_cluster_partitions_draining").await;
        }
        if draining > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node started draining within 10 s of a fourth node joining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = node_d.terminate().await;
    assert!(status.success(), "node D exits cleanly: {status}");

    // The three nodes end up holding every partition with none draining.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut held, mut draining) = (0.0, 0.0);
        for node in &nodes {
            held += metric(&node.api, "hookd_cluster_partitions_held").await;
            draining += metric(&node.api, "hookd_cluster_partitions_draining").await;
        }
        if held == 64.0 && draining == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after node D left, the nodes hold {held} partitions and drain {draining}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Forty endpoints over the partitions all get their delivery.
    let app = nodes[0].create_app().await;
    let receiver = Receiver::always(Answer::ok());
    for index in 0..40 {
        nodes[0]
            .create_endpoint(&app, &format!("{}{index}", receiver.url()))
            .await;
    }
    nodes[0].send_message(&app, r#"{"n":1}"#).await;
    let requests = receiver
        .wait_for_requests(40, Duration::from_secs(15))
        .await;
    let paths: BTreeSet<String> = requests.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 40, "every endpoint got the message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_id_in_use_is_rejected() {
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&database, dir.path(), &["node-a"], |s| s).await;

    // A second process with the same node id stops at start with a clear error.
    let data_dir = dir.path().join("twin");
    std::fs::create_dir_all(&data_dir).unwrap();
    let settings = node_settings(&database, "node-a");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .arg("serve")
        .envs(settings.env_for("127.0.0.1:0", &data_dir))
        .output()
        .await
        .expect("run hookd serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the twin exits with an error");
    assert!(
        stderr.contains("node id node-a is in use by another running node"),
        "{stderr}"
    );

    // The first node still has the lease of every partition.
    assert_eq!(
        metric(&nodes[0].api, "hookd_cluster_partitions_held").await,
        64.0
    );

    // After a kill -9, a new process with the same id starts: the old row
    // is no longer renewed.
    let node_a = nodes.into_iter().next().unwrap();
    node_a.kill().await;
    let restarted = HookdProcess::spawn(&settings, &dir.path().join("node-a"), "node-a.log").await;
    assert!(restarted.is_healthy().await);
}
