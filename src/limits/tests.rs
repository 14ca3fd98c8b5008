//! The limiter's tests: counting in memory (exact under concurrency,
//! refunds, credits and their refill, idempotency, policy changes, bounds)
//! and through the machine's Redis at 127.0.0.1:6379 (three limiters as
//! three replicas; Redis down in both failure modes; recovery). Each Redis
//! test writes under its own key prefix and deletes it afterwards. Without
//! a reachable Redis those tests print `SKIPPED:` on stderr and pass, except
//! under `CI=true`, where it is a failure.
//!
//! Times are injected (`Call::now_ms`) wherever a test needs windows to
//! line up; the replica tests use the wall clock, since their leases live in
//! real Redis windows, and count per window of the times they sent.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_core::{
    ApiKey, Credits, CreditsSpent, KeyId, Metadata, Policy, RateLimit, RateLimits, Refill,
    RefillInterval, Scopes,
};

use super::*;

#[path = "../../tests/support/tcp_proxy.rs"]
#[allow(dead_code)]
mod tcp_proxy;

/// 2026-01-01T00:00:00Z: a day, a month and every window start at once.
const T0: u64 = 1_767_225_600_000;
const HOUR: u64 = 3_600_000;

fn api_key(credits_spent: CreditsSpent) -> ApiKey {
    let (_, key) = crate::cache::tests::keyed(Scopes::default(), Metadata::default());
    ApiKey {
        credits_spent,
        ..ApiKey::clone(&key)
    }
}

/// A policy of `(name, limit, window in seconds)` limits and `credits`.
fn policy(limits: &[(&str, u64, u64)], credits: Option<Credits>) -> Policy {
    let limits = limits
        .iter()
        .map(|&(name, limit, secs)| RateLimit {
            name: name.into(),
            limit,
            window: Duration::from_secs(secs),
            cost: 1,
        })
        .collect();
    Policy {
        rate_limits: RateLimits::new(limits).expect("valid limits"),
        credits,
        ..Policy::default()
    }
}

fn credits(remaining: u64, refill: Option<(u64, RefillInterval)>, set_at_ms: u64) -> Credits {
    Credits {
        remaining,
        refill: refill.map(|(amount, interval)| Refill { amount, interval }),
        set_at: i64::try_from(set_at_ms).expect("a time") * 1000,
    }
}

fn at(now_ms: u64) -> Call<'static> {
    Call {
        now_ms,
        ..Call::default()
    }
}

fn wall_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("ms fit")
}

fn local() -> Limiter {
    Limiter::new(LimiterSettings::default())
}

/// Admitted calls among `calls` calls at `now_ms`, one after the other.
async fn admitted(
    limiter: &Limiter,
    key: &ApiKey,
    policy: &Policy,
    calls: usize,
    now_ms: u64,
) -> usize {
    let mut admitted = 0;
    for _ in 0..calls {
        admitted += usize::from(limiter.charge(key, policy, at(now_ms)).await.admitted());
    }
    admitted
}

/// The credits in a batch of spends.
fn total(spends: &[(KeyId, CreditsSpent)]) -> u64 {
    spends.iter().map(|(_, spent)| spent.used).sum()
}

#[test]
fn settings_parse_from_flags_and_hide_the_redis_password() {
    use clap::{Args, FromArgMatches};
    let defaults = LimiterSettings::default();
    assert_eq!(defaults.redis_url, None);
    assert_eq!(defaults.redis_timeout, Duration::from_millis(250));
    assert_eq!(defaults.redis_failure_mode, RedisFailureMode::Closed);
    assert!(!defaults.per_replica_limits);
    assert_eq!(defaults.idempotency_ttl, Duration::from_secs(600));
    assert_eq!(defaults.redis_key_prefix, "kw");
    let command = LimiterSettings::augment_args(clap::Command::new("serve"));
    let flags = [
        "serve",
        "--redis-url=redis://keyward:hunter2@redis:6379/0",
        "--redis-timeout=100ms",
        "--redis-failure-mode=local",
        "--per-replica-limits",
        "--idempotency-ttl=2m",
    ];
    let matches = command
        .clone()
        .try_get_matches_from(flags)
        .expect("valid flags");
    let settings = LimiterSettings::from_arg_matches(&matches).expect("settings");
    assert_eq!(settings.redis_timeout, Duration::from_millis(100));
    assert_eq!(settings.redis_failure_mode, RedisFailureMode::Local);
    assert!(settings.per_replica_limits);
    assert_eq!(settings.idempotency_ttl, Duration::from_secs(120));
    let shown = format!("{settings:?}");
    assert!(
        shown.contains("redis://keyward:***@redis:6379/0") && !shown.contains("hunter2"),
        "{shown}"
    );
    for bad in [
        "--redis-url=rediss://redis",
        "--redis-timeout=0ms",
        "--redis-failure-mode=open",
    ] {
        assert!(
            command
                .clone()
                .try_get_matches_from(["serve", bad])
                .is_err(),
            "{bad}"
        );
    }
}

#[test]
fn the_limiter_and_its_charges_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let limiter = local();
    send_sync(&limiter);
    let key = api_key(CreditsSpent::default());
    let metered = policy(&[("requests", 1, 1)], None);
    send(&limiter.charge(&key, &metered, at(T0)));
    send(&limiter.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_admits_exactly_its_limit_under_concurrency() {
    let limiter = local();
    let key = Arc::new(api_key(CreditsSpent::default()));
    let policy = Arc::new(policy(&[("requests", 1000, 10)], None));
    for window_start in [T0, T0 + 10_000] {
        let now = window_start + 2_500;
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (limiter, key, policy) =
                    (limiter.clone(), Arc::clone(&key), Arc::clone(&policy));
                tokio::spawn(async move {
                    let mut charges = Vec::new();
                    for _ in 0..100 {
                        charges.push(limiter.charge(&key, &policy, at(now)).await);
                        tokio::task::yield_now().await;
                    }
                    charges
                })
            })
            .collect();
        let mut remaining = Vec::new();
        for task in tasks {
            for charge in task.await.expect("no panic") {
                let state = charge.state.expect("a metered key reports its state");
                assert_eq!(state.which, Which::RateLimit(0));
                assert_eq!(state.reset, Duration::from_millis(7_500));
                if charge.admitted() {
                    assert_eq!(state.retry_after, Duration::ZERO);
                    remaining.push(state.remaining);
                } else {
                    assert_eq!(charge.decision, Decision::RateLimited);
                    assert_eq!((state.remaining, state.retry_after), (0, state.reset));
                }
            }
        }
        remaining.sort_unstable();
        assert_eq!(
            remaining,
            (0..1000).collect::<Vec<_>>(),
            "exactly 1000 of 3200 admitted, each seeing its own remaining"
        );
    }
    assert_eq!(limiter.stats().admitted(), 2000);
    assert_eq!(limiter.stats().rate_limited(), 4400);
}

#[tokio::test]
async fn a_refusal_by_a_later_meter_refunds_the_earlier_ones() {
    let limiter = local();
    let key = api_key(CreditsSpent::default());
    // Checked in name order: "a" (10 per 10 s), then "b" (5 per second).
    let both = policy(&[("b", 5, 1), ("a", 10, 10)], None);
    let first = limiter.charge(&key, &both, at(T0)).await;
    let state = first.state.expect("a state");
    assert_eq!(
        (state.which, state.remaining),
        (Which::RateLimit(1), 4),
        "the meter with the least remaining"
    );
    assert_eq!(admitted(&limiter, &key, &both, 7, T0).await, 4);
    let refused = limiter.charge(&key, &both, at(T0 + 999)).await;
    assert_eq!(refused.decision, Decision::RateLimited);
    assert_eq!(refused.state.expect("a state").which, Which::RateLimit(1));
    // "a" counted only the 5 admitted calls, so 5 more fit in its window.
    assert_eq!(admitted(&limiter, &key, &both, 5, T0 + 1000).await, 5);
    let refused = limiter.charge(&key, &both, at(T0 + 1000)).await;
    let state = refused.state.expect("a state");
    assert_eq!((state.which, state.remaining), (Which::RateLimit(0), 0));
    assert_eq!(state.retry_after, Duration::from_secs(9));

    // Credits refusing a call refund the rate limit it passed.
    let key = api_key(CreditsSpent::default());
    let metered = policy(&[("a", 4, 10)], Some(credits(3, None, T0)));
    assert_eq!(admitted(&limiter, &key, &metered, 3, T0).await, 3);
    for _ in 0..3 {
        let charge = limiter.charge(&key, &metered, at(T0)).await;
        assert_eq!(charge.decision, Decision::UsageExceeded, "not RATE_LIMITED");
        let state = charge.state.expect("a state");
        assert_eq!(state.which, Which::Credits);
        assert_eq!(
            (state.limit, state.remaining, state.reset, state.retry_after),
            (3, 0, Duration::ZERO, Duration::ZERO),
            "credits never refilled: no reset"
        );
    }
}

#[tokio::test]
async fn credits_run_out_and_refill_at_the_period_boundary() {
    let limiter = local();
    let set_at = T0 + 12 * HOUR;
    let daily = credits(5, Some((100, RefillInterval::Daily)), set_at);
    let today = daily.period_at(super::at(set_at));
    // The database recorded 2 spent today: 3 are left.
    let key = api_key(CreditsSpent {
        set_at: daily.set_at,
        period: today,
        used: 2,
    });
    let metered = policy(&[], Some(daily));
    let charge = limiter.charge(&key, &metered, at(T0 + 13 * HOUR)).await;
    let state = charge.state.expect("a state");
    assert!(charge.admitted());
    assert_eq!(
        (state.which, state.limit, state.remaining),
        (Which::Credits, 5, 2)
    );
    assert_eq!(
        admitted(&limiter, &key, &metered, 5, T0 + 13 * HOUR).await,
        2
    );
    let refused = limiter.charge(&key, &metered, at(T0 + 13 * HOUR)).await;
    assert_eq!(refused.decision, Decision::UsageExceeded);
    let state = refused.state.expect("a state");
    assert_eq!(
        state.reset,
        Duration::from_millis(11 * HOUR),
        "until midnight UTC"
    );
    assert_eq!(state.retry_after, state.reset);
    let last_ms = limiter.charge(&key, &metered, at(T0 + 24 * HOUR - 1)).await;
    assert_eq!(last_ms.decision, Decision::UsageExceeded);
    assert_eq!(
        last_ms.state.expect("a state").reset,
        Duration::from_millis(1)
    );

    // Midnight: the refill amount, 100.
    let refilled = limiter.charge(&key, &metered, at(T0 + 24 * HOUR)).await;
    let state = refilled.state.expect("a state");
    assert!(refilled.admitted());
    assert_eq!((state.limit, state.remaining), (100, 99));
    assert_eq!(state.reset, Duration::from_millis(24 * HOUR));
    let big = Call {
        cost: Some(99),
        ..at(T0 + 25 * HOUR)
    };
    assert_eq!(
        limiter
            .charge(&key, &metered, big)
            .await
            .state
            .expect("a state")
            .remaining,
        0
    );
    assert!(
        !limiter
            .charge(&key, &metered, at(T0 + 25 * HOUR))
            .await
            .admitted()
    );

    // What the database is told: 3 more spent today, 100 tomorrow.
    let spends = limiter.take_spends();
    let expected = vec![
        (
            key.id.clone(),
            CreditsSpent {
                set_at: daily.set_at,
                period: today,
                used: 3,
            },
        ),
        (
            key.id.clone(),
            CreditsSpent {
                set_at: daily.set_at,
                period: today + 1,
                used: 100,
            },
        ),
    ];
    assert_eq!(spends, expected);
    assert!(limiter.take_spends().is_empty(), "taken once");
    // A failed write puts them back, added to what came meanwhile.
    limiter.restore_spends(spends);
    let mut dayafter = at(T0 + 48 * HOUR);
    dayafter.cost = Some(10);
    assert!(limiter.charge(&key, &metered, dayafter).await.admitted());
    let again = limiter.take_spends();
    assert_eq!(again.len(), 3);
    assert_eq!(again[..2], expected[..]);
    assert_eq!(again[2].1.used, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_repeats_are_charged_once() {
    let limiter = local();
    let key = Arc::new(api_key(CreditsSpent::default()));
    let daily = credits(10, Some((10, RefillInterval::Daily)), T0);
    let metered = Arc::new(policy(&[("requests", 100, 1)], Some(daily)));
    let with = |id: &'static str, now_ms| Call {
        idempotency_key: Some(id),
        ..at(now_ms)
    };
    let first = limiter.charge(&key, &metered, with("order-1", T0)).await;
    assert!(first.admitted());
    for _ in 0..4 {
        assert_eq!(
            limiter
                .charge(&key, &metered, with("order-1", T0 + 500))
                .await,
            first
        );
    }
    assert_eq!(limiter.stats().idempotent_repeats(), 4);
    assert_eq!(total(&limiter.take_spends()), 1, "charged once");

    // Concurrent duplicates: one charge.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (limiter, key, metered) = (limiter.clone(), Arc::clone(&key), Arc::clone(&metered));
            tokio::spawn(async move {
                limiter
                    .charge(&key, &metered, with("order-2", T0 + 600))
                    .await
            })
        })
        .collect();
    let mut charges = Vec::new();
    for task in tasks {
        charges.push(task.await.expect("no panic"));
    }
    assert!(
        charges.iter().all(|c| *c == charges[0] && c.admitted()),
        "{charges:?}"
    );
    assert_eq!(total(&limiter.take_spends()), 1);

    // A refused first call is not remembered: its retry is charged.
    let rest = Call {
        cost: Some(8),
        ..at(T0 + 700)
    };
    assert!(limiter.charge(&key, &metered, rest).await.admitted());
    let refused = limiter
        .charge(&key, &metered, with("order-3", T0 + 800))
        .await;
    assert_eq!(refused.decision, Decision::UsageExceeded);
    let tomorrow = T0 + 24 * HOUR;
    let retried = limiter
        .charge(&key, &metered, with("order-3", tomorrow))
        .await;
    assert!(retried.admitted());
    assert_eq!(
        limiter
            .charge(&key, &metered, with("order-3", tomorrow + 1))
            .await,
        retried
    );
    // Past the TTL it is a new call.
    let later = tomorrow + 10 * 60 * 1000;
    let charged = limiter.charge(&key, &metered, with("order-3", later)).await;
    assert_eq!(charged.state.expect("a state").remaining, 8);
    assert_eq!(total(&limiter.take_spends()), 8 + 2);
}

#[tokio::test]
async fn policy_changes_keep_counts() {
    let limiter = local();
    let key = api_key(CreditsSpent::default());
    let before = policy(&[("requests", 5, 10)], Some(credits(10, None, T0)));
    assert_eq!(admitted(&limiter, &key, &before, 3, T0).await, 3);
    // A higher limit of the same name and window keeps the count.
    let raised = policy(&[("requests", 6, 10)], Some(credits(10, None, T0)));
    limiter.forget(&key.id);
    assert_eq!(admitted(&limiter, &key, &raised, 5, T0 + 1).await, 3);
    // A new limit beside it starts from zero; credits of the same setting
    // continue (6 spent); a renamed limit is a new limit.
    let added = policy(
        &[("requests", 6, 10), ("burst", 2, 1)],
        Some(credits(10, None, T0)),
    );
    assert_eq!(
        admitted(&limiter, &key, &added, 3, T0 + 2).await,
        0,
        "requests is full"
    );
    let renamed = policy(&[("calls", 6, 10)], Some(credits(10, None, T0)));
    assert_eq!(
        admitted(&limiter, &key, &renamed, 5, T0 + 3).await,
        4,
        "credits: 10 - 6"
    );
    // New credits (a new set_at) start from zero.
    let reset = policy(&[("calls", 100, 10)], Some(credits(3, None, T0 + 5)));
    assert_eq!(admitted(&limiter, &key, &reset, 5, T0 + 4).await, 3);
    let spends = limiter.take_spends();
    assert_eq!(total(&spends), 13);
    assert_eq!(spends.len(), 2, "one entry per setting: {spends:?}");
}

#[tokio::test]
async fn key_states_are_bounded_and_idle_ones_dropped() {
    let limiter = Limiter::build(LimiterSettings::default(), None, 640);
    let limited = policy(&[("requests", 10, 1)], None);
    for _ in 0..2000 {
        let key = api_key(CreditsSpent::default());
        assert!(limiter.charge(&key, &limited, at(T0)).await.admitted());
    }
    assert!(limiter.tracked_keys() <= 640, "{}", limiter.tracked_keys());
    assert!(limiter.stats().evicted_keys() >= 2000 - 640);
    // One call two seconds later: every other key's 1 s windows are over.
    let late = api_key(CreditsSpent::default());
    let with_credits = policy(&[("requests", 10, 1)], Some(credits(5, None, T0)));
    assert!(
        limiter
            .charge(&late, &with_credits, at(T0 + 2_000))
            .await
            .admitted()
    );
    assert_eq!(total(&limiter.take_spends()), 1);
    assert_eq!(
        limiter.tracked_keys(),
        1,
        "idle keys dropped, the key with credits kept"
    );

    // A state dropped while its spends are unwritten (their write failed)
    // restarts after them: the database's record plus what was kept.
    assert!(
        limiter
            .charge(&late, &with_credits, at(T0 + 3_000))
            .await
            .admitted()
    );
    let much_later = T0 + 3_000 + state::CREDITS_IDLE_MS + 2_000;
    let other = api_key(CreditsSpent::default());
    assert!(
        limiter
            .charge(&other, &limited, at(much_later))
            .await
            .admitted()
    );
    let failed = limiter.take_spends();
    assert_eq!(total(&failed), 1);
    assert_eq!(
        limiter.tracked_keys(),
        1,
        "the idle key with credits dropped too"
    );
    limiter.restore_spends(failed);
    let mut reread = late.clone();
    reread.credits_spent = CreditsSpent {
        set_at: T0 as i64 * 1000,
        period: 0,
        used: 1,
    };
    let rebuilt = limiter
        .charge(&reread, &with_credits, at(much_later + 1))
        .await;
    assert_eq!(
        rebuilt.state.expect("a state").remaining,
        2,
        "5 credits: 1 written, 1 unwritten, this call"
    );
    assert_eq!(total(&limiter.take_spends()), 2);
    assert!(limiter.stats().evicted_keys() >= 2000 - 640 + 2);
}

// ---- Redis ----

const REDIS: &str = "redis://127.0.0.1:6379";

/// Settings for a test against the machine's Redis under a key prefix of
/// its own, and the guard that deletes that prefix's keys; `None` (after a
/// loud skip) when Redis is unreachable outside CI.
async fn redis_settings(test: &str, mode: RedisFailureMode) -> Option<(LimiterSettings, Prefix)> {
    if let Err(e) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
        let message = format!("redis unavailable at 127.0.0.1:6379 ({e}): {test} not run");
        assert!(
            !keyward_store::testing::in_ci(),
            "{message} (CI=true: a missing Redis is a failure)"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED: {message}");
        return None;
    }
    let prefix = format!("kwtest:{test}:{}", keyward_core::new_ulid());
    let settings = LimiterSettings {
        redis_url: Some(RedisUrl(REDIS.into())),
        redis_failure_mode: mode,
        redis_key_prefix: prefix.clone(),
        ..LimiterSettings::default()
    };
    Some((settings, Prefix(prefix)))
}

/// A test's key prefix: dropping it (when the test ends, failed or not)
/// deletes every key under it.
struct Prefix(String);

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(REDIS).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

async fn redis_count(key: &str) -> u64 {
    let client = redis::Client::open(REDIS).expect("a redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers");
    let value: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    value.unwrap_or(0)
}

async fn replicas(settings: &LimiterSettings) -> Vec<Limiter> {
    let mut limiters = Vec::new();
    for _ in 0..3 {
        limiters.push(
            Limiter::connect(settings.clone())
                .await
                .expect("a usable url"),
        );
    }
    for limiter in &limiters {
        assert!(limiter.uses_redis() && limiter.redis_available());
    }
    limiters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_between_95_and_100_percent_of_each_window_under_overload() {
    let Some((settings, _prefix)) = redis_settings("overload", RedisFailureMode::Closed).await
    else {
        return;
    };
    let limiters = replicas(&settings).await;
    let key = Arc::new(api_key(CreditsSpent::default()));
    let limited = Arc::new(policy(&[("requests", 100, 1)], None));
    let start = wall_ms();
    let end = (start / 1000 + 7) * 1000;
    // Two callers per replica, one call each 10 ms: 600 calls per second,
    // 6 times the limit.
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..2 {
            let (limiter, key, limited) = (limiter.clone(), Arc::clone(&key), Arc::clone(&limited));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut per_window: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
                loop {
                    tick.tick().await;
                    let now = wall_ms();
                    if now >= end {
                        return per_window;
                    }
                    let charge = limiter.charge(&key, &limited, at(now)).await;
                    let counts = per_window.entry(now / 1000).or_default();
                    if charge.admitted() {
                        counts.0 += 1;
                    } else {
                        counts.1 += 1;
                    }
                }
            }));
        }
    }
    let mut per_window: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for task in tasks {
        for (window, (admitted, refused)) in task.await.expect("no panic") {
            let counts = per_window.entry(window).or_default();
            counts.0 += admitted;
            counts.1 += refused;
        }
    }
    // Full windows only: not the one the test started in.
    let full: Vec<_> = per_window
        .iter()
        .filter(|(window, _)| **window > start / 1000 && **window < end / 1000)
        .map(|(window, counts)| (*window, *counts))
        .collect();
    assert!(full.len() >= 5, "{per_window:?}");
    for (window, (admitted, refused)) in &full {
        assert!(
            (95..=100).contains(admitted),
            "window {window}: {admitted} admitted ({refused} refused); all: {full:?}"
        );
        assert!(*refused >= 2 * 100, "overloaded: {full:?}");
    }
    let stats: Vec<_> = limiters
        .iter()
        .map(|l| (l.stats().unavailable(), l.replicas()))
        .collect();
    assert!(
        stats
            .iter()
            .all(|&(unavailable, replicas)| unavailable == 0 && replicas == 3),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_spend_exactly_the_credits_less_the_documented_slack() {
    let Some((settings, _prefix)) = redis_settings("credits", RedisFailureMode::Closed).await
    else {
        return;
    };
    let limiters = replicas(&settings).await;
    let key = Arc::new(api_key(CreditsSpent::default()));
    let quota = credits(10_000, None, T0);
    let metered = Arc::new(policy(&[], Some(quota)));
    let now = wall_ms();
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..4 {
            let (limiter, key, metered) = (limiter.clone(), Arc::clone(&key), Arc::clone(&metered));
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                // Until this replica is refused: its lease is empty and
                // Redis has nothing left.
                loop {
                    let charge = limiter.charge(&key, &metered, at(now)).await;
                    match charge.decision {
                        Decision::Admitted => admitted += 1,
                        Decision::UsageExceeded => return admitted,
                        Decision::RateLimited => panic!("redis answered: {charge:?}"),
                    }
                }
            }));
        }
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("no panic");
    }
    assert!(
        (9_950..=10_000).contains(&admitted),
        "{admitted} admitted of 10,000 credits (slack is at most 0.5 %)"
    );
    let spends: u64 = limiters.iter().map(|l| total(&l.take_spends())).sum();
    assert_eq!(
        spends, admitted,
        "every admitted credit is reported for the database"
    );
    let counter = format!(
        "{}:cr:{}:{}:0",
        settings.redis_key_prefix, key.id, quota.set_at
    );
    for limiter in &limiters {
        limiter.shutdown().await;
    }
    assert_eq!(
        redis_count(&counter).await,
        admitted,
        "unspent leases given back on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_charged_once_across_replicas() {
    let Some((settings, _prefix)) = redis_settings("idempotency", RedisFailureMode::Closed).await
    else {
        return;
    };
    let limiters = replicas(&settings).await;
    let key = Arc::new(api_key(CreditsSpent::default()));
    let metered = Arc::new(policy(
        &[("requests", 1000, 60)],
        Some(credits(100, None, T0)),
    ));
    let with = |id: &'static str| Call {
        idempotency_key: Some(id),
        ..at(wall_ms())
    };
    let first = limiters[0].charge(&key, &metered, with("retry-me")).await;
    assert!(first.admitted());
    for limiter in &limiters {
        assert_eq!(
            limiter.charge(&key, &metered, with("retry-me")).await,
            first
        );
    }
    // Concurrent duplicates on every replica: one charge.
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..4 {
            let (limiter, key, metered) = (limiter.clone(), Arc::clone(&key), Arc::clone(&metered));
            tasks.push(tokio::spawn(async move {
                limiter.charge(&key, &metered, with("at-once")).await
            }));
        }
    }
    let mut charges = Vec::new();
    for task in tasks {
        charges.push(task.await.expect("no panic"));
    }
    assert!(
        charges.iter().all(|c| *c == charges[0] && c.admitted()),
        "{charges:?}"
    );
    let spends: u64 = limiters.iter().map(|l| total(&l.take_spends())).sum();
    assert_eq!(spends, 2, "two idempotency keys, two charges");
    let repeats: u64 = limiters
        .iter()
        .map(|l| l.stats().idempotent_repeats())
        .sum();
    assert_eq!(repeats, 3 + 11);
}

#[tokio::test]
async fn credits_start_from_the_database_and_unspent_leases_go_back() {
    let Some((settings, _prefix)) = redis_settings("give-back", RedisFailureMode::Closed).await
    else {
        return;
    };
    let limiter = Limiter::connect(settings.clone())
        .await
        .expect("a usable url");
    let quota = credits(1_000_000, None, T0);
    // The database recorded 400,000 spent.
    let key = api_key(CreditsSpent {
        set_at: quota.set_at,
        period: 0,
        used: 400_000,
    });
    let metered = policy(&[], Some(quota));
    let charge = limiter.charge(&key, &metered, at(wall_ms())).await;
    // One lease of 600,000 / 300 = 2,000 credits, one of them spent.
    assert_eq!(charge.state.expect("a state").remaining, 599_999);
    let counter = format!(
        "{}:cr:{}:{}:0",
        settings.redis_key_prefix, key.id, quota.set_at
    );
    assert_eq!(redis_count(&counter).await, 402_000);
    limiter.shutdown().await;
    assert_eq!(redis_count(&counter).await, 400_001, "1,999 given back");
    // A restarted replica continues from Redis, not from the older record.
    let restarted = Limiter::connect(settings.clone())
        .await
        .expect("a usable url");
    let charge = restarted.charge(&key, &metered, at(wall_ms())).await;
    assert_eq!(charge.state.expect("a state").remaining, 599_998);
    assert_eq!(
        total(&limiter.take_spends()) + total(&restarted.take_spends()),
        2
    );
}

/// Settings pointing at a port where nothing listens.
fn unreachable(mode: RedisFailureMode) -> LimiterSettings {
    LimiterSettings {
        redis_url: Some(RedisUrl("redis://127.0.0.1:1".into())),
        redis_failure_mode: mode,
        ..LimiterSettings::default()
    }
}

#[tokio::test]
async fn redis_down_fails_closed_by_default() {
    let limiter = Limiter::connect(unreachable(RedisFailureMode::Closed))
        .await
        .expect("starts without redis");
    assert!(limiter.uses_redis() && !limiter.redis_available());
    let key = api_key(CreditsSpent::default());
    for metered in [
        policy(&[("requests", 10, 60)], None),
        policy(&[], Some(credits(10, None, T0))),
    ] {
        for call in [
            at(T0),
            Call {
                idempotency_key: Some("x"),
                ..at(T0)
            },
        ] {
            let charge = limiter.charge(&key, &metered, call).await;
            assert_eq!(charge.decision, Decision::RateLimited);
            let state = charge.state.expect("a state");
            assert_eq!(
                (state.remaining, state.reset, state.retry_after),
                (0, Duration::from_secs(1), Duration::from_secs(1))
            );
        }
    }
    assert_eq!(limiter.stats().unavailable(), 4);
    assert!(limiter.stats().redis_errors() >= 1);
    assert_eq!(limiter.stats().admitted(), 0);
}

#[tokio::test]
async fn redis_down_in_local_mode_counts_this_replicas_share() {
    let limiter = Limiter::connect(unreachable(RedisFailureMode::Local))
        .await
        .expect("starts without redis");
    assert!(!limiter.redis_available());
    assert_eq!(limiter.replicas(), 1, "never counted: 1");
    let key = api_key(CreditsSpent::default());
    let limited = policy(&[("requests", 10, 1)], None);
    assert_eq!(admitted(&limiter, &key, &limited, 15, T0).await, 10);
    assert_eq!(admitted(&limiter, &key, &limited, 15, T0 + 1000).await, 10);
    let metered = policy(&[], Some(credits(6, None, T0)));
    let key = api_key(CreditsSpent::default());
    assert_eq!(admitted(&limiter, &key, &metered, 10, T0).await, 6);
    let refused = limiter.charge(&key, &metered, at(T0)).await;
    assert_eq!(refused.decision, Decision::UsageExceeded);
    assert_eq!(total(&limiter.take_spends()), 6);
    // Idempotency from memory.
    let key = api_key(CreditsSpent::default());
    let once = Call {
        idempotency_key: Some("once"),
        ..at(T0)
    };
    let first = limiter.charge(&key, &limited, once).await;
    assert!(first.admitted());
    assert_eq!(limiter.charge(&key, &limited, once).await, first);
    assert_eq!(limiter.stats().idempotent_repeats(), 1);
    assert!(limiter.stats().fallback() > 0);
    assert_eq!(limiter.stats().unavailable(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_through_redis_resumes_when_it_returns() {
    let Some((mut settings, _prefix)) = redis_settings("recovery", RedisFailureMode::Closed).await
    else {
        return;
    };
    let proxy = tcp_proxy::TcpProxy::start("127.0.0.1:6379").await;
    settings.redis_url = Some(RedisUrl(format!("redis://{}", proxy.addr())));
    let limiter = Limiter::connect(settings.clone())
        .await
        .expect("a usable url");
    let key = api_key(CreditsSpent::default());
    let limited = policy(&[("requests", 100, 1)], None);
    assert!(
        limiter
            .charge(&key, &limited, at(wall_ms()))
            .await
            .admitted()
    );

    proxy.cut();
    let refused = poll(|| async {
        let charge = limiter.charge(&key, &limited, at(wall_ms())).await;
        (!charge.admitted()).then_some(charge)
    })
    .await;
    assert_eq!(
        refused.state.expect("a state").retry_after,
        Duration::from_secs(1)
    );
    assert!(!limiter.redis_available());
    assert!(limiter.stats().unavailable() >= 1);

    proxy.restore();
    poll(|| async {
        limiter
            .charge(&key, &limited, at(wall_ms()))
            .await
            .admitted()
            .then_some(())
    })
    .await;
    assert!(limiter.redis_available());
}

/// Polls `f` every 20 ms until it returns something (at most 10 s).
async fn poll<T, F: Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up polling");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
