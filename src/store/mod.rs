//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that batches the jobs waiting in
//! its queue into a single transaction (a group commit), so one fsync covers
//! many API calls. Each job runs inside its own savepoint: a job that fails is
//! rolled back alone and the others in the batch still commit. A caller gets
//! its result only after the commit that contains its job is durable.
//!
//! Reads run on a small pool of read-only connections, which WAL mode lets
//! proceed while the writer commits.
//!
//! The operations themselves are plain functions over a `rusqlite::Connection`
//! in the submodules, called inside [`Store::read`] and [`Store::write`].

pub mod app_tokens;
pub mod applications;
pub mod attempts;
pub mod dead_letters;
pub mod deliveries;
pub mod encryption;
pub mod endpoints;
pub mod event_types;
pub mod messages;
pub mod operational;
pub mod poller;
pub mod retention;
mod schema;
pub mod settings;
pub mod tasks;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::telemetry::metric;

/// Jobs taken into one transaction at most.
const MAX_BATCH_JOBS: usize = 2048;
/// Blocking reads running at once at most; further ones wait their turn
/// instead of opening more connections and blocking more threads.
const MAX_READERS: usize = 8;

/// A failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A unique value is already taken; the string names the field.
    #[error("{0} is already in use")]
    Conflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("the store is shut down")]
    Closed,
    #[error("the database could not run the write; see the log")]
    Unavailable,
    #[error("cannot open the database at {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// A stored secret is encrypted and there is no key, or not the right one.
    #[error(transparent)]
    Decrypt(#[from] encryption::OpenError),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`] naming `field`.
    pub fn conflict_on(err: rusqlite::Error, field: &str) -> Self {
        match &err {
            rusqlite::Error::SqliteFailure(code, _)
                if code.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Self::Conflict(field.to_owned())
            }
            _ => Self::Sqlite(err),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type Reply = Box<dyn FnOnce(Result<(), Arc<String>>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Seals and opens endpoint secrets; `None` stores them as plaintext.
    cipher: Option<Arc<encryption::Cipher>>,
    /// Queue of the writer thread; dropping the last sender stops the thread.
    writer: Mutex<Option<std_mpsc::Sender<Job>>>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    /// One permit per read that may run at once.
    read_permits: tokio::sync::Semaphore,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Inner {
    /// Runs `f` on an idle read-only connection, opening one when none is idle.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self
            .readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_connection(&self.path, true, self.cipher.clone())?,
        };
        let result = f(&conn);
        self.readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .push(conn);
        result
    }
}

impl Store {
    /// Opens (and creates or migrates) the database in `data_dir`, with
    /// endpoint secrets stored as plaintext.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with_key(data_dir, None)
    }

    /// Opens (and creates or migrates) the database in `data_dir`. With a
    /// key, endpoint secrets are stored encrypted, and those still stored as
    /// plaintext are encrypted now. Fails with [`StoreError::Decrypt`] when a
    /// stored secret is encrypted and `key` is missing or not its key.
    pub fn open_with_key(data_dir: &Path, key: Option<&encryption::EncryptionKey>) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|err| StoreError::Open {
            path: data_dir.to_owned(),
            message: err.to_string(),
        })?;
        let path = data_dir.join("hookd.sqlite3");
        let cipher = key.map(|key| Arc::new(encryption::Cipher::new(key)));
        let conn = open_connection(&path, false, cipher.clone())?;
        schema::migrate(&conn)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match endpoints::seal_secrets(&conn, cipher.as_deref()) {
            Ok(sealed) => {
                conn.execute_batch("COMMIT")?;
                if sealed > 0 {
                    tracing::info!(
                        endpoints = sealed,
                        "encrypted the plaintext endpoint secrets"
                    );
                }
            }
            Err(err) => {
                conn.execute_batch("ROLLBACK")?;
                return Err(err);
            }
        }

        let (sender, receiver) = std_mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("hookd-store-writer".into())
            .spawn(move || run_writer(conn, receiver))
            .map_err(|err| StoreError::Open {
                path: path.clone(),
                message: format!("cannot start the writer thread: {err}"),
            })?;

        Ok(Self {
            inner: Arc::new(Inner {
                path,
                cipher,
                writer: Mutex::new(Some(sender)),
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(MAX_READERS),
                writer_thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Path of the SQLite file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in the next group commit and returns its result once that
    /// commit is durable. When `f` fails, its changes are rolled back.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply_to, reply) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = run_in_savepoint(conn, f);
            Box::new(move |commit: Result<(), Arc<String>>| {
                let result = match commit {
                    Ok(()) => outcome,
                    Err(message) => Err(StoreError::Corrupt(format!("commit failed: {message}"))),
                };
                let _ = reply_to.send(result);
            })
        });
        {
            let writer = self
                .inner
                .writer
                .lock()
                .expect("writer lock is never poisoned");
            let Some(writer) = writer.as_ref() else {
                return Err(StoreError::Closed);
            };
            writer.send(job).map_err(|_| StoreError::Closed)?;
        }
        reply.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Runs `f` on a read-only connection, on the calling thread.
    ///
    /// For point lookups and short pages, which take microseconds: handing
    /// them to another thread would cost more than running them. Use
    /// [`Store::read_blocking`] for scans that may take long.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T>,
    {
        self.inner.with_reader(f)
    }

    /// Runs `f` on a read-only connection on the blocking thread pool, for
    /// scans that may take long enough to stall other tasks.
    pub async fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(permit);
        result
    }

    /// Stops the writer after the jobs already queued have committed.
    pub fn close(&self) {
        self.inner
            .writer
            .lock()
            .expect("writer lock is never poisoned")
            .take();
        if let Some(thread) = self
            .inner
            .writer_thread
            .lock()
            .expect("thread lock is never poisoned")
            .take()
        {
            let _ = thread.join();
        }
    }
}

fn open_connection(
    path: &Path,
    read_only: bool,
    cipher: Option<Arc<encryption::Cipher>>,
) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|err| StoreError::Open {
        path: path.to_owned(),
        message: err.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL syncs the WAL on every commit, so a commit that returned survives
        // a power loss, not only a crash of the process.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoint every 4,000 pages (16 MB) of WAL instead of 1,000, so
        // the writer stops for checkpoints less often under load.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    }
    // Page cache in KiB (negative means KiB): the writer touches the hot
    // indexes of every table, readers mostly one row at a time.
    let cache_kib = if read_only { 4_000 } else { 16_000 };
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    encryption::register_functions(&conn, cipher)?;
    Ok(conn)
}

fn run_in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    // Cached statements: parsing these two for every job was a measurable
    // share of the writer's time.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let outcome = f(conn);
    match &outcome {
        Ok(_) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        Err(_) => {
            // The job may have cached rows it wrote and now rolls back.
            endpoints::clear_writer_caches();
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?
        }
    }
    outcome
}

/// Runs the writer thread: takes every queued job into one transaction,
/// commits, then sends each job's result to its caller.
fn run_writer(conn: Connection, jobs: std_mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let started = Instant::now();
        let mut replies: Vec<Reply> = Vec::new();

        if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the job drops its reply channel, so its caller gets
            // `StoreError::Unavailable`.
            tracing::error!(error = %err, "cannot begin a transaction; the write is rejected");
            metrics::counter!(metric::STORE_ERRORS, "operation" => "begin").increment(1);
            drop(first);
            continue;
        }
        replies.push(first(&conn));
        while replies.len() < MAX_BATCH_JOBS {
            match jobs.try_recv() {
                Ok(job) => replies.push(job(&conn)),
                Err(_) => break,
            }
        }

        let commit = conn.execute_batch("COMMIT").map_err(|err| {
            tracing::error!(error = %err, jobs = replies.len(), "commit failed; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            endpoints::clear_writer_caches();
            metrics::counter!(metric::STORE_ERRORS, "operation" => "commit").increment(1);
            Arc::new(err.to_string())
        });
        metrics::histogram!(metric::STORE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::STORE_COMMIT_JOBS).record(replies.len() as f64);
        tracing::trace!(
            jobs = replies.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        for reply in replies {
            reply(commit.clone());
        }
    }
    tracing::debug!("store writer stopped");
}

/// Decodes a JSON text column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// Encodes a value for a JSON text column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps and lists of strings always serialize")
}

/// One page of a list, in id order.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Rows to return; one more is fetched to tell whether the list is done.
    pub limit: usize,
    /// Return rows after this id (in the list's order).
    pub iterator: Option<String>,
    /// Newest first instead of oldest first.
    pub descending: bool,
}

impl PageRequest {
    /// Builds the SQL condition and order for paging on `column`, with `?N` as the iterator placeholder.
    pub(crate) fn clause(&self, column: &str, placeholder: usize) -> (String, String) {
        let (cmp, order) = if self.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let condition = match self.iterator {
            Some(_) => format!("{column} {cmp} ?{placeholder}"),
            None => format!("?{placeholder} IS NULL"),
        };
        (
            condition,
            format!("ORDER BY {column} {order} LIMIT {}", self.limit + 1),
        )
    }
}

#[cfg(test)]
mod tests;
