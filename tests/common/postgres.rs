//! Databases on the PostgreSQL server of the tests: each test creates its
//! own and it is dropped when the test ends. The server is
//! `HOOKD_TEST_POSTGRES_URL`, by default the one on 127.0.0.1:5432 as user
//! postgres with trust authentication.

use std::time::{Duration, Instant};

/// A database made for one test on the test server. Dropping the value
/// drops the database.
pub struct TestDatabase {
    pub name: String,
    /// URL of the database, for `HOOKD_DATABASE_URL`.
    pub url: String,
}

/// URL of the server's maintenance database.
fn admin_url() -> String {
    std::env::var("HOOKD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `f` on a connection to the maintenance database. The synchronous
/// client blocks on a runtime of its own, which panics on a thread that
/// drives async tasks, so it runs on a thread of its own.
fn with_admin<T: Send>(f: impl FnOnce(&mut ::postgres::Client) -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let url = admin_url();
                let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls)
                    .unwrap_or_else(|err| {
                        panic!("cannot connect to the test PostgreSQL server at {url}: {err:?}")
                    });
                f(&mut client)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl TestDatabase {
    pub fn create() -> Self {
        let name = format!(
            "hookd_test_{}",
            hookd::model::ids::new_id("db").to_ascii_lowercase()
        );
        with_admin(|client| {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err:?}"))
        });
        let mut url = url::Url::parse(&admin_url()).expect("HOOKD_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Self {
            name,
            url: url.to_string(),
        }
    }

    /// Makes the database reject new connections and ends the open ones,
    /// then waits until the server has no session left on it. A connection
    /// that was starting while the database changed can still open, so each
    /// round ends the sessions it finds again.
    pub fn refuse_connections(&self) {
        let name = &self.name;
        with_admin(|client| {
            client
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                .unwrap_or_else(|err| panic!("refuse connections to {name}: {err:?}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                client
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ))
                    .unwrap_or_else(|err| panic!("end the sessions on {name}: {err:?}"));
                let sessions: Vec<String> = client
                    .query(
                        "SELECT format('pid %s, %s, application %s, state %s, query %s',
                                pid, backend_type, application_name, state, query)
                         FROM pg_stat_activity WHERE datname = $1",
                        &[name],
                    )
                    .expect("list the sessions")
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                if sessions.is_empty() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "sessions on {name} remain 10 s after pg_terminate_backend: {sessions:#?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    /// Runs a query that returns one `BIGINT`, such as a `COUNT(*)`, on the
    /// database.
    pub fn count(&self, sql: &str) -> i64 {
        let url = self.url.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls)
                        .unwrap_or_else(|err| panic!("connect to {}: {err:?}", self.name));
                    client
                        .query_one(sql, &[])
                        .unwrap_or_else(|err| panic!("{sql}: {err:?}"))
                        .get::<_, i64>(0)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Lets the database take connections again.
    pub fn allow_connections(&self) {
        let name = &self.name;
        with_admin(|client| {
            client
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                .unwrap_or_else(|err| panic!("reconnect {name}: {err:?}"))
        });
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // No panic here: the test may be unwinding already.
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                if let Ok(mut client) = ::postgres::Client::connect(&admin_url(), ::postgres::NoTls)
                {
                    let _ = client.batch_execute(&drop_sql);
                }
            });
        });
    }
}
