//! The SSRF guard: host names are checked when hookd connects, and IP
//! literals outside `allowed_networks` are rejected by the API in every
//! spelling. All traffic stays on 127.0.0.0/8.

mod common;

use serde_json::json;

use common::{Answer, Hookd, Receiver, Settings, WAIT};

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
