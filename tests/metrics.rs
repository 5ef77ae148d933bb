//! `/metrics`, read after real deliveries. This file contains one test because
//! the metrics recorder is global to the test process.

mod common;

use std::time::Duration;

use common::{Answer, Receiver, Settings};

/// Returns the value of an unlabelled or labelled sample line, such as
/// `hookd_delivery_outcomes_total{outcome="success"}`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_count_messages_and_outcomes() {
    let hookd = Settings::new()
        .set("HOOKD_RETRY_SCHEDULE", "100ms")
        .set("HOOKD_REQUEST_TIMEOUT", "30s")
        .start()
        .await;
    let ok = Receiver::always(Answer::ok());
    let failing = Receiver::always(Answer::status(500));
    let hanging = Receiver::always(Answer::Hang);
    let app = hookd.api.create_app().await;
    hookd.api.create_endpoint(&app, &ok.url()).await;
    hookd.api.create_endpoint(&app, &failing.url()).await;
    hookd.api.create_endpoint(&app, &hanging.url()).await;
    for n in 0..3 {
        hookd
            .api
            .send_message(&app, &format!("{{\"n\":{n}}}"))
            .await;
    }
    ok.wait_for_requests(3, Duration::from_secs(10)).await;
    // Each failing delivery makes one attempt and one retry.
    failing.wait_for_requests(6, Duration::from_secs(10)).await;
    // A new endpoint starts with 2 requests in flight, so the third message
    // waits in the hanging endpoint's queue until the 30 s deadline.
    hanging.wait_for_requests(2, Duration::from_secs(10)).await;

    let client = reqwest::Client::new();
    let url = format!("{}/metrics", hookd.api.base);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = client.get(&url).send().await.expect("GET /metrics");
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("a text body");
        // The gauges are set every 200 ms, so wait for them as well.
        if sample(&text, "hookd_delivery_outcomes_total{outcome=\"failed\"}") == Some(3.0)
            && sample(&text, "hookd_in_flight_requests") == Some(2.0)
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outcomes never reached their final counts:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    assert_eq!(
        sample(&text, "hookd_messages_accepted_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hookd_delivery_outcomes_total{outcome=\"success\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hookd_delivery_outcomes_total{outcome=\"retry\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hookd_attempt_duration_seconds_count"),
        Some(9.0),
        "{text}"
    );
    assert!(
        sample(&text, "hookd_store_commit_duration_seconds_count").is_some_and(|n| n > 0.0),
        "{text}"
    );
    // The third message to the hanging endpoint is queued. The failing
    // endpoint's open breaker may also hold a finished retry that an
    // overlapping retry scan queued again, which its attempt then skips.
    assert!(
        sample(&text, "hookd_queued_deliveries").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hookd_attempts_recording"),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains(&app),
        "metrics must not carry application ids"
    );
}
