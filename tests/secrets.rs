//! Secrets at rest and in output, against the real `hookd serve` binary.
//! With a key set, endpoint secrets are encrypted in the SQLite file, and a
//! missing or wrong key stops hookd at start. No secret or token shows up
//! in the log, in `/metrics` or in an error response.

mod common;

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use common::{
    eventually, expected_signature, read_log, Answer, Api, HookdProcess, Receiver, Settings, TOKEN,
    WAIT,
};

/// An encryption key: 32 bytes in base64.
const KEY: &str = "hQ3eDkYoX1mJ5oB1r3Xw9YJp0a6TzqGm7c4vHn2sK8E=";

/// Another valid key, which did not seal the secrets.
const WRONG_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Returns a `whsec_` secret whose 32 key bytes are all `byte`.
fn secret_of(byte: u8) -> String {
    format!("whsec_{}", STANDARD.encode([byte; 32]))
}

/// Reads the two secret columns of an endpoint straight from the SQLite file.
fn stored_secret_columns(data_dir: &Path, endpoint: &str) -> (String, String) {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("hookd.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open hookd's database read-only");
    conn.query_row(
        "SELECT secret, previous_secrets FROM endpoints WHERE id = ?1",
        [endpoint],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .expect("the endpoint's row")
}

/// Returns the names of the files in `data_dir` whose bytes contain `needle`.
fn files_containing(data_dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .expect("read the data folder")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap_or_default();
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .map(|path| path.display().to_string())
        .collect()
}

/// Waits for the delivery of a message and returns its request.
async fn delivery_of(receiver: &Receiver, msg: &str) -> common::Received {
    eventually(WAIT, "the delivery of the message", || async {
        receiver
            .requests()
            .into_iter()
            .find(|request| request.webhook_id() == msg)
    })
    .await
}

/// Asserts that a delivery carries a valid signature for `secret`.
fn assert_signed_with(request: &common::Received, secret: &str) {
    let timestamp = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    let expected = expected_signature(secret, request.webhook_id(), timestamp, &request.body);
    let header = request
        .header("webhook-signature")
        .expect("webhook-signature");
    assert!(
        header.split(' ').any(|signature| signature == expected),
        "webhook-signature {header:?} has no signature for the secret"
    );
}

/// Runs `hookd serve`, expects it to exit with an error at start, and
/// returns its standard error.
async fn failed_start(data_dir: &Path, key: Option<&str>) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookd"));
    command.arg("serve");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("HOOKD_")) {
        command.env_remove(name);
    }
    command
        .env("HOOKD_LISTEN", "127.0.0.1:0")
        .env("HOOKD_DATA_DIR", data_dir)
        .env("HOOKD_ADMIN_TOKEN", TOKEN)
        .kill_on_drop(true);
    if let Some(key) = key {
        command.env("HOOKD_ENCRYPTION_KEY", key);
    }
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("hookd exits within 10 s when the key does not fit")
        .expect("run hookd serve");
    assert!(!output.status.success(), "hookd started: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_secrets_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let receiver = Receiver::always(Answer::ok());
    let operational = Receiver::always(Answer::ok());
    let operational_secret = secret_of(3);
    let settings = Settings::new()
        .set("HOOKD_ENCRYPTION_KEY", KEY)
        .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &operational.url())
        .set("HOOKD_OPERATIONAL_WEBHOOK_SECRET", &operational_secret);
    let first_secret = secret_of(1);

    let hookd = HookdProcess::spawn(&settings, &data_dir, "hookd-1.log").await;
    let app = hookd.create_app().await;
    let endpoint = hookd
        .create_endpoint_with(&app, json!({"url": receiver.url(), "secret": first_secret}))
        .await;
    let rotate = hookd
        .post(
            &format!("/api/v1/app/{app}/endpoint/{endpoint}/secret/rotate"),
            &json!({}),
        )
        .await;
    assert_eq!(rotate.status, 200, "{:?}", rotate.body);
    let rotated = hookd.endpoint_secret(&app, &endpoint).await;
    assert_ne!(rotated, first_secret);

    // Both columns are sealed, and no file of the data folder contains a
    // secret's key: not the database, not its write-ahead log.
    let (secret, previous) = stored_secret_columns(&data_dir, &endpoint);
    assert!(secret.starts_with("enc1:"), "secret column {secret:?}");
    assert!(
        previous.starts_with("enc1:"),
        "previous_secrets column {previous:?}"
    );
    for plaintext in [&first_secret, &rotated, &operational_secret] {
        let key_part = plaintext.strip_prefix("whsec_").expect("a whsec_ secret");
        assert_eq!(
            files_containing(&data_dir, key_part),
            Vec::<String>::new(),
            "{plaintext}"
        );
    }

    // Deliveries are signed with the plaintext secrets: the rotated one and,
    // during its grace period, the first one.
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    let delivery = delivery_of(&receiver, &msg).await;
    assert_signed_with(&delivery, &rotated);
    assert_signed_with(&delivery, &first_secret);

    // After a restart with the same key, deliveries still verify.
    let status = hookd.terminate().await;
    assert!(status.success(), "hookd exited with {status}");
    let hookd = HookdProcess::spawn(&settings, &data_dir, "hookd-2.log").await;
    let msg = hookd.send_message(&app, r#"{"n":2}"#).await;
    let delivery = delivery_of(&receiver, &msg).await;
    assert_signed_with(&delivery, &rotated);
    assert_eq!(hookd.endpoint_secret(&app, &endpoint).await, rotated);
    let status = hookd.terminate().await;
    assert!(status.success(), "hookd exited with {status}");

    // Without the key, or with another one, hookd refuses to start.
    let without = failed_start(&data_dir, None).await;
    assert!(without.contains("HOOKD_ENCRYPTION_KEY"), "{without}");
    assert!(without.contains("no encryption key is set"), "{without}");
    let wrong = failed_start(&data_dir, Some(WRONG_KEY)).await;
    assert!(wrong.contains("HOOKD_ENCRYPTION_KEY"), "{wrong}");
    assert!(
        wrong.contains("does not decrypt with the configured key"),
        "{wrong}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_secrets_are_encrypted_when_key_is_set() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let receiver = Receiver::always(Answer::ok());
    let secret = secret_of(5);

    let hookd = HookdProcess::spawn(&Settings::new(), &data_dir, "hookd-1.log").await;
    let app = hookd.create_app().await;
    let endpoint = hookd
        .create_endpoint_with(&app, json!({"url": receiver.url(), "secret": secret}))
        .await;
    assert_eq!(stored_secret_columns(&data_dir, &endpoint).0, secret);
    let status = hookd.terminate().await;
    assert!(status.success(), "hookd exited with {status}");

    let settings = Settings::new().set("HOOKD_ENCRYPTION_KEY", KEY);
    let hookd = HookdProcess::spawn(&settings, &data_dir, "hookd-2.log").await;

    let (stored, previous) = stored_secret_columns(&data_dir, &endpoint);
    assert!(stored.starts_with("enc1:"), "secret column {stored:?}");
    assert!(
        previous.starts_with("enc1:"),
        "previous_secrets column {previous:?}"
    );
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    assert_signed_with(&delivery_of(&receiver, &msg).await, &secret);
    assert!(
        read_log(&hookd.log_path).contains("encrypted the plaintext endpoint secrets"),
        "{}",
        read_log(&hookd.log_path)
    );
}

/// Collects the body of every response a client got.
#[derive(Default)]
struct Seen {
    bodies: Vec<String>,
}

impl Seen {
    /// Sends a request, checks its status and keeps its body.
    async fn call(
        &mut self,
        api: &Api,
        method: Method,
        path: &str,
        body: Option<&Value>,
        status: u16,
    ) -> Value {
        let reply = api.call(method.clone(), path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        self.bodies.push(reply.body.to_string());
        reply.body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_in_log_metrics_or_errors() {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let data_dir = dir.path().join("data");
    let receiver = Receiver::always(Answer::ok());
    let operational = Receiver::always(Answer::ok());
    let operational_secret = secret_of(7);
    let endpoint_secret = secret_of(8);
    let settings = Settings::new()
        .set("RUST_LOG", "trace")
        .set("HOOKD_ENCRYPTION_KEY", KEY)
        .set("HOOKD_API_REQUESTS_PER_SECOND", "1000")
        .set("HOOKD_OPERATIONAL_WEBHOOK_URLS", &operational.url())
        .set("HOOKD_OPERATIONAL_WEBHOOK_SECRET", &operational_secret);
    let hookd = HookdProcess::spawn(&settings, &data_dir, "hookd.log").await;
    let mut seen = Seen::default();

    // An application token, used on its own application and refused elsewhere.
    let app = hookd.create_app().await;
    let other_app = hookd.create_app().await;
    let access = seen
        .call(
            &hookd,
            Method::POST,
            &format!("/api/v1/auth/app-portal-access/{app}"),
            Some(&json!({"expiry": 3600})),
            200,
        )
        .await;
    let app_token = access["token"].as_str().expect("a token").to_owned();
    let as_app = hookd.with_token(&app_token);
    let endpoint = common::id_of(
        &seen
            .call(
                &as_app,
                Method::POST,
                &format!("/api/v1/app/{app}/endpoint"),
                Some(&json!({"url": receiver.url(), "secret": endpoint_secret})),
                201,
            )
            .await,
    );
    let rotated = seen
        .call(
            &as_app,
            Method::POST,
            &format!("/api/v1/app/{app}/endpoint/{endpoint}/secret/rotate"),
            Some(&json!({})),
            200,
        )
        .await["key"]
        .as_str()
        .expect("the rotated secret")
        .to_owned();
    let other = format!("/api/v1/app/{other_app}");
    seen.call(&as_app, Method::GET, &other, None, 403).await;
    seen.call(&as_app, Method::GET, "/api/v1/app", None, 403)
        .await;

    // Errors about secrets and tokens: an invalid secret, a wrong token, a
    // logged-out token.
    let short_secret = format!("whsec_{}", STANDARD.encode([9u8; 16]));
    seen.call(
        &as_app,
        Method::POST,
        &format!("/api/v1/app/{app}/endpoint"),
        Some(&json!({"url": receiver.url(), "secret": short_secret})),
        422,
    )
    .await;
    let wrong_token = format!("{app_token}x");
    let wrong = hookd.with_token(&wrong_token);
    seen.call(&wrong, Method::GET, "/api/v1/app", None, 401)
        .await;

    // A message, delivered with the rotated secret.
    let msg = hookd.send_message(&app, r#"{"n":1}"#).await;
    assert_signed_with(&delivery_of(&receiver, &msg).await, &rotated);
    seen.call(&as_app, Method::POST, "/api/v1/auth/logout", None, 204)
        .await;
    let own = format!("/api/v1/app/{app}");
    seen.call(&as_app, Method::GET, &own, None, 401).await;

    let metrics = reqwest::get(format!("{}/metrics", hookd.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    let log_path = hookd.log_path.clone();
    let status = hookd.terminate().await;
    assert!(status.success(), "hookd exited with {status}");
    let log = std::fs::read_to_string(&log_path).expect("read the hookd log");
    assert!(log.contains("TRACE"), "the log has no trace lines: {log}");

    let base64_part = |value: &str| {
        value
            .split_once('_')
            .expect("a prefixed value")
            .1
            .to_owned()
    };
    let mut secrets = vec![
        ("admin token", TOKEN.to_owned()),
        ("encryption key", KEY.to_owned()),
        ("application token", app_token.clone()),
        ("application token key", base64_part(&app_token)),
        ("wrong token", wrong_token.clone()),
    ];
    for (name, secret) in [
        ("endpoint secret", &endpoint_secret),
        ("rotated secret", &rotated),
        ("operational secret", &operational_secret),
        ("invalid secret", &short_secret),
    ] {
        secrets.push((name, secret.clone()));
        secrets.push((name, base64_part(secret)));
    }
    for (name, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log contains the {name}"
        );
        assert!(
            !metrics.contains(secret.as_str()),
            "/metrics contains the {name}"
        );
        for body in &seen.bodies {
            if body.contains(secret.as_str()) && !is_issued_secret(name, body) {
                panic!("a response contains the {name}: {body}");
            }
        }
    }
    assert_eq!(seen.bodies.len(), 9, "responses checked: {:?}", seen.bodies);
}

/// The responses that issue a token or a secret contain it by design: the
/// token of app-portal-access and the key of a rotation.
fn is_issued_secret(name: &str, body: &str) -> bool {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match name {
        "application token" | "application token key" => parsed.get("token").is_some(),
        "rotated secret" => parsed.get("key").is_some(),
        _ => false,
    }
}
