//! `api_keys.policy`: a key's policy as versioned JSON text, NULL for a key
//! without restrictions (see the store's `policy` module for the format).
//!
//! Idempotent: on MySQL/MariaDB DDL commits on its own, so a run that added
//! the column but was not recorded must be able to run again.

use sea_orm_migration::prelude::*;

/// Adds `api_keys.policy`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Policy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("api_keys", "policy").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(ColumnDef::new(ApiKeys::Policy).text().null())
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("api_keys", "policy").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::Policy)
                    .take(),
            )
            .await
    }
}
