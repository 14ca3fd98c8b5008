//! The per-organization BLAKE3 hash chain over key events.
//!
//! Each organization's events form a chain: every event stores the hash of
//! its predecessor (`prev_hash`, 64 zeros for the first) and its own `hash`,
//! and `organizations.head_hash` holds the hash of the latest event. A writer
//! appends under the organization's row lock (see [`Chain::lock`]), in the same
//! transaction as the change the event records.
//!
//! `hash` is BLAKE3 in `derive_key` mode with the context [`CHAIN_CONTEXT`]
//! over this byte string, each field preceded by its length in bytes as a
//! little-endian `u64` so no two different events encode alike:
//!
//! ```text
//! prev_hash (64 hex characters as stored)
//! organization_id
//! key_id
//! event_type   (created, updated, ...)
//! actor_type   (api_key, user, service_account)
//! actor_id
//! at           (RFC 3339, six fractional digits, `Z`: 2026-11-23T10:00:00.123456Z)
//! changes      (the JSON text exactly as stored)
//! ```
//!
//! `seq` is not hashed: the database assigns it on insert. Reordering or
//! removing events still breaks the `prev_hash` links, and removing the latest
//! events breaks `head_hash`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    AccessMode, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, IsolationLevel, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use crate::entity::{key_events, organizations};
use crate::error::Error;
use crate::repo::deadline;
use crate::time;

/// The result of `Store::verify_audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Events checked.
    pub events_checked: u64,
    /// Organizations checked.
    pub organizations_checked: u64,
    /// The first broken link of each organization whose chain is broken.
    pub broken: Vec<BrokenLink>,
}

/// Where a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The organization.
    pub organization_id: String,
    /// The first event whose stored hash or predecessor link is wrong.
    pub seq: i64,
    /// What is wrong, e.g. "hash does not match the event's contents".
    pub reason: String,
}

/// BLAKE3 `derive_key` context of event hashes. Changing it breaks every chain.
pub(crate) const CHAIN_CONTEXT: &str = "keyward 2026-11-23 key event chain v1";

/// `prev_hash` of an organization's first event, and `head_hash` before it.
pub(crate) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Events read per query while verifying, to bound memory.
const VERIFY_BATCH: u64 = 1000;

/// The hashed contents of one event.
pub(crate) struct EventContent<'a> {
    pub organization_id: &'a str,
    pub key_id: &'a str,
    pub event_type: &'a str,
    pub actor_type: &'a str,
    pub actor_id: &'a str,
    pub at: DateTime<Utc>,
    pub changes: &'a str,
}

/// The chain hash of an event whose predecessor's hash is `prev_hash`.
pub(crate) fn event_hash(prev_hash: &str, event: &EventContent<'_>) -> String {
    let at = time::rfc3339(event.at);
    let mut hasher = blake3::Hasher::new_derive_key(CHAIN_CONTEXT);
    for field in [
        prev_hash,
        event.organization_id,
        event.key_id,
        event.event_type,
        event.actor_type,
        event.actor_id,
        at.as_str(),
        event.changes,
    ] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Changed field names with their new values. Serialized as one JSON object,
/// keys sorted (a `BTreeMap`), so the stored text is deterministic.
pub(crate) type Changes = BTreeMap<&'static str, serde_json::Value>;

/// An event about to be appended.
pub(crate) struct NewEvent<'a> {
    pub key_id: &'a str,
    pub event_type: &'a str,
    pub actor_type: &'a str,
    pub actor_id: &'a str,
    pub at: DateTime<Utc>,
    pub changes: Changes,
}

/// An organization's chain, locked for appending by the current transaction.
pub(crate) struct Chain {
    organization_id: String,
    head: String,
}

impl Chain {
    /// Locks `org`'s chain for the rest of the transaction `txn`, creating the
    /// organization if it does not exist yet.
    ///
    /// This must be the transaction's first statement: the `UPDATE` takes the
    /// organization's row lock on PostgreSQL and MySQL and the database write
    /// lock on SQLite, which serializes the writers of one organization on
    /// every backend. On SQLite, starting with a write also means the
    /// transaction never has to upgrade a read snapshot, which could fail with
    /// `SQLITE_BUSY` instead of waiting. The `UPDATE` changes no value
    /// (`event_count = event_count`): each append counts its own event, and
    /// a mutation that turns out to change nothing rolls back with no trace.
    pub(crate) async fn lock<C: ConnectionTrait>(txn: &C, org: &str) -> Result<Self, Error> {
        if !touch(txn, org).await? {
            insert_organization(txn, org).await?;
            if !touch(txn, org).await? {
                return Err(Error::Db(DbErr::RecordNotFound(format!(
                    "organization {org} vanished while being created"
                ))));
            }
        }
        let row = organizations::Entity::find_by_id(org.to_owned())
            .one(txn)
            .await?
            .ok_or_else(|| Error::Db(DbErr::RecordNotFound(format!("organization {org}"))))?;
        Ok(Self {
            organization_id: row.id,
            head: row.head_hash,
        })
    }

    /// Appends an event and moves the organization's head to it.
    pub(crate) async fn append<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        event: NewEvent<'_>,
    ) -> Result<(), Error> {
        let changes = serde_json::to_string(&event.changes)
            .map_err(|e| Error::corrupt(format!("event changes cannot be serialized: {e}")))?;
        let at = time::micros(event.at);
        let hash = event_hash(
            &self.head,
            &EventContent {
                organization_id: &self.organization_id,
                key_id: event.key_id,
                event_type: event.event_type,
                actor_type: event.actor_type,
                actor_id: event.actor_id,
                at,
                changes: &changes,
            },
        );
        key_events::Entity::insert(key_events::ActiveModel {
            seq: NotSet,
            organization_id: Set(self.organization_id.clone()),
            key_id: Set(event.key_id.to_owned()),
            event_type: Set(event.event_type.to_owned()),
            actor_type: Set(event.actor_type.to_owned()),
            actor_id: Set(event.actor_id.to_owned()),
            at: Set(time::db(at)),
            changes: Set(changes),
            prev_hash: Set(self.head.clone()),
            hash: Set(hash.clone()),
        })
        .exec_without_returning(txn)
        .await?;
        organizations::Entity::update_many()
            .col_expr(organizations::Column::HeadHash, Expr::value(hash.clone()))
            .col_expr(
                organizations::Column::EventCount,
                Expr::col(organizations::Column::EventCount).add(1),
            )
            .filter(organizations::Column::Id.eq(self.organization_id.as_str()))
            .exec(txn)
            .await?;
        self.head = hash;
        Ok(())
    }
}

/// Locks the organization's row without changing it; false if there is none.
async fn touch<C: ConnectionTrait>(txn: &C, org: &str) -> Result<bool, Error> {
    // Row counts are "rows matched" on every backend (sqlx asks MySQL for
    // CLIENT_FOUND_ROWS), so an unchanged row still counts.
    let result = organizations::Entity::update_many()
        .col_expr(
            organizations::Column::EventCount,
            Expr::col(organizations::Column::EventCount),
        )
        .filter(organizations::Column::Id.eq(org))
        .exec(txn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Inserts an organization with an empty chain, unless it exists.
pub(crate) async fn insert_organization<C: ConnectionTrait>(
    db: &C,
    org: &str,
) -> Result<(), Error> {
    organizations::Entity::insert(organizations::ActiveModel {
        id: Set(org.to_owned()),
        head_hash: Set(GENESIS_HASH.to_owned()),
        event_count: Set(0),
        created_at: Set(time::db(time::now())),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Walks the chains of every organization (or only `org`).
///
/// Each statement has the deadline `step` rather than the whole walk one: a
/// long chain legitimately takes long, a database that stops answering does not.
pub(crate) async fn verify(
    db: &DatabaseConnection,
    org: Option<&str>,
    step: Duration,
) -> Result<AuditReport, Error> {
    let organizations = match org {
        Some(org) => vec![org.to_owned()],
        None => {
            // Organizations with a row, plus any that only have events (their
            // row was deleted: that is reported as a break).
            let mut ids: Vec<String> = deadline(
                step,
                organizations::Entity::find()
                    .select_only()
                    .column(organizations::Column::Id)
                    .into_tuple()
                    .all(db),
            )
            .await?;
            let with_events: Vec<String> = deadline(
                step,
                key_events::Entity::find()
                    .select_only()
                    .column(key_events::Column::OrganizationId)
                    .distinct()
                    .into_tuple()
                    .all(db),
            )
            .await?;
            ids.extend(with_events);
            ids.sort();
            ids.dedup();
            ids
        }
    };

    let mut report = AuditReport::default();
    for org in organizations {
        verify_organization(db, &org, step, &mut report).await?;
    }
    Ok(report)
}

/// Verifies one organization's chain inside a read-only snapshot, so events
/// appended meanwhile cannot make the head look wrong.
async fn verify_organization(
    db: &DatabaseConnection,
    org: &str,
    step: Duration,
    report: &mut AuditReport,
) -> Result<(), Error> {
    // SQLite has no isolation levels to set: a read transaction is a snapshot.
    let txn = if db.get_database_backend() == DbBackend::Sqlite {
        deadline(step, db.begin()).await?
    } else {
        deadline(
            step,
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            ),
        )
        .await?
    };

    let row = deadline(
        step,
        organizations::Entity::find_by_id(org.to_owned()).one(&txn),
    )
    .await?;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut last_seq: Option<i64> = None;
    let mut count: i64 = 0;
    let mut broken: Option<(i64, String)> = None;

    'walk: loop {
        let mut batch = key_events::Entity::find()
            .filter(key_events::Column::OrganizationId.eq(org))
            .order_by_asc(key_events::Column::Seq)
            .limit(VERIFY_BATCH);
        if let Some(seq) = last_seq {
            batch = batch.filter(key_events::Column::Seq.gt(seq));
        }
        let events = deadline(step, batch.all(&txn)).await?;
        let done = (events.len() as u64) < VERIFY_BATCH;
        for event in events {
            report.events_checked += 1;
            count += 1;
            last_seq = Some(event.seq);
            if event.prev_hash != prev_hash {
                let reason = if count == 1 {
                    "prev_hash of the organization's first event is not 64 zeros"
                } else {
                    "prev_hash does not match the hash of the previous event (an event was removed, reordered or altered)"
                };
                broken = Some((event.seq, reason.to_owned()));
                break 'walk;
            }
            let expected = event_hash(
                &event.prev_hash,
                &EventContent {
                    organization_id: &event.organization_id,
                    key_id: &event.key_id,
                    event_type: &event.event_type,
                    actor_type: &event.actor_type,
                    actor_id: &event.actor_id,
                    at: time::utc(event.at),
                    changes: &event.changes,
                },
            );
            if event.hash != expected {
                broken = Some((
                    event.seq,
                    "hash does not match the event's contents".to_owned(),
                ));
                break 'walk;
            }
            prev_hash = event.hash;
        }
        if done {
            break;
        }
    }

    // Commit a read-only transaction: nothing to undo, and it ends the snapshot.
    deadline(step, txn.commit()).await?;

    if row.is_none() && last_seq.is_none() {
        // Neither a row nor events: nothing by that id to check.
        return Ok(());
    }
    report.organizations_checked += 1;

    let seq = last_seq.unwrap_or(0);
    let broken = broken.or_else(|| match &row {
        None => Some((
            seq,
            "the organization's row (the head of its chain) is missing".to_owned(),
        )),
        Some(row) if row.head_hash != prev_hash => Some((
            seq,
            "head_hash does not match the hash of the last event (events were removed or added outside keyward)".to_owned(),
        )),
        Some(row) if row.event_count != count => Some((
            seq,
            format!(
                "event_count is {} but the chain has {count} events",
                row.event_count
            ),
        )),
        Some(_) => None,
    });
    if let Some((seq, reason)) = broken {
        report.broken.push(BrokenLink {
            organization_id: org.to_owned(),
            seq,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(changes: &str) -> EventContent<'_> {
        EventContent {
            organization_id: "acme",
            key_id: "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
            event_type: "created",
            actor_type: "user",
            actor_id: "u1",
            at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            changes,
        }
    }

    #[test]
    fn hash_covers_every_field_and_the_predecessor() {
        let base = event_hash(GENESIS_HASH, &content("{}"));
        assert_eq!(base.len(), 64);
        assert_eq!(base, event_hash(GENESIS_HASH, &content("{}")));
        assert_ne!(base, event_hash(GENESIS_HASH, &content("{\"a\":1}")));
        assert_ne!(base, event_hash(&"1".repeat(64), &content("{}")));
        let mut other = content("{}");
        other.actor_id = "u2";
        assert_ne!(base, event_hash(GENESIS_HASH, &other));
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        let mut a = content("{}");
        a.organization_id = "ab";
        a.key_id = "c";
        let mut b = content("{}");
        b.organization_id = "a";
        b.key_id = "bc";
        assert_ne!(event_hash(GENESIS_HASH, &a), event_hash(GENESIS_HASH, &b));
    }
}
