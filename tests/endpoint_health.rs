//! Per-endpoint protection and reporting, against real receivers on
//! 127.0.0.1: the circuit breaker, the rate limit, disabling an endpoint that
//! fails too long, and operational webhooks.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::{expected_signature, Answer, Received, Receiver, Settings};

const OPERATIONAL_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Parses an operational webhook and checks its signature.
fn operational_event(request: &Received) -> Value {
    let id = request.header("webhook-id").expect("webhook-id header");
    let timestamp = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp header");
    let signature = request
        .header("webhook-signature")
        .expect("webhook-signature header");
    let expected = expected_signature(OPERATIONAL_SECRET, id, timestamp, &request.body);
    assert_eq!(signature, expected, "operational webhook signature");
    serde_json::from_slice(&request.body).expect("an operational webhook is JSON")
}

/// Waits until the operational receiver got an event of this type, and returns it.
async fn wait_for_event(receiver: &Receiver, event_type: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(event) = receiver
            .requests()
            .iter()
            .map(operational_event)
            .find(|event| event["type"] == event_type)
        {
            return event;
        }
        let seen: Vec<Value> = receiver
            .requests()
            .iter()
            .map(|r| operational_event(r)["type"].clone())
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {event_type} event within 15 s; got {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn breaker_holds_deliveries_of_failing_endpoint() {
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "1s,1s,1s,1s,1s")
        .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "5")
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "4")
        .start()
        .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let receiver = Receiver::start(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Answer::ok()
        } else {
            Answer::status(500)
        }
    });
    let app = hookd.api.create_app().await;
    hookd.api.create_endpoint(&app, &receiver.url()).await;
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            hookd
                .api
                .send_message(&app, &format!("{{\"n\":{n}}}"))
                .await,
        );
    }

    // Without a breaker, 100 messages would mean 100 requests in the first
    // second. With it, the endpoint gets the requests that failed before it
    // opened (at most the threshold plus the in-flight cap) and then about
    // one probe per second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let while_failing = receiver.request_count();
    assert!(
        while_failing <= 15,
        "{while_failing} requests reached a failing endpoint in 2.5 s"
    );

    healthy.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivered: std::collections::HashSet<String> = receiver
            .requests()
            .iter()
            .skip(while_failing)
            .map(|r| r.webhook_id().to_owned())
            .collect();
        if ids.iter().all(|id| delivered.contains(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 100 messages delivered after the endpoint recovered",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deliveries held back made no attempts while the breaker was open, so
    // most messages took exactly one request.
    let mut requests_per_message: HashMap<String, usize> = HashMap::new();
    for request in receiver.requests() {
        *requests_per_message
            .entry(request.webhook_id().to_owned())
            .or_default() += 1;
    }
    let single = ids
        .iter()
        .filter(|id| requests_per_message.get(*id) == Some(&1))
        .count();
    assert!(
        single >= 80,
        "only {single} of 100 messages were delivered with one request"
    );
}

#[tokio::test]
async fn rate_limit_spaces_deliveries() {
    let hookd = Settings::new().start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.api.create_app().await;
    hookd
        .api
        .create_endpoint_with(&app, json!({"url": receiver.url(), "rateLimit": 5}))
        .await;
    for n in 0..20 {
        hookd
            .api
            .send_message(&app, &format!("{{\"n\":{n}}}"))
            .await;
    }

    let requests = receiver
        .wait_for_requests(20, Duration::from_secs(15))
        .await;
    let first = requests[0].at;
    let in_first_second = requests
        .iter()
        .filter(|r| r.at.duration_since(first) < Duration::from_millis(900))
        .count();
    let span = requests[19].at.duration_since(first);
    // A burst of 5, then one every 200 ms: at most 5 + 4 in the first 0.9 s,
    // and the last of 20 about 3 s after the first.
    assert!(
        in_first_second <= 9,
        "{in_first_second} requests in the first 0.9 s at 5 per second"
    );
    assert!(
        span >= Duration::from_millis(2600),
        "20 requests at 5 per second took only {span:?}"
    );
}

#[tokio::test]
async fn exhausted_delivery_is_reported() {
    let operational = Receiver::always(Answer::ok());
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "100ms")
        .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "0")
        .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &operational.url())
        .set("HOOKD_OPERATIONAL_WEBHOOK_SECRET", OPERATIONAL_SECRET)
        .start()
        .await;
    let failing = Receiver::always(Answer::status(500));
    let app = hookd.api.create_app().await;
    let endpoint = hookd.api.create_endpoint(&app, &failing.url()).await;
    let msg = hookd.api.send_message(&app, r#"{"n":1}"#).await;

    let event = wait_for_event(&operational, "message.attempt.exhausted").await;
    assert_eq!(event["data"]["msgId"], json!(msg));
    assert_eq!(event["data"]["endpointId"], json!(endpoint));
    assert_eq!(event["data"]["appId"], json!(app));
    assert_eq!(
        event["data"]["lastAttempt"]["responseStatusCode"],
        json!(500)
    );
    assert_eq!(failing.request_count(), 2, "one attempt and one retry");
}

#[tokio::test]
async fn endpoint_failing_too_long_is_disabled() {
    let operational = Receiver::always(Answer::ok());
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "300ms,300ms,300ms,300ms")
        .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "0")
        .set("HOOKD_DISABLE_ENDPOINT_AFTER", "500ms")
        .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &operational.url())
        .set("HOOKD_OPERATIONAL_WEBHOOK_SECRET", OPERATIONAL_SECRET)
        .start()
        .await;
    let failing = Receiver::always(Answer::status(500));
    let app = hookd.api.create_app().await;
    let endpoint = hookd.api.create_endpoint(&app, &failing.url()).await;
    hookd.api.send_message(&app, r#"{"n":1}"#).await;

    let event = wait_for_event(&operational, "endpoint.disabled").await;
    assert_eq!(event["data"]["endpointId"], json!(endpoint));
    assert_eq!(event["data"]["trigger"], json!("automatic"));
    assert!(event["data"]["failSince"].is_string(), "{event}");
    let path = format!("/api/v1/app/{app}/endpoint/{endpoint}");
    let reply = hookd.api.get(&path).await;
    assert_eq!(reply.body["disabled"], json!(true));

    // Once disabled, the endpoint gets no more attempts.
    let seen = failing.request_count();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        failing.request_count(),
        seen,
        "a disabled endpoint got a request"
    );

    // Enabling it through the API is reported too.
    let reply = hookd
        .api
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(&json!({"disabled": false})),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let event = wait_for_event(&operational, "endpoint.enabled").await;
    assert_eq!(event["data"]["endpointId"], json!(endpoint));
}

#[tokio::test]
async fn overload_shrinks_requests_in_flight() {
    // The breaker is off, so only the adaptive limit acts: it starts at 8,
    // and each 429 halves it, down to 1. Each 429 carries Retry-After, which
    // delays that delivery's retry but does not change the shrinking.
    let hookd = Settings::new()
        .set(
            "HOOKD_RETRY_SCHEDULE",
            "100ms,100ms,100ms,100ms,100ms,100ms",
        )
        .set("HOOKD_CIRCUIT_BREAKER_FAILURES", "0")
        .set("HOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "8")
        .set("HOOKD_INITIAL_IN_FLIGHT_PER_ENDPOINT", "8")
        .start()
        .await;
    let receiver = Receiver::always(
        Answer::status(429)
            .header("retry-after", "1")
            .after(Duration::from_millis(100)),
    );
    let app = hookd.api.create_app().await;
    hookd.api.create_endpoint(&app, &receiver.url()).await;
    for n in 0..40 {
        hookd
            .api
            .send_message(&app, &format!("{{\"n\":{n}}}"))
            .await;
    }

    receiver.wait_for_requests(8, Duration::from_secs(10)).await;
    assert_eq!(
        receiver.max_open_connections(),
        8,
        "requests in flight before any 429"
    );

    // After the first rounds of 429, at most one request is open at a time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut max_open = 0;
    for _ in 0..50 {
        max_open = max_open.max(receiver.open_connections());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        max_open <= 1,
        "{max_open} requests open at once after repeated 429s"
    );
}
