//! Conformance tests of two stores writing to one database at once, as two
//! processes on one SQLite file or two nodes on one PostgreSQL database do.

use std::collections::BTreeSet;

use super::*;

/// Messages each store writes at once.
const MESSAGES_PER_STORE: i64 = 200;
/// Event ids both stores send, one after the other.
const SHARED_EVENT_IDS: usize = 50;

/// Sends `MESSAGES_PER_STORE` messages through `store` from as many tasks
/// at once and returns what each write returned.
async fn send_at_once(store: Store, offset: i64) -> Vec<messages::Created> {
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..MESSAGES_PER_STORE {
        let store = store.clone();
        writes.spawn(async move {
            store
                .write(move |conn| messages::create(conn, message("app_1", "a", None, offset + n)))
                .await
        });
    }
    let mut created = Vec::new();
    while let Some(joined) = writes.join_next().await {
        created.push(joined.unwrap().expect("every concurrent write succeeds"));
    }
    created
}

/// Sends one message per shared event id, in order, and returns the
/// message id and `is_new` of each.
async fn send_event_ids(store: Store, created_at: i64) -> Vec<(String, bool)> {
    let mut results = Vec::new();
    for n in 0..SHARED_EVENT_IDS {
        let event_id = format!("order-{n}");
        let created = store
            .write(move |conn| {
                messages::create(conn, message("app_1", "a", Some(&event_id), created_at))
            })
            .await
            .unwrap_or_else(|err| panic!("message with event id order-{n}: {err}"));
        results.push((created.message.id, created.is_new));
    }
    results
}

pub(super) async fn two_stores_write_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let first = db.open(None).unwrap();
    let endpoints = vec![endpoint("app_1", None), endpoint("app_1", None)];
    let saved = endpoints.clone();
    insert_all(&first, saved, |conn, endpoint| {
        endpoints::save(conn, endpoint, false)
    })
    .await;
    let second = db.open(None).unwrap();

    let (first_sent, second_sent, first_events, second_events) = tokio::join!(
        send_at_once(first.clone(), 0),
        send_at_once(second.clone(), 1_000),
        send_event_ids(first.clone(), 1),
        send_event_ids(second.clone(), 2),
    );

    // Every message has one delivery per endpoint, each with its own id.
    let mut delivery_ids = BTreeSet::new();
    let mut message_ids = BTreeSet::new();
    for created in first_sent.iter().chain(&second_sent) {
        assert!(created.is_new);
        message_ids.insert(created.message.id.clone());
        let targets: Vec<&str> = created
            .deliveries
            .iter()
            .map(|d| d.endpoint_id.as_str())
            .collect();
        assert_eq!(
            targets,
            [endpoints[0].id.as_str(), endpoints[1].id.as_str()]
        );
        for delivery in &created.deliveries {
            assert!(
                delivery_ids.insert(delivery.delivery_id),
                "delivery id {} returned twice",
                delivery.delivery_id
            );
        }
    }
    assert_eq!(message_ids.len(), 2 * MESSAGES_PER_STORE as usize);

    // Each shared event id made one message, which both stores returned.
    for (n, (a, b)) in first_events.iter().zip(&second_events).enumerate() {
        assert_eq!(a.0, b.0, "message of event id order-{n}");
        assert!(
            a.1 != b.1,
            "order-{n} is new in exactly one store: {a:?} {b:?}"
        );
    }
    let event_message_ids: BTreeSet<String> =
        first_events.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(event_message_ids.len(), SHARED_EVENT_IDS);

    // Both stores read the same rows: nothing written was lost.
    let expected_messages = 2 * MESSAGES_PER_STORE as usize + SHARED_EVENT_IDS;
    for store in [&first, &second] {
        let (stored_messages, stored_deliveries): (Vec<String>, Vec<i64>) =
            read_ok(store, |conn| {
                Ok((
                    conn.query_map(
                        "SELECT id FROM messages WHERE app_id = ?1 ORDER BY id",
                        sql::params!["app_1"],
                        |row| row.get(0),
                    )?,
                    conn.query_map(
                        "SELECT id FROM deliveries ORDER BY id",
                        sql::params![],
                        |row| row.get(0),
                    )?,
                ))
            })
            .await;
        assert_eq!(stored_messages.len(), expected_messages);
        let stored: BTreeSet<String> = stored_messages.into_iter().collect();
        assert!(message_ids.is_subset(&stored));
        assert!(event_message_ids.is_subset(&stored));
        assert_eq!(stored_deliveries.len(), 2 * expected_messages);
        let stored: BTreeSet<i64> = stored_deliveries.into_iter().collect();
        assert!(delivery_ids.is_subset(&stored));
        assert_eq!(
            stored.len(),
            2 * expected_messages,
            "delivery ids are unique"
        );
    }
    first.close();
    second.close();
}
