//! The SSRF guard: host names are checked when hookd connects, and IP
//! literals outside `allowed_networks` are rejected by the API in every
//! spelling. Every path that sends a request (deliveries and their retries,
//! resend, recover, operational webhooks, send-example) is tested against a
//! host name that a DNS server on 127.0.0.1 points at an allowed or a blocked
//! address. All traffic stays on 127.0.0.0/8.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{json, Value};

use common::dns::TestDns;
use common::{eventually, id_of, Answer, ClosedPort, Hookd, Receiver, Settings, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_to_loopback_is_blocked_at_connect() {
    let hookd = Settings::new()
        .unset("HOOKD_ALLOWED_NETWORKS")
        .start()
        .await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let url = format!("http://localhost:{}/", receiver.addr.port());
    let endpoint = hookd.create_endpoint(&app, &url).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(status, 2, "delivery to {url} with no allowed networks");

    let attempts = hookd.attempts_for_message(&app, &msg).await;
    assert_eq!(
        attempts.len(),
        3,
        "blocked attempts are retried: {attempts:?}"
    );
    for attempt in &attempts {
        assert_eq!(attempt["errorKind"], "blocked", "attempt {attempt}");
    }
    assert_eq!(
        receiver.connections(),
        0,
        "connections to 127.0.0.1:{} through {url}",
        receiver.addr.port()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_to_allowed_loopback_delivers() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let url = format!("http://localhost:{}/", receiver.addr.port());
    let endpoint = hookd.create_endpoint(&app, &url).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(
        status,
        0,
        "delivery to {url} with 127.0.0.1/32 allowed: {:?}",
        hookd.attempts_for_message(&app, &msg).await
    );
    let requests = receiver.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].webhook_id(), msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_loopback_spellings_are_rejected() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let port = receiver.addr.port();
    let app = hookd.create_app().await;

    let allowed = format!("http://127.0.0.1:{port}/");
    hookd.create_endpoint(&app, &allowed).await;

    let rejected = [
        format!("http://127.0.0.2:{port}/"),
        "http://2130706434/".to_owned(),
        "http://0x7f000002/".to_owned(),
        "http://[::ffff:127.0.0.2]/".to_owned(),
    ];
    for url in &rejected {
        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/endpoint"),
                &json!({ "url": url }),
            )
            .await;
        assert_eq!(
            reply.status, 422,
            "POST endpoint {url} with only 127.0.0.1/32 allowed: {:?}",
            reply.body
        );
        let location = &reply.body["detail"][0]["loc"];
        assert!(
            location
                .as_array()
                .is_some_and(|parts| parts.iter().any(|p| p == "url")),
            "422 for {url} does not name url: {:?}",
            reply.body
        );
    }

    let listed = hookd.get(&format!("/api/v1/app/{app}/endpoint")).await;
    let count = listed.body["data"].as_array().map_or(0, Vec::len);
    assert_eq!(count, 1, "endpoints stored: {:?}", listed.body);
}

// ---------------------------------------------------------------------------
// DNS rebinding: a host name that the test's DNS server points at 127.0.0.1
// (allowed) or 127.0.0.2 (blocked), with receivers on the same port of both
// ---------------------------------------------------------------------------

const REBIND_NAME: &str = "rebind.hookd.test";
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The `response` stored with an attempt that the guard blocked.
const BLOCKED_RESPONSE: &str = "address 127.0.0.2 is loopback and not in allowed_networks";

/// Receivers on 127.0.0.1 and 127.0.0.2 with the same port, both answering 200.
struct ReceiverPair {
    allowed: Receiver,
    blocked: Receiver,
}

impl ReceiverPair {
    fn start() -> Self {
        // The port is free on 127.0.0.1 but may be taken on 127.0.0.2, so try others then.
        for _ in 0..20 {
            let allowed = ClosedPort::reserve();
            let twin = SocketAddr::new(IpAddr::V4(BLOCKED_IP), allowed.addr.port());
            if let Ok(blocked) = ClosedPort::reserve_at(twin) {
                return Self {
                    allowed: allowed.open(|_, _| Answer::ok()),
                    blocked: blocked.open(|_, _| Answer::ok()),
                };
            }
        }
        panic!("found no port that is free on both 127.0.0.1 and 127.0.0.2");
    }

    fn port(&self) -> u16 {
        self.allowed.addr.port()
    }

    /// Returns `http://{name}:{port}/`, which reaches either receiver.
    fn url(&self, name: &str) -> String {
        format!("http://{name}:{}/", self.port())
    }

    fn assert_blocked_untouched(&self) {
        assert_eq!(
            self.blocked.connections(),
            0,
            "connections to the receiver on {}",
            self.blocked.addr
        );
    }
}

/// Settings with only 127.0.0.1/32 allowed and `dns` as the only DNS server.
fn settings_with_dns(dns: &TestDns) -> Settings {
    Settings::new()
        .set("HOOKD_ALLOWED_NETWORKS", "127.0.0.1/32")
        .set("HOOKD_DNS_SERVERS", &dns.addr.to_string())
}

/// hookd with an application and one endpoint at `http://rebind.hookd.test:PORT/`, the
/// name pointing at `first_ip`, and its circuit breaker off.
struct Rebinding {
    dns: TestDns,
    receivers: ReceiverPair,
    hookd: Hookd,
    app: String,
    endpoint: String,
}

impl Rebinding {
    async fn start(first_ip: Ipv4Addr, retry_schedule: &str) -> Self {
        let dns = TestDns::start().await;
        dns.set(REBIND_NAME, first_ip);
        let receivers = ReceiverPair::start();
        let hookd = settings_with_dns(&dns)
            .set("HOOKD_RETRY_SCHEDULE", retry_schedule)
            .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "0")
            .start()
            .await;
        let app = hookd.create_app().await;
        let endpoint = hookd
            .create_endpoint(&app, &receivers.url(REBIND_NAME))
            .await;
        Self {
            dns,
            receivers,
            hookd,
            app,
            endpoint,
        }
    }
}

/// Waits until `path` lists at least `count` attempts, oldest first, and returns them.
async fn wait_for_attempts(hookd: &Hookd, path: &str, count: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{count} attempts at {path}"), || async {
        let reply = hookd
            .get(&format!("{path}?limit=250&order=ascending"))
            .await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        let attempts = reply.body["data"].as_array().cloned().unwrap_or_default();
        (attempts.len() >= count).then_some(attempts)
    })
    .await
}

fn assert_blocked_attempt(attempt: &Value) {
    assert_eq!(attempt["errorKind"], "blocked", "attempt {attempt}");
    assert_eq!(attempt["response"], BLOCKED_RESPONSE, "attempt {attempt}");
    assert_eq!(attempt["responseStatusCode"], 0, "attempt {attempt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebound_name_never_reaches_blocked_address() {
    let Rebinding {
        dns,
        receivers,
        hookd,
        app,
        endpoint,
    } = Rebinding::start(ALLOWED_IP, "500ms,500ms,500ms,500ms,500ms,500ms").await;
    let url = receivers.url(REBIND_NAME);

    // While the name points at 127.0.0.1, messages arrive there.
    let first = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd
        .wait_for_status(&app, &first, &endpoint, &[0, 2])
        .await;
    assert_eq!(
        status, 0,
        "delivery of {first} to {url} resolving to 127.0.0.1"
    );
    let requests = receivers.allowed.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].webhook_id(), first);

    // Rebound to 127.0.0.2, the next attempts are blocked before connecting.
    dns.set(REBIND_NAME, BLOCKED_IP);
    let second = hookd.send_message(&app, r#"{"n":2}"#).await;
    let path = format!("/api/v1/app/{app}/attempt/msg/{second}");
    let attempts = wait_for_attempts(&hookd, &path, 1).await;
    assert_blocked_attempt(&attempts[0]);
    receivers.assert_blocked_untouched();

    // Pointed back at 127.0.0.1, a retry of the same delivery succeeds there.
    dns.set(REBIND_NAME, ALLOWED_IP);
    let status = hookd
        .wait_for_status(&app, &second, &endpoint, &[0, 2])
        .await;
    assert_eq!(
        status, 0,
        "delivery of {second} after the name points back at 127.0.0.1"
    );
    let requests = receivers.allowed.wait_for_requests(2, WAIT).await;
    assert_eq!(requests[1].webhook_id(), second);

    let attempts = hookd.attempts_for_message(&app, &second).await;
    let (last, blocked) = attempts.split_last().expect("at least one attempt");
    assert!(!blocked.is_empty(), "attempts of {second}: {attempts:?}");
    for attempt in blocked {
        assert_blocked_attempt(attempt);
    }
    assert_eq!(last["responseStatusCode"], 200, "last attempt {last}");
    assert_eq!(last["errorKind"], Value::Null, "last attempt {last}");
    receivers.assert_blocked_untouched();
    assert_eq!(receivers.allowed.request_count(), 2);

    // Every attempt looked the name up again: none reused an earlier answer.
    let attempt_count = 1 + attempts.len();
    assert!(
        dns.a_queries(REBIND_NAME) >= attempt_count,
        "{} A queries for {attempt_count} attempts",
        dns.a_queries(REBIND_NAME)
    );
}

/// A name whose answer flips with every query: a connector that checked one lookup and then
/// connected after another would reach 127.0.0.2 here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_answers_never_reach_blocked_address() {
    let Rebinding {
        dns,
        receivers,
        hookd,
        app,
        endpoint,
    } = Rebinding::start(ALLOWED_IP, "200ms,200ms,200ms,200ms").await;
    dns.alternate(REBIND_NAME, &[ALLOWED_IP, BLOCKED_IP]);

    // One message at a time, so that each attempt's lookup gets the next answer in turn.
    let mut blocked_attempts = 0;
    for n in 1..=4 {
        let msg = hookd.send_message(&app, &format!("{{\"n\":{n}}}")).await;
        let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, 0, "delivery of message {n} ({msg})");
        let attempts = hookd.attempts_for_message(&app, &msg).await;
        let (last, blocked) = attempts.split_last().expect("at least one attempt");
        assert_eq!(last["responseStatusCode"], 200, "last attempt {last}");
        for attempt in blocked {
            assert_blocked_attempt(attempt);
        }
        blocked_attempts += blocked.len();
    }

    assert!(blocked_attempts > 0, "no attempt was blocked");
    assert_eq!(receivers.allowed.request_count(), 4);
    receivers.assert_blocked_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_to_rebound_name_is_blocked() {
    let Rebinding {
        dns,
        receivers,
        hookd,
        app,
        endpoint,
    } = Rebinding::start(ALLOWED_IP, "").await;
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    receivers.allowed.wait_for_requests(1, WAIT).await;

    dns.set(REBIND_NAME, BLOCKED_IP);
    let resend = format!("/api/v1/app/{app}/msg/{msg}/endpoint/{endpoint}/resend");
    let reply = hookd.post(&resend, &json!({})).await;
    assert_eq!(reply.status, 202, "POST {resend}: {:?}", reply.body);

    let path = format!("/api/v1/app/{app}/attempt/msg/{msg}");
    let attempts = wait_for_attempts(&hookd, &path, 2).await;
    assert_eq!(attempts[0]["responseStatusCode"], 200, "{attempts:?}");
    assert_blocked_attempt(&attempts[1]);
    assert_eq!(
        attempts[1]["triggerType"], 1,
        "a resend is a manual attempt"
    );
    receivers.assert_blocked_untouched();

    // Once the name points at 127.0.0.1 again, a resend arrives there.
    dns.set(REBIND_NAME, ALLOWED_IP);
    let reply = hookd.post(&resend, &json!({})).await;
    assert_eq!(reply.status, 202, "POST {resend}: {:?}", reply.body);
    let requests = receivers.allowed.wait_for_requests(2, WAIT).await;
    assert_eq!(requests[1].webhook_id(), msg);
    receivers.assert_blocked_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_to_rebound_name_is_blocked() {
    let Rebinding {
        dns,
        receivers,
        hookd,
        app,
        endpoint,
    } = Rebinding::start(BLOCKED_IP, "").await;
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(
        status, 2,
        "delivery of {msg} while the name points at 127.0.0.2"
    );

    let recover = format!("/api/v1/app/{app}/endpoint/{endpoint}/recover");
    let since = json!({"since": "2000-01-01T00:00:00Z"});
    let reply = hookd.post(&recover, &since).await;
    assert_eq!(reply.status, 202, "POST {recover}: {:?}", reply.body);
    // Recover runs as a background task; wait for it to end.
    let task = format!("/api/v1/background-task/{}", id_of(&reply.body));
    let ended = eventually(WAIT, "the recover task to end", || async {
        let reply = hookd.get(&task).await;
        (reply.body["status"] != "running").then_some(reply.body)
    })
    .await;
    assert_eq!(ended["status"], "finished", "{ended}");
    assert_eq!(ended["data"]["messagesSent"], 1, "{ended}");

    let path = format!("/api/v1/app/{app}/attempt/msg/{msg}");
    let attempts = wait_for_attempts(&hookd, &path, 2).await;
    assert_blocked_attempt(&attempts[0]);
    assert_blocked_attempt(&attempts[1]);
    assert_eq!(
        attempts[1]["triggerType"], 1,
        "a recovered attempt is manual"
    );
    receivers.assert_blocked_untouched();

    // Once the name points at 127.0.0.1, recovering again delivers there.
    hookd.wait_for_status(&app, &msg, &endpoint, &[2]).await;
    dns.set(REBIND_NAME, ALLOWED_IP);
    let reply = hookd.post(&recover, &since).await;
    assert_eq!(reply.status, 202, "POST {recover}: {:?}", reply.body);
    let requests = receivers.allowed.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].webhook_id(), msg);
    receivers.assert_blocked_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_webhook_to_rebound_name_is_blocked() {
    const OPS_NAME: &str = "ops.hookd.test";
    let dns = TestDns::start().await;
    dns.set(OPS_NAME, BLOCKED_IP);
    let receivers = ReceiverPair::start();
    let hookd = settings_with_dns(&dns)
        .set("HOOKD_RETRY_SCHEDULE", "")
        .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &receivers.url(OPS_NAME))
        .set(
            "HOOKD_OPERATIONAL_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .start()
        .await;
    let tenant_receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &tenant_receiver.url()).await;
    let endpoint_path = format!("/api/v1/app/{app}/endpoint/{endpoint}");

    let ops_endpoints = hookd.get("/api/v1/app/hookd-operational/endpoint").await;
    assert_eq!(ops_endpoints.status, 200, "{:?}", ops_endpoints.body);
    let ops_endpoint = id_of(&ops_endpoints.body["data"][0]);
    let ops_attempts = format!("/api/v1/app/hookd-operational/attempt/endpoint/{ops_endpoint}");

    // Disabling the endpoint emits endpoint.disabled, which is blocked at connect.
    let reply = hookd
        .call(
            reqwest::Method::PATCH,
            &endpoint_path,
            Some(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(reply.status, 200, "PATCH {endpoint_path}: {:?}", reply.body);
    let attempts = wait_for_attempts(&hookd, &ops_attempts, 1).await;
    assert_blocked_attempt(&attempts[0]);
    receivers.assert_blocked_untouched();

    // Pointed at 127.0.0.1, the next event, endpoint.enabled, arrives there.
    dns.set(OPS_NAME, ALLOWED_IP);
    let reply = hookd
        .call(
            reqwest::Method::PATCH,
            &endpoint_path,
            Some(&json!({"disabled": false})),
        )
        .await;
    assert_eq!(reply.status, 200, "PATCH {endpoint_path}: {:?}", reply.body);
    let requests = receivers.allowed.wait_for_requests(1, WAIT).await;
    let event: Value = serde_json::from_slice(&requests[0].body).expect("a JSON event");
    assert_eq!(event["type"], "endpoint.enabled", "{event}");
    assert_eq!(event["data"]["endpointId"], json!(endpoint), "{event}");
    receivers.assert_blocked_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_example_to_rebound_name_is_blocked() {
    let Rebinding {
        dns,
        receivers,
        hookd,
        app,
        endpoint,
    } = Rebinding::start(BLOCKED_IP, "").await;
    let reply = hookd
        .post(
            "/api/v1/event-type",
            &json!({
                "name": "user.created",
                "description": "a user signed up",
                "schemas": {"1": {"type": "object", "examples": [{"userId": "u_1"}]}},
            }),
        )
        .await;
    assert_eq!(
        reply.status, 201,
        "POST /api/v1/event-type: {:?}",
        reply.body
    );
    let send_example = format!("/api/v1/app/{app}/endpoint/{endpoint}/send-example");

    let reply = hookd
        .post(&send_example, &json!({"eventType": "user.created"}))
        .await;
    assert_eq!(reply.status, 202, "POST {send_example}: {:?}", reply.body);
    let msg = id_of(&reply.body);
    let path = format!("/api/v1/app/{app}/attempt/msg/{msg}");
    let attempts = wait_for_attempts(&hookd, &path, 1).await;
    assert_blocked_attempt(&attempts[0]);
    receivers.assert_blocked_untouched();

    dns.set(REBIND_NAME, ALLOWED_IP);
    let reply = hookd
        .post(&send_example, &json!({"eventType": "user.created"}))
        .await;
    assert_eq!(reply.status, 202, "POST {send_example}: {:?}", reply.body);
    let requests = receivers.allowed.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].webhook_id(), id_of(&reply.body));
    let payload: Value = serde_json::from_slice(&requests[0].body).expect("a JSON payload");
    assert_eq!(payload, json!({"userId": "u_1"}));
    receivers.assert_blocked_untouched();
}
