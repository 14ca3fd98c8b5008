//! What has been spent of a key's credits, written in batches by usage
//! flushes apart from the policy: `api_keys.credits_set_at` (the credits
//! setting spent from, NULL without credits), `credits_period` (its refill
//! period) and `credits_used` (spent in that period).
//!
//! Idempotent, one column at a time: on MySQL/MariaDB DDL commits on its
//! own, so a run that added some columns but was not recorded must be able
//! to run again (and SQLite adds one column per statement anyway).

use sea_orm_migration::prelude::*;

/// Adds the `api_keys.credits_*` columns.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum ApiKeys {
    Table,
    CreditsSetAt,
    CreditsPeriod,
    CreditsUsed,
}

impl ApiKeys {
    fn definition(self) -> ColumnDef {
        let mut column = ColumnDef::new(self);
        column.big_integer();
        match self {
            Self::CreditsUsed => column.not_null().default(0),
            _ => column.null(),
        };
        column
    }
}

const COLUMNS: [ApiKeys; 3] = [
    ApiKeys::CreditsSetAt,
    ApiKeys::CreditsPeriod,
    ApiKeys::CreditsUsed,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in COLUMNS {
            if manager
                .has_column("api_keys", &Iden::to_string(&column))
                .await?
            {
                continue;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(column.definition())
                        .take(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in COLUMNS {
            if !manager
                .has_column("api_keys", &Iden::to_string(&column))
                .await?
            {
                continue;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
