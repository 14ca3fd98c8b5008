//! Migrations under a database lock, so replicas starting together on one
//! empty database migrate it once.
//!
//! - PostgreSQL: one transaction holds `pg_advisory_xact_lock` and runs every
//!   migration (PostgreSQL DDL is transactional: all or nothing).
//! - SQLite: one `BEGIN IMMEDIATE` transaction takes the database write lock
//!   first (a deferred one could fail to upgrade its read snapshot) and runs
//!   every migration.
//! - MySQL/MariaDB: DDL commits on its own, so a transaction cannot hold the
//!   lock; a dedicated one-connection pool takes `GET_LOCK` (a session lock,
//!   named after the database), runs the migrations in that session and
//!   releases it. The lock is what keeps a second replica from running half
//!   of them at the same time.
//!
//! `migrate` has no deadline: a schema change on a large table legitimately
//! takes long, and a replica waits for another's migration. It runs at
//! startup, where a hung database is visible to the operator.

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use super::Store;
use crate::error::{Error, StoreError};
use crate::migration::Migrator;

/// Key of the PostgreSQL advisory lock (advisory locks are per database).
/// "keyward" in ASCII.
const PG_LOCK_KEY: i64 = 0x006b_6579_7761_7264;

impl Store {
    /// Applies pending migrations, under a database lock (see the module
    /// docs). Safe to run from several replicas at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_inner().await.map_err(Error::classify)
    }

    async fn migrate_inner(&self) -> Result<(), Error> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = self.db.begin().await?;
                // The pool's session limits are for requests, not migrations.
                txn.execute_unprepared("SET LOCAL lock_timeout = 0").await?;
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"))
                    .await?;
                Migrator::up(&txn, None).await?;
                txn.commit().await?;
            }
            DbBackend::Sqlite => {
                let txn = self
                    .db
                    .begin_with_options(TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..TransactionOptions::default()
                    })
                    .await?;
                Migrator::up(&txn, None).await?;
                txn.commit().await?;
            }
            _ => {
                let session = self.migration_session().await?;
                let result = migrate_mysql(&session).await;
                // Closing the session also releases the lock if the release
                // above did not run.
                session.close_by_ref().await?;
                result?;
            }
        }
        Ok(())
    }

    /// A pool of exactly one connection to this store's database, so every
    /// statement of the migration (and the session lock) share one session.
    async fn migration_session(&self) -> Result<DatabaseConnection, Error> {
        let mut options = ConnectOptions::new(self.url.as_str());
        options
            .sqlx_logging(false)
            .max_connections(1)
            .min_connections(1)
            .connect_timeout(self.options.connect_timeout)
            .idle_timeout(None::<std::time::Duration>)
            .max_lifetime(None::<std::time::Duration>)
            .test_before_acquire(false);
        Ok(Database::connect(options).await?)
    }
}

async fn migrate_mysql(session: &DatabaseConnection) -> Result<(), Error> {
    // Wait for another replica's migration as long as it takes (a day at most).
    let locked = session
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::MySql,
            "SELECT CAST(GET_LOCK(CONCAT('keyward_migrate:', DATABASE()), 86400) AS SIGNED) AS locked",
        ))
        .await?
        .and_then(|row| row.try_get::<Option<i64>>("", "locked").ok().flatten());
    if locked != Some(1) {
        return Err(Error::Db(DbErr::Custom(format!(
            "could not take the migration lock (GET_LOCK returned {locked:?})"
        ))));
    }
    let result = Migrator::up(session, None).await;
    session
        .execute_unprepared("DO RELEASE_LOCK(CONCAT('keyward_migrate:', DATABASE()))")
        .await?;
    Ok(result?)
}
