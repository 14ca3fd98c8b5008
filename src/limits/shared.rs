//! [`Shared`]: the counts replicas share through Redis. Every command is one
//! Lua script or one plain command, bounded by `--redis-timeout`; a failure
//! or timeout marks Redis unavailable until a later command (at the latest
//! the next heartbeat, every second) succeeds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::{LimiterError, LimiterStats, RedisUrl};

/// How often a replica announces itself.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not heard from for this long is no longer counted.
const REPLICA_TTL_MS: u64 = 5_000;
/// Warnings about an unavailable Redis are logged at most this often.
const WARN_EVERY_MS: u64 = 5_000;

/// Leases up to `ARGV[1]` units of a rate-limit window's count `KEYS[1]`
/// without passing the limit `ARGV[2]`; a new count lives `ARGV[3]` ms.
/// Returns the units granted and the count after.
const LEASE_LIMIT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
else
  grant = 0
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {grant, used}
";

/// Leases up to `ARGV[1]` credits of a period's spent count `KEYS[1]`
/// without passing the allowance `ARGV[2]`. A missing count starts at
/// `ARGV[3]` (what the database recorded); `ARGV[5]` credits spent while
/// Redis was unreachable are added first. The count lives `ARGV[4]` ms after
/// its last lease. Returns the credits granted and the count after.
const LEASE_CREDITS: &str = r"
redis.call('SET', KEYS[1], ARGV[3], 'NX')
local used = tonumber(redis.call('GET', KEYS[1]))
local spent = tonumber(ARGV[5])
if spent > 0 then
  used = redis.call('INCRBY', KEYS[1], spent)
end
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
else
  grant = 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {grant, used}
";

/// Gives `ARGV[1]` unspent units back to count `KEYS[1]`, if it still
/// exists, never below zero. Returns the units given back.
const GIVE_BACK: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '-1')
if used <= 0 then
  return 0
end
local back = math.min(used, tonumber(ARGV[1]))
redis.call('DECRBY', KEYS[1], back)
return back
";

/// Records replica `ARGV[1]` as alive now (Redis' clock, so replicas'
/// clocks need not agree) in the sorted set `KEYS[1]`, drops replicas not
/// heard from for `ARGV[2]` ms, and returns how many are left.
const HEARTBEAT_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return redis.call('ZCARD', KEYS[1])
";

/// The Redis side of a limiter.
pub(super) struct Shared {
    conn: ConnectionManager,
    /// Every key name starts with it (`kw` by default).
    pub(super) prefix: String,
    replica_id: String,
    replicas_key: String,
    timeout: Duration,
    /// Whether the last command succeeded.
    up: AtomicBool,
    /// Live replicas as last counted (1 until Redis first answers).
    replicas: AtomicU64,
    /// Milliseconds after `started` of the last warning.
    warned_ms: AtomicU64,
    started: Instant,
    /// Set by `Limiter::shutdown`: the heartbeat stops.
    pub(super) stopped: AtomicBool,
    lease_limit: Script,
    lease_credits: Script,
    give_back: Script,
    heartbeat: Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("replica_id", &self.replica_id)
            .field("up", &self.up)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A client of `url` that connects lazily and reconnects by itself; no
    /// command is sent yet.
    pub(super) fn new(
        url: &RedisUrl,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, LimiterError> {
        // The error's text may quote the URL, and with it a password.
        let client = redis::Client::open(url.0.as_str())
            .map_err(|e| LimiterError::RedisUrl(format!("{:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LimiterError::RedisUrl(format!("{:?}", e.kind())))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            replica_id: replica_id(),
            replicas_key: format!("{prefix}:replicas"),
            timeout,
            up: AtomicBool::new(false),
            replicas: AtomicU64::new(1),
            warned_ms: AtomicU64::new(0),
            started: Instant::now(),
            stopped: AtomicBool::new(false),
            lease_limit: Script::new(LEASE_LIMIT),
            lease_credits: Script::new(LEASE_CREDITS),
            give_back: Script::new(GIVE_BACK),
            heartbeat: Script::new(HEARTBEAT_SCRIPT),
        })
    }

    /// Whether Redis answered the last command.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Live replicas as last counted, at least 1.
    pub(super) fn replicas(&self) -> u64 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// Runs one command with the deadline, noting the outcome.
    async fn bounded<T>(
        &self,
        stats: &LimiterStats,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!("redis answers: rate limits and credits are counted there");
                }
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(stats, &error.to_string());
                None
            }
            Err(_) => {
                self.failed(stats, "no answer within --redis-timeout");
                None
            }
        }
    }

    fn failed(&self, stats: &LimiterStats, error: &str) {
        stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::Release);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS;
        if due
            && self
                .warned_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error,
                "redis is unavailable: metered keys follow --redis-failure-mode"
            );
        }
    }

    async fn script<T: FromRedisValue>(
        &self,
        stats: &LimiterStats,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut conn = self.conn.clone();
        self.bounded(stats, invocation.invoke_async(&mut conn))
            .await
    }

    /// Leases up to `want` units of the count `key` (limit `limit`, a new
    /// count living `ttl_ms`): the units granted and the count after.
    pub(super) async fn lease_limit(
        &self,
        stats: &LimiterStats,
        key: &str,
        want: u64,
        limit: u64,
        ttl_ms: u64,
    ) -> Option<(u64, u64)> {
        let mut invocation = self.lease_limit.key(key);
        invocation.arg(want).arg(limit).arg(ttl_ms);
        self.script(stats, &invocation).await
    }

    /// Leases up to `want` credits of the spent count `key` (see
    /// `LEASE_CREDITS`): the credits granted and the count after.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lease_credits(
        &self,
        stats: &LimiterStats,
        key: &str,
        want: u64,
        allowance: u64,
        start: u64,
        ttl_ms: u64,
        spent_meanwhile: u64,
    ) -> Option<(u64, u64)> {
        let mut invocation = self.lease_credits.key(key);
        invocation
            .arg(want)
            .arg(allowance)
            .arg(start)
            .arg(ttl_ms)
            .arg(spent_meanwhile);
        self.script(stats, &invocation).await
    }

    /// Gives unspent units back to their counts (`(key, units)`): the
    /// script loaded once, then pipelines of 1,000, each bounded by the
    /// deadline; stops at the first failure (best effort).
    pub(super) async fn give_back(&self, stats: &LimiterStats, leases: &[(String, u64)]) {
        if leases.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        if self
            .bounded(stats, self.give_back.load_async(&mut conn))
            .await
            .is_none()
        {
            return;
        }
        for chunk in leases.chunks(1_000) {
            let mut pipe = redis::pipe();
            for (key, units) in chunk {
                pipe.cmd("EVALSHA")
                    .arg(self.give_back.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(units)
                    .ignore();
            }
            if self
                .bounded(stats, pipe.query_async::<()>(&mut conn))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Announces this replica and counts the live ones.
    pub(super) async fn heartbeat(&self, stats: &LimiterStats) -> bool {
        let mut invocation = self.heartbeat.key(&self.replicas_key);
        invocation.arg(&self.replica_id).arg(REPLICA_TTL_MS);
        match self.script::<u64>(stats, &invocation).await {
            Some(count) => {
                self.replicas.store(count.max(1), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Stops counting this replica (graceful shutdown).
    pub(super) async fn leave(&self, stats: &LimiterStats) {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("ZREM");
        command.arg(&self.replicas_key).arg(&self.replica_id);
        self.bounded(stats, command.query_async::<u64>(&mut conn))
            .await;
    }

    /// Claims idempotency name `name` for a first call, for `ttl`: whether it
    /// was free.
    pub(super) async fn claim(
        &self,
        stats: &LimiterStats,
        name: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("SET");
        command
            .arg(name)
            .arg(super::idempotency::PENDING)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let set: Option<String> = self.bounded(stats, command.query_async(&mut conn)).await?;
        Some(set.is_some())
    }

    /// The value of `name`, if any.
    pub(super) async fn get(&self, stats: &LimiterStats, name: &str) -> Option<Option<String>> {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("GET");
        command.arg(name);
        self.bounded(stats, command.query_async(&mut conn)).await
    }

    /// Sets `name` to `value` for `ttl`.
    pub(super) async fn put(&self, stats: &LimiterStats, name: &str, value: &str, ttl: Duration) {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("SET");
        command.arg(name).arg(value).arg("PX").arg(millis(ttl));
        self.bounded(stats, command.query_async::<()>(&mut conn))
            .await;
    }

    /// Deletes `name`.
    pub(super) async fn delete(&self, stats: &LimiterStats, name: &str) {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("DEL");
        command.arg(name);
        self.bounded(stats, command.query_async::<u64>(&mut conn))
            .await;
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A random id for this replica's heartbeat: the process id and a random
/// 64-bit number (std's per-process random hash keys).
fn replica_id() -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    format!("{}-{random:016x}", std::process::id())
}
