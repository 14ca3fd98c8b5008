//! The store's error type.

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
