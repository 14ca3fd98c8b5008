//! The remote validator's local verdict cache, and the single-flight map that
//! coalesces concurrent lookups of the same (key, scopes) into one call.
//!
//! Entries are keyed by a BLAKE3 hash of the key and the required scopes, so
//! raw keys are never kept as map keys.
//!
//! A key's IP allowlist travels with its verdict ([`Answer`]): a cached
//! verdict serves a request only after that request's own client address is
//! checked against it, so a "valid" cached for one address never lets
//! another through. keyward's IP_NOT_ALLOWED answer describes nothing of the
//! key, so it cannot be checked again for another address: it is cached
//! under the key, the scopes *and* the client address, and lookups in flight
//! are shared only between requests from the same address.
//!
//! A metered key's answer (rate limits or credits: each call spends) is
//! never cached, and never shared either: a request that joined another's
//! lookup of a metered key asks keyward itself, so that every request is
//! charged.

use std::collections::HashMap;
use std::future::Future;
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use keyward_core::{AllowedCidrs, Cidr, Scope};

use crate::metrics::AuthMetrics;
use crate::single_flight::SingleFlight;
use crate::sync::lock;
use crate::validator::{Denial, IdentityDetails, ValidatorError, Verdict};

/// What the cache and the in-flight map are keyed by: a hash, never the key.
pub(crate) type CacheKey = [u8; 32];

/// A fetch's answer: the verdict, or why there is none.
pub(crate) type Outcome = Result<Verdict, ValidatorError>;

/// What a shared lookup hands every waiter: the verdict, and whether the key
/// is metered (then only the caller that drove the lookup may use it).
type Flight = Result<(Verdict, bool), ValidatorError>;

/// The cache key of `key` with `scopes`. Scopes are hashed as a sorted set so
/// that their order does not matter; every part is length-prefixed so that
/// no two different inputs hash alike by concatenation.
pub(crate) fn cache_key(key: &str, scopes: &[Scope]) -> CacheKey {
    // Routes list their scopes once, usually sorted already: copy only if not.
    if scopes.is_sorted_by(|a, b| a.as_str() < b.as_str()) {
        hash_parts(key, scopes.iter().map(Scope::as_str))
    } else {
        let mut sorted: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        hash_parts(key, sorted.into_iter())
    }
}

/// The keyed BLAKE3 hash of `key` and then `scopes`, each part with its
/// length before it in two bytes: callers pass a key only once it is known
/// to be at most `PresentedKey::MAX_LEN` long, and a parsed scope is at most
/// `MAX_SCOPE_CHARS` long.
/// The parts are gathered on the stack and hashed in one call when they fit
/// (the usual case: a key and a scope or two fit one 64-byte block), which
/// is several times cheaper than feeding an incremental hasher part by
/// part; the hash is the same either way.
fn hash_parts<'s>(key: &'s str, scopes: impl Iterator<Item = &'s str> + Clone) -> CacheKey {
    // Deriving the key hashes the context string: do it once per process.
    static HASH_KEY: LazyLock<[u8; 32]> =
        LazyLock::new(|| blake3::derive_key("keyward-auth 2026 remote verdict cache key", b""));
    const PREFIX: usize = size_of::<u16>();
    let prefix = |part: &str| {
        debug_assert!(
            part.len() <= usize::from(u16::MAX),
            "a part fits its prefix"
        );
        (part.len() as u16).to_le_bytes()
    };
    let parts = std::iter::once(key).chain(scopes);
    let total: usize = parts.clone().map(|part| PREFIX + part.len()).sum();
    let mut buffer = [0u8; 256];
    if total <= buffer.len() {
        let mut at = 0;
        for part in parts {
            buffer[at..at + PREFIX].copy_from_slice(&prefix(part));
            buffer[at + PREFIX..at + PREFIX + part.len()].copy_from_slice(part.as_bytes());
            at += PREFIX + part.len();
        }
        return *blake3::keyed_hash(&HASH_KEY, &buffer[..at]).as_bytes();
    }
    let mut hasher = blake3::Hasher::new_keyed(&HASH_KEY);
    for part in parts {
        hasher.update(&prefix(part));
        hasher.update(part.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// The cache key of IP_NOT_ALLOWED answers and of lookups in flight: the
/// (key, scopes) cache key with the client's address.
pub(crate) fn addressed_key(base: &CacheKey, client: Option<IpAddr>) -> CacheKey {
    let mut hasher = blake3::Hasher::new_keyed(base);
    match client.map(|ip| ip.to_canonical()) {
        None => hasher.update(&[0]),
        Some(IpAddr::V4(ip)) => hasher.update(&[4]).update(&ip.octets()),
        Some(IpAddr::V6(ip)) => hasher.update(&[6]).update(&ip.octets()),
    };
    *hasher.finalize().as_bytes()
}

/// keyward's answer for a (key, scopes): the verdict, and the key's IP
/// allowlist when it has one, which every reuse checks first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) verdict: Verdict,
    pub(crate) allowed_cidrs: Option<Arc<AllowedCidrs>>,
    /// The key has rate limits or credits: the verdict was for one call.
    pub(crate) metered: bool,
}

impl From<Verdict> for Answer {
    fn from(verdict: Verdict) -> Self {
        Self {
            verdict,
            allowed_cidrs: None,
            metered: false,
        }
    }
}

impl Answer {
    /// The verdict for a request from `client`: IP_NOT_ALLOWED when the key
    /// has an allowlist that does not hold the address (or the address is
    /// unknown), as keyward would answer; the cached verdict otherwise.
    pub(crate) fn for_client(&self, client: Option<IpAddr>) -> Verdict {
        match &self.allowed_cidrs {
            Some(allowed) if !client.is_some_and(|ip| allowed.contains(ip)) => {
                Verdict::Deny(Denial::IpNotAllowed)
            }
            _ => self.verdict.clone(),
        }
    }
}

/// How much the cache may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most verdicts.
    pub(crate) capacity: usize,
    /// Most bytes, as [`weight`] estimates them.
    pub(crate) max_bytes: usize,
    /// Longest a verdict is kept, whatever its hint.
    pub(crate) max_ttl: Duration,
}

/// A map of verdicts bounded in entries and in bytes, each living for its
/// own (capped) time, plus the lookups in flight.
#[derive(Debug)]
pub(crate) struct VerdictCache {
    limits: Limits,
    state: Mutex<State>,
    flights: SingleFlight<CacheKey, Flight>,
    metrics: AuthMetrics,
}

#[derive(Debug, Default)]
struct State {
    verdicts: HashMap<CacheKey, Cached, RandomState>,
    /// Sum of the cached verdicts' weights.
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    answer: Answer,
    expires_at: Instant,
    /// [`weight`] of this entry, kept so that removal needs no recount.
    weight: usize,
}

impl VerdictCache {
    /// An empty cache within `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::default(),
            flights: SingleFlight::new(),
            metrics: AuthMetrics::default(),
        }
    }

    /// Counts hits into `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: AuthMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The warm path, with no future to build: the cached verdict for `key`
    /// (a [`cache_key`]) and a request from `client`, if there is one. One
    /// lookup, and the address check if the key has an allowlist; then the
    /// IP_NOT_ALLOWED answers cached for that address.
    pub(crate) fn cached(&self, key: &CacheKey, client: Option<IpAddr>) -> Option<Verdict> {
        if let Some(answer) = self.get(key, Instant::now()) {
            self.metrics.note_cache_hit();
            return Some(answer.for_client(client));
        }
        let answer = self.get(&addressed_key(key, client), Instant::now())?;
        self.metrics.note_cache_hit();
        Some(answer.verdict)
    }

    /// The cached verdict for `key` (a [`cache_key`]) and a request from
    /// `client`, or the outcome of `fetch`, which returns keyward's answer
    /// with how long it may be reused. Concurrent callers for the same `key`
    /// and client address share one `fetch` ([`SingleFlight`]: if every
    /// caller goes away, the fetch is dropped and nothing stays in flight).
    /// Errors are shared with the callers waiting at that moment but never
    /// cached. A metered key's answer serves only the caller that fetched
    /// it: the others fetch again, each for itself.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        client: Option<IpAddr>,
        fetch: F,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(Answer, Duration), ValidatorError>>,
    {
        if let Some(verdict) = self.cached(&key, client) {
            return Ok(verdict);
        }
        let addressed = addressed_key(&key, client);
        let drove = AtomicBool::new(false);
        let flight = self
            .flights
            .run(addressed, || {
                drove.store(true, Ordering::Relaxed);
                async {
                    // A flight that landed between the miss and joining.
                    if let Some(answer) = self.get(&key, Instant::now()) {
                        return Ok((answer.for_client(client), false));
                    }
                    if let Some(answer) = self.get(&addressed, Instant::now()) {
                        return Ok((answer.verdict, false));
                    }
                    let (answer, hint) = fetch().await?;
                    let slot = if answer.verdict == Verdict::Deny(Denial::IpNotAllowed) {
                        addressed
                    } else {
                        key
                    };
                    if !answer.metered {
                        self.insert(slot, &answer, hint, Instant::now());
                    }
                    Ok((answer.for_client(client), answer.metered))
                }
            })
            .await;
        match flight {
            // Another request's charge: this one must be charged too.
            Ok((_, true)) if !drove.load(Ordering::Relaxed) => {
                let (answer, _) = fetch().await?;
                Ok(answer.for_client(client))
            }
            Ok((verdict, _)) => Ok(verdict),
            Err(error) => Err(error),
        }
    }

    /// A live answer for `key`; an expired one is dropped.
    fn get(&self, key: &CacheKey, now: Instant) -> Option<Answer> {
        let mut state = lock(&self.state);
        match state.verdicts.get(key) {
            Some(cached) if cached.expires_at > now => Some(cached.answer.clone()),
            Some(_) => {
                state.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `answer` for `hint` capped at `max_ttl`. A zero time means
    /// "do not cache"; so does an answer heavier than the whole budget.
    fn insert(&self, key: CacheKey, answer: &Answer, hint: Duration, now: Instant) {
        let ttl = hint.min(self.limits.max_ttl);
        let weight = weight(answer);
        if ttl.is_zero() || self.limits.capacity == 0 || weight > self.limits.max_bytes {
            return;
        }
        let Some(expires_at) = now.checked_add(ttl) else {
            return;
        };
        let mut state = lock(&self.state);
        state.remove(&key);
        state.make_room(self.limits, weight, now);
        state.bytes += weight;
        state.verdicts.insert(
            key,
            Cached {
                answer: answer.clone(),
                expires_at,
                weight,
            },
        );
    }

    /// How many verdicts are cached (live or not yet purged) and their weight.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.verdicts.len(), state.bytes)
    }

    /// How many lookups are in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.in_flight()
    }
}

impl State {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(cached) = self.verdicts.remove(key) {
            self.bytes -= cached.weight;
        }
    }

    fn fits(&self, limits: Limits, incoming: usize) -> bool {
        self.verdicts.len() < limits.capacity && self.bytes + incoming <= limits.max_bytes
    }

    /// Makes room for one more verdict of `incoming` bytes: expired verdicts
    /// go first; if that is not enough, arbitrary ones (the map's randomly
    /// seeded order) until a tenth of the limits is free as well. Evicting in
    /// batches keeps the full scan rare when the cache is full of live verdicts.
    fn make_room(&mut self, limits: Limits, incoming: usize, now: Instant) {
        if self.fits(limits, incoming) {
            return;
        }
        let mut freed = 0;
        self.verdicts.retain(|_, cached| {
            let live = cached.expires_at > now;
            if !live {
                freed += cached.weight;
            }
            live
        });
        self.bytes -= freed;
        if self.fits(limits, incoming) {
            return;
        }
        let slack = Limits {
            capacity: limits.capacity - limits.capacity / 10,
            max_bytes: limits.max_bytes - limits.max_bytes / 10,
            ..limits
        };
        let mut victims = Vec::new();
        let (mut len, mut bytes) = (self.verdicts.len(), self.bytes);
        for (key, cached) in &self.verdicts {
            if len < slack.capacity.max(1) && bytes + incoming <= slack.max_bytes.max(incoming) {
                break;
            }
            victims.push(*key);
            len -= 1;
            bytes -= cached.weight;
        }
        for victim in &victims {
            self.remove(victim);
        }
    }
}

/// An estimate of the memory one cached answer holds: the entry, its map
/// slot and key, its allowlist, and an allowed identity's strings, scopes and
/// metadata.
fn weight(answer: &Answer) -> usize {
    let allowlist = answer.allowed_cidrs.as_ref().map_or(0, |allowed| {
        2 * size_of::<usize>()
            + size_of::<AllowedCidrs>()
            + allowed.as_slice().len() * (size_of::<Cidr>() + 2 * size_of::<u128>())
    });
    let entry = size_of::<CacheKey>() + size_of::<Cached>() + allowlist;
    let Verdict::Allow(identity) = &answer.verdict else {
        return entry;
    };
    let details: &IdentityDetails = identity;
    let text = |s: &String| s.capacity();
    let optional = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
    // An Arc's two counters, the details, and every owned string.
    entry
        + 2 * size_of::<usize>()
        + size_of::<IdentityDetails>()
        + text(&details.key_id)
        + text(&details.organization_id)
        + optional(&details.workspace_id)
        + text(&details.name)
        + optional(&details.user_id)
        + optional(&details.service_account_id)
        + details.scopes.capacity() * size_of::<String>()
        + details.scopes.iter().map(text).sum::<usize>()
        // A B-tree entry: the pair, plus about a pointer of node overhead.
        + details
            .metadata
            .iter()
            .map(|(k, v)| 2 * size_of::<String>() + size_of::<usize>() + k.capacity() + v.capacity())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use keyward_core::MAX_SCOPES;
    use tokio::sync::Notify;

    use super::*;
    use crate::validator::{Denial, Identity};

    // keyward-core's field limits (not exported): the largest identity keyward sends.
    const MAX_SCOPE_CHARS: usize = 128;
    const MAX_METADATA_ENTRIES: usize = 32;
    const MAX_METADATA_VALUE_CHARS: usize = 512;

    const DENY: Verdict = Verdict::Deny(Denial::Unauthenticated);
    const HINT: Duration = Duration::from_secs(1);

    fn limits(capacity: usize, max_ttl: Duration) -> Limits {
        Limits {
            capacity,
            max_bytes: usize::MAX,
            max_ttl,
        }
    }

    fn scopes(raw: &[&str]) -> Vec<Scope> {
        raw.iter()
            .map(|s| Scope::parse(s).expect("a valid scope"))
            .collect()
    }

    fn key(n: u8) -> CacheKey {
        [n; 32]
    }

    #[test]
    fn cache_key_is_the_same_hash_on_the_stack_and_in_a_hasher() {
        let by_hasher = |parts: &[&str]| {
            let key = blake3::derive_key("keyward-auth 2026 remote verdict cache key", b"");
            let mut hasher = blake3::Hasher::new_keyed(&key);
            for part in parts {
                hasher.update(&(part.len() as u16).to_le_bytes());
                hasher.update(part.as_bytes());
            }
            *hasher.finalize().as_bytes()
        };
        // Fits the stack buffer; then far over it (hashed incrementally).
        let long: Vec<String> = (0..20)
            .map(|i| format!("scope{i:02}:{}", "x".repeat(20)))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        for parts in [&["sk_live_a", "orders:read"][..], &long[..]] {
            let (key, wanted) = (parts[0], &parts[1..]);
            assert_eq!(cache_key(key, &scopes(wanted)), by_hasher(parts));
        }
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
        let cache = VerdictCache::new(limits(10, Duration::from_secs(5)));
        let now = Instant::now();
        assert!(cache.get(&key(1), now).is_none());
        cache.insert(key(1), &DENY.into(), HINT, now);
        assert_eq!(cache.get(&key(1), now + HINT / 2), Some(DENY.into()));
        assert_eq!(cache.get(&key(1), now + HINT), None);
        assert_eq!(
            cache.usage(),
            (0, 0),
            "an expired verdict is dropped when seen"
        );
    }

    #[test]
    fn the_hint_is_capped_by_max_ttl() {
        let cache = VerdictCache::new(limits(10, Duration::from_millis(100)));
        let now = Instant::now();
        cache.insert(key(1), &DENY.into(), Duration::from_secs(3600), now);
        assert!(
            cache
                .get(&key(1), now + Duration::from_millis(50))
                .is_some()
        );
        assert!(
            cache
                .get(&key(1), now + Duration::from_millis(100))
                .is_none()
        );
    }

    #[test]
    fn a_zero_hint_or_capacity_caches_nothing() {
        let now = Instant::now();
        for (capacity, hint) in [(10, Duration::ZERO), (0, HINT)] {
            let cache = VerdictCache::new(limits(capacity, Duration::from_secs(5)));
            cache.insert(key(1), &DENY.into(), hint, now);
            assert_eq!(cache.usage(), (0, 0));
        }
    }

    #[test]
    fn a_full_cache_evicts_expired_verdicts_first_and_never_grows() {
        let cache = VerdictCache::new(limits(20, Duration::from_secs(5)));
        let now = Instant::now();
        for n in 0..20 {
            let hint = if n < 5 { HINT } else { HINT * 4 };
            cache.insert(key(n), &DENY.into(), hint, now);
        }
        assert_eq!(cache.usage().0, 20);
        let later = now + HINT * 2;
        cache.insert(key(100), &DENY.into(), HINT, later);
        assert_eq!(cache.usage().0, 16, "the five expired verdicts made room");
        for n in 5..20 {
            assert!(cache.get(&key(n), later).is_some());
        }
        for n in 101..200 {
            cache.insert(key(n), &DENY.into(), HINT, later);
            assert!(cache.usage().0 <= 20);
        }
        assert!(cache.get(&key(199), later).is_some());
    }

    /// The heaviest identity keyward can send: every scope and metadata
    /// entry at its longest.
    fn maximal_identity(n: usize) -> Verdict {
        Verdict::Allow(Identity::new(IdentityDetails {
            key_id: format!("key_{n:026}"),
            organization_id: "o".repeat(64),
            workspace_id: Some("w".repeat(128)),
            name: "n".repeat(128),
            scopes: (0..MAX_SCOPES)
                .map(|i| format!("{i:0width$}", width = MAX_SCOPE_CHARS))
                .collect(),
            metadata: (0..MAX_METADATA_ENTRIES)
                .map(|i| (format!("{i:064}"), "v".repeat(MAX_METADATA_VALUE_CHARS)))
                .collect(),
            user_id: Some("u".repeat(128)),
            service_account_id: Some("s".repeat(128)),
            environment: keyward_core::Environment::Test,
            expires_at: Some(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        }))
    }

    #[test]
    fn maximal_verdicts_stay_within_the_byte_budget() {
        let one = weight(&maximal_identity(0).into());
        assert!(one > 20_000, "a maximal identity weighs {one} bytes");
        // Room for about ten by bytes, while the entry cap (1,000) and the
        // load (200) are far above that: only the byte bound holds it.
        let budget = one * 10 + one / 2;
        let cache = VerdictCache::new(Limits {
            capacity: 1_000,
            max_bytes: budget,
            max_ttl: Duration::from_secs(60),
        });
        let now = Instant::now();
        for n in 0..200 {
            cache.insert(
                key(n),
                &maximal_identity(usize::from(n)).into(),
                HINT * 30,
                now,
            );
            let (entries, bytes) = cache.usage();
            assert!(bytes <= budget, "{bytes} bytes cached, budget {budget}");
            assert!(entries <= 10, "{entries} maximal verdicts cached");
            assert_eq!(
                bytes,
                entries * one,
                "the running total matches the weigher"
            );
        }
        assert!(cache.get(&key(199), now).is_some(), "the newest is cached");
        // A verdict heavier than the whole budget is not cached at all.
        let tiny = VerdictCache::new(Limits {
            capacity: 10,
            max_bytes: one - 1,
            max_ttl: Duration::from_secs(60),
        });
        tiny.insert(key(1), &maximal_identity(1).into(), HINT, now);
        assert_eq!(tiny.usage(), (0, 0));
    }

    /// 50 concurrent misses of one key, the first fetch held until all
    /// have joined: how many fetches they made.
    async fn fetches_of_concurrent_misses(metered: bool) -> usize {
        let cache = Arc::new(VerdictCache::new(limits(10, Duration::from_secs(5))));
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
                    .get_or_fetch(key(1), None, || {
                        let (fetches, release) = (Arc::clone(&fetches), Arc::clone(&release));
                        async move {
                            if fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                                release.notified().await;
                            }
                            let answer = Answer {
                                metered,
                                ..DENY.into()
                            };
                            Ok((answer, HINT))
                        }
                    })
                    .await
            }));
        }
        // Every task has joined once the flight counts 50 waiters.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.flights.waiting(&addressed_key(&key(1), None)) < 50 {
            assert!(Instant::now() < deadline, "tasks never joined");
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for task in tasks {
            assert_eq!(task.await.expect("no panic").expect("a verdict"), DENY);
        }
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(
            cache.usage().0,
            usize::from(!metered),
            "metered: not cached"
        );
        if !metered {
            let verdict = cache
                .get_or_fetch(key(1), None, || async {
                    panic!("a cached verdict needs no fetch")
                })
                .await;
            assert_eq!(verdict.expect("a verdict"), DENY);
        }
        fetches.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fetch() {
        assert_eq!(fetches_of_concurrent_misses(false).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_for_a_metered_key_is_fetched_for_itself() {
        // Each call spends: one shared answer would charge 50 requests once.
        assert_eq!(fetches_of_concurrent_misses(true).await, 50);
    }

    #[tokio::test]
    async fn a_cached_verdict_serves_another_address_only_inside_the_allowlist() {
        let cache = VerdictCache::new(limits(10, Duration::from_secs(5)));
        let ip = |raw: &str| Some(raw.parse::<IpAddr>().expect("an address"));
        let allowed = Arc::new(AllowedCidrs::parse(&["203.0.113.0/24"]).expect("valid"));
        let allow = maximal_identity(1);
        let fetches = AtomicUsize::new(0);
        let ask = |client, answer: Answer| {
            let fetches = &fetches;
            cache.get_or_fetch(key(1), client, move || {
                let answer = answer.clone();
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Ok((answer, HINT))
                }
            })
        };
        // keyward refuses a first request from outside: cached for that
        // address only.
        let refused = Answer::from(Verdict::Deny(Denial::IpNotAllowed));
        for _ in 0..2 {
            let verdict = ask(ip("198.51.100.1"), refused.clone()).await;
            assert_eq!(
                verdict.expect("a verdict"),
                Verdict::Deny(Denial::IpNotAllowed)
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "the refusal was cached");
        // An address inside asks keyward and gets the key, with its list.
        let valid = Answer {
            verdict: allow.clone(),
            allowed_cidrs: Some(Arc::clone(&allowed)),
            metered: false,
        };
        assert_eq!(
            ask(ip("203.0.113.9"), valid.clone())
                .await
                .expect("a verdict"),
            allow
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Hits: inside again, another inside address, and outside ones
        // (including an unknown address): no fetch, each checked locally.
        for (client, expected) in [
            (ip("203.0.113.9"), allow.clone()),
            (ip("203.0.113.200"), allow.clone()),
            (ip("::ffff:203.0.113.7"), allow.clone()),
            (ip("192.0.2.1"), Verdict::Deny(Denial::IpNotAllowed)),
            (None, Verdict::Deny(Denial::IpNotAllowed)),
        ] {
            let verdict = ask(client, valid.clone()).await.expect("a verdict");
            assert_eq!(verdict, expected, "{client:?}");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "all hits");
    }

    #[tokio::test]
    async fn errors_are_returned_but_never_cached() {
        let cache = VerdictCache::new(limits(10, Duration::from_secs(5)));
        let fetches = AtomicUsize::new(0);
        for _ in 0..3 {
            let outcome = cache
                .get_or_fetch(key(1), None, || async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Err(ValidatorError::unavailable("keyward is down"))
                })
                .await;
            assert!(outcome.is_err());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        assert_eq!(cache.usage(), (0, 0));
        assert_eq!(cache.in_flight(), 0);
    }

    #[tokio::test]
    async fn dropped_callers_of_fetches_that_never_answer_leave_nothing_in_flight() {
        let cache = VerdictCache::new(limits(10, Duration::from_secs(5)));
        let mut callers: Vec<_> = (0..32)
            .map(|n| Box::pin(cache.get_or_fetch(key(n), None, std::future::pending)))
            .collect();
        for caller in &mut callers {
            let polled = tokio::time::timeout(Duration::ZERO, caller.as_mut()).await;
            assert!(polled.is_err(), "a pending fetch does not finish");
        }
        assert_eq!(cache.in_flight(), 32);
        drop(callers);
        assert_eq!(cache.in_flight(), 0);

        // The next caller starts afresh.
        let verdict = cache
            .get_or_fetch(key(1), None, || async { Ok((DENY.into(), HINT)) })
            .await;
        assert_eq!(verdict.expect("a verdict"), DENY);
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(cache.usage().0, 1);
    }
}
