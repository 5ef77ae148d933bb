//! Shared pieces of the integration tests: a hookd started in-process or as
//! a real process, a client for its API, and webhook receivers on 127.0.0.1
//! that speak just enough HTTP/1.1 to record requests and misbehave on purpose.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod brokers;
pub mod dns;
pub mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Admin token of every hookd the tests start.
pub const TOKEN: &str = "integration-test-admin-token";

/// Event type of the messages the tests send.
pub const EVENT_TYPE: &str = "test.event";

/// Default time a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Settings and the in-process server
// ---------------------------------------------------------------------------

/// `HOOKD_` variables for a hookd under test, without the listen address and
/// data folder, which each start fills in.
#[derive(Debug, Clone)]
pub struct Settings {
    env: BTreeMap<String, String>,
    /// Text of a TOML config file, for what only the file can set (sources).
    file: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self::new()
    }
}

impl Settings {
    /// Returns the test defaults: loopback receivers allowed, two quick
    /// retries (`200ms,400ms`) and a 1 s request timeout.
    pub fn new() -> Self {
        let mut env = BTreeMap::new();
        env.insert("HOOKD_ADMIN_TOKEN".to_owned(), TOKEN.to_owned());
        env.insert(
            "HOOKD_ALLOWED_NETWORKS".to_owned(),
            "127.0.0.1/32".to_owned(),
        );
        env.insert("HOOKD_RETRY_SCHEDULE".to_owned(), "200ms,400ms".to_owned());
        env.insert("HOOKD_REQUEST_TIMEOUT".to_owned(), "1s".to_owned());
        Self { env, file: None }
    }

    /// Adds a TOML config file with this text; `HOOKD_` variables still win.
    pub fn file(mut self, toml: &str) -> Self {
        self.file = Some(toml.to_owned());
        self
    }

    /// Writes the config file, when there is one, next to `data_dir`.
    fn write_file(&self, data_dir: &Path) -> Option<PathBuf> {
        let text = self.file.as_ref()?;
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, text).expect("write the test config file");
        Some(path)
    }

    /// Sets a variable, such as `set("HOOKD_RETRY_SCHEDULE", "100ms")`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Removes a variable so that hookd uses its built-in default.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    pub fn env_for(&self, listen: &str, data_dir: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("HOOKD_LISTEN".to_owned(), listen.to_owned()));
        env.push((
            "HOOKD_DATA_DIR".to_owned(),
            data_dir.to_string_lossy().into_owned(),
        ));
        env
    }

    /// Starts hookd in this process on 127.0.0.1 with a fresh data folder.
    /// It stops when the returned value is dropped.
    pub async fn start(self) -> Hookd {
        let dir = tempfile::tempdir().expect("create a temporary data folder");
        let data_dir = dir.path().join("data");
        let file = self.write_file(&data_dir);
        let config =
            hookd::config::Config::load(file.as_deref(), self.env_for("127.0.0.1:0", &data_dir))
                .expect("the test settings are valid");
        let server = hookd::server::Server::bind(config)
            .await
            .expect("hookd binds 127.0.0.1:0");
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        let api = Api::new(addr);
        api.wait_healthy(WAIT).await;
        Hookd {
            api,
            _stop: stop_tx,
            _dir: dir,
        }
    }
}

/// hookd running inside the test process.
pub struct Hookd {
    pub api: Api,
    /// Dropping it completes the shutdown future.
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Hookd {
    /// Starts hookd with [`Settings::new`].
    pub async fn start() -> Self {
        Settings::new().start().await
    }
}

impl std::ops::Deref for Hookd {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

// ---------------------------------------------------------------------------
// hookd as a real process
// ---------------------------------------------------------------------------

/// The `hookd serve` binary running as a child process.
pub struct HookdProcess {
    pub api: Api,
    child: tokio::process::Child,
    pub log_path: PathBuf,
}

impl HookdProcess {
    /// Starts `hookd serve` on a free 127.0.0.1 port with the given data
    /// folder, and waits until `GET /health` returns 200. Output goes to
    /// `log_name` next to the data folder.
    pub async fn spawn(settings: &Settings, data_dir: &Path, log_name: &str) -> Self {
        let log_path = data_dir
            .parent()
            .expect("the data folder has a parent")
            .join(log_name);
        // The port is found by binding port 0 and closing it again, so another
        // process can take it in between. A failed start is retried on a new port.
        for _ in 0..5 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open the hookd log file");
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookd"));
            command.arg("serve");
            if let Some(file) = settings.write_file(data_dir) {
                command.arg("--config").arg(file);
            }
            for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKD_")) {
                command.env_remove(key);
            }
            command
                .envs(settings.env_for(&listen, data_dir))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file handle"))
                .stderr(log)
                .kill_on_drop(true);
            let mut child = command.spawn().expect("start the hookd binary");
            let api = Api::new(listen.parse().expect("a socket address"));
            let deadline = Instant::now() + WAIT;
            loop {
                if api.is_healthy().await {
                    return Self {
                        api,
                        child,
                        log_path,
                    };
                }
                if let Some(status) = child.try_wait().expect("poll the hookd process") {
                    eprintln!(
                        "hookd on {listen} exited at start with {status}; trying another port"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "hookd did not return 200 for GET /health within {WAIT:?}; log: {}",
                    read_log(&log_path)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("hookd did not start; log: {}", read_log(&log_path));
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends SIGKILL to this process and waits for it to end.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the hookd process");
    }

    /// Sends SIGTERM to this process and waits up to 15 s for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("hookd exits within 15 s of SIGTERM")
            .expect("wait for the hookd process")
    }
}

impl std::ops::Deref for HookdProcess {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Returns the last 4000 bytes of a log file, for failure messages.
pub fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

// ---------------------------------------------------------------------------
// API client
// ---------------------------------------------------------------------------

/// A client of hookd's API, with the admin token unless made by [`Api::with_token`].
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
    /// The bearer token of every request.
    token: String,
}

/// An API response: status code and JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build the HTTP client");
        Self {
            base: format!("http://{addr}"),
            client,
            token: TOKEN.to_owned(),
        }
    }

    /// Returns a client of the same hookd that sends `token` instead.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    pub async fn is_healthy(&self) -> bool {
        match self
            .client
            .get(format!("{}/health", self.base))
            .send()
            .await
        {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    }

    async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_healthy().await {
            assert!(
                Instant::now() < deadline,
                "hookd at {} did not return 200 for GET /health within {timeout:?}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a request with this client's token and an optional raw body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Reply { status, body })
    }

    /// Sends a request like [`Api::send`] and panics when the request itself fails.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("serialize a JSON body"));
        self.send(method.clone(), path, bytes)
            .await
            .unwrap_or_else(|err| panic!("{method} {path} failed: {err}"))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates an application and returns its id.
    pub async fn create_app(&self) -> String {
        let reply = self
            .post("/api/v1/app", &json!({"name": "integration test"}))
            .await;
        assert_eq!(reply.status, 201, "POST /api/v1/app: {:?}", reply.body);
        id_of(&reply.body)
    }

    /// Creates the event type unless it exists, then an application with
    /// this uid, and returns the application's id.
    pub async fn create_app_for_event(&self, event_type: &str, uid: &str) -> String {
        let reply = self
            .post(
                "/api/v1/event-type",
                &json!({"name": event_type, "description": event_type}),
            )
            .await;
        assert!(
            matches!(reply.status, 201 | 409),
            "create event type {event_type}: {:?}",
            reply.body
        );
        let reply = self
            .post("/api/v1/app", &json!({"name": uid, "uid": uid}))
            .await;
        assert_eq!(reply.status, 201, "create app {uid}: {:?}", reply.body);
        id_of(&reply.body)
    }

    /// Lists every message of an application, oldest first, without payloads.
    pub async fn all_messages(&self, app: &str) -> Vec<Value> {
        let mut messages = Vec::new();
        let mut iterator: Option<String> = None;
        loop {
            let mut path =
                format!("/api/v1/app/{app}/msg?limit=250&with_content=false&order=ascending");
            if let Some(it) = &iterator {
                path.push_str(&format!("&iterator={it}"));
            }
            let reply = self.get(&path).await;
            assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
            let page = reply.body["data"].as_array().expect("data is a list");
            messages.extend(page.iter().cloned());
            if reply.body["done"] == json!(true) {
                return messages;
            }
            iterator = reply.body["iterator"].as_str().map(str::to_owned);
        }
    }

    /// Creates an endpoint from a full request body and returns its id.
    pub async fn create_endpoint_with(&self, app: &str, body: Value) -> String {
        let path = format!("/api/v1/app/{app}/endpoint");
        let reply = self.post(&path, &body).await;
        assert_eq!(reply.status, 201, "POST {path} {body}: {:?}", reply.body);
        id_of(&reply.body)
    }

    /// Creates an endpoint for `url` and returns its id.
    pub async fn create_endpoint(&self, app: &str, url: &str) -> String {
        self.create_endpoint_with(app, json!({ "url": url })).await
    }

    pub async fn endpoint_secret(&self, app: &str, endpoint: &str) -> String {
        let path = format!("/api/v1/app/{app}/endpoint/{endpoint}/secret");
        let reply = self.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        reply.body["key"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {path} returned no key: {:?}", reply.body))
            .to_owned()
    }

    /// Posts a message whose body is exactly these bytes and returns the reply.
    pub async fn post_message_raw(
        &self,
        app: &str,
        body: Vec<u8>,
    ) -> Result<Reply, reqwest::Error> {
        self.send(
            reqwest::Method::POST,
            &format!("/api/v1/app/{app}/msg"),
            Some(body),
        )
        .await
    }

    /// Sends a message with this payload, written into the request body as
    /// it is, and returns the message id.
    pub async fn send_message(&self, app: &str, payload: &str) -> String {
        let body = message_body(payload, None);
        let reply = self
            .post_message_raw(app, body.clone())
            .await
            .unwrap_or_else(|err| panic!("POST message failed: {err}"));
        assert_eq!(
            reply.status,
            202,
            "POST /api/v1/app/{app}/msg {}: {:?}",
            String::from_utf8_lossy(&body),
            reply.body
        );
        id_of(&reply.body)
    }

    /// Lists every attempt of a message, oldest first.
    pub async fn attempts_for_message(&self, app: &str, msg: &str) -> Vec<Value> {
        self.list_attempts(&format!("/api/v1/app/{app}/attempt/msg/{msg}"))
            .await
    }

    /// Lists every attempt of an endpoint, oldest first.
    pub async fn attempts_for_endpoint(&self, app: &str, endpoint: &str) -> Vec<Value> {
        self.list_attempts(&format!("/api/v1/app/{app}/attempt/endpoint/{endpoint}"))
            .await
    }

    async fn list_attempts(&self, path: &str) -> Vec<Value> {
        let path = format!("{path}?limit=250&order=ascending");
        let reply = self.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        reply.body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path} returned no data list: {:?}", reply.body))
            .clone()
    }

    /// Returns the delivery status of a message at an endpoint: 0 success,
    /// 1 pending, 2 fail, 3 sending, 4 canceled.
    pub async fn delivery_status(&self, app: &str, msg: &str, endpoint: &str) -> Option<i64> {
        let path = format!("/api/v1/app/{app}/msg/{msg}/endpoint");
        let reply = self.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        reply.body["data"]
            .as_array()?
            .iter()
            .find(|row| row["id"] == endpoint)
            .and_then(|row| row["status"].as_i64())
    }

    /// Waits until the delivery of a message to an endpoint has one of
    /// `statuses`, and returns that status.
    pub async fn wait_for_status(
        &self,
        app: &str,
        msg: &str,
        endpoint: &str,
        statuses: &[i64],
    ) -> i64 {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            last = self.delivery_status(app, msg, endpoint).await.or(last);
            if let Some(status) = last.filter(|s| statuses.contains(s)) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "delivery of {msg} to {endpoint} did not reach status {statuses:?} within {WAIT:?}; last status {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Builds a message request body with the payload bytes copied in unchanged.
pub fn message_body(payload: &str, event_id: Option<&str>) -> Vec<u8> {
    let event_id = event_id
        .map(|id| format!(",\"eventId\":\"{id}\""))
        .unwrap_or_default();
    format!("{{\"eventType\":\"{EVENT_TYPE}\",\"payload\":{payload}{event_id}}}").into_bytes()
}

/// Returns the `loc` of the first validation error, such as `["body", "url"]`.
pub fn error_location(body: &Value) -> Vec<String> {
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

/// Returns the `id` of a created resource.
pub fn id_of(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("response has no id: {body:?}"))
        .to_owned()
}

/// Polls `probe` every 25 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

/// Computes `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` where
/// the key is the base64 part of a `whsec_` secret, as a receiver would.
pub fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret {secret:?} does not start with whsec_"));
    let key = STANDARD
        .decode(encoded)
        .unwrap_or_else(|err| panic!("secret {secret:?} is not base64: {err}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------

/// One request as a receiver read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the request was completely read.
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// Returns the first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Returns the `webhook-id` header, or an empty string.
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or("")
    }

    /// Asserts that `webhook-signature` is the signature with `secret` of
    /// this request's id, timestamp and body.
    pub fn assert_signed(&self, secret: &str) {
        let id = self.webhook_id();
        let timestamp = self
            .header("webhook-timestamp")
            .expect("a webhook-timestamp header");
        assert_eq!(
            self.header("webhook-signature"),
            Some(expected_signature(secret, id, timestamp, &self.body).as_str()),
            "signature of {id}"
        );
    }
}

/// How a receiver responds to one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Waits `delay`, sends this response and closes the connection.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Sends no response and keeps the connection open until the client closes it.
    Hang,
    /// Sends `200 OK` with `Content-Length: 1000000`, then one body byte
    /// every `interval` until the client closes the connection.
    Trickle { interval: Duration },
}

impl Answer {
    /// Builds a response with this status and an empty body.
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Self::Respond { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// Sets the response body.
    pub fn body(mut self, bytes: Vec<u8>) -> Self {
        if let Self::Respond { body, .. } = &mut self {
            *body = bytes;
        }
        self
    }

    /// Waits this long before responding.
    pub fn after(mut self, wait: Duration) -> Self {
        if let Self::Respond { delay, .. } = &mut self {
            *delay = wait;
        }
        self
    }
}

type AnswerFn = dyn Fn(usize, &Received) -> Answer + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Received>>,
    answer: Box<AnswerFn>,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// Connections accepted and not yet closed by either side.
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// For each trickled response: the time from its headers until a write failed.
    trickle_cut_offs: Mutex<Vec<Duration>>,
}

/// A port on 127.0.0.1 that is bound but not listening, so connections to it
/// are refused until [`ClosedPort::open`] turns it into a receiver.
pub struct ClosedPort {
    socket: TcpSocket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn reserve() -> Self {
        let socket = TcpSocket::new_v4().expect("create a TCP socket");
        socket.set_reuseaddr(true).expect("set SO_REUSEADDR");
        socket
            .bind("127.0.0.1:0".parse().expect("a socket address"))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("a bound socket has an address");
        Self { socket, addr }
    }

    /// Reserves this address, such as 127.0.0.2 with the port of a receiver on 127.0.0.1, so
    /// that one URL can reach either receiver depending on what its host name resolves to.
    /// Fails when the port is taken on that address.
    pub fn reserve_at(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Self { socket, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Starts listening; `answer` gets the request's index (0 for the first
    /// request this receiver reads) and the request.
    pub fn open(
        self,
        answer: impl Fn(usize, &Received) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = self
            .socket
            .listen(1024)
            .expect("listen on the reserved port");
        Receiver::serve(listener, self.addr, Box::new(answer))
    }
}

/// A webhook receiver on 127.0.0.1 that records every request. It stops
/// accepting connections when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Receiver {
    /// Starts a receiver on a new port.
    pub fn start(answer: impl Fn(usize, &Received) -> Answer + Send + Sync + 'static) -> Self {
        ClosedPort::reserve().open(answer)
    }

    /// Starts a receiver that responds to every request with `answer`.
    pub fn always(answer: Answer) -> Self {
        Self::start(move |_, _| answer.clone())
    }

    fn serve(listener: TcpListener, addr: SocketAddr, answer: Box<AnswerFn>) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            answer,
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            trickle_cut_offs: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let open = accept_shared.open.fetch_add(1, Ordering::SeqCst) + 1;
                accept_shared.max_open.fetch_max(open, Ordering::SeqCst);
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    handle_connection(stream, &shared).await;
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            shared,
            accept_task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().expect("lock requests").clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().expect("lock requests").len()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub fn max_open_connections(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    pub fn trickle_cut_offs(&self) -> Vec<Duration> {
        self.shared
            .trickle_cut_offs
            .lock()
            .expect("lock cut-offs")
            .clone()
    }

    /// Waits until the JSON bodies received carry `count` distinct `id`
    /// fields, and returns those ids. After a kill a message may arrive
    /// twice, so a count of requests can be reached with some still missing.
    pub async fn wait_for_body_ids(&self, count: usize, timeout: Duration) -> BTreeSet<String> {
        eventually(
            timeout,
            &format!("{count} distinct ids received"),
            || async {
                let ids: BTreeSet<String> = self
                    .requests()
                    .iter()
                    .map(|r| {
                        let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
                        body["id"].as_str().expect("an id").to_owned()
                    })
                    .collect();
                (ids.len() >= count).then_some(ids)
            },
        )
        .await
    }

    /// Waits until at least `count` requests arrived and returns them all.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "receiver {} got {} of {count} requests within {timeout:?}",
                self.addr,
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle_connection(mut stream: TcpStream, shared: &Shared) {
    let Ok(Some(request)) = read_request(&mut stream).await else {
        return;
    };
    let index = {
        let mut requests = shared.requests.lock().expect("lock requests");
        requests.push(request.clone());
        requests.len() - 1
    };
    match (shared.answer)(index, &request) {
        Answer::Respond {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(status),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            // The client may close early, for example after reading a prefix
            // of a large body, so write errors are expected.
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
            wait_for_close(&mut stream).await;
        }
        Answer::Hang => wait_for_close(&mut stream).await,
        Answer::Trickle { interval } => {
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n";
            let started = Instant::now();
            if stream.write_all(head.as_bytes()).await.is_ok() {
                loop {
                    tokio::time::sleep(interval).await;
                    if stream.write_all(b"x").await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                }
            }
            shared
                .trickle_cut_offs
                .lock()
                .expect("lock cut-offs")
                .push(started.elapsed());
        }
    }
}

/// Reads until the peer closes the connection or it breaks.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` or chunked body.
/// Returns `None` when the connection closes before a request starts.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Received>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut rest = buffer[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };

    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, rest).await?
    } else {
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(length);
        rest
    };
    Ok(Some(Received {
        at: Instant::now(),
        method,
        path,
        headers,
        body,
    }))
}

async fn read_chunked(stream: &mut TcpStream, mut buffer: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while find(&buffer, b"\r\n").is_none() {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let line_end = find(&buffer, b"\r\n").expect("checked above");
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other(format!("invalid chunk size {size_text:?}")))?;
        let needed = line_end + 2 + size + 2;
        while buffer.len() < needed {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&buffer[line_end + 2..line_end + 2 + size]);
        buffer.drain(..needed);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
