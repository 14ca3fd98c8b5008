//! The one write path. Every mutation is a body run by [`Store::write`]:
//!
//! 1. begin, and lock the organization's chain (`Chain::lock`: the first
//!    statement, so writers of one organization serialize);
//! 2. run the body, which reads and writes rows and [`Tx::record`]s the
//!    events of its change;
//! 3. no event recorded: roll back (nothing changed, nothing is written);
//! 4. otherwise take the feed lock ([`feed::lock`]), append the events to the
//!    organization's hash chain, and commit.
//!
//! A transaction lost to a deadlock or serialization conflict runs again
//! from step 1; the deadline and the error classification apply once, around
//! all attempts (`Store::bounded`). A write cannot commit without its event.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use keyward_core::Actor;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
};

use super::Store;
use super::feed::{self, EventType};
use crate::audit::{Chain, Changes, NewEvent};
use crate::entity::api_keys;
use crate::error::{Error, StoreError};
use crate::time;

/// The transaction a write body works in: cheap to clone, owned, so a body
/// is a plain `async move` closure.
#[derive(Clone)]
pub(super) struct Tx {
    inner: Arc<TxInner>,
}

struct TxInner {
    txn: DatabaseTransaction,
    organization_id: String,
    now: DateTime<Utc>,
    max_keys: u64,
    events: Mutex<Vec<Event>>,
}

/// An event a body records; the helper adds the actor and the time.
struct Event {
    key_id: String,
    event_type: EventType,
    changes: Changes,
}

impl Tx {
    /// The transaction.
    pub(super) fn txn(&self) -> &DatabaseTransaction {
        &self.inner.txn
    }

    /// The time of this write (taken under the organization's lock): every
    /// timestamp it writes and its events' `at`.
    pub(super) fn now(&self) -> DateTime<Utc> {
        self.inner.now
    }

    /// Records an event about `key_id`, appended when the body succeeds.
    pub(super) fn record(&self, key_id: &str, event_type: EventType, changes: Changes) {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event {
                key_id: key_id.to_owned(),
                event_type,
                changes,
            });
    }

    /// Fails with `TooManyKeys` unless the organization has room for one
    /// more key. Counted under the organization's lock, so concurrent
    /// creations cannot pass the limit together.
    pub(super) async fn ensure_room_for_key(&self) -> Result<(), Error> {
        let limit = self.inner.max_keys;
        let count: Option<i64> = api_keys::Entity::find()
            .select_only()
            .column_as(Expr::col(api_keys::Column::Id).count(), "count")
            .filter(api_keys::Column::OrganizationId.eq(self.inner.organization_id.as_str()))
            .into_tuple()
            .one(self.txn())
            .await?;
        let count = u64::try_from(count.unwrap_or(0)).unwrap_or(0);
        if count >= limit {
            return Err(StoreError::TooManyKeys { limit }.into());
        }
        Ok(())
    }
}

/// How a transaction should end.
pub(super) enum Outcome<T> {
    /// Commit, then return the value.
    Commit(T),
    /// Nothing to write: roll back, then return the value.
    Rollback(T),
}

impl Store {
    /// Runs `body` as one write of `org` by `actor` (see the module docs).
    /// `body` may run more than once (after a deadlock): it must not have
    /// effects outside the transaction.
    pub(super) async fn write<T, B, Fut>(
        &self,
        org: &str,
        actor: &Actor,
        body: B,
    ) -> Result<T, StoreError>
    where
        B: Fn(Tx) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.bounded(retry_conflicts(|| self.write_once(org, actor, &body)))
            .await
    }

    async fn write_once<T, B, Fut>(&self, org: &str, actor: &Actor, body: &B) -> Result<T, Error>
    where
        B: Fn(Tx) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let txn = self.db.begin().await?;
        let chain = match Chain::lock(&txn, org).await {
            Ok(chain) => chain,
            Err(err) => return finish(txn, Err(err)).await,
        };
        let tx = Tx {
            inner: Arc::new(TxInner {
                txn,
                organization_id: org.to_owned(),
                now: time::now(),
                max_keys: self.options.max_keys_per_organization,
                events: Mutex::new(Vec::new()),
            }),
        };
        let result = body(tx.clone()).await;
        let Ok(inner) = Arc::try_unwrap(tx.inner) else {
            // A body cannot keep its `Tx`: it gets one by value and has
            // returned; only a clone smuggled out in its result could.
            return Err(Error::corrupt("a write body kept its transaction"));
        };
        let events = inner
            .events
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let result = match result {
            Ok(value) if events.is_empty() => Ok(Outcome::Rollback(value)),
            Ok(value) => append(&inner.txn, chain, actor, inner.now, events)
                .await
                .map(|()| Outcome::Commit(value)),
            Err(err) => Err(err),
        };
        finish(inner.txn, result).await
    }
}

/// Appends `events` to the organization's chain under the feed lock, which
/// is held from here to the commit (see [`feed::lock`]).
async fn append(
    txn: &DatabaseTransaction,
    mut chain: Chain,
    actor: &Actor,
    at: DateTime<Utc>,
    events: Vec<Event>,
) -> Result<(), Error> {
    feed::lock(txn).await?;
    for event in events {
        chain
            .append(
                txn,
                NewEvent {
                    key_id: &event.key_id,
                    event_type: event.event_type.as_str(),
                    actor_type: actor.kind.as_str(),
                    actor_id: &actor.id,
                    at,
                    changes: event.changes,
                },
            )
            .await?;
    }
    Ok(())
}

/// Ends `txn` as its body asked. On an error the transaction is rolled back
/// right away, so an SQLite write lock or a row lock is not held until the
/// pooled connection happens to be used again.
pub(super) async fn finish<T>(
    txn: DatabaseTransaction,
    result: Result<Outcome<T>, Error>,
) -> Result<T, Error> {
    match result {
        Ok(Outcome::Commit(value)) => {
            txn.commit().await?;
            Ok(value)
        }
        Ok(Outcome::Rollback(value)) => {
            txn.rollback().await?;
            Ok(value)
        }
        Err(err) => {
            // The body's error is the one worth reporting; a failed rollback
            // ends with the connection anyway.
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

/// Runs a write transaction again (up to five times in all) when the database
/// rolled it back as the victim of a deadlock or serialization conflict. On
/// MySQL/MariaDB, the first writers of a new organization take gap locks that
/// can deadlock each other; the victim's retry finds the organization there.
async fn retry_conflicts<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    const ATTEMPTS: usize = 5;
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if error.is_conflict() && tries < ATTEMPTS => {
                tracing::debug!(
                    ?error,
                    tries,
                    "transaction lost a conflict; running it again"
                );
                tries += 1;
            }
            result => return result,
        }
    }
}
