//! Work sharing between the nodes of a cluster on one PostgreSQL database.
//!
//! Endpoints are split into [`PARTITIONS`] partitions by a hash of their id.
//! Each node holds leases on a share of the partitions, recorded in the
//! `partition_leases` table with expiry times on the database's clock, and
//! runs the delivery scheduler only for the endpoints of those partitions.
//! So an endpoint's concurrency cap, circuit breaker and rate limit live on
//! one node at a time, as they do on a single node.
//!
//! A lease thread renews the node's leases every [`ROUND_INTERVAL`], takes
//! free or expired partitions up to its fair share (the partition count over
//! the live nodes, rounded up), and gives back the partitions beyond its
//! share. A node that stops cleanly gives back all of its leases at once; the
//! leases of a node that died expire after `lease_duration`.
//!
//! Two rules keep an attempt from running on two nodes at once:
//!
//! - A node starts an attempt only while its lease lasts at least
//!   `request_timeout` plus [`RECORD_MARGIN`] longer, as measured from the
//!   local time before the renewal was sent, which is never later than the
//!   database's view of the expiry. So every attempt has ended and been
//!   recorded before another node can take the partition.
//! - A partition being given back is first drained: the node stops starting
//!   attempts for it and keeps renewing it for `request_timeout` plus
//!   [`RECORD_MARGIN`] before it releases the lease.
//!
//! New deliveries for an endpoint that another node owns are announced with
//! `NOTIFY` on the channel [`CHANNEL`]; a listener thread on the owner wakes
//! the endpoint's queue, which reads them from the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::delivery::Engine;
use crate::store::{connect_postgres, StoreError};
use crate::telemetry::metric;

/// Partitions the endpoints are split into. Changing it moves endpoints
/// between partitions, so it is fixed.
pub const PARTITIONS: u32 = 64;
/// How often a node renews, takes and gives back leases.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// Time allowed after an attempt's deadline for its result to be recorded.
pub const RECORD_MARGIN: Duration = Duration::from_secs(2);
/// The `LISTEN`/`NOTIFY` channel that carries endpoint ids with new deliveries.
pub const CHANNEL: &str = "hookd_deliveries";
/// Payload bytes per notification at most; PostgreSQL's limit is 8,000.
const MAX_NOTIFY_BYTES: usize = 7_000;

/// Returns the partition of an endpoint: FNV-1a of its id, modulo [`PARTITIONS`].
pub fn partition_of(endpoint_id: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(PARTITIONS)) as u32
}

/// This node's view of its leases, shared by the lease thread (which
/// writes it) and the scheduler (which reads it).
#[derive(Debug)]
pub struct Ownership {
    epoch: Instant,
    /// Per partition: until when the lease is held, in milliseconds since
    /// `epoch`; 0 when it is not held.
    lease_until: Vec<AtomicU64>,
    /// Per partition: being given back, so no new attempt starts.
    draining: Vec<AtomicBool>,
    /// Lease time an attempt needs left to start: request timeout plus
    /// [`RECORD_MARGIN`], in milliseconds.
    start_margin_ms: u64,
}

impl Ownership {
    pub fn new(request_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            lease_until: (0..PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            draining: (0..PARTITIONS).map(|_| AtomicBool::new(false)).collect(),
            start_margin_ms: (request_timeout + RECORD_MARGIN).as_millis() as u64,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// True while this node holds the lease of the endpoint's partition, so
    /// it keeps the endpoint's queue.
    pub fn owns(&self, endpoint_id: &str) -> bool {
        self.owns_partition(partition_of(endpoint_id))
    }

    pub fn owns_partition(&self, partition: u32) -> bool {
        self.lease_until[partition as usize].load(Ordering::Acquire) > self.now_ms()
    }

    /// True when an attempt for the endpoint may start now: the lease lasts
    /// long enough for it to end, and the partition is not being drained.
    pub fn may_start(&self, endpoint_id: &str) -> bool {
        self.may_start_partition(partition_of(endpoint_id))
    }

    pub fn may_start_partition(&self, partition: u32) -> bool {
        let index = partition as usize;
        !self.draining[index].load(Ordering::Acquire)
            && self.lease_until[index].load(Ordering::Acquire)
                > self.now_ms() + self.start_margin_ms
    }

    /// True on the node that runs the jobs only one node may run (recover and
    /// replay tasks, retention): the holder of partition 0.
    pub fn is_leader(&self) -> bool {
        self.may_start_partition(0)
    }

    /// Partitions held now.
    pub fn held(&self) -> Vec<u32> {
        (0..PARTITIONS)
            .filter(|p| self.owns_partition(*p))
            .collect()
    }

    fn set_lease(&self, partition: u32, until: Option<Instant>) {
        let value = until.map_or(0, |at| self.at_ms(at).max(1));
        self.lease_until[partition as usize].store(value, Ordering::Release);
    }

    fn set_draining(&self, partition: u32, draining: bool) {
        self.draining[partition as usize].store(draining, Ordering::Release);
    }
}

/// A request from the scheduler to the lease thread.
#[derive(Debug)]
enum Command {
    /// Announce that these endpoints have new deliveries.
    Notify(Vec<String>),
    /// Give back every lease and leave the cluster, then reply.
    Stop(std_mpsc::Sender<()>),
}

/// The scheduler's handle on the cluster: its leases and the way to reach
/// other nodes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    pub ownership: Arc<Ownership>,
    commands: std_mpsc::Sender<Command>,
}

impl ClusterLink {
    /// Tells the owners of these endpoints that they have new deliveries.
    pub fn notify(&self, endpoint_ids: Vec<String>) {
        if !endpoint_ids.is_empty() {
            let _ = self.commands.send(Command::Notify(endpoint_ids));
        }
    }
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub database_url: String,
    pub node_id: String,
    pub lease_duration: Duration,
    pub request_timeout: Duration,
}

/// A node's membership in the cluster: the lease and listener threads.
pub struct Cluster {
    link: ClusterLink,
    stop_listener: Arc<AtomicBool>,
    lease_thread: Option<std::thread::JoinHandle<()>>,
    listener_thread: Option<std::thread::JoinHandle<()>>,
}

/// Creates the two ends of a link before the engine exists: the engine takes the
/// link, and [`Cluster::start`] takes the receiver.
pub fn link(request_timeout: Duration) -> (ClusterLink, ClusterInbox) {
    let (commands, inbox) = std_mpsc::channel();
    (
        ClusterLink {
            ownership: Ownership::new(request_timeout),
            commands,
        },
        ClusterInbox(inbox),
    )
}

/// The lease thread's end of a [`ClusterLink`].
pub struct ClusterInbox(std_mpsc::Receiver<Command>);

impl Cluster {
    /// Starts the lease and listener threads. The first lease round runs
    /// before this returns, so a node that cannot reach the database fails
    /// at start.
    pub fn start(
        settings: NodeSettings,
        link: ClusterLink,
        inbox: ClusterInbox,
        engine: Engine,
    ) -> Result<Self, StoreError> {
        // Off the runtime, where the client may block, and may be dropped
        // when the start fails.
        let leases = crate::store::off_runtime(|| {
            let mut leases = Leases::new(settings.clone(), link.ownership.clone(), engine.clone());
            leases.check_node_id_free()?;
            leases.connect_and_round()?;
            Ok::<_, StoreError>(leases)
        })?;
        tracing::info!(
            node_id = %settings.node_id,
            partitions = leases.held.len(),
            "joined the cluster"
        );
        let lease_thread = std::thread::Builder::new()
            .name("hookd-cluster-leases".into())
            .spawn(move || leases.run(inbox.0))
            .map_err(|err| StoreError::Cluster(format!("cannot start the lease thread: {err}")))?;

        let stop_listener = Arc::new(AtomicBool::new(false));
        let listener_stop = stop_listener.clone();
        let listener_settings = settings.clone();
        let listener_thread = std::thread::Builder::new()
            .name("hookd-cluster-listen".into())
            .spawn(move || listen(&listener_settings, &engine, &listener_stop))
            .map_err(|err| {
                StoreError::Cluster(format!("cannot start the listener thread: {err}"))
            })?;

        Ok(Self {
            link,
            stop_listener,
            lease_thread: Some(lease_thread),
            listener_thread: Some(listener_thread),
        })
    }

    /// Gives back every lease and leaves the cluster, so other nodes take
    /// over at once. Call after the engine has stopped.
    pub fn stop(mut self) {
        let (reply_to, reply) = std_mpsc::channel();
        if self.link.commands.send(Command::Stop(reply_to)).is_ok() {
            let _ = reply.recv_timeout(Duration::from_secs(10));
        }
        self.stop_listener.store(true, Ordering::Release);
        for thread in [self.lease_thread.take(), self.listener_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// The lease thread's state.
struct Leases {
    settings: NodeSettings,
    ownership: Arc<Ownership>,
    engine: Engine,
    client: Option<postgres::Client>,
    /// Partitions whose lease the last round renewed or took.
    held: Vec<u32>,
    /// Partitions being drained before release, with when draining began.
    draining: Vec<(u32, Instant)>,
}

/// The database's clock in milliseconds since the Unix epoch.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

impl Leases {
    fn new(settings: NodeSettings, ownership: Arc<Ownership>, engine: Engine) -> Self {
        Self {
            settings,
            ownership,
            engine,
            client: None,
            held: Vec::new(),
            draining: Vec::new(),
        }
    }

    fn run(mut self, inbox: std_mpsc::Receiver<Command>) {
        let mut next_round = Instant::now() + ROUND_INTERVAL;
        loop {
            let wait = next_round.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Command::Notify(mut endpoint_ids)) => {
                    while let Ok(Command::Notify(more)) = inbox.try_recv() {
                        endpoint_ids.extend(more);
                    }
                    self.notify(endpoint_ids);
                }
                Ok(Command::Stop(reply)) => {
                    self.leave();
                    let _ = reply.send(());
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(err) = self.connect_and_round() {
                        tracing::error!(error = %err, node_id = %self.settings.node_id, "cannot renew the partition leases; will try again");
                        metrics::counter!(metric::STORE_ERRORS, "operation" => "lease")
                            .increment(1);
                        self.client = None;
                    }
                    next_round = Instant::now() + ROUND_INTERVAL;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.leave();
                    return;
                }
            }
        }
    }

    fn client(&mut self) -> Result<&mut postgres::Client, StoreError> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            let mut client = connect_postgres(&self.settings.database_url)?;
            client.batch_execute(&format!(
                "INSERT INTO partition_leases (partition, node_id, expires_at)
                 SELECT p, NULL, 0 FROM generate_series(0, {}) AS p
                 ON CONFLICT (partition) DO NOTHING",
                PARTITIONS - 1
            ))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Fails when another running process uses this node id: its row in
    /// `cluster_nodes` is renewed while this one watches it for two rounds.
    /// Two processes with one id would each believe they hold its leases. A
    /// row left by a process that died is not renewed, so a restart with
    /// the same id goes on after the wait.
    fn check_node_id_free(&mut self) -> Result<(), StoreError> {
        let node_id = self.settings.node_id.clone();
        let query = format!(
            "SELECT expires_at FROM cluster_nodes WHERE node_id = $1 AND expires_at > {DB_NOW_MS}"
        );
        let first: Option<i64> = self
            .client()?
            .query_opt(&query, &[&node_id])?
            .map(|row| row.get(0));
        let Some(first) = first else {
            return Ok(());
        };
        std::thread::sleep(ROUND_INTERVAL * 2 + Duration::from_millis(500));
        let second: Option<i64> = self
            .client()?
            .query_opt(&query, &[&node_id])?
            .map(|row| row.get(0));
        if second.is_some_and(|second| second != first) {
            return Err(StoreError::Cluster(format!(
                "node id {node_id} is in use by another running node; give each node its own HOOKD_NODE_ID"
            )));
        }
        Ok(())
    }

    /// Runs one lease round and applies its result to [`Ownership`].
    fn connect_and_round(&mut self) -> Result<(), StoreError> {
        // Measured before the round's statements reach the database, so the
        // lease never looks longer here than it is there.
        let sent_at = Instant::now();
        let lease_ms = self.settings.lease_duration.as_millis() as i64;
        let node_id = self.settings.node_id.clone();
        let margin = self.settings.request_timeout + RECORD_MARGIN;
        let previously_held = self.held.clone();
        // Taken out while the round borrows the client, and put back after it.
        let mut draining = std::mem::take(&mut self.draining);
        let outcome = match self.client() {
            Ok(client) => lease_round(client, &node_id, lease_ms, margin, &mut draining),
            Err(err) => Err(err),
        };
        self.draining = draining;
        let (held, live_nodes, share) = outcome?;

        // Apply: leases held until `sent_at + lease`; the rest are lost.
        let until = sent_at + self.settings.lease_duration;
        for partition in 0..PARTITIONS {
            let holds = held.binary_search(&partition).is_ok();
            self.ownership.set_lease(partition, holds.then_some(until));
        }
        self.draining
            .retain(|(partition, _)| held.binary_search(partition).is_ok());
        // Give back what lies beyond the fair share, highest partitions first.
        let draining_now = self.draining.len();
        let keep = held.len().saturating_sub(draining_now);
        if keep > share {
            let extra = keep - share;
            let candidates: Vec<u32> = held
                .iter()
                .rev()
                .copied()
                .filter(|p| !self.draining.iter().any(|(d, _)| d == p))
                .take(extra)
                .collect();
            if !candidates.is_empty() {
                tracing::info!(
                    partitions = ?candidates,
                    share,
                    "draining partitions to give them to other nodes"
                );
            }
            for partition in candidates {
                self.draining.push((partition, Instant::now()));
            }
        }
        for partition in 0..PARTITIONS {
            let draining = self.draining.iter().any(|(p, _)| *p == partition);
            self.ownership.set_draining(partition, draining);
        }

        let gained: Vec<u32> = held
            .iter()
            .copied()
            .filter(|p| !previously_held.contains(p))
            .collect();
        let lost = previously_held.iter().filter(|p| !held.contains(p)).count();
        if !gained.is_empty() || lost > 0 {
            tracing::info!(
                node_id = %self.settings.node_id,
                gained = gained.len(),
                lost,
                held = held.len(),
                live_nodes,
                "partition leases changed"
            );
        }
        metrics::gauge!(metric::CLUSTER_PARTITIONS_HELD).set(held.len() as f64);
        metrics::gauge!(metric::CLUSTER_PARTITIONS_DRAINING).set(self.draining.len() as f64);
        self.held = held;
        if !gained.is_empty() {
            self.engine.partitions_gained(gained);
        }
        Ok(())
    }

    /// Sends the endpoint ids in notifications of at most [`MAX_NOTIFY_BYTES`].
    fn notify(&mut self, mut endpoint_ids: Vec<String>) {
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let mut payloads = Vec::new();
        let mut current = String::new();
        for id in endpoint_ids {
            if !current.is_empty() && current.len() + id.len() + 1 > MAX_NOTIFY_BYTES {
                payloads.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(',');
            }
            current.push_str(&id);
        }
        if !current.is_empty() {
            payloads.push(current);
        }
        let result = self.client().and_then(|client| {
            for payload in &payloads {
                client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, payload])?;
            }
            Ok(())
        });
        if let Err(err) = result {
            // The owners still find the deliveries with their periodic scan.
            tracing::warn!(error = %err, "cannot notify other nodes of new deliveries");
            metrics::counter!(metric::STORE_ERRORS, "operation" => "notify").increment(1);
            self.client = None;
        }
    }

    /// Gives back every lease and removes the node's row.
    fn leave(&mut self) {
        for partition in 0..PARTITIONS {
            self.ownership.set_lease(partition, None);
        }
        let node_id = self.settings.node_id.clone();
        let result = self.client().and_then(|client| {
            client.execute(
                "UPDATE partition_leases SET node_id = NULL, expires_at = 0 WHERE node_id = $1",
                &[&node_id],
            )?;
            client.execute("DELETE FROM cluster_nodes WHERE node_id = $1", &[&node_id])?;
            Ok(())
        });
        match result {
            Ok(()) => {
                tracing::info!(node_id = %node_id, "left the cluster; partition leases given back")
            }
            Err(err) => {
                tracing::warn!(error = %err, node_id = %node_id, "cannot give back the partition leases; they expire instead")
            }
        }
    }
}

/// Runs one lease round in a transaction: renews this node's leases,
/// gives back drained partitions beyond its share, and takes free ones up
/// to its share. Returns the partitions held after it, sorted, the live
/// nodes and the share.
fn lease_round(
    client: &mut postgres::Client,
    node_id: &str,
    lease_ms: i64,
    margin: Duration,
    draining: &mut Vec<(u32, Instant)>,
) -> Result<(Vec<u32>, i64, usize), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute(
        &format!(
            "INSERT INTO cluster_nodes (node_id, started_at, expires_at)
                 VALUES ($1, {DB_NOW_MS}, {DB_NOW_MS} + $2)
                 ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        &[&node_id, &lease_ms],
    )?;
    let live_nodes: i64 = tx
        .query_one(
            &format!("SELECT COUNT(*) FROM cluster_nodes WHERE expires_at > {DB_NOW_MS}"),
            &[],
        )?
        .get(0);
    let mut held: Vec<u32> = tx
        .query(
            &format!(
                "UPDATE partition_leases SET expires_at = {DB_NOW_MS} + $2
                     WHERE node_id = $1 AND expires_at > {DB_NOW_MS}
                     RETURNING partition"
            ),
            &[&node_id, &lease_ms],
        )?
        .iter()
        .map(|row| row.get::<_, i64>(0) as u32)
        .collect();
    let share = PARTITIONS.div_ceil(live_nodes.max(1) as u32) as usize;

    // Drain only what lies beyond the share. When a node left after a
    // drain began, the share grew, so the partitions still draining are
    // kept.
    draining.retain(|(partition, _)| held.contains(partition));
    let excess = held.len().saturating_sub(share);
    if draining.len() > excess {
        draining.sort_by_key(|(_, since)| *since);
        let kept: Vec<u32> = draining.drain(excess..).map(|(p, _)| p).collect();
        tracing::info!(partitions = ?kept, share, "keeping partitions that were draining; the share grew");
    }
    let release: Vec<i64> = draining
        .iter()
        .filter(|(_, since)| since.elapsed() >= margin)
        .map(|(partition, _)| i64::from(*partition))
        .collect();
    if !release.is_empty() {
        tx.execute(
            "UPDATE partition_leases SET node_id = NULL, expires_at = 0
                 WHERE node_id = $1 AND partition = ANY($2)",
            &[&node_id, &release],
        )?;
        held.retain(|partition| !release.contains(&i64::from(*partition)));
    }
    if held.len() < share {
        // Never the partitions given back in this round: another node
        // is to take them.
        let wanted = (share - held.len()) as i64;
        let taken = tx.query(
            &format!(
                "UPDATE partition_leases SET node_id = $1, expires_at = {DB_NOW_MS} + $2
                     WHERE partition IN (
                         SELECT partition FROM partition_leases
                         WHERE (node_id IS NULL OR expires_at <= {DB_NOW_MS})
                           AND NOT (partition = ANY($4))
                         ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)
                     RETURNING partition"
            ),
            &[&node_id, &lease_ms, &wanted, &release],
        )?;
        held.extend(taken.iter().map(|row| row.get::<_, i64>(0) as u32));
    }
    tx.execute(
        &format!("DELETE FROM cluster_nodes WHERE expires_at < {DB_NOW_MS} - 3600000"),
        &[],
    )?;
    tx.commit()?;
    held.sort_unstable();
    Ok((held, live_nodes, share))
}

/// Listens for [`CHANNEL`] notifications and wakes the endpoints they name,
/// reconnecting when the connection drops, until `stop` turns true.
fn listen(settings: &NodeSettings, engine: &Engine, stop: &AtomicBool) {
    use postgres::fallible_iterator::FallibleIterator;

    while !stop.load(Ordering::Acquire) {
        let mut client = match connect_postgres(&settings.database_url).and_then(|mut client| {
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(client)
        }) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for new deliveries from other nodes; will try again");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // Deliveries announced while the listener was away are found by
        // the scheduler's periodic scan of the partitions it holds.
        while !stop.load(Ordering::Acquire) {
            let mut endpoint_ids = Vec::new();
            let mut notifications = client.notifications();
            let mut batch = notifications.timeout_iter(Duration::from_millis(500));
            let failed = loop {
                match batch.next() {
                    Ok(Some(notification)) => endpoint_ids.extend(
                        notification
                            .payload()
                            .split(',')
                            .filter(|id| !id.is_empty())
                            .map(str::to_owned),
                    ),
                    Ok(None) => break false,
                    Err(err) => {
                        tracing::warn!(error = %err, "the notification connection failed; reconnecting");
                        break true;
                    }
                }
                if endpoint_ids.len() >= 1000 {
                    break false;
                }
            };
            drop(batch);
            drop(notifications);
            if !endpoint_ids.is_empty() {
                engine.wake_endpoints(endpoint_ids);
            }
            if failed || client.is_closed() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        // Every node must compute the same partition, so the hash is pinned
        // to published FNV-1a 64 values: the offset basis for "", and
        // 0xaf63dc4c8601ec8c for "a".
        let first = partition_of("ep_2Cdy7kkrRB9ZVqV8vQcrqJZY4xG");
        assert_eq!(first, partition_of("ep_2Cdy7kkrRB9ZVqV8vQcrqJZY4xG"));
        assert!(first < PARTITIONS);
        assert_eq!(partition_of(""), (0xcbf2_9ce4_8422_2325_u64 % 64) as u32);
        assert_eq!(partition_of("a"), (0xaf63_dc4c_8601_ec8c_u64 % 64) as u32);
    }

    #[test]
    fn partitions_spread_endpoints() {
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..6400 {
            counts[partition_of(&format!("ep_{i:08}")) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 60, "fewest endpoints in a partition: {min}");
        assert!(*max <= 145, "most endpoints in a partition: {max}");
    }

    #[test]
    fn ownership_needs_time_left_to_start() {
        let ownership = Ownership::new(Duration::from_secs(10));
        assert!(!ownership.owns_partition(3));
        ownership.set_lease(3, Some(Instant::now() + Duration::from_secs(30)));
        assert!(ownership.owns_partition(3));
        assert!(ownership.may_start_partition(3));
        // 11 s left is less than the 10 s timeout plus the 2 s margin.
        ownership.set_lease(3, Some(Instant::now() + Duration::from_secs(11)));
        assert!(ownership.owns_partition(3));
        assert!(!ownership.may_start_partition(3));
        ownership.set_lease(3, Some(Instant::now() + Duration::from_secs(30)));
        ownership.set_draining(3, true);
        assert!(!ownership.may_start_partition(3));
        ownership.set_lease(3, None);
        assert!(!ownership.owns_partition(3));
    }
}
