//! Two replicas starting on one empty database both migrate it.

use keyward_store::Store;
use keyward_store::migration::Migrator;
use keyward_store::testing::{self, Backend, TestDatabase};
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
