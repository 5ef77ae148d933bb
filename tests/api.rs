//! Invalid API input: each rejection has the right status and names the
//! field, query parameter or resource at fault.

mod common;

use serde_json::json;

use common::{error_location, message_body, Answer, Hookd, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_payload_must_be_object() {
    let hookd = Hookd::start().await;
    let receiver = Receiver::always(Answer::ok());
    let app = hookd.create_app().await;
    hookd.create_endpoint(&app, &receiver.url()).await;

    for payload in ["[1]", r#""text""#, "1", "null", "true"] {
        let reply = hookd
            .post_message_raw(&app, message_body(payload, None))
            .await
            .expect("POST message");
        assert_eq!(reply.status, 422, "payload {payload}: {:?}", reply.body);
        let location = error_location(&reply.body);
        assert!(
            location.iter().any(|part| part == "payload"),
            "payload {payload}: loc {location:?} does not contain payload: {:?}",
            reply.body
        );
    }
    assert_eq!(
        receiver.request_count(),
        0,
        "rejected messages were delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_without_event_type_is_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/msg"),
            &json!({"payload": {"n": 1}}),
        )
        .await;
    assert_eq!(
        reply.status, 422,
        "message without eventType: {:?}",
        reply.body
    );
    let location = error_location(&reply.body);
    assert!(
        location.iter().any(|part| part == "eventType"),
        "loc {location:?} does not name eventType: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_secret_must_decode() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "secret": "whsec_abc"}),
        )
        .await;
    assert_eq!(reply.status, 422, "secret whsec_abc: {:?}", reply.body);
    let location = error_location(&reply.body);
    assert!(
        location.iter().any(|part| part == "secret"),
        "loc {location:?} does not name secret: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_host_header_is_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "headers": {"Host": "example.com"}}),
        )
        .await;
    assert_eq!(reply.status, 422, "header Host: {:?}", reply.body);
    let location = error_location(&reply.body);
    assert!(
        location.iter().any(|part| part == "headers"),
        "loc {location:?} does not name headers: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_url_hyper_cannot_send_is_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    // The WHATWG rules accept '"' in a host name, but no request can be sent to it.
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "https://\"example.com/hook"}),
        )
        .await;
    assert_eq!(
        reply.status, 422,
        "url with '\"' in the host: {:?}",
        reply.body
    );
    let location = error_location(&reply.body);
    assert!(
        location.iter().any(|part| part == "url"),
        "loc {location:?} does not name url: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limit_zero_is_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    for path in [
        "/api/v1/app?limit=0".to_owned(),
        format!("/api/v1/app/{app}/msg?limit=0"),
        format!("/api/v1/app/{app}/endpoint?limit=0"),
    ] {
        let reply = hookd.get(&path).await;
        assert_eq!(reply.status, 422, "GET {path}: {:?}", reply.body);
        let location = error_location(&reply.body);
        assert!(
            location.iter().any(|part| part == "limit"),
            "GET {path}: loc {location:?} does not name limit: {:?}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_is_not_found() {
    let hookd = Hookd::start().await;

    for path in [
        "/api/v1/app/no-such-app",
        "/api/v1/app/app_01JAAAAAAAAAAAAAAAAAAAAAAA/endpoint",
    ] {
        let reply = hookd.get(path).await;
        assert_eq!(reply.status, 404, "GET {path}: {:?}", reply.body);
        assert_eq!(
            reply.body["code"], "not_found",
            "GET {path}: {:?}",
            reply.body
        );
    }
    let reply = hookd
        .post_message_raw("no-such-app", message_body(r#"{"n":1}"#, None))
        .await
        .expect("POST message");
    assert_eq!(
        reply.status, 404,
        "POST message to no-such-app: {:?}",
        reply.body
    );
    assert_eq!(reply.body["code"], "not_found", "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_unauthorized() {
    let hookd = Hookd::start().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the HTTP client");
    let url = format!("{}/api/v1/app", hookd.base);

    let response = client.get(&url).send().await.expect("GET without a token");
    assert_eq!(response.status(), 401, "GET {url} without a token");

    let response = client
        .get(&url)
        .bearer_auth("wrong-token-of-enough-length")
        .send()
        .await
        .expect("GET with a wrong token");
    assert_eq!(response.status(), 401, "GET {url} with a wrong token");

    let response = client
        .post(&url)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("POST without a token");
    assert_eq!(response.status(), 401, "POST {url} without a token");
    let listed = hookd.get("/api/v1/app").await;
    assert_eq!(
        listed.body["data"].as_array().map(Vec::len),
        Some(0),
        "applications after an unauthorized create: {:?}",
        listed.body
    );
}
