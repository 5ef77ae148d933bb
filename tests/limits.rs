//! Limits on what API clients control: body size and format, custom headers,
//! endpoint URLs, uid and event type syntax, channels and pagination. Each
//! violation gets an exact 4xx status and names the field at fault.

mod common;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{error_location, message_body, Hookd, Reply, Settings, TOKEN};

/// Asserts a 422 in the validation shape whose `loc` is exactly `location`.
fn assert_invalid(reply: &Reply, location: &[&str], case: &str) {
    assert_eq!(reply.status, 422, "{case}: {:?}", reply.body);
    assert_eq!(reply.body["code"], "validation", "{case}: {:?}", reply.body);
    assert_eq!(
        error_location(&reply.body),
        location,
        "{case}: {:?}",
        reply.body
    );
}

/// Sends a request with the admin token, this `Content-Type` (none when
/// `None`) and these body bytes.
async fn send_raw(
    hookd: &Hookd,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the HTTP client");
    let mut request = client
        .request(method.clone(), format!("{}{path}", hookd.base))
        .bearer_auth(TOKEN)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("{method} {path} failed: {err}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("read the response body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply { status, body }
}

fn address_of(hookd: &Hookd) -> String {
    hookd
        .base
        .strip_prefix("http://")
        .expect("the base URL starts with http://")
        .to_owned()
}

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_default_limit_is_one_mebibyte() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    // `{"a":"…"}` has 8 bytes around the string's contents.
    let payload_of = |len: usize| format!("{{\"a\":\"{}\"}}", "x".repeat(len - 8));

    let reply = hookd
        .post_message_raw(&app, message_body(&payload_of(1 << 20), None))
        .await
        .expect("POST a 1 MiB payload");
    assert_eq!(reply.status, 202, "1 MiB payload: {:?}", reply.body);

    let reply = hookd
        .post_message_raw(&app, message_body(&payload_of((1 << 20) + 1), None))
        .await
        .expect("POST a payload of 1 MiB + 1 byte");
    assert_invalid(&reply, &["body", "payload"], "1 MiB + 1 byte payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limit_follows_setting() {
    let hookd = Settings::new()
        .set("HOOKD_MAX_PAYLOAD_BYTES", "2048")
        .start()
        .await;
    let app = hookd.create_app().await;

    let payload = format!("{{\"a\":\"{}\"}}", "x".repeat(2048 - 8 + 1));
    let reply = hookd
        .post_message_raw(&app, message_body(&payload, None))
        .await
        .expect("POST a 2049-byte payload");

    assert_invalid(&reply, &["body", "payload"], "2049-byte payload");
    let message = reply.body["detail"][0]["msg"].as_str().unwrap_or("");
    assert!(message.contains("2048"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_not_reset() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    // Larger than the body limit (payload limit + 64 KiB), sent with a
    // Content-Length. Each size is sent three times, because a connection
    // reset shows only some of the time.
    for size in [2 << 20, 8 << 20] {
        for _ in 0..3 {
            let payload = format!("{{\"a\":\"{}\"}}", "x".repeat(size));
            let reply = hookd
                .post_message_raw(&app, message_body(&payload, None))
                .await
                .unwrap_or_else(|err| panic!("{size}-byte body: no response: {err}"));

            assert_eq!(reply.status, 413, "{size}-byte body: {:?}", reply.body);
            assert_eq!(reply.body["code"], "payload_too_large", "{:?}", reply.body);
            let detail = reply.body["detail"].as_str().unwrap_or("");
            assert!(detail.contains("max_payload_bytes"), "{detail}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_gets_413() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let mut stream = tokio::net::TcpStream::connect(address_of(&hookd))
        .await
        .expect("connect to hookd");

    // A body without a Content-Length, 2 MiB in chunks of 64 KiB.
    let head = format!(
        "POST /api/v1/app/{app}/msg HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        stream.write_all(&frame).await.expect("send a chunk");
    }
    stream
        .write_all(b"0\r\n\r\n")
        .await
        .expect("send the last chunk");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read the response");

    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"code\":\"payload_too_large\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_payload_is_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    // 128 levels: the object and 127 arrays inside it.
    let payload = format!("{{\"a\":{}{}}}", "[".repeat(127), "]".repeat(127));
    let reply = hookd
        .post_message_raw(&app, message_body(&payload, None))
        .await
        .expect("POST a deeply nested payload");
    assert_invalid(&reply, &["body", "payload"], "payload 128 levels deep");

    let payload = format!("{{\"a\":{}{}}}", "[".repeat(126), "]".repeat(126));
    let reply = hookd
        .post_message_raw(&app, message_body(&payload, None))
        .await
        .expect("POST a payload 127 levels deep");
    assert_eq!(
        reply.status, 202,
        "payload 127 levels deep: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_422_naming_body() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let bodies: [(&str, &[u8]); 4] = [
        ("truncated", br#"{"url": "http://127.0.0.1:9/""#),
        ("not UTF-8", b"{\"url\": \"\xff\xfe\"}"),
        ("empty", b""),
        ("a list", b"[]"),
    ];
    for path in [
        format!("/api/v1/app/{app}/endpoint"),
        format!("/api/v1/app/{app}/msg"),
        "/api/v1/event-type".to_owned(),
    ] {
        for (case, body) in bodies {
            let reply = hookd
                .send(Method::POST, &path, Some(body.to_vec()))
                .await
                .expect("POST a malformed body");
            assert_eq!(reply.status, 422, "{case} body to {path}: {:?}", reply.body);
            assert_eq!(reply.body["code"], "validation", "{case}: {:?}", reply.body);
            assert_eq!(
                error_location(&reply.body).first().map(String::as_str),
                Some("body"),
                "{case} body to {path}: {:?}",
                reply.body
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_field_type_names_field() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "rateLimit": "fast"}),
        )
        .await;

    assert_invalid(&reply, &["body", "rateLimit"], "rateLimit as a string");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_type_gets_415() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let body = br#"{"url": "http://127.0.0.1:9/"}"#.to_vec();
    let path = format!("/api/v1/app/{app}/endpoint");

    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let reply = send_raw(
            &hookd,
            Method::POST,
            &path,
            Some(content_type),
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 415, "{content_type}: {:?}", reply.body);
        assert_eq!(
            reply.body["code"], "unsupported_media_type",
            "{:?}",
            reply.body
        );
        let detail = reply.body["detail"].as_str().unwrap_or("");
        assert!(detail.contains("Content-Type"), "{detail}");
    }
    let reply = send_raw(
        &hookd,
        Method::POST,
        &format!("/api/v1/app/{app}/msg"),
        Some("text/plain"),
        message_body("{}", None),
    )
    .await;
    assert_eq!(reply.status, 415, "message as text/plain: {:?}", reply.body);

    for content_type in [Some("application/json; charset=utf-8"), None] {
        let reply = send_raw(&hookd, Method::POST, &path, content_type, body.clone()).await;
        assert_eq!(reply.status, 201, "{content_type:?}: {:?}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    // The Svix SDK models have fields that hookd does not implement, such as
    // an endpoint's `version`.
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "version": 1, "noSuchField": [1, 2]}),
        )
        .await;

    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert!(reply.body.get("noSuchField").is_none(), "{:?}", reply.body);
}

// ---------------------------------------------------------------------------
// Custom headers
// ---------------------------------------------------------------------------

fn numbered_headers(count: usize) -> Value {
    (0..count)
        .map(|i| (format!("X-Custom-{i}"), Value::from("v")))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_count_is_limited() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let path = format!("/api/v1/app/{app}/endpoint");

    let reply = hookd
        .post(
            &path,
            &json!({"url": "http://127.0.0.1:9/", "headers": numbered_headers(21)}),
        )
        .await;
    assert_invalid(&reply, &["body", "headers"], "21 headers on create");

    let endpoint = hookd
        .create_endpoint_with(
            &app,
            json!({"url": "http://127.0.0.1:9/", "headers": numbered_headers(20)}),
        )
        .await;
    let reply = hookd
        .call(
            Method::PATCH,
            &format!("{path}/{endpoint}/headers"),
            Some(&json!({"headers": {"X-One-More": "v"}})),
        )
        .await;
    assert_invalid(&reply, &["body", "headers"], "PATCH to 21 headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_size_is_limited() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let path = format!("/api/v1/app/{app}/endpoint/{endpoint}/headers");

    let long_name = format!("X-{}", "n".repeat(255));
    let cases = [
        ("value of 4097 bytes", json!({"X-Big": "v".repeat(4097)})),
        ("name of 257 bytes", json!({ long_name: "v" })),
    ];
    for (case, headers) in cases {
        let reply = hookd
            .call(Method::PUT, &path, Some(&json!({ "headers": headers })))
            .await;
        assert_invalid(&reply, &["body", "headers"], case);
    }

    let reply = hookd
        .call(
            Method::PUT,
            &path,
            Some(&json!({"headers": {"X-Big": "v".repeat(4096)}})),
        )
        .await;
    assert_eq!(reply.status, 204, "value of 4096 bytes: {:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_breaking_headers_are_rejected() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;

    let cases = [
        json!({"Host": "example.com"}),
        json!({"content-length": "0"}),
        json!({"Transfer-Encoding": "chunked"}),
        json!({"webhook-signature": "v1,forged"}),
        json!({"X-Tenant": "a\r\nInjected: 1"}),
        json!({"X-Tenant": "a\nb"}),
        json!({"Bad Name": "x"}),
        json!({"": "x"}),
    ];
    for headers in cases {
        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/endpoint"),
                &json!({"url": "http://127.0.0.1:9/", "headers": headers}),
            )
            .await;
        assert_invalid(
            &reply,
            &["body", "headers"],
            &format!("create with {headers}"),
        );

        for method in [Method::PUT, Method::PATCH] {
            let reply = hookd
                .call(
                    method.clone(),
                    &format!("/api/v1/app/{app}/endpoint/{endpoint}/headers"),
                    Some(&json!({ "headers": headers })),
                )
                .await;
            assert_invalid(&reply, &["body", "headers"], &format!("{method} {headers}"));
        }
    }
}

// ---------------------------------------------------------------------------
// Endpoint URLs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_url_length_is_limited() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let base = "http://127.0.0.1:9/";

    let too_long = format!("{base}{}", "a".repeat(2049 - base.len()));
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({ "url": too_long }),
        )
        .await;
    assert_invalid(&reply, &["body", "url"], "url of 2049 bytes");

    let longest = format!("{base}{}", "a".repeat(2048 - base.len()));
    hookd.create_endpoint(&app, &longest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_url_scheme_must_be_http_or_https() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    for url in [
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://127.0.0.1:70/",
        "127.0.0.1:9/no-scheme",
    ] {
        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/endpoint"),
                &json!({ "url": url }),
            )
            .await;
        assert_invalid(&reply, &["body", "url"], url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_rejects_http_urls() {
    let hookd = Settings::new()
        .set("HOOKD_HTTPS_ONLY", "true")
        .start()
        .await;
    let app = hookd.create_app().await;
    let path = format!("/api/v1/app/{app}/endpoint");

    let reply = hookd
        .post(&path, &json!({"url": "http://127.0.0.1:9/"}))
        .await;
    assert_invalid(&reply, &["body", "url"], "http URL with https_only");
    let message = reply.body["detail"][0]["msg"].as_str().unwrap_or("");
    assert!(message.contains("https_only"), "{message}");

    let endpoint = hookd.create_endpoint(&app, "https://127.0.0.1:9/").await;
    let reply = hookd
        .call(
            Method::PATCH,
            &format!("{path}/{endpoint}"),
            Some(&json!({"url": "http://127.0.0.1:9/"})),
        )
        .await;
    assert_invalid(&reply, &["body", "url"], "PATCH to an http URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_urls_allowed_by_default() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
}

// ---------------------------------------------------------------------------
// Uids, event types and channels
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_uid_names_field() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let long = "u".repeat(257);
    for uid in ["has space", "a/b", "", long.as_str(), "é"] {
        let reply = hookd
            .post("/api/v1/app", &json!({"name": "x", "uid": uid}))
            .await;
        assert_invalid(
            &reply,
            &["body", "uid"],
            &format!("application uid {uid:?}"),
        );

        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/endpoint"),
                &json!({"url": "http://127.0.0.1:9/", "uid": uid}),
            )
            .await;
        assert_invalid(&reply, &["body", "uid"], &format!("endpoint uid {uid:?}"));

        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/msg"),
                &json!({"eventType": "a.b", "payload": {}, "eventId": uid}),
            )
            .await;
        assert_invalid(&reply, &["body", "eventId"], &format!("eventId {uid:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_event_type_names_field() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;

    let long = "e".repeat(257);
    for name in ["has space", "a/b", "", long.as_str()] {
        let reply = hookd
            .post("/api/v1/event-type", &json!({ "name": name }))
            .await;
        assert_invalid(&reply, &["body", "name"], &format!("event type {name:?}"));

        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/msg"),
                &json!({"eventType": name, "payload": {}}),
            )
            .await;
        assert_invalid(&reply, &["body", "eventType"], &format!("message {name:?}"));

        let reply = hookd
            .post(
                &format!("/api/v1/app/{app}/endpoint"),
                &json!({"url": "http://127.0.0.1:9/", "filterTypes": [name]}),
            )
            .await;
        assert_invalid(&reply, &["body", "eventTypes"], &format!("filter {name:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_type_group_and_flags_are_checked() {
    let hookd = Hookd::start().await;

    let reply = hookd
        .post(
            "/api/v1/event-type",
            &json!({"name": "a.b", "groupName": "has space"}),
        )
        .await;
    assert_invalid(&reply, &["body", "groupName"], "groupName with a space");

    let flags: Vec<String> = (0..21).map(|i| format!("flag-{i}")).collect();
    let reply = hookd
        .post(
            "/api/v1/event-type",
            &json!({"name": "a.b", "featureFlags": flags}),
        )
        .await;
    assert_invalid(&reply, &["body", "featureFlags"], "21 feature flags");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_application_is_checked() {
    let hookd = Hookd::start().await;

    let reply = hookd
        .post(
            "/api/v1/app/new-tenant/msg",
            &json!({"eventType": "a.b", "payload": {}, "application": {"name": ""}}),
        )
        .await;
    assert_invalid(
        &reply,
        &["body", "application", "name"],
        "inline application without a name",
    );

    let reply = hookd.get("/api/v1/app/new-tenant").await;
    assert_eq!(
        reply.status, 404,
        "the application was created: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_path_parameter_names_it() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let long = "p".repeat(257);

    let cases = [
        ("/api/v1/app/has%20space".to_owned(), "app_id"),
        (format!("/api/v1/app/{long}"), "app_id"),
        ("/api/v1/app/a%27b/msg".to_owned(), "app_id"),
        (format!("/api/v1/app/{app}/endpoint/a%22b"), "endpoint_id"),
        (format!("/api/v1/app/{app}/msg/a%00b"), "msg_id"),
        (format!("/api/v1/app/{app}/msg/%FF"), "msg_id"),
        (
            format!("/api/v1/app/{app}/msg/msg_x/attempt/a%2Fb"),
            "attempt_id",
        ),
        (
            format!("/api/v1/app/{app}/attempt/endpoint/{endpoint}x%20y"),
            "endpoint_id",
        ),
        ("/api/v1/event-type/bad%20name".to_owned(), "name"),
    ];
    for (path, param) in cases {
        let reply = hookd.get(&path).await;
        assert_invalid(&reply, &["path", param], &format!("GET {path}"));
    }

    let reply = hookd
        .call(
            Method::PUT,
            "/api/v1/event-type/bad%20name",
            Some(&json!({"description": "x"})),
        )
        .await;
    assert_invalid(&reply, &["path", "name"], "PUT event type bad name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filter_parameter_names_it() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;

    let cases = [
        (
            format!("/api/v1/app/{app}/msg?event_types=bad%20type"),
            "event_types",
        ),
        (
            format!("/api/v1/app/{app}/msg?event_types=a.b,c%27d"),
            "event_types",
        ),
        (
            format!("/api/v1/app/{app}/msg?channel=bad%20channel"),
            "channel",
        ),
        (
            format!("/api/v1/app/{app}/attempt/endpoint/{endpoint}?endpoint_id=a%20b"),
            "endpoint_id",
        ),
        (format!("/api/v1/app/{app}/msg?before=yesterday"), "before"),
        (format!("/api/v1/app/{app}/msg?order=sideways"), "order"),
        (
            format!("/api/v1/app/{app}/msg?with_content=maybe"),
            "with_content",
        ),
    ];
    for (path, param) in cases {
        let reply = hookd.get(&path).await;
        assert_invalid(&reply, &["query", param], &format!("GET {path}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_count_is_limited() {
    let hookd = Hookd::start().await;
    let app = hookd.create_app().await;
    let channels =
        |count: usize| -> Vec<String> { (0..count).map(|i| format!("ch-{i}")).collect() };

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/msg"),
            &json!({"eventType": "a.b", "payload": {}, "channels": channels(11)}),
        )
        .await;
    assert_invalid(&reply, &["body", "channels"], "message with 11 channels");

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "channels": channels(11)}),
        )
        .await;
    assert_invalid(&reply, &["body", "channels"], "endpoint with 11 channels");

    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/msg"),
            &json!({"eventType": "a.b", "payload": {}, "channels": channels(10)}),
        )
        .await;
    assert_eq!(
        reply.status, 202,
        "message with 10 channels: {:?}",
        reply.body
    );
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

/// Returns the path of every list route, for an application with one
/// endpoint and one message.
async fn list_paths(hookd: &Hookd) -> Vec<String> {
    let app = hookd.create_app().await;
    let endpoint = hookd.create_endpoint(&app, "http://127.0.0.1:9/").await;
    let msg = hookd.send_message(&app, "{}").await;
    vec![
        "/api/v1/app".to_owned(),
        "/api/v1/event-type".to_owned(),
        format!("/api/v1/app/{app}/endpoint"),
        format!("/api/v1/app/{app}/msg"),
        format!("/api/v1/app/{app}/msg/{msg}/endpoint"),
        format!("/api/v1/app/{app}/attempt/endpoint/{endpoint}"),
        format!("/api/v1/app/{app}/attempt/msg/{msg}"),
        format!("/api/v1/app/{app}/endpoint/{endpoint}/msg"),
        "/api/v1/background-task".to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_outside_1_to_250_names_limit() {
    let hookd = Hookd::start().await;

    for path in list_paths(&hookd).await {
        for limit in ["0", "251", "-1", "ten", "99999999999999999999999"] {
            let reply = hookd.get(&format!("{path}?limit={limit}")).await;
            assert_invalid(
                &reply,
                &["query", "limit"],
                &format!("{path}?limit={limit}"),
            );
        }
        let reply = hookd.get(&format!("{path}?limit=250")).await;
        assert_eq!(reply.status, 200, "{path}?limit=250: {:?}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_iterator_is_not_server_error() {
    let hookd = Hookd::start().await;
    let junk = "z".repeat(256);

    for path in list_paths(&hookd).await {
        for iterator in [
            "%00",
            "%27%3B%20DROP%20TABLE%20messages%3B--",
            "-msg_x",
            "%FF%FE",
            junk.as_str(),
        ] {
            let reply = hookd.get(&format!("{path}?iterator={iterator}")).await;
            assert_eq!(
                reply.status, 200,
                "{path}?iterator={iterator}: {:?}",
                reply.body
            );
            assert!(reply.body["data"].is_array(), "{path}: {:?}", reply.body);
        }
        let reply = hookd.get(&format!("{path}?iterator={junk}z")).await;
        assert_invalid(
            &reply,
            &["query", "iterator"],
            &format!("{path} iterator of 257"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_fields_is_rejected() {
    let hookd = Hookd::start().await;
    let reply = hookd
        .post("/api/v1/app", &json!({"name": "Acme\u{0}Corp"}))
        .await;
    assert_invalid(&reply, &["body", "name"], "NUL in an application name");

    let app = hookd.create_app().await;
    let reply = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint"),
            &json!({"url": "http://127.0.0.1:9/", "description": "a\u{0}b"}),
        )
        .await;
    assert_invalid(
        &reply,
        &["body", "description"],
        "NUL in an endpoint description",
    );

    let reply = hookd
        .post(
            "/api/v1/event-type",
            &json!({"name": "user.nul", "description": "\u{0}"}),
        )
        .await;
    assert_invalid(
        &reply,
        &["body", "description"],
        "NUL in an event type description",
    );
}
