//! Endpoints and messages kept in memory for the attempts that read them,
//! and applications for the API calls that name them.
//!
//! Every attempt needs its delivery, its message and its endpoint. The
//! delivery row changes with each attempt, but a message changes only when
//! its payload is expunged, and an endpoint only when it is edited, disabled
//! or deleted. Fan-out reads each message once per endpoint and each endpoint
//! once per message, so keeping both in memory leaves one read per attempt.
//! Every message sent through the API looks up its application, which
//! changes even less often.
//!
//! A message is kept from its commit until each delivery it was created
//! with has read it once, so the messages kept are those whose first attempts
//! are still to come. When the budget is full, the message kept longest goes
//! first: it is the one whose attempts are stuck behind a slow or closed
//! endpoint, or, when all deliveries lag, the one due next, which costs one
//! read from the store.
//!
//! The deliveries that a new message creates are kept too, until their first
//! read. Each changes only through its own attempts or when its endpoint or
//! message changes, and such a change empties the cache, so the first read
//! finds the row as it was written.
//!
//! SQLite only: there the store's writer thread makes every change. An update
//! hook on its connection notes each row it updates or deletes in those
//! tables, and after the commit, before any caller hears of it, the writer
//! empties the cache. On PostgreSQL other nodes change rows too, so attempts
//! read all three rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LinkedHashMap;
use rusqlite::hooks::Action;

use crate::model::{Application, Delivery, Endpoint, Message};

/// Maximum endpoints and applications kept. A full map is emptied and
/// starts over.
const MAX_ENTRIES: usize = 1024;

/// Maximum messages kept: about one second of attempts at 15,000 a second.
const MAX_MESSAGES: usize = 16 * 1024;

/// Maximum new deliveries kept, at about 250 bytes each.
const MAX_NEW_DELIVERIES: usize = 16 * 1024;

/// Maximum payload bytes of all messages kept.
const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Messages with a larger payload are never kept, so one large message does
/// not empty the map.
const MAX_KEPT_PAYLOAD: usize = 64 << 10;

pub struct SendCache {
    state: Mutex<State>,
    /// Set by the writer's update hook when a statement changed an endpoint
    /// or a message, so that the writer empties the cache after the commit.
    changed: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    generation: u64,
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// In the order they were kept.
    messages: LinkedHashMap<String, KeptMessage>,
    /// By the id or uid the caller looked the application up with.
    applications: HashMap<String, Arc<Application>>,
    /// Deliveries made by a new message and not read yet, oldest first.
    new_deliveries: LinkedHashMap<i64, Delivery>,
    payload_bytes: usize,
}

struct KeptMessage {
    message: Arc<Message>,
    /// Lookups left before the entry leaves: the message's first attempts.
    /// `None` for a message read back from the store, which stays until the
    /// budget pushes it out.
    reads_left: Option<usize>,
}

impl KeptMessage {
    fn payload_bytes(&self) -> usize {
        payload_bytes(&self.message)
    }
}

fn payload_bytes(message: &Message) -> usize {
    message.payload.as_ref().map_or(0, String::len)
}

/// The result of `SendCache::lookup`.
pub struct Lookup {
    pub seen: Generation,
    pub message: Option<Arc<Message>>,
    pub endpoint: Option<Arc<Endpoint>>,
}

/// The cache's generation, read before a row is read from the store. The
/// row is kept only if no change was committed in between, so a row read
/// from a snapshot older than a change never outlives that change.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl SendCache {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("send cache lock is never poisoned")
    }

    /// Registers the update hook on `conn`, the writer's connection.
    pub fn watch(&self, conn: &rusqlite::Connection) {
        let changed = self.changed.clone();
        conn.update_hook(Some(
            move |action: Action, _database: &str, table: &str, _rowid: i64| {
                // Inserts make new rows, which no reader has kept yet. A
                // delivery changes by its own attempts after its first read,
                // so only its deletion concerns the deliveries kept.
                let kept_table = matches!(table, "endpoints" | "messages" | "applications");
                let deleted_delivery = action == Action::SQLITE_DELETE && table == "deliveries";
                if (action != Action::SQLITE_INSERT && kept_table) || deleted_delivery {
                    changed.store(true, Ordering::Release);
                }
            },
        ));
    }

    /// Empties the cache if the transaction just committed or rolled back
    /// changed an endpoint or a message. The writer calls it after each one.
    pub fn after_commit(&self) {
        if self.changed.swap(false, Ordering::AcqRel) {
            let mut state = self.state();
            state.generation += 1;
            state.endpoints.clear();
            state.messages.clear();
            state.applications.clear();
            state.new_deliveries.clear();
            state.payload_bytes = 0;
        }
    }

    pub fn generation(&self) -> Generation {
        Generation(self.state().generation)
    }

    /// Returns the kept message and endpoint, if any, with the generation to
    /// pass to `keep_message` and `keep_endpoint` for rows read after this
    /// call. Each call counts as one of the message's reads.
    pub fn lookup(&self, msg_id: &str, endpoint_id: &str) -> Lookup {
        let mut state = self.state();
        let mut last_read = false;
        let message = state.messages.get_mut(msg_id).map(|kept| {
            if let Some(left) = &mut kept.reads_left {
                *left = left.saturating_sub(1);
                last_read = *left == 0;
            }
            kept.message.clone()
        });
        if last_read {
            state.remove_message(msg_id);
        }
        Lookup {
            seen: Generation(state.generation),
            message,
            endpoint: state.endpoints.get(endpoint_id).cloned(),
        }
    }

    /// Removes and returns the delivery kept by `keep_new_deliveries`, if any.
    pub fn take_new_delivery(&self, id: i64) -> Option<Delivery> {
        self.state().new_deliveries.remove(&id)
    }

    /// Keeps deliveries that a commit after `seen` created, unless a change
    /// came in between. Makes room by dropping the deliveries kept longest.
    pub fn keep_new_deliveries(&self, seen: Generation, deliveries: Vec<Delivery>) {
        let mut state = self.state();
        if state.generation != seen.0 {
            return;
        }
        for delivery in deliveries {
            if state.new_deliveries.len() >= MAX_NEW_DELIVERIES {
                state.new_deliveries.pop_front();
            }
            state.new_deliveries.insert(delivery.id, delivery);
        }
    }

    /// Returns the application kept for `id_or_uid`, with the generation to
    /// pass to `keep_application` when it has to be read.
    pub fn application(&self, id_or_uid: &str) -> (Generation, Option<Arc<Application>>) {
        let state = self.state();
        (
            Generation(state.generation),
            state.applications.get(id_or_uid).cloned(),
        )
    }

    /// Keeps the application found for `id_or_uid` after `seen`, unless a
    /// change came in between. A new application cannot change what an
    /// earlier lookup found: ids are generated and uids are unique.
    pub fn keep_application(&self, seen: Generation, id_or_uid: &str, app: Arc<Application>) {
        let mut state = self.state();
        if state.generation != seen.0 {
            return;
        }
        if state.applications.len() >= MAX_ENTRIES {
            state.applications.clear();
        }
        state.applications.insert(id_or_uid.to_owned(), app);
    }

    /// Keeps an endpoint read after `seen`, unless a change came in between.
    pub fn keep_endpoint(&self, seen: Generation, endpoint: Arc<Endpoint>) {
        let mut state = self.state();
        if state.generation != seen.0 {
            return;
        }
        if state.endpoints.len() >= MAX_ENTRIES {
            state.endpoints.clear();
        }
        state.endpoints.insert(endpoint.id.clone(), endpoint);
    }

    /// Keeps a message read or written after `seen`, unless a change came in
    /// between, for `reads` lookups, or until the budget pushes it out when
    /// `reads` is `None`. Makes room by dropping the messages kept longest.
    pub fn keep_message(&self, seen: Generation, message: Arc<Message>, reads: Option<usize>) {
        let size = payload_bytes(&message);
        if size > MAX_KEPT_PAYLOAD || reads == Some(0) {
            return;
        }
        let mut state = self.state();
        if state.generation != seen.0 {
            return;
        }
        state.remove_message(&message.id);
        while state.messages.len() >= MAX_MESSAGES || state.payload_bytes + size > MAX_PAYLOAD_BYTES
        {
            let Some((_, oldest)) = state.messages.pop_front() else {
                break;
            };
            state.payload_bytes -= oldest.payload_bytes();
        }
        state.payload_bytes += size;
        let kept = KeptMessage {
            message,
            reads_left: reads,
        };
        state.messages.insert(kept.message.id.clone(), kept);
    }
}

impl State {
    fn remove_message(&mut self, msg_id: &str) {
        if let Some(kept) = self.messages.remove(msg_id) {
            self.payload_bytes -= kept.payload_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trigger;

    fn message(id: &str, payload_len: usize) -> Arc<Message> {
        Arc::new(Message {
            id: id.to_owned(),
            app_id: "app_1".to_owned(),
            event_type: "t".to_owned(),
            event_id: None,
            channels: None,
            tags: None,
            payload: Some("x".repeat(payload_len)),
            created_at: 0,
        })
    }

    #[test]
    fn rows_read_before_a_change_are_not_kept() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, payload TEXT);
             CREATE TABLE deliveries (id INTEGER PRIMARY KEY, state INTEGER);
             INSERT INTO messages VALUES ('msg_1', 'a');
             INSERT INTO deliveries VALUES (1, 0);",
        )
        .unwrap();
        let cache = SendCache::new();
        cache.watch(&conn);

        // Inserts, and changes to other tables, keep what is cached.
        let seen = cache.generation();
        conn.execute_batch(
            "INSERT INTO messages VALUES ('msg_2', 'b'); UPDATE deliveries SET state = 1",
        )
        .unwrap();
        cache.after_commit();
        cache.keep_message(seen, message("msg_1", 1), None);
        assert!(cache.lookup("msg_1", "").message.is_some());

        // A change to a message empties the cache, and a row read from a
        // snapshot before that change is not kept afterwards.
        let seen = cache.generation();
        conn.execute("UPDATE messages SET payload = NULL WHERE id = 'msg_2'", [])
            .unwrap();
        cache.after_commit();
        assert!(cache.lookup("msg_1", "").message.is_none());
        cache.keep_message(seen, message("msg_2", 1), None);
        assert!(cache.lookup("msg_2", "").message.is_none());
    }

    fn kept_ids(cache: &SendCache) -> Vec<String> {
        cache.state().messages.keys().cloned().collect()
    }

    #[test]
    fn message_leaves_after_its_reads() {
        let cache = SendCache::new();
        let seen = cache.generation();
        cache.keep_message(seen, message("msg_fanout", 10), Some(3));
        cache.keep_message(seen, message("msg_read_back", 10), None);
        cache.keep_message(seen, message("msg_none", 10), Some(0));
        assert_eq!(kept_ids(&cache), ["msg_fanout", "msg_read_back"]);
        assert_eq!(cache.state().payload_bytes, 20);

        for read in 1..=3 {
            let found = cache.lookup("msg_fanout", "").message;
            assert_eq!(
                found.map(|m| m.id.clone()).as_deref(),
                Some("msg_fanout"),
                "read {read}"
            );
        }
        assert!(cache.lookup("msg_fanout", "").message.is_none());
        assert_eq!(kept_ids(&cache), ["msg_read_back"]);
        assert_eq!(cache.state().payload_bytes, 10);

        // A message read back from the store stays for any number of reads.
        for _ in 0..5 {
            assert!(cache.lookup("msg_read_back", "").message.is_some());
        }
    }

    fn delivery(id: i64) -> Delivery {
        crate::store::deliveries::new_pending(id, "msg_1", "ep_1", "app_1", Trigger::Scheduled, 5)
    }

    #[test]
    fn new_delivery_is_taken_once() {
        let cache = SendCache::new();
        let seen = cache.generation();
        cache.keep_new_deliveries(seen, vec![delivery(1), delivery(2)]);
        assert_eq!(cache.take_new_delivery(1), Some(delivery(1)));
        assert_eq!(cache.take_new_delivery(1), None);
        assert_eq!(cache.take_new_delivery(2), Some(delivery(2)));
    }

    #[test]
    fn new_deliveries_follow_changes_and_budget() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE endpoints (id TEXT PRIMARY KEY, url TEXT)")
            .unwrap();
        let cache = SendCache::new();
        cache.watch(&conn);

        // Deliveries created before a change to an endpoint are not kept
        // after it, and those kept are dropped by it.
        let seen = cache.generation();
        cache.keep_new_deliveries(seen, vec![delivery(1)]);
        conn.execute_batch(
            "INSERT INTO endpoints VALUES ('ep_1', 'a'); UPDATE endpoints SET url = 'b'",
        )
        .unwrap();
        cache.after_commit();
        cache.keep_new_deliveries(seen, vec![delivery(2)]);
        assert_eq!(cache.take_new_delivery(1), None);
        assert_eq!(cache.take_new_delivery(2), None);

        // Updating a delivery leaves the cache as it is, deleting one empties it.
        conn.execute_batch(
            "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, status INTEGER);
             INSERT INTO deliveries VALUES (3, 1)",
        )
        .unwrap();
        let seen = cache.generation();
        cache.keep_new_deliveries(seen, vec![delivery(4), delivery(5)]);
        conn.execute("UPDATE deliveries SET status = 0", [])
            .unwrap();
        cache.after_commit();
        assert_eq!(cache.take_new_delivery(4), Some(delivery(4)));
        conn.execute("DELETE FROM deliveries WHERE id = 3", [])
            .unwrap();
        cache.after_commit();
        assert_eq!(cache.take_new_delivery(5), None);

        // A full cache drops the deliveries kept longest.
        let seen = cache.generation();
        let count = MAX_NEW_DELIVERIES as i64;
        cache.keep_new_deliveries(seen, (0..count + 2).map(delivery).collect());
        assert_eq!(cache.state().new_deliveries.len(), MAX_NEW_DELIVERIES);
        assert_eq!(cache.take_new_delivery(1), None);
        assert_eq!(cache.take_new_delivery(2), Some(delivery(2)));
        assert_eq!(
            cache.take_new_delivery(count + 1),
            Some(delivery(count + 1))
        );
    }

    #[test]
    fn budget_drops_oldest_messages() {
        let cache = SendCache::new();
        let seen = cache.generation();
        cache.keep_message(seen, message("msg_large", MAX_KEPT_PAYLOAD + 1), Some(1));
        assert!(kept_ids(&cache).is_empty(), "too large to keep");

        let size = MAX_KEPT_PAYLOAD;
        let fit = MAX_PAYLOAD_BYTES / size;
        for i in 0..fit {
            cache.keep_message(seen, message(&format!("msg_{i}"), size), Some(1));
        }
        assert_eq!(cache.state().payload_bytes, fit * size);
        // Two more push out the two oldest, and the rest stay in order.
        cache.keep_message(seen, message("msg_next", size), Some(1));
        cache.keep_message(seen, message("msg_last", size), Some(1));
        let ids = kept_ids(&cache);
        assert_eq!(ids.len(), fit);
        assert_eq!(ids[0], "msg_2");
        assert_eq!(ids[fit - 2..], ["msg_next", "msg_last"]);
        assert_eq!(cache.state().payload_bytes, fit * size);

        // The count of messages is bounded too, whatever their size.
        for i in 0..MAX_MESSAGES + 5 {
            cache.keep_message(seen, message(&format!("msg_small_{i}"), 1), None);
        }
        let ids = kept_ids(&cache);
        assert_eq!(ids.len(), MAX_MESSAGES);
        assert_eq!(ids[0], "msg_small_5");
        assert_eq!(cache.state().payload_bytes, MAX_MESSAGES);
    }
}
