//! The scheduler: one queue per endpoint, served round-robin, never more than
//! an endpoint's cap of requests in flight at once, and never more than the
//! global cap in total.
//!
//! The store is the source of truth; the queues hold only delivery ids, at
//! most [`QUEUE_CAPACITY`] per endpoint, and fewer when many endpoints have
//! work, so that all queues together hold about [`QUEUE_BUDGET`] ids. Work
//! reaches a queue three ways:
//!
//! 1. New deliveries, handed over by the API right after their commit.
//! 2. Retries, found by a scan of the store for deliveries that become due in
//!    each successive time window.
//! 3. Refills from the store, for an endpoint marked *backlogged*: one whose
//!    due work did not fit in its queue, or that had due work at start-up.
//!
//! Each endpoint keeps a set of the ids it has queued or in flight, so the
//! same delivery is never sent twice at once by this process, whichever way
//! it arrived. A worker re-reads the delivery before sending and skips it
//! when it is no longer pending and due, so a stale queue entry is harmless.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::dns::HostResolver;
use super::health::{BreakerState, EndpointHealth, HealthSettings, Signal};
use super::retry::RetryPolicy;
use super::sender::Sender;
use super::ssrf::NetworkPolicy;
use super::worker::{self, RunResult, WorkerContext};
use crate::cluster::{self, ClusterLink};
use crate::config::Config;
use crate::model::{now_ms, Millis};
use crate::store::deliveries::{self, DueRetry};
use crate::store::messages::NewDelivery;
use crate::store::Store;
use crate::telemetry::metric;

/// Delivery ids held in memory per endpoint at most; the rest wait in the store.
pub const QUEUE_CAPACITY: usize = 512;
/// Delivery ids held in memory per endpoint at least, however many endpoints
/// have work.
const MIN_QUEUE_CAPACITY: usize = 32;
/// Delivery ids held in all queues together, shared out evenly while more
/// than `QUEUE_BUDGET / QUEUE_CAPACITY` endpoints have work. Each queued id
/// costs about 24 bytes (its place in the queue and in the claimed set). So
/// 1,000,000 ids in the queues of 10,000 endpoints took 24 MB before this
/// bound, and with it those queues take 320,000 ids at most.
const QUEUE_BUDGET: usize = 128 * 1024;
/// Refill queries running at once at most.
const MAX_CONCURRENT_REFILLS: usize = 4;
/// Workers that have their response and wait for their attempt to be
/// recorded, at most, per slot of `max_in_flight`. Such a worker keeps its
/// delivery and the response body (a few KB with a 1 KB payload) but no
/// connection, so the bound is wider than the one on requests. It still holds
/// back new requests when the store writer falls behind.
const RECORDING_PER_REQUEST_SLOT: usize = 4;
/// How often due retries and backlogged endpoints are looked for.
const TICK: Duration = Duration::from_millis(200);
/// Endpoints whose health is kept at most; beyond it, calm endpoints without
/// queued work are forgotten and start again at the initial limit.
const MAX_HEALTH_ENTRIES: usize = 50_000;
/// Rows read per page of the retry scan.
const RETRY_SCAN_PAGE: usize = 2000;
/// How far each retry scan reaches back into the previous window.
const RETRY_SCAN_OVERLAP_MS: Millis = 2000;
/// How often a cluster node looks for due work in the partitions it holds,
/// in case a notification from another node was missed.
const CLUSTER_SCAN_INTERVAL: Duration = Duration::from_secs(15);

/// Settings of the engine, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub max_in_flight_per_endpoint: usize,
    pub min_in_flight_per_endpoint: usize,
    pub initial_in_flight_per_endpoint: usize,
    pub circuit_breaker_failures: u32,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// DNS servers that resolve endpoint host names, or none for the system resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub disable_endpoint_after: Option<Duration>,
    /// The internal application of operational webhooks, when configured.
    pub operational_app_id: Option<String>,
    /// The node's leases in a cluster; `None` delivers for every endpoint.
    pub cluster: Option<ClusterLink>,
}

impl EngineSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_in_flight_per_endpoint: config.max_in_flight_per_endpoint,
            min_in_flight_per_endpoint: config.min_in_flight_per_endpoint,
            initial_in_flight_per_endpoint: config.initial_in_flight_per_endpoint,
            circuit_breaker_failures: config.circuit_breaker_failures,
            max_in_flight: config.max_in_flight,
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                max_retry_after: config.max_retry_after,
            },
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
            allowed_networks: config.allowed_networks.clone(),
            dns_servers: config.dns_servers.clone(),
            disable_endpoint_after: config.disable_endpoint_after,
            operational_app_id: None,
            cluster: None,
        }
    }
}

enum Event {
    /// Deliveries just committed by the API.
    Enqueue(Vec<NewDelivery>),
    /// A worker has its response; the endpoint's slot is free.
    Sent {
        endpoint_id: Arc<str>,
        signal: Signal,
    },
    /// A worker finished with a delivery: its attempt is recorded, or none was needed.
    Finished {
        endpoint_id: Arc<str>,
        delivery_id: i64,
        result: RunResult,
    },
    /// A refill query for an endpoint returned.
    Refilled {
        endpoint_id: Arc<str>,
        ids: Vec<i64>,
        exhausted: bool,
        generation: u64,
    },
    /// A page of the retry scan; `until` is set on the last page of a scan.
    RetriesDue {
        retries: Vec<DueRetry>,
        completed_until: Option<Millis>,
    },
    /// Start-up, or a scan of newly leased partitions, found these
    /// endpoints with due work.
    Backlogged(Vec<String>),
    /// This node took the leases of these partitions.
    PartitionsGained(Vec<u32>),
    /// Another node stored deliveries for these endpoints.
    Woken(Vec<String>),
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    events: mpsc::UnboundedSender<Event>,
    /// Counts stored messages, so pollers can wait for new ones.
    stored_messages: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Engine {
    /// Starts the scheduler task. It runs until `shutdown` completes, then
    /// waits up to `drain` for the attempts in flight to be recorded.
    pub fn start(
        store: Store,
        settings: EngineSettings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let policy = Arc::new(NetworkPolicy::new(settings.allowed_networks.clone()));
        let context = Arc::new(WorkerContext {
            rate_limiters: Default::default(),
            recorder: super::recorder::Recorder::start(
                store.clone(),
                settings
                    .disable_endpoint_after
                    .map(|d| d.as_millis() as i64),
                settings.operational_app_id.clone(),
            ),
            store: store.clone(),
            sender: Sender::new(
                policy,
                HostResolver::new(&settings.dns_servers),
                settings.request_timeout,
                settings.max_response_bytes,
            ),
            policy: settings.retry.clone(),
            ownership: settings
                .cluster
                .as_ref()
                .map(|cluster| cluster.ownership.clone()),
        });
        let health_settings = HealthSettings {
            min_limit: settings.min_in_flight_per_endpoint,
            max_limit: settings.max_in_flight_per_endpoint,
            initial_limit: settings.initial_in_flight_per_endpoint,
            failures_to_open: settings.circuit_breaker_failures,
            probe_delays: settings.retry.schedule.clone(),
        };
        let cluster = settings.cluster.clone();
        let scheduler = Scheduler {
            store,
            context,
            settings,
            health: HashMap::new(),
            health_settings,
            queues: HashMap::new(),
            ring: VecDeque::new(),
            in_flight: 0,
            recording: 0,
            refills_running: 0,
            retry_scan_running: false,
            retries_scanned_until: now_ms(),
            cluster,
            last_cluster_scan: Instant::now(),
            events_tx: events_tx.clone(),
            workers: JoinSet::new(),
        };
        let handle = tokio::spawn(scheduler.run(events_rx, shutdown, drain));
        let engine = Self {
            events: events_tx,
            stored_messages: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        (engine, handle)
    }

    /// Wakes the pollers waiting for new messages; call after a commit that
    /// stored messages.
    pub fn messages_stored(&self) {
        self.stored_messages.send_modify(|count| *count += 1);
    }

    /// Returns a receiver that changes after each [`Engine::messages_stored`].
    pub fn watch_messages(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stored_messages.subscribe()
    }

    /// Tells the scheduler that this node now holds these partitions, so
    /// it looks for their due work.
    pub fn partitions_gained(&self, partitions: Vec<u32>) {
        let _ = self.events.send(Event::PartitionsGained(partitions));
    }

    /// Tells the scheduler that another node stored deliveries for these endpoints.
    pub fn wake_endpoints(&self, endpoint_ids: Vec<String>) {
        let _ = self.events.send(Event::Woken(endpoint_ids));
    }

    /// Hands newly committed deliveries to the scheduler.
    pub fn enqueue(&self, deliveries: Vec<NewDelivery>) {
        if deliveries.is_empty() {
            return;
        }
        // After shutdown the deliveries stay pending in the store and are
        // picked up at the next start.
        let _ = self.events.send(Event::Enqueue(deliveries));
    }
}

/// Delivery ids one endpoint's queue may hold while `endpoints` endpoints
/// have queues.
fn queue_capacity(endpoints: usize) -> usize {
    (QUEUE_BUDGET / endpoints.max(1)).clamp(MIN_QUEUE_CAPACITY, QUEUE_CAPACITY)
}

#[derive(Default)]
struct EndpointQueue {
    /// Deliveries waiting for a free slot, in arrival order.
    queued: VecDeque<i64>,
    /// Deliveries queued or in flight; guards against sending one twice at once.
    claimed: HashSet<i64>,
    in_flight: usize,
    /// Due work may be in the store that is not in `queued`.
    backlogged: bool,
    /// Bumped whenever work overflows the queue, so a refill that started
    /// before the overflow does not clear `backlogged`.
    overflow_generation: u64,
    refilling: bool,
    in_ring: bool,
}

impl EndpointQueue {
    fn is_idle(&self) -> bool {
        self.queued.is_empty()
            && self.claimed.is_empty()
            && self.in_flight == 0
            && !self.backlogged
            && !self.refilling
    }
}

struct Scheduler {
    store: Store,
    context: Arc<WorkerContext>,
    settings: EngineSettings,
    /// Breaker and adaptive limit of each endpoint that is not in perfect
    /// health; an endpoint missing here is healthy, at the maximum limit.
    health: HashMap<Arc<str>, EndpointHealth>,
    health_settings: HealthSettings,
    queues: HashMap<Arc<str>, EndpointQueue>,
    /// Endpoints with queued work and a free slot, in round-robin order.
    ring: VecDeque<Arc<str>>,
    /// Requests sent and waiting for their response, bounded by `max_in_flight`.
    in_flight: usize,
    /// Workers with their response, waiting for their attempt to be recorded.
    recording: usize,
    refills_running: usize,
    retry_scan_running: bool,
    /// Retries due up to this time have been queued or marked as backlog.
    retries_scanned_until: Millis,
    /// The node's leases in a cluster; `None` delivers for every endpoint.
    cluster: Option<ClusterLink>,
    last_cluster_scan: Instant,
    events_tx: mpsc::UnboundedSender<Event>,
    workers: JoinSet<()>,
}

impl Scheduler {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) {
        self.find_backlog_at_start();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                    }
                }
                _ = ticker.tick() => self.on_tick(),
                Some(_) = self.workers.join_next(), if !self.workers.is_empty() => {}
            }
            self.dispatch();
        }

        tracing::info!(
            in_flight = self.in_flight,
            "delivery engine stopping; waiting for attempts in flight"
        );
        let deadline = tokio::time::sleep(drain);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!(in_flight = self.workers.len(), "attempts still in flight at shutdown stay pending and resume at the next start");
                    self.workers.abort_all();
                    break;
                }
                joined = self.workers.join_next() => if joined.is_none() { break },
            }
        }
        tracing::info!("delivery engine stopped");
    }

    fn find_backlog_at_start(&self) {
        self.find_backlog(None);
    }

    /// Marks the endpoints with due work as backlogged: all of them, or
    /// those in `partitions`.
    fn find_backlog(&self, partitions: Option<Vec<u32>>) {
        let store = self.store.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            match store
                .read_blocking(|conn| deliveries::endpoints_with_due(conn, now_ms()))
                .await
            {
                Ok(mut endpoints) => {
                    if let Some(partitions) = partitions {
                        endpoints.retain(|id| partitions.contains(&cluster::partition_of(id)));
                    }
                    if !endpoints.is_empty() {
                        tracing::info!(endpoints = endpoints.len(), "resuming pending deliveries");
                    }
                    let _ = events.send(Event::Backlogged(endpoints));
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot look for pending deliveries at start")
                }
            }
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Enqueue(deliveries) => {
                let mut elsewhere = Vec::new();
                for delivery in deliveries {
                    if !self.owns(&delivery.endpoint_id) {
                        elsewhere.push(delivery.endpoint_id);
                        continue;
                    }
                    self.push(
                        Arc::from(delivery.endpoint_id.as_str()),
                        delivery.delivery_id,
                    );
                }
                if let Some(cluster) = &self.cluster {
                    cluster.notify(elsewhere);
                }
            }
            Event::PartitionsGained(partitions) => self.find_backlog(Some(partitions)),
            Event::Woken(mut endpoint_ids) => {
                // Every node hears every notification; each takes its own endpoints.
                endpoint_ids.retain(|id| self.owns(id));
                metrics::counter!(metric::CLUSTER_ENDPOINTS_WOKEN)
                    .increment(endpoint_ids.len() as u64);
                for endpoint_id in endpoint_ids {
                    let endpoint_id: Arc<str> = Arc::from(endpoint_id.as_str());
                    self.mark_backlogged(endpoint_id.clone());
                    let refill_below = self.refill_below();
                    let wants_refill = self.queues.get(&endpoint_id).is_some_and(|q| {
                        q.backlogged && !q.refilling && q.queued.len() < refill_below
                    });
                    if wants_refill {
                        self.start_refill(endpoint_id);
                    }
                }
            }
            Event::Sent {
                endpoint_id,
                signal,
            } => self.sent(endpoint_id, signal),
            Event::Finished {
                endpoint_id,
                delivery_id,
                result,
            } => self.finish(endpoint_id, delivery_id, result),
            Event::Refilled {
                endpoint_id,
                ids,
                exhausted,
                generation,
            } => {
                self.refills_running -= 1;
                let queue = self.queues.entry(endpoint_id.clone()).or_default();
                queue.refilling = false;
                for id in ids {
                    self.push_from(endpoint_id.clone(), id, true);
                }
                let queue = self
                    .queues
                    .get_mut(&endpoint_id)
                    .expect("push keeps the queue");
                if exhausted && queue.overflow_generation == generation {
                    queue.backlogged = false;
                }
                // Work that arrived during the refill is in the store only:
                // read it now rather than at the next tick.
                let refill_below = self.refill_below();
                let queue = &self.queues[&endpoint_id];
                if queue.backlogged && queue.queued.len() < refill_below {
                    self.start_refill(endpoint_id.clone());
                }
                self.forget_if_idle(&endpoint_id);
            }
            Event::RetriesDue {
                retries,
                completed_until,
            } => {
                for retry in retries {
                    self.push(Arc::from(retry.endpoint_id.as_str()), retry.delivery_id);
                }
                if let Some(until) = completed_until {
                    self.retries_scanned_until = until;
                    self.retry_scan_running = false;
                }
            }
            Event::Backlogged(endpoints) => {
                for endpoint_id in endpoints {
                    self.mark_backlogged(Arc::from(endpoint_id.as_str()));
                }
            }
        }
    }

    /// Queues a delivery, or marks its endpoint as backlogged when the queue is full.
    ///
    /// While an endpoint is backlogged, new work is left in the store, where
    /// refills read it in due order after the older work, so deliveries that
    /// overflowed are not overtaken by newer ones for as long as load lasts.
    fn push(&mut self, endpoint_id: Arc<str>, delivery_id: i64) {
        self.push_from(endpoint_id, delivery_id, false);
    }

    fn push_from(&mut self, endpoint_id: Arc<str>, delivery_id: i64, from_refill: bool) {
        // Another node delivers for endpoints outside this node's partitions.
        if !self.owns(&endpoint_id) {
            return;
        }
        let capacity = self.queue_capacity();
        let queue = self.queues.entry(endpoint_id.clone()).or_default();
        if queue.claimed.contains(&delivery_id) {
            return;
        }
        if (queue.backlogged && !from_refill) || queue.queued.len() >= capacity {
            queue.backlogged = true;
            queue.overflow_generation += 1;
            return;
        }
        queue.queued.push_back(delivery_id);
        queue.claimed.insert(delivery_id);
        self.make_ready(&endpoint_id);
    }

    /// Requests in flight one endpoint may start more of: no limit while a
    /// quarter of the global slots are free, then an even share of the other
    /// three quarters among the endpoints with work. Without it, endpoints
    /// that hold each request for seconds (slow or hanging receivers) take
    /// every global slot as their adaptive limits grow, and a healthy
    /// endpoint waits for one of their requests to end.
    fn fair_share(&self) -> usize {
        let max = self.settings.max_in_flight;
        let shared = max - max / 4;
        if self.in_flight < shared {
            return usize::MAX;
        }
        (shared / self.queues.len().max(1)).max(1)
    }

    /// Delivery ids one endpoint's queue may hold now: [`QUEUE_CAPACITY`]
    /// while few endpoints have work, an even share of [`QUEUE_BUDGET`] when
    /// many do, and never fewer than [`MIN_QUEUE_CAPACITY`].
    fn queue_capacity(&self) -> usize {
        queue_capacity(self.queues.len())
    }

    /// Returns the length below which a backlogged endpoint's queue is
    /// refilled from the store.
    fn refill_below(&self) -> usize {
        self.queue_capacity() / 4
    }

    fn mark_backlogged(&mut self, endpoint_id: Arc<str>) {
        if !self.owns(&endpoint_id) {
            return;
        }
        let queue = self.queues.entry(endpoint_id).or_default();
        queue.backlogged = true;
        queue.overflow_generation += 1;
    }

    /// True when this node delivers for the endpoint: always on a single
    /// node, and while it holds the endpoint's partition in a cluster.
    fn owns(&self, endpoint_id: &str) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.ownership.owns(endpoint_id))
    }

    /// True when an attempt for the endpoint may start now; in a cluster,
    /// only while the partition's lease outlasts the attempt.
    fn may_start(&self, endpoint_id: &str) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.ownership.may_start(endpoint_id))
    }

    /// Drops the queued work of endpoints whose partition this node no
    /// longer holds (the new owner reads it from the store), and puts back
    /// in turn the endpoints whose attempts were held for want of lease time.
    fn follow_leases(&mut self) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut lost = Vec::new();
        let mut held_back = Vec::new();
        for (endpoint_id, queue) in &mut self.queues {
            if !cluster.ownership.owns(endpoint_id) {
                for id in queue.queued.drain(..) {
                    queue.claimed.remove(&id);
                }
                queue.backlogged = false;
                lost.push(endpoint_id.clone());
            } else if !queue.in_ring && !queue.queued.is_empty() {
                held_back.push(endpoint_id.clone());
            }
        }
        for endpoint_id in lost {
            self.forget_if_idle(&endpoint_id);
        }
        for endpoint_id in held_back {
            self.make_ready(&endpoint_id);
        }
        // NOTE: the scan reads the due deliveries of every partition and
        // keeps this node's in Rust, so its cost grows with the cluster's
        // whole backlog, not this node's share.
        if self.last_cluster_scan.elapsed() >= CLUSTER_SCAN_INTERVAL {
            self.last_cluster_scan = Instant::now();
            self.find_backlog(Some(cluster.ownership.held()));
        }
    }

    /// Returns how many requests the endpoint may have in flight now, from
    /// its adaptive limit and its circuit breaker.
    fn capacity(&self, endpoint_id: &Arc<str>) -> usize {
        match self.health.get(endpoint_id) {
            Some(health) => health.capacity(&self.health_settings, Instant::now()),
            None => EndpointHealth::new(&self.health_settings)
                .capacity(&self.health_settings, Instant::now()),
        }
    }

    fn make_ready(&mut self, endpoint_id: &Arc<str>) {
        let cap = self.capacity(endpoint_id);
        if let Some(queue) = self.queues.get_mut(endpoint_id) {
            if !queue.in_ring && !queue.queued.is_empty() && queue.in_flight < cap {
                queue.in_ring = true;
                self.ring.push_back(endpoint_id.clone());
            }
        }
    }

    /// Frees the endpoint's slot when a worker has its response, and feeds
    /// the outcome to the endpoint's health.
    fn sent(&mut self, endpoint_id: Arc<str>, signal: Signal) {
        self.release_endpoint_slot(&endpoint_id);
        self.in_flight -= 1;
        self.recording += 1;
        {
            let settings = &self.health_settings;
            let health = self
                .health
                .entry(endpoint_id.clone())
                .or_insert_with(|| EndpointHealth::new(settings));
            let was_closed = health.breaker() == BreakerState::Closed;
            health.on_result(signal, settings, Instant::now());
            match health.breaker() {
                BreakerState::Open {
                    probe_at,
                    failed_probes,
                } if was_closed || failed_probes > 0 => {
                    let probe_in_ms = probe_at
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64;
                    if was_closed {
                        tracing::warn!(endpoint_id = %endpoint_id, probe_in_ms, "circuit breaker opened; holding deliveries and probing");
                    } else {
                        tracing::warn!(endpoint_id = %endpoint_id, failed_probes, probe_in_ms, "probe failed; circuit breaker stays open");
                    }
                }
                BreakerState::Closed if !was_closed => {
                    tracing::info!(endpoint_id = %endpoint_id, "probe succeeded; circuit breaker closed");
                }
                _ => {}
            }
        }
        self.make_ready(&endpoint_id);
    }

    /// Frees a request slot of the endpoint.
    fn release_endpoint_slot(&mut self, endpoint_id: &Arc<str>) {
        if let Some(queue) = self.queues.get_mut(endpoint_id) {
            queue.in_flight -= 1;
        }
    }

    /// Releases the delivery's claim once its attempt is recorded (or none
    /// was needed); until then a refill must not queue it again.
    fn finish(&mut self, endpoint_id: Arc<str>, delivery_id: i64, result: RunResult) {
        for delivery in result.new_deliveries {
            self.push(
                Arc::from(delivery.endpoint_id.as_str()),
                delivery.delivery_id,
            );
        }
        if result.sent {
            self.recording -= 1;
        } else {
            self.in_flight -= 1;
            self.release_endpoint_slot(&endpoint_id);
        }
        if let Some(queue) = self.queues.get_mut(&endpoint_id) {
            queue.claimed.remove(&delivery_id);
            if result.still_pending {
                // The delivery is still pending in the store; a refill finds it.
                queue.backlogged = true;
                queue.overflow_generation += 1;
            }
        }
        self.make_ready(&endpoint_id);
        self.forget_if_idle(&endpoint_id);
    }

    /// Drops the state of an endpoint with nothing queued, in flight or pending,
    /// so memory follows the active endpoints, not all endpoints ever seen.
    fn forget_if_idle(&mut self, endpoint_id: &Arc<str>) {
        if self
            .queues
            .get(endpoint_id)
            .is_some_and(|q| q.is_idle() && !q.in_ring)
        {
            self.queues.remove(endpoint_id);
        }
    }

    /// Starts workers for queued deliveries, one endpoint at a time in turn.
    fn dispatch(&mut self) {
        let max_recording = self.settings.max_in_flight * RECORDING_PER_REQUEST_SLOT;
        while self.in_flight < self.settings.max_in_flight && self.recording < max_recording {
            let Some(endpoint_id) = self.ring.pop_front() else {
                break;
            };
            let cap = self.capacity(&endpoint_id).min(self.fair_share());
            let may_start = self.may_start(&endpoint_id);
            let refill_below = self.refill_below();
            let Some(queue) = self.queues.get_mut(&endpoint_id) else {
                continue;
            };
            queue.in_ring = false;
            if queue.in_flight >= cap {
                continue;
            }
            // Held until the lease is renewed; `follow_leases` puts it back.
            if !may_start {
                continue;
            }
            let Some(delivery_id) = queue.queued.pop_front() else {
                continue;
            };
            queue.in_flight += 1;
            self.in_flight += 1;
            if let Some(health) = self.health.get_mut(&endpoint_id) {
                health.on_dispatch();
            }
            if !queue.queued.is_empty() && queue.in_flight < cap {
                queue.in_ring = true;
                self.ring.push_back(endpoint_id.clone());
            }
            let needs_refill =
                queue.backlogged && !queue.refilling && queue.queued.len() < refill_below;

            let context = self.context.clone();
            let events = self.events_tx.clone();
            let worker_endpoint = endpoint_id.clone();
            let sent_events = events.clone();
            let sent_endpoint = endpoint_id.clone();
            let on_sent: worker::OnSent = Box::new(move |signal| {
                let _ = sent_events.send(Event::Sent {
                    endpoint_id: sent_endpoint,
                    signal,
                });
            });
            self.workers.spawn(async move {
                let result = worker::run(context, delivery_id, on_sent).await;
                let _ = events.send(Event::Finished {
                    endpoint_id: worker_endpoint,
                    delivery_id,
                    result,
                });
            });

            if needs_refill {
                self.start_refill(endpoint_id);
            }
        }
    }

    fn on_tick(&mut self) {
        let queued: usize = self.queues.values().map(|q| q.queued.len()).sum();
        let backlogged = self.queues.values().filter(|q| q.backlogged).count();
        metrics::gauge!(metric::QUEUED).set(queued as f64);
        metrics::gauge!(metric::IN_FLIGHT).set(self.in_flight as f64);
        metrics::gauge!(metric::RECORDING).set(self.recording as f64);
        metrics::gauge!(metric::BACKLOGGED_ENDPOINTS).set(backlogged as f64);

        if self.health.len() > MAX_HEALTH_ENTRIES {
            let queues = &self.queues;
            self.health.retain(|endpoint_id, health| {
                !health.is_calm() || queues.contains_key(endpoint_id)
            });
        }

        // Let through the probes that became due, and count breaker states.
        let now = Instant::now();
        let (mut open, mut probing, mut limited) = (0, 0, 0);
        let mut due_probes = Vec::new();
        for (endpoint_id, health) in &self.health {
            match health.breaker() {
                BreakerState::Open { probe_at, .. } => {
                    open += 1;
                    if probe_at <= now {
                        due_probes.push(endpoint_id.clone());
                    }
                }
                BreakerState::Probing { .. } => probing += 1,
                BreakerState::Closed => limited += 1,
            }
        }
        metrics::gauge!(metric::ENDPOINTS_BY_BREAKER_STATE, "state" => "open").set(f64::from(open));
        metrics::gauge!(metric::ENDPOINTS_BY_BREAKER_STATE, "state" => "probing")
            .set(f64::from(probing));
        metrics::gauge!(metric::ENDPOINTS_BY_BREAKER_STATE, "state" => "closed_limited")
            .set(f64::from(limited));
        for endpoint_id in due_probes {
            self.make_ready(&endpoint_id);
        }

        // Refill backlogged endpoints whose queues run low.
        let refill_below = self.refill_below();
        let wanting: Vec<Arc<str>> = self
            .queues
            .iter()
            .filter(|(_, q)| q.backlogged && !q.refilling && q.queued.len() < refill_below)
            .map(|(id, _)| id.clone())
            .collect();
        for endpoint_id in wanting {
            if self.refills_running >= MAX_CONCURRENT_REFILLS {
                break;
            }
            self.start_refill(endpoint_id);
        }

        if !self.retry_scan_running {
            self.start_retry_scan();
        }
        self.follow_leases();
    }

    fn start_refill(&mut self, endpoint_id: Arc<str>) {
        if self.refills_running >= MAX_CONCURRENT_REFILLS {
            return;
        }
        let capacity = self.queue_capacity();
        let Some(queue) = self.queues.get_mut(&endpoint_id) else {
            return;
        };
        queue.refilling = true;
        self.refills_running += 1;
        let generation = queue.overflow_generation;
        // Ask for enough rows to fill the queue even after skipping the ones
        // already claimed.
        let limit = capacity.saturating_sub(queue.queued.len()) + queue.claimed.len();
        let store = self.store.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let id = endpoint_id.to_string();
            let now = now_ms();
            let (ids, exhausted) = match store
                .read_blocking(move |conn| deliveries::due_for_endpoint(conn, &id, now, limit))
                .await
            {
                Ok(ids) => {
                    let exhausted = ids.len() < limit;
                    (ids, exhausted)
                }
                Err(err) => {
                    tracing::error!(endpoint_id = %endpoint_id, error = %err, "cannot read pending deliveries; will try again");
                    metrics::counter!(metric::STORE_ERRORS, "operation" => "refill").increment(1);
                    (Vec::new(), false)
                }
            };
            let _ = events.send(Event::Refilled {
                endpoint_id,
                ids,
                exhausted,
                generation,
            });
        });
    }

    fn start_retry_scan(&mut self) {
        self.retry_scan_running = true;
        // Windows overlap by RETRY_SCAN_OVERLAP_MS so that a retry committed a
        // little after the scan of its window is still found. Finding one
        // twice is harmless: the claimed set and the worker's re-read skip it.
        let after = self.retries_scanned_until - RETRY_SCAN_OVERLAP_MS;
        let until = now_ms();
        let store = self.store.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            loop {
                let page = store
                    .read_blocking(move |conn| {
                        deliveries::retries_due_between(conn, after, until, cursor, RETRY_SCAN_PAGE)
                    })
                    .await;
                match page {
                    Ok(retries) => {
                        let last = retries.last().map(|r| (r.next_attempt_at, r.delivery_id));
                        let done = retries.len() < RETRY_SCAN_PAGE;
                        let completed_until = done.then_some(until);
                        let _ = events.send(Event::RetriesDue {
                            retries,
                            completed_until,
                        });
                        if done {
                            return;
                        }
                        cursor = last;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot scan for due retries; will try again");
                        metrics::counter!(metric::STORE_ERRORS, "operation" => "retry_scan")
                            .increment(1);
                        // Report no progress so the same window is scanned again.
                        let _ = events.send(Event::RetriesDue {
                            retries: Vec::new(),
                            completed_until: Some(after),
                        });
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_capacity_shares_budget() {
        assert_eq!(queue_capacity(0), 512);
        assert_eq!(queue_capacity(1), 512);
        assert_eq!(queue_capacity(256), 512);
        assert_eq!(queue_capacity(257), 510);
        assert_eq!(queue_capacity(1_000), 131);
        assert_eq!(queue_capacity(4_096), 32);
        assert_eq!(queue_capacity(10_000), 32);
    }
}
