//! The store's error type.

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
    /// The configured lookup secret does not match the one this database was created with.
    #[error(
        "the configured lookup-hash secret does not match this database: start keyward with the secret the database was created with"
    )]
    HasherMismatch,
    /// The database could not be reached or refused the connection.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sea_orm::DbErr),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A stored row could not be read back into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database rolled the transaction back as the victim of a
    /// deadlock or a serialization conflict (SQLSTATE 40001 on MySQL/MariaDB
    /// and PostgreSQL, 40P01 on PostgreSQL): running it again is correct.
    pub(crate) fn is_conflict(&self) -> bool {
        let Self::Database(
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

    /// Moves database errors that mean "the database cannot be reached right
    /// now" into `Unavailable`. Every public `Store` method passes its error
    /// through here, so `?` on a `DbErr` anywhere inside is classified once.
    pub(crate) fn classify(self) -> Self {
        match self {
            Self::Database(err) if is_unavailable(&err) => Self::Unavailable(err),
            other => other,
        }
    }
}

/// Whether a database error is about reaching the database rather than about
/// the statement: connection refused or lost, pool exhausted, server shutting
/// down, too many connections, or (SQLite) the database locked for too long.
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
                // Too many connections, server shutdown, cannot connect, server
                // gone away, connection lost, connection killed.
                matches!(
                    mysql.number(),
                    1040 | 1053 | 1927 | 2002 | 2003 | 2006 | 2013
                )
            } else if db_err.try_downcast_ref::<SqlxSqliteError>().is_some() {
                // Primary result codes: BUSY, LOCKED, IOERR, CANTOPEN.
                db_err
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 14))
            } else {
                // PostgreSQL SQLSTATE: class 08 (connection exception), 53300
                // (too many connections), 57P01..57P03 (shutdown, cannot connect now).
                db_err.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(&*code, "53300" | "57P01" | "57P02" | "57P03")
                })
            }
        }
        _ => false,
    }
}
