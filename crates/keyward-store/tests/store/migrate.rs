//! Two replicas starting on one empty database both migrate it.

use keyward_store::Store;
use keyward_store::migration::Migrator;
use keyward_store::testing::{self, Backend, TestDatabase};
use sea_orm::{ConnectionTrait, TransactionTrait};
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

/// The policy migration and the credits migration go down and up again,
/// and run again harmlessly when their columns exist but their record does
/// not (MySQL/MariaDB commit DDL on their own, so an interrupted run can
/// leave exactly that), or when only some of their columns exist.
async fn the_policy_migrations_reverse_and_repeat(backend: Backend) {
    testing::run(backend, |store| async move {
        let db = store.connection();
        // From the end: the credits columns are the last migration, the
        // policy column the third last.
        for (name, back) in [
            ("m20261203_000001_add_credits_spent", 1),
            ("m20261202_000001_add_key_policy", 3),
        ] {
            Migrator::down(db, Some(back)).await.expect("down");
            let pending = Migrator::get_pending_migrations(db)
                .await
                .expect("read migrations");
            assert_eq!(pending.len(), back as usize, "{name}");
            Migrator::up(db, None).await.expect("up again");
            db.execute_unprepared(&format!(
                "DELETE FROM keyward_migrations WHERE version = '{name}'"
            ))
            .await
            .expect("forget the record");
            Migrator::up(db, None)
                .await
                .expect("up over existing columns");
        }
        // Interrupted after its first column.
        Migrator::down(db, Some(1)).await.expect("down");
        // On one connection, read first: an SQLite connection checks an
        // ALTER against the schema it last read, which may predate the drop.
        let txn = db.begin().await.expect("begin");
        txn.execute_unprepared("SELECT COUNT(*) FROM api_keys")
            .await
            .expect("read the schema");
        txn.execute_unprepared("ALTER TABLE api_keys ADD COLUMN credits_set_at BIGINT NULL")
            .await
            .expect("one column");
        txn.commit().await.expect("commit");
        Migrator::up(db, None).await.expect("up over one column");

        let mut key = new_key("acme", "limited");
        key.policy = keyward_core::Policy {
            allowed_cidrs: keyward_core::AllowedCidrs::parse(&["10.0.0.0/8"]).expect("valid"),
            credits: Some(keyward_core::Credits {
                remaining: 10,
                refill: None,
                set_at: 0,
            }),
            ..keyward_core::Policy::default()
        };
        store
            .ensure_organization(&key.organization_id)
            .await
            .expect("organization");
        let created = store.create_key(key).await.expect("the schema is complete");
        let spent = keyward_core::CreditsSpent {
            used: 4,
            ..created.credits_spent
        };
        store
            .add_credit_spends(&[(created.id.clone(), spent)])
            .await
            .expect("spend");
        let read = store.get_key("acme", &created.id).await.expect("read back");
        assert_eq!(read.policy().allowed_cidrs.to_strings(), ["10.0.0.0/8"]);
        assert_eq!(read.credits_spent, spent);
    })
    .await;
}

per_backend!(the_policy_migrations_reverse_and_repeat, sqlite: Sqlite, postgres: Postgres, mariadb: MariaDb);
