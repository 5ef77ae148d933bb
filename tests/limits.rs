//! Limits on what API clients control: body size and format. Each
//! violation gets an exact 4xx status and names the field at fault.

mod common;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{message_body, Hookd, Reply, Settings, TOKEN};

/// Returns the `loc` of the first validation error, such as `["body", "url"]`.
fn error_location(body: &Value) -> Vec<String> {
    body["detail"][0]["loc"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

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
