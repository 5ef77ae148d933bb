//! Conformance tests of each store operation: what it stores, what it
//! returns, and the unique values it rejects.

use serde_json::json;

use super::*;
use crate::model::{Application, EventType, PreviousSecret};

pub(super) fn application(uid: Option<&str>, name: &str) -> Application {
    Application {
        id: ids::new_id(ids::APPLICATION),
        uid: uid.map(str::to_owned),
        name: name.to_owned(),
        rate_limit: Some(7),
        metadata: BTreeMap::from([("team".to_owned(), "billing".to_owned())]),
        created_at: 100,
        updated_at: 100,
    }
}

pub(super) fn event_type(name: &str, feature_flags: Option<Vec<&str>>) -> EventType {
    EventType {
        name: name.to_owned(),
        description: format!("{name} happened"),
        archived: false,
        deprecated: false,
        schemas: None,
        group_name: None,
        feature_flags: feature_flags.map(|flags| flags.into_iter().map(str::to_owned).collect()),
        created_at: 1,
        updated_at: 1,
    }
}

/// Saves endpoints and returns them as saved.
async fn save_endpoints(store: &Store, endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    let saved = endpoints.clone();
    insert_all(store, saved, |conn, endpoint| {
        endpoints::save(conn, endpoint, false)
    })
    .await;
    endpoints
}

/// Stores a message and returns it with the deliveries fan-out made.
async fn create_message(store: &Store, message: Message) -> messages::Created {
    write_ok(store, move |conn| messages::create(conn, message.clone())).await
}

/// Checks that exactly one delivery was created and returns its message.
async fn message_of_only_delivery(store: &Store, created: &[messages::NewDelivery]) -> Message {
    assert_eq!(created.len(), 1, "{created:?}");
    let delivery_id = created[0].delivery_id;
    read_ok(store, move |conn| {
        deliveries::load_for_send(conn, delivery_id)
    })
    .await
    .expect("the delivery exists")
    .message
    .as_ref()
    .clone()
}

/// Stores a message of app_1, which `endpoint` takes, and returns a failed
/// attempt of its delivery, not yet stored.
async fn attempt_of_new_message(store: &Store, endpoint: &Endpoint) -> Attempt {
    let created = create_message(store, message("app_1", "a", None, 10)).await;
    failed_attempt(
        created.deliveries[0].delivery_id,
        &created.message.id,
        &endpoint.id,
        "app_1",
    )
}

/// Reads the `failing_since` column, which the endpoint model does not carry.
async fn failing_since(store: &Store, endpoint_id: &str) -> Option<i64> {
    let id = endpoint_id.to_owned();
    read_ok(store, move |conn| {
        conn.query_one(
            "SELECT failing_since FROM endpoints WHERE id = ?1",
            sql::params![id],
            |row| row.get(0),
        )
    })
    .await
}

fn app_token(
    byte: u8,
    app_id: &str,
    session_id: Option<&str>,
    expires_at: i64,
) -> app_tokens::AppToken {
    app_tokens::AppToken {
        token_sha256: [byte; 32],
        app_id: app_id.to_owned(),
        session_id: session_id.map(str::to_owned),
        read_only: byte % 2 == 1,
        feature_flags: vec!["beta".to_owned()],
        created_at: 10,
        expires_at,
        revoked_at: None,
    }
}

pub(super) async fn applications_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let shop = application(Some("shop"), "Shop");
    // A uid may have the form of an application id.
    let id_like_uid = ids::new_id(ids::APPLICATION);
    let odd = application(Some(&id_like_uid), "Odd");
    let (saved_shop, saved_odd) = (shop.clone(), odd.clone());
    write_ok(&store, move |conn| {
        applications::insert(conn, &saved_shop)?;
        applications::insert(conn, &saved_odd)
    })
    .await;

    for key in [shop.id.clone(), "shop".to_owned()] {
        let found = read_ok(&store, move |conn| applications::get(conn, &key)).await;
        assert_eq!(found.as_ref(), Some(&shop));
    }
    let found = read_ok(&store, move |conn| applications::get(conn, &id_like_uid)).await;
    assert_eq!(
        found.as_ref(),
        Some(&odd),
        "found by a uid that looks like an id"
    );
    let missing = read_ok(&store, |conn| applications::get(conn, "nobody")).await;
    assert_eq!(missing, None);

    let mut renamed = shop.clone();
    renamed.uid = Some("store".to_owned());
    renamed.name = "Store".to_owned();
    renamed.rate_limit = None;
    renamed.metadata.clear();
    renamed.updated_at = 200;
    let saved = renamed.clone();
    write_ok(&store, move |conn| applications::update(conn, &saved)).await;
    let found = read_ok(&store, |conn| applications::get(conn, "store")).await;
    assert_eq!(found, Some(renamed));
    let old_uid = read_ok(&store, |conn| applications::get(conn, "shop")).await;
    assert_eq!(old_uid, None);
}

pub(super) async fn application_delete_removes_its_rows(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let doomed = application(None, "Doomed");
    let remaining = application(None, "Remaining");
    let (doomed_id, remaining_id) = (doomed.id.clone(), remaining.id.clone());
    write_ok(&store, move |conn| {
        applications::insert(conn, &doomed)?;
        applications::insert(conn, &remaining)
    })
    .await;
    let saved_endpoints = save_endpoints(
        &store,
        vec![endpoint(&doomed_id, None), endpoint(&remaining_id, None)],
    )
    .await;
    let mut created = Vec::new();
    for app_id in [&doomed_id, &remaining_id] {
        created.push(create_message(&store, message(app_id, "a", None, 5)).await);
    }
    for (index, (app_id, created)) in [&doomed_id, &remaining_id].iter().zip(&created).enumerate() {
        let attempt = failed_attempt(
            created.deliveries[0].delivery_id,
            &created.message.id,
            &saved_endpoints[index].id,
            app_id,
        );
        let token = app_token(index as u8, app_id, None, 1_000);
        let recover = task(TaskKind::Recover, &saved_endpoints[index], 0, 10);
        write_ok(&store, move |conn| {
            attempts::insert(conn, &attempt)?;
            app_tokens::insert(conn, &token)?;
            tasks::insert(conn, &recover)
        })
        .await;
    }

    let id = doomed_id.clone();
    assert!(write_ok(&store, move |conn| applications::delete(conn, &id)).await);
    let id = doomed_id.clone();
    assert!(!write_ok(&store, move |conn| applications::delete(conn, &id)).await);

    // Per table: rows of the deleted application, rows of the other one.
    for table in [
        "applications",
        "endpoints",
        "messages",
        "deliveries",
        "attempts",
        "app_tokens",
        "tasks",
    ] {
        let column = if table == "applications" {
            "id"
        } else {
            "app_id"
        };
        let (doomed_id, remaining_id) = (doomed_id.clone(), remaining_id.clone());
        let counts: (i64, i64) = read_ok(&store, move |conn| {
            let count = |app_id: &str| {
                conn.query_one(
                    &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"),
                    sql::params![app_id],
                    |row| row.get::<i64>(0),
                )
            };
            Ok((count(&doomed_id)?, count(&remaining_id)?))
        })
        .await;
        assert_eq!(counts, (0, 1), "rows in {table}");
    }
}

pub(super) async fn application_uid_conflict_keeps_row(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let first = application(Some("shop"), "First");
    let other = application(Some("other"), "Other");
    let (saved_first, saved_other) = (first.clone(), other.clone());
    write_ok(&store, move |conn| {
        applications::insert(conn, &saved_first)?;
        applications::insert(conn, &saved_other)
    })
    .await;

    let second = application(Some("shop"), "Second");
    assert_conflict(&store, "uid", move |conn| {
        applications::insert(conn, &second)
    })
    .await;

    let mut taking = other.clone();
    taking.uid = Some("shop".to_owned());
    taking.name = "Taken".to_owned();
    assert_conflict(&store, "uid", move |conn| {
        applications::update(conn, &taking)
    })
    .await;

    let found = read_ok(&store, |conn| applications::get(conn, "shop")).await;
    assert_eq!(found, Some(first));
    let id = other.id.clone();
    let found = read_ok(&store, move |conn| applications::get(conn, &id)).await;
    assert_eq!(found, Some(other));
    let page = page(10, None, false);
    let count = read_ok(&store, move |conn| applications::list(conn, &page))
        .await
        .len();
    assert_eq!(count, 2);
}

pub(super) async fn endpoint_uid_conflict_within_app(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut first = endpoint("app_1", None);
    first.uid = Some("main".to_owned());
    let mut spare = endpoint("app_1", None);
    spare.uid = Some("spare".to_owned());
    save_endpoints(&store, vec![first.clone(), spare.clone()]).await;

    let mut second = endpoint("app_1", None);
    second.uid = Some("main".to_owned());
    assert_conflict(&store, "uid", move |conn| {
        endpoints::save(conn, &second, false)
    })
    .await;

    // Renaming another endpoint to a taken uid is a conflict too.
    let mut renamed = spare.clone();
    renamed.uid = Some("main".to_owned());
    renamed.url = "http://127.0.0.1:9/renamed".to_owned();
    assert_conflict(&store, "uid", move |conn| {
        endpoints::save(conn, &renamed, true)
    })
    .await;

    let found = read_ok(&store, |conn| endpoints::get(conn, "app_1", "main")).await;
    assert_eq!(found.as_ref(), Some(&first));
    let id = spare.id.clone();
    let found = read_ok(&store, move |conn| endpoints::get_by_id(conn, &id)).await;
    assert_eq!(found, Some(spare));

    // The same uid in another application is another endpoint.
    let mut elsewhere = endpoint("app_2", None);
    elsewhere.uid = Some("main".to_owned());
    save_endpoints(&store, vec![elsewhere.clone()]).await;
    let found = read_ok(&store, |conn| endpoints::get(conn, "app_2", "main")).await;
    assert_eq!(found, Some(elsewhere));
    let found = read_ok(&store, |conn| endpoints::get(conn, "app_1", "main")).await;
    assert_eq!(found, Some(first));
}

pub(super) async fn event_type_name_conflict_keeps_row(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let first = event_type("invoice.paid", None);
    let saved = first.clone();
    write_ok(&store, move |conn| event_types::save(conn, &saved, false)).await;

    let mut second = event_type("invoice.paid", Some(vec!["beta"]));
    second.description = "second".to_owned();
    let attempt = second.clone();
    assert_conflict(&store, "name", move |conn| {
        event_types::save(conn, &attempt, false)
    })
    .await;
    let found = read_ok(&store, |conn| event_types::get(conn, "invoice.paid")).await;
    assert_eq!(found, Some(first));

    // With `replace` the same name overwrites.
    let saved = second.clone();
    write_ok(&store, move |conn| event_types::save(conn, &saved, true)).await;
    let found = read_ok(&store, |conn| event_types::get(conn, "invoice.paid")).await;
    assert_eq!(found, Some(second));
}

pub(super) async fn endpoints_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut full = endpoint("app_1", Some(vec!["a", "b"]));
    full.uid = Some("main".to_owned());
    full.description = "all fields set".to_owned();
    full.rate_limit = Some(10);
    full.channels = Some(vec!["c1".to_owned()]);
    full.previous_secrets = vec![PreviousSecret {
        secret: crate::model::secret::generate(),
        expires_at: 50,
    }];
    full.metadata = BTreeMap::from([("team".to_owned(), "billing".to_owned())]);
    full.headers = BTreeMap::from([("x-extra".to_owned(), "1".to_owned())]);
    full.retry_schedule_ms = Some(vec![1_000, 5_000]);
    let plain = endpoint("app_1", None);
    let other_app = endpoint("app_2", None);
    save_endpoints(&store, vec![full.clone(), plain.clone(), other_app]).await;

    for key in [full.id.clone(), "main".to_owned()] {
        let found = read_ok(&store, move |conn| endpoints::get(conn, "app_1", &key)).await;
        assert_eq!(found.as_ref(), Some(&full), "found by {:?}", full.uid);
    }
    let id = full.id.clone();
    let found = read_ok(&store, move |conn| endpoints::get(conn, "app_2", &id)).await;
    assert_eq!(found, None, "an endpoint of another application");
    let id = full.id.clone();
    let found = read_ok(&store, move |conn| endpoints::get_by_id(conn, &id)).await;
    assert_eq!(found.as_ref(), Some(&full));

    let enabled = write_ok(&store, |conn| {
        Ok((
            endpoints::list_enabled(conn, "app_1")?,
            endpoints::list_enabled_cached(conn, "app_1")?.to_vec(),
        ))
    })
    .await;
    assert_eq!(enabled.0, vec![full.clone(), plain.clone()]);
    assert_eq!(enabled.1, vec![full.clone(), plain.clone()]);

    // Replacing keeps the failure clock, which the model does not carry.
    let id = full.id.clone();
    write_ok(&store, move |conn| endpoints::mark_failing(conn, &id, 100)).await;
    let mut changed = full.clone();
    changed.url = "http://127.0.0.1:9/changed".to_owned();
    changed.event_types = None;
    changed.channels = None;
    changed.updated_at = 2;
    let saved = changed.clone();
    write_ok(&store, move |conn| endpoints::save(conn, &saved, true)).await;
    let id = full.id.clone();
    let found = read_ok(&store, move |conn| endpoints::get_by_id(conn, &id)).await;
    assert_eq!(found, Some(changed.clone()));
    assert_eq!(failing_since(&store, &full.id).await, Some(100));

    // The clock starts at the first failure and restarts after a success.
    let id = full.id.clone();
    write_ok(&store, move |conn| endpoints::mark_failing(conn, &id, 200)).await;
    assert_eq!(failing_since(&store, &full.id).await, Some(100));
    let id = full.id.clone();
    write_ok(&store, move |conn| endpoints::mark_not_failing(conn, &id)).await;
    assert_eq!(failing_since(&store, &full.id).await, None);
    let id = full.id.clone();
    write_ok(&store, move |conn| endpoints::mark_failing(conn, &id, 300)).await;
    assert_eq!(failing_since(&store, &full.id).await, Some(300));

    // Disabling cancels the pending deliveries and leaves the fan-out list.
    let created = create_message(&store, message("app_1", "a", None, 5)).await;
    assert_eq!(created.deliveries.len(), 2);
    let id = plain.id.clone();
    write_ok(&store, move |conn| endpoints::disable(conn, &id, 40)).await;
    let id = plain.id.clone();
    let disabled = read_ok(&store, move |conn| endpoints::get_by_id(conn, &id))
        .await
        .unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.updated_at, 40);
    let enabled = write_ok(&store, |conn| {
        endpoints::list_enabled_cached(conn, "app_1").map(|list| list.to_vec())
    })
    .await;
    assert_eq!(enabled, vec![changed.clone()]);
    let delivery_to = |endpoint_id: &str| {
        created
            .deliveries
            .iter()
            .find(|d| d.endpoint_id == endpoint_id)
            .unwrap()
            .delivery_id
    };
    let canceled = delivery_to(&plain.id);
    let delivery = read_ok(&store, move |conn| deliveries::get(conn, canceled))
        .await
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Canceled);
    assert_eq!(delivery.next_attempt_at, None);

    // Deleting cancels too, and a second delete finds nothing.
    let id = full.id.clone();
    assert!(write_ok(&store, move |conn| endpoints::delete(conn, &id, 50)).await);
    let id = full.id.clone();
    assert!(!write_ok(&store, move |conn| endpoints::delete(conn, &id, 60)).await);
    let id = full.id.clone();
    assert_eq!(
        read_ok(&store, move |conn| endpoints::get_by_id(conn, &id)).await,
        None
    );
    let deleted_to = delivery_to(&full.id);
    let delivery = read_ok(&store, move |conn| deliveries::get(conn, deleted_to))
        .await
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Canceled);
    let page = page(10, None, false);
    let listed = read_ok(&store, move |conn| endpoints::list(conn, "app_1", &page)).await;
    assert_eq!(listed, vec![disabled]);
}

pub(super) async fn endpoint_state_change_emits_event(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let secret = crate::model::secret::generate();
    let ops_app = write_ok(&store, move |conn| {
        operational::sync(conn, &["http://127.0.0.1:9/ops".to_owned()], &secret, 1)
    })
    .await
    .unwrap();
    let app = application(Some("shop"), "Shop");
    let app_id = app.id.clone();
    write_ok(&store, move |conn| applications::insert(conn, &app)).await;
    let mut ep = endpoint(&app_id, None);
    ep.uid = Some("main".to_owned());
    save_endpoints(&store, vec![ep.clone()]).await;
    let id = ep.id.clone();
    write_ok(&store, move |conn| endpoints::mark_failing(conn, &id, 100)).await;

    let mut disabled = ep.clone();
    disabled.disabled = true;
    let ops = ops_app.clone();
    let created = write_ok(&store, move |conn| {
        endpoints::save_with_events(conn, &disabled, false, Some(&ops), 1_700_000_000_000)
    })
    .await;
    assert_eq!(failing_since(&store, &ep.id).await, None);
    let sent = message_of_only_delivery(&store, &created).await;
    assert_eq!(sent.app_id, ops_app);
    assert_eq!(sent.event_type, operational::ENDPOINT_DISABLED);
    let payload: serde_json::Value =
        serde_json::from_str(sent.payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({
            "type": "endpoint.disabled",
            "timestamp": "2023-11-14T22:13:20.000Z",
            "data": {
                "appId": app_id,
                "appUid": "shop",
                "endpointId": ep.id,
                "endpointUid": "main",
                "trigger": "manual",
            },
        })
    );

    // Saving without a change of state emits nothing.
    let mut same = ep.clone();
    same.disabled = true;
    same.description = "still disabled".to_owned();
    let ops = ops_app.clone();
    let created = write_ok(&store, move |conn| {
        endpoints::save_with_events(conn, &same, true, Some(&ops), 1_700_000_000_001)
    })
    .await;
    assert_eq!(created, Vec::new());

    let enabled = ep.clone();
    let ops = ops_app.clone();
    let created = write_ok(&store, move |conn| {
        endpoints::save_with_events(conn, &enabled, true, Some(&ops), 1_700_000_000_002)
    })
    .await;
    let sent = message_of_only_delivery(&store, &created).await;
    assert_eq!(sent.event_type, operational::ENDPOINT_ENABLED);
    let id = ep.id.clone();
    let found = read_ok(&store, move |conn| endpoints::get_by_id(conn, &id)).await;
    assert_eq!(found, Some(ep));
}

pub(super) async fn endpoint_secrets_are_sealed_once(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let saved = save_endpoints(
        &store,
        vec![endpoint("app_1", None), endpoint("app_1", None)],
    )
    .await;
    let key = encryption::EncryptionKey::parse(&"33".repeat(32)).unwrap();
    let cipher = encryption::Cipher::new(&key);
    let sealed = write_ok(&store, move |conn| {
        let without_key = endpoints::seal_secrets(conn, None)?;
        let first = endpoints::seal_secrets(conn, Some(&cipher))?;
        let second = endpoints::seal_secrets(conn, Some(&cipher))?;
        Ok((without_key, first, second))
    })
    .await;
    assert_eq!(sealed, (0, 2, 0));
    store.close();

    let reopened = db.open(Some(&key)).unwrap();
    let found = read_ok(&reopened, |conn| endpoints::list_enabled(conn, "app_1")).await;
    assert_eq!(found, saved);
}

pub(super) async fn event_types_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut paid = event_type("invoice.paid", None);
    paid.deprecated = true;
    paid.schemas = Some(json!({"1": {"type": "object", "required": ["id"]}}));
    paid.group_name = Some("invoice".to_owned());
    paid.updated_at = 2;
    let mut void = event_type("invoice.void", None);
    void.archived = true;
    let beta = event_type("beta.thing", Some(vec!["beta"]));
    let both = event_type("alpha.both", Some(vec!["beta", "gamma"]));
    let all = vec![paid.clone(), void.clone(), beta.clone(), both.clone()];
    insert_all(&store, all, |conn, event_type| {
        event_types::save(conn, event_type, false)
    })
    .await;

    let found = read_ok(&store, |conn| event_types::get(conn, "invoice.paid")).await;
    assert_eq!(found.as_ref(), Some(&paid));
    let found = read_ok(&store, |conn| event_types::get(conn, "invoice.missing")).await;
    assert_eq!(found, None);

    let names = |include_archived: bool, granted: Option<Vec<&str>>| {
        let store = store.clone();
        let granted: Option<Vec<String>> =
            granted.map(|flags| flags.into_iter().map(str::to_owned).collect());
        async move {
            read_ok(&store, move |conn| {
                event_types::list(
                    conn,
                    &page(10, None, false),
                    include_archived,
                    granted.as_deref(),
                )
            })
            .await
            .into_iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names(false, None).await,
        ["alpha.both", "beta.thing", "invoice.paid"]
    );
    assert_eq!(
        names(true, None).await,
        ["alpha.both", "beta.thing", "invoice.paid", "invoice.void"]
    );
    assert_eq!(names(false, Some(vec![])).await, ["invoice.paid"]);
    assert_eq!(
        names(true, Some(vec![])).await,
        ["invoice.paid", "invoice.void"]
    );
    assert_eq!(
        names(false, Some(vec!["beta"])).await,
        ["beta.thing", "invoice.paid"]
    );
    assert_eq!(
        names(false, Some(vec!["gamma", "beta"])).await,
        ["alpha.both", "beta.thing", "invoice.paid"]
    );

    assert!(write_ok(&store, |conn| event_types::delete(conn, "beta.thing")).await);
    assert!(!write_ok(&store, |conn| event_types::delete(conn, "beta.thing")).await);
    assert_eq!(
        names(true, None).await,
        ["alpha.both", "invoice.paid", "invoice.void"]
    );
}

pub(super) async fn messages_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let [first_ep, second_ep]: [Endpoint; 2] = save_endpoints(
        &store,
        vec![endpoint("app_1", None), endpoint("app_1", None)],
    )
    .await
    .try_into()
    .unwrap();

    let mut sent = message("app_1", "a", Some("order-1"), 10);
    sent.channels = Some(vec!["c1".to_owned(), "c2".to_owned()]);
    sent.tags = Some(vec!["t1".to_owned()]);
    let created = create_message(&store, sent.clone()).await;
    assert!(created.is_new);
    assert_eq!(created.message, sent);
    let targets: Vec<&str> = created
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.as_str())
        .collect();
    assert_eq!(targets, [first_ep.id.as_str(), second_ep.id.as_str()]);

    for key in [sent.id.clone(), "order-1".to_owned()] {
        let found = read_ok(&store, move |conn| messages::get(conn, "app_1", &key)).await;
        assert_eq!(found.as_ref(), Some(&sent));
    }
    let id = sent.id.clone();
    let found = read_ok(&store, move |conn| messages::get(conn, "app_2", &id)).await;
    assert_eq!(found, None, "a message of another application");
    let found = read_ok(&store, |conn| messages::get(conn, "app_1", "order-2")).await;
    assert_eq!(found, None);

    // A message for one endpoint only: a manual delivery to it alone.
    let direct = message("app_1", "a", None, 20);
    let (saved, endpoint_id) = (direct.clone(), second_ep.id.clone());
    let delivery = write_ok(&store, move |conn| {
        messages::create_for_endpoint(conn, &saved, &endpoint_id)
    })
    .await;
    assert_eq!(delivery.endpoint_id, second_ep.id);
    let id = direct.id.clone();
    let statuses = read_ok(&store, move |conn| messages::status_by_endpoint(conn, &id)).await;
    assert_eq!(
        statuses,
        vec![messages::EndpointStatus {
            endpoint_id: second_ep.id.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(20),
        }]
    );
    let delivery_id = delivery.delivery_id;
    let found = read_ok(&store, move |conn| deliveries::get(conn, delivery_id))
        .await
        .unwrap();
    assert_eq!(found.trigger, Trigger::Manual);
    let conflicting = message("app_1", "a", Some("order-1"), 30);
    let (conflicting_id, endpoint_id) = (conflicting.id.clone(), second_ep.id.clone());
    assert_conflict(&store, "eventId", move |conn| {
        messages::create_for_endpoint(conn, &conflicting, &endpoint_id)
    })
    .await;
    let found = read_ok(&store, move |conn| {
        messages::get(conn, "app_1", &conflicting_id)
    })
    .await;
    assert_eq!(found, None, "the conflicting message is not stored");

    let id = sent.id.clone();
    assert!(write_ok(&store, move |conn| messages::expunge_payload(conn, &id)).await);
    let missing = ids::new_id(ids::MESSAGE);
    assert!(
        !write_ok(&store, move |conn| messages::expunge_payload(
            conn, &missing
        ))
        .await
    );
    let id = sent.id.clone();
    let found = read_ok(&store, move |conn| messages::get(conn, "app_1", &id))
        .await
        .unwrap();
    assert_eq!(found.payload, None);
    assert_eq!(found.event_id.as_deref(), Some("order-1"));
}

pub(super) async fn message_status_shows_newest_delivery(backend: Backend) {
    let (_db, store, first_ep) = store_with_endpoint(backend).await;
    let second_ep = save_endpoints(&store, vec![endpoint("app_1", None)])
        .await
        .remove(0);
    let created = create_message(&store, message("app_1", "a", None, 10)).await;
    let msg_id = created.message.id.clone();
    record(
        &store,
        created.deliveries[0].delivery_id,
        &msg_id,
        &first_ep.id,
        deliveries::NextStep::GaveUp,
    )
    .await;
    record(
        &store,
        created.deliveries[1].delivery_id,
        &msg_id,
        &second_ep.id,
        deliveries::NextStep::RetryAt(500),
    )
    .await;
    // A resend to the first endpoint is its newest delivery.
    let (id, endpoint_id) = (msg_id.clone(), first_ep.id.clone());
    write_ok(&store, move |conn| {
        deliveries::create_manual(conn, &id, &endpoint_id, "app_1", 300)
    })
    .await;

    let id = msg_id.clone();
    let statuses = read_ok(&store, move |conn| messages::status_by_endpoint(conn, &id)).await;
    assert_eq!(
        statuses,
        vec![
            messages::EndpointStatus {
                endpoint_id: first_ep.id.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: Some(300),
            },
            messages::EndpointStatus {
                endpoint_id: second_ep.id.clone(),
                status: DeliveryStatus::Pending,
                attempts: 1,
                next_attempt_at: Some(500),
            },
        ]
    );
}

pub(super) async fn repeated_event_id_returns_first_message(backend: Backend) {
    let (_db, store, _) = store_with_endpoint(backend).await;
    let first = create_message(&store, message("app_1", "a", Some("e1"), 5)).await;
    let mut again = message("app_1", "b", Some("e1"), 6);
    again.payload = Some(r#"{"other":true}"#.to_owned());
    let second = create_message(&store, again).await;
    assert!(!second.is_new);
    assert_eq!(
        second.message, first.message,
        "the first message, unchanged"
    );

    let page = page(10, None, false);
    let listed = read_ok(&store, move |conn| {
        messages::list(conn, "app_1", &page, &messages::MessageFilter::default())
    })
    .await;
    assert_eq!(listed, vec![first.message.clone()]);
    let count: i64 = read_ok(&store, |conn| {
        conn.query_one("SELECT COUNT(*) FROM deliveries", sql::params![], |row| {
            row.get(0)
        })
    })
    .await;
    assert_eq!(count, 1);
}

pub(super) async fn deliveries_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let [first_ep, only_b]: [Endpoint; 2] = save_endpoints(
        &store,
        vec![endpoint("app_1", None), endpoint("app_1", Some(vec!["b"]))],
    )
    .await
    .try_into()
    .unwrap();
    let (first, second) = (first_ep.id.clone(), only_b.id.clone());

    let m1 = create_message(&store, message("app_1", "a", None, 100)).await;
    let m2 = create_message(&store, message("app_1", "b", None, 200)).await;
    let d1 = m1.deliveries[0].delivery_id;
    let (d2, d3) = (m2.deliveries[0].delivery_id, m2.deliveries[1].delivery_id);
    assert_eq!(m2.deliveries[1].endpoint_id, second);
    let found = read_ok(&store, move |conn| deliveries::get(conn, d1)).await;
    assert_eq!(
        found,
        Some(crate::model::Delivery {
            id: d1,
            msg_id: m1.message.id.clone(),
            endpoint_id: first.clone(),
            app_id: "app_1".to_owned(),
            trigger: Trigger::Scheduled,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(100),
            created_at: 100,
        })
    );
    assert_eq!(
        read_ok(&store, |conn| deliveries::get(conn, -1)).await,
        None
    );

    let id = first.clone();
    let due = read_ok(&store, move |conn| {
        Ok((
            deliveries::due_for_endpoint(conn, &id, 150, 10)?,
            deliveries::due_for_endpoint(conn, &id, 250, 10)?,
            deliveries::due_for_endpoint(conn, &id, 250, 1)?,
            deliveries::count_due_for_endpoint(conn, &id, 250, 10)?,
            deliveries::count_due_for_endpoint(conn, &id, 250, 1)?,
        ))
    })
    .await;
    assert_eq!(due, (vec![d1], vec![d1, d2], vec![d1], 2, 1));
    let mut with_due = read_ok(&store, |conn| deliveries::endpoints_with_due(conn, 250)).await;
    with_due.sort();
    assert_eq!(with_due, vec![first.clone(), second.clone()]);
    let with_due = read_ok(&store, |conn| deliveries::endpoints_with_due(conn, 150)).await;
    assert_eq!(with_due, vec![first.clone()]);

    record(
        &store,
        d1,
        &m1.message.id,
        &first,
        deliveries::NextStep::RetryAt(500),
    )
    .await;
    let mut success = failed_attempt(d2, &m2.message.id, &first, "app_1");
    success.status = DeliveryStatus::Success;
    write_ok(&store, move |conn| {
        deliveries::record_attempt(
            conn,
            &success,
            deliveries::NextStep::Succeeded,
            210,
            &deliveries::RecordRules::default(),
        )
    })
    .await;
    record(
        &store,
        d3,
        &m2.message.id,
        &second,
        deliveries::NextStep::GaveUp,
    )
    .await;
    let states = read_ok(&store, move |conn| {
        [d1, d2, d3]
            .into_iter()
            .map(|id| {
                let found = deliveries::get(conn, id)?.expect("the delivery exists");
                Ok((found.status, found.attempts, found.next_attempt_at))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await;
    assert_eq!(
        states,
        vec![
            (DeliveryStatus::Pending, 1, Some(500)),
            (DeliveryStatus::Success, 1, None),
            (DeliveryStatus::Fail, 1, None),
        ]
    );

    // A resend of m1 is canceled before its attempt. Then m3 is retrying
    // and m4 waits for its first attempt.
    let (msg_id, endpoint_id) = (m1.message.id.clone(), first.clone());
    let d4 = write_ok(&store, move |conn| {
        deliveries::create_manual(conn, &msg_id, &endpoint_id, "app_1", 400)
    })
    .await;
    let resend = read_ok(&store, move |conn| deliveries::get(conn, d4))
        .await
        .unwrap();
    assert_eq!(
        (resend.trigger, resend.status, resend.next_attempt_at),
        (Trigger::Manual, DeliveryStatus::Pending, Some(400))
    );
    write_ok(&store, move |conn| deliveries::cancel(conn, d4, 450)).await;
    write_ok(&store, move |conn| deliveries::cancel(conn, d2, 450)).await;
    let m3 = create_message(&store, message("app_1", "a", None, 250)).await;
    record(
        &store,
        m3.deliveries[0].delivery_id,
        &m3.message.id,
        &first,
        deliveries::NextStep::RetryAt(900),
    )
    .await;
    create_message(&store, message("app_1", "a", None, 260)).await;
    let states = read_ok(&store, move |conn| {
        Ok((
            deliveries::get(conn, d4)?.unwrap(),
            deliveries::get(conn, d2)?.unwrap(),
        ))
    })
    .await;
    assert_eq!(
        (states.0.status, states.0.next_attempt_at),
        (DeliveryStatus::Canceled, None)
    );
    assert_eq!(
        states.1.status,
        DeliveryStatus::Success,
        "only a pending delivery is canceled"
    );

    let (id, other) = (first.clone(), second.clone());
    let stats = read_ok(&store, move |conn| {
        Ok((
            deliveries::endpoint_stats(conn, &id)?,
            deliveries::endpoint_stats(conn, &other)?,
        ))
    })
    .await;
    assert_eq!(
        stats.0,
        deliveries::EndpointStats {
            success: 1,
            pending: 1,
            sending: 1,
            fail: 0,
            canceled: 1,
        }
    );
    assert_eq!(
        stats.1,
        deliveries::EndpointStats {
            fail: 1,
            ..Default::default()
        }
    );

    // d1 (retrying), m3's and m4's deliveries are pending.
    let id = first.clone();
    let canceled = write_ok(&store, move |conn| {
        deliveries::cancel_pending_for_endpoint(conn, &id, 600)
    })
    .await;
    assert_eq!(canceled, 3);
    assert_eq!(
        read_ok(&store, |conn| deliveries::endpoints_with_due(conn, 10_000)).await,
        Vec::<String>::new()
    );

    let sent = read_ok(&store, move |conn| deliveries::load_for_send(conn, d3))
        .await
        .unwrap();
    assert_eq!(sent.delivery.id, d3);
    assert_eq!(*sent.message, m2.message);
    assert_eq!(sent.endpoint.as_deref(), Some(&only_b));
    let id = second.clone();
    write_ok(&store, move |conn| endpoints::delete(conn, &id, 700)).await;
    let sent = read_ok(&store, move |conn| deliveries::load_for_send(conn, d3))
        .await
        .unwrap();
    assert_eq!(sent.endpoint, None, "the endpoint was deleted");
    let missing = read_ok(&store, |conn| deliveries::load_for_send(conn, -1)).await;
    assert!(missing.is_none());
}

/// An application lookup returns each committed change, also after an
/// earlier lookup. On SQLite applications come from memory after the first
/// lookup, so this covers emptying that cache.
pub(super) async fn application_lookups_follow_changes(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let shop = application(Some("shop"), "Shop");
    let saved = shop.clone();
    write_ok(&store, move |conn| applications::insert(conn, &saved)).await;
    for key in [shop.id.as_str(), "shop"] {
        let found = store.application(key).await.unwrap();
        assert_eq!(found.as_deref(), Some(&shop), "{key}");
    }
    if let Some(cache) = &store.inner.send_cache {
        assert!(
            cache.application("shop").1.is_some(),
            "the application is kept"
        );
    }

    let mut renamed = shop.clone();
    renamed.uid = Some("store".to_owned());
    renamed.name = "Store".to_owned();
    let saved = renamed.clone();
    write_ok(&store, move |conn| applications::update(conn, &saved)).await;
    assert_eq!(store.application("shop").await.unwrap(), None);
    for key in [shop.id.as_str(), "store"] {
        let found = store.application(key).await.unwrap();
        assert_eq!(found.as_deref(), Some(&renamed), "{key}");
    }

    let id = shop.id.clone();
    assert!(write_ok(&store, move |conn| applications::delete(conn, &id)).await);
    for key in [shop.id.as_str(), "store"] {
        assert_eq!(store.application(key).await.unwrap(), None, "{key}");
    }
}

/// Saves two endpoints of `app_1` and creates a message that goes to both
/// through [`Store::create_message`], as the API does.
async fn message_to_two_endpoints(store: &Store) -> ([Endpoint; 2], messages::Created) {
    let endpoints: [Endpoint; 2] = save_endpoints(
        store,
        vec![endpoint("app_1", None), endpoint("app_1", None)],
    )
    .await
    .try_into()
    .unwrap();
    let created = store
        .create_message(message("app_1", "a", None, 100))
        .await
        .unwrap();
    (endpoints, created)
}

/// Returns the id of the delivery of `created` to `endpoint`.
fn delivery_to(created: &messages::Created, endpoint: &Endpoint) -> i64 {
    created
        .deliveries
        .iter()
        .find(|d| d.endpoint_id == endpoint.id)
        .expect("a delivery to each endpoint")
        .delivery_id
}

/// An attempt's load returns each committed change to its endpoint and its
/// message, also after an earlier load. On SQLite the two come from memory
/// after the first load, so this covers emptying that cache.
pub(super) async fn attempt_reads_follow_changes(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ([first, second], created) = message_to_two_endpoints(&store).await;
    let (to_first, to_second) = (
        delivery_to(&created, &first),
        delivery_to(&created, &second),
    );
    let load = |id: i64| {
        let store = store.clone();
        async move {
            store
                .load_for_send(id)
                .await
                .expect("the read succeeds")
                .expect("the delivery exists")
        }
    };

    let loaded = load(to_first).await;
    assert_eq!(loaded.delivery.id, to_first);
    assert_eq!(*loaded.message, created.message);
    assert_eq!(loaded.endpoint.as_deref(), Some(&first));
    load(to_second).await;
    let cached = || {
        let cache = store.inner.send_cache.as_ref()?;
        let found = cache.lookup(&created.message.id, &first.id);
        Some((found.message.is_some(), found.endpoint.is_some()))
    };
    if backend == Backend::Sqlite {
        // Both deliveries made their first read: the message has left, the
        // endpoint stays.
        assert_eq!(cached(), Some((false, true)));
    }
    let again = load(to_first).await;
    assert_eq!(*again.message, created.message);
    assert_eq!(again.endpoint.as_deref(), Some(&first));
    if backend == Backend::Sqlite {
        // Read back from the store, the message is kept again.
        assert_eq!(cached(), Some((true, true)));
    }

    let mut edited = first.clone();
    edited.url = "http://127.0.0.1:10/hook".to_owned();
    edited.headers.insert("x-team".to_owned(), "b".to_owned());
    edited.updated_at = 200;
    let saved = edited.clone();
    write_ok(&store, move |conn| endpoints::save(conn, &saved, true)).await;
    assert_eq!(load(to_first).await.endpoint.as_deref(), Some(&edited));

    let id = first.id.clone();
    write_ok(&store, move |conn| endpoints::disable(conn, &id, 300)).await;
    let disabled = load(to_first).await.endpoint.expect("the endpoint exists");
    assert!(disabled.disabled, "the endpoint is disabled");

    let msg_id = created.message.id.clone();
    write_ok(&store, move |conn| messages::expunge_payload(conn, &msg_id)).await;
    assert_eq!(load(to_second).await.message.payload, None);

    let id = second.id.clone();
    write_ok(&store, move |conn| endpoints::delete(conn, &id, 400)).await;
    assert_eq!(
        load(to_second).await.endpoint,
        None,
        "the endpoint was deleted"
    );
}

/// An attempt's first read of a delivery that a new message created returns
/// the row as stored, and a delivery canceled before that read comes back
/// canceled. On SQLite the first read comes from memory.
pub(super) async fn new_delivery_reads_match_store(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ([enabled, disabled], created) = message_to_two_endpoints(&store).await;
    let stored = |id: i64| read_ok(&store, move |conn| deliveries::get(conn, id));

    let id = delivery_to(&created, &enabled);
    let expected = stored(id).await.expect("the delivery exists");
    assert_eq!(expected.status, DeliveryStatus::Pending);
    let first = store.load_for_send(id).await.unwrap().unwrap();
    assert_eq!(first.delivery, expected);
    let second = store.load_for_send(id).await.unwrap().unwrap();
    assert_eq!(second.delivery, expected);

    let id = delivery_to(&created, &disabled);
    let endpoint_id = disabled.id.clone();
    write_ok(&store, move |conn| {
        endpoints::disable(conn, &endpoint_id, 300)
    })
    .await;
    let loaded = store.load_for_send(id).await.unwrap().unwrap();
    assert_eq!(loaded.delivery.status, DeliveryStatus::Canceled);
    assert_eq!(Some(loaded.delivery), stored(id).await);
}

pub(super) async fn attempts_round_trip(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let mut attempt = attempt_of_new_message(&store, &ep).await;
    attempt.status = DeliveryStatus::Success;
    attempt.response_status = 200;
    attempt.response = "accepted".to_owned();
    attempt.response_truncated = true;
    attempt.duration_ms = 12;
    attempt.error_kind = Some("timeout".to_owned());
    attempt.trigger = Trigger::Manual;
    attempt.created_at = 30;
    let saved = attempt.clone();
    write_ok(&store, move |conn| attempts::insert(conn, &saved)).await;

    let (msg_id, id) = (attempt.msg_id.clone(), attempt.id.clone());
    let found = read_ok(&store, move |conn| {
        Ok((
            attempts::get(conn, "app_1", &msg_id, &id)?,
            attempts::get(conn, "app_2", &msg_id, &id)?,
            attempts::get(conn, "app_1", "msg_other", &id)?,
        ))
    })
    .await;
    assert_eq!(found, (Some(attempt.clone()), None, None));

    let id = attempt.id.clone();
    assert!(write_ok(&store, move |conn| attempts::expunge_response(conn, &id)).await);
    assert!(
        !write_ok(&store, |conn| attempts::expunge_response(
            conn,
            "atmpt_missing"
        ))
        .await
    );
    let (msg_id, id) = (attempt.msg_id.clone(), attempt.id.clone());
    let found = read_ok(&store, move |conn| {
        attempts::get(conn, "app_1", &msg_id, &id)
    })
    .await
    .unwrap();
    assert_eq!(found.response, retention::EXPUNGED_RESPONSE);
}

pub(super) async fn app_tokens_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let first = app_token(1, "app_1", Some("s1"), 1_000);
    let second = app_token(2, "app_1", Some("s2"), 2_000);
    let other = app_token(3, "app_2", None, 3_000);
    let saved = vec![first.clone(), second.clone(), other.clone()];
    insert_all(&store, saved, app_tokens::insert).await;
    let get = |byte: u8| {
        let store = store.clone();
        async move { read_ok(&store, move |conn| app_tokens::get(conn, &[byte; 32])).await }
    };
    assert_eq!(get(1).await, Some(first.clone()));
    assert_eq!(get(9).await, None);
    assert!(first.is_valid_at(999));
    assert!(!first.is_valid_at(1_000));

    let revoked = write_ok(&store, |conn| {
        Ok((
            app_tokens::revoke(conn, &[1; 32], 500)?,
            app_tokens::revoke(conn, &[1; 32], 600)?,
            app_tokens::revoke(conn, &[9; 32], 600)?,
        ))
    })
    .await;
    assert_eq!(revoked, (true, false, false));
    let found = get(1).await.unwrap();
    assert_eq!(found.revoked_at, Some(500));
    assert!(!found.is_valid_at(600));

    // Only the session named, and only where it moves the expiry earlier.
    let sessions = vec!["s2".to_owned(), "s9".to_owned()];
    let changed = write_ok(&store, move |conn| {
        app_tokens::expire_all(conn, "app_1", 1_500, Some(&sessions))
    })
    .await;
    assert_eq!(changed, 1);
    assert_eq!(get(2).await.unwrap().expires_at, 1_500);
    assert_eq!(get(1).await.unwrap().expires_at, 1_000);
    let changed = write_ok(&store, |conn| {
        app_tokens::expire_all(conn, "app_1", 800, None)
    })
    .await;
    assert_eq!(changed, 2);
    assert_eq!(get(1).await.unwrap().expires_at, 800);
    assert_eq!(
        get(3).await,
        Some(other.clone()),
        "another application's token"
    );

    let deleted = write_ok(&store, |conn| app_tokens::delete_expired(conn, 900)).await;
    assert_eq!(deleted, 2);
    assert_eq!(get(1).await, None);
    assert_eq!(get(2).await, None);
    assert_eq!(get(3).await, Some(other));
}

pub(super) fn dead_letter(
    source: &str,
    origin: &str,
    key: Option<&[u8]>,
) -> dead_letters::DeadLetter {
    dead_letters::DeadLetter {
        id: ids::new_id(ids::DEAD_LETTER),
        source: source.to_owned(),
        origin: origin.to_owned(),
        reason: "payload is not JSON".to_owned(),
        reason_kind: "invalid_json".to_owned(),
        key: key.map(<[u8]>::to_vec),
        value: vec![0, 1, 2, 255],
        created_at: 40,
    }
}

pub(super) async fn dead_letters_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let first = dead_letter("orders", "orders/0/1", Some(b"key"));
    let second = dead_letter("orders", "orders/0/2", None);
    let elsewhere = dead_letter("events", "orders/0/1", None);
    let repeated = dead_letter("orders", "orders/0/1", None);
    let letters = [first.clone(), second.clone(), elsewhere, repeated];
    let inserted = write_ok(&store, move |conn| {
        letters
            .iter()
            .map(|letter| dead_letters::insert(conn, letter))
            .collect::<Result<Vec<_>>>()
    })
    .await;
    assert_eq!(
        inserted,
        [true, true, true, false],
        "the same origin is kept once"
    );

    let page = page(10, None, false);
    let found = read_ok(&store, move |conn| {
        Ok((
            dead_letters::list(conn, "orders", &page)?,
            dead_letters::count(conn, "orders")?,
            dead_letters::count(conn, "events")?,
            dead_letters::count(conn, "none")?,
        ))
    })
    .await;
    assert_eq!(found, (vec![first, second], 2, 1, 0));
}

pub(super) async fn poller_pages_and_positions(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ep = save_endpoints(&store, vec![endpoint("app_1", Some(vec!["a", "b"]))])
        .await
        .remove(0);
    let mut sent = Vec::new();
    for (index, event_type) in ["a", "c", "b", "a", "b"].into_iter().enumerate() {
        let mut msg = message("app_1", event_type, None, index as i64);
        if index == 2 {
            msg.channels = Some(vec!["x".to_owned()]);
        }
        sent.push(create_message(&store, msg).await.message);
        create_message(&store, message("app_2", "a", None, index as i64)).await;
    }
    let ids: Vec<String> = sent.iter().map(|m| m.id.clone()).collect();

    let poll = |iterator: String, limit: usize, filters: poller::Filters| {
        let (store, ep) = (store.clone(), ep.clone());
        async move {
            let page = read_ok(&store, move |conn| {
                poller::page(conn, &ep, &iterator, limit, &filters)
            })
            .await;
            let ids: Vec<String> = page.messages.into_iter().map(|m| m.id).collect();
            (ids, page.iterator, page.done)
        }
    };
    let all = poller::Filters::default();
    assert_eq!(
        poll(String::new(), 10, all.clone()).await,
        (
            vec![
                ids[0].clone(),
                ids[2].clone(),
                ids[3].clone(),
                ids[4].clone()
            ],
            ids[4].clone(),
            true
        ),
        "the endpoint does not take type c"
    );
    assert_eq!(
        poll(String::new(), 2, all.clone()).await,
        (vec![ids[0].clone(), ids[2].clone()], ids[2].clone(), false)
    );
    assert_eq!(
        poll(ids[2].clone(), 2, all.clone()).await,
        (vec![ids[3].clone(), ids[4].clone()], ids[4].clone(), false)
    );
    assert_eq!(
        poll(ids[4].clone(), 2, all.clone()).await,
        (vec![], ids[4].clone(), true)
    );
    let only_b = poller::Filters {
        event_type: Some("b".to_owned()),
        channel: None,
    };
    assert_eq!(
        poll(String::new(), 10, only_b).await,
        (vec![ids[2].clone(), ids[4].clone()], ids[4].clone(), true)
    );
    let channel_x = poller::Filters {
        event_type: None,
        channel: Some("x".to_owned()),
    };
    assert_eq!(
        poll(String::new(), 10, channel_x).await,
        (vec![ids[2].clone()], ids[4].clone(), true)
    );

    let (endpoint_id, position) = (ep.id.clone(), ids[2].clone());
    let before = write_ok(&store, move |conn| {
        let before = poller::consumer_position(conn, &endpoint_id, "reader")?;
        poller::set_consumer_position(conn, &endpoint_id, "reader", &position, 10)?;
        Ok(before)
    })
    .await;
    assert_eq!(before, None);
    let (endpoint_id, position) = (ep.id.clone(), ids[4].clone());
    write_ok(&store, move |conn| {
        poller::set_consumer_position(conn, &endpoint_id, "reader", &position, 20)
    })
    .await;
    let endpoint_id = ep.id.clone();
    let positions = read_ok(&store, move |conn| {
        Ok((
            poller::consumer_position(conn, &endpoint_id, "reader")?,
            poller::consumer_position(conn, &endpoint_id, "other")?,
            poller::consumer_position(conn, "ep_other", "reader")?,
        ))
    })
    .await;
    assert_eq!(positions, (Some(ids[4].clone()), None, None));
}

pub(super) async fn settings_round_trip(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let values = write_ok(&store, |conn| {
        let before = settings::get(conn, "admin_token_sha256")?;
        settings::put(conn, "admin_token_sha256", "first")?;
        let first = settings::get(conn, "admin_token_sha256")?;
        settings::put(conn, "admin_token_sha256", "second")?;
        Ok((before, first))
    })
    .await;
    assert_eq!(values, (None, Some("first".to_owned())));
    let value = read_ok(&store, |conn| settings::get(conn, "admin_token_sha256")).await;
    assert_eq!(value.as_deref(), Some("second"));
}

pub(super) async fn tasks_round_trip(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let mut full = task(TaskKind::BulkReplay, &ep, 10, 20);
    full.filter = crate::model::TaskFilter {
        event_types: Some(vec!["a".to_owned()]),
        channel: Some("c1".to_owned()),
        tag: Some("t1".to_owned()),
        status: Some(2),
        status_code_class: Some(500),
    };
    full.cursor = Some("msg_cursor".to_owned());
    full.messages_scanned = 4;
    full.messages_sent = 3;
    full.messages_expunged = 1;
    full.error = Some("none yet".to_owned());
    let mut ended = Vec::new();
    for (status, updated_at) in [
        (TaskStatus::Finished, 100),
        (TaskStatus::Failed, 200),
        (TaskStatus::Finished, 300),
    ] {
        let mut done = task(TaskKind::Recover, &ep, 0, 10);
        done.status = status;
        done.updated_at = updated_at;
        ended.push(done);
    }
    let running = task(TaskKind::ReplayMissing, &ep, 0, 10);
    let saved = [vec![full.clone()], ended.clone(), vec![running.clone()]].concat();
    insert_all(&store, saved, tasks::insert).await;

    let id = full.id.clone();
    assert_eq!(
        read_ok(&store, move |conn| tasks::get(conn, &id)).await,
        Some(full.clone())
    );
    assert_eq!(
        read_ok(&store, |conn| tasks::get(conn, "qtask_missing")).await,
        None
    );
    let running_ids = |limit: usize| {
        let store = store.clone();
        async move {
            read_ok(&store, move |conn| tasks::running(conn, limit))
                .await
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        running_ids(10).await,
        vec![full.id.clone(), running.id.clone()]
    );
    assert_eq!(running_ids(1).await, vec![full.id.clone()]);

    // Ended before 250: the first two; with a limit of one, one at a time.
    let deleted = write_ok(&store, |conn| {
        Ok((
            tasks::delete_ended_before(conn, 250, 1)?,
            tasks::delete_ended_before(conn, 250, 10)?,
            tasks::delete_ended_before(conn, 250, 10)?,
        ))
    })
    .await;
    assert_eq!(deleted, (1, 1, 0));
    let remaining = read_ok(&store, |conn| {
        tasks::list(conn, &page(10, None, false), &Default::default())
    })
    .await;
    assert_eq!(remaining, vec![full, ended[2].clone(), running]);
}

pub(super) async fn operational_endpoints_follow_config(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let urls: Vec<String> = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
        .map(str::to_owned)
        .to_vec();
    let secret = crate::model::secret::generate();
    let (configured, key) = (urls.clone(), secret.clone());
    let app_id = write_ok(&store, move |conn| {
        operational::sync(conn, &configured, &key, 10)
    })
    .await
    .unwrap();
    let app = read_ok(&store, |conn| {
        applications::get(conn, operational::APPLICATION_UID)
    })
    .await
    .unwrap();
    assert_eq!(app.id, app_id);
    assert_eq!(app.name, "hookd operational webhooks");
    let listed = |app_id: &str| {
        let (store, app_id) = (store.clone(), app_id.to_owned());
        async move {
            read_ok(&store, move |conn| endpoints::list_enabled(conn, &app_id))
                .await
                .into_iter()
                .map(|e| (e.uid.unwrap(), e.url, e.secret))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(&app_id).await,
        vec![
            ("operational-0".to_owned(), urls[0].clone(), secret.clone()),
            ("operational-1".to_owned(), urls[1].clone(), secret.clone()),
        ]
    );

    let other_secret = crate::model::secret::generate();
    let key = other_secret.clone();
    let again = write_ok(&store, move |conn| {
        operational::sync(conn, &["http://127.0.0.1:9/c".to_owned()], &key, 20)
    })
    .await;
    assert_eq!(again.as_ref(), Some(&app_id), "the same application");
    assert_eq!(
        listed(&app_id).await,
        vec![(
            "operational-0".to_owned(),
            "http://127.0.0.1:9/c".to_owned(),
            other_secret
        )]
    );

    let id = app_id.clone();
    let created = write_ok(&store, move |conn| {
        operational::emit(
            conn,
            &id,
            operational::ATTEMPT_EXHAUSTED,
            json!({"msgId": "msg_1"}),
            1_700_000_000_000,
        )
    })
    .await;
    let sent = message_of_only_delivery(&store, &created).await;
    assert_eq!(sent.event_type, operational::ATTEMPT_EXHAUSTED);
    assert_eq!(sent.created_at, 1_700_000_000_000);
    let payload: serde_json::Value =
        serde_json::from_str(sent.payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({
            "type": "message.attempt.exhausted",
            "timestamp": "2023-11-14T22:13:20.000Z",
            "data": {"msgId": "msg_1"},
        })
    );

    let ep = endpoint(&app_id, None);
    let data = read_ok(&store, move |conn| {
        operational::endpoint_data(conn, &ep, Some(1_700_000_000_000))
            .map(|data| (ep.id.clone(), data))
    })
    .await;
    assert_eq!(
        data.1,
        json!({
            "appId": app_id,
            "appUid": operational::APPLICATION_UID,
            "endpointId": data.0,
            "endpointUid": null,
            "failSince": "2023-11-14T22:13:20.000Z",
        })
    );

    let none = write_ok(&store, |conn| operational::sync(conn, &[], "", 30)).await;
    assert_eq!(none, None);
    assert_eq!(listed(&app_id).await, vec![]);
}

pub(super) async fn attempt_response_with_nul_is_stored(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let mut attempt = attempt_of_new_message(&store, &ep).await;
    // A receiver's body may hold NUL bytes, which PostgreSQL text cannot.
    attempt.response = "before\0after".to_owned();
    let saved = attempt.clone();
    write_ok(&store, move |conn| {
        deliveries::record_attempt(
            conn,
            &saved,
            deliveries::NextStep::RetryAt(100),
            20,
            &deliveries::RecordRules::default(),
        )
    })
    .await;
    let (msg_id, id) = (attempt.msg_id.clone(), attempt.id.clone());
    let found = read_ok(&store, move |conn| {
        attempts::get(conn, "app_1", &msg_id, &id)
    })
    .await
    .unwrap();
    assert_eq!(found.response, "before\u{fffd}after");
}
