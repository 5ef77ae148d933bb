//! The records hookd stores and serves. Field names follow the Svix v1 API.
//!
//! Times are milliseconds since the Unix epoch (UTC) everywhere inside hookd;
//! the API formats them as RFC 3339.

pub mod ids;
pub mod secret;
pub mod task;

use std::collections::BTreeMap;

pub use task::{Task, TaskFilter, TaskKind, TaskStatus};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// One tenant's consumer of webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    pub rate_limit: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A named kind of event, such as `invoice.paid`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventType {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub schemas: Option<serde_json::Value>,
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A URL of an application that receives signed deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub app_id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    /// Event types this endpoint receives; `None` means all of them.
    pub event_types: Option<Vec<String>>,
    /// Channels this endpoint listens to; `None` means all messages.
    pub channels: Option<Vec<String>>,
    /// The current signing secret, `whsec_` + base64.
    pub secret: String,
    /// Secrets replaced by a rotation that still sign until their expiry.
    pub previous_secrets: Vec<PreviousSecret>,
    pub metadata: BTreeMap<String, String>,
    /// Custom headers added to every delivery.
    pub headers: BTreeMap<String, String>,
    /// Delays before each retry, overriding the global schedule; `None` uses the global one.
    pub retry_schedule_ms: Option<Vec<u64>>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A secret that a rotation replaced, kept for signing during its grace period.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousSecret {
    pub secret: String,
    pub expires_at: Millis,
}

impl Endpoint {
    /// Returns true when a message of this type and these channels goes to this endpoint.
    pub fn accepts(&self, event_type: &str, message_channels: Option<&[String]>) -> bool {
        if let Some(types) = &self.event_types {
            if !types.iter().any(|t| t == event_type) {
                return false;
            }
        }
        match (&self.channels, message_channels) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine.iter().any(|c| theirs.contains(c)),
        }
    }

    /// Returns the secrets that sign a request sent at `now`: the current one
    /// first, then every rotated-out secret still in its grace period.
    pub fn signing_secrets(&self, now: Millis) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        for previous in &self.previous_secrets {
            if previous.expires_at > now {
                secrets.push(previous.secret.as_str());
            }
        }
        secrets
    }
}

/// One event for one application, with its payload as the exact bytes to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    pub app_id: String,
    pub event_type: String,
    pub event_id: Option<String>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// The JSON payload exactly as the client sent it; `None` once expunged.
    pub payload: Option<String>,
    pub created_at: Millis,
}

/// Status of a delivery, with the numeric codes of the Svix API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Success = 0,
    Pending = 1,
    Fail = 2,
    Sending = 3,
    Canceled = 4,
}

impl DeliveryStatus {
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::Pending,
            2 => Self::Fail,
            3 => Self::Sending,
            4 => Self::Canceled,
            _ => return None,
        })
    }

    /// Returns the status the API shows for a delivery in this status after
    /// `attempts` attempts: pending before its first attempt, sending while
    /// retries remain, then its final status.
    pub fn shown(self, attempts: u32) -> Self {
        if self == Self::Pending && attempts > 0 {
            Self::Sending
        } else {
            self
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Pending => "pending",
            Self::Fail => "fail",
            Self::Sending => "sending",
            Self::Canceled => "canceled",
        }
    }
}

/// The origin of an attempt: the automatic schedule, or an operator's resend,
/// recover or replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled = 0,
    Manual = 1,
}

impl Trigger {
    pub fn from_code(code: i64) -> Self {
        if code == 1 {
            Self::Manual
        } else {
            Self::Scheduled
        }
    }
}

/// The task "send message M to endpoint E", with its retry state.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub msg_id: String,
    pub endpoint_id: String,
    pub app_id: String,
    pub trigger: Trigger,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; `None` once the delivery is finished.
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
}

/// One HTTP request made for a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub delivery_id: i64,
    pub msg_id: String,
    pub endpoint_id: String,
    pub app_id: String,
    pub url: String,
    /// `Success` or `Fail`.
    pub status: DeliveryStatus,
    /// The HTTP status code, or 0 when no response arrived.
    pub response_status: u16,
    /// A prefix of the response body, at most the configured number of bytes.
    pub response: String,
    pub response_truncated: bool,
    pub duration_ms: i64,
    /// The reason no usable response arrived (`timeout`, `connect`, `blocked`, …).
    pub error_kind: Option<String>,
    pub trigger: Trigger,
    pub created_at: Millis,
}
