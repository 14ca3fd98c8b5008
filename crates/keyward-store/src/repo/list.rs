//! Keyset pages of keys and events: one page helper for both listings.

use chrono::{DateTime, Utc};
use keyward_core::{ApiKey, KeyId, KeyStatus};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Select, Value,
};

use sea_orm::sea_query::{Expr, ExprTrait, Query, SelectStatement};

use super::Store;
use super::feed::{KeyEvent, event_from_row};
use super::keys::key_from_row;
use super::usage::minute_start;
use crate::entity::{api_keys, key_events, key_usage};
use crate::error::{Error, StoreError};
use crate::time;

/// Largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

/// Filters and cursor of a key listing. Results are newest first (id descending).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Page size, already checked to be 1..=1000.
    pub limit: u32,
    /// Exclusive cursor: keys older than this id.
    pub after_id: Option<KeyId>,
    /// Exclusive cursor: keys newer than this id (the page is still returned newest first).
    pub before_id: Option<KeyId>,
    /// Only keys whose status (computed now) is one of these; empty = any.
    pub statuses: Vec<KeyStatus>,
    /// Include archived keys; `statuses` containing ARCHIVED implies it.
    pub include_archived: bool,
    /// Only keys of this workspace.
    pub workspace_id: Option<String>,
    /// Only keys created by this actor id.
    pub created_by_id: Option<String>,
    /// Only keys of this user.
    pub user_id: Option<String>,
    /// Only keys of this service account.
    pub service_account_id: Option<String>,
    /// Only keys never used, or last used before this instant.
    pub last_used_before: Option<DateTime<Utc>>,
    /// Only keys with usage counts (any outcome) in the minute of this
    /// instant or later.
    pub used_since: Option<DateTime<Utc>>,
    /// Only keys without usage counts in the minute of this instant or
    /// later. With `used_since`: keys used from one minute and not since the other.
    pub unused_since: Option<DateTime<Utc>>,
}

/// Filters and cursor of an event listing. Newest first (seq descending).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Exclusive cursor: events with a smaller seq.
    pub after_seq: Option<i64>,
    /// Exclusive cursor: events with a larger seq.
    pub before_seq: Option<i64>,
    /// Only events about this key.
    pub key_id: Option<KeyId>,
}

/// A page of results in cursor order.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Whether more items exist in the requested direction.
    pub has_more: bool,
}

/// A page of keys.
pub type KeyPage = Page<ApiKey>;
/// A page of events.
pub type EventPage = Page<KeyEvent>;

impl Store {
    /// A page of keys of `org`.
    pub async fn list_keys(&self, org: &str, query: &ListQuery) -> Result<KeyPage, StoreError> {
        use api_keys::Column as C;
        let now = time::now();
        let mut filter = Condition::all().add(C::OrganizationId.eq(org));
        if !query.statuses.is_empty() {
            let mut any = Condition::any();
            for status in &query.statuses {
                any = any.add(status_condition(*status, now));
            }
            filter = filter.add(any);
        } else if !query.include_archived {
            // Hide keys whose status is ARCHIVED (a revoked key stays visible).
            filter = filter.add(status_condition(KeyStatus::Archived, now).not());
        }
        let exact = [
            (C::WorkspaceId, &query.workspace_id),
            (C::CreatedById, &query.created_by_id),
            (C::UserId, &query.user_id),
            (C::ServiceAccountId, &query.service_account_id),
        ];
        for (column, value) in exact {
            if let Some(value) = value {
                filter = filter.add(column.eq(value.as_str()));
            }
        }
        if let Some(before) = query.last_used_before {
            filter = filter.add(
                Condition::any()
                    .add(C::LastUsedAt.is_null())
                    .add(C::LastUsedAt.lt(time::db(time::ceil_micros(before)))),
            );
        }
        for (since, used) in [(query.used_since, true), (query.unused_since, false)] {
            if let Some(since) = since {
                let exists = Expr::exists(used_since(since));
                filter = filter.add(if used { exists } else { exists.not() });
            }
        }
        let keyset = Keyset {
            column: C::Id,
            after: query.after_id.as_ref().map(|id| id.as_str().into()),
            before: query.before_id.as_ref().map(|id| id.as_str().into()),
            limit: query.limit,
        };
        self.bounded(keyset.page(
            &self.db,
            api_keys::Entity::find().filter(filter),
            key_from_row,
        ))
        .await
    }

    /// A page of `org`'s events.
    pub async fn list_events(
        &self,
        org: &str,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        use key_events::Column as C;
        let mut filter = Condition::all().add(C::OrganizationId.eq(org));
        if let Some(key) = &query.key_id {
            filter = filter.add(C::KeyId.eq(key.as_str()));
        }
        let keyset = Keyset {
            column: C::Seq,
            after: query.after_seq.map(Value::from),
            before: query.before_seq.map(Value::from),
            limit: query.limit,
        };
        self.bounded(keyset.page(
            &self.db,
            key_events::Entity::find().filter(filter),
            event_from_row,
        ))
        .await
    }
}

/// `SELECT 1 FROM key_usage` of the listed key from the minute of `since`:
/// the primary key (key_id, minute_start, outcome) answers it.
fn used_since(since: DateTime<Utc>) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(key_usage::Entity)
        .and_where(
            Expr::col((key_usage::Entity, key_usage::Column::KeyId))
                .equals((api_keys::Entity, api_keys::Column::Id)),
        )
        .and_where(
            Expr::col((key_usage::Entity, key_usage::Column::MinuteStart)).gte(minute_start(since)),
        )
        .take()
}

/// A keyset page over `column`, newest (largest) first: `after` reads below
/// the cursor, `before` above it. A page costs the same at any depth.
struct Keyset<C> {
    column: C,
    after: Option<Value>,
    before: Option<Value>,
    limit: u32,
}

impl<C: ColumnTrait> Keyset<C> {
    /// Reads one page of `select`, converting each row with `convert`.
    async fn page<E, T>(
        self,
        db: &DatabaseConnection,
        select: Select<E>,
        convert: impl Fn(E::Model) -> Result<T, Error>,
    ) -> Result<Page<T>, Error>
    where
        E: EntityTrait<Column = C>,
    {
        let limit = self.limit.clamp(1, MAX_PAGE) as usize;
        // `before` alone walks towards newer rows: read upwards from the
        // cursor, then flip the page to newest first.
        let ascending = self.before.is_some() && self.after.is_none();
        let mut select = select;
        if let Some(after) = self.after {
            select = select.filter(self.column.lt(after));
        }
        if let Some(before) = self.before {
            select = select.filter(self.column.gt(before));
        }
        let select = if ascending {
            select.order_by_asc(self.column)
        } else {
            select.order_by_desc(self.column)
        };
        let mut rows = select.limit(limit as u64 + 1).all(db).await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        if ascending {
            rows.reverse();
        }
        Ok(Page {
            items: rows.into_iter().map(convert).collect::<Result<_, _>>()?,
            has_more,
        })
    }
}

/// The SQL condition "status computed at `now` is `status`", following the
/// precedence REVOKED > ARCHIVED > EXPIRED > INACTIVE > ACTIVE of
/// `ApiKey::status`.
fn status_condition(status: KeyStatus, now: DateTime<Utc>) -> Condition {
    use api_keys::Column as C;
    let live = || {
        Condition::all()
            .add(C::RevokedAt.is_null())
            .add(C::ArchivedAt.is_null())
    };
    let unexpired = || {
        Condition::any()
            .add(C::ExpiresAt.is_null())
            .add(C::ExpiresAt.gt(time::db(now)))
    };
    match status {
        KeyStatus::Revoked => Condition::all().add(C::RevokedAt.is_not_null()),
        KeyStatus::Archived => Condition::all()
            .add(C::RevokedAt.is_null())
            .add(C::ArchivedAt.is_not_null()),
        KeyStatus::Expired => live().add(C::ExpiresAt.lte(time::db(now))),
        KeyStatus::Inactive => live().add(unexpired()).add(C::Disabled.eq(true)),
        KeyStatus::Active => live().add(unexpired()).add(C::Disabled.eq(false)),
    }
}
