//! The change feed: every organization's events in `seq` order, which is
//! commit order.
//!
//! Why `seq` order is commit order: `seq` is assigned when an event is
//! inserted (an auto-increment), and every writer inserts its events only
//! while it holds the one feed lock ([`lock`]: the row of `keyward_feed`),
//! which it keeps until it commits. So while a transaction holds a `seq`
//! that is not yet committed, no other transaction can take a larger one;
//! the next writer gets the lock, and its `seq`s, only after the previous
//! one committed (or rolled back, leaving a gap). A reader therefore never
//! sees a `seq` while a smaller one can still appear, and a follower that
//! reads `seq > cursor` never skips an event. Lock order is always
//! organization, then feed (no deadlock between writers). On SQLite the
//! database-wide write lock already serializes writers; the feed row changes
//! nothing there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyward_core::{Actor, ActorKind, KeyId};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{MAX_PAGE, Store};
use crate::entity::{key_events, keyward_feed};
use crate::error::{Error, StoreError};
use crate::time;

/// What kind of mutation an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A key was created (by CreateKey, RotateKey or bootstrap).
    Created,
    /// Fields changed through UpdateKey.
    Updated,
    /// Archived.
    Archived,
    /// Reactivated.
    Reactivated,
    /// Revoked.
    Revoked,
    /// Deleted (the event outlives the key).
    Deleted,
    /// The key was rotated: recorded on the old key; the new key has its own `Created`.
    Rotated,
}

impl EventType {
    /// The stored name.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Archived => "archived",
            Self::Reactivated => "reactivated",
            Self::Revoked => "revoked",
            Self::Deleted => "deleted",
            Self::Rotated => "rotated",
        }
    }

    /// Reads the stored name.
    fn from_stored(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "archived" => Self::Archived,
            "reactivated" => Self::Reactivated,
            "revoked" => Self::Revoked,
            "deleted" => Self::Deleted,
            "rotated" => Self::Rotated,
            _ => return None,
        })
    }
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEvent {
    /// Position in the global feed (strictly increasing, in commit order).
    pub seq: i64,
    /// The organization.
    pub organization_id: String,
    /// The key the event is about.
    pub key_id: KeyId,
    /// What happened.
    pub event_type: EventType,
    /// Who did it.
    pub actor: Actor,
    /// When.
    pub at: DateTime<Utc>,
    /// Changed field names with their new values as JSON text (no secrets).
    pub changes: BTreeMap<String, String>,
}

/// One read of the change feed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedBatch {
    /// The readable events, oldest first.
    pub events: Vec<KeyEvent>,
    /// `seq`s of rows that could not be read (unknown event type, bad JSON):
    /// skipped (and logged) so that one bad row cannot stop every follower.
    pub skipped: Vec<i64>,
    /// The cursor for the next read: the largest `seq` read, readable or not
    /// (the `after_seq` passed in when nothing was read).
    pub last_seq: i64,
    /// Whether the read was full, so more events may follow at once.
    pub has_more: bool,
}

impl Store {
    /// Events of every organization with `seq > after_seq`, oldest first,
    /// at most `limit` (1..=1000): the change feed other replicas follow.
    ///
    /// Invariant: `seq` order is commit order (see the `feed` module), so
    /// once this returns an event with `seq = n`, no event with a smaller
    /// `seq` can appear later. A follower that passes back `last_seq` never
    /// misses or repeats an event: no re-read window is needed, after a
    /// restart or a failed sync alike. Rows that cannot be read are in
    /// `skipped` (and logged), and `last_seq` moves past them.
    pub async fn events_after(&self, after_seq: i64, limit: u32) -> Result<FeedBatch, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.bounded(async {
            let rows = key_events::Entity::find()
                .filter(key_events::Column::Seq.gt(after_seq))
                .order_by_asc(key_events::Column::Seq)
                .limit(u64::from(limit))
                .all(&self.db)
                .await?;
            let mut batch = FeedBatch {
                has_more: rows.len() == limit as usize,
                last_seq: rows.last().map_or(after_seq, |row| row.seq),
                ..FeedBatch::default()
            };
            for row in rows {
                let seq = row.seq;
                match event_from_row(row) {
                    Ok(event) => batch.events.push(event),
                    Err(error) => {
                        tracing::warn!(
                            seq,
                            ?error,
                            "skipping an unreadable key event in the change feed"
                        );
                        batch.skipped.push(seq);
                    }
                }
            }
            Ok(batch)
        })
        .await
    }

    /// The newest event's `seq` (0 when there is none): where a new follower
    /// of the change feed starts. Every event with a smaller `seq` is
    /// committed already (see `events_after`).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.bounded(async {
            let newest = key_events::Entity::find()
                .order_by_desc(key_events::Column::Seq)
                .one(&self.db)
                .await?;
            Ok(newest.map_or(0, |row| row.seq))
        })
        .await
    }
}

/// Takes the feed lock for the rest of `txn`: the `keyward_feed` row's lock
/// on PostgreSQL and MySQL (the database write lock, already held, on
/// SQLite). Call it right before inserting events, after the organization's
/// lock. The `UPDATE` changes no value.
pub(super) async fn lock(txn: &DatabaseTransaction) -> Result<(), Error> {
    // Row counts are "rows matched" on every backend (sqlx asks MySQL for
    // CLIENT_FOUND_ROWS), so the unchanged row still counts.
    let locked = keyward_feed::Entity::update_many()
        .col_expr(
            keyward_feed::Column::Id,
            Expr::col(keyward_feed::Column::Id),
        )
        .filter(keyward_feed::Column::Id.eq(keyward_feed::ROW_ID))
        .exec(txn)
        .await?;
    if locked.rows_affected != 1 {
        return Err(Error::corrupt(
            "the keyward_feed row is missing: run the migrations again",
        ));
    }
    Ok(())
}

pub(super) fn event_from_row(row: key_events::Model) -> Result<KeyEvent, Error> {
    let corrupt = |what: &str| Error::corrupt(format!("key event {}: {what}", row.seq));
    let event_type =
        EventType::from_stored(&row.event_type).ok_or_else(|| corrupt("unknown event type"))?;
    let actor_kind =
        ActorKind::from_stored(&row.actor_type).ok_or_else(|| corrupt("unknown actor type"))?;
    let changes: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&row.changes).map_err(|e| corrupt(&format!("changes: {e}")))?;
    Ok(KeyEvent {
        seq: row.seq,
        organization_id: row.organization_id,
        key_id: KeyId::from_trusted(row.key_id),
        event_type,
        actor: Actor {
            kind: actor_kind,
            id: row.actor_id,
        },
        at: time::utc(row.at),
        changes: changes
            .into_iter()
            .map(|(field, value)| (field, value.to_string()))
            .collect(),
    })
}
