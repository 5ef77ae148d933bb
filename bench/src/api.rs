//! A minimal client of the hookd API: one keep-alive HTTP/1.1 connection per
//! [`ApiConnection`], and helpers that create applications and endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Address of the API and the token to send.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub addr: SocketAddr,
    pub token: String,
}

impl ApiTarget {
    /// Opens a new connection.
    pub async fn connect(&self) -> anyhow::Result<ApiConnection> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to hookd at {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with hookd failed")?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(connection);
        Ok(ApiConnection {
            sender,
            host: self.addr.to_string(),
            authorization: format!("Bearer {}", self.token),
        })
    }
}

/// One keep-alive connection to the API. After an error, open a new one.
pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    authorization: String,
}

/// The `id` field of an API response.
#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl ApiConnection {
    /// Sends one request and returns the status and the whole response body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(AUTHORIZATION, &self.authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        self.sender
            .ready()
            .await
            .context("the API connection closed")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("the API request failed")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the API response failed")?
            .to_bytes();
        Ok((status, body))
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// POSTs a JSON body and returns the `id` of the created object.
    pub async fn create(&mut self, path: &str, body: &serde_json::Value) -> anyhow::Result<String> {
        let (status, response) = self
            .send(Method::POST, path, Bytes::from(serde_json::to_vec(body)?))
            .await?;
        if !status.is_success() {
            bail!(
                "POST {path} returned {status}: {}",
                String::from_utf8_lossy(&response)
            );
        }
        let created: IdOnly = serde_json::from_slice(&response)
            .with_context(|| format!("POST {path} returned a body without an id"))?;
        Ok(created.id)
    }
}

/// Sends the `(path, body)` creations over `connections` connections at once
/// and returns the created ids in the order of `requests`.
pub async fn create_all(
    target: &ApiTarget,
    requests: Vec<(String, serde_json::Value)>,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.clamp(1, requests.len().max(1)) {
        let requests = requests.clone();
        let next = next.clone();
        let target = target.clone();
        tasks.spawn(async move {
            let mut connection = target.connect().await?;
            let mut created = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, body)) = requests.get(index) else {
                    return anyhow::Ok(created);
                };
                created.push((index, connection.create(path, body).await?));
            }
        });
    }
    let mut ids = vec![String::new(); requests.len()];
    while let Some(joined) = tasks.join_next().await {
        for (index, id) in joined?? {
            ids[index] = id;
        }
    }
    Ok(ids)
}

/// Creates the applications `bench-app-0`, `bench-app-1`, … and returns their ids.
pub async fn create_apps(
    target: &ApiTarget,
    count: usize,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let requests = (0..count)
        .map(|i| {
            let uid = format!("bench-app-{i}");
            (
                "/api/v1/app".to_owned(),
                serde_json::json!({ "name": uid, "uid": uid }),
            )
        })
        .collect();
    create_all(target, requests, connections).await
}

/// Creates one endpoint per `(app_id, url)` and returns their ids.
pub async fn create_endpoints(
    target: &ApiTarget,
    endpoints: &[(String, String)],
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let requests = endpoints
        .iter()
        .map(|(app_id, url)| {
            (
                format!("/api/v1/app/{app_id}/endpoint"),
                serde_json::json!({ "url": url }),
            )
        })
        .collect();
    create_all(target, requests, connections).await
}

/// Extracts the `id` from a message creation response.
pub fn message_id(body: &[u8]) -> anyhow::Result<String> {
    let created: IdOnly = serde_json::from_slice(body).context("the message response has no id")?;
    Ok(created.id)
}
