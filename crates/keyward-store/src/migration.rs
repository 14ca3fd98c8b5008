//! Schema migrations with sea-orm-migration.
//!
//! Each migration is a timestamped module with `up` and `down`, written with
//! the schema builder so one definition serves SQLite, PostgreSQL and
//! MySQL/MariaDB. Applied migrations are recorded in `keyward_migrations`.

use sea_orm_migration::prelude::*;

mod m20261123_000001_create_tables;
mod m20261201_000001_create_feed;
mod m20261202_000001_add_key_policy;
mod m20261202_000001_create_key_usage;
mod m20261203_000001_add_credits_spent;

/// keyward's migrations, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_tables::Migration),
            Box::new(m20261201_000001_create_feed::Migration),
            Box::new(m20261202_000001_add_key_policy::Migration),
            Box::new(m20261202_000001_create_key_usage::Migration),
            Box::new(m20261203_000001_add_credits_spent::Migration),
        ]
    }

    // Our own table name, so keyward can share a database with another
    // sea-orm application without mixing their migration histories.
    fn migration_table_name() -> DynIden {
        Alias::new("keyward_migrations").into_iden()
    }
}
