//! The remote validator's local verdict cache, and the single-flight map that
//! coalesces concurrent lookups of the same (key, scopes) into one call.
//!
//! Entries are keyed by a BLAKE3 hash of the key and the required scopes, so
//! raw keys are never kept as map keys.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use keyward_core::Scope;
use tokio::sync::OnceCell;

use crate::validator::{ValidatorError, Verdict};

/// What the cache and the in-flight map are keyed by: a hash, never the key.
pub(crate) type CacheKey = [u8; 32];

/// A fetch's answer: the verdict, or why there is none.
pub(crate) type Outcome = Result<Verdict, ValidatorError>;

/// One lookup in progress; every caller asking for the same entry awaits it.
type Flight = Arc<OnceCell<Outcome>>;

/// The cache key of `key` with `scopes`. Scopes are hashed as a sorted set so
/// that their order does not matter; every part is length-prefixed so that
/// no two different inputs hash alike by concatenation.
pub(crate) fn cache_key(key: &str, scopes: &[Scope]) -> CacheKey {
    // Deriving the key hashes the context string: do it once per process.
    static HASH_KEY: LazyLock<[u8; 32]> =
        LazyLock::new(|| blake3::derive_key("keyward-auth 2026 remote verdict cache key", b""));
    let mut hasher = blake3::Hasher::new_keyed(&HASH_KEY);
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(key.as_bytes());
    // Routes list their scopes once, usually sorted already: copy only if not.
    if scopes.is_sorted_by(|a, b| a.as_str() < b.as_str()) {
        scopes
            .iter()
            .for_each(|scope| part(scope.as_str().as_bytes()));
    } else {
        let mut sorted: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.into_iter().for_each(|scope| part(scope.as_bytes()));
    }
    *hasher.finalize().as_bytes()
}

/// A bounded map of verdicts, each living for its own (capped) time, plus the
/// lookups in flight.
#[derive(Debug)]
pub(crate) struct VerdictCache {
    capacity: usize,
    max_ttl: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    verdicts: HashMap<CacheKey, Cached, RandomState>,
    flights: HashMap<CacheKey, Flight, RandomState>,
}

#[derive(Debug)]
struct Cached {
    verdict: Verdict,
    expires_at: Instant,
}

/// What a lookup found.
enum Lookup {
    /// A live cached verdict.
    Hit(Verdict),
    /// No live verdict: the flight to wait on (new, or already under way).
    Miss(Flight),
}

impl VerdictCache {
    /// A cache of at most `capacity` verdicts, none kept longer than `max_ttl`.
    pub(crate) fn new(capacity: usize, max_ttl: Duration) -> Self {
        Self {
            capacity,
            max_ttl,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (only map operations run
        // under it), so a poisoned lock still holds consistent maps.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached verdict for `key`, or the outcome of `fetch`, which returns
    /// a verdict with how long it may be reused. Concurrent callers for the
    /// same `key` share one `fetch`: only one of them runs it (if that caller
    /// goes away mid-way, a waiting one takes over). Errors are shared with
    /// the callers waiting at that moment but never cached.
    pub(crate) async fn get_or_fetch<F, Fut>(&self, key: CacheKey, fetch: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Verdict, Duration), ValidatorError>>,
    {
        let flight = match self.lookup(&key, Instant::now()) {
            Lookup::Hit(verdict) => return Ok(verdict),
            Lookup::Miss(flight) => flight,
        };
        flight
            .get_or_init(|| async {
                let fetched = fetch().await;
                // Runs without an await in between, so it cannot be cancelled
                // half-way: the flight is always retired with its answer.
                self.land(&key, &flight, fetched.as_ref().ok(), Instant::now());
                fetched.map(|(verdict, _)| verdict)
            })
            .await
            .clone()
    }

    /// A live verdict for `key`, or the flight to wait on (joining the one
    /// under way, if any). One lock for both, so concurrent misses share a flight.
    fn lookup(&self, key: &CacheKey, now: Instant) -> Lookup {
        let mut state = self.state();
        match state.verdicts.get(key) {
            Some(cached) if cached.expires_at > now => return Lookup::Hit(cached.verdict.clone()),
            Some(_) => {
                state.verdicts.remove(key);
            }
            None => {}
        }
        Lookup::Miss(Arc::clone(state.flights.entry(*key).or_default()))
    }

    /// Retires `flight` and caches what it fetched, if anything, for the
    /// hinted time capped at `max_ttl`. A zero time means "do not cache".
    fn land(
        &self,
        key: &CacheKey,
        flight: &Flight,
        fetched: Option<&(Verdict, Duration)>,
        now: Instant,
    ) {
        let mut state = self.state();
        if state
            .flights
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            state.flights.remove(key);
        }
        let Some((verdict, hint)) = fetched else {
            return;
        };
        let ttl = (*hint).min(self.max_ttl);
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let Some(expires_at) = now.checked_add(ttl) else {
            return;
        };
        if !state.verdicts.contains_key(key) && state.verdicts.len() >= self.capacity {
            state.make_room(self.capacity, now);
        }
        state.verdicts.insert(
            *key,
            Cached {
                verdict: verdict.clone(),
                expires_at,
            },
        );
    }

    /// How many verdicts are cached (live or not yet purged).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().verdicts.len()
    }

    /// How many lookups are in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.state().flights.len()
    }
}

impl State {
    /// Frees at least one slot below `capacity`: expired verdicts go first;
    /// if that is not enough, about a tenth of the cache goes, picked by the
    /// map's (randomly seeded) order. Evicting in batches keeps the full scan
    /// rare when the cache is full of live verdicts.
    fn make_room(&mut self, capacity: usize, now: Instant) {
        self.verdicts.retain(|_, cached| cached.expires_at > now);
        if self.verdicts.len() < capacity {
            return;
        }
        let excess = self.verdicts.len() + 1 - capacity + capacity / 10;
        let victims: Vec<CacheKey> = self.verdicts.keys().take(excess).copied().collect();
        for victim in &victims {
            self.verdicts.remove(victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::validator::Denial;

    const DENY: Verdict = Verdict::Deny(Denial::Unauthenticated);
    const HINT: Duration = Duration::from_secs(1);

    fn scopes(raw: &[&str]) -> Vec<Scope> {
        raw.iter()
            .map(|s| Scope::parse(s).expect("a valid scope"))
            .collect()
    }

    fn key(n: u8) -> CacheKey {
        [n; 32]
    }

    #[test]
    fn cache_key_depends_on_key_and_scope_set_but_not_scope_order() {
        let base = cache_key("sk_live_a", &scopes(&["orders:read", "orders:write"]));
        assert_eq!(
            base,
            cache_key("sk_live_a", &scopes(&["orders:write", "orders:read"]))
        );
        assert_eq!(
            base,
            cache_key(
                "sk_live_a",
                &scopes(&["orders:write", "orders:read", "orders:read"])
            )
        );
        assert_ne!(
            base,
            cache_key("sk_live_b", &scopes(&["orders:read", "orders:write"]))
        );
        assert_ne!(base, cache_key("sk_live_a", &scopes(&["orders:read"])));
        assert_ne!(base, cache_key("sk_live_a", &[]));
        // Length prefixes keep the key and the scopes apart.
        assert_ne!(
            cache_key("sk_live_aorders:read", &[]),
            cache_key("sk_live_a", &scopes(&["orders:read"]))
        );
    }

    #[test]
    fn a_verdict_lives_for_its_hint() {
        let cache = VerdictCache::new(10, Duration::from_secs(5));
        let now = Instant::now();
        let Lookup::Miss(flight) = cache.lookup(&key(1), now) else {
            panic!("an empty cache misses");
        };
        cache.land(&key(1), &flight, Some(&(DENY, HINT)), now);
        assert_eq!(cache.in_flight(), 0);
        assert!(matches!(
            cache.lookup(&key(1), now + HINT / 2),
            Lookup::Hit(_)
        ));
        assert!(matches!(cache.lookup(&key(1), now + HINT), Lookup::Miss(_)));
        assert_eq!(cache.len(), 0, "an expired verdict is dropped when seen");
    }

    #[test]
    fn the_hint_is_capped_by_max_ttl() {
        let cache = VerdictCache::new(10, Duration::from_millis(100));
        let now = Instant::now();
        let Lookup::Miss(flight) = cache.lookup(&key(1), now) else {
            panic!("an empty cache misses");
        };
        cache.land(
            &key(1),
            &flight,
            Some(&(DENY, Duration::from_secs(3600))),
            now,
        );
        assert!(matches!(
            cache.lookup(&key(1), now + Duration::from_millis(50)),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            cache.lookup(&key(1), now + Duration::from_millis(100)),
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn a_zero_hint_or_capacity_caches_nothing() {
        let now = Instant::now();
        for (capacity, hint) in [(10, Duration::ZERO), (0, HINT)] {
            let cache = VerdictCache::new(capacity, Duration::from_secs(5));
            let Lookup::Miss(flight) = cache.lookup(&key(1), now) else {
                panic!("an empty cache misses");
            };
            cache.land(&key(1), &flight, Some(&(DENY, hint)), now);
            assert_eq!(cache.len(), 0);
            assert_eq!(cache.in_flight(), 0);
        }
    }

    #[test]
    fn a_full_cache_evicts_expired_verdicts_first_and_never_grows() {
        let cache = VerdictCache::new(20, Duration::from_secs(5));
        let now = Instant::now();
        for n in 0..20 {
            let hint = if n < 5 { HINT } else { HINT * 4 };
            let Lookup::Miss(flight) = cache.lookup(&key(n), now) else {
                panic!("an empty cache misses");
            };
            cache.land(&key(n), &flight, Some(&(DENY, hint)), now);
        }
        assert_eq!(cache.len(), 20);
        let later = now + HINT * 2;
        let Lookup::Miss(flight) = cache.lookup(&key(100), later) else {
            panic!("an unknown key misses");
        };
        cache.land(&key(100), &flight, Some(&(DENY, HINT)), later);
        assert_eq!(cache.len(), 16, "the five expired verdicts made room");
        for n in 5..20 {
            assert!(matches!(cache.lookup(&key(n), later), Lookup::Hit(_)));
        }

        for n in 101..200 {
            let Lookup::Miss(flight) = cache.lookup(&key(n), later) else {
                panic!("an unknown key misses");
            };
            cache.land(&key(n), &flight, Some(&(DENY, HINT)), later);
            assert!(cache.len() <= 20);
        }
        assert!(matches!(cache.lookup(&key(199), later), Lookup::Hit(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(VerdictCache::new(10, Duration::from_secs(5)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, fetches, release) = (
                Arc::clone(&cache),
                Arc::clone(&fetches),
                Arc::clone(&release),
            );
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(key(1), || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok((DENY, HINT))
                    })
                    .await
            }));
        }
        // Every task has joined the flight once the map holds one flight
        // whose cell is shared by all 50 tasks and the map.
        loop {
            let joined = cache
                .state()
                .flights
                .get(&key(1))
                .map_or(0, Arc::strong_count);
            if joined == 51 {
                break;
            }
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for task in tasks {
            assert_eq!(task.await.expect("no panic").expect("a verdict"), DENY);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.in_flight(), 0);

        // Now cached: no further fetch.
        let verdict = cache
            .get_or_fetch(key(1), || async {
                panic!("a cached verdict needs no fetch")
            })
            .await;
        assert_eq!(verdict.expect("a verdict"), DENY);
    }

    #[tokio::test]
    async fn errors_are_returned_but_never_cached() {
        let cache = VerdictCache::new(10, Duration::from_secs(5));
        let fetches = AtomicUsize::new(0);
        for _ in 0..3 {
            let outcome = cache
                .get_or_fetch(key(1), || async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Err(ValidatorError::unavailable("keyward is down"))
                })
                .await;
            assert!(outcome.is_err());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_fetch_is_taken_over_by_the_next_caller() {
        let cache = VerdictCache::new(10, Duration::from_secs(5));
        let abandoned = cache.get_or_fetch(key(1), std::future::pending);
        // Poll the first caller once so that it starts its fetch, then drop it.
        let polled = tokio::time::timeout(Duration::ZERO, abandoned).await;
        assert!(polled.is_err(), "a pending fetch does not finish");
        assert_eq!(cache.in_flight(), 1);

        let verdict = cache
            .get_or_fetch(key(1), || async { Ok((DENY, HINT)) })
            .await;
        assert_eq!(verdict.expect("a verdict"), DENY);
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(cache.len(), 1);
    }
}
