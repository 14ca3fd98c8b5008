//! [`SingleFlight`]: concurrent lookups of one key share one run of the
//! lookup, and a lookup nobody waits for any more leaves nothing behind.
//!
//! keyward's validation path and the remote validator's verdict cache both
//! use it: a burst of requests presenting the same unknown key costs one
//! database read or one `ValidateKey` call, not one per request.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;
use tokio::sync::OnceCell;

use crate::sync::lock;

/// Runs one lookup per key at a time; callers asking for a key whose lookup
/// is under way wait for that lookup's answer instead of starting their own.
///
/// The lookup runs inside the callers' futures (nothing is spawned): the
/// first caller drives it, and if that caller is dropped, a waiting caller
/// takes over with its own lookup. When the last caller of a key is dropped
/// (a client reset the stream, a `grpc-timeout` expired), its lookup future
/// is dropped with it and the key's entry is removed, so cancelled requests
/// leave no entry and no running work behind. Answers are shared with the
/// callers waiting at that moment and never kept: a later call runs a new
/// lookup (cache answers outside, before calling [`SingleFlight::run`]).
#[derive(Debug)]
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Flight<V>, RandomState>>,
}

/// One lookup under way and how many callers wait for it.
#[derive(Debug)]
struct Flight<V> {
    answer: Arc<OnceCell<V>>,
    waiters: usize,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Mutex::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// No lookups under way.
    pub fn new() -> Self {
        Self::default()
    }

    /// The answer of the lookup of `key` under way, or of `lookup()` if none
    /// is. `lookup` is called only if this caller ends up driving the lookup.
    pub async fn run<F, Fut>(&self, key: K, lookup: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let waiter = self.join(key);
        waiter
            .answer
            .get_or_init(|| async {
                let answer = lookup().await;
                // No await between here and the return: the flight is retired
                // exactly when its answer is set, so a later caller starts a
                // fresh lookup rather than reading this one's answer.
                self.retire(&waiter.key, &waiter.answer);
                answer
            })
            .await
            .clone()
    }

    /// How many keys have a lookup under way (or callers still waiting).
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }

    /// How many callers wait for the lookup of `key` (0 if none is under way).
    pub fn waiting(&self, key: &K) -> usize {
        lock(&self.flights)
            .get(key)
            .map_or(0, |flight| flight.waiters)
    }

    /// Joins the flight of `key`, starting one if there is none.
    fn join(&self, key: K) -> Waiter<'_, K, V> {
        let mut flights = lock(&self.flights);
        let flight = flights.entry(key.clone()).or_insert_with(|| Flight {
            answer: Arc::new(OnceCell::new()),
            waiters: 0,
        });
        flight.waiters += 1;
        Waiter {
            owner: self,
            answer: Arc::clone(&flight.answer),
            key,
        }
    }

    /// Removes the flight of `key` if it is still `answer`'s.
    fn retire(&self, key: &K, answer: &Arc<OnceCell<V>>) {
        let mut flights = lock(&self.flights);
        if flights
            .get(key)
            .is_some_and(|flight| Arc::ptr_eq(&flight.answer, answer))
        {
            flights.remove(key);
        }
    }
}

/// One caller's place in a flight: leaving (answered, failed or dropped)
/// removes the flight once nobody waits for it.
struct Waiter<'a, K: Hash + Eq, V> {
    owner: &'a SingleFlight<K, V>,
    answer: Arc<OnceCell<V>>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for Waiter<'_, K, V> {
    fn drop(&mut self) {
        let mut flights = lock(&self.owner.flights);
        // A retired flight may have been replaced by a newer one of the same
        // key: only this flight's count is ours to change.
        if let Some(flight) = flights
            .get_mut(&self.key)
            .filter(|flight| Arc::ptr_eq(&flight.answer, &self.answer))
        {
            flight.waiters -= 1;
            if flight.waiters == 0 {
                flights.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_lookup() {
        let flights = Arc::new(SingleFlight::<u32, u32>::new());
        let lookups = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flights, lookups, release) = (
                Arc::clone(&flights),
                Arc::clone(&lookups),
                Arc::clone(&release),
            );
            tasks.push(tokio::spawn(async move {
                flights
                    .run(7, || async move {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        42
                    })
                    .await
            }));
        }
        // Every task has joined once the one flight counts 50 waiters.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while flights.waiting(&7) < 50 {
            assert!(tokio::time::Instant::now() < deadline, "tasks never joined");
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for task in tasks {
            assert_eq!(task.await.expect("no panic"), 42);
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_answer_is_not_kept() {
        let flights = SingleFlight::<u32, u32>::new();
        assert_eq!(flights.run(1, || async { 1 }).await, 1);
        assert_eq!(flights.run(1, || async { 2 }).await, 2);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn dropping_every_waiter_of_pending_lookups_leaves_nothing() {
        let flights = SingleFlight::<u32, u32>::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        {
            let mut waiters = Vec::new();
            for key in 0..16 {
                for _ in 0..3 {
                    let dropped = Arc::clone(&dropped);
                    waiters.push(Box::pin(flights.run(key, move || async move {
                        // Counts when the lookup future itself is dropped.
                        let _guard = DropCounter(dropped);
                        std::future::pending::<u32>().await
                    })));
                }
            }
            // Poll each once so that lookups are actually under way.
            for waiter in &mut waiters {
                let polled = tokio::time::timeout(Duration::ZERO, waiter.as_mut()).await;
                assert!(polled.is_err(), "a pending lookup does not finish");
            }
            assert_eq!(flights.in_flight(), 16);
        }
        assert_eq!(flights.in_flight(), 0, "every entry is removed");
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            16,
            "every started lookup is cancelled"
        );
    }

    #[tokio::test]
    async fn a_dropped_driver_is_taken_over_by_a_waiter() {
        let flights = SingleFlight::<u32, u32>::new();
        let mut first = Box::pin(flights.run(1, std::future::pending));
        assert!(
            tokio::time::timeout(Duration::ZERO, first.as_mut())
                .await
                .is_err()
        );
        let second = flights.run(1, || async { 5 });
        drop(first);
        assert_eq!(second.await, 5);
        assert_eq!(flights.in_flight(), 0);
    }

    struct DropCounter(Arc<AtomicUsize>);

    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
