//! Fuzzes the JSON bodies of the API through hookd's real axum router and a
//! real SQLite store, in process.
//!
//! The first byte of an input picks a route that reads a JSON body, the
//! second picks the ids in its path (existing, by id or uid, or missing) and
//! the `Content-Type`, and the rest is the body. Every response must have a
//! status below 500, and every 4xx must carry the API's JSON error shape.
//!
//! The delivery engine is started and stopped before the first input, so
//! messages and deliveries are stored but nothing sends them: the target
//! opens no network connection. Because the store keeps what earlier inputs
//! created, an input that fails in a long run may pass when replayed alone.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, Response, StatusCode};
use axum::Router;
use hookd::api::{self, auth::hash_token, AppState};
use hookd::config::Config;
use hookd::delivery::{Engine, EngineSettings};
use hookd::recovery::Recovery;
use hookd::store::Store;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-admin-token-0123456789";

/// Smallest `max_payload_bytes` the config accepts, so that inputs of a few
/// kilobytes reach the payload limit.
const MAX_PAYLOAD_BYTES: &str = "1024";

/// The routes that read a JSON body. `{app}`, `{endpoint}` and `{event_type}`
/// are replaced per input.
const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/api/v1/app"),
    (Method::PUT, "/api/v1/app/{app}"),
    (Method::PATCH, "/api/v1/app/{app}"),
    (Method::POST, "/api/v1/event-type"),
    (Method::PUT, "/api/v1/event-type/{event_type}"),
    (Method::PATCH, "/api/v1/event-type/{event_type}"),
    (Method::POST, "/api/v1/app/{app}/endpoint"),
    (Method::PUT, "/api/v1/app/{app}/endpoint/{endpoint}"),
    (Method::PATCH, "/api/v1/app/{app}/endpoint/{endpoint}"),
    (Method::PUT, "/api/v1/app/{app}/endpoint/{endpoint}/headers"),
    (
        Method::PATCH,
        "/api/v1/app/{app}/endpoint/{endpoint}/headers",
    ),
    (
        Method::POST,
        "/api/v1/app/{app}/endpoint/{endpoint}/secret/rotate",
    ),
    (
        Method::POST,
        "/api/v1/app/{app}/endpoint/{endpoint}/recover",
    ),
    (
        Method::POST,
        "/api/v1/app/{app}/endpoint/{endpoint}/send-example",
    ),
    (Method::POST, "/api/v1/app/{app}/msg"),
    (Method::POST, "/api/v1/app/{app}/msg?with_content=false"),
    (
        Method::POST,
        "/api/v1/app/{app}/poller/{endpoint}/consumer/fuzz-consumer/seek",
    ),
];

/// The `Content-Type` values an input can send; `None` sends no header.
const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    None,
    Some("application/vnd.api+json; charset=utf-8"),
    Some("text/plain"),
];

/// A router over a store in a temporary folder, built once per process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// Ids and uids of an application, endpoint and event type that exist.
    apps: [String; 3],
    endpoints: [String; 3],
    event_types: [&'static str; 2],
    /// The store's folder. A static is never dropped, so [`remove_data_dir`]
    /// deletes it when the process exits normally.
    data_dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let harness = Harness::new();
        // SAFETY: atexit only records the pointer of a function that takes
        // no arguments and touches nothing but the initialised harness.
        unsafe { libc::atexit(remove_data_dir) };
        harness
    })
}

/// Deletes the store's folder at exit. A crash aborts without running it;
/// `run.sh` then removes the folder it set in `HOOKD_FUZZ_TMPDIR`.
extern "C" fn remove_data_dir() {
    if let Some(harness) = HARNESS.get() {
        let _ = std::fs::remove_dir_all(harness.data_dir.path());
    }
}

impl Harness {
    fn new() -> Self {
        // A 5xx from a store error is explained only in the log.
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "error");
        }
        hookd::telemetry::init(hookd::config::LogFormat::Text);

        let data_dir = tempfile::Builder::new()
            .prefix("hookd-fuzz-")
            .tempdir_in(scratch_folder())
            .expect("create a temporary data folder");
        let env = [
            (
                "HOOKD_DATA_DIR",
                data_dir.path().to_str().expect("a UTF-8 temp path"),
            ),
            ("HOOKD_ADMIN_TOKEN", TOKEN),
            ("HOOKD_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let config = Config::load(None, env).expect("the fuzz settings are valid");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a Tokio runtime");
        let router = runtime.block_on(start(&config));
        let mut harness = Self {
            runtime,
            router,
            apps: Default::default(),
            endpoints: Default::default(),
            event_types: ["fuzz.event", "fuzz.missing"],
            data_dir,
        };
        harness.create_fixtures();
        harness
    }

    /// Creates an application, an event type with a schema example, an
    /// endpoint and a message, so that routes on existing objects get past
    /// their 404.
    fn create_fixtures(&mut self) {
        let app = self.send_ok(
            Method::POST,
            "/api/v1/app",
            json!({"name": "Fuzz", "uid": "fuzz-app"}),
        );
        let app_id = app["id"].as_str().expect("an application id").to_owned();
        self.send_ok(
            Method::POST,
            "/api/v1/event-type",
            json!({
                "name": "fuzz.event",
                "description": "fuzz",
                "schemas": {"1": {"type": "object", "examples": [{"n": 1}]}},
            }),
        );
        let endpoint = self.send_ok(
            Method::POST,
            &format!("/api/v1/app/{app_id}/endpoint"),
            json!({"url": "https://example.com/hook", "uid": "fuzz-endpoint"}),
        );
        let endpoint_id = endpoint["id"].as_str().expect("an endpoint id").to_owned();
        self.send_ok(
            Method::POST,
            &format!("/api/v1/app/{app_id}/msg"),
            json!({"eventType": "fuzz.event", "payload": {"n": 1}}),
        );
        self.apps = [app_id, "fuzz-app".to_owned(), "missing-app".to_owned()];
        self.endpoints = [
            endpoint_id,
            "fuzz-endpoint".to_owned(),
            "missing-endpoint".to_owned(),
        ];
    }

    /// Sends a set-up request and returns its JSON body; panics unless 2xx.
    fn send_ok(&self, method: Method, path: &str, body: Value) -> Value {
        let request = request(
            method,
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        );
        let (status, bytes) = self.send(request);
        assert!(
            status.is_success(),
            "set-up {path} returned {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        self.runtime.block_on(async {
            let response: Response<Body> = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router's error type is Infallible");
            let status = response.status();
            let bytes = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("read the response body");
            (status, bytes.to_vec())
        })
    }
}

/// Opens the store and builds the router as `Server::run` does, with the
/// delivery engine already stopped and no stream sources.
async fn start(config: &Config) -> Router {
    let store = Store::open(&config.data_dir).expect("open the store");
    let (engine, engine_task) = Engine::start(
        store.clone(),
        EngineSettings::from_config(config),
        std::future::ready(()),
        Duration::ZERO,
    );
    engine_task.await.expect("the delivery engine stops");
    // The recovery runner stops at once too: tasks the inputs create stay
    // stored and are not run.
    let (_stop_tx, stop) = tokio::sync::watch::channel(true);
    let (recovery, recovery_task) = Recovery::start(
        store.clone(),
        engine.clone(),
        std::sync::Arc::new(|| true),
        stop,
    );
    recovery_task.await.expect("the recovery runner stops");
    let state = AppState::new(
        config,
        store,
        engine,
        Default::default(),
        hash_token(TOKEN),
        None,
        recovery,
    );
    api::router(state)
}

/// Returns `HOOKD_FUZZ_TMPDIR` when set, else /dev/shm when present, else the
/// system's temporary folder. The store writes with `synchronous=FULL`, so on
/// a disk its fsyncs would set the pace. It grew by 140 MB in a one-minute run
/// of 600,000 inputs.
fn scratch_folder() -> PathBuf {
    if let Some(folder) = std::env::var_os("HOOKD_FUZZ_TMPDIR") {
        return folder.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_owned();
    }
    std::env::temp_dir()
}

fn request(method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(Body::from(body)).expect("a valid request")
}

fuzz_target!(|data: &[u8]| {
    let [route, choice, body @ ..] = data else {
        return;
    };
    let harness = harness();
    let (method, template) = &ROUTES[usize::from(*route) % ROUTES.len()];
    let choice = usize::from(*choice);
    let path = template
        .replace("{app}", &harness.apps[choice % 3])
        .replace("{endpoint}", &harness.endpoints[choice / 3 % 3])
        .replace("{event_type}", harness.event_types[choice / 9 % 2]);
    let content_type = CONTENT_TYPES[choice / 18 % CONTENT_TYPES.len()];

    let (status, bytes) = harness.send(request(method.clone(), &path, content_type, body.to_vec()));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !status.is_server_error(),
        "{method} {path} returned {status}: {text}"
    );
    if status.is_client_error() {
        let error: Value = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!("{method} {path} returned {status} with a body that is not JSON ({err}): {text}")
        });
        assert!(
            error.get("code").is_some_and(Value::is_string),
            "{method} {path} returned {status}: {text}"
        );
        assert!(
            error.get("detail").is_some(),
            "{method} {path} returned {status}: {text}"
        );
    }
});
