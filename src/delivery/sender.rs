//! The HTTP sender: one POST per attempt, under a total deadline, with the
//! SSRF guard in the connector and only a prefix of the response body read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::dns::HostResolver;
use super::retry::{parse_retry_after, Outcome};
use super::ssrf::{ConnectError, GuardedConnector, NetworkPolicy};

type HttpsConnector = hyper_rustls::HttpsConnector<GuardedConnector>;

/// Idle connections kept per host. Many endpoints can share a host, each
/// with up to `max_in_flight_per_endpoint` requests, and a pool smaller than
/// their sum closes and reopens connections under load (seen with 100
/// endpoints on one host in the fan-out benchmark). Idle ones close after 60 s.
const MAX_IDLE_CONNECTIONS_PER_HOST: usize = 1024;

/// Sends deliveries; one instance is shared by every worker so that
/// connections to the same host are reused.
pub struct Sender {
    client: Client<HttpsConnector, Full<Bytes>>,
    request_timeout: Duration,
    max_response_bytes: usize,
}

/// One request to make.
pub struct Request<'a> {
    pub url: &'a str,
    pub msg_id: &'a str,
    /// Seconds since the Unix epoch, sent as `webhook-timestamp`.
    pub timestamp: i64,
    pub signature: String,
    pub body: Bytes,
    pub custom_headers: &'a BTreeMap<String, String>,
}

/// The result of one request.
#[derive(Debug)]
pub struct Response {
    pub outcome: Outcome,
    /// The status code, or 0 when no response arrived.
    pub status: u16,
    /// A prefix of the body (lossy UTF-8), or a description of the error.
    pub body: String,
    pub truncated: bool,
    pub duration: Duration,
    /// A short error kind for the attempt record (`timeout`, `connect`, `blocked`, `request`).
    pub error_kind: Option<&'static str>,
}

impl Sender {
    pub fn new(
        policy: Arc<NetworkPolicy>,
        resolver: HostResolver,
        request_timeout: Duration,
        max_response_bytes: usize,
    ) -> Self {
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector::with_resolver(policy, resolver));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS_PER_HOST)
            .build(tls);
        Self {
            client,
            request_timeout,
            max_response_bytes,
        }
    }

    /// Makes one attempt. Never follows redirects: a 3xx is returned as it is.
    pub async fn send(&self, request: Request<'_>) -> Response {
        let started = Instant::now();
        let result = tokio::time::timeout(self.request_timeout, self.exchange(&request)).await;
        let duration = started.elapsed();
        match result {
            Ok(Ok((status, retry_after, body, truncated))) => Response {
                outcome: Outcome::Response {
                    status,
                    retry_after,
                },
                status,
                body,
                truncated,
                duration,
                error_kind: None,
            },
            Ok(Err(failure)) => Response {
                outcome: failure.outcome,
                status: 0,
                body: failure.message,
                truncated: false,
                duration,
                error_kind: Some(failure.kind),
            },
            Err(_) => Response {
                outcome: Outcome::Timeout,
                status: 0,
                body: format!(
                    "no complete response within {}",
                    humantime::format_duration(self.request_timeout)
                ),
                truncated: false,
                duration,
                error_kind: Some("timeout"),
            },
        }
    }

    async fn exchange(
        &self,
        request: &Request<'_>,
    ) -> Result<(u16, Option<Duration>, String, bool), Failure> {
        let mut builder = hyper::Request::post(request.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("hookd/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", request.msg_id)
            .header("webhook-timestamp", request.timestamp.to_string())
            .header("webhook-signature", &request.signature);
        for (name, value) in request.custom_headers {
            builder = builder.header(name, value);
        }
        let http_request = builder
            .body(Full::new(request.body.clone()))
            .map_err(|err| Failure {
                outcome: Outcome::ConnectionFailed,
                kind: "request",
                message: format!("cannot build the request: {err}"),
            })?;

        let response = self
            .client
            .request(http_request)
            .await
            .map_err(Failure::from_client)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));

        // Read at most max_response_bytes of the body. Stopping early drops
        // the connection instead of returning it to the pool.
        let mut body = response.into_body();
        let mut kept: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| Failure {
                outcome: Outcome::ConnectionFailed,
                kind: "connect",
                message: format!("the response body broke off: {err}"),
            })?;
            if let Some(data) = frame.data_ref() {
                let room = self.max_response_bytes - kept.len();
                if data.len() > room {
                    kept.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                kept.extend_from_slice(data);
            }
        }
        Ok((
            status,
            retry_after,
            String::from_utf8_lossy(&kept).into_owned(),
            truncated,
        ))
    }
}

struct Failure {
    outcome: Outcome,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn from_client(err: hyper_util::client::legacy::Error) -> Self {
        // Look for the guard's error in the source chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(current) = source {
            if let Some(ConnectError::Blocked(blocked)) = current.downcast_ref::<ConnectError>() {
                return Self {
                    outcome: Outcome::Blocked,
                    kind: "blocked",
                    message: blocked.to_string(),
                };
            }
            source = current.source();
        }
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(current) = source {
            message.push_str(": ");
            message.push_str(&current.to_string());
            source = current.source();
        }
        Self {
            outcome: Outcome::ConnectionFailed,
            kind: "connect",
            message,
        }
    }
}
