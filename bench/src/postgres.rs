//! The PostgreSQL side of a cluster run: a fresh database per run on the
//! server given with `--database-url`, and the CPU time of the server's
//! processes, read from `/proc`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use tokio_postgres::NoTls;

use crate::hookd::cpu_seconds_from_stat;

/// A database created for one run and dropped by [`RunDatabase::drop_database`].
pub struct RunDatabase {
    /// URL of the database the run was started with, used for `CREATE` and `DROP`.
    server_url: String,
    pub name: String,
    /// URL of the new database, given to hookd as `HOOKD_DATABASE_URL`.
    pub url: String,
}

impl RunDatabase {
    /// Creates the database `hookd_bench_{pid}_{seconds}` on the server of
    /// `server_url`, which must allow `CREATE DATABASE`.
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let name = run_database_name(std::process::id(), seconds);
        let url = url_with_database(server_url, &name)?;
        let client = connect(server_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name} failed"))?;
        Ok(Self {
            server_url: server_url.to_owned(),
            name,
            url,
        })
    }

    /// Drops the database, closing any connection to it that is left.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let client = connect(&self.server_url).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("DROP DATABASE {} failed; drop it by hand", self.name))?;
        Ok(())
    }
}

/// Opens a connection and drives it on a task of the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("PostgreSQL connection of the harness failed: {err}");
        }
    });
    Ok(client)
}

/// Name of the database of one run: lowercase letters, digits and `_`, so
/// it needs no quoting in SQL.
pub fn run_database_name(pid: u32, unix_seconds: u64) -> String {
    format!("hookd_bench_{pid}_{unix_seconds}")
}

/// Returns `server_url` with its path replaced by `/{database}`, keeping
/// the user, host, port and query parameters.
pub fn url_with_database(server_url: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server_url)
        .with_context(|| format!("invalid --database-url {}", redact(server_url)))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!(
            "invalid --database-url {}; expected a postgres:// URL, for example postgres://postgres@127.0.0.1:5432/postgres",
            redact(server_url)
        );
    }
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Returns the URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Transactions committed or rolled back in every database but the current
/// one, from `pg_stat_database`. The server publishes each backend's
/// counters a second or more after the fact, so a difference over a short
/// window is approximate.
pub async fn other_database_transactions(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(xact_commit + xact_rollback), 0)::bigint \
             FROM pg_stat_database WHERE datname IS DISTINCT FROM current_database()",
            &[],
        )
        .await
        .context("reading pg_stat_database failed")?;
    Ok(row.get(0))
}

/// CPU seconds (utime + stime) of every process whose `comm` is
/// `postgres`, by process id: the server's postmaster, background workers
/// and the backends of every database on it.
pub fn postgres_cpu_by_pid() -> anyhow::Result<BTreeMap<u32, f64>> {
    let mut cpu = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the reads.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() != "postgres" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Ok(seconds) = cpu_seconds_from_stat(&stat) {
            cpu.insert(pid, seconds);
        }
    }
    Ok(cpu)
}

/// CPU seconds spent between two samples by the processes present in
/// `after`. A process that started after `before` counts from zero. A
/// process that exited before `after` is missing, and so is its CPU time.
pub fn cpu_seconds_between(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, seconds)| {
            let earlier = before.get(pid).copied().unwrap_or(0.0);
            // A smaller value means the process id was reused by a new process.
            if *seconds >= earlier {
                seconds - earlier
            } else {
                *seconds
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_plain_identifier() {
        let name = run_database_name(4242, 1_800_000_000);
        assert_eq!(name, "hookd_bench_4242_1800000000");
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn url_replaces_database() {
        let url = url_with_database(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "hookd_bench_1_2",
        )
        .unwrap();
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/hookd_bench_1_2");
    }

    #[test]
    fn url_without_path_gets_database() {
        let url = url_with_database("postgresql://u:secret@localhost", "db").unwrap();
        assert_eq!(url, "postgresql://u:secret@localhost/db");
    }

    #[test]
    fn url_keeps_query_parameters() {
        let url = url_with_database("postgres://u@h:6543/postgres?sslmode=disable", "db").unwrap();
        assert_eq!(url, "postgres://u@h:6543/db?sslmode=disable");
    }

    #[test]
    fn url_rejects_other_schemes() {
        let err = url_with_database("mysql://u@h/db", "x").unwrap_err();
        assert!(
            err.to_string().contains("expected a postgres:// URL"),
            "{err}"
        );
        assert!(url_with_database("not a url", "x").is_err());
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn cpu_between_counts_new_and_reused_pids() {
        let before = BTreeMap::from([(10, 5.0), (11, 1.0), (12, 9.0)]);
        // 10 ran 2 s; 11 exited; 12 is a new process with a reused id; 13 is new.
        let after = BTreeMap::from([(10, 7.0), (12, 0.5), (13, 1.5)]);
        let seconds = cpu_seconds_between(&before, &after);
        assert!((seconds - 4.0).abs() < 1e-9, "{seconds}");
    }

    #[test]
    fn cpu_between_empty_samples_is_zero() {
        assert_eq!(cpu_seconds_between(&BTreeMap::new(), &BTreeMap::new()), 0.0);
    }
}
