//! Test support (feature `testing`): a fresh, uniquely named database per test
//! on each backend, and [`store_test!`](crate::store_test) to run one test body
//! on all of them.
//!
//! Servers are found through environment variables:
//! - `KEYWARD_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`
//! - `KEYWARD_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/mysql`
//!
//! Each URL names a database to connect to for `CREATE DATABASE`; tests get
//! their own database next to it. When a server cannot be reached, the test is
//! skipped with a loud `SKIPPED:` line on stderr, except when `CI=true`: there
//! a missing database fails the test.

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

use crate::{Store, StoreOptions};

/// Admin URL of the PostgreSQL server used by tests, unless `KEYWARD_TEST_POSTGRES_URL` is set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Admin URL of the MySQL/MariaDB server used by tests, unless `KEYWARD_TEST_MYSQL_URL` is set.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// A database backend keyward supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A new file in the system temporary directory.
    Sqlite,
    /// A new database on the server at `KEYWARD_TEST_POSTGRES_URL`.
    Postgres,
    /// A new database on the server at `KEYWARD_TEST_MYSQL_URL`.
    MariaDb,
}

impl Backend {
    /// All backends, in the order tests run them.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::MariaDb];

    /// A short lowercase name: `sqlite`, `postgres`, `mariadb`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MariaDb => "mariadb",
        }
    }
}

/// A fresh database that exists until [`drop_database`](Self::drop_database).
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of the new database, for `Store::connect` or a server's
    /// `--database-url`.
    pub url: String,
    backend: Backend,
    /// The database name (server backends) or file path (SQLite).
    name: String,
    /// Where to connect to drop it (server backends).
    admin_url: Option<String>,
}

impl TestDatabase {
    /// Creates a fresh, uniquely named database. `None` (after a loud
    /// `SKIPPED:` line on stderr) if the backend's server is unreachable;
    /// panics instead when the environment says `CI=true`.
    pub async fn create(backend: Backend) -> Option<TestDatabase> {
        let unique = keyward_core::new_ulid().to_ascii_lowercase();
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("keyward_t_{unique}.db"));
                let name = path.to_string_lossy().into_owned();
                Some(TestDatabase {
                    url: format!("sqlite://{name}?mode=rwc"),
                    backend,
                    name,
                    admin_url: None,
                })
            }
            Backend::Postgres | Backend::MariaDb => {
                let (variable, default) = if backend == Backend::Postgres {
                    ("KEYWARD_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
                } else {
                    ("KEYWARD_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)
                };
                let admin_url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
                let name = format!("keyward_t_{unique}");
                if let Some(reason) = known_unavailable(backend) {
                    // Found down by an earlier test of this process: skip at
                    // once instead of waiting for another connect timeout.
                    unavailable(backend, &admin_url, &reason);
                    return None;
                }
                let admin = match admin_connect(&admin_url).await {
                    Ok(admin) => admin,
                    Err(err) => {
                        let reason = err.to_string();
                        remember_unavailable(backend, &reason);
                        unavailable(backend, &admin_url, &reason);
                        return None;
                    }
                };
                let create = if backend == Backend::Postgres {
                    format!("CREATE DATABASE \"{name}\"")
                } else {
                    format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                };
                let created = admin.execute_unprepared(&create).await;
                let _ = admin.close().await;
                if let Err(err) = created {
                    panic!("cannot create test database {name} at {admin_url}: {err}");
                }
                Some(TestDatabase {
                    url: with_database(&admin_url, &name),
                    backend,
                    name,
                    admin_url: Some(admin_url),
                })
            }
        }
    }

    /// The backend of this database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Drops the database (deletes the SQLite files). Close every connection
    /// to it first; PostgreSQL connections still open are terminated.
    pub async fn drop_database(self) {
        match &self.admin_url {
            None => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", self.name)));
                }
            }
            Some(admin_url) => {
                let statement = if self.backend == Backend::Postgres {
                    format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)
                } else {
                    format!("DROP DATABASE IF EXISTS `{}`", self.name)
                };
                match admin_connect(admin_url).await {
                    Ok(admin) => {
                        if let Err(err) = admin.execute_unprepared(&statement).await {
                            eprintln!("warning: cannot drop test database {}: {err}", self.name);
                        }
                        let _ = admin.close().await;
                    }
                    Err(err) => {
                        eprintln!("warning: cannot drop test database {}: {err}", self.name);
                    }
                }
            }
        }
    }
}

/// Runs `body` with the URL of a fresh database of `backend` (not migrated),
/// then drops the database, also when `body` panics (the panic is passed on
/// after the drop). Skips (see [`TestDatabase::create`]) when the backend is
/// unavailable. The one "fresh database, run, drop, re-raise" of the tests:
/// [`run`] and the server's end-to-end harness are built on it.
pub async fn on_fresh_database<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let outcome = {
        // Dropped at the end of this block, before the database is: whatever
        // the body still holds (servers, pools) lets go of it first.
        let mut body = std::pin::pin!(body(database.url.clone()));
        std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await
    };
    database.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` against a fresh, migrated database of `backend`, then drops
/// the database, also when `body` panics (the panic is passed on). Skips (see
/// [`TestDatabase::create`]) when the backend is unavailable.
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_with(backend, options(), body).await;
}

/// The options tests open stores with: the defaults, with deadlines long
/// enough for a loaded test machine (tests of deadlines set their own).
pub fn options() -> StoreOptions {
    StoreOptions {
        operation_timeout: Duration::from_secs(10),
        acquire_timeout: Duration::from_secs(5),
        ..StoreOptions::default()
    }
}

/// [`run`] with a store opened with `options`.
pub async fn run_with<F, Fut>(backend: Backend, options: StoreOptions, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    on_fresh_database(backend, |url| async move {
        let store = Store::connect_with(&url, options)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot connect to the fresh {} test database: {err}",
                    backend.name()
                )
            });
        if let Err(err) = store.migrate().await {
            store.close().await;
            panic!(
                "cannot migrate the fresh {} test database: {err}",
                backend.name()
            );
        }
        // A task of its own, so that the store is closed before the
        // database is dropped, also after a failing assertion.
        let outcome = tokio::spawn(body(store.clone())).await;
        store.close().await;
        if let Err(err) = outcome {
            match err.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(err) => panic!("test task failed: {err}"),
            }
        }
    })
    .await;
}

/// Defines one `#[tokio::test]` per backend running the same body on a
/// fresh, migrated database of each:
///
/// ```ignore
/// keyward_store::store_test!(creates_keys, |store| async move {
///     // `store` is a `keyward_store::Store`
/// });
/// ```
///
/// expands to a module `creates_keys` with tests `sqlite`, `postgres` and
/// `mariadb` (`cargo test creates_keys`, or `cargo test postgres`). Items of
/// the calling module are in scope in the body. The calling crate needs
/// `tokio` (with `macros` and `rt`) as a dev-dependency.
#[macro_export]
macro_rules! store_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                $crate::testing::run($crate::testing::Backend::Sqlite, $body).await;
            }

            #[tokio::test]
            async fn postgres() {
                $crate::testing::run($crate::testing::Backend::Postgres, $body).await;
            }

            #[tokio::test]
            async fn mariadb() {
                $crate::testing::run($crate::testing::Backend::MariaDb, $body).await;
            }
        }
    };
}

async fn admin_connect(url: &str) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Backends found unreachable by this process, with the reason.
static UNAVAILABLE: Mutex<Vec<(Backend, String)>> = Mutex::new(Vec::new());

fn known_unavailable(backend: Backend) -> Option<String> {
    let known = UNAVAILABLE.lock().unwrap_or_else(PoisonError::into_inner);
    known
        .iter()
        .find(|(b, _)| *b == backend)
        .map(|(_, reason)| reason.clone())
}

fn remember_unavailable(backend: Backend, reason: &str) {
    let mut known = UNAVAILABLE.lock().unwrap_or_else(PoisonError::into_inner);
    known.push((backend, reason.to_owned()));
}

/// Whether the tests run in CI (`CI` set to a truthy value: `true`, `1`,
/// `yes`), where a missing database or tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| {
        matches!(
            ci.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes"
        )
    })
}

/// Reports an unreachable server: a failure in CI, a loud skip elsewhere.
fn unavailable(backend: Backend, url: &str, err: &str) {
    let message = format!(
        "{} test database unavailable at {}: {err}",
        backend.name(),
        redact(url)
    );
    if in_ci() {
        panic!("{message} (CI=true: a missing database is a failure)");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of
    // passing tests, and a skip must not go unnoticed.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {message}");
}

/// `url` with its password, if any, replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `url` with its database (the path) replaced by `database`, keeping any query.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let authority = location.split('/').next().unwrap_or(location);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("mysql://root:pw@db:3306?ssl-mode=disabled", "t1"),
            "mysql://root:pw@db:3306/t1?ssl-mode=disabled"
        );
        assert_eq!(
            redact("mysql://root:pw@db:3306/mysql"),
            "mysql://root:***@db:3306/mysql"
        );
        assert_eq!(redact("mysql://root@db/mysql"), "mysql://root@db/mysql");
    }
}
