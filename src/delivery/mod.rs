//! The delivery engine: a fair scheduler over per-endpoint queues, workers
//! that make one attempt each, and the pieces they use.
//!
//! - [`scheduler`]: per-endpoint queues served round-robin under per-endpoint and global caps.
//! - [`worker`]: one attempt: load, sign, send, classify, record.
//! - [`recorder`]: attempt records batched into one store job per commit.
//! - [`sender`]: the HTTP client with its deadline and response-size limit.
//! - [`health`]: the circuit breaker and adaptive concurrency limit of each endpoint.
//! - [`retry`]: outcome classification and the retry schedule with jitter.
//! - [`signing`]: Standard Webhooks signatures.
//! - [`ssrf`]: the address guard applied to every connection.
//! - [`dns`]: host name resolution, by the system resolver or the configured DNS servers.

pub mod dns;
pub mod health;
pub mod recorder;
pub mod retry;
pub mod scheduler;
pub mod sender;
pub mod signing;
pub mod ssrf;
pub mod worker;

pub use scheduler::{Engine, EngineSettings};
