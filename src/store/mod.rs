//! The store: an embedded SQLite file in WAL mode (the default), or a
//! PostgreSQL database that several hookd nodes share.
//!
//! All writes of a process go through one writer thread that batches the
//! jobs waiting in its queue into a single transaction (a group commit), so
//! one commit covers many API calls. A job that fails is rolled back alone
//! and the others in the batch still commit. Jobs run without savepoints.
//! When one fails after changing rows, the batch rolls back and runs again
//! with each job in its own savepoint. A caller gets its result only after
//! the commit that contains its job is durable.
//!
//! Reads run on a small pool of connections: read-only ones for SQLite,
//! which WAL mode lets proceed while the writer commits, and ordinary ones
//! for PostgreSQL.
//!
//! The operations themselves are plain functions over a [`Conn`] in the
//! submodules, called inside [`Store::read`] and [`Store::write`]. They are
//! written once for both databases (see [`sql`]).

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
pub(crate) mod schema_postgres;
mod send_cache;
pub mod settings;
pub mod sql;
pub mod tasks;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use send_cache::SendCache;
pub use sql::{Conn, Dialect};

use crate::telemetry::metric;

/// Jobs taken into one transaction at most.
const MAX_BATCH_JOBS: usize = 2048;
/// Blocking reads running at once at most; further ones wait their turn
/// instead of opening more connections and blocking more threads.
const MAX_READERS: usize = 8;
/// How long a connection attempt to PostgreSQL may take.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for PostgreSQL to run its read or write before
/// it gets [`StoreError::Unavailable`]. The work itself may still finish.
const PG_WAIT: Duration = Duration::from_secs(30);

/// A failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
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
    /// This node cannot take part in the cluster, for the reason given.
    #[error("{0}")]
    Cluster(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`] naming `field`.
    pub fn conflict_on(err: StoreError, field: &str) -> Self {
        match &err {
            Self::Sqlite(rusqlite::Error::SqliteFailure(code, _))
                if code.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Self::Conflict(field.to_owned())
            }
            Self::Postgres(pg)
                if pg.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                Self::Conflict(field.to_owned())
            }
            _ => err,
        }
    }

    /// True when the failure is the database being out of reach, or a
    /// transient conflict with another node, so the same request may
    /// succeed when tried again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Closed | Self::Unavailable => true,
            Self::Postgres(err) => {
                if err.is_closed() {
                    return true;
                }
                let Some(code) = err.code() else {
                    // No SQL state: the connection or its I/O failed.
                    return true;
                };
                use postgres::error::SqlState;
                code.code().starts_with("08")
                    || code.code().starts_with("57P")
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::LOCK_NOT_AVAILABLE
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Formats a PostgreSQL client error with its cause. The client's own text
/// names only the kind of failure, such as "db error", and leaves the
/// server's message to the cause.
fn postgres_message(err: &postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

/// The database the store keeps its data in.
#[derive(Clone)]
pub enum Database {
    /// A SQLite file, `hookd.sqlite3` in this folder.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database, by its `postgres://` URL.
    Postgres { url: String },
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Database {
    /// Names the database for messages, without the password of a URL.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { data_dir } => data_dir.join(SQLITE_FILE).display().to_string(),
            Self::Postgres { url } => redact_url(url),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite { .. } => Dialect::Sqlite,
            Self::Postgres { .. } => Dialect::Postgres,
        }
    }

    fn open_error(&self, message: impl Into<String>) -> StoreError {
        StoreError::Open {
            path: PathBuf::from(self.describe()),
            message: message.into(),
        }
    }

    /// Opens a new connection: for SQLite, a read-only one when `read_only`.
    fn connect(&self, read_only: bool, cipher: Option<Arc<encryption::Cipher>>) -> Result<Conn> {
        match self {
            Self::Sqlite { data_dir } => Ok(Conn::sqlite(
                open_sqlite(&data_dir.join(SQLITE_FILE), read_only)?,
                cipher,
            )),
            Self::Postgres { url } => Ok(Conn::postgres(connect_postgres(url)?, cipher)),
        }
    }
}

/// Connects to PostgreSQL with hookd's connection settings.
pub(crate) fn connect_postgres(url: &str) -> Result<postgres::Client> {
    let mut config: postgres::Config = url.parse().map_err(|err| StoreError::Open {
        path: PathBuf::from(redact_url(url)),
        message: format!("invalid PostgreSQL URL: {err}"),
    })?;
    // Keepalives and the TCP user timeout close a connection whose server
    // stopped responding at the network level (about 25 s when idle, 20 s
    // with data unacknowledged), so the writer and the readers reconnect.
    config
        .connect_timeout(PG_CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    if config.get_application_name().is_none() {
        config.application_name("hookd");
    }
    // Server notices such as "relation already exists, skipping" would
    // otherwise reach the log at INFO on every start.
    if config.get_options().is_none() {
        config.options("-c client_min_messages=warning");
    }
    config
        .connect(postgres::NoTls)
        .map_err(|err| StoreError::Open {
            path: PathBuf::from(redact_url(url)),
            message: postgres_message(&err),
        })
}

/// Replaces the password in a database URL with `***`, whether it is in
/// the user information or a `password` query parameter.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(an invalid URL)".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Name of the SQLite file in the data folder.
const SQLITE_FILE: &str = "hookd.sqlite3";

/// The outcome of a group commit, with the error's text shared by its jobs.
type Commit = std::result::Result<(), Arc<String>>;

/// A job of the writer thread. Jobs run without a savepoint of their own,
/// because each savepoint copies every page its job changes. When a job fails
/// after changing rows, the batch rolls back and every job of it runs again,
/// each in its own savepoint (see `run_batch`), so a job may run twice.
trait Job: Send {
    /// Runs the job in the open transaction and keeps its outcome; with
    /// `guarded`, in its own savepoint. Returns whether it succeeded.
    fn run(&mut self, conn: &Conn, guarded: bool) -> bool;

    /// Hands the outcome to the caller, or the commit's error.
    fn finish(self: Box<Self>, commit: Commit);
}

struct WriteJob<T, F> {
    f: F,
    outcome: Option<Result<T>>,
    reply_to: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for WriteJob<T, F>
where
    T: Send,
    F: Fn(&Conn) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Conn, guarded: bool) -> bool {
        let outcome = if guarded {
            run_in_savepoint(conn, &self.f)
        } else {
            (self.f)(conn)
        };
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn finish(self: Box<Self>, commit: Commit) {
        let result = match (commit, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            // The commit's error is logged once by the writer.
            _ => Err(StoreError::Unavailable),
        };
        let _ = self.reply_to.send(result);
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    /// Seals and opens endpoint secrets; `None` stores them as plaintext.
    cipher: Option<Arc<encryption::Cipher>>,
    /// Queue of the writer thread; dropping the last sender stops the thread.
    writer: Mutex<Option<std_mpsc::Sender<Box<dyn Job>>>>,
    /// Idle reading connections.
    readers: Mutex<Vec<Conn>>,
    /// One permit per read that may run at once.
    read_permits: tokio::sync::Semaphore,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Endpoints and messages that recent attempts read, on SQLite only.
    send_cache: Option<Arc<SendCache>>,
}

impl Inner {
    /// Runs `f` on an idle reading connection, opening one when none is idle.
    /// When the server had dropped an idle connection, `f` runs once more on
    /// a new one, which reads may do safely.
    fn with_reader<T>(&self, f: impl Fn(&Conn) -> Result<T>) -> Result<T> {
        match self.with_reader_once(&f) {
            Err(err) if err.is_unavailable() && self.database.dialect() == Dialect::Postgres => {
                tracing::debug!(error = %err, "a read failed on a dropped connection; trying a new one");
                self.with_reader_once(&f)
            }
            outcome => outcome,
        }
    }

    fn with_reader_once<T>(&self, f: impl FnOnce(&Conn) -> Result<T>) -> Result<T> {
        let idle = self
            .readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self
                .database
                .connect(true, self.cipher.clone())
                .map_err(|err| match self.database {
                    // The server is out of reach: the caller may try again.
                    Database::Postgres { .. } => {
                        tracing::warn!(error = %err, "cannot open a database connection for a read");
                        StoreError::Unavailable
                    }
                    Database::Sqlite { .. } => err,
                })?,
        };
        let result = f(&conn);
        // A connection the server dropped is not reused; the next read opens a new one.
        if !conn.is_broken() {
            self.readers
                .lock()
                .expect("reader pool lock is never poisoned")
                .push(conn);
        }
        result
    }
}

impl Store {
    /// Opens (and creates or migrates) the SQLite database in `data_dir`,
    /// with endpoint secrets stored as plaintext.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with_key(data_dir, None)
    }

    /// Opens (and creates or migrates) the SQLite database in `data_dir`.
    /// See [`Store::open_database`].
    pub fn open_with_key(data_dir: &Path, key: Option<&encryption::EncryptionKey>) -> Result<Self> {
        Self::open_database(
            &Database::Sqlite {
                data_dir: data_dir.to_owned(),
            },
            key,
        )
    }

    /// Opens (and creates or migrates) the database. With a key, endpoint
    /// secrets are stored encrypted, and those still stored as plaintext are
    /// encrypted now. Fails with [`StoreError::Decrypt`] when a stored secret
    /// is encrypted and `key` is missing or not its key.
    pub fn open_database(
        database: &Database,
        key: Option<&encryption::EncryptionKey>,
    ) -> Result<Self> {
        let cipher = key.map(|key| Arc::new(encryption::Cipher::new(key)));
        let mut send_cache = None;
        let conn = match database {
            Database::Sqlite { data_dir } => {
                std::fs::create_dir_all(data_dir)
                    .map_err(|err| database.open_error(err.to_string()))?;
                let conn = open_sqlite(&data_dir.join(SQLITE_FILE), false)?;
                schema::migrate(&conn)?;
                let cache = SendCache::new();
                cache.watch(&conn);
                send_cache = Some(Arc::new(cache));
                Conn::sqlite(conn, cipher.clone())
            }
            Database::Postgres { url } => {
                let client = off_runtime(|| {
                    let mut client = connect_postgres(url)?;
                    schema_postgres::migrate(&mut client, None)?;
                    Ok::<_, StoreError>(client)
                })?;
                Conn::postgres(client, cipher.clone())
            }
        };
        let conn = off_runtime(move || {
            conn.execute_batch(begin_statement(database.dialect()))?;
            match endpoints::seal_secrets(&conn, conn.cipher()) {
                Ok(sealed) => {
                    conn.execute_batch("COMMIT")?;
                    if sealed > 0 {
                        tracing::info!(
                            endpoints = sealed,
                            "encrypted the plaintext endpoint secrets"
                        );
                    }
                    Ok(conn)
                }
                Err(err) => {
                    conn.execute_batch("ROLLBACK")?;
                    Err(err)
                }
            }
        })?;

        let (sender, receiver) = std_mpsc::channel::<Box<dyn Job>>();
        let writer_database = database.clone();
        let writer_cipher = cipher.clone();
        let writer_cache = send_cache.clone();
        let thread = std::thread::Builder::new()
            .name("hookd-store-writer".into())
            .spawn(move || run_writer(conn, writer_database, writer_cipher, writer_cache, receiver))
            .map_err(|err| database.open_error(format!("cannot start the writer thread: {err}")))?;

        Ok(Self {
            inner: Arc::new(Inner {
                database: database.clone(),
                cipher,
                writer: Mutex::new(Some(sender)),
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(MAX_READERS),
                writer_thread: Mutex::new(Some(thread)),
                send_cache,
            }),
        })
    }

    /// The database this store writes to.
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.database.dialect()
    }

    /// Runs `f` in the next group commit and returns its result once that
    /// commit is durable. When `f` fails, its changes are rolled back.
    ///
    /// `f` may run twice: when another job of the same commit fails after
    /// changing rows, the commit starts over and runs every job again. So it
    /// must have no effect outside the transaction.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Conn) -> Result<T> + Send + 'static,
    {
        let (reply_to, reply) = oneshot::channel::<Result<T>>();
        let job: Box<dyn Job> = Box::new(WriteJob {
            f,
            outcome: None,
            reply_to,
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
        match self.inner.database {
            Database::Sqlite { .. } => reply.await.map_err(|_| StoreError::Unavailable)?,
            // A server that hangs without closing the connection would hold
            // the caller for as long as it hangs.
            Database::Postgres { .. } => match tokio::time::timeout(PG_WAIT, reply).await {
                Ok(reply) => reply.map_err(|_| StoreError::Unavailable)?,
                Err(_) => {
                    tracing::warn!(
                        wait_s = PG_WAIT.as_secs(),
                        "a write waited too long for the database; the caller gets 503"
                    );
                    Err(StoreError::Unavailable)
                }
            },
        }
    }

    /// Runs `f` on a reading connection.
    ///
    /// For point lookups and short pages. On SQLite they take microseconds
    /// and run on the calling thread, because handing them to another thread
    /// would cost more than running them. On PostgreSQL they wait for the
    /// server, so they run on the blocking thread pool like
    /// [`Store::read_blocking`], which is meant for scans that may take long.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Conn) -> Result<T> + Send + 'static,
    {
        match self.inner.database {
            Database::Sqlite { .. } => self.inner.with_reader(f),
            Database::Postgres { .. } => self.read_blocking(f).await,
        }
    }

    /// Stores a message with the deliveries its fan-out makes, as
    /// [`messages::create`] in a write job does. On SQLite a new message is
    /// also kept in memory for its first attempts.
    pub async fn create_message(
        &self,
        message: crate::model::Message,
    ) -> Result<messages::Created> {
        let cache = self.inner.send_cache.clone();
        let seen = cache.as_deref().map(SendCache::generation);
        let created = self
            .write(move |conn| messages::create(conn, message.clone()))
            .await?;
        if let (Some(cache), Some(seen)) = (cache, seen) {
            if created.is_new && !created.deliveries.is_empty() {
                let message = &created.message;
                let rows = created.deliveries.iter().map(|new| {
                    deliveries::new_pending(
                        new.delivery_id,
                        &message.id,
                        &new.endpoint_id,
                        &message.app_id,
                        messages::FAN_OUT_TRIGGER,
                        message.created_at,
                    )
                });
                cache.keep_new_deliveries(seen, rows.collect());
                let reads = created.deliveries.len();
                cache.keep_message(seen, Arc::new(message.clone()), Some(reads));
            }
        }
        Ok(created)
    }

    /// Loads a delivery with its message and endpoint for an attempt. On
    /// SQLite the message and the endpoint usually come from memory.
    pub async fn load_for_send(&self, delivery_id: i64) -> Result<Option<deliveries::SendContext>> {
        let cache = self.inner.send_cache.clone();
        self.read(move |conn| deliveries::load_for_send_cached(conn, delivery_id, cache.as_deref()))
            .await
    }

    /// Finds an application by id or uid, as [`applications::get`] does. On
    /// SQLite the application usually comes from memory.
    pub async fn application(
        &self,
        id_or_uid: &str,
    ) -> Result<Option<Arc<crate::model::Application>>> {
        let cache = self.inner.send_cache.clone();
        let seen = match cache.as_deref().map(|cache| cache.application(id_or_uid)) {
            Some((_, Some(kept))) => return Ok(Some(kept)),
            Some((seen, None)) => Some(seen),
            None => None,
        };
        let key = id_or_uid.to_owned();
        let found = self
            .read(move |conn| applications::get(conn, &key))
            .await?
            .map(Arc::new);
        if let (Some(cache), Some(seen), Some(app)) = (cache, seen, &found) {
            cache.keep_application(seen, id_or_uid, app.clone());
        }
        Ok(found)
    }

    /// Runs `f` on a reading connection on the blocking thread pool, for
    /// scans that may take long enough to stall other tasks.
    pub async fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Conn) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        let postgres = matches!(self.inner.database, Database::Postgres { .. });
        let read = tokio::task::spawn_blocking(move || inner.with_reader(f));
        let result = if postgres {
            match tokio::time::timeout(PG_WAIT, read).await {
                Ok(joined) => joined.map_err(|_| StoreError::Closed)?,
                Err(_) => {
                    // The permit is released with the error; the blocked read
                    // keeps its thread until the connection fails.
                    tracing::warn!(
                        wait_s = PG_WAIT.as_secs(),
                        "a read waited too long for the database; the caller gets 503"
                    );
                    Err(StoreError::Unavailable)
                }
            }
        } else {
            read.await.map_err(|_| StoreError::Closed)?
        };
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

/// Applies the migrations a database has not seen yet and returns its
/// schema version, without starting a store.
pub fn migrate(database: &Database) -> Result<usize> {
    match database {
        Database::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir)
                .map_err(|err| database.open_error(err.to_string()))?;
            let conn = open_sqlite(&data_dir.join(SQLITE_FILE), false)?;
            schema::migrate(&conn)?;
            schema::version(&conn)
        }
        Database::Postgres { url } => off_runtime(|| {
            let mut client = connect_postgres(url)?;
            schema_postgres::migrate(&mut client, None)
        }),
    }
}

/// Runs `f` on a thread of its own and waits for it. The synchronous
/// PostgreSQL client runs a runtime of its own, which cannot block a thread
/// that drives async tasks, and the store is opened from such threads.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn begin_statement(dialect: Dialect) -> &'static str {
    match dialect {
        // IMMEDIATE takes the write lock at once, so the transaction never
        // fails later for want of it.
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    }
}

fn open_sqlite(path: &Path, read_only: bool) -> Result<Connection> {
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
        // A job that runs again after a failed batch runs in a savepoint, and
        // a statement inserting several rows runs in a statement journal:
        // SQLite copies each page they first change into a sub-journal. In a
        // temporary file, those copies took about a third of the writer's CPU
        // time in `fanout` when every job ran in a savepoint.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    // Page cache in KiB (negative means KiB): the writer touches the hot
    // indexes of every table, readers mostly one row at a time. A reader's
    // cache is also emptied when a read transaction starts after a commit,
    // which under load is nearly every time, so a large one would only hold
    // memory.
    let cache_kib = if read_only { 2_000 } else { 16_000 };
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(conn)
}

fn run_in_savepoint<T>(conn: &Conn, f: impl Fn(&Conn) -> Result<T>) -> Result<T> {
    // Cached statements: parsing these two for every job was a measurable
    // share of the SQLite writer's time.
    conn.execute("SAVEPOINT job", sql::params![])?;
    let outcome = f(conn);
    match &outcome {
        Ok(_) => {
            conn.execute("RELEASE SAVEPOINT job", sql::params![])?;
        }
        Err(_) => {
            // The job may have cached rows it wrote and now rolls back.
            endpoints::clear_writer_caches();
            conn.execute_batch("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")?
        }
    }
    outcome
}

/// Runs `first` and the jobs queued behind it in the transaction `begin`
/// opened, and commits them.
///
/// A failed job leaves its changes behind unless it ran in a savepoint. On
/// SQLite, a job that failed before any of its statements changed a row left
/// nothing, since a failed statement undoes itself. Otherwise the batch rolls
/// back and runs again with every job in its own savepoint.
fn run_batch(
    conn: &Conn,
    begin: &str,
    first: Box<dyn Job>,
    queue: &std_mpsc::Receiver<Box<dyn Job>>,
) -> (Vec<Box<dyn Job>>, Commit) {
    let mut batch: Vec<Box<dyn Job>> = Vec::new();
    let mut guarded = false;
    let mut next = Some(first);
    while let Some(mut job) = next.take() {
        let changes_before = conn.sqlite_total_changes();
        let succeeded = job.run(conn, guarded);
        batch.push(job);
        // A guarded job that failed has already undone its own changes.
        if !succeeded && !guarded && conn.failed_cleanly(changes_before) {
            endpoints::clear_writer_caches();
        } else if !succeeded && !guarded {
            guarded = true;
            metrics::counter!(metric::STORE_BATCH_RERUNS).increment(1);
            // The jobs may have cached rows that the rollback undoes.
            endpoints::clear_writer_caches();
            let _ = conn.execute_batch("ROLLBACK");
            if let Err(err) = conn.execute_batch(begin) {
                tracing::error!(error = %err, jobs = batch.len(), "cannot begin a transaction to run a batch again; its writes are rejected");
                metrics::counter!(metric::STORE_ERRORS, "operation" => "begin").increment(1);
                return (batch, Err(Arc::new(err.to_string())));
            }
            for job in &mut batch {
                job.run(conn, true);
            }
        }
        if batch.len() < MAX_BATCH_JOBS {
            next = queue.try_recv().ok();
        }
    }

    let commit = conn.execute_batch("COMMIT").map_err(|err| {
        tracing::error!(error = %err, jobs = batch.len(), "commit failed; the batch is rolled back");
        let _ = conn.execute_batch("ROLLBACK");
        endpoints::clear_writer_caches();
        metrics::counter!(metric::STORE_ERRORS, "operation" => "commit").increment(1);
        Arc::new(err.to_string())
    });
    (batch, commit)
}

/// Minimum time between two attempts of the writer to reconnect to PostgreSQL.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the writer thread: takes every queued job into one transaction,
/// commits, then sends each job's result to its caller. On PostgreSQL it
/// reconnects when the server dropped the connection.
fn run_writer(
    mut conn: Conn,
    database: Database,
    cipher: Option<Arc<encryption::Cipher>>,
    send_cache: Option<Arc<SendCache>>,
    jobs: std_mpsc::Receiver<Box<dyn Job>>,
) {
    let begin = begin_statement(database.dialect());
    let mut last_reconnect: Option<Instant> = None;
    while let Ok(first) = jobs.recv() {
        if conn.is_broken() {
            let wait = last_reconnect
                .map(|at| RECONNECT_INTERVAL.saturating_sub(at.elapsed()))
                .unwrap_or_default();
            std::thread::sleep(wait);
            last_reconnect = Some(Instant::now());
            match database.connect(false, cipher.clone()) {
                Ok(fresh) => {
                    tracing::info!(database = %database.describe(), "the store writer reconnected to the database");
                    conn = fresh;
                }
                Err(err) => {
                    tracing::error!(error = %err, "the database is out of reach; the write is rejected");
                    metrics::counter!(metric::STORE_ERRORS, "operation" => "connect").increment(1);
                    drop(first);
                    continue;
                }
            }
        }

        let started = Instant::now();
        let mut began = conn.execute_batch(begin);
        if began.is_err() && conn.is_broken() {
            // The server dropped an idle connection, which the client learns
            // only now: reconnect and try once more, so this write succeeds.
            if let Ok(fresh) = database.connect(false, cipher.clone()) {
                tracing::info!(database = %database.describe(), "the store writer reconnected to the database");
                conn = fresh;
                began = conn.execute_batch(begin);
            }
        }
        if let Err(err) = began {
            // Dropping the job drops its reply channel, so its caller gets
            // `StoreError::Unavailable`.
            tracing::error!(error = %err, "cannot begin a transaction; the write is rejected");
            metrics::counter!(metric::STORE_ERRORS, "operation" => "begin").increment(1);
            drop(first);
            continue;
        }
        let (batch, commit) = run_batch(&conn, begin, first, &jobs);
        // Before any caller hears of the commit, so that no attempt it
        // causes can use an endpoint or message as it was before.
        if let Some(cache) = &send_cache {
            cache.after_commit();
        }
        metrics::histogram!(metric::STORE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::STORE_COMMIT_JOBS).record(batch.len() as f64);
        tracing::trace!(
            jobs = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        for job in batch {
            job.finish(commit.clone());
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
            // The cast gives PostgreSQL the type of an otherwise unused parameter.
            None => format!("CAST(?{placeholder} AS TEXT) IS NULL"),
        };
        (
            condition,
            format!("ORDER BY {column} {order} LIMIT {}", self.limit + 1),
        )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn password_in_user_info_is_hidden() {
        assert_eq!(
            redact_url("postgres://hookd:s3cret@db:5432/hookd"),
            "postgres://hookd:***@db:5432/hookd"
        );
    }

    #[test]
    fn password_in_query_is_hidden() {
        let shown = redact_url("postgres://hookd@db/hookd?sslmode=disable&password=s3cret");
        assert_eq!(
            shown,
            "postgres://hookd@db/hookd?sslmode=disable&password=***"
        );
        let shown = redact_url("postgres:///hookd?host=db&user=u&password=p%40ss");
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(!shown.contains("p@ss"), "{shown}");
    }

    #[test]
    fn url_without_password_is_unchanged() {
        assert_eq!(
            redact_url("postgres://hookd@127.0.0.1:5432/hookd"),
            "postgres://hookd@127.0.0.1:5432/hookd"
        );
    }
}
