//! Usage, coalesced by the server and written in batches: last-used data
//! (`api_keys.last_used_*`) and counts per key, minute and outcome
//! (`key_usage`), in one transaction per flush.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyward_core::{
    CreditsSpent, KeyId, MAX_CLIENT_IP_CHARS, MAX_USER_AGENT_CHARS, ValidationCode,
};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, Statement, TransactionTrait, Value,
};

use super::Store;
use super::write::{Outcome, finish};
use crate::entity::{api_keys, key_usage};
use crate::error::{Error, StoreError};
use crate::time;

/// Rows of one upsert statement (5 parameters each: well within every
/// backend's parameter limit).
const UPSERT_ROWS: usize = 500;

/// Validations of one key in one minute with one outcome, counted by one
/// replica since its last flush. Written by adding to the stored count, so
/// replicas counting the same key in the same minute add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    /// The key's organization.
    pub organization_id: String,
    /// The key.
    pub key_id: KeyId,
    /// Unix seconds of the minute's start (a multiple of 60).
    pub minute_start: i64,
    /// The verdict counted.
    pub outcome: ValidationCode,
    /// How many.
    pub calls: u64,
}

/// One stored count of a key's usage series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePoint {
    /// Unix seconds of the minute's start.
    pub minute_start: i64,
    /// The verdict counted, as stored (`ValidationCode::name`); a name this
    /// version does not know was written by a newer replica.
    pub outcome: String,
    /// How many.
    pub calls: u64,
}

/// The unix second starting the minute of `at`.
pub fn minute_start(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60) * 60
}

/// One coalesced last-used observation, written by the usage flusher.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// The key.
    pub key_id: KeyId,
    /// When it was last used.
    pub at: DateTime<Utc>,
    /// Client IP, if known.
    pub ip: Option<String>,
    /// User agent, if known.
    pub user_agent: Option<String>,
}

impl Store {
    /// Writes coalesced last-used data (one UPDATE per key at most); keys
    /// deleted meanwhile are skipped. Writes no event: it is not a change
    /// other replicas need to follow.
    pub async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.write_usage(batch, &[]).await
    }

    /// Writes one flush of usage in one transaction: last-used data (as
    /// [`record_usage`](Self::record_usage)) and `counts`, each added to the
    /// stored count of its (key, minute, outcome) with an upsert, in batches
    /// of [`UPSERT_ROWS`] rows sorted by that key (so concurrent flushes of
    /// several replicas take row locks in one order). Counts of deleted keys
    /// are kept until pruned. Writes no event.
    pub async fn write_usage(
        &self,
        last_used: &[UsageRecord],
        counts: &[UsageCount],
    ) -> Result<(), StoreError> {
        use api_keys::Column as C;
        // One row per (key, minute, outcome): PostgreSQL refuses an upsert
        // that touches a row twice.
        let mut summed: BTreeMap<(&str, i64, &'static str), (&str, u64)> = BTreeMap::new();
        for count in counts.iter().filter(|count| count.calls > 0) {
            let slot = summed
                .entry((
                    count.key_id.as_str(),
                    count.minute_start,
                    count.outcome.name(),
                ))
                .or_insert((count.organization_id.as_str(), 0));
            slot.1 = slot.1.saturating_add(count.calls);
        }
        // At most one write per key: keep each key's latest observation.
        let mut latest: BTreeMap<&str, &UsageRecord> = BTreeMap::new();
        for record in last_used {
            let slot = latest.entry(record.key_id.as_str()).or_insert(record);
            if record.at > slot.at {
                *slot = record;
            }
        }
        if latest.is_empty() && summed.is_empty() {
            return Ok(());
        }
        let rows: Vec<Row<'_>> = summed
            .into_iter()
            .map(
                |((key_id, minute_start, outcome), (organization_id, calls))| Row {
                    organization_id,
                    key_id,
                    minute_start,
                    outcome,
                    calls: i64::try_from(calls).unwrap_or(i64::MAX),
                },
            )
            .collect();
        self.bounded(async {
            // One transaction: one commit (one fsync) per batch, not per key.
            let txn = self.db.begin().await?;
            let result = async {
                for (key_id, record) in latest {
                    let at = time::db(record.at);
                    api_keys::Entity::update_many()
                        .col_expr(C::LastUsedAt, Expr::value(at))
                        .col_expr(
                            C::LastUsedIp,
                            Expr::value(cut(&record.ip, MAX_CLIENT_IP_CHARS)),
                        )
                        .col_expr(
                            C::LastUsedUserAgent,
                            Expr::value(cut(&record.user_agent, MAX_USER_AGENT_CHARS)),
                        )
                        .filter(C::Id.eq(key_id))
                        // Never move last-used data backwards (another replica may
                        // have written a newer observation).
                        .filter(
                            Condition::any()
                                .add(C::LastUsedAt.is_null())
                                .add(C::LastUsedAt.lt(at)),
                        )
                        .exec(&txn)
                        .await?;
                }
                for chunk in rows.chunks(UPSERT_ROWS) {
                    add_counts(&txn, chunk).await?;
                }
                Ok(Outcome::Commit(()))
            }
            .await;
            finish(txn, result).await
        })
        .await
    }
}

impl Store {
    /// Adds credits spent, each `(key, spent)` what one replica spent of
    /// the key's credits setting `spent.set_at` in refill period
    /// `spent.period` since its last flush, in one transaction:
    /// - the record of that setting and period: `used` is added to it;
    /// - of that setting, but an older period (a refill came): it becomes
    ///   the record, starting at `used`;
    /// - of another setting (the credits were set anew, or removed), or an
    ///   older period: ignored, it no longer counts.
    ///
    /// Keys are taken in id order (then setting and period), so concurrent
    /// flushes of several replicas lock rows in one order. Deleted keys are
    /// skipped. Writes no event and leaves `updated_at` alone: spending is
    /// usage, not a change of the key.
    pub async fn add_credit_spends(
        &self,
        spends: &[(KeyId, CreditsSpent)],
    ) -> Result<(), StoreError> {
        use api_keys::Column as C;
        let mut spends: Vec<&(KeyId, CreditsSpent)> =
            spends.iter().filter(|(_, spent)| spent.used > 0).collect();
        if spends.is_empty() {
            return Ok(());
        }
        spends.sort_by_key(|(id, spent)| (id.as_str(), spent.set_at, spent.period));
        self.bounded(async {
            let txn = self.db.begin().await?;
            let result = async {
                for (id, spent) in &spends {
                    let used = i64::try_from(spent.used).unwrap_or(i64::MAX);
                    let added = api_keys::Entity::update_many()
                        .col_expr(C::CreditsUsed, Expr::col(C::CreditsUsed).add(used))
                        .filter(C::Id.eq(id.as_str()))
                        .filter(C::CreditsSetAt.eq(spent.set_at))
                        .filter(C::CreditsPeriod.eq(spent.period))
                        .exec(&txn)
                        .await?;
                    if added.rows_affected == 0 {
                        api_keys::Entity::update_many()
                            .col_expr(C::CreditsPeriod, Expr::value(spent.period))
                            .col_expr(C::CreditsUsed, Expr::value(used))
                            .filter(C::Id.eq(id.as_str()))
                            .filter(C::CreditsSetAt.eq(spent.set_at))
                            .filter(C::CreditsPeriod.lt(spent.period))
                            .exec(&txn)
                            .await?;
                    }
                }
                Ok(Outcome::Commit(()))
            }
            .await;
            finish(txn, result).await
        })
        .await
    }

    /// The stored counts of key `key_id` of `org` whose minute starts in
    /// `[from, to)` (unix seconds), by minute then outcome.
    pub async fn usage_series(
        &self,
        org: &str,
        key_id: &KeyId,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsagePoint>, StoreError> {
        use key_usage::Column as C;
        self.bounded(async {
            let rows = key_usage::Entity::find()
                .filter(C::OrganizationId.eq(org))
                .filter(C::KeyId.eq(key_id.as_str()))
                .filter(C::MinuteStart.gte(from))
                .filter(C::MinuteStart.lt(to))
                .order_by_asc(C::MinuteStart)
                .order_by_asc(C::Outcome)
                .all(&self.db)
                .await?;
            Ok(rows
                .into_iter()
                .map(|row| UsagePoint {
                    minute_start: row.minute_start,
                    outcome: row.outcome,
                    calls: u64::try_from(row.calls).unwrap_or(0),
                })
                .collect())
        })
        .await
    }

    /// Deletes at most `limit` counts whose minute started before `before`
    /// (unix seconds), oldest first: the number deleted. Bounded so one
    /// prune never holds the table long; call again while it returns `limit`.
    pub async fn prune_usage(&self, before: i64, limit: u64) -> Result<u64, StoreError> {
        let backend = self.db.get_database_backend();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = match backend {
            // MySQL takes no LIMIT in an IN subquery, but one on DELETE.
            DbBackend::MySql => {
                "DELETE FROM key_usage WHERE minute_start < ? ORDER BY minute_start LIMIT ?"
            }
            DbBackend::Postgres => {
                "DELETE FROM key_usage WHERE (key_id, minute_start, outcome) IN \
                 (SELECT key_id, minute_start, outcome FROM key_usage \
                 WHERE minute_start < $1 ORDER BY minute_start LIMIT $2)"
            }
            _ => {
                "DELETE FROM key_usage WHERE (key_id, minute_start, outcome) IN \
                 (SELECT key_id, minute_start, outcome FROM key_usage \
                 WHERE minute_start < ? ORDER BY minute_start LIMIT ?)"
            }
        };
        self.bounded(async {
            let done = self
                .db
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    sql,
                    [Value::from(before), Value::from(limit)],
                ))
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}

/// One `key_usage` row to add.
struct Row<'a> {
    organization_id: &'a str,
    key_id: &'a str,
    minute_start: i64,
    outcome: &'static str,
    calls: i64,
}

/// Adds `rows` to the stored counts with one upsert: a missing row is
/// inserted, an existing one gets `calls = calls + new calls`, so every
/// replica's counts add up.
async fn add_counts(txn: &DatabaseTransaction, rows: &[Row<'_>]) -> Result<(), Error> {
    let backend = txn.get_database_backend();
    let mut sql = String::from(
        "INSERT INTO key_usage (organization_id, key_id, minute_start, outcome, calls) VALUES ",
    );
    let mut values = Vec::with_capacity(rows.len() * 5);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..5 {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                DbBackend::Postgres => sql.push_str(&format!("${}", i * 5 + column + 1)),
                _ => sql.push('?'),
            }
        }
        sql.push(')');
        values.extend([
            Value::from(row.organization_id),
            Value::from(row.key_id),
            Value::from(row.minute_start),
            Value::from(row.outcome),
            Value::from(row.calls),
        ]);
    }
    sql.push_str(match backend {
        DbBackend::MySql => " ON DUPLICATE KEY UPDATE calls = calls + VALUES(calls)",
        _ => {
            " ON CONFLICT (key_id, minute_start, outcome) \
             DO UPDATE SET calls = key_usage.calls + excluded.calls"
        }
    });
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}

/// At most `max` characters of an optional string.
fn cut(value: &Option<String>, max: usize) -> Option<String> {
    value.as_ref().map(|v| v.chars().take(max).collect())
}
