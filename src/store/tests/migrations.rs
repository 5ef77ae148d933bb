//! Conformance tests of the schema migrations: a store opens a database
//! that the previous release left behind and reads its rows, a second
//! migration changes nothing, and a schema newer than this hookd is rejected.
//!
//! The previous release's schema is SQLite's `user_version` 5 (before the
//! tasks table) and PostgreSQL's version 1 (before the cluster tables).

use super::*;
use crate::model::{Application, Delivery, EventType, PreviousSecret};

/// Schema version of the previous release, per backend.
fn previous_version(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 5,
        Backend::Postgres => 1,
    }
}

/// Schema version of this release, per backend.
fn latest_version(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => schema::MIGRATIONS.len(),
        Backend::Postgres => schema_postgres::MIGRATIONS.len(),
    }
}

/// Runs `sql` on a new connection to the test database, outside the store.
fn run_sql(db: &TestDb, sql: &str) {
    match db.database() {
        Database::Sqlite { data_dir } => {
            let conn = open_sqlite(&data_dir.join(SQLITE_FILE), false).unwrap();
            conn.execute_batch(sql).unwrap();
        }
        Database::Postgres { url } => off_runtime(|| {
            let mut client = connect_postgres(url).unwrap();
            client.batch_execute(sql).unwrap();
        }),
    }
}

/// Migrates an empty test database to `version` only, as an older hookd
/// would have left it.
fn migrate_to(db: &TestDb, version: usize) {
    match db.database() {
        Database::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir).unwrap();
            let conn = open_sqlite(&data_dir.join(SQLITE_FILE), false).unwrap();
            for (index, sql) in schema::MIGRATIONS[..version].iter().enumerate() {
                conn.execute_batch(&format!(
                    "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                    index + 1
                ))
                .unwrap();
            }
        }
        Database::Postgres { url } => off_runtime(|| {
            let mut client = connect_postgres(url).unwrap();
            let reached = schema_postgres::migrate(&mut client, Some(version)).unwrap();
            assert_eq!(reached, version);
        }),
    }
}

/// Reads the schema version the database records.
fn recorded_version(db: &TestDb) -> usize {
    match db.database() {
        Database::Sqlite { data_dir } => {
            let conn = open_sqlite(&data_dir.join(SQLITE_FILE), true).unwrap();
            schema::version(&conn).unwrap()
        }
        Database::Postgres { url } => off_runtime(|| {
            let mut client = connect_postgres(url).unwrap();
            let rows = client
                .query("SELECT version FROM hookd_schema", &[])
                .unwrap();
            assert_eq!(rows.len(), 1, "hookd_schema has one row");
            rows[0].get::<_, i64>(0) as usize
        }),
    }
}

/// Writes a literal of these bytes, given in hex, in the backend's SQL.
fn blob(backend: Backend, hex: &str) -> String {
    match backend {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    }
}

pub(super) async fn store_opens_previous_schema(backend: Backend) {
    let db = TestDb::new(backend);
    migrate_to(&db, previous_version(backend));
    assert_eq!(recorded_version(&db), previous_version(backend));

    let app_id = ids::new_id(ids::APPLICATION);
    let endpoint_id = ids::new_id(ids::ENDPOINT);
    let msg_id = ids::new_id(ids::MESSAGE);
    let attempt_id = ids::new_id(ids::ATTEMPT);
    let letter_id = ids::new_id(ids::DEAD_LETTER);
    let secret = crate::model::secret::generate();
    let previous_secret = crate::model::secret::generate();
    let token_hex = "01".repeat(32);
    run_sql(
        &db,
        &format!(
            r#"
            INSERT INTO settings (key, value) VALUES ('admin_token_sha256', 'abc123');
            INSERT INTO applications (id, uid, name, rate_limit, metadata, created_at, updated_at)
                VALUES ('{app_id}', 'shop', 'Shop', 5, '{{"team":"billing"}}', 10, 11);
            INSERT INTO event_types (name, description, archived, deprecated, schemas,
                    group_name, feature_flags, created_at, updated_at)
                VALUES ('invoice.paid', 'Paid', 0, 1, '{{"1":{{"type":"object"}}}}',
                    'invoice', '["beta"]', 30, 31);
            INSERT INTO endpoints (id, app_id, uid, url, description, rate_limit, disabled,
                    event_types, channels, secret, previous_secrets, metadata, headers,
                    retry_schedule_ms, created_at, updated_at, failing_since)
                VALUES ('{endpoint_id}', '{app_id}', 'main', 'http://127.0.0.1:9/', 'kept', NULL, 0,
                    '["a"]', NULL, '{secret}', '[{{"secret":"{previous_secret}","expires_at":25}}]',
                    '{{}}', '{{"x-extra":"1"}}', '[1000,5000]', 20, 21, 15);
            INSERT INTO messages (id, app_id, event_type, event_id, channels, tags, payload, created_at)
                VALUES ('{msg_id}', '{app_id}', 'a', 'order-1', '["c1"]', NULL, '{{"amount":5}}', 40);
            INSERT INTO deliveries (msg_id, endpoint_id, app_id, trigger, status, attempts,
                    next_attempt_at, created_at, updated_at)
                VALUES ('{msg_id}', '{endpoint_id}', '{app_id}', 0, 1, 1, 500, 40, 41);
            INSERT INTO attempts (id, delivery_id, msg_id, endpoint_id, app_id, url, status,
                    response_status, response, response_truncated, duration_ms, error_kind,
                    trigger, created_at)
                VALUES ('{attempt_id}', 1, '{msg_id}', '{endpoint_id}', '{app_id}',
                    'http://127.0.0.1:9/', 2, 500, 'oops', 0, 7, NULL, 0, 45);
            INSERT INTO dead_letters (id, source, origin, reason, reason_kind, record_key, value, created_at)
                VALUES ('{letter_id}', 'orders', 'orders/0/1', 'not JSON', 'invalid_json', NULL,
                    {value}, 50);
            INSERT INTO poller_consumers (endpoint_id, consumer_id, iterator, updated_at)
                VALUES ('{endpoint_id}', 'reader', '{msg_id}', 60);
            INSERT INTO app_tokens (token_sha256, app_id, session_id, read_only, feature_flags,
                    created_at, expires_at, revoked_at)
                VALUES ({token}, '{app_id}', 's1', 1, '["beta"]', 70, 9000, NULL);
            "#,
            value = blob(backend, "00ff"),
            token = blob(backend, &token_hex),
        ),
    );

    let store = db.open(None).unwrap();
    assert_eq!(recorded_version(&db), latest_version(backend));

    let app = read_ok(&store, |conn| applications::get(conn, "shop")).await;
    assert_eq!(
        app,
        Some(Application {
            id: app_id.clone(),
            uid: Some("shop".to_owned()),
            name: "Shop".to_owned(),
            rate_limit: Some(5),
            metadata: BTreeMap::from([("team".to_owned(), "billing".to_owned())]),
            created_at: 10,
            updated_at: 11,
        })
    );
    let event_type = read_ok(&store, |conn| event_types::get(conn, "invoice.paid")).await;
    assert_eq!(
        event_type,
        Some(EventType {
            name: "invoice.paid".to_owned(),
            description: "Paid".to_owned(),
            archived: false,
            deprecated: true,
            schemas: Some(serde_json::json!({"1": {"type": "object"}})),
            group_name: Some("invoice".to_owned()),
            feature_flags: Some(vec!["beta".to_owned()]),
            created_at: 30,
            updated_at: 31,
        })
    );
    let expected_endpoint = Endpoint {
        id: endpoint_id.clone(),
        app_id: app_id.clone(),
        uid: Some("main".to_owned()),
        url: "http://127.0.0.1:9/".to_owned(),
        description: "kept".to_owned(),
        rate_limit: None,
        disabled: false,
        event_types: Some(vec!["a".to_owned()]),
        channels: None,
        secret,
        previous_secrets: vec![PreviousSecret {
            secret: previous_secret,
            expires_at: 25,
        }],
        metadata: BTreeMap::new(),
        headers: BTreeMap::from([("x-extra".to_owned(), "1".to_owned())]),
        retry_schedule_ms: Some(vec![1_000, 5_000]),
        created_at: 20,
        updated_at: 21,
    };
    let (id, app) = (endpoint_id.clone(), app_id.clone());
    let found = read_ok(&store, move |conn| endpoints::get(conn, &app, &id)).await;
    assert_eq!(found, Some(expected_endpoint));
    let (id, app) = (msg_id.clone(), app_id.clone());
    let found = read_ok(&store, move |conn| messages::get(conn, &app, &id)).await;
    assert_eq!(
        found,
        Some(Message {
            id: msg_id.clone(),
            app_id: app_id.clone(),
            event_type: "a".to_owned(),
            event_id: Some("order-1".to_owned()),
            channels: Some(vec!["c1".to_owned()]),
            tags: None,
            payload: Some(r#"{"amount":5}"#.to_owned()),
            created_at: 40,
        })
    );
    let found = read_ok(&store, |conn| deliveries::get(conn, 1)).await;
    assert_eq!(
        found,
        Some(Delivery {
            id: 1,
            msg_id: msg_id.clone(),
            endpoint_id: endpoint_id.clone(),
            app_id: app_id.clone(),
            trigger: Trigger::Scheduled,
            status: DeliveryStatus::Pending,
            attempts: 1,
            next_attempt_at: Some(500),
            created_at: 40,
        })
    );
    let (app, msg, id) = (app_id.clone(), msg_id.clone(), attempt_id.clone());
    let found = read_ok(&store, move |conn| attempts::get(conn, &app, &msg, &id)).await;
    assert_eq!(
        found,
        Some(Attempt {
            id: attempt_id,
            delivery_id: 1,
            msg_id: msg_id.clone(),
            endpoint_id: endpoint_id.clone(),
            app_id: app_id.clone(),
            url: "http://127.0.0.1:9/".to_owned(),
            status: DeliveryStatus::Fail,
            response_status: 500,
            response: "oops".to_owned(),
            response_truncated: false,
            duration_ms: 7,
            error_kind: None,
            trigger: Trigger::Scheduled,
            created_at: 45,
        })
    );
    let letters = read_ok(&store, |conn| {
        dead_letters::list(conn, "orders", &pagination::page(10, None, false))
    })
    .await;
    assert_eq!(
        letters,
        vec![dead_letters::DeadLetter {
            id: letter_id,
            source: "orders".to_owned(),
            origin: "orders/0/1".to_owned(),
            reason: "not JSON".to_owned(),
            reason_kind: "invalid_json".to_owned(),
            key: None,
            value: vec![0x00, 0xff],
            created_at: 50,
        }]
    );
    let id = endpoint_id.clone();
    let position = read_ok(&store, move |conn| {
        poller::consumer_position(conn, &id, "reader")
    })
    .await;
    assert_eq!(position, Some(msg_id.clone()));
    let token = read_ok(&store, |conn| app_tokens::get(conn, &[1; 32])).await;
    assert_eq!(
        token,
        Some(app_tokens::AppToken {
            token_sha256: [1; 32],
            app_id: app_id.clone(),
            session_id: Some("s1".to_owned()),
            read_only: true,
            feature_flags: vec!["beta".to_owned()],
            created_at: 70,
            expires_at: 9_000,
            revoked_at: None,
        })
    );
    let setting = read_ok(&store, |conn| settings::get(conn, "admin_token_sha256")).await;
    assert_eq!(setting.as_deref(), Some("abc123"));

    // New rows take the next ids and the tables of the newer migrations.
    let app = app_id.clone();
    let created = write_ok(&store, move |conn| {
        messages::create(conn, message(&app, "a", None, 80))
    })
    .await;
    assert_eq!(created.deliveries.len(), 1);
    assert_eq!(created.deliveries[0].delivery_id, 2);
    let migrated = read_ok(&store, move |conn| endpoints::get_by_id(conn, &endpoint_id))
        .await
        .unwrap();
    let recover = task(TaskKind::Recover, &migrated, 0, 100);
    let saved = recover.clone();
    write_ok(&store, move |conn| tasks::insert(conn, &saved)).await;
    let id = recover.id.clone();
    assert_eq!(
        read_ok(&store, move |conn| tasks::get(conn, &id)).await,
        Some(recover)
    );
}

pub(super) async fn second_migrate_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let database = db.database().clone();
    let first = off_runtime(|| migrate(&database)).unwrap();
    let second = off_runtime(|| migrate(&database)).unwrap();
    assert_eq!(first, latest_version(backend));
    assert_eq!(second, latest_version(backend));
    assert_eq!(recorded_version(&db), latest_version(backend));

    // A store opens the migrated database without migrating again.
    let store = db.open(None).unwrap();
    let created = write_ok(&store, |conn| {
        messages::create(conn, message("app_1", "a", None, 1))
    })
    .await;
    store.close();
    let third = off_runtime(|| migrate(&database)).unwrap();
    assert_eq!(third, latest_version(backend));
    let store = db.open(None).unwrap();
    let id = created.message.id.clone();
    let found = read_ok(&store, move |conn| messages::get(conn, "app_1", &id)).await;
    assert_eq!(found, Some(created.message));
}

pub(super) async fn newer_schema_is_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let database = db.database().clone();
    off_runtime(|| migrate(&database)).unwrap();
    run_sql(
        &db,
        match backend {
            Backend::Sqlite => "PRAGMA user_version = 99",
            Backend::Postgres => "UPDATE hookd_schema SET version = 99",
        },
    );

    let err = off_runtime(|| migrate(&database)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "stored data is invalid: the database has schema version 99, newer than this hookd \
             knows ({}); run a newer hookd",
            latest_version(backend)
        )
    );
    let err = db.open(None).err().expect("opening a newer schema fails");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(recorded_version(&db), 99);
}
