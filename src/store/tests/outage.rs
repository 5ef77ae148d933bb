//! A PostgreSQL database that drops its connections and rejects new ones
//! for a while. Writes and reads then fail with an error that the API turns
//! into 503, and nothing committed is lost. The same [`Store`] works again
//! by itself once the database takes connections.

use std::time::{Duration, Instant};

use super::*;

/// How long the store may take to write again after the database returns.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs statements on the server's maintenance database.
fn run_as_admin(sql: &str) {
    let admin = test_postgres_admin_url();
    off_runtime(|| {
        let mut client = connect_postgres(&admin).expect("connect to the maintenance database");
        client
            .batch_execute(sql)
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    });
}

/// Makes the database reject new connections and ends the open ones, then
/// waits until the server has no session left on it.
pub(crate) fn cut_off(database_name: &str) {
    run_as_admin(&format!(
        "ALTER DATABASE {database_name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{database_name}' AND pid <> pg_backend_pid();"
    ));
    let admin = test_postgres_admin_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    off_runtime(|| {
        let mut client = connect_postgres(&admin).expect("connect to the maintenance database");
        loop {
            let sessions: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&database_name],
                )
                .expect("count the sessions")
                .get(0);
            if sessions == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{sessions} sessions on {database_name} remain 10 s after pg_terminate_backend"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Lets the database take connections again.
pub(crate) fn reconnect(database_name: &str) {
    run_as_admin(&format!(
        "ALTER DATABASE {database_name} ALLOW_CONNECTIONS true"
    ));
}

fn new_message(created_at: i64) -> impl Fn(&Conn) -> Result<messages::Created> {
    move |conn| messages::create(conn, message("app_1", "a", None, created_at))
}

async fn message_ids(store: &Store) -> Result<Vec<String>> {
    store
        .read(|conn| {
            let page = PageRequest {
                limit: 100,
                iterator: None,
                descending: false,
            };
            let listed = messages::list(conn, "app_1", &page, &Default::default())?;
            Ok(listed.into_iter().map(|m| m.id).collect())
        })
        .await
}

/// Runs `operation` until it succeeds, for up to [`RECOVERY_TIMEOUT`].
/// Every failure before must be one that the API turns into 503.
async fn until_recovered<T, Fut>(what: &str, mut operation: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(err) => {
                assert!(err.is_unavailable(), "{what} after the outage: {err:?}");
                assert!(
                    Instant::now() < deadline,
                    "the store did not {what} again within {RECOVERY_TIMEOUT:?}: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_writes_then_recovers() {
    let (db, store, _) = store_with_endpoint(Backend::Postgres).await;
    let name = db
        .postgres_name
        .clone()
        .expect("a PostgreSQL test database");
    let mut committed = Vec::new();
    for created_at in 0..10 {
        committed.push(write_ok(&store, new_message(created_at)).await.message.id);
    }
    // An idle reading connection is in the pool when the server drops it.
    assert_eq!(message_ids(&store).await.unwrap(), committed);

    cut_off(&name);
    for created_at in 100..103 {
        let err = store.write(new_message(created_at)).await.unwrap_err();
        assert!(err.is_unavailable(), "write during the outage: {err:?}");
    }
    for _ in 0..2 {
        let err = message_ids(&store).await.unwrap_err();
        assert!(err.is_unavailable(), "read during the outage: {err:?}");
    }

    reconnect(&name);
    let after = until_recovered("write", || store.write(new_message(200))).await;
    assert_eq!(after.deliveries.len(), 1);

    // The writes rejected during the outage left nothing behind.
    committed.push(after.message.id);
    let listed = until_recovered("read", || message_ids(&store)).await;
    assert_eq!(listed, committed);
    let pending: i64 = read_ok(&store, |conn| {
        conn.query_one(
            "SELECT COUNT(*) FROM deliveries WHERE status = 1",
            sql::params![],
            |row| row.get(0),
        )
    })
    .await;
    assert_eq!(pending, 11, "one pending delivery per stored message");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_connection_costs_no_write() {
    let (db, store, _) = store_with_endpoint(Backend::Postgres).await;
    let name = db
        .postgres_name
        .clone()
        .expect("a PostgreSQL test database");

    // A read first, so the pool keeps a reading connection.
    assert_eq!(message_ids(&store).await.unwrap(), Vec::<String>::new());

    // The server ends every session, as a failover or an idle-session
    // timeout would, but keeps taking new connections.
    cut_off(&name);
    reconnect(&name);

    // The first write and the first read after it succeed: each notices
    // its dropped connection and tries once more on a new one.
    let created = store.write(new_message(7)).await.expect("the first write");
    assert!(created.is_new);
    assert_eq!(
        message_ids(&store).await.expect("the first read"),
        vec![created.message.id]
    );
}
