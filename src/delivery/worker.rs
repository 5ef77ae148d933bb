//! One attempt of one delivery: load it, sign it, send it, classify the
//! outcome and record the attempt with the delivery's next step.

use std::sync::Arc;

use bytes::Bytes;

use super::health::Signal;
use super::retry::{classify, Decision, Outcome, RetryPolicy};
use super::sender::{Request, Sender};
use super::signing::signature_header;
use crate::model::{ids, now_ms, Attempt, DeliveryStatus};
use crate::store::deliveries::{self, NextStep};
use crate::store::messages::NewDelivery;
use crate::store::{Store, StoreError};
use crate::telemetry::{metric, LogBudget};

/// Log lines per second for failed attempts at most; `suppressed` on a
/// line counts those left out before it.
static RETRY_LOG_BUDGET: LogBudget = LogBudget::new(20);
static FAILED_LOG_BUDGET: LogBudget = LogBudget::new(20);

/// Shared state of all workers.
pub struct WorkerContext {
    pub store: Store,
    pub sender: Sender,
    pub policy: RetryPolicy,
    pub rate_limiters: RateLimiters,
    /// Writes attempts to the store in batches.
    pub recorder: super::recorder::Recorder,
    /// The node's leases in a cluster; `None` on a single node.
    pub ownership: Option<Arc<crate::cluster::Ownership>>,
}

type Limiter = governor::DefaultDirectRateLimiter;

/// One rate limiter per endpoint that has a `rateLimit`, in messages per second.
#[derive(Default)]
pub struct RateLimiters {
    /// Limiters by endpoint id, with the rate each was built for.
    limiters: std::sync::Mutex<std::collections::HashMap<String, (u32, Arc<Limiter>)>>,
}

impl RateLimiters {
    /// Waits until the endpoint may receive one more request at `rate` per
    /// second. Returns true when it had to wait.
    pub async fn until_ready(&self, endpoint_id: &str, rate: u32) -> bool {
        let Some(per_second) = std::num::NonZeroU32::new(rate) else {
            return false;
        };
        let limiter = {
            let mut limiters = self
                .limiters
                .lock()
                .expect("the limiter map lock is never poisoned");
            match limiters.get(endpoint_id) {
                Some((current, limiter)) if *current == rate => limiter.clone(),
                _ => {
                    // A burst of one second's worth, so a steady rate passes unchanged.
                    let limiter = Arc::new(governor::RateLimiter::direct(
                        governor::Quota::per_second(per_second),
                    ));
                    limiters.insert(endpoint_id.to_owned(), (rate, limiter.clone()));
                    limiter
                }
            }
        };
        if limiter.check().is_ok() {
            return false;
        }
        limiter.until_ready().await;
        true
    }
}

/// The end state of a worker run, for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// No attempt was recorded, because the store failed or the node's
    /// lease ran low before the request; the delivery is still pending and
    /// must be picked up again.
    pub still_pending: bool,
    /// A request was sent, so `on_sent` was called.
    pub sent: bool,
    /// Deliveries created while recording, such as operational webhooks.
    pub new_deliveries: Vec<NewDelivery>,
}

/// Called once the response is in, before the attempt is recorded, so the
/// endpoint's slot is free while the commit is made durable.
pub type OnSent = Box<dyn FnOnce(Signal) + Send>;

/// Makes one attempt of a delivery, if it is still pending and due.
pub async fn run(context: Arc<WorkerContext>, delivery_id: i64, on_sent: OnSent) -> RunResult {
    let mut on_sent = Some(on_sent);
    let outcome = attempt(&context, delivery_id, &mut on_sent).await;
    let sent = on_sent.is_none();
    match outcome {
        Ok(Attempted::HeldBack) => RunResult {
            still_pending: true,
            sent,
            new_deliveries: Vec::new(),
        },
        Ok(Attempted::Done(new_deliveries)) => RunResult {
            still_pending: false,
            sent,
            new_deliveries,
        },
        Err(err) => {
            tracing::error!(delivery_id, error = %err, "cannot record a delivery attempt; it stays pending");
            RunResult {
                still_pending: true,
                sent,
                new_deliveries: Vec::new(),
            }
        }
    }
}

/// Maps an attempt's outcome to a health signal for its endpoint.
fn health_signal(outcome: &Outcome, duration: std::time::Duration) -> Signal {
    match outcome {
        Outcome::Response { status, .. } if (200..300).contains(status) => {
            Signal::Success(duration)
        }
        Outcome::Response {
            status: 429 | 503, ..
        }
        | Outcome::Timeout => Signal::Overload,
        _ => Signal::Failure,
    }
}

/// The end of an [`attempt`] without a store error.
enum Attempted {
    /// Recorded, or not needed; with the deliveries the record created.
    Done(Vec<NewDelivery>),
    /// Not sent, because this node's lease on the endpoint's partition
    /// would not outlast the request.
    HeldBack,
}

async fn attempt(
    context: &WorkerContext,
    delivery_id: i64,
    on_sent: &mut Option<OnSent>,
) -> Result<Attempted, StoreError> {
    let loaded = context.store.load_for_send(delivery_id).await?;
    let Some(loaded) = loaded else {
        return Ok(Attempted::Done(Vec::new()));
    };
    let delivery = loaded.delivery;
    let now = now_ms();
    if delivery.status != DeliveryStatus::Pending
        || delivery.next_attempt_at.is_none_or(|at| at > now)
    {
        // Finished or rescheduled since it was queued.
        return Ok(Attempted::Done(Vec::new()));
    }
    let (endpoint, payload) = match (loaded.endpoint, loaded.message.payload.clone()) {
        (Some(endpoint), Some(payload)) if !endpoint.disabled => (endpoint, payload),
        (endpoint, payload) => {
            let reason = match (endpoint, payload) {
                (None, _) => "endpoint deleted",
                (Some(_), None) => "payload expunged",
                _ => "endpoint disabled",
            };
            tracing::info!(delivery_id, msg_id = %delivery.msg_id, endpoint_id = %delivery.endpoint_id, reason, "delivery canceled");
            metrics::counter!(metric::DELIVERY_OUTCOMES, "outcome" => "canceled").increment(1);
            return context
                .store
                .write(move |conn| deliveries::cancel(conn, delivery_id, now))
                .await
                .map(|()| Attempted::Done(Vec::new()));
        }
    };

    if let Some(rate) = endpoint.rate_limit {
        // Wait for the endpoint's rate limit instead of failing: the
        // delivery keeps its slot and is sent as soon as the limit allows.
        if context.rate_limiters.until_ready(&endpoint.id, rate).await {
            metrics::counter!(metric::DEFERRED, "reason" => "rate_limit").increment(1);
        }
    }
    // The rate limit may have held the request for a while: in a cluster,
    // send it only if the lease still outlasts it.
    if context
        .ownership
        .as_ref()
        .is_some_and(|ownership| !ownership.may_start(&endpoint.id))
    {
        metrics::counter!(metric::DEFERRED, "reason" => "lease").increment(1);
        return Ok(Attempted::HeldBack);
    }
    let now = now_ms();
    let timestamp = now / 1000;
    let body = Bytes::from(payload);
    let signature = signature_header(
        &endpoint.signing_secrets(now),
        &delivery.msg_id,
        timestamp,
        &body,
    );
    let response = context
        .sender
        .send(Request {
            url: &endpoint.url,
            msg_id: &delivery.msg_id,
            timestamp,
            signature,
            body,
            custom_headers: &endpoint.headers,
        })
        .await;

    let finished = now_ms();
    metrics::histogram!(metric::ATTEMPT_DURATION).record(response.duration.as_secs_f64());
    let attempts_made = delivery.attempts + 1;
    let decision = classify(&response.outcome);
    // Free the endpoint's slot now, unless the outcome disables the endpoint:
    // then the slot stays taken until that is committed, so no other request
    // starts towards an endpoint that returned 410 Gone.
    if decision != Decision::Gone {
        if let Some(on_sent) = on_sent.take() {
            on_sent(health_signal(&response.outcome, response.duration));
        }
    }
    let next = match decision {
        Decision::Succeeded => NextStep::Succeeded,
        Decision::Gone => NextStep::DisableEndpoint,
        Decision::Retry { not_before } => {
            let endpoint_policy;
            let policy = match &endpoint.retry_schedule_ms {
                Some(schedule) => {
                    endpoint_policy = context.policy.with_schedule_ms(schedule);
                    &endpoint_policy
                }
                None => &context.policy,
            };
            match policy.next_delay(attempts_made, not_before) {
                Some(delay) => NextStep::RetryAt(finished + delay.as_millis() as i64),
                None => NextStep::GaveUp,
            }
        }
    };
    let attempt = Attempt {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id,
        msg_id: delivery.msg_id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        app_id: delivery.app_id.clone(),
        url: endpoint.url.clone(),
        status: if decision == Decision::Succeeded {
            DeliveryStatus::Success
        } else {
            DeliveryStatus::Fail
        },
        response_status: response.status,
        response: response.body,
        response_truncated: response.truncated,
        duration_ms: response.duration.as_millis() as i64,
        error_kind: response.error_kind.map(str::to_owned),
        trigger: delivery.trigger,
        created_at: now,
    };

    match next {
        NextStep::Succeeded => {
            tracing::debug!(msg_id = %delivery.msg_id, endpoint_id = %delivery.endpoint_id, attempt = attempts_made, "delivered");
        }
        NextStep::RetryAt(at) => {
            if let Some(suppressed) = RETRY_LOG_BUDGET.allow((finished / 1000) as u64) {
                tracing::warn!(
                    msg_id = %delivery.msg_id,
                    endpoint_id = %delivery.endpoint_id,
                    attempt = attempts_made,
                    status = response.status,
                    error_kind = response.error_kind.unwrap_or(""),
                    retry_in_ms = at - finished,
                    suppressed,
                    "attempt failed; retry scheduled"
                );
            }
        }
        NextStep::GaveUp => {
            if let Some(suppressed) = FAILED_LOG_BUDGET.allow((finished / 1000) as u64) {
                tracing::error!(
                    msg_id = %delivery.msg_id,
                    endpoint_id = %delivery.endpoint_id,
                    attempt = attempts_made,
                    status = response.status,
                    error_kind = response.error_kind.unwrap_or(""),
                    suppressed,
                    "attempt failed and no retries are left; delivery failed"
                );
            }
        }
        NextStep::DisableEndpoint => tracing::error!(
            msg_id = %delivery.msg_id,
            endpoint_id = %delivery.endpoint_id,
            "endpoint answered 410 Gone; endpoint disabled and its pending deliveries canceled"
        ),
    }

    let outcome = match next {
        NextStep::Succeeded => "success",
        NextStep::RetryAt(_) => "retry",
        NextStep::GaveUp => "failed",
        NextStep::DisableEndpoint => "gone",
    };
    metrics::counter!(metric::DELIVERY_OUTCOMES, "outcome" => outcome).increment(1);

    let recorded = context.recorder.record(attempt, next, finished).await;
    if recorded.is_err() {
        metrics::counter!(metric::STORE_ERRORS, "operation" => "record_attempt").increment(1);
    }
    recorded.map(Attempted::Done)
}
