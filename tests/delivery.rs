//! Delivery rules, checked against real receivers on 127.0.0.1 and hookd
//! running in this process: signing, retries, deadlines, response limits,
//! redirects, 410 Gone, Retry-After, isolation, idempotency, resend and recover.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::{
    eventually, expected_signature, message_body, Answer, Api, ClosedPort, Hookd, Received,
    Receiver, Settings, WAIT,
};

/// Escapes and non-ASCII characters that a JSON re-encoder would change.
const RAW_PAYLOAD: &str = r#"{"s":"\u2028 caf\u00e9 \/","n":1.0e10,"e":"€"}"#;

/// How long to keep watching for a request that must not come.
const QUIET: Duration = Duration::from_millis(800);

fn field<'a>(attempt: &'a Value, name: &str) -> &'a Value {
    &attempt[name]
}

/// Sends `count` messages with payload `{"seq":i}` at once. Returns, by
/// message id, the time just before its request was sent.
async fn send_concurrently(api: &Api, app: &str, count: usize) -> HashMap<String, Instant> {
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..count {
        let api = api.clone();
        let app = app.to_owned();
        tasks.spawn(async move {
            let started = Instant::now();
            let id = api.send_message(&app, &format!("{{\"seq\":{seq}}}")).await;
            (id, started)
        });
    }
    let mut sent = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, started) = joined.expect("a send task panicked");
        sent.insert(id, started);
    }
    sent
}

/// Asserts that each request at the healthy receiver carries a message from
/// `sent` and arrived within `limit` of the send.
fn assert_arrived_within(
    requests: &[Received],
    sent: &HashMap<String, Instant>,
    limit: Duration,
    context: &str,
) {
    for request in requests {
        let id = request.webhook_id();
        let started = sent
            .get(id)
            .unwrap_or_else(|| panic!("unexpected webhook-id {id:?} at the healthy receiver"));
        let latency = request.at - *started;
        assert!(
            latency <= limit,
            "{id} arrived {latency:?} after it was sent, {context}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_signed_with_exact_payload() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;
    let secret = hookd.endpoint_secret(&app, &endpoint).await;

    let spaced_payload = r#"{ "a" : [ 1 , 2.50 ] , "b" : "x" }"#;
    let mut sent = HashMap::new();
    for payload in [RAW_PAYLOAD, spaced_payload] {
        let id = hookd.send_message(&app, payload).await;
        sent.insert(id, payload);
    }
    let requests = receiver.wait_for_requests(2, WAIT).await;

    for request in &requests {
        let id = request.webhook_id();
        let payload = sent.get(id).unwrap_or_else(|| {
            panic!("webhook-id {id:?} is not one of the sent messages {sent:?}")
        });
        assert_eq!(request.method, "POST", "method of {id}");
        assert_eq!(
            request.body,
            payload.as_bytes(),
            "body of {id} is {:?}, not the payload bytes sent",
            String::from_utf8_lossy(&request.body)
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/json"),
            "content-type of {id}"
        );

        let timestamp = request
            .header("webhook-timestamp")
            .unwrap_or_else(|| panic!("{id} has no webhook-timestamp header"));
        let seconds: i64 = timestamp
            .parse()
            .unwrap_or_else(|_| panic!("webhook-timestamp {timestamp:?} is not an integer"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs() as i64;
        assert!(
            (now - seconds).abs() <= 5,
            "webhook-timestamp {seconds} is more than 5 s from now ({now})"
        );

        let signature = request
            .header("webhook-signature")
            .unwrap_or_else(|| panic!("{id} has no webhook-signature header"));
        let expected = expected_signature(&secret, id, timestamp, &request.body);
        assert!(
            signature.split(' ').any(|candidate| candidate == expected),
            "webhook-signature {signature:?} does not contain {expected:?}"
        );
        assert!(
            hookd::delivery::signing::verify(&secret, id, seconds, &request.body, signature),
            "hookd's own verify rejects webhook-signature {signature:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_schedule_then_fail() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::status(500));
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(status, 2, "delivery status after the last retry");
    tokio::time::sleep(QUIET).await;

    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        3,
        "the first attempt and 2 retries (schedule 200ms,400ms)"
    );
    for (index, scheduled) in [(1, 200u64), (2, 400)] {
        let gap = requests[index].at - requests[index - 1].at;
        let min = Duration::from_millis(scheduled * 8 / 10);
        let max = Duration::from_millis(scheduled * 12 / 10 + 200 + 1000);
        assert!(
            gap >= min,
            "retry {index} came {gap:?} after the previous attempt, before 0.8 x {scheduled} ms"
        );
        assert!(
            gap <= max,
            "retry {index} came {gap:?} after the previous attempt, later than {max:?}"
        );
    }
    for request in &requests {
        assert_eq!(request.webhook_id(), msg, "webhook-id of every attempt");
    }

    let attempts = hookd.attempts_for_message(&app, &msg).await;
    assert_eq!(attempts.len(), 3, "attempts listed: {attempts:?}");
    for attempt in &attempts {
        assert_eq!(
            field(attempt, "responseStatusCode"),
            500,
            "attempt {attempt}"
        );
        assert_eq!(field(attempt, "status"), 2, "attempt {attempt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_success() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::start(|index, _| {
        if index < 2 {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(status, 0, "delivery status after the third attempt");
    tokio::time::sleep(QUIET).await;

    assert_eq!(receiver.request_count(), 3, "requests at the receiver");
    let attempts = hookd.attempts_for_message(&app, &msg).await;
    let codes: Vec<&Value> = attempts
        .iter()
        .map(|a| field(a, "responseStatusCode"))
        .collect();
    assert_eq!(codes, [500, 500, 200], "attempt status codes, oldest first");
    let statuses: Vec<&Value> = attempts.iter().map(|a| field(a, "status")).collect();
    assert_eq!(statuses, [2, 2, 0], "attempt statuses, oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_receiver_is_cut_off_at_timeout() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::Hang);
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let attempt = eventually(WAIT, "the first attempt to be recorded", || async {
        hookd
            .attempts_for_message(&app, &msg)
            .await
            .into_iter()
            .next()
    })
    .await;

    assert_eq!(field(&attempt, "errorKind"), "timeout", "attempt {attempt}");
    assert_eq!(field(&attempt, "status"), 2, "attempt {attempt}");
    let duration = field(&attempt, "responseDurationMs")
        .as_i64()
        .unwrap_or_else(|| panic!("attempt {attempt} has no responseDurationMs"));
    assert!(
        (900..=2500).contains(&duration),
        "responseDurationMs {duration} is outside 900..=2500 for a 1 s timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_is_cut_off_at_timeout() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::Trickle {
        interval: Duration::from_millis(100),
    });
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let attempt = eventually(WAIT, "the first attempt to be recorded", || async {
        hookd
            .attempts_for_message(&app, &msg)
            .await
            .into_iter()
            .next()
    })
    .await;

    assert_eq!(field(&attempt, "errorKind"), "timeout", "attempt {attempt}");
    assert_eq!(
        field(&attempt, "status"),
        2,
        "a body cut off by the timeout is not a success: {attempt}"
    );
    let duration = field(&attempt, "responseDurationMs")
        .as_i64()
        .unwrap_or_else(|| panic!("attempt {attempt} has no responseDurationMs"));
    assert!(
        (900..=2500).contains(&duration),
        "responseDurationMs {duration} is outside 900..=2500 for a 1 s timeout"
    );
    let cut_off = eventually(WAIT, "the trickled response to break off", || async {
        receiver.trickle_cut_offs().first().copied()
    })
    .await;
    assert!(
        cut_off <= Duration::from_millis(2500),
        "hookd kept reading the trickled body for {cut_off:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_is_truncated() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok().body(vec![b'a'; 10 * 1024 * 1024]));
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(status, 0, "delivery status");

    let attempts = hookd.attempts_for_message(&app, &msg).await;
    assert_eq!(attempts.len(), 1, "attempts listed: {attempts:?}");
    let attempt = &attempts[0];
    assert_eq!(field(attempt, "responseStatusCode"), 200);
    assert_eq!(field(attempt, "status"), 0);
    assert_eq!(
        field(attempt, "responseTruncated"),
        true,
        "responseTruncated of a 10 MB body"
    );
    let response = field(attempt, "response").as_str().unwrap_or_default();
    assert!(
        response.len() <= 4096,
        "stored response is {} bytes, more than 4096",
        response.len()
    );
    assert!(
        response.bytes().all(|b| b == b'a'),
        "stored response is not a prefix of the body: {:?}",
        &response[..response.len().min(64)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_not_followed() {
    let hookd = Hookd::start().await;
    let target = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    let mut cases = Vec::new();
    for code in [301u16, 302, 303, 307, 308] {
        let redirecting = Receiver::always(Answer::status(code).header("Location", &target.url()));
        let endpoint = hookd.create_endpoint(&app, &redirecting.url()).await;
        cases.push((code, redirecting, endpoint));
    }

    // One message goes to every redirecting endpoint.
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    for (code, redirecting, endpoint) in &cases {
        let status = hookd.wait_for_status(&app, &msg, endpoint, &[0, 2]).await;
        assert_eq!(status, 2, "a {code} is a failure");
        assert_eq!(
            redirecting.request_count(),
            3,
            "a {code} is retried like a failure"
        );
    }
    assert_eq!(
        target.connections(),
        0,
        "the redirect target got a connection"
    );

    let attempts = hookd.attempts_for_message(&app, &msg).await;
    assert_eq!(
        attempts.len(),
        3 * cases.len(),
        "attempts listed: {attempts:?}"
    );
    for (code, _, endpoint) in &cases {
        let codes: Vec<&Value> = attempts
            .iter()
            .filter(|a| field(a, "endpointId") == endpoint.as_str())
            .map(|a| field(a, "responseStatusCode"))
            .collect();
        assert_eq!(
            codes, [*code; 3],
            "attempt status codes at the {code} endpoint"
        );
    }
    for attempt in &attempts {
        assert_eq!(field(attempt, "status"), 2, "attempt {attempt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_endpoint_and_cancels_pending() {
    // One request at a time, and a 410 that takes 1 s, so the later messages
    // are still queued when the 410 arrives.
    let hookd = Settings::new()
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "1")
        .set("HOOKD_REQUEST_TIMEOUT", "5s")
        .start()
        .await;
    let receiver = Receiver::always(Answer::status(410).after(Duration::from_secs(1)));
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let first = hookd.send_message(&app, r#"{"n":0}"#).await;
    receiver.wait_for_requests(1, WAIT).await;
    let mut queued = Vec::new();
    for n in 1..4 {
        queued.push(hookd.send_message(&app, &format!("{{\"n\":{n}}}")).await);
    }
    for msg in &queued {
        let status = hookd.delivery_status(&app, msg, &endpoint).await;
        assert_eq!(
            status,
            Some(1),
            "{msg} should be pending while the first request is held"
        );
    }

    let status = hookd
        .wait_for_status(&app, &first, &endpoint, &[2, 4])
        .await;
    assert!(
        [2, 4].contains(&status),
        "status of the message that got 410: {status}"
    );
    let reply = hookd
        .get(&format!("/api/v1/app/{app}/endpoint/{endpoint}"))
        .await;
    assert_eq!(reply.status, 200, "GET endpoint: {:?}", reply.body);
    assert_eq!(
        reply.body["disabled"], true,
        "endpoint after a 410: {:?}",
        reply.body
    );
    for msg in &queued {
        let status = hookd.wait_for_status(&app, msg, &endpoint, &[2, 4]).await;
        assert!([2, 4].contains(&status), "status of queued {msg}: {status}");
    }

    tokio::time::sleep(QUIET).await;
    assert_eq!(
        receiver.request_count(),
        1,
        "requests after the endpoint returned 410"
    );
    let attempts = hookd.attempts_for_endpoint(&app, &endpoint).await;
    assert_eq!(attempts.len(), 1, "attempts at the endpoint: {attempts:?}");
    assert_eq!(field(&attempts[0], "responseStatusCode"), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_next_attempt() {
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "200ms")
        .start()
        .await;
    let receiver = Receiver::start(|index, _| {
        if index == 0 {
            Answer::status(429).header("Retry-After", "2")
        } else {
            Answer::ok()
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let requests = receiver.wait_for_requests(2, WAIT).await;
    let gap = requests[1].at - requests[0].at;
    // hookd schedules retries on the wall clock (they survive restarts) in
    // whole milliseconds, while the receiver stamps requests on the monotonic
    // clock. A CI run saw the gap 6 ms short of 2 s, so the bound leaves 50 ms
    // for clock adjustments. The 200 ms schedule alone would come far sooner.
    assert!(
        gap >= Duration::from_millis(1950),
        "second attempt came {gap:?} after a 429 with Retry-After: 2"
    );
    assert!(
        gap <= Duration::from_millis(3000),
        "second attempt came {gap:?} after a 429 with Retry-After: 2, later than 3 s"
    );
    let status = hookd.wait_for_status(&app, &msg, &endpoint, &[0, 2]).await;
    assert_eq!(status, 0, "delivery status after the second attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_endpoint_does_not_delay_other_app() {
    let hookd = Settings::new()
        .set("HOOKD_REQUEST_TIMEOUT", "10s")
        .start()
        .await;
    let hanging = Receiver::always(Answer::Hang);
    let healthy = Receiver::always(Answer::ok());
    let slow_app = hookd.create_app().await;
    hookd.create_endpoint(&slow_app, &hanging.url()).await;
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &healthy.url()).await;

    send_concurrently(&hookd, &slow_app, 50).await;
    eventually(WAIT, "the hanging receiver to get a request", || async {
        (hanging.request_count() > 0).then_some(())
    })
    .await;

    let sent = send_concurrently(&hookd, &app, 50).await;
    let requests = healthy.wait_for_requests(50, WAIT).await;
    assert_arrived_within(
        &requests,
        &sent,
        Duration::from_secs(2),
        "while another endpoint hangs",
    );
    assert!(
        hanging.open_connections() > 0,
        "the hanging receiver should still hold connections, has {}",
        hanging.open_connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoints_leave_global_slots_free() {
    // 4 slow endpoints could keep 4 requests each, twice the 8 global slots.
    // Once 6 slots are taken, an endpoint may start a request only while it
    // has fewer than 6 / 4 = 1 in flight, so the slow ones keep 6 and a
    // healthy endpoint finds a free slot.
    let hookd = Settings::new()
        .set("HOOKD_MAX_IN_FLIGHT", "8")
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "4")
        .set("HOOKD_INITIAL_IN_FLIGHT_PER_ENDPOINT", "4")
        .set("HOOKD_REQUEST_TIMEOUT", "10s")
        .start()
        .await;
    let slow: Vec<Receiver> = (0..4)
        .map(|_| Receiver::always(Answer::ok().after(Duration::from_secs(5))))
        .collect();
    let healthy = Receiver::always(Answer::ok());
    let slow_app = hookd.create_app().await;
    for receiver in &slow {
        hookd.create_endpoint(&slow_app, &receiver.url()).await;
    }
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &healthy.url()).await;

    send_concurrently(&hookd, &slow_app, 20).await;
    eventually(WAIT, "6 requests open at the slow receivers", || async {
        let open: usize = slow.iter().map(Receiver::open_connections).sum();
        (open >= 6).then_some(())
    })
    .await;

    let sent = send_concurrently(&hookd, &app, 10).await;
    let requests = healthy.wait_for_requests(10, WAIT).await;
    assert_arrived_within(
        &requests,
        &sent,
        Duration::from_millis(1500),
        "while slow endpoints hold 5 s requests",
    );
    let slow_open: usize = slow.iter().map(Receiver::open_connections).sum();
    assert_eq!(
        slow_open, 6,
        "requests open at the slow receivers while the healthy one is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_per_endpoint_is_capped() {
    // A 10 s timeout keeps every request open while the receiver is watched,
    // so no connection closes and the count of accepted ones is exact.
    let hookd = Settings::new()
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "4")
        .set("HOOKD_INITIAL_IN_FLIGHT_PER_ENDPOINT", "4")
        .set("HOOKD_REQUEST_TIMEOUT", "10s")
        .start()
        .await;
    let hanging = Receiver::always(Answer::Hang);
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &hanging.url()).await;

    send_concurrently(&hookd, &app, 50).await;
    eventually(WAIT, "4 connections at the hanging receiver", || async {
        (hanging.connections() >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        hanging.max_open_connections(),
        4,
        "most connections open at once, with max_in_flight_per_endpoint 4"
    );
    assert_eq!(
        hanging.connections(),
        4,
        "connections accepted while 4 requests hang"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_event_id_is_delivered_once() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    let mut ids = Vec::new();
    for n in 0..2 {
        let body = message_body(&format!("{{\"n\":{n}}}"), Some("order-42"));
        let reply = hookd
            .post_message_raw(&app, body)
            .await
            .expect("POST message");
        assert!(
            (200..300).contains(&reply.status),
            "create {n} with eventId order-42: {} {:?}",
            reply.status,
            reply.body
        );
        ids.push(common::id_of(&reply.body));
    }
    assert_eq!(
        ids[0], ids[1],
        "message ids of two creates with one eventId"
    );

    receiver.wait_for_requests(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "deliveries of one eventId");
    assert_eq!(requests[0].webhook_id(), ids[0]);
    assert_eq!(
        requests[0].body, br#"{"n":0}"#,
        "the delivered payload is the first one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeated_event_id_is_delivered_once() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let api = hookd.api.clone();
        let app = app.clone();
        tasks.spawn(async move {
            let body = message_body(&format!("{{\"n\":{n}}}"), Some("order-43"));
            api.post_message_raw(&app, body)
                .await
                .expect("POST message")
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let reply = joined.expect("a send task panicked");
        assert!(
            (200..300).contains(&reply.status),
            "create with eventId order-43: {} {:?}",
            reply.status,
            reply.body
        );
        ids.push(common::id_of(&reply.body));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "message ids of 8 concurrent creates: {ids:?}");

    receiver.wait_for_requests(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(receiver.request_count(), 1, "deliveries of one eventId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_keeps_scheduled_retry() {
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "1500ms")
        .start()
        .await;
    let receiver = Receiver::start(|index, _| {
        if index == 0 {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    });
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &receiver.url()).await;

    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    eventually(WAIT, "the failed first attempt to be recorded", || async {
        (!hookd.attempts_for_message(&app, &msg).await.is_empty()).then_some(())
    })
    .await;
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/msg/{msg}/endpoint/{endpoint}/resend"),
            &json!({}),
        )
        .await;
    assert_eq!(reply.status, 202, "resend: {:?}", reply.body);

    let requests = receiver.wait_for_requests(3, WAIT).await;
    for request in &requests {
        assert_eq!(request.webhook_id(), msg, "webhook-id of every request");
    }
    let retry_gap = requests[2].at - requests[0].at;
    assert!(
        retry_gap >= Duration::from_millis(1200),
        "the third request came {retry_gap:?} after the first, before the scheduled retry (0.8 x 1500 ms)"
    );

    let attempts = eventually(WAIT, "3 recorded attempts", || async {
        let attempts = hookd.attempts_for_message(&app, &msg).await;
        (attempts.len() >= 3).then_some(attempts)
    })
    .await;
    let manual: Vec<&Value> = attempts
        .iter()
        .filter(|a| field(a, "triggerType") == 1)
        .collect();
    let scheduled: Vec<&Value> = attempts
        .iter()
        .filter(|a| field(a, "triggerType") == 0)
        .collect();
    assert_eq!(manual.len(), 1, "manual attempts: {attempts:?}");
    assert_eq!(field(manual[0], "status"), 0, "the resend succeeds");
    let scheduled_codes: Vec<&Value> = scheduled
        .iter()
        .map(|a| field(a, "responseStatusCode"))
        .collect();
    assert_eq!(
        scheduled_codes,
        [500, 200],
        "scheduled attempts: the first, then its retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_resends_failed_messages_in_order() {
    // One request at a time, so arrival order is dispatch order.
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "100ms")
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "1")
        .start()
        .await;
    let port = ClosedPort::reserve();
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, &port.url()).await;

    let since = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let mut sent = Vec::new();
    for seq in 0..3 {
        let payload = format!("{{\"seq\":{seq}}}");
        sent.push((hookd.send_message(&app, &payload).await, payload));
    }
    for (msg, _) in &sent {
        let status = hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, 2, "{msg} while the receiver is down");
        let attempts = hookd.attempts_for_message(&app, msg).await;
        assert_eq!(attempts.len(), 2, "attempts of {msg}: {attempts:?}");
        for attempt in &attempts {
            assert_eq!(
                field(attempt, "errorKind"),
                "connect",
                "attempt of {msg} to a closed port: {attempt}"
            );
        }
    }

    let receiver = port.open(|_, _| Answer::ok());
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint/{endpoint}/recover"),
            &json!({ "since": since }),
        )
        .await;
    assert_eq!(reply.status, 202, "recover: {:?}", reply.body);

    receiver.wait_for_requests(3, WAIT).await;
    tokio::time::sleep(QUIET).await;
    let requests = receiver.requests();
    let arrived: Vec<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    let expected: Vec<&str> = sent.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        arrived, expected,
        "recovered webhook-ids, in arrival order, against creation order"
    );
    for (request, (id, payload)) in requests.iter().zip(&sent) {
        assert_eq!(request.body, payload.as_bytes(), "body of recovered {id}");
    }
    for (msg, _) in &sent {
        let status = hookd.wait_for_status(&app, msg, &endpoint, &[0, 2]).await;
        assert_eq!(status, 0, "{msg} after recover");
    }
}

#[tokio::test]
async fn new_endpoint_starts_with_two_in_flight() {
    // An endpoint starts at the initial limit (2 by default) and earns more
    // by answering, so one that hangs holds only two requests.
    let hookd = Settings::new()
        .set("HOOKD_REQUEST_TIMEOUT", "10s")
        .start()
        .await;
    let hanging = Receiver::always(Answer::Hang);
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &hanging.url()).await;

    send_concurrently(&hookd, &app, 50).await;
    eventually(WAIT, "2 connections at the hanging receiver", || async {
        (hanging.connections() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        hanging.max_open_connections(),
        2,
        "most connections open at once"
    );
    assert_eq!(
        hanging.connections(),
        2,
        "connections accepted while 2 requests hang"
    );
}
