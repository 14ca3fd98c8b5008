//! `keyward_feed`: one row whose lock makes `key_events.seq` order commit
//! order (see the store's `feed` module).
//!
//! Idempotent (`IF NOT EXISTS`, insert-unless-present): on MySQL/MariaDB DDL
//! commits on its own, so a run interrupted between the two statements must
//! be able to run again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates `keyward_feed` with its one row.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeywardFeed {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut table = Table::create();
        table.table(KeywardFeed::Table).if_not_exists().col(
            ColumnDef::new(KeywardFeed::Id)
                .integer()
                .not_null()
                .primary_key(),
        );
        if manager.get_database_backend() == DbBackend::MySql {
            table.engine("InnoDB");
        }
        manager.create_table(table.take()).await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(KeywardFeed::Table)
                    .columns([KeywardFeed::Id])
                    .values_panic([1.into()])
                    .on_conflict(
                        OnConflict::column(KeywardFeed::Id)
                            .do_nothing_on([KeywardFeed::Id])
                            .to_owned(),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeywardFeed::Table).if_exists().take())
            .await
    }
}
