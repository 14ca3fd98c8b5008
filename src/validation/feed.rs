//! The KeyEvent feed follower: other replicas' changes reach this replica's
//! cache within a sync interval.
//!
//! The store appends every event under one feed-wide lock taken before its
//! transaction's event insert, so `seq` order is commit order: once a
//! follower has read `seq = n`, no event with a smaller `seq` can still
//! commit. The follower therefore keeps one cursor, the last `seq` it
//! applied, and needs no re-read window:
//! - on start it begins at the newest committed `seq` and drops whatever
//!   was cached before (the cache refills from the database, which already
//!   holds every change up to that `seq`);
//! - a failed or timed-out read moves nothing, and the next tick reads
//!   again from the same cursor;
//! - within a read, events are applied and the cursor advances in one step
//!   with no await in between, so a cancelled sync applies nothing twice and
//!   skips nothing;
//! - an event the store cannot decode is logged (its `seq` only) and
//!   skipped, and the whole cache is dropped, since that event's key is
//!   unknown: the follower never stops and never serves a stale verdict.

use std::sync::Arc;
use std::time::Duration;

use keyward_store::StoreError;

use super::KeyValidator;
use crate::error::ApiError;

/// Events read per query.
const BATCH: u32 = 1000;

/// Follows the KeyEvent feed every `sync_interval`, so changes made on other
/// replicas reach this replica's cache; each success marks the cache fresh.
/// Every read waits at most `lookup_timeout`. Starts after `from`, the
/// newest committed `seq` read before anything was cached. Runs until dropped.
pub async fn follow_changes(validator: Arc<KeyValidator>, from: i64) {
    let mut ticker = tokio::time::interval(validator.settings.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follower = Follower { cursor: Some(from) };
    let mut healthy = true;
    loop {
        ticker.tick().await;
        // Whether or not the feed answers, so that expiry follows the system
        // clock through an outage, a suspend or a clock step.
        validator.clock.anchor();
        match follower.sync(&validator).await {
            Ok(_) => {
                validator.mark_synced();
                if !healthy {
                    tracing::info!("change feed reachable again");
                }
                healthy = true;
            }
            Err(error) => {
                validator.metrics.feed_sync_errors.inc();
                if healthy {
                    tracing::warn!(%error, "change feed unreachable; serving cached verdicts for stale-if-error");
                }
                healthy = false;
            }
        }
    }
}

/// Where the follower is in the feed.
#[derive(Debug, Default)]
pub(crate) struct Follower {
    /// The last `seq` applied; `None` until the first successful read.
    cursor: Option<i64>,
}

impl Follower {
    /// The last `seq` applied.
    #[cfg(test)]
    pub(crate) fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    /// Applies every event committed after the cursor: how many events were
    /// applied. On error the cursor stays where the last applied page left it.
    pub(crate) async fn sync(&mut self, validator: &KeyValidator) -> Result<usize, ApiError> {
        let deadline = validator.settings.lookup_timeout;
        let store = &validator.store;
        let Some(mut cursor) = self.cursor else {
            // Start at the head. Keys cached before the head was read may
            // predate changes at or below it, which this follower will never
            // apply: drop them; the cache refills from the database.
            self.cursor = Some(within(deadline, store.last_event_seq()).await?);
            validator.cache.invalidate_all();
            return Ok(0);
        };
        let mut applied = 0;
        loop {
            let page = within(deadline, store.events_after(cursor, BATCH)).await?;
            // From here to the cursor update there is no await: a page is
            // applied whole, or (cancelled above) not at all.
            for event in &page.events {
                validator.announce(super::Change::of(event));
            }
            validator.note_applied(&page.events);
            applied += page.events.len();
            if !page.skipped.is_empty() {
                tracing::warn!(seqs = ?page.skipped, "unreadable change feed events skipped; cache cleared");
                validator.cache.invalidate_all();
            }
            cursor = page.last_seq;
            self.cursor = Some(cursor);
            if !page.has_more {
                break;
            }
        }
        Ok(applied)
    }
}

/// `operation`, or UNAVAILABLE once `deadline` has passed: a database that
/// stops answering without closing connections cannot hang the follower.
async fn within<T>(
    deadline: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(deadline, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::ValidationCode;
    use keyward_store::testing::{self, Backend};

    use super::*;
    use crate::validation::ClientInfo;
    use crate::validation::test_support::{create_key, validator};

    #[tokio::test]
    async fn applies_each_event_once_and_advances_its_cursor() {
        testing::run(Backend::Sqlite, |store| async move {
            let validator = validator(&store);
            let mut follower = Follower::default();
            let (key, secret) = create_key(&store).await;
            validator
                .validate(secret.expose(), &[], ClientInfo::default())
                .await
                .expect("a verdict");
            assert_eq!(validator.cache().len().0, 1);
            assert_eq!(
                follower.sync(&validator).await.ok(),
                Some(0),
                "starts at the head"
            );
            assert_eq!(
                validator.cache().len().0,
                0,
                "what was cached before is dropped"
            );
            let head = follower.cursor().expect("a cursor");
            assert_eq!(head, store.last_event_seq().await.expect("a seq"));

            let valid = validator
                .validate(secret.expose(), &[], ClientInfo::default())
                .await
                .expect("a verdict");
            assert_eq!(valid.code, ValidationCode::Valid);
            // Another replica revokes it: only the feed can tell this one.
            let actor = key.created_by.clone();
            store
                .revoke_key("acme", &key.id, &actor)
                .await
                .expect("revoked");
            let (_, other) = create_key(&store).await;
            assert_eq!(follower.sync(&validator).await.ok(), Some(2));
            assert_eq!(
                follower.cursor(),
                Some(store.last_event_seq().await.expect("a seq"))
            );
            assert!(follower.cursor() > Some(head));
            let revoked = validator
                .validate(secret.expose(), &[], ClientInfo::default())
                .await
                .expect("a verdict");
            assert_eq!(revoked.code, ValidationCode::Revoked);
            assert_eq!(
                follower.sync(&validator).await.ok(),
                Some(0),
                "nothing twice"
            );
            let created = validator
                .validate(other.expose(), &[], ClientInfo::default())
                .await
                .expect("a verdict");
            assert_eq!(created.code, ValidationCode::Valid);
        })
        .await;
    }

    #[tokio::test]
    async fn a_failed_sync_does_not_move_the_cursor() {
        testing::run(Backend::Sqlite, |store| async move {
            let validator = validator(&store);
            let mut follower = Follower::default();
            create_key(&store).await;
            follower.sync(&validator).await.expect("a first sync");
            let cursor = follower.cursor();
            store.connection().close_by_ref().await.expect("closed");
            assert!(follower.sync(&validator).await.is_err());
            assert_eq!(follower.cursor(), cursor);
        })
        .await;
    }
}
