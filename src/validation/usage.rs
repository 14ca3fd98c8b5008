//! [`UsageRecorder`]: last-used data coalesced in memory and written in
//! batches, at most one write per key per flush; a validation never writes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use keyward_auth::sync::lock;
use keyward_core::{ApiKey, KeyId};
use keyward_store::{Store, StoreError, UsageRecord};

use super::ClientInfo;
use super::clock::Clock;

/// Longest one usage flush waits for the database; past it the batch is put
/// back and written with the next flush.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Pending = HashMap<KeyId, PendingUse, RandomState>;

/// Coalesces last-used data in memory: at most one write per key per flush.
#[derive(Debug, Default)]
pub(crate) struct UsageRecorder {
    pending: Mutex<Pending>,
}

/// The latest use of a key since the last flush.
#[derive(Debug)]
struct PendingUse {
    /// Turned into wall-clock time at the flush, off the hot path.
    at: Instant,
    ip: Option<String>,
    user_agent: Option<String>,
}

/// Why a flush wrote nothing; its batch is pending again either way.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The database refused the write.
    #[error("could not record key usage: {0}")]
    Store(#[from] StoreError),
    /// The database did not answer in time.
    #[error("recording key usage timed out after {0:?}")]
    Timeout(Duration),
}

impl UsageRecorder {
    /// Notes a use. A key used again before the flush is updated in place,
    /// so the steady state allocates nothing.
    pub(crate) fn record(&self, key: &ApiKey, client: ClientInfo<'_>, at: Instant) {
        let ip = client.ip.filter(|ip| !ip.is_empty());
        let user_agent = client.user_agent.filter(|ua| !ua.is_empty());
        let mut pending = lock(&self.pending);
        if let Some(record) = pending.get_mut(&key.id) {
            record.at = at;
            if record.ip.as_deref() != ip {
                record.ip = ip.map(str::to_owned);
            }
            if record.user_agent.as_deref() != user_agent {
                record.user_agent = user_agent.map(str::to_owned);
            }
            return;
        }
        pending.insert(
            key.id.clone(),
            PendingUse {
                at,
                ip: ip.map(str::to_owned),
                user_agent: user_agent.map(str::to_owned),
            },
        );
    }

    /// How many keys have unwritten last-used data.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Writes pending last-used data to `store` within `deadline`: the number
    /// of keys written. On failure, timeout or cancellation (the future
    /// dropped), the batch is pending again, so nothing taken is lost.
    pub(crate) async fn flush(
        &self,
        store: &Store,
        clock: &Clock,
        deadline: Duration,
    ) -> Result<usize, FlushError> {
        self.flush_to(clock, |batch| async move {
            match tokio::time::timeout(deadline, store.record_usage(&batch)).await {
                Ok(written) => written.map_err(FlushError::from),
                Err(_) => Err(FlushError::Timeout(deadline)),
            }
        })
        .await
    }

    /// [`flush`](Self::flush) through any writer.
    async fn flush_to<W, Fut>(&self, clock: &Clock, write: W) -> Result<usize, FlushError>
    where
        W: FnOnce(Vec<UsageRecord>) -> Fut,
        Fut: Future<Output = Result<(), FlushError>>,
    {
        let mut taken = Taken {
            owner: self,
            batch: std::mem::take(&mut *lock(&self.pending)),
        };
        if taken.batch.is_empty() {
            return Ok(0);
        }
        let records: Vec<UsageRecord> = taken
            .batch
            .iter()
            .map(|(key_id, used)| UsageRecord {
                key_id: key_id.clone(),
                at: clock.utc(used.at),
                ip: used.ip.clone(),
                user_agent: used.user_agent.clone(),
            })
            .collect();
        let keys = records.len();
        write(records).await?;
        // Written: nothing to put back.
        taken.batch.clear();
        Ok(keys)
    }
}

/// A batch taken for a flush. Dropped before the write succeeded (an error,
/// a timeout, the flush future dropped at shutdown), it goes back to pending.
struct Taken<'a> {
    owner: &'a UsageRecorder,
    batch: Pending,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut pending = lock(&self.owner.pending);
        for (key_id, used) in self.batch.drain() {
            // Keep a newer observation made while the write was under way.
            pending.entry(key_id).or_insert(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyward_store::testing::{self, Backend};

    use super::*;
    use crate::validation::test_support::create_key;

    fn client(ip: &str) -> ClientInfo<'_> {
        ClientInfo {
            ip: Some(ip),
            address: None,
            user_agent: Some("test"),
            path: Default::default(),
        }
    }

    #[tokio::test]
    async fn many_notes_become_one_record_per_key_with_the_latest_use() {
        testing::run(Backend::Sqlite, |store| async move {
            let (a, b) = (create_key(&store).await.0, create_key(&store).await.0);
            let (recorder, clock) = (UsageRecorder::default(), Clock::new());
            for n in 0..100 {
                recorder.record(&a, client(&format!("10.0.0.{n}")), Instant::now());
                recorder.record(&b, client("10.0.1.1"), Instant::now());
            }
            assert_eq!(recorder.pending(), 2);
            let batches = Arc::new(Mutex::new(Vec::new()));
            let written = recorder
                .flush_to(&clock, |batch| {
                    lock(&batches).push(batch.clone());
                    let store = store.clone();
                    async move { Ok(store.record_usage(&batch).await?) }
                })
                .await
                .expect("a flush");
            assert_eq!(written, 2);
            assert_eq!(lock(&batches).len(), 1, "one write for both keys");
            assert_eq!(recorder.pending(), 0);
            let a = store.get_key("acme", &a.id).await.expect("the key");
            assert_eq!(a.last_used_ip.as_deref(), Some("10.0.0.99"));
            assert!(a.last_used_at.is_some());
            // Nothing pending: nothing written.
            assert_eq!(
                recorder.flush(&store, &clock, FLUSH_TIMEOUT).await.ok(),
                Some(0)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_that_failed_to_flush_is_kept() {
        testing::run(Backend::Sqlite, |store| async move {
            let key = create_key(&store).await.0;
            let (recorder, clock) = (UsageRecorder::default(), Clock::new());
            recorder.record(&key, client("10.0.0.1"), Instant::now());
            store.connection().close_by_ref().await.expect("closed");
            let failed = recorder.flush(&store, &clock, FLUSH_TIMEOUT).await;
            assert!(matches!(failed, Err(FlushError::Store(_))), "{failed:?}");
            assert_eq!(recorder.pending(), 1, "the batch is pending again");
        })
        .await;
    }

    #[tokio::test]
    async fn a_cancelled_or_timed_out_flush_puts_its_batch_back() {
        testing::run(Backend::Sqlite, |store| async move {
            let key = create_key(&store).await.0;
            let (recorder, clock) = (UsageRecorder::default(), Clock::new());
            recorder.record(&key, client("10.0.0.1"), Instant::now());
            // Dropped mid-write, as an aborted flusher task would be.
            let mut flush = Box::pin(recorder.flush_to(&clock, |_| std::future::pending()));
            let polled = tokio::time::timeout(Duration::ZERO, flush.as_mut()).await;
            assert!(polled.is_err(), "the write never finishes");
            assert_eq!(recorder.pending(), 0, "the batch is taken while writing");
            // A use noted meanwhile wins over the taken one.
            recorder.record(&key, client("10.0.0.2"), Instant::now());
            drop(flush);
            assert_eq!(recorder.pending(), 1);
            assert_eq!(
                lock(&recorder.pending)[&key.id].ip.as_deref(),
                Some("10.0.0.2")
            );
            let timed_out = recorder
                .flush_to(&clock, |_| async {
                    Err(FlushError::Timeout(Duration::ZERO))
                })
                .await;
            assert!(timed_out.is_err());
            assert_eq!(recorder.pending(), 1);
        })
        .await;
    }
}
