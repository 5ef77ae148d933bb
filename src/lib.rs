//! hookd: durable, isolated, signed webhook delivery in one binary.
//!
//! The modules, in the order an event flows through them:
//!
//! - [`config`]: settings from a TOML file and `HOOKD_` variables, validated once at start.
//! - [`model`]: ids, applications, event types, endpoints, messages, deliveries and attempts.
//! - [`api`]: the Svix-compatible REST API (axum routers, auth, one error shape).
//! - [`store`]: the embedded SQLite store or a shared PostgreSQL database, with group commits on one writer thread.
//! - [`cluster`]: partition leases and notifications that share the delivery work between nodes on PostgreSQL.
//! - [`delivery`]: the per-endpoint scheduler, the HTTP sender, retry policy, signing and SSRF guard.
//! - [`recovery`]: the runner of recover and replay tasks, which page through stored messages.
//! - [`retention`]: the job that expunges payloads and response bodies past the retention period.
//! - [`source`]: Kafka and NATS JetStream consumers that turn records into messages.
//! - [`server`]: wires the store, the delivery engine and the API into a running service.
//! - [`telemetry`]: logging set-up.

pub mod api;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod model;
pub mod recovery;
pub mod retention;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
