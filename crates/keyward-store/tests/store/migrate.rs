//! Two replicas starting on one empty database both migrate it.

use keyward_store::Store;
use keyward_store::migration::Migrator;
use keyward_store::testing::{self, Backend, TestDatabase};
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;

use crate::helpers::new_key;

async fn concurrent_migrations_both_succeed(backend: Backend) {
    // A few rounds, each on a fresh empty database, to make the race likely.
    for _ in 0..4 {
        let Some(database) = TestDatabase::create(backend).await else {
            return;
        };
        let (a, b) = tokio::join!(
            Store::connect_with(&database.url, testing::options()),
            Store::connect_with(&database.url, testing::options())
        );
        let (a, b) = (a.expect("connect a"), b.expect("connect b"));
        let (ran_a, ran_b) = tokio::join!(a.migrate(), b.migrate());
        let pending = Migrator::get_pending_migrations(a.connection()).await;
        let created = b.create_key(new_key("acme", "after")).await;
        a.close().await;
        b.close().await;
        database.drop_database().await;
        ran_a.expect("first replica migrates");
        ran_b.expect("second replica migrates");
        assert!(pending.expect("read migrations").is_empty());
        created.expect("the schema is complete");
    }
}

per_backend!(concurrent_migrations_both_succeed, sqlite: Sqlite, postgres: Postgres, mariadb: MariaDb);

/// The policy column's migration goes down and up again, and runs again
/// harmlessly when its column exists but its record does not (MySQL/MariaDB
/// commit DDL on their own, so an interrupted run can leave exactly that).
async fn the_policy_migration_reverses_and_repeats(backend: Backend) {
    testing::run(backend, |store| async move {
        let db = store.connection();
        Migrator::down(db, Some(1)).await.expect("down");
        assert_eq!(
            Migrator::get_pending_migrations(db)
                .await
                .expect("read migrations")
                .len(),
            1
        );
        Migrator::up(db, None).await.expect("up again");
        db.execute_unprepared(
            "DELETE FROM keyward_migrations WHERE version = 'm20261202_000001_add_key_policy'",
        )
        .await
        .expect("forget the record");
        Migrator::up(db, None)
            .await
            .expect("up over an existing column");
        let mut key = new_key("acme", "limited");
        key.policy = keyward_core::Policy {
            allowed_cidrs: keyward_core::AllowedCidrs::parse(&["10.0.0.0/8"]).expect("valid"),
            ..keyward_core::Policy::default()
        };
        store
            .ensure_organization(&key.organization_id)
            .await
            .expect("organization");
        let created = store.create_key(key).await.expect("the schema is complete");
        let read = store.get_key("acme", &created.id).await.expect("read back");
        assert_eq!(read.policy().allowed_cidrs.to_strings(), ["10.0.0.0/8"]);
    })
    .await;
}

per_backend!(the_policy_migration_reverses_and_repeats, sqlite: Sqlite, postgres: Postgres, mariadb: MariaDb);
