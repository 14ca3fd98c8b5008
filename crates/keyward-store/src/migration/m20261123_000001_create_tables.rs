//! The initial schema: `organizations`, `api_keys`, `key_events` and
//! `keyward_settings`.
//!
//! Portability notes:
//! - Timestamps are `timestamp with time zone` on PostgreSQL (microseconds)
//!   and SQLite (RFC 3339 text), but `datetime(6)` on MySQL/MariaDB: MySQL's
//!   `timestamp` ends in 2038 and keeps no fractional seconds by default, and
//!   `datetime` holds the UTC value we write unchanged by the session time zone.
//! - Indexed strings are `varchar` of at most 128 characters, so composite
//!   indexes stay far below InnoDB's 3072-byte key limit in utf8mb4.
//! - MySQL tables use `utf8mb4_bin`, so comparisons (keyset cursors, ids,
//!   lookup hashes) are byte-exact as on the other backends.
//! - Long free text (`description`, JSON) is `text`, which MySQL cannot give a
//!   literal default; the store always writes these columns.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates the initial tables and indexes.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
    HeadHash,
    EventCount,
    CreatedAt,
}

#[derive(DeriveIden)]
enum KeywardSettings {
    Table,
    Name,
    Value,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OrganizationId,
    WorkspaceId,
    Kind,
    Environment,
    Name,
    Description,
    Scopes,
    Metadata,
    LookupHash,
    Prefix,
    PartialKeyHint,
    Disabled,
    CreatedAt,
    UpdatedAt,
    CreatedByType,
    CreatedById,
    UserId,
    ServiceAccountId,
    ExpiresAt,
    LastUsedAt,
    LastUsedIp,
    LastUsedUserAgent,
    ArchivedAt,
    RevokedAt,
    RotatedFromId,
}

#[derive(DeriveIden)]
enum KeyEvents {
    Table,
    Seq,
    OrganizationId,
    KeyId,
    EventType,
    ActorType,
    ActorId,
    At,
    Changes,
    PrevHash,
    Hash,
}

/// Length of ids (`key_` + 26 ULID characters) and organization ids, with room to spare.
const ID_LEN: u32 = 64;
/// Length of references to things keyward does not own (workspace, user, service account).
const REF_LEN: u32 = 128;
/// A BLAKE3 hash in hex.
const HASH_LEN: u32 = 64;

/// Helpers that pick per-backend column types.
struct Columns {
    backend: DbBackend,
}

impl Columns {
    fn string(&self, name: impl IntoIden, len: u32) -> ColumnDef {
        ColumnDef::new(name).string_len(len).not_null().take()
    }

    fn string_null(&self, name: impl IntoIden, len: u32) -> ColumnDef {
        ColumnDef::new(name).string_len(len).null().take()
    }

    fn hash(&self, name: impl IntoIden) -> ColumnDef {
        ColumnDef::new(name).char_len(HASH_LEN).not_null().take()
    }

    fn text(&self, name: impl IntoIden) -> ColumnDef {
        ColumnDef::new(name).text().not_null().take()
    }

    fn timestamp(&self, name: impl IntoIden) -> ColumnDef {
        let mut column = ColumnDef::new(name);
        if self.backend == DbBackend::MySql {
            column.custom(Alias::new("datetime(6)"));
        } else {
            column.timestamp_with_time_zone();
        }
        column.take()
    }

    fn timestamp_not_null(&self, name: impl IntoIden) -> ColumnDef {
        self.timestamp(name).not_null().take()
    }

    fn timestamp_null(&self, name: impl IntoIden) -> ColumnDef {
        self.timestamp(name).null().take()
    }

    /// A `CREATE TABLE` with the backend's table options.
    fn table(&self, name: impl IntoIden + 'static) -> TableCreateStatement {
        let mut table = Table::create();
        table.table(name);
        if self.backend == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate("utf8mb4_bin");
        }
        table
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let c = Columns {
            backend: manager.get_database_backend(),
        };

        manager
            .create_table(
                c.table(Organizations::Table)
                    .col(c.string(Organizations::Id, ID_LEN).primary_key())
                    .col(c.hash(Organizations::HeadHash))
                    .col(
                        ColumnDef::new(Organizations::EventCount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(c.timestamp_not_null(Organizations::CreatedAt))
                    .take(),
            )
            .await?;

        manager
            .create_table(
                c.table(KeywardSettings::Table)
                    .col(c.string(KeywardSettings::Name, REF_LEN).primary_key())
                    .col(c.text(KeywardSettings::Value))
                    .take(),
            )
            .await?;

        manager
            .create_table(
                c.table(ApiKeys::Table)
                    .col(c.string(ApiKeys::Id, ID_LEN).primary_key())
                    .col(c.string(ApiKeys::OrganizationId, ID_LEN))
                    .col(c.string_null(ApiKeys::WorkspaceId, REF_LEN))
                    .col(c.string(ApiKeys::Kind, 16))
                    .col(c.string(ApiKeys::Environment, 16))
                    // Names are at most 128 characters; varchar counts characters
                    // (not bytes) on PostgreSQL and MySQL.
                    .col(c.string(ApiKeys::Name, 256))
                    .col(c.text(ApiKeys::Description))
                    .col(c.text(ApiKeys::Scopes))
                    .col(c.text(ApiKeys::Metadata))
                    .col(c.hash(ApiKeys::LookupHash))
                    .col(c.string(ApiKeys::Prefix, 32))
                    .col(c.string(ApiKeys::PartialKeyHint, 64))
                    .col(
                        ColumnDef::new(ApiKeys::Disabled)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(c.timestamp_not_null(ApiKeys::CreatedAt))
                    .col(c.timestamp_not_null(ApiKeys::UpdatedAt))
                    .col(c.string(ApiKeys::CreatedByType, 32))
                    .col(c.string(ApiKeys::CreatedById, REF_LEN))
                    .col(c.string_null(ApiKeys::UserId, REF_LEN))
                    .col(c.string_null(ApiKeys::ServiceAccountId, REF_LEN))
                    .col(c.timestamp_null(ApiKeys::ExpiresAt))
                    .col(c.timestamp_null(ApiKeys::LastUsedAt))
                    .col(c.string_null(ApiKeys::LastUsedIp, 64))
                    .col(c.string_null(ApiKeys::LastUsedUserAgent, 512))
                    .col(c.timestamp_null(ApiKeys::ArchivedAt))
                    .col(c.timestamp_null(ApiKeys::RevokedAt))
                    .col(c.string_null(ApiKeys::RotatedFromId, ID_LEN))
                    .take(),
            )
            .await?;

        // Keyset pagination within an organization: a page costs the same at any depth.
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_organization_id_id")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::OrganizationId)
                    .col(ApiKeys::Id)
                    .take(),
            )
            .await?;
        // The validation path: one indexed lookup by hash.
        manager
            .create_index(
                Index::create()
                    .name("ux_api_keys_lookup_hash")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::LookupHash)
                    .unique()
                    .take(),
            )
            .await?;

        manager
            .create_table(
                c.table(KeyEvents::Table)
                    .col(
                        ColumnDef::new(KeyEvents::Seq)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(c.string(KeyEvents::OrganizationId, ID_LEN))
                    .col(c.string(KeyEvents::KeyId, ID_LEN))
                    .col(c.string(KeyEvents::EventType, 32))
                    .col(c.string(KeyEvents::ActorType, 32))
                    .col(c.string(KeyEvents::ActorId, REF_LEN))
                    .col(c.timestamp_not_null(KeyEvents::At))
                    .col(c.text(KeyEvents::Changes))
                    .col(c.hash(KeyEvents::PrevHash))
                    .col(c.hash(KeyEvents::Hash))
                    .take(),
            )
            .await?;

        manager
            .create_index(
                Index::create()
                    .name("idx_key_events_organization_id_seq")
                    .table(KeyEvents::Table)
                    .col(KeyEvents::OrganizationId)
                    .col(KeyEvents::Seq)
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_key_events_organization_id_key_id_seq")
                    .table(KeyEvents::Table)
                    .col(KeyEvents::OrganizationId)
                    .col(KeyEvents::KeyId)
                    .col(KeyEvents::Seq)
                    .take(),
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping a table drops its indexes on every backend.
        for table in [
            KeyEvents::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            KeywardSettings::Table.into_iden(),
            Organizations::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().take())
                .await?;
        }
        Ok(())
    }
}
