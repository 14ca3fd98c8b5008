//! The store's error type, and the one place raw database errors become it.

use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr, SqlxError, SqlxMySqlError, SqlxSqliteError};

/// What can go wrong in the store. The server maps each variant to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such key in this organization (or in any: callers cannot tell).
    #[error("key not found")]
    NotFound,
    /// The change conflicts with the key's lifecycle (e.g. reactivating a revoked key).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The organization already has its maximum number of keys (archived and
    /// revoked keys count until they are deleted).
    #[error(
        "the organization already has the maximum of {limit} keys: delete keys it no longer needs"
    )]
    TooManyKeys {
        /// The configured maximum (`StoreOptions::max_keys_per_organization`).
        limit: u64,
    },
    /// The configured lookup secret does not match the one this database was created with.
    #[error(
        "the configured lookup-hash secret does not match this database: start keyward with the secret the database was created with"
    )]
    HasherMismatch,
    /// The database could not be reached, refused the connection, or did not
    /// answer within the operation's deadline.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Outage),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] DbErr),
    /// A stored row could not be read back into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Why the database is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum Outage {
    /// The database driver reported a connection-level failure.
    #[error(transparent)]
    Database(DbErr),
    /// The database did not answer within the deadline (see `StoreOptions`).
    #[error("no answer within {0:?}")]
    Deadline(Duration),
}

/// An error inside the store before it reaches a public method.
///
/// Raw database errors (`DbErr`) convert into this type, never straight into
/// [`StoreError`]: the only way out is [`Error::classify`], which the store's
/// single boundary (`Store::bounded`) applies. So no public method can return
/// an unclassified database error.
#[derive(Debug)]
pub(crate) enum Error {
    /// A raw database error, not yet classified.
    Db(DbErr),
    /// An error that is already what the caller should see.
    Store(StoreError),
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        Self::Db(err)
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl Error {
    /// A row that cannot be read back into a domain value.
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Store(StoreError::Corrupt(what.into()))
    }

    /// Whether the database rolled the transaction back as the victim of a
    /// deadlock or a serialization conflict (SQLSTATE 40001 on MySQL/MariaDB
    /// and PostgreSQL, 40P01 on PostgreSQL): running it again is correct.
    pub(crate) fn is_conflict(&self) -> bool {
        let Self::Db(
            DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)),
        ) = self
        else {
            return false;
        };
        match &**err {
            SqlxError::Database(db_err) => db_err
                .code()
                .is_some_and(|code| matches!(&*code, "40001" | "40P01")),
            _ => false,
        }
    }

    /// Whether SQLite refused because another connection holds the database
    /// (BUSY or LOCKED), as when connecting while another process migrates:
    /// trying again shortly is correct.
    pub(crate) fn is_sqlite_busy(&self) -> bool {
        let Self::Db(
            DbErr::Conn(RuntimeErr::SqlxError(err))
            | DbErr::Exec(RuntimeErr::SqlxError(err))
            | DbErr::Query(RuntimeErr::SqlxError(err)),
        ) = self
        else {
            return false;
        };
        match &**err {
            SqlxError::Database(db_err)
                if db_err.try_downcast_ref::<SqlxSqliteError>().is_some() =>
            {
                db_err
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            }
            _ => false,
        }
    }

    /// The error a caller sees: database errors that mean "the database cannot
    /// be reached right now" become `Unavailable`, other database errors
    /// `Database`.
    pub(crate) fn classify(self) -> StoreError {
        match self {
            Self::Db(err) if is_unavailable(&err) => StoreError::Unavailable(Outage::Database(err)),
            Self::Db(err) => StoreError::Database(err),
            Self::Store(err) => err,
        }
    }
}

/// Whether a database error is about reaching the database rather than about
/// the statement: connection refused or lost, pool exhausted, server shutting
/// down, too many connections, a lock wait given up, or (SQLite) the database
/// locked for too long.
fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(sqlx_err)) => {
            // A malformed URL is a configuration mistake, not an outage.
            !matches!(**sqlx_err, SqlxError::Configuration(_))
        }
        DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx_err))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_err)) => sqlx_unavailable(sqlx_err),
        _ => false,
    }
}

fn sqlx_unavailable(err: &SqlxError) -> bool {
    match err {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => true,
        SqlxError::Database(db_err) => {
            if let Some(mysql) = db_err.try_downcast_ref::<SqlxMySqlError>() {
                // Too many connections, server shutdown, lock wait timeout,
                // cannot connect, server gone away, connection lost,
                // connection killed.
                matches!(
                    mysql.number(),
                    1040 | 1053 | 1205 | 1927 | 2002 | 2003 | 2006 | 2013
                )
            } else if db_err.try_downcast_ref::<SqlxSqliteError>().is_some() {
                // Primary result codes: BUSY, LOCKED, IOERR, CANTOPEN.
                db_err
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 14))
            } else {
                // PostgreSQL SQLSTATE: class 08 (connection exception), 53300
                // (too many connections), 55P03 (lock_timeout), 57014
                // (statement cancelled), 57P01..57P03 (shutdown, cannot
                // connect now), 25P03 (idle-in-transaction timeout).
                db_err.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(
                            &*code,
                            "53300" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25P03"
                        )
                })
            }
        }
        _ => false,
    }
}
