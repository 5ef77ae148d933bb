//! The webhook receiver: an HTTP/1.1 server on 127.0.0.1 that plays many
//! endpoints at once. An endpoint's URL path is `/{index}/{behaviour}`, and
//! the behaviour selects the response: `ok` (200 at once), `fail` (500),
//! `hang` (no response until hookd gives up and closes the connection) or
//! `slow:DURATION` (200 after the delay).
//!
//! For each request to a *measured* endpoint the receiver stores the
//! `webhook-id` and the arrival time; for every endpoint it counts requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::clock;

/// Lock shards of the arrival list, to keep receiver tasks from queuing on one mutex.
const ARRIVAL_SHARDS: usize = 16;

/// Response behaviour of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Ok,
    Fail,
    Hang,
    Slow(Duration),
}

impl Behaviour {
    /// Returns the path segment that selects this behaviour.
    pub fn path_segment(&self) -> String {
        match self {
            Self::Ok => "ok".to_owned(),
            Self::Fail => "fail".to_owned(),
            Self::Hang => "hang".to_owned(),
            Self::Slow(delay) => format!("slow:{}ms", delay.as_millis()),
        }
    }
}

impl FromStr for Behaviour {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "ok" => Ok(Self::Ok),
            "fail" => Ok(Self::Fail),
            "hang" => Ok(Self::Hang),
            _ => match text.strip_prefix("slow:") {
                Some(delay) => Ok(Self::Slow(humantime::parse_duration(delay).with_context(
                    || {
                        format!(
                            "invalid delay {delay:?} in {text:?}; expected for example slow:9.9s"
                        )
                    },
                )?)),
                None => {
                    bail!("invalid behaviour {text:?}; expected ok, fail, hang or slow:DURATION")
                }
            },
        }
    }
}

/// One request that reached a measured endpoint.
#[derive(Debug)]
pub struct Arrival {
    pub msg_id: Box<str>,
    pub endpoint: u32,
    /// [`clock::now_us`] when the request head was read.
    pub at_us: u64,
}

/// Counters and arrivals of the receiver, shared with its connection tasks.
pub struct ReceiverState {
    /// Measured flag by endpoint index.
    measured: Vec<bool>,
    arrivals: Vec<Mutex<Vec<Arrival>>>,
    /// Requests per endpoint index.
    per_endpoint: Vec<AtomicU64>,
    /// Requests to measured endpoints.
    pub measured_requests: AtomicU64,
    /// Requests to every endpoint.
    pub total_requests: AtomicU64,
    /// Requests whose path or `webhook-id` was invalid (rejected with 400 or 404).
    pub invalid_requests: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicI64,
    /// Requests held open by `hang` endpoints now.
    pub hanging: AtomicI64,
}

impl ReceiverState {
    /// Takes every arrival recorded so far.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        let mut all = Vec::new();
        for shard in &self.arrivals {
            all.append(&mut shard.lock().expect("arrival lock is never poisoned"));
        }
        all
    }

    /// Requests received by endpoint `index`.
    pub fn requests_to(&self, index: usize) -> u64 {
        self.per_endpoint
            .get(index)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// A running receiver; it stops when the runtime stops.
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
}

impl Receiver {
    /// Binds 127.0.0.1 on a free port. `measured[i]` tells whether requests to
    /// endpoint `i` are recorded one by one; the receiver serves indexes
    /// below `measured.len()`.
    pub async fn start(measured: Vec<bool>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the receiver to 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ReceiverState {
            per_endpoint: measured.iter().map(|_| AtomicU64::new(0)).collect(),
            measured,
            arrivals: (0..ARRIVAL_SHARDS)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            measured_requests: AtomicU64::new(0),
            total_requests: AtomicU64::new(0),
            invalid_requests: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            hanging: AtomicI64::new(0),
        });
        tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state })
    }

    /// Returns the URL of endpoint `index` with the given behaviour.
    pub fn url(&self, index: usize, behaviour: Behaviour) -> String {
        format!("http://{}/{index}/{}", self.addr, behaviour.path_segment())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<ReceiverState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and similar: wait instead of spinning.
                eprintln!("receiver: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            state.open_connections.fetch_add(1, Ordering::Relaxed);
            let service_state = state.clone();
            let service = service_fn(move |request| handle(service_state.clone(), request));
            // A connection error (hookd closing a hung request) is expected.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            state.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn respond(status: StatusCode) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

/// Counts a decrement when dropped, so a hung request that hookd abandons
/// leaves the gauge.
struct GaugeGuard<'a>(&'a AtomicI64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    state: Arc<ReceiverState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at_us = clock::now_us();
    let mut segments = request.uri().path().trim_start_matches('/').splitn(2, '/');
    let index = segments.next().and_then(|s| s.parse::<usize>().ok());
    let behaviour = segments.next().and_then(|s| s.parse::<Behaviour>().ok());
    let msg_id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(Box::<str>::from);
    let (Some(index), Some(behaviour), Some(msg_id)) = (index, behaviour, msg_id) else {
        state.invalid_requests.fetch_add(1, Ordering::Relaxed);
        return respond(StatusCode::BAD_REQUEST);
    };
    let Some(count) = state.per_endpoint.get(index) else {
        state.invalid_requests.fetch_add(1, Ordering::Relaxed);
        return respond(StatusCode::NOT_FOUND);
    };
    count.fetch_add(1, Ordering::Relaxed);
    state.total_requests.fetch_add(1, Ordering::Relaxed);
    if state.measured[index] {
        state.measured_requests.fetch_add(1, Ordering::Relaxed);
        state.arrivals[index % ARRIVAL_SHARDS]
            .lock()
            .expect("arrival lock is never poisoned")
            .push(Arrival {
                msg_id,
                endpoint: index as u32,
                at_us,
            });
    }

    // Read the whole body first: hyper notices that the client closed the
    // connection only once the body is consumed, and a hung request must end
    // when hookd gives up on it.
    if request.into_body().collect().await.is_err() {
        return respond(StatusCode::BAD_REQUEST);
    }
    match behaviour {
        Behaviour::Ok => respond(StatusCode::OK),
        Behaviour::Fail => respond(StatusCode::INTERNAL_SERVER_ERROR),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            respond(StatusCode::OK)
        }
        Behaviour::Hang => {
            state.hanging.fetch_add(1, Ordering::Relaxed);
            let _guard = GaugeGuard(&state.hanging);
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_parses_each_kind() {
        assert_eq!("ok".parse::<Behaviour>().unwrap(), Behaviour::Ok);
        assert_eq!("fail".parse::<Behaviour>().unwrap(), Behaviour::Fail);
        assert_eq!("hang".parse::<Behaviour>().unwrap(), Behaviour::Hang);
        assert_eq!(
            "slow:9.9s".parse::<Behaviour>().unwrap(),
            Behaviour::Slow(Duration::from_millis(9900))
        );
        assert!("slow:soon".parse::<Behaviour>().is_err());
        assert!("teapot".parse::<Behaviour>().is_err());
    }

    #[test]
    fn behaviour_round_trips_through_path() {
        let slow = Behaviour::Slow(Duration::from_millis(9900));
        assert_eq!(slow.path_segment().parse::<Behaviour>().unwrap(), slow);
    }
}
