//! Last-used data, coalesced by the server and written in batches.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyward_core::{KeyId, MAX_CLIENT_IP_CHARS, MAX_USER_AGENT_CHARS};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, TransactionTrait};

use super::Store;
use super::write::{Outcome, finish};
use crate::entity::api_keys;
use crate::error::StoreError;
use crate::time;

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
        use api_keys::Column as C;
        // At most one write per key: keep each key's latest observation.
        let mut latest: BTreeMap<&str, &UsageRecord> = BTreeMap::new();
        for record in batch {
            let slot = latest.entry(record.key_id.as_str()).or_insert(record);
            if record.at > slot.at {
                *slot = record;
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
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
                Ok(Outcome::Commit(()))
            }
            .await;
            finish(txn, result).await
        })
        .await
    }
}

/// At most `max` characters of an optional string.
fn cut(value: &Option<String>, max: usize) -> Option<String> {
    value.as_ref().map(|v| v.chars().take(max).collect())
}
