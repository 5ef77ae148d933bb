//! The mapping from a stream record to a message: where its application,
//! event type, event id and payload come from.

use serde::Deserialize;
use serde_json::Value;

use crate::api::validate;

/// The place in a record that one field of a message is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Field {
    /// A JSON pointer into the record's value, such as `/app_id`.
    Pointer(String),
    /// A record header, by name.
    Header(String),
    /// The Kafka record key.
    Key,
    /// The whole NATS subject.
    Subject,
    /// One dot-separated token of the NATS subject, counted from 0.
    SubjectToken(usize),
    /// The NATS subject from this token on, joined by dots: with 2,
    /// `events.app_1.user.created` gives `user.created`.
    SubjectTail(usize),
    /// The same value for every record.
    Fixed(String),
}

impl Field {
    fn describe(&self) -> String {
        match self {
            Self::Pointer(pointer) => format!("JSON pointer {pointer}"),
            Self::Header(name) => format!("header {name}"),
            Self::Key => "record key".to_owned(),
            Self::Subject => "subject".to_owned(),
            Self::SubjectToken(index) => format!("subject token {index}"),
            Self::SubjectTail(index) => format!("subject from token {index}"),
            Self::Fixed(_) => "fixed value".to_owned(),
        }
    }
}

/// The mapping of one source, as written under `[sources.*.mapping]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The application, by id (`app_…`) or uid.
    pub application: Field,
    pub event_type: Field,
    /// Event types accepted; others are dead-lettered. Empty accepts all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// The idempotency key; when absent, the record's place in its stream.
    pub event_id: Option<Field>,
    /// A JSON pointer to the payload; when absent, the whole value.
    pub payload: Option<String>,
}

/// The kinds of stream the mapping is used with; each allows other fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Kafka,
    Nats,
}

impl Mapping {
    /// Checks the mapping once at start, naming the offending key under
    /// `prefix` (such as `sources.kafka[0].mapping`).
    pub fn validate(&self, prefix: &str, kind: StreamKind) -> Result<(), String> {
        let fields = [
            ("application", Some(&self.application)),
            ("event_type", Some(&self.event_type)),
            ("event_id", self.event_id.as_ref()),
        ];
        for (name, field) in fields {
            let Some(field) = field else { continue };
            match (field, kind) {
                (Field::Pointer(pointer), _) if !is_pointer(pointer) => {
                    return Err(format!(
                        "{prefix}.{name}: JSON pointer {pointer:?} must be empty or start with '/', such as \"/app_id\""
                    ));
                }
                (Field::Key, StreamKind::Nats) => {
                    return Err(format!(
                        "{prefix}.{name}: NATS messages have no key; use \"subject\", {{ subject_token = 1 }}, a pointer or a header"
                    ));
                }
                (
                    Field::Subject | Field::SubjectToken(_) | Field::SubjectTail(_),
                    StreamKind::Kafka,
                ) => {
                    return Err(format!(
                        "{prefix}.{name}: Kafka records have no subject; use \"key\", a pointer or a header"
                    ));
                }
                (Field::Fixed(value), _) if value.is_empty() => {
                    return Err(format!(
                        "{prefix}.{name}: the fixed value must not be empty"
                    ));
                }
                _ => {}
            }
        }
        if let Some(pointer) = &self.payload {
            if !is_pointer(pointer) {
                return Err(format!(
                    "{prefix}.payload: JSON pointer {pointer:?} must be empty or start with '/', such as \"/data\""
                ));
            }
        }
        for name in &self.event_types {
            if validate::event_type_name("event_types", name).is_err() {
                return Err(format!(
                    "{prefix}.event_types: {name:?} is not an event type name; use letters, digits, '-', '_' and '.', such as \"user.created\""
                ));
            }
        }
        Ok(())
    }
}

fn is_pointer(text: &str) -> bool {
    text.is_empty() || text.starts_with('/')
}

/// A record as read from its stream, borrowed from the client's buffers.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub value: &'a [u8],
    pub key: Option<&'a [u8]>,
    /// Looks up a header by name.
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// The NATS subject; `None` for Kafka.
    pub subject: Option<&'a str>,
    /// The record's place in its stream, unique within the source.
    pub origin: &'a str,
}

/// The message fields read from a record, before the store checks that the
/// application and event type exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub application: String,
    pub event_type: String,
    pub event_id: String,
    /// The payload's JSON text, a JSON object.
    pub payload: String,
}

/// The reason a record cannot become a message. `kind` is one of a fixed set of
/// metric label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// Rejection kinds; the store adds `unknown_application` and `unknown_event_type`.
pub mod reason {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const EVENT_TYPE_NOT_ALLOWED: &str = "event_type_not_allowed";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNKNOWN_APPLICATION: &str = "unknown_application";
    pub const UNKNOWN_EVENT_TYPE: &str = "unknown_event_type";
}

/// Applies `mapping` to `record`. `fallback_id` gives the event id when the
/// mapping has none: the record's place in its stream, so a record read
/// twice maps to the same id.
pub fn map_record(
    mapping: &Mapping,
    record: &Record<'_>,
    max_payload_bytes: usize,
) -> Result<Mapped, Rejection> {
    let text = std::str::from_utf8(record.value).map_err(|err| {
        Rejection::new(
            reason::INVALID_JSON,
            format!("the value is not UTF-8: {err}"),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|err| {
        Rejection::new(
            reason::INVALID_JSON,
            format!("the value is not valid JSON: {err}"),
        )
    })?;

    let application = read_field(&mapping.application, record, &value, "application")?;
    let event_type = read_field(&mapping.event_type, record, &value, "event type")?;
    if validate::event_type_name("eventType", &event_type).is_err() {
        return Err(Rejection::new(
            reason::INVALID_FIELD,
            format!("event type {event_type:?} is not an event type name"),
        ));
    }
    if !mapping.event_types.is_empty() && !mapping.event_types.contains(&event_type) {
        return Err(Rejection::new(
            reason::EVENT_TYPE_NOT_ALLOWED,
            format!("event type {event_type:?} is not in the source's event_types list"),
        ));
    }
    let event_id = match &mapping.event_id {
        Some(field) => read_field(field, record, &value, "event id")?,
        None => fallback_event_id(record.origin),
    };
    if validate::uid("eventId", &event_id).is_err() {
        return Err(Rejection::new(
            reason::INVALID_FIELD,
            format!("event id {event_id:?} must be 1 to 256 characters from a-z, A-Z, 0-9, '-', '_' and '.'"),
        ));
    }

    let payload = match &mapping.payload {
        None => text.trim().to_owned(),
        Some(pointer) => match value.pointer(pointer) {
            Some(found) => found.to_string(),
            None => {
                return Err(Rejection::new(
                    reason::MISSING_FIELD,
                    format!("the payload at JSON pointer {pointer} is missing"),
                ))
            }
        },
    };
    if !payload.starts_with('{') {
        return Err(Rejection::new(
            reason::INVALID_FIELD,
            "the payload must be a JSON object",
        ));
    }
    if payload.len() > max_payload_bytes {
        return Err(Rejection::new(
            reason::PAYLOAD_TOO_LARGE,
            format!(
                "the payload has {} bytes; max_payload_bytes allows {max_payload_bytes}",
                payload.len()
            ),
        ));
    }

    Ok(Mapped {
        application,
        event_type,
        event_id,
        payload,
    })
}

/// Turns a record's place such as `events/0/1742` into an event id made of
/// the characters event ids allow.
fn fallback_event_id(origin: &str) -> String {
    origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn read_field(
    field: &Field,
    record: &Record<'_>,
    value: &Value,
    what: &str,
) -> Result<String, Rejection> {
    let missing = || {
        Rejection::new(
            reason::MISSING_FIELD,
            format!("the {what} ({}) is missing", field.describe()),
        )
    };
    let text = |bytes: &[u8]| -> Result<String, Rejection> {
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
            Rejection::new(
                reason::INVALID_FIELD,
                format!("the {what} ({}) is not UTF-8", field.describe()),
            )
        })
    };
    let found = match field {
        Field::Pointer(pointer) => match value.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(Rejection::new(
                    reason::INVALID_FIELD,
                    format!("the {what} at JSON pointer {pointer} must be a string or a number"),
                ))
            }
            None => return Err(missing()),
        },
        Field::Header(name) => text((record.header)(name).ok_or_else(missing)?)?,
        Field::Key => text(record.key.ok_or_else(missing)?)?,
        Field::Subject => record.subject.ok_or_else(missing)?.to_owned(),
        Field::SubjectToken(index) => record
            .subject
            .and_then(|s| s.split('.').nth(*index))
            .ok_or_else(missing)?
            .to_owned(),
        Field::SubjectTail(index) => {
            let tokens: Vec<&str> = record.subject.ok_or_else(missing)?.split('.').collect();
            if *index >= tokens.len() {
                return Err(missing());
            }
            tokens[*index..].join(".")
        }
        Field::Fixed(fixed) => fixed.clone(),
    };
    if found.is_empty() {
        return Err(missing());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(toml_text: &str) -> Mapping {
        toml::from_str(toml_text).expect("test mapping parses")
    }

    /// Maps a record that has only a value.
    fn map_value(m: &Mapping, value: &str, origin: &str, max: usize) -> Result<Mapped, Rejection> {
        let no_headers = |_: &str| None;
        let record = Record {
            value: value.as_bytes(),
            key: None,
            header: &no_headers,
            subject: None,
            origin,
        };
        map_record(m, &record, max)
    }

    const POINTERS: &str = r#"
        application = { pointer = "/app_id" }
        event_type = { pointer = "/type" }
        event_id = { pointer = "/id" }
    "#;

    #[test]
    fn pointers_read_the_value_and_the_whole_value_is_the_payload() {
        let value =
            r#"{"user_id": 10129, "id": "evt-1", "type": "sleep.updated", "app_id": "acme"}"#;
        let mapped = map_value(&mapping(POINTERS), value, "events/0/5", 1024).unwrap();
        assert_eq!(
            mapped,
            Mapped {
                application: "acme".into(),
                event_type: "sleep.updated".into(),
                event_id: "evt-1".into(),
                payload: value.into(),
            }
        );
    }

    #[test]
    fn numbers_become_strings_and_the_place_is_the_default_event_id() {
        let m = mapping(
            r#"
            application = { pointer = "/tenant/id" }
            event_type = { fixed = "user.updated" }
            payload = "/data"
        "#,
        );
        let value = r#"{"tenant": {"id": 42}, "data": {"a": [1, 2]}}"#;
        let mapped = map_value(&m, value, "events/3/17", 1024).unwrap();
        assert_eq!(mapped.application, "42");
        assert_eq!(mapped.event_type, "user.updated");
        assert_eq!(mapped.event_id, "events-3-17");
        assert_eq!(mapped.payload, r#"{"a":[1,2]}"#);
    }

    #[test]
    fn headers_key_and_subject_tokens() {
        let headers = |name: &str| (name == "app").then_some(b"app-from-header".as_slice());
        let kafka = mapping(
            r#"
            application = { header = "app" }
            event_type = { pointer = "/type" }
            event_id = "key"
        "#,
        );
        let rec = Record {
            value: br#"{"type": "a.b"}"#,
            key: Some(b"k-1"),
            header: &headers,
            subject: None,
            origin: "t/0/0",
        };
        let mapped = map_record(&kafka, &rec, 1024).unwrap();
        assert_eq!(
            (mapped.application.as_str(), mapped.event_id.as_str()),
            ("app-from-header", "k-1")
        );

        let nats = mapping(
            r#"
            application = { subject_token = 1 }
            event_type = { subject_tail = 2 }
        "#,
        );
        let no_headers = |_: &str| None;
        let rec = Record {
            value: b"{}",
            key: None,
            header: &no_headers,
            subject: Some("events.app_7.user.created"),
            origin: "EVENTS/9",
        };
        let mapped = map_record(&nats, &rec, 1024).unwrap();
        assert_eq!(mapped.application, "app_7");
        assert_eq!(mapped.event_type, "user.created");
        assert_eq!(mapped.event_id, "EVENTS-9");
    }

    #[test]
    fn bad_records_are_rejected_with_a_kind_and_reason() {
        let m = mapping(POINTERS);
        let cases = [
            (
                "not json",
                reason::INVALID_JSON,
                "the value is not valid JSON",
            ),
            (
                r#"{"type": "a.b", "id": "1"}"#,
                reason::MISSING_FIELD,
                "the application (JSON pointer /app_id) is missing",
            ),
            (
                r#"{"app_id": ["x"], "type": "a.b", "id": "1"}"#,
                reason::INVALID_FIELD,
                "the application at JSON pointer /app_id must be a string or a number",
            ),
            (
                r#"{"app_id": "a", "type": "no spaces", "id": "1"}"#,
                reason::INVALID_FIELD,
                "event type \"no spaces\" is not an event type name",
            ),
            (
                r#"{"app_id": "a", "type": "a.b", "id": "1/2"}"#,
                reason::INVALID_FIELD,
                "event id \"1/2\" must be",
            ),
            (r#"[1]"#, reason::MISSING_FIELD, "the application"),
        ];
        for (value, kind, reason) in cases {
            let rejection = map_value(&m, value, "t/0/0", 1024).unwrap_err();
            assert_eq!(rejection.kind, kind, "{value}");
            assert!(
                rejection.reason.starts_with(reason),
                "{value}: {}",
                rejection.reason
            );
        }
    }

    #[test]
    fn allow_list_payload_shape_and_size() {
        let mut m = mapping(POINTERS);
        m.event_types = vec!["a.b".into()];
        let other = r#"{"app_id": "a", "type": "c.d", "id": "1"}"#;
        assert_eq!(
            map_value(&m, other, "t/0/0", 1024).unwrap_err().kind,
            reason::EVENT_TYPE_NOT_ALLOWED
        );
        let allowed = r#"{"app_id": "a", "type": "a.b", "id": "1"}"#;
        assert!(map_value(&m, allowed, "t/0/0", 1024).is_ok());
        assert_eq!(
            map_value(&m, allowed, "t/0/0", allowed.len() - 1)
                .unwrap_err()
                .kind,
            reason::PAYLOAD_TOO_LARGE
        );
        m.payload = Some("/id".into());
        assert_eq!(
            map_value(&m, allowed, "t/0/0", 1024).unwrap_err().reason,
            "the payload must be a JSON object"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let bad_pointer = mapping(
            r#"
            application = { pointer = "app_id" }
            event_type = { pointer = "/type" }
        "#,
        );
        let err = bad_pointer
            .validate("sources.kafka[0].mapping", StreamKind::Kafka)
            .unwrap_err();
        assert!(
            err.starts_with("sources.kafka[0].mapping.application: JSON pointer \"app_id\""),
            "{err}"
        );

        let subject_on_kafka = mapping(
            r#"
            application = "subject"
            event_type = { pointer = "/type" }
        "#,
        );
        let err = subject_on_kafka
            .validate("m", StreamKind::Kafka)
            .unwrap_err();
        assert!(
            err.starts_with("m.application: Kafka records have no subject"),
            "{err}"
        );
        assert!(subject_on_kafka.validate("m", StreamKind::Nats).is_ok());

        let key_on_nats = mapping(
            r#"
            application = { fixed = "app" }
            event_type = { pointer = "/type" }
            event_id = "key"
        "#,
        );
        let err = key_on_nats.validate("m", StreamKind::Nats).unwrap_err();
        assert!(
            err.starts_with("m.event_id: NATS messages have no key"),
            "{err}"
        );
    }
}
