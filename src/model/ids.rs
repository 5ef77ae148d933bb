//! Prefixed, time-sortable identifiers in the Svix style (`app_…`, `msg_…`).
//!
//! The part after the prefix is a ULID, so ids sort by creation time and
//! cursor pagination can order by id alone.

use std::sync::Mutex;

use ulid::{Generator, Ulid};

/// One generator for the process, so ids made within the same millisecond
/// still sort in the order they were made (the random part is incremented).
static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

/// Generates a new id such as `msg_01JEXAMPLE…` for the given prefix.
/// Ids generated later in this process sort after earlier ones.
pub fn new_id(prefix: &str) -> String {
    let ulid = {
        GENERATOR
            .lock()
            .expect("the id generator lock is never poisoned")
            .generate()
            // Overflow takes 2^80 ids in one millisecond; fall back to a
            // fresh random id rather than failing.
            .unwrap_or_else(|_| Ulid::new())
    };
    format!("{prefix}_{ulid}")
}

pub const APPLICATION: &str = "app";
pub const ENDPOINT: &str = "ep";
pub const MESSAGE: &str = "msg";
pub const ATTEMPT: &str = "atmpt";
pub const TASK: &str = "qtask";
pub const DEAD_LETTER: &str = "dlr";

/// Returns the smallest id with this prefix whose time part is `ms`, so
/// `id >= first_at(prefix, ms)` selects ids made at or after that millisecond.
pub fn first_at(prefix: &str, ms: i64) -> String {
    format!("{prefix}_{}", Ulid::from_parts(ulid_time(ms), 0))
}

/// Returns the largest id with this prefix whose time part is `ms`, so
/// `id <= last_at(prefix, ms)` selects ids made at or before that millisecond.
pub fn last_at(prefix: &str, ms: i64) -> String {
    format!("{prefix}_{}", Ulid::from_parts(ulid_time(ms), u128::MAX))
}

/// Clamps a time to the 48 bits a ULID holds (until the year 10889), so a
/// time far out of range gives the first or last id rather than a wrapped one.
fn ulid_time(ms: i64) -> u64 {
    ms.clamp(0, (1 << 48) - 1) as u64
}

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
    fn ids_made_in_the_same_millisecond_keep_their_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id(MESSAGE)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn time_bounds_enclose_ids_of_that_millisecond() {
        let id = new_id(MESSAGE);
        let ms = Ulid::from_string(&id[MESSAGE.len() + 1..])
            .expect("a generated id holds a ULID")
            .timestamp_ms() as i64;
        assert!(first_at(MESSAGE, ms) <= id, "{id} before its first bound");
        assert!(id <= last_at(MESSAGE, ms), "{id} after its last bound");
        assert!(
            last_at(MESSAGE, ms - 1) < id,
            "{id} within the previous millisecond"
        );
        assert!(
            id < first_at(MESSAGE, ms + 1),
            "{id} within the next millisecond"
        );
        assert!(id < first_at(MESSAGE, i64::MAX), "{id} after the last time");
        assert!(last_at(MESSAGE, -5) < id, "{id} before the first time");
    }

    #[test]
    fn prefix_check_accepts_generated_ids_only() {
        assert!(has_prefix(&new_id(APPLICATION), APPLICATION));
        assert!(!has_prefix("app_short", APPLICATION));
        assert!(!has_prefix(&new_id(ENDPOINT), APPLICATION));
    }
}
