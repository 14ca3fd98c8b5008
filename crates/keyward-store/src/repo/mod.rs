//! The `Store`: repository functions over sea-orm connection pools.
//!
//! - [`write`]: the one write transaction every mutation runs in (lock the
//!   organization, run the body, append its events under the feed lock,
//!   commit; retried on deadlock).
//! - [`keys`]: key reads and mutations, each a `write` body.
//! - [`list`]: keyset pages of keys and events.
//! - [`feed`]: the change feed other replicas follow, in commit order.
//! - [`policy`]: a key's policy column (versioned JSON).
//! - [`usage`]: coalesced usage writes (last-used data, counts per key,
//!   minute and outcome, credits spent), the usage series and its pruning.
//! - [`migrate`]: migrations under a database lock.
//!
//! Every public method passes through [`Store::bounded`]: one deadline and
//! one classification of database errors for all of them.

mod feed;
mod keys;
mod list;
mod migrate;
mod policy;
mod usage;
mod write;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyward_core::OrganizationId;
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::sqlx::{self, Executor};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};

pub use feed::{EventType, FeedBatch, KeyEvent};
pub use keys::{KeyMaterial, KeyPatch, NewKey};
pub use list::{EventPage, EventQuery, KeyPage, ListQuery, MAX_PAGE, Page};
pub use usage::{UsageCount, UsagePoint, UsageRecord, minute_start};

use crate::audit::{self, AuditReport};
use crate::error::{Error, Outage, StoreError};

/// How the store uses its database: pool sizes and deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Deadline of every store operation (each statement of `verify_audit`;
    /// `migrate` has none). Past it the operation fails with
    /// `StoreError::Unavailable`, so an admin RPC answers UNAVAILABLE in time
    /// even when the database stops answering without closing connections.
    /// It also bounds lock waits inside the database (PostgreSQL
    /// `lock_timeout`, InnoDB `innodb_lock_wait_timeout`, SQLite's busy
    /// timeout). Default 1.5 s.
    pub operation_timeout: Duration,
    /// Deadline of `Store::connect` / `connect_with`. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection. Default 1 s.
    pub acquire_timeout: Duration,
    /// Connections of the main pool: admin reads and writes, the change
    /// feed, usage flushes. Default 16 (SQLite files: 8; in-memory: 1).
    pub max_connections: u32,
    /// Connections of the separate pool used only by `find_by_lookup_hash`
    /// (validation cache misses), so a flood of misses cannot starve the
    /// feed and admin RPCs. Default 4. An in-memory SQLite database has one
    /// connection for everything.
    pub lookup_connections: u32,
    /// How long the database keeps a session that sits idle inside a
    /// transaction before ending it (PostgreSQL
    /// `idle_in_transaction_session_timeout`, MariaDB
    /// `idle_transaction_timeout`): a client that vanished mid-transaction
    /// cannot hold an organization's or the feed's lock longer. Default 5 s.
    pub idle_transaction_timeout: Duration,
    /// Most keys one organization may have; CreateKey and RotateKey beyond
    /// it fail with `StoreError::TooManyKeys`. Archived and revoked keys
    /// count (their rows exist), deleted keys do not. Default 100,000.
    pub max_keys_per_organization: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            operation_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(1),
            max_connections: 16,
            lookup_connections: 4,
            idle_transaction_timeout: Duration::from_secs(5),
            max_keys_per_organization: 100_000,
        }
    }
}

/// The connections of one pool at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections open (idle or in use).
    pub open: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

impl PoolUsage {
    fn of(db: &DatabaseConnection, max: u32) -> Self {
        let (open, idle) = match db.get_database_backend() {
            DbBackend::Postgres => {
                let pool = db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            DbBackend::MySql => {
                let pool = db.get_mysql_connection_pool();
                (pool.size(), pool.num_idle())
            }
            DbBackend::Sqlite => {
                let pool = db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            #[allow(unreachable_patterns, reason = "DbBackend may gain variants")]
            _ => (0, 0),
        };
        Self {
            open,
            idle: u32::try_from(idle).unwrap_or(u32::MAX),
            max,
        }
    }
}

/// A handle on the database. Cheap to clone (connection pools).
#[derive(Debug, Clone)]
pub struct Store {
    /// The main pool.
    db: DatabaseConnection,
    /// The pool of `find_by_lookup_hash` (the same pool for in-memory SQLite).
    lookups: DatabaseConnection,
    options: StoreOptions,
    /// For the migration session on MySQL/MariaDB.
    url: DatabaseUrl,
}

/// A connection URL. It may hold a password, so `Debug` does not print it.
#[derive(Clone)]
struct DatabaseUrl(Arc<str>);

impl DatabaseUrl {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

impl Store {
    /// Connects to `url` (`sqlite://...`, `postgres://...`, `mysql://...`)
    /// with the default [`StoreOptions`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = async {
            let in_memory = is_in_memory(url);
            let db = open_pool(pool_options(url, &options, options.max_connections)).await?;
            let lookups = if in_memory {
                // Every connection to an in-memory database is its own database.
                db.clone()
            } else {
                open_pool(pool_options(url, &options, options.lookup_connections)).await?
            };
            Ok::<_, Error>(Self {
                db,
                lookups,
                options,
                url: DatabaseUrl(url.into()),
            })
        };
        deadline(options.connect_timeout, connect)
            .await
            .map_err(Error::classify)
    }

    /// The main pool's connection, for tests and tooling.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Whether the database is a server that several replicas may share
    /// (PostgreSQL, MySQL/MariaDB), rather than embedded SQLite.
    pub fn is_shared(&self) -> bool {
        backend_of(&self.url.0) != DbBackend::Sqlite
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// How busy the main pool and the lookup pool are, in that order (for
    /// metrics; an in-memory SQLite database has one pool, reported twice).
    pub fn pool_usage(&self) -> (PoolUsage, PoolUsage) {
        (
            PoolUsage::of(&self.db, self.options.max_connections),
            PoolUsage::of(&self.lookups, self.options.lookup_connections),
        )
    }

    /// Closes both pools. Later calls fail with `Unavailable`.
    pub async fn close(&self) {
        let _ = self.db.close_by_ref().await;
        let _ = self.lookups.close_by_ref().await;
    }

    /// The one boundary of every public operation: runs `operation` with the
    /// operation deadline and classifies its error. Inner functions return
    /// the crate's raw `Error`, which only this (and `connect_with`)
    /// converts into a `StoreError`.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, StoreError> {
        deadline(self.options.operation_timeout, operation)
            .await
            .map_err(Error::classify)
    }

    /// Checks that the main pool reaches the database, within the same
    /// deadline as any other operation: it fails exactly when an admin call
    /// would (health readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async { Ok(self.db.ping().await?) }).await
    }

    /// Records the hasher fingerprint on first use; afterwards fails with
    /// `HasherMismatch` if it differs.
    pub async fn check_hasher(&self, fingerprint: &str) -> Result<(), StoreError> {
        self.bounded(keys::check_hasher(&self.db, fingerprint))
            .await
    }

    /// Creates the organization if it does not exist yet (idempotent).
    pub async fn ensure_organization(&self, org: &OrganizationId) -> Result<(), StoreError> {
        self.bounded(audit::insert_organization(&self.db, org.as_str()))
            .await
    }

    /// Walks every organization's hash chain (or only `org`) and reports the
    /// first broken link of each. A long chain takes long: the deadline
    /// applies to each statement, not to the whole walk.
    pub async fn verify_audit(&self, org: Option<&str>) -> Result<AuditReport, StoreError> {
        audit::verify(&self.db, org, self.options.operation_timeout)
            .await
            .map_err(Error::classify)
    }
}

/// `operation`, or `Unavailable` if it has not finished within `limit`.
/// Dropping a transaction's future rolls it back (sea-orm queues the
/// rollback, sqlx runs it before the connection is reused).
pub(crate) async fn deadline<T, E: Into<Error>>(
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Store(StoreError::Unavailable(Outage::Deadline(
            limit,
        )))),
    }
}

/// Opens a pool. A SQLite file another process holds locked (it is
/// migrating, or switching to WAL) is tried again every 50 ms: the caller's
/// connect deadline bounds the wait.
async fn open_pool(options: ConnectOptions) -> Result<DatabaseConnection, Error> {
    loop {
        match Database::connect(options.clone())
            .await
            .map_err(Error::from)
        {
            Err(error) if error.is_sqlite_busy() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            opened => return opened,
        }
    }
}

/// Pool options for `url` with at most `max` connections (SQLite files
/// at most 8), with the server-side safeguards of `options`.
fn pool_options(url: &str, options: &StoreOptions, max: u32) -> ConnectOptions {
    let mut pool = ConnectOptions::new(url);
    pool.sqlx_logging(false)
        .connect_timeout(options.connect_timeout)
        .acquire_timeout(options.acquire_timeout);
    let lock_wait = options.operation_timeout;
    let idle_in_transaction = options.idle_transaction_timeout;
    match backend_of(url) {
        DbBackend::Sqlite => {
            if is_in_memory(url) {
                // Every connection to an in-memory database is its own database:
                // keep exactly one, forever.
                pool.max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None::<Duration>)
                    .max_lifetime(None::<Duration>);
            } else {
                // WAL lets readers (the validation path) proceed while a writer
                // commits; writers queue on the busy timeout.
                pool.max_connections(max.min(8))
                    .map_sqlx_sqlite_opts(move |opts| {
                        opts.journal_mode(SqliteJournalMode::Wal)
                            .busy_timeout(lock_wait)
                    });
            }
        }
        backend => {
            pool.max_connections(max.max(1))
                .min_connections(1)
                .idle_timeout(Duration::from_secs(300));
            if backend == DbBackend::Postgres {
                pool.map_sqlx_postgres_opts(move |opts| {
                    opts.options([
                        ("lock_timeout", millis(lock_wait)),
                        (
                            "idle_in_transaction_session_timeout",
                            millis(idle_in_transaction),
                        ),
                    ])
                });
            } else {
                let lock_wait = whole_seconds(lock_wait);
                let idle = whole_seconds(idle_in_transaction);
                pool.map_sqlx_mysql_pool_opts(move |opts| {
                    opts.after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET SESSION innodb_lock_wait_timeout = {lock_wait}"
                            )))
                            .await?;
                            // MariaDB only; MySQL has no such variable and
                            // relies on the client deadline and TCP.
                            let _ = conn
                                .execute(sqlx::AssertSqlSafe(format!(
                                    "SET SESSION idle_transaction_timeout = {idle}"
                                )))
                                .await;
                            Ok(())
                        })
                    })
                });
            }
        }
    }
    pool
}

/// The backend a URL selects (what sea-orm will connect to).
fn backend_of(url: &str) -> DbBackend {
    if url.starts_with("sqlite:") {
        DbBackend::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        DbBackend::Postgres
    } else {
        DbBackend::MySql
    }
}

/// Whether `url` is an in-memory SQLite database.
fn is_in_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// MySQL's lock and idle timeouts count whole seconds: round up, at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
