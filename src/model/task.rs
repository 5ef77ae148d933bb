//! Background tasks that send stored messages to an endpoint again: recover,
//! replay-missing and bulk replay. Kind and status names are those of the
//! Svix API's `BackgroundTaskOut`.

use super::{DeliveryStatus, Millis};

/// The kind of a task, which decides what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Messages that were attempted at the endpoint and never delivered.
    Recover,
    /// Messages the endpoint's filters accept that were never attempted there.
    ReplayMissing,
    /// Messages sent to the endpoint before, narrowed by [`TaskFilter`].
    BulkReplay,
}

impl TaskKind {
    /// Returns the name in the API's `task` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Recover => "endpoint.recover",
            Self::ReplayMissing => "endpoint.replay",
            Self::BulkReplay => "endpoint.bulk-replay",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "endpoint.recover" => Self::Recover,
            "endpoint.replay" => Self::ReplayMissing,
            "endpoint.bulk-replay" => Self::BulkReplay,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Running,
    Finished,
    Failed,
}

impl TaskStatus {
    /// Returns the name in the API's `status` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "running" => Self::Running,
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Conditions of a bulk replay on the messages it sends; empty for the other kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFilter {
    /// The message's event type is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// The message has this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The message has this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The shown status code (0 to 4) of the message's newest delivery to
    /// the endpoint, as the attempt listings show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u8>,
    /// The class (0 for no response, 100, 200, … 500) of the response
    /// status of the newest attempt of the message at the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code_class: Option<u16>,
}

impl TaskFilter {
    /// Returns the status filter as a delivery status.
    pub fn delivery_status(&self) -> Option<DeliveryStatus> {
        self.status
            .and_then(|code| DeliveryStatus::from_code(i64::from(code)))
    }
}

/// One recover or replay of one endpoint, with its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// `qtask_` followed by a ULID.
    pub id: String,
    pub kind: TaskKind,
    pub app_id: String,
    pub endpoint_id: String,
    pub filter: TaskFilter,
    /// Messages created in `[since, until)` are considered.
    pub since: Millis,
    /// The request's `until`, or the time the task was created.
    pub until: Millis,
    /// The id of the last message considered; the task resumes after it.
    pub cursor: Option<String>,
    /// Messages in the window considered so far.
    pub messages_scanned: u64,
    /// Deliveries created so far, one per message at most.
    pub messages_sent: u64,
    /// Messages that qualified but were not sent because their payload was expunged.
    pub messages_expunged: u64,
    pub status: TaskStatus,
    /// The reason the task failed, when it did.
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Task {
    /// Builds a running task with a new id and no progress yet.
    pub fn new(
        kind: TaskKind,
        endpoint: &super::Endpoint,
        filter: TaskFilter,
        since: Millis,
        until: Millis,
        now: Millis,
    ) -> Self {
        Self {
            id: super::ids::new_id(super::ids::TASK),
            kind,
            app_id: endpoint.app_id.clone(),
            endpoint_id: endpoint.id.clone(),
            filter,
            since,
            until,
            cursor: None,
            messages_scanned: 0,
            messages_sent: 0,
            messages_expunged: 0,
            status: TaskStatus::Running,
            error: None,
            created_at: now,
            updated_at: now,
        }
    }
}
