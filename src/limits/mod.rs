//! The counting engine for per-key rate limits and credits (SPEC §15):
//! [`Limiter::charge`] decides whether one call of a valid, metered key is
//! admitted, and spends what it costs.
//!
//! # What a call is checked against
//!
//! A call passes the key's rate limits, each in the policy's order, then its
//! credits. Each costs `Call::cost`, or by default each limit's own `cost`
//! and 1 credit. A call refused by one meter spends nothing anywhere: what
//! earlier limits took is refunded, so limits checked together stay exact.
//! An admitted call reports the meter with the least remaining after it
//! (credits included); a refused one reports the meter that refused it, with
//! `remaining` 0 and `retry_after` = `reset` = until its window ends (credits:
//! until their refill; credits that are never refilled report zero for
//! both, meaning "not by waiting").
//!
//! # One replica: counts in memory
//!
//! Windows are fixed and aligned to the Unix epoch
//! (`RateLimit::window_at`), so every replica agrees on when one ends. A
//! key's state (`state::KeyState`) holds one `counter::Tagged` word per
//! limit: `window << 32 | used`, charged with a compare-and-swap loop that
//! refuses to pass the limit, and where a new window replaces the word. The
//! states live in a sharded map (`KeyId → Arc<KeyState>`, 64 `RwLock`ed
//! shards, foldhash): a call takes one shard's read lock, does its atomic
//! operations and returns, with no await, no allocation and no lock held
//! across an await. Only a key's first call (or a policy change) builds its
//! state. The map is bounded (see `state::Meters`): a key's state is
//! dropped when it has not been called for longer than its longest window
//! (10 minutes with credits), and at most 100,000 keys are kept; past that
//! the least recently called are dropped and start over at their next call.
//!
//! Credits are counted per refill period the same way, starting from what
//! the database recorded (`ApiKey::credits_spent`, when its setting and
//! period match). Admitted spends are also added up per key until
//! [`Limiter::take_spends`] hands them to the store, which adds them to the
//! database in batches ([`Limiter::restore_spends`] puts back a batch whose
//! write failed): no call writes, and a crash loses at most one flush
//! interval of spends (and, with Redis, the leases replicas held). The
//! flusher is expected to call `take_spends` periodically: that is also
//! when idle keys' states are dropped.
//!
//! A policy change keeps counts: the state is rebuilt when the key's limits
//! (names and windows) or credit setting (`Credits::set_at`) differ from the
//! ones it was built for, keeping each limit of the same name and window
//! and the credits of the same setting. A new setting starts from zero.
//!
//! # Several replicas: leases from Redis
//!
//! With `--redis-url`, the shared count of a window lives in Redis
//! (`kw:rl:{key_id}:{name}:{window}`, expiring after two windows). A replica
//! takes a *lease* of L units with one Lua script that grants
//! `min(L, N − used)`, never passing N, and spends it locally with the same
//! atomic operations as above: the warm path does not wait on Redis. When a
//! lease falls below L/2, one background task (per key and limit) fetches
//! the next; a call waits on Redis only when its lease is empty, and then
//! for at most `--redis-timeout`. Callers waiting together add up what they
//! need, so one fetch serves them all. When Redis has nothing left for a
//! window, the replica remembers it and refuses further calls of that window
//! without asking.
//!
//! L starts at `max(1, N/100)`, doubles while leases are spent within a
//! tenth of a window and halves when they last over half of one, and never
//! exceeds `N / (30 · replicas)`: a replica holds at most 1.5 L (the rest of
//! a lease and the next), so leases left unspent when a window ends (lost,
//! never carried over) are at most 5 % of N, and under overload every window
//! admits between 0.95 N and N. `replicas` is the number of live replicas:
//! each one announces itself every second (`ZADD kw:replicas`, by Redis'
//! clock) and counts those heard from within 5 s; the last count is kept
//! when Redis does not answer.
//!
//! Credits lease the same way from `kw:cr:{key_id}:{set_at}:{period}` (the
//! spent count), created on first use from the database's record (`SET NX`)
//! and never leased past the allowance. A credit lease is at most
//! `remaining / (300 · replicas)` (at least 1), so what replicas hold unspent
//! (1.5 leases each) stays within 0.5 % of what was left: the documented
//! slack of a key's last credits. Unspent credit leases are given back on
//! [`Limiter::shutdown`] (and when a key's state is dropped); a crashed
//! replica's are lost. Spends are recorded for the database as above: each
//! replica adds what it admitted. Rate-limit leases are not given back:
//! their windows end soon anyway.
//!
//! A credit count lives until a day after its period ends (30 days after
//! its last lease without a refill); one that is gone (expired, or Redis
//! lost its data) is created again from the database's record, which lags
//! by at most a flush interval. Redis should therefore not evict keys
//! under memory pressure (`maxmemory-policy noeviction`, the default).
//! Plain `redis://` only: the client is built without TLS.
//!
//! # When Redis does not answer
//!
//! Every Redis command is bounded by `--redis-timeout`. A failure or timeout
//! marks Redis unavailable until a command succeeds again (the heartbeat
//! tries every second), so the warm path stops waiting on it at once, and
//! recovers by itself. Meanwhile a call still spends leases it holds, and
//! for the rest `--redis-failure-mode` decides:
//!
//! - `closed` (default): the call is refused as RATE_LIMITED with
//!   `retry_after` 1 s (counted in [`LimiterStats::unavailable`]; logged at
//!   most every 5 s). The limiter also starts when Redis is unreachable at
//!   start; it refuses metered calls until Redis answers.
//! - `local`: each replica enforces its share, `max(1, N / replicas)` per
//!   window with the last known count of replicas (1 if Redis never
//!   answered), counted in memory; credits likewise, a share of what was
//!   known to be left. Credits spent meanwhile are added to Redis' count by
//!   the next lease.
//!
//! Without Redis, several replicas each count alone; `--per-replica-limits`
//! is the operator's statement that this is accepted (each replica then
//! admits up to N per window).
//!
//! # Cost of the warm path
//!
//! A call whose key has state and whose counts (or leases) cover it takes
//! one shard's read lock, compares the state with the policy (the number
//! of limits, their windows and names, the credit setting), runs one
//! compare-and-swap per meter and one relaxed counter add, and returns: no
//! allocation, no await, no string formatting (Redis key names are built
//! once per key, and only the window number is appended when a lease is
//! fetched). With Redis, one call in half a lease spawns the background
//! fetch. Memory per key: the state (~100 bytes) plus ~150 bytes per meter.
//!
//! # Idempotency
//!
//! A call with an idempotency key that repeats an *admitted* call within
//! `--idempotency-ttl` is answered with the first call's [`Charge`] and
//! spends nothing. A refused first call is not remembered, so its retry is
//! charged normally. With Redis the claim is
//! `SET kw:idem:{key_id}:{blake3(idempotency key)} pending NX PX`, then the
//! charge is stored over it; a duplicate that finds it pending polls
//! briefly (bounded), and is refused as RATE_LIMITED, `retry_after` 1 s, if
//! the first call is still undecided. Without Redis (or with it unavailable,
//! in `local` mode) they are kept in memory (at most 100,000, oldest
//! forgotten first). Raw idempotency keys are never stored.

mod counter;
mod idempotency;
mod shared;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;
use keyward_auth::sync::lock;
use keyward_core::{ApiKey, Credits, CreditsSpent, KeyId, MAX_RATE_LIMITS, Policy, RateLimit};
use tokio::time::Instant;

use self::idempotency::{Begin, LocalIdempotency};
use self::shared::Shared;
use self::state::{Build, CreditSlot, Dropped, KeyState, LimitSlot, Meters};
use crate::config::{DatabaseUrl, parse_interval};

/// Most keys whose counts are kept in memory (see `state::Meters`).
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// How long a replica refused because Redis cannot answer is told to wait.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// How rate limits and credits are counted: `keyward serve` flags, with
/// `KEYWARD_*` environment equivalents; `Default` is the flags' defaults.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LimiterSettings {
    /// Redis shared by the replicas for rate limits, credits and
    /// idempotency keys, e.g. redis://redis:6379 or
    /// redis://user:password@redis:6379/0. Without it, each replica counts
    /// in memory.
    #[arg(id = "redis_url", long = "redis-url", env = "KEYWARD_REDIS_URL")]
    pub redis_url: Option<RedisUrl>,
    /// Longest one Redis command may take; past it Redis counts as
    /// unavailable (see --redis-failure-mode).
    #[arg(
        id = "redis_timeout",
        long = "redis-timeout",
        env = "KEYWARD_REDIS_TIMEOUT",
        default_value = "250ms",
        value_parser = parse_interval
    )]
    pub redis_timeout: Duration,
    /// What metered keys get while Redis is unavailable: `closed` refuses
    /// calls it cannot count (RATE_LIMITED, retry after 1s); `local` lets
    /// each replica enforce its share (limit / live replicas) in memory.
    #[arg(
        id = "redis_failure_mode",
        long = "redis-failure-mode",
        env = "KEYWARD_REDIS_FAILURE_MODE",
        value_enum,
        default_value = "closed"
    )]
    pub redis_failure_mode: RedisFailureMode,
    /// Accept that, without --redis-url, each replica enforces rate limits
    /// and credits by itself (several replicas admit more than a limit).
    #[arg(
        id = "per_replica_limits",
        long = "per-replica-limits",
        env = "KEYWARD_PER_REPLICA_LIMITS"
    )]
    pub per_replica_limits: bool,
    /// How long a call with an idempotency key is remembered: a repeat
    /// within it is answered like the first call and not charged again.
    #[arg(
        id = "idempotency_ttl",
        long = "idempotency-ttl",
        env = "KEYWARD_IDEMPOTENCY_TTL",
        default_value = "10m",
        value_parser = parse_interval
    )]
    pub idempotency_ttl: Duration,
    /// Prefix of every Redis key keyward writes (`<prefix>:rl:…`), so
    /// deployments can share one Redis.
    #[arg(
        id = "redis_key_prefix",
        long = "redis-key-prefix",
        env = "KEYWARD_REDIS_KEY_PREFIX",
        default_value = "kw"
    )]
    pub redis_key_prefix: String,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        crate::clap_defaults()
    }
}

/// What metered keys get while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisFailureMode {
    /// Refuse what cannot be counted (RATE_LIMITED, retry after 1 s).
    Closed,
    /// Each replica enforces its share of each limit in memory.
    Local,
}

/// A Redis URL. Its `Debug` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("redis://") || s.starts_with("redis+unix://") || s.starts_with("unix://") {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be a redis:// URL (TLS is not supported)".to_owned())
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&DatabaseUrl(self.0.clone()), f)
    }
}

/// Why a limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// `--redis-url` is not a usable Redis URL (the URL is not repeated: it
    /// may hold a password).
    #[error("--redis-url is not a usable Redis URL ({0})")]
    RedisUrl(String),
}

/// One call to charge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call<'a> {
    /// What the call costs on every meter; `None`: each limit's own `cost`
    /// and 1 credit. `Some(0)` spends nothing and passes any meter not over
    /// its limit.
    pub cost: Option<u64>,
    /// The caller's idempotency key: a repeat of an admitted call within
    /// `--idempotency-ttl` is not charged again.
    pub idempotency_key: Option<&'a str>,
    /// Wall-clock time of the call, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// Whether a call was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within every limit: the call was charged.
    Admitted,
    /// Over a rate limit (or refused because Redis could not answer, in
    /// `closed` mode).
    RateLimited,
    /// Not enough credits left.
    UsageExceeded,
}

/// A meter of a key's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The rate limit at this index of `policy.rate_limits.as_slice()`.
    RateLimit(usize),
    /// The key's credits.
    Credits,
}

/// One meter's state after a call: what the `RateLimit` headers and the
/// ValidateKey response report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The meter.
    pub which: Which,
    /// Units per window (credits: the allowance of the current period).
    pub limit: u64,
    /// Units left after this call: exact with one replica, an estimate with
    /// Redis (the shared count at this replica's last lease, plus its
    /// unspent lease); 0 when refused.
    pub remaining: u64,
    /// Until the window ends (credits: until the next refill; zero when
    /// they are never refilled).
    pub reset: Duration,
    /// How long to wait before trying again: zero when admitted; `reset`
    /// when refused (zero for credits never refilled: waiting won't help);
    /// 1 s when Redis could not answer.
    pub retry_after: Duration,
}

/// The outcome of [`Limiter::charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Admitted or which refusal.
    pub decision: Decision,
    /// Admitted: the meter with the least remaining after the call; refused:
    /// the meter that refused it. `None` for a policy without meters.
    pub state: Option<LimitState>,
}

impl Charge {
    /// Whether the call was admitted.
    pub fn admitted(&self) -> bool {
        self.decision == Decision::Admitted
    }

    fn refused(decision: Decision, which: Which, limit: u64, reset: Duration) -> Self {
        Self {
            decision,
            state: Some(LimitState {
                which,
                limit,
                remaining: 0,
                reset,
                retry_after: reset,
            }),
        }
    }
}

/// The limiter's counters, for metrics: plain atomics, read with the
/// getters.
#[derive(Debug, Default)]
pub struct LimiterStats {
    admitted: AtomicU64,
    rate_limited: AtomicU64,
    usage_exceeded: AtomicU64,
    unavailable: AtomicU64,
    fallback: AtomicU64,
    redis_errors: AtomicU64,
    lease_fetches: AtomicU64,
    idempotent_repeats: AtomicU64,
    evicted_keys: AtomicU64,
}

impl LimiterStats {
    /// Calls admitted.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Calls refused as RATE_LIMITED (those refused because Redis could not
    /// answer included).
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Calls refused as USAGE_EXCEEDED.
    pub fn usage_exceeded(&self) -> u64 {
        self.usage_exceeded.load(Ordering::Relaxed)
    }

    /// Calls refused because Redis could not answer (`closed` mode).
    pub fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::Relaxed)
    }

    /// Meters counted by this replica's share because Redis could not
    /// answer (`local` mode).
    pub fn fallback(&self) -> u64 {
        self.fallback.load(Ordering::Relaxed)
    }

    /// Redis commands that failed or timed out.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }

    /// Leases asked of Redis.
    pub fn lease_fetches(&self) -> u64 {
        self.lease_fetches.load(Ordering::Relaxed)
    }

    /// Repeats answered from an idempotency key, not charged.
    pub fn idempotent_repeats(&self) -> u64 {
        self.idempotent_repeats.load(Ordering::Relaxed)
    }

    /// Key states dropped (idle, or to stay within the key cap).
    pub fn evicted_keys(&self) -> u64 {
        self.evicted_keys.load(Ordering::Relaxed)
    }
}

/// Spends not yet handed to the store: `(key, setting, period) → credits`.
type PendingSpends = HashMap<(KeyId, i64, i64), u64, RandomState>;

/// The counting engine: built once, shared by every enforcement point
/// (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LimiterSettings,
    meters: Meters,
    /// Spends of states no longer in the map, of ended periods, and batches
    /// put back: added to the next `take_spends`.
    spends: Mutex<PendingSpends>,
    idempotency: LocalIdempotency,
    shared: Option<Shared>,
    stats: LimiterStats,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.inner.settings)
            .field("shared", &self.inner.shared)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

/// Where a meter's units were taken from, for a refund.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The slot's own count (one replica, or this replica's share).
    Count,
    /// The slot's lease.
    Lease,
}

/// Units a meter took for a call.
#[derive(Debug, Clone, Copy)]
struct Taken {
    tag: u64,
    cost: u64,
    from: Source,
    state: LimitState,
}

/// One meter's verdict.
enum Step {
    Taken(Taken),
    Refused(Charge),
    /// Its lease cannot cover the call and Redis must be asked.
    Blocked,
}

/// A meter of a key's state.
#[derive(Debug, Clone, Copy)]
enum Meter {
    Limit(usize),
    Credits,
}

/// One pass over a key's meters.
enum Attempt {
    Done(Charge),
    /// Nothing was spent; this meter's lease must be fetched first.
    Blocked(Meter),
}

impl Limiter {
    /// A limiter counting in memory only (one replica, or several with
    /// `--per-replica-limits`); `settings.redis_url` is not used (see
    /// [`Limiter::connect`]).
    pub fn new(settings: LimiterSettings) -> Self {
        Self::build(settings, None, MAX_TRACKED_KEYS)
    }

    fn build(settings: LimiterSettings, shared: Option<Shared>, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                idempotency: LocalIdempotency::new(idempotency::MAX_ENTRIES),
                meters: Meters::new(max_keys),
                spends: Mutex::default(),
                shared,
                stats: LimiterStats::default(),
                settings,
            }),
        }
    }

    /// A limiter sharing counts through `settings.redis_url` (in memory
    /// without one). Redis being unreachable does not stop it: it answers
    /// per `--redis-failure-mode` until Redis does. Fails only on a URL it
    /// cannot use. Must be called within a Tokio runtime (it starts the
    /// heartbeat task).
    pub async fn connect(settings: LimiterSettings) -> Result<Self, LimiterError> {
        Self::connect_with(settings, MAX_TRACKED_KEYS).await
    }

    async fn connect_with(
        settings: LimiterSettings,
        max_keys: usize,
    ) -> Result<Self, LimiterError> {
        let Some(url) = &settings.redis_url else {
            return Ok(Self::build(settings, None, max_keys));
        };
        let shared = Shared::new(url, &settings.redis_key_prefix, settings.redis_timeout)?;
        let limiter = Self::build(settings, Some(shared), max_keys);
        let shared = limiter.shared().expect("built with redis");
        if !shared.heartbeat(&limiter.inner.stats).await {
            tracing::warn!(
                mode = ?limiter.inner.settings.redis_failure_mode,
                "redis is unreachable at start: metered keys follow --redis-failure-mode until it answers"
            );
        }
        tokio::spawn(heartbeat(Arc::downgrade(&limiter.inner)));
        Ok(limiter)
    }

    fn shared(&self) -> Option<&Shared> {
        self.inner.shared.as_ref()
    }

    /// Whether counts are shared through Redis.
    pub fn uses_redis(&self) -> bool {
        self.inner.shared.is_some()
    }

    /// Whether Redis answered its last command (false without Redis).
    pub fn redis_available(&self) -> bool {
        self.shared().is_some_and(Shared::is_up)
    }

    /// Live replicas as last counted through Redis (1 without Redis).
    pub fn replicas(&self) -> u64 {
        self.shared().map_or(1, Shared::replicas)
    }

    /// The number of keys whose counts are in memory.
    pub fn tracked_keys(&self) -> usize {
        self.inner.meters.len()
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> &LimiterStats {
        &self.inner.stats
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &LimiterSettings {
        &self.inner.settings
    }

    /// Charges one call of a valid key whose policy is metered, `policy`
    /// being the key's. No allocation and no await on the warm path: when
    /// the key's state exists and its counts (or leases) cover the call, it
    /// is a map lookup under a shard's read lock and one compare-and-swap
    /// per meter.
    pub async fn charge(&self, key: &ApiKey, policy: &Policy, call: Call<'_>) -> Charge {
        match call.idempotency_key {
            Some(idempotency_key) => {
                Box::pin(self.charge_idempotent(key, policy, call, idempotency_key)).await
            }
            None => self.charge_once(key, policy, call).await,
        }
    }

    async fn charge_once(&self, key: &ApiKey, policy: &Policy, call: Call<'_>) -> Charge {
        let meters = &self.inner.meters;
        meters.tick(call.now_ms);
        let fast = meters.with(&key.id, policy, |state| {
            state.touch(call.now_ms);
            self.attempt(state, policy, call, false)
        });
        match fast {
            Some(Attempt::Done(charge)) => self.count(charge),
            _ => Box::pin(self.charge_waiting(key, policy, call)).await,
        }
    }

    /// The slow path: builds the key's state if needed and waits for leases,
    /// `--redis-timeout` in all, after which meters still without a lease
    /// are treated as if Redis were down.
    async fn charge_waiting(&self, key: &ApiKey, policy: &Policy, call: Call<'_>) -> Charge {
        let deadline = Instant::now() + self.inner.settings.redis_timeout;
        let mut unavailable = false;
        loop {
            // Bounded even if other callers keep spending each lease first.
            unavailable |= Instant::now() >= deadline;
            let state = self.state_for(key, policy, call.now_ms);
            match self.attempt(&state, policy, call, unavailable) {
                Attempt::Done(charge) => return self.count(charge),
                Attempt::Blocked(meter) => {
                    if !self
                        .await_lease(&state, meter, policy, call, deadline)
                        .await
                    {
                        unavailable = true;
                    }
                }
            }
        }
    }

    /// The key's state, built on its first call.
    fn state_for(&self, key: &ApiKey, policy: &Policy, now_ms: u64) -> Arc<KeyState> {
        if let Some(state) = self.inner.meters.with(&key.id, policy, Arc::clone) {
            state.touch(now_ms);
            return state;
        }
        let credits_start = policy.credits.as_ref().map(|credits| {
            let period = credits.period_at(at(now_ms));
            let spent = key.credits_spent;
            let recorded = if spent.set_at == credits.set_at && spent.period == period {
                spent.used
            } else {
                0
            };
            let unwritten = lock(&self.inner.spends)
                .get(&(key.id.clone(), credits.set_at, period))
                .copied()
                .unwrap_or(0);
            (period, recorded.saturating_add(unwritten))
        });
        let build = Build {
            policy,
            now_ms,
            credits_start,
            redis_prefix: self.shared().map(|shared| shared.prefix.as_str()),
        };
        let (state, dropped) = self.inner.meters.get_or_build(&key.id, build);
        self.retire(dropped);
        state
    }

    /// One pass over the key's meters, in order, without waiting: the
    /// charge, or the meter whose lease must be fetched first (having
    /// refunded what earlier meters took). `unavailable`: Redis is treated
    /// as down for meters whose leases cannot cover the call.
    fn attempt(
        &self,
        state: &Arc<KeyState>,
        policy: &Policy,
        call: Call<'_>,
        unavailable: bool,
    ) -> Attempt {
        let limits = policy.rate_limits.as_slice();
        let mut taken: [Option<Taken>; MAX_RATE_LIMITS] = [None; MAX_RATE_LIMITS];
        let mut least: Option<LimitState> = None;
        for (i, (limit, slot)) in limits.iter().zip(&*state.limits).enumerate() {
            let cost = call.cost.unwrap_or(limit.cost);
            match self.step_limit(slot, i, limit, cost, call.now_ms, unavailable) {
                Step::Taken(t) => {
                    least = Some(lesser(least, t.state));
                    taken[i] = Some(t);
                }
                Step::Refused(charge) => {
                    refund(state, &taken);
                    return Attempt::Done(charge);
                }
                Step::Blocked => {
                    refund(state, &taken);
                    return Attempt::Blocked(Meter::Limit(i));
                }
            }
        }
        if let (Some(credits), Some(slot)) = (&policy.credits, &state.credits) {
            let cost = call.cost.unwrap_or(1);
            match self.step_credits(state, slot, credits, cost, call.now_ms, unavailable) {
                Step::Taken(t) => least = Some(lesser(least, t.state)),
                Step::Refused(charge) => {
                    refund(state, &taken);
                    return Attempt::Done(charge);
                }
                Step::Blocked => {
                    refund(state, &taken);
                    return Attempt::Blocked(Meter::Credits);
                }
            }
        }
        Attempt::Done(Charge {
            decision: Decision::Admitted,
            state: least,
        })
    }

    fn step_limit(
        &self,
        slot: &Arc<LimitSlot>,
        i: usize,
        limit: &RateLimit,
        cost: u64,
        now_ms: u64,
        unavailable: bool,
    ) -> Step {
        let window = limit.window_at(now_ms);
        let tag = slot.tag(window);
        let reset = limit.until_reset(now_ms);
        let which = Which::RateLimit(i);
        let taken = |tag, from, remaining| {
            Step::Taken(Taken {
                tag,
                cost,
                from,
                state: LimitState {
                    which,
                    limit: limit.limit,
                    remaining,
                    reset,
                    retry_after: Duration::ZERO,
                },
            })
        };
        let refused = || {
            Step::Refused(Charge::refused(
                Decision::RateLimited,
                which,
                limit.limit,
                reset,
            ))
        };
        let (Some(shared), Some(lease)) = (self.shared(), &slot.lease) else {
            return match slot.used.charge(tag, cost, limit.limit) {
                Ok((tag, used)) => taken(tag, Source::Count, limit.limit - used),
                Err(_) => refused(),
            };
        };
        if let Some((tag, left)) = lease.left.spend(tag, cost) {
            let seen = lease.seen_used.get(tag);
            let remaining = limit
                .limit
                .saturating_sub(seen)
                .saturating_add(left)
                .min(limit.limit);
            if left.saturating_mul(2) < lease.size.load(Ordering::Relaxed)
                && !lease.is_exhausted(tag)
                && shared.is_up()
                && lease.claim_fetch()
            {
                tokio::spawn(fetch_limit(
                    Arc::clone(&self.inner),
                    Arc::clone(slot),
                    limit.limit,
                    slot.window(tag),
                    now_ms,
                ));
            }
            return taken(tag, Source::Lease, remaining);
        }
        if lease.is_exhausted(tag) {
            return refused();
        }
        if shared.is_up() && !unavailable {
            return Step::Blocked;
        }
        match self.inner.settings.redis_failure_mode {
            RedisFailureMode::Closed => Step::Refused(self.unavailable(which, limit.limit)),
            RedisFailureMode::Local => {
                self.inner.stats.fallback.fetch_add(1, Ordering::Relaxed);
                let share = (limit.limit / shared.replicas()).max(1);
                match slot.used.charge(tag, cost, share) {
                    Ok((tag, used)) => taken(tag, Source::Count, share - used),
                    Err(_) => refused(),
                }
            }
        }
    }

    fn step_credits(
        &self,
        state: &KeyState,
        slot: &Arc<CreditSlot>,
        credits: &Credits,
        cost: u64,
        now_ms: u64,
        unavailable: bool,
    ) -> Step {
        let now = at(now_ms);
        let period = credits.period_at(now);
        let allowance = credits.allowance(period);
        let tag = slot.tag(period);
        let reset = credits
            .refilled_after(period)
            .and_then(|end| (end - now).to_std().ok())
            .unwrap_or(Duration::ZERO);
        let taken = |tag, remaining| {
            self.record_spend(state, slot, tag, cost);
            Step::Taken(Taken {
                tag,
                cost,
                from: Source::Count,
                state: LimitState {
                    which: Which::Credits,
                    limit: allowance,
                    remaining,
                    reset,
                    retry_after: Duration::ZERO,
                },
            })
        };
        let refused = || {
            Step::Refused(Charge::refused(
                Decision::UsageExceeded,
                Which::Credits,
                allowance,
                reset,
            ))
        };
        let (Some(shared), Some(lease)) = (self.shared(), &slot.lease) else {
            return match slot.used.charge(tag, cost, allowance) {
                Ok((tag, used)) => taken(tag, allowance - used),
                Err(_) => refused(),
            };
        };
        let seen = |tag| match lease.seen_used.load() {
            (seen_tag, used) if seen_tag == tag => used,
            _ => slot.start_used(tag),
        };
        if let Some((tag, left)) = lease.left.spend(tag, cost) {
            let remaining = allowance
                .saturating_sub(seen(tag))
                .saturating_add(left)
                .min(allowance);
            if left.saturating_mul(2) < lease.size.load(Ordering::Relaxed)
                && !lease.is_exhausted(tag)
                && shared.is_up()
                && lease.claim_fetch()
            {
                tokio::spawn(fetch_credits(
                    Arc::clone(&self.inner),
                    Arc::clone(slot),
                    *credits,
                    slot.period(tag),
                    reset,
                ));
            }
            return taken(tag, remaining);
        }
        if lease.is_exhausted(tag) {
            return refused();
        }
        if shared.is_up() && !unavailable {
            return Step::Blocked;
        }
        match self.inner.settings.redis_failure_mode {
            RedisFailureMode::Closed => Step::Refused(self.unavailable(Which::Credits, allowance)),
            RedisFailureMode::Local => {
                self.inner.stats.fallback.fetch_add(1, Ordering::Relaxed);
                let share = (allowance.saturating_sub(seen(tag)) / shared.replicas()).max(1);
                match slot.unsynced.charge(tag, cost, share) {
                    Ok((tag, used)) => taken(tag, share - used),
                    Err(_) => refused(),
                }
            }
        }
    }

    /// Notes admitted credits for the database.
    fn record_spend(&self, state: &KeyState, slot: &CreditSlot, tag: u64, cost: u64) {
        if let Some((ended, spent)) = slot.unflushed.accumulate(tag, cost) {
            self.keep_spend(&state.id, slot.set_at, slot.period(ended), spent);
        }
        if slot.is_retired() {
            let (tag, spent) = slot.unflushed.take_all();
            self.keep_spend(&state.id, slot.set_at, slot.period(tag), spent);
        }
    }

    fn keep_spend(&self, id: &KeyId, set_at: i64, period: i64, spent: u64) {
        if spent > 0 {
            let mut spends = lock(&self.inner.spends);
            let total = spends.entry((id.clone(), set_at, period)).or_default();
            *total = total.saturating_add(spent);
        }
    }

    /// A refusal because Redis cannot answer (`closed` mode).
    fn unavailable(&self, which: Which, limit: u64) -> Charge {
        self.inner.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        Charge::refused(Decision::RateLimited, which, limit, UNAVAILABLE_RETRY)
    }

    fn count(&self, charge: Charge) -> Charge {
        let stats = &self.inner.stats;
        let counter = match charge.decision {
            Decision::Admitted => &stats.admitted,
            Decision::RateLimited => &stats.rate_limited,
            Decision::UsageExceeded => &stats.usage_exceeded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        charge
    }

    /// Waits until `meter`'s lease has been fetched (by this caller's fetch
    /// or one already under way). False when `deadline` passed first.
    async fn await_lease(
        &self,
        state: &Arc<KeyState>,
        meter: Meter,
        policy: &Policy,
        call: Call<'_>,
        deadline: Instant,
    ) -> bool {
        match meter {
            Meter::Limit(i) => {
                let (Some(slot), Some(limit)) =
                    (state.limits.get(i), policy.rate_limits.as_slice().get(i))
                else {
                    return true;
                };
                let Some(lease) = &slot.lease else {
                    return true;
                };
                let mut landed = pin!(lease.landed.notified());
                landed.as_mut().enable();
                let cost = call.cost.unwrap_or(limit.cost);
                let tag = slot.tag(limit.window_at(call.now_ms));
                let (stored, left) = lease.left.load();
                if (stored >= tag && left >= cost) || lease.is_exhausted(tag) {
                    return true;
                }
                lease.demand.fetch_add(cost, Ordering::AcqRel);
                if lease.claim_fetch() {
                    tokio::spawn(fetch_limit(
                        Arc::clone(&self.inner),
                        Arc::clone(slot),
                        limit.limit,
                        slot.window(tag),
                        call.now_ms,
                    ));
                }
                tokio::time::timeout_at(deadline, landed).await.is_ok()
            }
            Meter::Credits => {
                let (Some(slot), Some(credits)) = (&state.credits, &policy.credits) else {
                    return true;
                };
                let Some(lease) = &slot.lease else {
                    return true;
                };
                let mut landed = pin!(lease.landed.notified());
                landed.as_mut().enable();
                let cost = call.cost.unwrap_or(1);
                let now = at(call.now_ms);
                let period = credits.period_at(now);
                let tag = slot.tag(period);
                let (stored, left) = lease.left.load();
                if (stored >= tag && left >= cost) || lease.is_exhausted(tag) {
                    return true;
                }
                lease.demand.fetch_add(cost, Ordering::AcqRel);
                if lease.claim_fetch() {
                    let reset = credits
                        .refilled_after(period)
                        .and_then(|end| (end - now).to_std().ok())
                        .unwrap_or(Duration::ZERO);
                    tokio::spawn(fetch_credits(
                        Arc::clone(&self.inner),
                        Arc::clone(slot),
                        *credits,
                        period,
                        reset,
                    ));
                }
                tokio::time::timeout_at(deadline, landed).await.is_ok()
            }
        }
    }

    /// Credits spent since the last take, per key, setting and period, with
    /// `used` the amount to *add* to the database's record
    /// (`Store::add_credit_spends`). Also drops the states of idle keys.
    pub fn take_spends(&self) -> Vec<(KeyId, CreditsSpent)> {
        let dropped = self.inner.meters.evict_idle();
        self.retire(dropped);
        let mut spends = std::mem::take(&mut *lock(&self.inner.spends));
        self.inner.meters.for_each(|state| {
            if let Some(slot) = &state.credits {
                let (tag, spent) = slot.unflushed.take_all();
                if spent > 0 {
                    let total = spends
                        .entry((state.id.clone(), slot.set_at, slot.period(tag)))
                        .or_default();
                    *total = total.saturating_add(spent);
                }
            }
        });
        let mut out: Vec<_> = spends
            .into_iter()
            .map(|((id, set_at, period), used)| {
                (
                    id,
                    CreditsSpent {
                        set_at,
                        period,
                        used,
                    },
                )
            })
            .collect();
        // One order for every flush, so concurrent writers lock rows alike.
        out.sort_by(|a, b| (&a.0, a.1.set_at, a.1.period).cmp(&(&b.0, b.1.set_at, b.1.period)));
        out
    }

    /// Puts back a batch of [`Limiter::take_spends`] whose write failed: it
    /// is added to what accumulated meanwhile and taken again next time.
    pub fn restore_spends(&self, batch: Vec<(KeyId, CreditsSpent)>) {
        let mut spends = lock(&self.inner.spends);
        for (id, spent) in batch {
            let total = spends.entry((id, spent.set_at, spent.period)).or_default();
            *total = total.saturating_add(spent.used);
        }
    }

    /// Says the key's policy may have changed: its next call compares its
    /// meters in full (names included) and rebuilds its state if they
    /// differ. Nothing is reset: limits of the same name and window keep
    /// their counts, and credits keep theirs unless their setting
    /// (`set_at`) changed, which starts from zero by itself.
    pub fn forget(&self, id: &KeyId) {
        self.inner.meters.mark_stale(id);
    }

    /// States no longer in the map: their unwritten spends are kept for the
    /// database and, with Redis, their unspent credit leases given back.
    fn retire(&self, dropped: Dropped) {
        self.inner
            .stats
            .evicted_keys
            .fetch_add(dropped.evicted, Ordering::Relaxed);
        let mut give_back = Vec::new();
        for (id, slot) in dropped.retired {
            slot.retire();
            let (tag, spent) = slot.unflushed.take_all();
            self.keep_spend(&id, slot.set_at, slot.period(tag), spent);
            if let Some(lease) = &slot.lease {
                let (tag, left) = lease.left.take_all();
                if left > 0 {
                    give_back.push((format!("{}{}", lease.redis_key, slot.period(tag)), left));
                }
            }
        }
        if give_back.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&self.inner);
            runtime.spawn(async move {
                if let Some(shared) = &inner.shared {
                    shared.give_back(&inner.stats, &give_back).await;
                }
            });
        }
    }

    /// Graceful shutdown: stops the heartbeat, gives unspent credit leases
    /// back to Redis and stops counting this replica. Charging still works
    /// afterwards (new leases are fetched).
    pub async fn shutdown(&self) {
        let Some(shared) = self.shared() else { return };
        shared.stopped.store(true, Ordering::Release);
        let mut give_back = Vec::new();
        self.inner.meters.for_each(|state| {
            if let Some(slot) = &state.credits
                && let Some(lease) = &slot.lease
            {
                let (tag, left) = lease.left.take_all();
                if left > 0 {
                    give_back.push((format!("{}{}", lease.redis_key, slot.period(tag)), left));
                }
            }
        });
        shared.give_back(&self.inner.stats, &give_back).await;
        shared.leave(&self.inner.stats).await;
    }

    async fn charge_idempotent(
        &self,
        key: &ApiKey,
        policy: &Policy,
        call: Call<'_>,
        idempotency_key: &str,
    ) -> Charge {
        if let Some(shared) = self.shared() {
            if shared.is_up()
                && let Some(charge) = self
                    .charge_idempotent_shared(shared, key, policy, call, idempotency_key)
                    .await
            {
                return charge;
            }
            if self.inner.settings.redis_failure_mode == RedisFailureMode::Closed {
                let (which, limit) = first_meter(policy, call.now_ms);
                return self.count(self.unavailable(which, limit));
            }
        }
        let digest = idempotency::digest(&key.id, idempotency_key);
        let deadline = Instant::now() + self.pending_wait();
        loop {
            match self.inner.idempotency.begin(
                digest,
                call.now_ms,
                self.inner.settings.idempotency_ttl,
            ) {
                Begin::Repeat(charge) => return self.repeated(charge),
                Begin::First(first) => {
                    let charge = self.charge_once(key, policy, call).await;
                    first.finish(charge);
                    return charge;
                }
                Begin::Busy if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Begin::Busy => return self.count(still_pending(policy, call.now_ms)),
            }
        }
    }

    /// Idempotency through Redis; `None` when Redis failed.
    async fn charge_idempotent_shared(
        &self,
        shared: &Shared,
        key: &ApiKey,
        policy: &Policy,
        call: Call<'_>,
        idempotency_key: &str,
    ) -> Option<Charge> {
        let stats = &self.inner.stats;
        let name = format!(
            "{}:idem:{}:{}",
            shared.prefix,
            key.id,
            blake3::hash(idempotency_key.as_bytes()).to_hex()
        );
        let pending_ttl = self.pending_wait() + Duration::from_secs(1);
        let deadline = Instant::now() + self.pending_wait();
        loop {
            if shared.claim(stats, &name, pending_ttl).await? {
                let charge = self.charge_once(key, policy, call).await;
                if charge.admitted() {
                    let stored = idempotency::encode(&charge);
                    shared
                        .put(stats, &name, &stored, self.inner.settings.idempotency_ttl)
                        .await;
                } else {
                    shared.delete(stats, &name).await;
                }
                return Some(charge);
            }
            loop {
                match shared.get(stats, &name).await? {
                    // Gone: the first call was refused (or its claim expired).
                    None => break,
                    Some(value) if value == idempotency::PENDING => {
                        if Instant::now() >= deadline {
                            return Some(self.count(still_pending(policy, call.now_ms)));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Some(value) => match idempotency::decode(&value) {
                        Some(charge) => return Some(self.repeated(charge)),
                        None => {
                            tracing::warn!(
                                "unreadable idempotency record in redis; charging the call"
                            );
                            return Some(self.charge_once(key, policy, call).await);
                        }
                    },
                }
            }
            if Instant::now() >= deadline {
                return Some(self.count(still_pending(policy, call.now_ms)));
            }
        }
    }

    /// How long a duplicate waits for the first call's charge: well past
    /// what the first call may wait on Redis (its claim, its leases, storing
    /// the result), and at least 1 s.
    fn pending_wait(&self) -> Duration {
        (self.inner.settings.redis_timeout * 4).max(Duration::from_secs(1))
    }

    fn repeated(&self, charge: Charge) -> Charge {
        self.inner
            .stats
            .idempotent_repeats
            .fetch_add(1, Ordering::Relaxed);
        charge
    }
}

/// A duplicate whose first call is still undecided: try again in a second.
fn still_pending(policy: &Policy, now_ms: u64) -> Charge {
    let (which, limit) = first_meter(policy, now_ms);
    Charge::refused(Decision::RateLimited, which, limit, UNAVAILABLE_RETRY)
}

/// The policy's first meter and its limit, for refusals not due to a meter.
fn first_meter(policy: &Policy, now_ms: u64) -> (Which, u64) {
    match (policy.rate_limits.as_slice().first(), &policy.credits) {
        (Some(limit), _) => (Which::RateLimit(0), limit.limit),
        (None, Some(credits)) => (
            Which::Credits,
            credits.allowance(credits.period_at(at(now_ms))),
        ),
        (None, None) => (Which::Credits, 0),
    }
}

/// The state with less remaining (the earlier one on a tie).
fn lesser(least: Option<LimitState>, state: LimitState) -> LimitState {
    match least {
        Some(least) if least.remaining <= state.remaining => least,
        _ => state,
    }
}

/// Gives back what the limits in `taken` took.
fn refund(state: &KeyState, taken: &[Option<Taken>]) {
    for (slot, taken) in state.limits.iter().zip(taken) {
        let Some(taken) = taken else { continue };
        match taken.from {
            Source::Count => slot.used.refund(taken.tag, taken.cost),
            Source::Lease => {
                if let Some(lease) = &slot.lease {
                    lease.left.add_if(taken.tag, taken.cost);
                }
            }
        }
    }
}

/// `now_ms` as a time.
fn at(now_ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(now_ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

/// Announces this replica every second until the limiter is dropped or shut
/// down; also what notices Redis answering again.
async fn heartbeat(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(shared::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(shared) = &inner.shared else { return };
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        shared.heartbeat(&inner.stats).await;
    }
}

/// Ends a lease fetch however its task ends (even by a panic), so waiters
/// are never stuck on a fetch that is gone.
struct EndFetch<'a, const B: u32>(&'a state::Lease<B>);

impl<const B: u32> Drop for EndFetch<'_, B> {
    fn drop(&mut self) {
        self.0.end_fetch();
    }
}

/// Fetches the next lease of a rate limit for window number `window`.
async fn fetch_limit(
    inner: Arc<Inner>,
    slot: Arc<LimitSlot>,
    limit: u64,
    window: u64,
    now_ms: u64,
) {
    let (Some(shared), Some(lease)) = (&inner.shared, &slot.lease) else {
        return;
    };
    let _end = EndFetch(lease);
    let tag = slot.tag(window);
    // Leases left unspent when a window ends stay within 5 % of N (a
    // replica holds at most 1.5 leases).
    let cap = (limit / (30 * shared.replicas())).max(1);
    let last = lease.last_fetch_ms.swap(now_ms, Ordering::AcqRel);
    let gap = now_ms.saturating_sub(last);
    let mut size = lease.size.load(Ordering::Relaxed);
    if last == 0 {
        // The first fetch: nothing to adapt to yet.
    } else if gap < slot.window_ms / 10 {
        size = size.saturating_mul(2);
    } else if gap > slot.window_ms / 2 {
        size /= 2;
    }
    let size = size.clamp(1, cap);
    lease.size.store(size, Ordering::Relaxed);
    let want = size.max(lease.demand.swap(0, Ordering::AcqRel)).min(limit);
    let key = format!("{}{window}", lease.redis_key);
    inner.stats.lease_fetches.fetch_add(1, Ordering::Relaxed);
    let ttl_ms = slot.window_ms.saturating_mul(2);
    if let Some((granted, used)) = shared
        .lease_limit(&inner.stats, &key, want, limit, ttl_ms)
        .await
    {
        lease.left.deposit(tag, granted);
        lease.seen_used.raise(tag, used);
        if used >= limit {
            lease.exhausted.fetch_max(tag + 1, Ordering::AcqRel);
        }
    }
}

/// Fetches the next lease of a key's credits for `period`; `reset` is the
/// time until the period ends (zero: never refilled).
async fn fetch_credits(
    inner: Arc<Inner>,
    slot: Arc<CreditSlot>,
    credits: Credits,
    period: i64,
    reset: Duration,
) {
    let (Some(shared), Some(lease)) = (&inner.shared, &slot.lease) else {
        return;
    };
    let _end = EndFetch(lease);
    let tag = slot.tag(period);
    let allowance = credits.allowance(period);
    let seen = match lease.seen_used.load() {
        (seen_tag, used) if seen_tag == tag => used,
        _ => slot.start_used(tag),
    };
    // What replicas hold unspent stays within 0.5 % of what is left.
    let size = (allowance.saturating_sub(seen) / (300 * shared.replicas())).max(1);
    lease.size.store(size, Ordering::Relaxed);
    let want = size
        .max(lease.demand.swap(0, Ordering::AcqRel))
        .min(allowance);
    let (unsynced_tag, unsynced) = slot.unsynced.take_all();
    let unsynced = if unsynced_tag == tag { unsynced } else { 0 };
    let key = format!("{}{period}", lease.redis_key);
    let ttl_ms = if credits.refill.is_some() {
        reset + Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(30 * 24 * 3600)
    };
    let ttl_ms = u64::try_from(ttl_ms.as_millis()).unwrap_or(u64::MAX);
    inner.stats.lease_fetches.fetch_add(1, Ordering::Relaxed);
    let leased = shared
        .lease_credits(
            &inner.stats,
            &key,
            want,
            allowance,
            slot.start_used(tag),
            ttl_ms,
            unsynced,
        )
        .await;
    match leased {
        Some((granted, used)) => {
            lease.left.deposit(tag, granted);
            lease.seen_used.raise(tag, used);
            if used >= allowance {
                lease.exhausted.fetch_max(tag + 1, Ordering::AcqRel);
            }
        }
        None => slot.unsynced.add_if(tag, unsynced),
    }
}
