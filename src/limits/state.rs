//! What the limiter remembers per key: [`KeyState`] (one [`LimitSlot`] per
//! rate limit, one [`CreditSlot`] for credits), kept in [`Meters`], a sharded
//! map bounded in keys.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::fast::RandomState;
use keyward_core::{Credits, CreditsSpent, KeyId, Policy, RateLimit};
use tokio::sync::Notify;

use super::counter::Tagged;

/// Shards of the key map: concurrent calls of different keys rarely share a
/// lock word.
const SHARDS: usize = 64;

/// How long a key's credit state is kept after its last call. Longer than
/// the validator's `cache_max_age` (30 s) and many flush intervals, so a key
/// whose state is rebuilt has been re-read from the database, its spends
/// flushed: the database's record is current again.
pub(super) const CREDITS_IDLE_MS: u64 = 10 * 60 * 1000;

/// Bits of a rate-limit count (limits are at most 10^9 < 2^32).
pub(super) const LIMIT_BITS: u32 = 32;
/// Bits of a credit count (credits are at most 10^12 < 2^40).
pub(super) const CREDIT_BITS: u32 = 40;

/// A lease: units taken from a shared count in Redis, spent locally.
#[derive(Debug)]
pub(super) struct Lease<const B: u32> {
    /// Leased units not yet spent, of the window they were leased in.
    pub(super) left: Tagged<B>,
    /// The shared count after this replica's last lease, of that window:
    /// what the estimate of `remaining` starts from.
    pub(super) seen_used: Tagged<B>,
    /// `tag + 1` of a window whose shared count is used up: a call the lease
    /// cannot cover is refused without asking Redis.
    pub(super) exhausted: AtomicU64,
    /// Units one lease asks for.
    pub(super) size: AtomicU64,
    /// Units callers waiting for a lease need, asked for on top of `size`.
    pub(super) demand: AtomicU64,
    /// Whether a lease is being fetched (one at a time per lease).
    pub(super) fetching: AtomicBool,
    /// Woken when a fetch ends, whatever its outcome.
    pub(super) landed: Notify,
    /// `now_ms` of the last fetch, for adapting `size`.
    pub(super) last_fetch_ms: AtomicU64,
    /// The Redis key of the shared count, without the window number.
    pub(super) redis_key: Box<str>,
}

impl<const B: u32> Lease<B> {
    /// An empty lease; `seen_used` is what the shared count of the first
    /// window is believed to start at.
    fn new(size: u64, seen_used: u64, redis_key: String) -> Self {
        Self {
            left: Tagged::new(0, 0),
            seen_used: Tagged::new(0, seen_used),
            exhausted: AtomicU64::new(0),
            size: AtomicU64::new(size),
            demand: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            landed: Notify::new(),
            last_fetch_ms: AtomicU64::new(0),
            redis_key: redis_key.into_boxed_str(),
        }
    }

    /// Whether the shared count of window `tag` is known to be used up.
    pub(super) fn is_exhausted(&self, tag: u64) -> bool {
        self.exhausted.load(Ordering::Acquire) == tag + 1
    }

    /// Claims the right to fetch: `true` for the one caller that must.
    pub(super) fn claim_fetch(&self) -> bool {
        self.fetching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Ends a fetch and wakes its waiters.
    pub(super) fn end_fetch(&self) {
        self.fetching.store(false, Ordering::Release);
        self.landed.notify_waiters();
    }
}

/// One rate limit of one key, identified by its name and window: a change of
/// its `limit` keeps the counts (a policy change resets nothing).
#[derive(Debug)]
pub(super) struct LimitSlot {
    pub(super) name: Box<str>,
    pub(super) window_ms: u64,
    /// The window number tags count from.
    base: u64,
    /// Units this replica admitted per window: the whole count with one
    /// replica; the per-replica share while Redis cannot answer (`local`).
    pub(super) used: Tagged<LIMIT_BITS>,
    /// With Redis: the lease of the shared count.
    pub(super) lease: Option<Lease<LIMIT_BITS>>,
}

impl LimitSlot {
    fn new(limit: &RateLimit, now_ms: u64, redis: Option<(&str, &KeyId)>) -> Self {
        let lease = redis.map(|(prefix, id)| {
            Lease::new(
                (limit.limit / 100).max(1),
                0,
                format!("{prefix}:rl:{id}:{}:", limit.name),
            )
        });
        Self {
            name: limit.name.as_str().into(),
            window_ms: limit.window_ms(),
            base: limit.window_at(now_ms),
            used: Tagged::new(0, 0),
            lease,
        }
    }

    /// The tag of window number `window`.
    pub(super) fn tag(&self, window: u64) -> u64 {
        window.saturating_sub(self.base)
    }

    /// The window number of `tag`.
    pub(super) fn window(&self, tag: u64) -> u64 {
        self.base + tag
    }

    fn is_for(&self, limit: &RateLimit) -> bool {
        self.window_ms == limit.window_ms() && *self.name == *limit.name
    }
}

/// A key's credits of one setting (`Credits::set_at`): a new setting gets a
/// new slot and starts from zero.
#[derive(Debug)]
pub(super) struct CreditSlot {
    pub(super) set_at: i64,
    /// The refill period tags count from.
    base: i64,
    /// What was already spent in the period the slot was made in, when it
    /// was made: the database's record plus this replica's spends not yet
    /// written. Later periods start from zero.
    pub(super) start: CreditsSpent,
    /// Credits this replica spent per period: the whole count with one
    /// replica (starting at `start`).
    pub(super) used: Tagged<CREDIT_BITS>,
    /// Admitted spends not yet taken by `Limiter::take_spends`.
    pub(super) unflushed: Tagged<CREDIT_BITS>,
    /// With Redis, spends admitted while it could not answer (`local`
    /// mode), added to the shared count by the next lease.
    pub(super) unsynced: Tagged<CREDIT_BITS>,
    /// With Redis: the lease of the shared count.
    pub(super) lease: Option<Lease<CREDIT_BITS>>,
    /// Set once the slot left the map: a call still holding it hands its
    /// spend over at once instead of leaving it here.
    retired: AtomicBool,
}

impl CreditSlot {
    fn new(credits: &Credits, period: i64, start_used: u64, redis: Option<(&str, &KeyId)>) -> Self {
        let lease = redis.map(|(prefix, id)| {
            Lease::new(
                1,
                start_used,
                format!("{prefix}:cr:{id}:{}:", credits.set_at),
            )
        });
        let start = CreditsSpent {
            set_at: credits.set_at,
            period,
            used: start_used,
        };
        Self {
            set_at: credits.set_at,
            base: period,
            start,
            used: Tagged::new(0, start_used),
            unflushed: Tagged::new(0, 0),
            unsynced: Tagged::new(0, 0),
            lease,
            retired: AtomicBool::new(false),
        }
    }

    /// Marks the slot as out of the map.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether the slot left the map.
    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The tag of refill period `period`.
    pub(super) fn tag(&self, period: i64) -> u64 {
        u64::try_from(period.saturating_sub(self.base)).unwrap_or(0)
    }

    /// The period of `tag`.
    pub(super) fn period(&self, tag: u64) -> i64 {
        self.base
            .saturating_add(i64::try_from(tag).unwrap_or(i64::MAX))
    }

    /// What was spent in `tag`'s period before this slot counted: `start`
    /// in its own period, nothing in later ones.
    pub(super) fn start_used(&self, tag: u64) -> u64 {
        if tag == 0 { self.start.used } else { 0 }
    }
}

/// Everything the limiter remembers of one key.
#[derive(Debug)]
pub(super) struct KeyState {
    pub(super) id: KeyId,
    /// One per rate limit, in the policy's order.
    pub(super) limits: Box<[Arc<LimitSlot>]>,
    pub(super) credits: Option<Arc<CreditSlot>>,
    /// `now_ms` of the latest call (updated at most once a second).
    last_seen_ms: AtomicU64,
    /// How long after its last call the state is worth nothing.
    idle_after_ms: u64,
    /// Set by `Limiter::forget`: the next call compares the policy in full.
    stale: AtomicBool,
}

impl KeyState {
    /// Whether the state was built for `policy`'s meters: the same limits
    /// (names and windows, in order) and the same credit setting.
    pub(super) fn fits(&self, policy: &Policy) -> bool {
        let limits = policy.rate_limits.as_slice();
        !self.stale.load(Ordering::Relaxed)
            && self.limits.len() == limits.len()
            && self.limits.iter().zip(limits).all(|(s, l)| s.is_for(l))
            && match (&self.credits, &policy.credits) {
                (Some(slot), Some(credits)) => slot.set_at == credits.set_at,
                (None, None) => true,
                _ => false,
            }
    }

    /// Notes a call at `now_ms`: one relaxed read, and a write at most once
    /// a second, so a hot key's calls do not fight over the word.
    pub(super) fn touch(&self, now_ms: u64) {
        if now_ms > self.last_seen_ms.load(Ordering::Relaxed) + 1000 {
            self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    fn idle_at(&self, clock_ms: u64) -> bool {
        clock_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)) > self.idle_after_ms
    }

    fn last_seen(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// One shard of the key map.
type Shard = HashMap<KeyId, Arc<KeyState>, RandomState>;

/// What states leaving the map leave behind.
#[derive(Debug, Default)]
pub(super) struct Dropped {
    /// States evicted (idle, or to make room).
    pub(super) evicted: u64,
    /// Credit slots no longer in the map, with their key: their unwritten
    /// spends and unspent leases must be kept or given back.
    pub(super) retired: Vec<(KeyId, Arc<CreditSlot>)>,
}

impl Dropped {
    fn evict(&mut self, state: &KeyState) {
        self.evicted += 1;
        if let Some(slot) = &state.credits {
            self.retired.push((state.id.clone(), Arc::clone(slot)));
        }
    }
}

/// How a new [`KeyState`] is built.
pub(super) struct Build<'a> {
    pub(super) policy: &'a Policy,
    pub(super) now_ms: u64,
    /// The credit period at `now_ms` and what was spent of it already.
    pub(super) credits_start: Option<(i64, u64)>,
    /// The Redis key prefix, with Redis.
    pub(super) redis_prefix: Option<&'a str>,
}

/// The per-key states: `SHARDS` maps of `KeyId → Arc<KeyState>`, each behind
/// its own `RwLock`. A call takes a read lock for a lookup and its atomic
/// operations and holds no lock across an await; only a key's first call
/// (or a policy change) takes a write lock.
///
/// Bounded: each shard holds at most `max_keys / SHARDS` keys. A state is
/// dropped once its key has not been called for longer than its longest
/// window (10 minutes with credits), by `Limiter::take_spends` or when a
/// full shard needs room; a full shard with no idle key drops its least
/// recently called eighth. A dropped key starts over at its next call:
/// windows it counted in have ended, and credits restart from the
/// database's record plus the unwritten spends the limiter kept.
#[derive(Debug)]
pub(super) struct Meters {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    /// The latest `now_ms` of any call: the clock idleness is measured
    /// against (the callers' clock, so injected times stay consistent).
    clock_ms: AtomicU64,
}

impl Meters {
    /// At most `max_keys` keys (rounded up to a multiple of the shards).
    pub(super) fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::default(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            clock_ms: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &KeyId) -> &RwLock<Shard> {
        let hash = self.hasher.hash_one(id.as_str());
        // The high bits: the map's own table uses the low ones of its hash.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Moves the idleness clock to `now_ms` (a write at most once a second).
    pub(super) fn tick(&self, now_ms: u64) {
        if now_ms > self.clock_ms.load(Ordering::Relaxed) + 1000 {
            self.clock_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    /// Runs `f` on the key's state if it exists and fits `policy`, under the
    /// shard's read lock (so `f` must not block).
    pub(super) fn with<T>(
        &self,
        id: &KeyId,
        policy: &Policy,
        f: impl FnOnce(&Arc<KeyState>) -> T,
    ) -> Option<T> {
        let shard = read(self.shard(id));
        let state = shard.get(id).filter(|state| state.fits(policy))?;
        Some(f(state))
    }

    /// The key's state for `policy`, built on its first call or after a
    /// policy change (keeping the slots of limits with the same name and
    /// window, and the credit slot of the same setting). What a replaced or
    /// evicted state leaves behind is handed to `dropped`.
    pub(super) fn get_or_build(&self, id: &KeyId, build: Build<'_>) -> (Arc<KeyState>, Dropped) {
        let mut dropped = Dropped::default();
        let mut shard = write(self.shard(id));
        let old = match shard.get(id) {
            Some(state) if state.fits(build.policy) => return (Arc::clone(state), dropped),
            Some(_) => shard.remove(id),
            None => None,
        };
        if shard.len() >= self.per_shard {
            for state in self.make_room(&mut shard) {
                dropped.evict(&state);
            }
        }
        let state = Arc::new(new_state(id, &build, old.as_deref()));
        shard.insert(id.clone(), Arc::clone(&state));
        drop(shard);
        // The old state's credit slot, unless the new state kept it.
        if let Some(slot) = old.as_ref().and_then(|old| old.credits.as_ref())
            && !state
                .credits
                .as_ref()
                .is_some_and(|kept| Arc::ptr_eq(kept, slot))
        {
            dropped.retired.push((id.clone(), Arc::clone(slot)));
        }
        (state, dropped)
    }

    /// Drops idle states, then, if none was idle, the least recently called
    /// eighth of the shard.
    fn make_room(&self, shard: &mut Shard) -> Vec<Arc<KeyState>> {
        let clock = self.clock_ms.load(Ordering::Relaxed);
        let mut gone: Vec<KeyId> = shard
            .iter()
            .filter(|(_, state)| state.idle_at(clock))
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            let mut by_age: Vec<(u64, &KeyId)> =
                shard.iter().map(|(id, s)| (s.last_seen(), id)).collect();
            by_age.sort_unstable();
            let count = (self.per_shard / 8).max(1);
            gone = by_age
                .into_iter()
                .take(count)
                .map(|(_, id)| id.clone())
                .collect();
        }
        gone.iter().filter_map(|id| shard.remove(id)).collect()
    }

    /// Marks the key's state for a full comparison at its next call.
    /// Also forgets which windows' shared counts were seen used up: a
    /// limit raised under the same name and window has room again, which
    /// only Redis can tell.
    pub(super) fn mark_stale(&self, id: &KeyId) {
        if let Some(state) = read(self.shard(id)).get(id) {
            state.stale.store(true, Ordering::Relaxed);
            for slot in &state.limits {
                if let Some(lease) = &slot.lease {
                    lease.exhausted.store(0, Ordering::Release);
                }
            }
        }
    }

    /// Calls `f` on every state, one shard at a time under its read lock.
    pub(super) fn for_each(&self, mut f: impl FnMut(&KeyState)) {
        for shard in &self.shards {
            for state in read(shard).values() {
                f(state);
            }
        }
    }

    /// Removes the states idle at the latest call's time.
    pub(super) fn evict_idle(&self) -> Dropped {
        let clock = self.clock_ms.load(Ordering::Relaxed);
        let mut dropped = Dropped::default();
        for shard in &self.shards {
            if !read(shard).values().any(|state| state.idle_at(clock)) {
                continue;
            }
            write(shard).retain(|_, state| {
                let keep = !state.idle_at(clock);
                if !keep {
                    dropped.evict(state);
                }
                keep
            });
        }
        dropped
    }

    /// The number of keys with state.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| read(shard).len()).sum()
    }
}

/// Read-locks `lock`, ignoring poisoning: as with `keyward_auth::sync::lock`,
/// the sections only run map operations and atomics, which leave the data
/// consistent at every step.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, ignoring poisoning (see [`read`]).
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn new_state(id: &KeyId, build: &Build<'_>, old: Option<&KeyState>) -> KeyState {
    let redis = build.redis_prefix.map(|prefix| (prefix, id));
    let limits: Box<[Arc<LimitSlot>]> = build
        .policy
        .rate_limits
        .as_slice()
        .iter()
        .map(|limit| {
            old.and_then(|old| old.limits.iter().find(|slot| slot.is_for(limit)))
                .map_or_else(
                    || Arc::new(LimitSlot::new(limit, build.now_ms, redis)),
                    Arc::clone,
                )
        })
        .collect();
    let credits = build.policy.credits.as_ref().map(|credits| {
        old.and_then(|old| old.credits.as_ref())
            .filter(|slot| slot.set_at == credits.set_at)
            .map_or_else(
                || {
                    let (period, used) = build.credits_start.unwrap_or_default();
                    Arc::new(CreditSlot::new(credits, period, used, redis))
                },
                Arc::clone,
            )
    });
    let longest_window = limits.iter().map(|slot| slot.window_ms).max().unwrap_or(0);
    let idle_after_ms = if credits.is_some() {
        longest_window.max(CREDITS_IDLE_MS)
    } else {
        longest_window
    };
    KeyState {
        id: id.clone(),
        limits,
        credits,
        last_seen_ms: AtomicU64::new(build.now_ms),
        idle_after_ms,
        stale: AtomicBool::new(false),
    }
}
