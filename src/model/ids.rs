//! Prefixed, time-sortable identifiers in the Svix style (`app_…`, `msg_…`).
//!
//! The part after the prefix is a ULID, so ids sort by creation time and
//! cursor pagination can order by id alone.

use ulid::Ulid;

/// Generates a new id such as `msg_01JEXAMPLE…` for the given prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Ulid::new())
}

pub const APPLICATION: &str = "app";
pub const ENDPOINT: &str = "ep";
pub const MESSAGE: &str = "msg";
pub const ATTEMPT: &str = "atmpt";
pub const TASK: &str = "qtask";

/// Returns true when `value` looks like an id with the given prefix, so that a
/// path segment can be distinguished from a caller-chosen uid.
pub fn has_prefix(value: &str, prefix: &str) -> bool {
    value.len() == prefix.len() + 27
        && value.starts_with(prefix)
        && value.as_bytes()[prefix.len()] == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time() {
        let first = new_id(MESSAGE);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id(MESSAGE);
        assert!(first < second, "{first} should sort before {second}");
    }

    #[test]
    fn prefix_check_accepts_generated_ids_only() {
        assert!(has_prefix(&new_id(APPLICATION), APPLICATION));
        assert!(!has_prefix("app_short", APPLICATION));
        assert!(!has_prefix(&new_id(ENDPOINT), APPLICATION));
    }
}
