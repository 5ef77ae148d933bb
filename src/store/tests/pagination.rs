//! Conformance tests of the lists that take a [`PageRequest`]: both orders,
//! an iterator in each, and the one row fetched beyond the limit that shows
//! the API whether more follow.

use super::operations::{application, dead_letter, event_type};
use super::*;

pub(super) fn page(limit: usize, iterator: Option<&str>, descending: bool) -> PageRequest {
    PageRequest {
        limit,
        iterator: iterator.map(str::to_owned),
        descending,
    }
}

/// Checks the pages of a list against `ids`, the whole list in ascending
/// order, which must hold at least five ids. `list` returns the ids of one page.
pub(super) async fn assert_pages<F>(store: &Store, ids: &[String], list: F)
where
    F: Fn(&Conn, &PageRequest) -> Result<Vec<String>> + Clone + Send + 'static,
{
    let n = ids.len();
    assert!(n >= 5, "the list has {n} ids, fewer than the checks need");
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();
    let cases = [
        // The limit covers the list, so no extra row.
        (page(n, None, false), ids.to_vec()),
        (page(n + 5, None, false), ids.to_vec()),
        // Limit 2: three rows, because the third shows that more follow.
        (page(2, None, false), ids[..3].to_vec()),
        (page(2, Some(&ids[1]), false), ids[2..5].to_vec()),
        (page(2, Some(&ids[n - 2]), false), ids[n - 1..].to_vec()),
        (page(2, Some(&ids[n - 1]), false), Vec::new()),
        (page(n, None, true), reversed.clone()),
        (page(2, None, true), reversed[..3].to_vec()),
        (page(2, Some(&ids[n - 2]), true), reversed[2..5].to_vec()),
        (page(2, Some(&ids[1]), true), vec![ids[0].clone()]),
        (page(2, Some(&ids[0]), true), Vec::new()),
    ];
    for (request, expected) in cases {
        let label = format!("{request:?}");
        let list = list.clone();
        let found = store
            .read(move |conn| list(conn, &request))
            .await
            .unwrap_or_else(|err| panic!("page {label}: {err}"));
        assert_eq!(found, expected, "page {label}");
    }
}

pub(super) async fn applications_page_in_id_order(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let apps: Vec<_> = (0..6)
        .map(|n| application(Some(&format!("app-{n}")), "App"))
        .collect();
    let ids: Vec<String> = apps.iter().map(|a| a.id.clone()).collect();
    // Inserted newest first: the order comes from the ids alone.
    insert_all(&store, apps.into_iter().rev().collect(), |conn, app| {
        applications::insert(conn, app)
    })
    .await;
    assert_pages(&store, &ids, |conn, page| {
        Ok(applications::list(conn, page)?
            .into_iter()
            .map(|a| a.id)
            .collect())
    })
    .await;
}

pub(super) async fn endpoints_page_in_id_order(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut saved: Vec<Endpoint> = (0..5).map(|_| endpoint("app_1", None)).collect();
    saved.insert(2, endpoint("app_2", None));
    let ids: Vec<String> = saved
        .iter()
        .filter(|e| e.app_id == "app_1")
        .map(|e| e.id.clone())
        .collect();
    insert_all(
        &store,
        saved.into_iter().rev().collect(),
        |conn, endpoint| endpoints::save(conn, endpoint, false),
    )
    .await;
    assert_pages(&store, &ids, |conn, page| {
        Ok(endpoints::list(conn, "app_1", page)?
            .into_iter()
            .map(|e| e.id)
            .collect())
    })
    .await;
}

pub(super) async fn event_types_page_in_name_order(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    // Upper case sorts before lower case, by bytes, on both databases.
    let names = ["b.two", "B.one", "a.three", "c", "a.1", "a.10"];
    let mut archived = event_type("a.2", None);
    archived.archived = true;
    let mut saved: Vec<_> = names.iter().map(|name| event_type(name, None)).collect();
    saved.push(archived);
    insert_all(&store, saved, |conn, event_type| {
        event_types::save(conn, event_type, false)
    })
    .await;
    let expected: Vec<String> = ["B.one", "a.1", "a.10", "a.three", "b.two", "c"]
        .map(str::to_owned)
        .to_vec();
    assert_pages(&store, &expected, |conn, page| {
        Ok(event_types::list(conn, page, false, None)?
            .into_iter()
            .map(|t| t.name)
            .collect())
    })
    .await;
}

pub(super) async fn messages_page_with_filters(backend: Backend) {
    let (_db, store, _) = super::store_with_endpoint(backend).await;
    // Message i has type b when i % 3 == 2 and type a otherwise. It has
    // channel c1 when i is even, c2 as well when i % 4 == 0, and was
    // created at 1000 + i.
    let mut ids = Vec::new();
    for i in 0..15_i64 {
        let event_type = if i % 3 == 2 { "b" } else { "a" };
        let mut msg = message("app_1", event_type, None, 1_000 + i);
        msg.channels = match (i % 2, i % 4) {
            (_, 0) => Some(vec!["c2".to_owned(), "c1".to_owned()]),
            (0, _) => Some(vec!["c1".to_owned()]),
            _ => None,
        };
        ids.push(msg.id.clone());
        write_ok(&store, move |conn| messages::create(conn, msg.clone())).await;
        write_ok(&store, move |conn| {
            messages::create(conn, message("app_2", "a", None, 1_000 + i))
        })
        .await;
    }
    let select = |wanted: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..ids.len())
            .filter(|i| wanted(*i))
            .map(|i| ids[i].clone())
            .collect()
    };
    let filters = [
        (messages::MessageFilter::default(), select(&|_| true)),
        (
            messages::MessageFilter {
                event_types: Some(vec!["a".to_owned()]),
                ..Default::default()
            },
            select(&|i| i % 3 != 2),
        ),
        (
            messages::MessageFilter {
                event_types: Some(vec!["b".to_owned(), "a".to_owned()]),
                ..Default::default()
            },
            select(&|_| true),
        ),
        (
            messages::MessageFilter {
                channel: Some("c1".to_owned()),
                ..Default::default()
            },
            select(&|i| i % 2 == 0),
        ),
        (
            messages::MessageFilter {
                event_types: Some(vec!["a".to_owned()]),
                channel: Some("c1".to_owned()),
                ..Default::default()
            },
            select(&|i| i % 2 == 0 && i % 3 != 2),
        ),
        (
            messages::MessageFilter {
                after: Some(1_003),
                before: Some(1_011),
                ..Default::default()
            },
            select(&|i| (4..=10).contains(&i)),
        ),
    ];
    for (filter, expected) in filters {
        assert_pages(&store, &expected, move |conn, page| {
            Ok(messages::list(conn, "app_1", page, &filter)?
                .into_iter()
                .map(|m| m.id)
                .collect())
        })
        .await;
    }

    // Fewer than five match: one page of each order.
    let c2 = messages::MessageFilter {
        channel: Some("c2".to_owned()),
        ..Default::default()
    };
    let listed = read_ok(&store, move |conn| {
        Ok((
            messages::list(conn, "app_1", &page(10, None, false), &c2)?,
            messages::list(conn, "app_1", &page(10, None, true), &c2)?,
        ))
    })
    .await;
    let ascending: Vec<String> = listed.0.into_iter().map(|m| m.id).collect();
    let descending: Vec<String> = listed.1.into_iter().map(|m| m.id).collect();
    assert_eq!(ascending, select(&|i| i % 4 == 0));
    assert_eq!(descending, ascending.into_iter().rev().collect::<Vec<_>>());
    let quote = messages::MessageFilter {
        channel: Some("it's".to_owned()),
        event_types: Some(vec!["x'y".to_owned()]),
        ..Default::default()
    };
    let listed = read_ok(&store, move |conn| {
        messages::list(conn, "app_1", &page(10, None, false), &quote)
    })
    .await;
    assert_eq!(listed, Vec::new(), "a quote in a filter is a literal");
}

pub(super) async fn attempts_page_by_endpoint_and_message(backend: Backend) {
    let (_db, store, first_ep) = super::store_with_endpoint(backend).await;
    let second_ep = endpoint("app_1", None);
    let saved = second_ep.clone();
    write_ok(&store, move |conn| endpoints::save(conn, &saved, false)).await;
    let mut messages = Vec::new();
    for created_at in [1, 2, 3] {
        messages.push(
            write_ok(&store, move |conn| {
                messages::create(conn, message("app_1", "a", None, created_at))
            })
            .await,
        );
    }
    // (message, endpoint, succeeded), made at 1, 2, 3, ...
    let plan = [
        (0, 0, false),
        (0, 1, false),
        (0, 0, false),
        (1, 0, true),
        (0, 1, true),
        (2, 0, false),
        (0, 0, true),
    ];
    let endpoint_ids = [first_ep.id.clone(), second_ep.id.clone()];
    let mut attempts = Vec::new();
    for (index, (msg, ep, succeeded)) in plan.into_iter().enumerate() {
        let created = &messages[msg];
        let delivery = created.deliveries[ep].delivery_id;
        let mut attempt = failed_attempt(delivery, &created.message.id, &endpoint_ids[ep], "app_1");
        if succeeded {
            attempt.status = DeliveryStatus::Success;
            attempt.response_status = 200;
        }
        attempt.created_at = index as i64 + 1;
        attempts.push(attempt);
    }
    let saved = attempts.clone();
    insert_all(&store, saved, |conn, attempt| {
        attempts::insert(conn, attempt)
    })
    .await;
    let ids_of = |indexes: &[usize]| -> Vec<String> {
        indexes.iter().map(|i| attempts[*i].id.clone()).collect()
    };

    let first = first_ep.id.clone();
    assert_pages(&store, &ids_of(&[0, 2, 3, 5, 6]), move |conn, page| {
        let filter = attempts::AttemptFilter::default();
        Ok(
            attempts::list(conn, "app_1", "endpoint_id", &first, page, &filter)?
                .into_iter()
                .map(|a| a.id)
                .collect(),
        )
    })
    .await;
    let msg_id = messages[0].message.id.clone();
    assert_pages(&store, &ids_of(&[0, 1, 2, 4, 6]), move |conn, page| {
        let filter = attempts::AttemptFilter::default();
        Ok(
            attempts::list(conn, "app_1", "msg_id", &msg_id, page, &filter)?
                .into_iter()
                .map(|a| a.id)
                .collect(),
        )
    })
    .await;

    let filtered = |by: &'static str, value: String, filter: attempts::AttemptFilter| {
        let store = store.clone();
        async move {
            read_ok(&store, move |conn| {
                attempts::list(conn, "app_1", by, &value, &page(10, None, true), &filter)
            })
            .await
            .into_iter()
            .map(|a| a.id)
            .collect::<Vec<_>>()
        }
    };
    let msg_id = messages[0].message.id.clone();
    assert_eq!(
        filtered(
            "msg_id",
            msg_id,
            attempts::AttemptFilter {
                endpoint_id: Some(first_ep.id.clone()),
                ..Default::default()
            }
        )
        .await,
        ids_of(&[6, 2, 0])
    );
    assert_eq!(
        filtered(
            "endpoint_id",
            first_ep.id.clone(),
            attempts::AttemptFilter {
                status: Some(DeliveryStatus::Success),
                ..Default::default()
            }
        )
        .await,
        ids_of(&[6, 3])
    );
    assert_eq!(
        filtered(
            "endpoint_id",
            first_ep.id.clone(),
            attempts::AttemptFilter {
                after: Some(1),
                before: Some(7),
                ..Default::default()
            }
        )
        .await,
        ids_of(&[5, 3, 2])
    );
    let none = read_ok(&store, move |conn| {
        attempts::list(
            conn,
            "app_2",
            "endpoint_id",
            &endpoint_ids[0],
            &page(10, None, false),
            &Default::default(),
        )
    })
    .await;
    assert_eq!(none, Vec::new(), "attempts of another application");
}

pub(super) async fn dead_letters_page_in_id_order(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut letters: Vec<_> = (0..6)
        .map(|n| dead_letter("orders", &format!("orders/0/{n}"), None))
        .collect();
    letters.insert(3, dead_letter("events", "events/0/1", None));
    let ids: Vec<String> = letters
        .iter()
        .filter(|l| l.source == "orders")
        .map(|l| l.id.clone())
        .collect();
    insert_all(
        &store,
        letters.into_iter().rev().collect(),
        dead_letters::insert,
    )
    .await;
    assert_pages(&store, &ids, |conn, page| {
        Ok(dead_letters::list(conn, "orders", page)?
            .into_iter()
            .map(|l| l.id)
            .collect())
    })
    .await;
}

pub(super) async fn tasks_page_with_filters(backend: Backend) {
    let (_db, store, first_ep) = super::store_with_endpoint(backend).await;
    let other_app_ep = endpoint("app_2", None);
    let saved = other_app_ep.clone();
    write_ok(&store, move |conn| endpoints::save(conn, &saved, false)).await;
    let plan = [
        (TaskKind::Recover, TaskStatus::Running, &first_ep),
        (TaskKind::BulkReplay, TaskStatus::Finished, &first_ep),
        (TaskKind::Recover, TaskStatus::Running, &other_app_ep),
        (TaskKind::Recover, TaskStatus::Finished, &first_ep),
        (TaskKind::ReplayMissing, TaskStatus::Running, &first_ep),
        (TaskKind::Recover, TaskStatus::Failed, &first_ep),
    ];
    let saved: Vec<Task> = plan
        .iter()
        .map(|(kind, status, ep)| {
            let mut planned = task(*kind, ep, 0, 10);
            planned.status = *status;
            planned
        })
        .collect();
    let ids: Vec<String> = saved.iter().map(|t| t.id.clone()).collect();
    insert_all(&store, saved.into_iter().rev().collect(), |conn, task| {
        tasks::insert(conn, task)
    })
    .await;
    let select =
        |indexes: &[usize]| -> Vec<String> { indexes.iter().map(|i| ids[*i].clone()).collect() };

    assert_pages(&store, &ids, |conn, page| {
        Ok(tasks::list(conn, page, &Default::default())?
            .into_iter()
            .map(|t| t.id)
            .collect())
    })
    .await;
    assert_pages(&store, &select(&[0, 1, 3, 4, 5]), |conn, page| {
        let filter = tasks::TaskListFilter {
            app_id: Some("app_1".to_owned()),
            ..Default::default()
        };
        Ok(tasks::list(conn, page, &filter)?
            .into_iter()
            .map(|t| t.id)
            .collect())
    })
    .await;

    let cases = [
        (
            tasks::TaskListFilter {
                status: Some(TaskStatus::Running),
                ..Default::default()
            },
            select(&[0, 2, 4]),
        ),
        (
            tasks::TaskListFilter {
                kind: Some(TaskKind::Recover),
                app_id: Some("app_1".to_owned()),
                ..Default::default()
            },
            select(&[0, 3, 5]),
        ),
        (
            tasks::TaskListFilter {
                status: Some(TaskStatus::Finished),
                kind: Some(TaskKind::BulkReplay),
                app_id: None,
            },
            select(&[1]),
        ),
        (
            tasks::TaskListFilter {
                status: Some(TaskStatus::Failed),
                kind: None,
                app_id: Some("app_2".to_owned()),
            },
            Vec::new(),
        ),
    ];
    for (filter, expected) in cases {
        let label = format!("{filter:?}");
        let found: Vec<String> = read_ok(&store, move |conn| {
            tasks::list(conn, &page(10, None, false), &filter)
        })
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
        assert_eq!(found, expected, "{label}");
    }
}

pub(super) async fn endpoint_messages_page_in_id_order(backend: Backend) {
    let (_db, store, all) = super::store_with_endpoint(backend).await;
    let only_b = endpoint("app_1", Some(vec!["b"]));
    let saved = only_b.clone();
    write_ok(&store, move |conn| endpoints::save(conn, &saved, false)).await;
    let mut ids = Vec::new();
    for (index, event_type) in ["a", "a", "b", "a", "a", "a"].into_iter().enumerate() {
        let created = write_ok(&store, move |conn| {
            messages::create(conn, message("app_1", event_type, None, index as i64))
        })
        .await;
        ids.push(created.message.id);
    }
    // A resend adds a second delivery of a message; it is still listed once,
    // with the state of the resend.
    let (msg_id, endpoint_id) = (ids[1].clone(), all.id.clone());
    write_ok(&store, move |conn| {
        deliveries::create_manual(conn, &msg_id, &endpoint_id, "app_1", 50)
    })
    .await;

    let endpoint_id = all.id.clone();
    assert_pages(&store, &ids, move |conn, page| {
        Ok(
            deliveries::messages_for_endpoint(conn, &endpoint_id, "app_1", page)?
                .into_iter()
                .map(|m| m.message.id)
                .collect(),
        )
    })
    .await;

    let (all_id, only_b_id) = (all.id.clone(), only_b.id.clone());
    let listed = read_ok(&store, move |conn| {
        Ok((
            deliveries::messages_for_endpoint(conn, &all_id, "app_1", &page(1, None, false))?,
            deliveries::messages_for_endpoint(conn, &only_b_id, "app_1", &page(10, None, false))?,
        ))
    })
    .await;
    let firsts: Vec<_> = listed
        .0
        .iter()
        .map(|m| {
            (
                m.message.id.clone(),
                m.status,
                m.attempts,
                m.next_attempt_at,
            )
        })
        .collect();
    assert_eq!(
        firsts,
        vec![
            (ids[0].clone(), DeliveryStatus::Pending, 0, Some(0)),
            (ids[1].clone(), DeliveryStatus::Pending, 0, Some(50)),
        ]
    );
    let only_b_ids: Vec<String> = listed.1.into_iter().map(|m| m.message.id).collect();
    assert_eq!(only_b_ids, vec![ids[2].clone()]);
}
