//! [`UsageRecorder`]: usage coalesced in memory and written in batches, one
//! transaction per flush; a validation never writes. Two kinds of usage
//! share one map entry per key: the last valid use (at most one write per
//! key per flush) and the number of verdicts per minute and outcome (added
//! to the stored counts, so replicas add up).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use keyward_auth::sync::lock;
use keyward_core::{ApiKey, KeyId, ValidationCode};
use keyward_store::{Store, StoreError, UsageCount, UsageRecord};

use super::ClientInfo;
use super::clock::Clock;

/// Longest one usage flush waits for the database; past it the batch is put
/// back and written with the next flush.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// One counter per validation code (`code as usize`).
const OUTCOMES: usize = ValidationCode::ALL.len();

type Pending = HashMap<KeyId, PendingUse, RandomState>;

/// Coalesces usage in memory: at most one entry per key between flushes.
#[derive(Debug, Default)]
pub(crate) struct UsageRecorder {
    pending: Mutex<Pending>,
}

/// A key's usage since the last flush.
#[derive(Debug)]
struct PendingUse {
    organization_id: String,
    /// The latest valid use, if any.
    last: Option<LastUse>,
    /// Verdicts of the newest minute noted.
    counts: MinuteCounts,
    /// Verdicts of earlier minutes noted since the last flush: empty unless
    /// a minute ended between two flushes.
    earlier: Vec<MinuteCounts>,
}

/// The latest valid use of a key.
#[derive(Debug)]
struct LastUse {
    /// Turned into wall-clock time at the flush, off the hot path.
    at: Instant,
    ip: Option<String>,
    user_agent: Option<String>,
}

/// Verdicts of one key in one minute, by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MinuteCounts {
    /// Unix seconds of the minute's start.
    minute_start: i64,
    calls: [u32; OUTCOMES],
}

impl MinuteCounts {
    fn new(minute_start: i64) -> Self {
        Self {
            minute_start,
            calls: [0; OUTCOMES],
        }
    }

    fn add(&mut self, code: ValidationCode, calls: u32) {
        let slot = &mut self.calls[code as usize];
        *slot = slot.saturating_add(calls);
    }
}

impl PendingUse {
    fn new(key: &ApiKey, minute_start: i64) -> Self {
        Self {
            organization_id: key.organization_id.clone(),
            last: None,
            counts: MinuteCounts::new(minute_start),
            earlier: Vec::new(),
        }
    }

    /// The counters of `minute_start`, moving the current minute to
    /// `earlier` when a newer one begins.
    fn minute(&mut self, minute_start: i64) -> &mut MinuteCounts {
        if self.counts.minute_start == minute_start {
            return &mut self.counts;
        }
        if minute_start > self.counts.minute_start {
            let ended = std::mem::replace(&mut self.counts, MinuteCounts::new(minute_start));
            self.earlier.push(ended);
            return &mut self.counts;
        }
        // A verdict whose clock reading predates a newer one already noted.
        self.minute_back(minute_start)
    }

    /// Counts a verdict; a valid one also becomes the last use.
    fn note(
        &mut self,
        code: ValidationCode,
        client: ClientInfo<'_>,
        at: Instant,
        minute_start: i64,
    ) {
        self.minute(minute_start).add(code, 1);
        if code != ValidationCode::Valid {
            return;
        }
        let ip = client.ip.filter(|ip| !ip.is_empty());
        let user_agent = client.user_agent.filter(|ua| !ua.is_empty());
        match &mut self.last {
            Some(last) => {
                last.at = at;
                if last.ip.as_deref() != ip {
                    last.ip = ip.map(str::to_owned);
                }
                if last.user_agent.as_deref() != user_agent {
                    last.user_agent = user_agent.map(str::to_owned);
                }
            }
            None => {
                self.last = Some(LastUse {
                    at,
                    ip: ip.map(str::to_owned),
                    user_agent: user_agent.map(str::to_owned),
                });
            }
        }
    }

    /// Adds a taken batch's entry back (its flush failed) under newer notes.
    fn merge_older(&mut self, taken: PendingUse) {
        if self.last.is_none() {
            self.last = taken.last;
        }
        for counts in std::iter::once(taken.counts).chain(taken.earlier) {
            let into = self.minute_back(counts.minute_start);
            for (slot, calls) in into.calls.iter_mut().zip(counts.calls) {
                *slot = slot.saturating_add(calls);
            }
        }
    }

    /// The counters of `minute_start` without changing the current minute.
    fn minute_back(&mut self, minute_start: i64) -> &mut MinuteCounts {
        if self.counts.minute_start == minute_start {
            return &mut self.counts;
        }
        match self
            .earlier
            .iter()
            .position(|counts| counts.minute_start == minute_start)
        {
            Some(index) => &mut self.earlier[index],
            None => {
                self.earlier.push(MinuteCounts::new(minute_start));
                self.earlier.last_mut().expect("just pushed")
            }
        }
    }

    /// The nonzero counts, as the store writes them.
    fn counts<'a>(&'a self, key_id: &'a KeyId) -> impl Iterator<Item = UsageCount> + 'a {
        std::iter::once(&self.counts)
            .chain(&self.earlier)
            .flat_map(move |minute| {
                ValidationCode::ALL
                    .into_iter()
                    .zip(minute.calls)
                    .filter(|(_, calls)| *calls > 0)
                    .map(move |(outcome, calls)| UsageCount {
                        organization_id: self.organization_id.clone(),
                        key_id: key_id.clone(),
                        minute_start: minute.minute_start,
                        outcome,
                        calls: u64::from(calls),
                    })
            })
    }
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

/// What one flush wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Keys with usage written.
    pub keys: usize,
    /// Count rows (key, minute, outcome) added to.
    pub counts: usize,
}

impl UsageRecorder {
    /// Notes a verdict `code` on `key` at `at`, in the minute starting at
    /// unix second `minute_start`; a valid one also becomes the key's
    /// last-used data. A key noted again in the same minute before the flush
    /// is updated in place, so the steady state allocates nothing.
    pub(crate) fn record(
        &self,
        key: &ApiKey,
        code: ValidationCode,
        client: ClientInfo<'_>,
        at: Instant,
        minute_start: i64,
    ) {
        let mut pending = lock(&self.pending);
        if let Some(used) = pending.get_mut(&key.id) {
            used.note(code, client, at, minute_start);
            return;
        }
        let mut used = PendingUse::new(key, minute_start);
        used.note(code, client, at, minute_start);
        pending.insert(key.id.clone(), used);
    }

    /// How many keys have unwritten usage.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Writes pending usage to `store` within `deadline`. On failure,
    /// timeout or cancellation (the future dropped), the batch is pending
    /// again, so nothing taken is lost (a timeout that struck after the
    /// database committed counts those calls twice: rare, and preferred to
    /// losing them).
    pub(crate) async fn flush(
        &self,
        store: &Store,
        clock: &Clock,
        deadline: Duration,
    ) -> Result<Flushed, FlushError> {
        self.flush_to(clock, |last_used, counts| async move {
            match tokio::time::timeout(deadline, store.write_usage(&last_used, &counts)).await {
                Ok(written) => written.map_err(FlushError::from),
                Err(_) => Err(FlushError::Timeout(deadline)),
            }
        })
        .await
    }

    /// [`flush`](Self::flush) through any writer.
    async fn flush_to<W, Fut>(&self, clock: &Clock, write: W) -> Result<Flushed, FlushError>
    where
        W: FnOnce(Vec<UsageRecord>, Vec<UsageCount>) -> Fut,
        Fut: Future<Output = Result<(), FlushError>>,
    {
        let mut taken = Taken {
            owner: self,
            batch: std::mem::take(&mut *lock(&self.pending)),
        };
        if taken.batch.is_empty() {
            return Ok(Flushed::default());
        }
        let records: Vec<UsageRecord> = taken
            .batch
            .iter()
            .filter_map(|(key_id, used)| {
                let last = used.last.as_ref()?;
                Some(UsageRecord {
                    key_id: key_id.clone(),
                    at: clock.utc(last.at),
                    ip: last.ip.clone(),
                    user_agent: last.user_agent.clone(),
                })
            })
            .collect();
        let counts: Vec<UsageCount> = taken
            .batch
            .iter()
            .flat_map(|(key_id, used)| used.counts(key_id))
            .collect();
        let flushed = Flushed {
            keys: taken.batch.len(),
            counts: counts.len(),
        };
        write(records, counts).await?;
        // Written: nothing to put back.
        taken.batch.clear();
        Ok(flushed)
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
            // Keep a newer observation made while the write was under way,
            // and add the counts up.
            match pending.get_mut(&key_id) {
                Some(newer) => newer.merge_older(used),
                None => {
                    pending.insert(key_id, used);
                }
            }
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
            cost: None,
            idempotency_key: None,
        }
    }

    /// A valid use now, in the minute starting at unix second `minute`.
    fn use_at(recorder: &UsageRecorder, key: &ApiKey, ip: &str, minute: i64) {
        recorder.record(
            key,
            ValidationCode::Valid,
            client(ip),
            Instant::now(),
            minute,
        );
    }

    #[tokio::test]
    async fn many_notes_become_one_record_per_key_with_the_latest_use() {
        testing::run(Backend::Sqlite, |store| async move {
            let (a, b) = (create_key(&store).await.0, create_key(&store).await.0);
            let (recorder, clock) = (UsageRecorder::default(), Clock::new());
            let minute = clock.minute_start(Instant::now());
            for n in 0..100 {
                use_at(&recorder, &a, &format!("10.0.0.{n}"), minute);
                use_at(&recorder, &b, "10.0.1.1", minute);
            }
            recorder.record(
                &b,
                ValidationCode::Revoked,
                client("10.0.1.2"),
                Instant::now(),
                minute,
            );
            assert_eq!(recorder.pending(), 2);
            let batches = Arc::new(Mutex::new(Vec::new()));
            let written = recorder
                .flush_to(&clock, |last_used, counts| {
                    lock(&batches).push((last_used.clone(), counts.clone()));
                    let store = store.clone();
                    async move { Ok(store.write_usage(&last_used, &counts).await?) }
                })
                .await
                .expect("a flush");
            assert_eq!(written, Flushed { keys: 2, counts: 3 });
            assert_eq!(lock(&batches).len(), 1, "one write for both keys");
            assert_eq!(recorder.pending(), 0);
            let a = store.get_key("acme", &a.id).await.expect("the key");
            assert_eq!(a.last_used_ip.as_deref(), Some("10.0.0.99"));
            assert!(a.last_used_at.is_some());
            let b_usage = store
                .usage_series("acme", &b.id, minute, minute + 60)
                .await
                .expect("b's usage");
            let b_usage: Vec<(&str, u64)> = b_usage
                .iter()
                .map(|point| (point.outcome.as_str(), point.calls))
                .collect();
            assert_eq!(b_usage, [("revoked", 1), ("valid", 100)]);
            // The denial is not a use: b's last use is still the valid one.
            let b = store.get_key("acme", &b.id).await.expect("the key");
            assert_eq!(b.last_used_ip.as_deref(), Some("10.0.1.1"));
            // Nothing pending: nothing written.
            assert_eq!(
                recorder.flush(&store, &clock, FLUSH_TIMEOUT).await.ok(),
                Some(Flushed::default())
            );
        })
        .await;
    }

    #[tokio::test]
    async fn minutes_noted_between_two_flushes_are_counted_apart() {
        testing::run(Backend::Sqlite, |store| async move {
            let key = create_key(&store).await.0;
            let recorder = UsageRecorder::default();
            use_at(&recorder, &key, "10.0.0.1", 60);
            use_at(&recorder, &key, "10.0.0.1", 120);
            // A reading from before the newest minute still counts in its own.
            recorder.record(
                &key,
                ValidationCode::Archived,
                client("10.0.0.1"),
                Instant::now(),
                60,
            );
            use_at(&recorder, &key, "10.0.0.1", 120);
            let pending = lock(&recorder.pending);
            let counts: Vec<(i64, ValidationCode, u64)> = pending[&key.id]
                .counts(&key.id)
                .map(|count| (count.minute_start, count.outcome, count.calls))
                .collect();
            assert_eq!(
                counts,
                [
                    (120, ValidationCode::Valid, 2),
                    (60, ValidationCode::Valid, 1),
                    (60, ValidationCode::Archived, 1),
                ]
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_that_failed_to_flush_is_kept() {
        testing::run(Backend::Sqlite, |store| async move {
            let key = create_key(&store).await.0;
            let (recorder, clock) = (UsageRecorder::default(), Clock::new());
            use_at(&recorder, &key, "10.0.0.1", 0);
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
            use_at(&recorder, &key, "10.0.0.1", 0);
            // Dropped mid-write, as an aborted flusher task would be.
            let mut flush = Box::pin(recorder.flush_to(&clock, |_, _| std::future::pending()));
            let polled = tokio::time::timeout(Duration::ZERO, flush.as_mut()).await;
            assert!(polled.is_err(), "the write never finishes");
            assert_eq!(recorder.pending(), 0, "the batch is taken while writing");
            // A use noted meanwhile wins over the taken one; counts add up.
            use_at(&recorder, &key, "10.0.0.2", 60);
            drop(flush);
            assert_eq!(recorder.pending(), 1);
            {
                let pending = lock(&recorder.pending);
                let used = &pending[&key.id];
                let last = used.last.as_ref().expect("a last use");
                assert_eq!(last.ip.as_deref(), Some("10.0.0.2"));
                let calls: u64 = used.counts(&key.id).map(|count| count.calls).sum();
                assert_eq!(calls, 2, "both uses are still counted");
            }
            let timed_out = recorder
                .flush_to(&clock, |_, _| async {
                    Err(FlushError::Timeout(Duration::ZERO))
                })
                .await;
            assert!(timed_out.is_err());
            assert_eq!(recorder.pending(), 1);
        })
        .await;
    }
}
