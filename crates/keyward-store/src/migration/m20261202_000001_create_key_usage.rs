//! `key_usage`: validations per key, per minute, per outcome, added up by
//! the usage flusher of every replica and pruned after the retention.
//!
//! Idempotent (`IF NOT EXISTS`): on MySQL/MariaDB DDL commits on its own, so
//! a run interrupted between the two statements must be able to run again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates `key_usage` and its pruning index.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyUsage {
    Table,
    OrganizationId,
    KeyId,
    MinuteStart,
    Outcome,
    Calls,
}

const ID_LEN: u32 = 64;
const OUTCOME_LEN: u32 = 32;
const MINUTE_INDEX: &str = "idx_key_usage_minute_start";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut table = Table::create();
        table
            .table(KeyUsage::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KeyUsage::OrganizationId)
                    .string_len(ID_LEN)
                    .not_null(),
            )
            .col(
                ColumnDef::new(KeyUsage::KeyId)
                    .string_len(ID_LEN)
                    .not_null(),
            )
            // Unix seconds of the minute's start (a multiple of 60): no time
            // zone or precision differences between backends.
            .col(
                ColumnDef::new(KeyUsage::MinuteStart)
                    .big_integer()
                    .not_null(),
            )
            // `ValidationCode::name`: a new code needs no migration.
            .col(
                ColumnDef::new(KeyUsage::Outcome)
                    .string_len(OUTCOME_LEN)
                    .not_null(),
            )
            .col(ColumnDef::new(KeyUsage::Calls).big_integer().not_null())
            .primary_key(
                Index::create()
                    .col(KeyUsage::KeyId)
                    .col(KeyUsage::MinuteStart)
                    .col(KeyUsage::Outcome),
            );
        if manager.get_database_backend() == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate("utf8mb4_bin");
        }
        manager.create_table(table.take()).await?;
        // Pruning reads the oldest rows first. Checked rather than `IF NOT
        // EXISTS`, which MySQL's CREATE INDEX lacks.
        if manager.has_index("key_usage", MINUTE_INDEX).await? {
            return Ok(());
        }
        manager
            .create_index(
                Index::create()
                    .name(MINUTE_INDEX)
                    .table(KeyUsage::Table)
                    .col(KeyUsage::MinuteStart)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeyUsage::Table).if_exists().take())
            .await
    }
}
