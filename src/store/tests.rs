//! The store's conformance suite: every test runs against a real SQLite
//! file and against a real PostgreSQL database (see [`TestDb`]), through
//! the `conformance!` list at the end of this file. The submodules hold
//! more of the list, and `outage` holds a PostgreSQL-only test of a server
//! that drops its connections.

mod concurrency;
mod migrations;
mod operations;
mod outage;
mod pagination;

use std::collections::BTreeMap;

use concurrency::*;
use migrations::*;
use operations::*;
use pagination::*;

use super::*;
use crate::model::{
    ids, now_ms, Attempt, DeliveryStatus, Endpoint, Message, Task, TaskKind, TaskStatus, Trigger,
};

/// The database a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A new, empty database for one test: a temporary folder for SQLite, or a
/// database created on the PostgreSQL server for PostgreSQL and dropped
/// when the test ends. The server is `HOOKD_TEST_POSTGRES_URL`, by default
/// the one on 127.0.0.1:5432 as user postgres.
pub(crate) struct TestDb {
    database: Database,
    _dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

/// URL of the PostgreSQL server's maintenance database, for tests.
pub(crate) fn test_postgres_admin_url() -> String {
    std::env::var("HOOKD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDb {
    pub(crate) fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Self {
                    database: Database::Sqlite {
                        data_dir: dir.path().to_owned(),
                    },
                    _dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("hookd_test_{}", ids::new_id("db").to_ascii_lowercase());
                let admin = test_postgres_admin_url();
                off_runtime(|| {
                    let mut client = connect_postgres(&admin)
                        .expect("PostgreSQL runs on 127.0.0.1:5432 (or HOOKD_TEST_POSTGRES_URL)");
                    client
                        .batch_execute(&format!("CREATE DATABASE {name}"))
                        .unwrap();
                });
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                Self {
                    database: Database::Postgres {
                        url: url.to_string(),
                    },
                    _dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    pub(crate) fn open(&self, key: Option<&encryption::EncryptionKey>) -> Result<Store> {
        let database = self.database.clone();
        off_runtime(move || Store::open_database(&database, key))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let admin = test_postgres_admin_url();
        off_runtime(move || {
            if let Ok(mut client) = connect_postgres(&admin) {
                let _ =
                    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Runs `f` in a write job and returns its result; panics when it fails.
async fn write_ok<T, F>(store: &Store, f: F) -> T
where
    T: Send + 'static,
    F: Fn(&Conn) -> Result<T> + Send + 'static,
{
    store.write(f).await.expect("the write job succeeds")
}

/// Runs `f` on a reading connection and returns its result; panics when it fails.
async fn read_ok<T, F>(store: &Store, f: F) -> T
where
    T: Send + 'static,
    F: Fn(&Conn) -> Result<T> + Send + 'static,
{
    store.read(f).await.expect("the read succeeds")
}

/// Stores `rows` with `insert` in one write job, in the order given.
async fn insert_all<R, T>(store: &Store, rows: Vec<R>, insert: fn(&Conn, &R) -> Result<T>)
where
    R: Send + 'static,
    T: 'static,
{
    write_ok(store, move |conn| {
        for row in &rows {
            insert(conn, row)?;
        }
        Ok(())
    })
    .await
}

/// Runs `f` in a write job and checks that it fails with a conflict on `field`.
async fn assert_conflict<T, F>(store: &Store, field: &str, f: F)
where
    T: Send + std::fmt::Debug + 'static,
    F: Fn(&Conn) -> Result<T> + Send + 'static,
{
    let err = store.write(f).await.expect_err("the write conflicts");
    assert!(
        matches!(&err, StoreError::Conflict(name) if name == field),
        "{err:?}"
    );
}

fn endpoint(app_id: &str, event_types: Option<Vec<&str>>) -> Endpoint {
    Endpoint {
        id: ids::new_id(ids::ENDPOINT),
        app_id: app_id.to_owned(),
        uid: None,
        url: "http://127.0.0.1:9/".to_owned(),
        description: String::new(),
        rate_limit: None,
        disabled: false,
        event_types: event_types.map(|t| t.into_iter().map(str::to_owned).collect()),
        channels: None,
        secret: crate::model::secret::generate(),
        previous_secrets: Vec::new(),
        metadata: BTreeMap::new(),
        headers: BTreeMap::new(),
        retry_schedule_ms: None,
        created_at: 1,
        updated_at: 1,
    }
}

fn message(app_id: &str, event_type: &str, event_id: Option<&str>, created_at: i64) -> Message {
    Message {
        id: ids::new_id(ids::MESSAGE),
        app_id: app_id.to_owned(),
        event_type: event_type.to_owned(),
        event_id: event_id.map(str::to_owned),
        channels: None,
        tags: None,
        payload: Some(r#"{"a":"\u2028"}"#.to_owned()),
        created_at,
    }
}

fn failed_attempt(delivery_id: i64, msg_id: &str, endpoint_id: &str, app_id: &str) -> Attempt {
    Attempt {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id,
        msg_id: msg_id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        app_id: app_id.to_owned(),
        url: "http://127.0.0.1:9/".to_owned(),
        status: DeliveryStatus::Fail,
        response_status: 500,
        response: String::new(),
        response_truncated: false,
        duration_ms: 1,
        error_kind: None,
        trigger: Trigger::Scheduled,
        created_at: 10,
    }
}

async fn fan_out_matches_event_type_filters(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let all = endpoint("app_1", None);
    let only_b = endpoint("app_1", Some(vec!["b"]));
    let (all_id, only_b_id) = (all.id.clone(), only_b.id.clone());
    store
        .write(move |conn| {
            endpoints::save(conn, &all, false)?;
            endpoints::save(conn, &only_b, false)
        })
        .await
        .unwrap();

    let created = store
        .write(|conn| messages::create(conn, message("app_1", "a", None, 5)))
        .await
        .unwrap();
    let targets: Vec<&str> = created
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.as_str())
        .collect();
    assert_eq!(targets, vec![all_id.as_str()]);

    let created = store
        .write(|conn| messages::create(conn, message("app_1", "b", None, 6)))
        .await
        .unwrap();
    let mut targets: Vec<String> = created
        .deliveries
        .into_iter()
        .map(|d| d.endpoint_id)
        .collect();
    targets.sort();
    let mut expected = vec![all_id, only_b_id];
    expected.sort();
    assert_eq!(targets, expected);
}

async fn repeated_event_id_creates_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ep = endpoint("app_1", None);
    store
        .write(move |conn| endpoints::save(conn, &ep, false))
        .await
        .unwrap();

    let first = store
        .write(|conn| messages::create(conn, message("app_1", "a", Some("e1"), 5)))
        .await
        .unwrap();
    let second = store
        .write(|conn| messages::create(conn, message("app_1", "a", Some("e1"), 6)))
        .await
        .unwrap();
    assert!(first.is_new);
    assert!(!second.is_new);
    assert_eq!(second.message.id, first.message.id);
    assert_eq!(first.deliveries.len(), 1);
    assert!(second.deliveries.is_empty());

    // The same event id in another application is another message.
    let other = store
        .write(|conn| messages::create(conn, message("app_2", "a", Some("e1"), 7)))
        .await
        .unwrap();
    assert!(other.is_new);
}

async fn failed_job_rolls_back_alone_in_a_batch(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let mut jobs = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        jobs.push(tokio::spawn(async move {
            store
                .write(move |conn| {
                    settings::put(conn, &format!("key{n}"), "value")?;
                    if n % 2 == 1 {
                        return Err(StoreError::Conflict("odd".to_owned()));
                    }
                    Ok(())
                })
                .await
        }));
    }
    for (n, job) in jobs.into_iter().enumerate() {
        let result = job.await.unwrap();
        assert_eq!(result.is_ok(), n % 2 == 0, "job {n}: {result:?}");
    }
    for n in 0..20 {
        let value = store
            .read(move |conn| settings::get(conn, &format!("key{n}")))
            .await
            .unwrap();
        assert_eq!(value.is_some(), n % 2 == 0, "key{n}");
    }
}

/// A write whose job the writer has queued, to be awaited later.
type QueuedWrite = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Polls `write` once, which queues its job, and returns it.
fn queue(write: impl std::future::Future<Output = Result<()>> + Send + 'static) -> QueuedWrite {
    let mut write: QueuedWrite = Box::pin(write);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(write.as_mut().poll(&mut cx).is_pending());
    write
}

/// Runs `jobs` in one batch behind a first job that sets `first` and keeps
/// the writer busy until all of them are queued. Returns each job's result and
/// how often the first job ran.
async fn run_in_one_batch(
    store: &Store,
    jobs: Vec<fn(&Conn) -> Result<()>>,
) -> (Vec<Result<()>>, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let counted = runs.clone();
    let writer = store.clone();
    let first = queue(async move {
        writer
            .write(move |conn| {
                counted.fetch_add(1, Ordering::SeqCst);
                // Returns at once when it runs again: `release` is gone by then.
                let _ = hold.recv_timeout(Duration::from_secs(10));
                settings::put(conn, "first", "kept")
            })
            .await
    });
    let queued: Vec<QueuedWrite> = jobs
        .into_iter()
        .map(|job| {
            let writer = store.clone();
            queue(async move { writer.write(job).await })
        })
        .collect();
    drop(release);
    first.await.expect("the first job succeeds");
    let mut results = Vec::new();
    for write in queued {
        results.push(write.await);
    }
    (results, runs.load(Ordering::SeqCst))
}

async fn setting(store: &Store, key: &'static str) -> Option<String> {
    read_ok(store, move |conn| settings::get(conn, key)).await
}

/// Checks that jobs that fail without changing a row leave the rest of
/// their batch to commit as it ran, on SQLite, where a failed statement
/// undoes itself. PostgreSQL aborts the transaction, so its batch runs again.
async fn failure_without_changes_keeps_the_batch(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let (results, first_runs) = run_in_one_batch(
        &store,
        vec![
            |_conn| Err(StoreError::Conflict("refused".to_owned())),
            // The second row repeats the first job's key, so the statement
            // fails after inserting its first row.
            |conn| {
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES ('partial', 'x'), ('first', 'y')",
                    sql::params![],
                )?;
                Ok(())
            },
            |conn| settings::put(conn, "after", "kept"),
        ],
    )
    .await;

    assert!(
        matches!(results[0], Err(StoreError::Conflict(_))),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_err(), "the duplicate key fails");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let expected_runs = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => 2,
    };
    assert_eq!(first_runs, expected_runs);
    assert_eq!(setting(&store, "first").await.as_deref(), Some("kept"));
    assert_eq!(setting(&store, "partial").await, None);
    assert_eq!(setting(&store, "after").await.as_deref(), Some("kept"));
}

/// Checks that a job that fails after changing a row makes its batch roll
/// back and run again, each job in its own savepoint: the other jobs' changes commit once
/// and the failed job's are gone.
async fn failure_after_changes_runs_the_batch_again(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let (results, first_runs) = run_in_one_batch(
        &store,
        vec![
            |conn| settings::put(conn, "before", "kept"),
            |conn| {
                settings::put(conn, "failed", "written")?;
                Err(StoreError::Conflict("after a change".to_owned()))
            },
            |conn| settings::put(conn, "after", "kept"),
        ],
    )
    .await;

    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::Conflict(_))),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(first_runs, 2, "the batch ran again");
    for key in ["first", "before", "after"] {
        assert_eq!(setting(&store, key).await.as_deref(), Some("kept"), "{key}");
    }
    assert_eq!(setting(&store, "failed").await, None);
}

async fn writes_survive_reopen(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let created = store
        .write(|conn| messages::create(conn, message("app_1", "a", None, 5)))
        .await
        .unwrap();
    store.close();

    let reopened = db.open(None).unwrap();
    let id = created.message.id.clone();
    let found = reopened
        .read(move |conn| messages::get(conn, "app_1", &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.payload.as_deref(), Some(r#"{"a":"\u2028"}"#));
}

/// Opens a store in a temporary folder with one endpoint of app_1 that
/// takes every message, and returns the folder, the store and the endpoint.
async fn store_with_endpoint(backend: Backend) -> (TestDb, Store, Endpoint) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ep = endpoint("app_1", None);
    let saved = ep.clone();
    store
        .write(move |conn| endpoints::save(conn, &saved, false))
        .await
        .unwrap();
    (db, store, ep)
}

fn task(kind: TaskKind, endpoint: &Endpoint, since: i64, until: i64) -> Task {
    Task::new(kind, endpoint, Default::default(), since, until, until)
}

/// Returns the message ids of deliveries, in their order.
async fn messages_of(store: &Store, created: Vec<messages::NewDelivery>) -> Vec<String> {
    let mut ids = Vec::new();
    for delivery in created {
        let id = delivery.delivery_id;
        let found = store
            .read(move |conn| deliveries::get(conn, id))
            .await
            .unwrap()
            .unwrap();
        ids.push(found.msg_id);
    }
    ids
}

/// Stores a task, or returns the stored one's current state.
async fn save_task(store: &Store, task: Task) -> Task {
    let id = task.id.clone();
    store
        .write(move |conn| tasks::insert(conn, &task))
        .await
        .unwrap();
    store
        .read(move |conn| tasks::get(conn, &id))
        .await
        .unwrap()
        .unwrap()
}

/// Runs one step of a task: a scan of up to `limit` messages, then its page.
async fn step(store: &Store, task_id: &str, limit: usize) -> (tasks::Scan, tasks::PageOutcome) {
    let id = task_id.to_owned();
    let task = store
        .read(move |conn| tasks::get(conn, &id))
        .await
        .unwrap()
        .unwrap();
    let endpoint_id = task.endpoint_id.clone();
    let scan = store
        .read(move |conn| {
            let endpoint = endpoints::get_by_id(conn, &endpoint_id)?.expect("the endpoint exists");
            tasks::scan(conn, &task, &endpoint, limit)
        })
        .await
        .unwrap();
    let (id, applied) = (task_id.to_owned(), scan.clone());
    let outcome = store
        .write(move |conn| tasks::apply_page(conn, &id, &applied, now_ms()))
        .await
        .unwrap();
    (scan, outcome)
}

/// Stores messages of type "a" for app_1, created at `base` plus each
/// offset, and returns (message id, delivery id or 0 when none).
async fn send(store: &Store, base: i64, offsets: &[i64]) -> Vec<(String, i64)> {
    let mut sent = Vec::new();
    for offset in offsets {
        let created_at = base + offset;
        let created = store
            .write(move |conn| messages::create(conn, message("app_1", "a", None, created_at)))
            .await
            .unwrap();
        let delivery = created.deliveries.first().map_or(0, |d| d.delivery_id);
        sent.push((created.message.id, delivery));
    }
    sent
}

async fn record(
    store: &Store,
    delivery_id: i64,
    msg_id: &str,
    endpoint_id: &str,
    next: deliveries::NextStep,
) {
    let attempt = failed_attempt(delivery_id, msg_id, endpoint_id, "app_1");
    store
        .write(move |conn| {
            deliveries::record_attempt(
                conn,
                &attempt,
                next,
                20,
                &deliveries::RecordRules::default(),
            )
        })
        .await
        .unwrap();
}

async fn recover_takes_only_failed_messages_once(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let ep_id = ep.id.clone();

    // Three messages: the first fails for good, the second has a retry pending,
    // the third failed before `since`.
    let base = now_ms();
    let sent = send(&store, base, &[100, 200, -10_000]).await;
    record(
        &store,
        sent[0].1,
        &sent[0].0,
        &ep_id,
        deliveries::NextStep::GaveUp,
    )
    .await;
    record(
        &store,
        sent[1].1,
        &sent[1].0,
        &ep_id,
        deliveries::NextStep::RetryAt(base + 5_000),
    )
    .await;
    record(
        &store,
        sent[2].1,
        &sent[2].0,
        &ep_id,
        deliveries::NextStep::GaveUp,
    )
    .await;

    let recover = save_task(
        &store,
        task(TaskKind::Recover, &ep, base + 50, base + 1_000),
    )
    .await;
    let (_, outcome) = step(&store, &recover.id, 500).await;
    assert_eq!(outcome.deliveries.len(), 1, "{:?}", outcome.deliveries);
    let created = outcome.deliveries[0].delivery_id;
    let delivery = store
        .read(move |conn| deliveries::get(conn, created))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.msg_id, sent[0].0);
    assert_eq!(delivery.trigger, Trigger::Manual);
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    let after = outcome.task.unwrap();
    assert_eq!(after.status, TaskStatus::Finished);
    assert_eq!(after.messages_scanned, 2, "messages in the window");
    assert_eq!(after.messages_sent, 1);

    // The pending retry is untouched.
    let pending = sent[1].1;
    let retry = store
        .read(move |conn| deliveries::get(conn, pending))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.next_attempt_at, Some(base + 5_000));

    // A second recover finds the first message pending again, so adds nothing.
    let again = save_task(
        &store,
        task(TaskKind::Recover, &ep, base + 50, base + 1_000),
    )
    .await;
    let (_, outcome) = step(&store, &again.id, 500).await;
    assert!(outcome.deliveries.is_empty(), "{:?}", outcome.deliveries);
}

async fn replayed_page_is_applied_once(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let ep_id = ep.id.clone();
    let base = now_ms();
    for (msg, delivery) in send(&store, base, &[1, 2, 3]).await {
        record(
            &store,
            delivery,
            &msg,
            &ep_id,
            deliveries::NextStep::Succeeded,
        )
        .await;
    }

    let replay = save_task(&store, task(TaskKind::BulkReplay, &ep, base, base + 1_000)).await;
    let (scan, outcome) = step(&store, &replay.id, 2).await;
    assert_eq!(outcome.deliveries.len(), 2);
    assert!(!scan.done, "two of three messages looked at");

    // Applying the same scan again, as a step retried after a lost reply
    // would, finds the cursor moved and creates nothing.
    let id = replay.id.clone();
    let repeated = store
        .write(move |conn| tasks::apply_page(conn, &id, &scan, now_ms()))
        .await
        .unwrap();
    assert!(repeated.deliveries.is_empty(), "{:?}", repeated.deliveries);
    assert_eq!(repeated.task.unwrap().messages_sent, 2);

    let (_, outcome) = step(&store, &replay.id, 2).await;
    assert_eq!(outcome.deliveries.len(), 1);
    let finished = outcome.task.unwrap();
    assert_eq!(finished.status, TaskStatus::Finished);
    assert_eq!(finished.messages_sent, 3);
}

async fn task_resumes_from_cursor_after_reopen(backend: Backend) {
    let (db, store, ep) = store_with_endpoint(backend).await;
    let ep_id = ep.id.clone();
    let base = now_ms();
    let sent = send(&store, base, &[1, 2, 3, 4, 5]).await;
    for (msg, delivery) in &sent {
        record(
            &store,
            *delivery,
            msg,
            &ep_id,
            deliveries::NextStep::Succeeded,
        )
        .await;
    }

    let replay = save_task(&store, task(TaskKind::BulkReplay, &ep, base, base + 1_000)).await;
    let (_, first) = step(&store, &replay.id, 2).await;
    store.close();

    let store = db.open(None).unwrap();
    let mut created = first.deliveries;
    loop {
        let (_, outcome) = step(&store, &replay.id, 2).await;
        created.extend(outcome.deliveries);
        if outcome.task.unwrap().status != TaskStatus::Running {
            break;
        }
    }
    let replayed = messages_of(&store, created).await;
    let expected: Vec<String> = sent.into_iter().map(|(id, _)| id).collect();
    assert_eq!(replayed, expected, "replayed messages, in creation order");
}

async fn replay_missing_takes_never_attempted(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let ep_id = ep.id.clone();
    let base = now_ms();
    // Attempted and failed, pending without an attempt, then canceled
    // before its first attempt.
    let sent = send(&store, base, &[1, 2, 3]).await;
    record(
        &store,
        sent[0].1,
        &sent[0].0,
        &ep_id,
        deliveries::NextStep::GaveUp,
    )
    .await;
    let canceled = sent[2].1;
    store
        .write(move |conn| deliveries::cancel(conn, canceled, 30))
        .await
        .unwrap();
    // Then the endpoint is disabled, and a message gets no delivery.
    let id = ep_id.clone();
    store
        .write(move |conn| endpoints::disable(conn, &id, 40))
        .await
        .unwrap();
    let missing = send(&store, base, &[4]).await;
    assert_eq!(missing[0].1, 0, "a disabled endpoint gets no delivery");
    let id = ep_id.clone();
    store
        .write(move |conn| {
            let mut enabled = endpoints::get_by_id(conn, &id)?.expect("the endpoint exists");
            enabled.disabled = false;
            endpoints::save(conn, &enabled, true)
        })
        .await
        .unwrap();

    let replay = save_task(
        &store,
        task(TaskKind::ReplayMissing, &ep, base, base + 1_000),
    )
    .await;
    let (_, outcome) = step(&store, &replay.id, 500).await;
    let replayed = messages_of(&store, outcome.deliveries).await;
    // The pending one was canceled by the disable too, before any attempt.
    assert_eq!(
        replayed,
        vec![sent[1].0.clone(), sent[2].0.clone(), missing[0].0.clone()],
        "messages never attempted at the endpoint"
    );
}

async fn retry_scan_returns_each_window_once(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ep = endpoint("app_1", None);
    let ep_id = ep.id.clone();
    store
        .write(move |conn| endpoints::save(conn, &ep, false))
        .await
        .unwrap();
    for (created_at, retry_at) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let created = store
            .write(move |conn| messages::create(conn, message("app_1", "a", None, created_at)))
            .await
            .unwrap();
        let attempt = failed_attempt(
            created.deliveries[0].delivery_id,
            &created.message.id,
            &ep_id,
            "app_1",
        );
        store
            .write(move |conn| {
                deliveries::record_attempt(
                    conn,
                    &attempt,
                    deliveries::NextStep::RetryAt(retry_at),
                    5,
                    &deliveries::RecordRules::default(),
                )
            })
            .await
            .unwrap();
    }
    let due = |after, until| {
        let store = store.clone();
        async move {
            store
                .read(move |conn| deliveries::retries_due_between(conn, after, until, None, 100))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.next_attempt_at)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(due(0, 1_500).await, vec![1_000]);
    assert_eq!(due(1_500, 3_000).await, vec![2_000, 3_000]);
    assert!(due(3_000, 9_000).await.is_empty());
}

async fn failing_endpoint_is_disabled_and_reported(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let secret = crate::model::secret::generate();
    let ops_app = store
        .write(move |conn| {
            operational::sync(conn, &["http://127.0.0.1:9/ops".to_owned()], &secret, 1)
        })
        .await
        .unwrap()
        .unwrap();
    let ep = endpoint("app_1", None);
    let ep_id = ep.id.clone();
    store
        .write(move |conn| endpoints::save(conn, &ep, false))
        .await
        .unwrap();
    let created = store
        .write(|conn| messages::create(conn, message("app_1", "a", None, 5)))
        .await
        .unwrap();
    let delivery_id = created.deliveries[0].delivery_id;
    let msg_id = created.message.id.clone();

    let record = |now: i64, next: deliveries::NextStep| {
        let store = store.clone();
        let attempt = failed_attempt(delivery_id, &msg_id, &ep_id, "app_1");
        let ops_app = ops_app.clone();
        async move {
            store
                .write(move |conn| {
                    let rules = deliveries::RecordRules {
                        disable_after_ms: Some(1_000),
                        operational_app_id: Some(&ops_app),
                    };
                    deliveries::record_attempt(conn, &attempt, next, now, &rules)
                })
                .await
                .unwrap()
        }
    };
    let event_types = |deliveries: Vec<messages::NewDelivery>| {
        let store = store.clone();
        let ops_app = ops_app.clone();
        async move {
            let mut types = Vec::new();
            for delivery in deliveries {
                let found = store
                    .read(move |conn| deliveries::load_for_send(conn, delivery.delivery_id))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(found.message.app_id, ops_app);
                types.push(found.message.event_type.clone());
            }
            types
        }
    };

    // Failures 1 to 3, within the disable period: nothing reported.
    for now in [100, 200, 300] {
        let created = record(now, deliveries::NextStep::RetryAt(now + 10)).await;
        assert!(created.is_empty(), "at {now}: {created:?}");
    }
    // The fourth failure reports the delivery as failing.
    let created = record(400, deliveries::NextStep::RetryAt(410)).await;
    assert_eq!(
        event_types(created).await,
        vec![operational::ATTEMPT_FAILING]
    );

    // Failing for 1,000 ms since the first failure at 100 disables the endpoint.
    let created = record(1_100, deliveries::NextStep::GaveUp).await;
    let mut types = event_types(created).await;
    types.sort();
    assert_eq!(
        types,
        vec![
            operational::ENDPOINT_DISABLED,
            operational::ATTEMPT_EXHAUSTED
        ]
    );
    let id = ep_id.clone();
    let disabled = store
        .read(move |conn| endpoints::get_by_id(conn, &id))
        .await
        .unwrap()
        .unwrap()
        .disabled;
    assert!(disabled);
}

async fn success_resets_the_failure_clock(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    let ep = endpoint("app_1", None);
    let ep_id = ep.id.clone();
    store
        .write(move |conn| endpoints::save(conn, &ep, false))
        .await
        .unwrap();
    let rules_ms = Some(1_000);
    for (now, succeed) in [(100, false), (900, true), (1_200, false), (1_900, false)] {
        let created = store
            .write(move |conn| messages::create(conn, message("app_1", "a", None, now)))
            .await
            .unwrap();
        let mut attempt = failed_attempt(
            created.deliveries[0].delivery_id,
            &created.message.id,
            &ep_id,
            "app_1",
        );
        let next = if succeed {
            attempt.status = DeliveryStatus::Success;
            deliveries::NextStep::Succeeded
        } else {
            deliveries::NextStep::RetryAt(now + 10)
        };
        store
            .write(move |conn| {
                let rules = deliveries::RecordRules {
                    disable_after_ms: rules_ms,
                    operational_app_id: None,
                };
                deliveries::record_attempt(conn, &attempt, next, now, &rules)
            })
            .await
            .unwrap();
    }
    // Failing since 1,200 only, so 700 ms at 1,900: still enabled.
    let id = ep_id.clone();
    let disabled = store
        .read(move |conn| endpoints::get_by_id(conn, &id))
        .await
        .unwrap()
        .unwrap()
        .disabled;
    assert!(!disabled);
}

async fn retention_expunges_rows_made_before_cutoff(backend: Backend) {
    let (_db, store, ep) = store_with_endpoint(backend).await;
    let ep_id = ep.id.clone();
    let old = send(&store, now_ms(), &[0, 0]).await;
    for (index, (msg, delivery)) in old.iter().enumerate() {
        let mut attempt = failed_attempt(*delivery, msg, &ep_id, "app_1");
        // An empty body has nothing to expunge and stays empty.
        attempt.response = if index == 0 {
            "secret".to_owned()
        } else {
            String::new()
        };
        store
            .write(move |conn| attempts::insert(conn, &attempt))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let young = send(&store, now_ms(), &[0]).await;

    // One row per batch: a batch that looks at fewer rows than its limit
    // is the last.
    let mut batches = Vec::new();
    loop {
        let batch = store
            .write(move |conn| retention::expunge_messages(conn, cutoff, 1))
            .await
            .unwrap();
        batches.push((batch.examined, batch.expunged));
        if batch.examined < 1 {
            break;
        }
    }
    assert_eq!(batches, vec![(1, 1), (1, 1), (0, 0)]);
    let attempts_batch = store
        .write(move |conn| retention::expunge_attempts(conn, cutoff, 10))
        .await
        .unwrap();
    assert_eq!(attempts_batch.examined, 2);
    assert_eq!(attempts_batch.expunged, 1);

    for (msg, _) in &old {
        let id = msg.clone();
        let found = store
            .read(move |conn| messages::get(conn, "app_1", &id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            found.payload, None,
            "payload of {msg}, made before the cutoff"
        );
    }
    let id = young[0].0.clone();
    let kept = store
        .read(move |conn| messages::get(conn, "app_1", &id))
        .await
        .unwrap()
        .unwrap();
    assert!(
        kept.payload.is_some(),
        "a message made after the cutoff keeps its payload"
    );
    let responses: Vec<String> = store
        .read(move |conn| {
            conn.query_map(
                "SELECT response FROM attempts ORDER BY id",
                sql::params![],
                |row| row.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(responses, vec!["EXPUNGED".to_owned(), String::new()]);

    // The watermark keeps a later run from reading the same rows again.
    let again = store
        .write(move |conn| retention::expunge_messages(conn, cutoff, 10))
        .await
        .unwrap();
    assert_eq!(again, retention::Batch::default());
}

async fn sealed_secrets_need_their_key_to_open(backend: Backend) {
    let db = TestDb::new(backend);
    let key = encryption::EncryptionKey::parse(&"11".repeat(32)).unwrap();
    let store = db.open(Some(&key)).unwrap();
    let mut saved = endpoint("app_1", None);
    saved.previous_secrets.push(crate::model::PreviousSecret {
        secret: crate::model::secret::generate(),
        expires_at: 5,
    });
    let row = saved.clone();
    store
        .write(move |conn| endpoints::save(conn, &row, false))
        .await
        .unwrap();

    let id = saved.id.clone();
    let read = store
        .read(move |conn| endpoints::get_by_id(conn, &id))
        .await
        .unwrap();
    assert_eq!(read.as_ref(), Some(&saved));
    let id = saved.id.clone();
    let (secret, previous): (String, String) = store
        .read(move |conn| {
            conn.query_one(
                "SELECT secret, previous_secrets FROM endpoints WHERE id = ?1",
                sql::params![id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .await
        .unwrap();
    assert!(encryption::is_sealed(&secret), "{secret}");
    assert!(encryption::is_sealed(&previous), "{previous}");
    store.close();

    let without = db.open(None).err().expect("no key is an error");
    assert!(
        matches!(
            without,
            StoreError::Decrypt(encryption::OpenError::NoKey { .. })
        ),
        "{without}"
    );
    let other = encryption::EncryptionKey::parse(&"22".repeat(32)).unwrap();
    let wrong = db
        .open(Some(&other))
        .err()
        .expect("another key is an error");
    assert!(
        matches!(
            wrong,
            StoreError::Decrypt(encryption::OpenError::WrongKey { .. })
        ),
        "{wrong}"
    );
    let reopened = db.open(Some(&key)).unwrap();
    let id = saved.id.clone();
    let read = reopened
        .read(move |conn| endpoints::get_by_id(conn, &id))
        .await
        .unwrap();
    assert_eq!(read, Some(saved));
}

async fn fan_out_to_many_endpoints(backend: Backend) {
    let db = TestDb::new(backend);
    let store = db.open(None).unwrap();
    // More endpoints than one multi-row insert takes.
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..150 {
        let ep = endpoint("app_1", None);
        ids.push(ep.id.clone());
        store
            .write(move |conn| endpoints::save(conn, &ep, false))
            .await
            .unwrap();
    }
    ids.sort();

    let created = store
        .write(|conn| messages::create(conn, message("app_1", "a", None, 5)))
        .await
        .unwrap();
    let targets: Vec<String> = created
        .deliveries
        .iter()
        .map(|d| d.endpoint_id.clone())
        .collect();
    assert_eq!(targets, ids, "one delivery per endpoint, in endpoint order");
    for delivery in created.deliveries {
        let id = delivery.delivery_id;
        let stored = store
            .read(move |conn| deliveries::get(conn, id))
            .await
            .unwrap()
            .expect("the delivery is stored");
        assert_eq!(stored.endpoint_id, delivery.endpoint_id, "delivery {id}");
        assert_eq!(stored.msg_id, created.message.id, "delivery {id}");
        assert_eq!(stored.status, DeliveryStatus::Pending, "delivery {id}");
        assert_eq!(stored.next_attempt_at, Some(5), "delivery {id}");
    }
}

conformance!(
    fan_out_to_many_endpoints,
    fan_out_matches_event_type_filters,
    repeated_event_id_creates_nothing,
    failed_job_rolls_back_alone_in_a_batch,
    failure_without_changes_keeps_the_batch,
    failure_after_changes_runs_the_batch_again,
    writes_survive_reopen,
    recover_takes_only_failed_messages_once,
    replayed_page_is_applied_once,
    task_resumes_from_cursor_after_reopen,
    replay_missing_takes_never_attempted,
    retry_scan_returns_each_window_once,
    failing_endpoint_is_disabled_and_reported,
    success_resets_the_failure_clock,
    retention_expunges_rows_made_before_cutoff,
    sealed_secrets_need_their_key_to_open,
    applications_round_trip,
    application_delete_removes_its_rows,
    application_uid_conflict_keeps_row,
    endpoint_uid_conflict_within_app,
    event_type_name_conflict_keeps_row,
    endpoints_round_trip,
    endpoint_state_change_emits_event,
    endpoint_secrets_are_sealed_once,
    event_types_round_trip,
    messages_round_trip,
    message_status_shows_newest_delivery,
    repeated_event_id_returns_first_message,
    deliveries_round_trip,
    attempt_reads_follow_changes,
    new_delivery_reads_match_store,
    application_lookups_follow_changes,
    attempts_round_trip,
    app_tokens_round_trip,
    dead_letters_round_trip,
    poller_pages_and_positions,
    settings_round_trip,
    tasks_round_trip,
    operational_endpoints_follow_config,
    applications_page_in_id_order,
    endpoints_page_in_id_order,
    event_types_page_in_name_order,
    messages_page_with_filters,
    attempts_page_by_endpoint_and_message,
    dead_letters_page_in_id_order,
    tasks_page_with_filters,
    endpoint_messages_page_in_id_order,
    two_stores_write_at_once,
    store_opens_previous_schema,
    second_migrate_changes_nothing,
    newer_schema_is_rejected,
    attempt_response_with_nul_is_stored,
);
