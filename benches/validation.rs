//! The in-process validation path (figures and targets in BENCHMARKS.md):
//!
//!   cargo bench --bench validation                 # full run (a few minutes)
//!   cargo bench --bench validation -- --test       # each benchmark once
//!   cargo test  --bench validation                 # the same, debug build
//!
//! Benchmarks (criterion; `-- <filter>` selects, e.g. `-- warm`):
//! - `blake3/*`: a bare BLAKE3 of the raw key — the keyed lookup hash keyward
//!   uses (`LookupHasher::derived().hash`) and a plain `blake3::hash`.
//! - `components/*`: the pieces of a hit — parse (shape and checksum, no
//!   copy) and one `KeyCache::get` (with its clock read).
//! - `validate/warm_hit*`: `KeyValidator::validate` of a cached, valid key
//!   that holds the required scope (with and without client IP/user agent,
//!   which are recorded as last-used data). `warm_hit_allowlist` is the same
//!   call for a key with an IP allowlist of 8 ranges that holds the client's
//!   address: its difference from `warm_hit` is the policy check's cost
//!   (SPEC §10: ≤ 100 ns); `warm_hit_ip_not_allowed` is a client outside it.
//!   `warm_hit_policy` is a key with one rate limit (10^9 per second: never
//!   reached) and a one-range allowlist holding the client, counted in
//!   memory: its difference from `warm_hit` is issue 11's policy check (one
//!   rate limit + one CIDR check, target ≤ 100 ns).
//! - `components/allowlist_contains_64`: one address looked up in a
//!   64-range allowlist (the most a key may hold).
//! - `validate/malformed`: a key whose checksum is wrong (rejected without a
//!   lookup).
//! - `validate/miss_sqlite`, `validate/miss_postgres`: a valid key whose cache
//!   entry is invalidated before each call, so every call does the indexed
//!   lookup by hash and caches the result. Only `validate` is timed. The
//!   PostgreSQL one runs on a fresh database at `KEYWARD_TEST_POSTGRES_URL`
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`) and is skipped
//!   when that server is unreachable (a failure with `CI=true`).
//!
//! After criterion, the miss benchmarks are repeated call by call to print
//! per-call percentiles (criterion reports batch means): 5,000 calls each in a
//! full run, 20 in a quick one.
//!
//! The validator has the server's default settings except `stale_if_error`,
//! which is set to a year: no feed follower runs here, and without one cached
//! verdicts would turn UNAVAILABLE after 60 s. The check itself still runs on
//! every hit, as in the server.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use keyward::metrics::ValidationPath;
use keyward::validation::{Change, ClientInfo, KeyValidator, ValidatorSettings};
use keyward_core::{
    AllowedCidrs, ApiKeySecret, KeyId, LookupHasher, Policy, PresentedKey, RateLimit, RateLimits,
    ValidationCode,
};
use keyward_store::Store;
use keyward_store::testing::{Backend, TestDatabase};
use tokio::runtime::Runtime;

mod support;

const CLIENT: ClientInfo<'static> = ClientInfo {
    ip: Some("203.0.113.7"),
    address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        203, 0, 113, 7,
    ))),
    user_agent: Some("bench-client/1.0"),
    path: ValidationPath::InProcess,
    cost: None,
    idempotency_key: None,
};

/// A client outside the bench allowlist.
const OUTSIDER: ClientInfo<'static> = ClientInfo {
    ip: Some("192.0.2.7"),
    address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7))),
    user_agent: Some("bench-client/1.0"),
    path: ValidationPath::InProcess,
    cost: None,
    idempotency_key: None,
};

/// An allowlist of `n` ranges (IPv4 and IPv6) whose last IPv4 range holds
/// `CLIENT`.
fn allowlist(n: usize) -> AllowedCidrs {
    let mut raw: Vec<String> = (0..n - 1)
        .map(|i| {
            if i % 2 == 0 {
                format!("10.{i}.0.0/16")
            } else {
                format!("2001:db8:{i:x}::/48")
            }
        })
        .collect();
    raw.push("203.0.113.0/24".to_owned());
    AllowedCidrs::parse(&raw).expect("valid ranges")
}

/// A validator over a store holding a few keys, one of them the bench key.
struct Fixture {
    validator: KeyValidator,
    secret: ApiKeySecret,
    /// The bench key's twin with an 8-range IP allowlist holding `CLIENT`.
    allowlisted: ApiKeySecret,
    /// The bench key's twin with one rate limit and a one-range allowlist.
    policed: ApiKeySecret,
    id: KeyId,
    store: Store,
    database: TestDatabase,
}

fn settings() -> ValidatorSettings {
    ValidatorSettings {
        stale_if_error: Duration::from_secs(365 * 24 * 3600),
        ..ValidatorSettings::default()
    }
}

async fn fixture(backend: Backend) -> Option<Fixture> {
    let database = TestDatabase::create(backend).await?;
    let store = support::open(&database.url).await;
    for i in 0..15 {
        support::create_key(&store, &format!("other key {i}")).await;
    }
    let (secret, key) = support::create_key(&store, "bench key").await;
    let policy = Policy {
        allowed_cidrs: allowlist(8),
        ..Policy::default()
    };
    let (allowlisted, _) = support::create_key_with_policy(&store, "allowlisted", policy).await;
    let limit = RateLimit::parse("requests", 1_000_000_000, Some(Duration::from_secs(1)), 0)
        .expect("a valid limit");
    let policy = Policy {
        allowed_cidrs: AllowedCidrs::parse(&["203.0.113.0/24"]).expect("a valid range"),
        rate_limits: RateLimits::new(vec![limit]).expect("valid limits"),
        credits: None,
    };
    let (policed, _) = support::create_key_with_policy(&store, "policed", policy).await;
    let validator = KeyValidator::new(store.clone(), LookupHasher::derived(), settings());
    Some(Fixture {
        validator,
        secret,
        allowlisted,
        policed,
        id: key.id,
        store,
        database,
    })
}

impl Fixture {
    async fn close(self) {
        drop(self.validator);
        let _ = self.store.connection().close_by_ref().await;
        self.database.drop_database().await;
    }
}

/// Times `iters` awaited calls of `call` inside one `block_on`.
fn timed<F, Fut>(rt: &Runtime, iters: u64, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(call().await);
        }
        start.elapsed()
    })
}

/// One miss: invalidate (untimed), then a timed `validate`.
async fn miss(fixture: &Fixture, raw: &str, required: &[&str]) -> Duration {
    fixture.validator.announce(Change::key(&fixture.id));
    let start = Instant::now();
    let validation = fixture
        .validator
        .validate(raw, required, CLIENT)
        .await
        .expect("validate");
    let took = start.elapsed();
    assert_eq!(validation.code, ValidationCode::Valid);
    took
}

fn bench_hashing(c: &mut Criterion, secret: &ApiKeySecret) {
    let hasher = LookupHasher::derived();
    let raw = secret.expose().to_owned();
    let mut group = c.benchmark_group("blake3");
    group.bench_function("lookup_hash", |b| b.iter(|| hasher.hash(black_box(secret))));
    group.bench_function("plain", |b| {
        b.iter(|| blake3::hash(black_box(raw.as_bytes())))
    });
    group.finish();
}

fn bench_sqlite(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let raw = fx.secret.expose().to_owned();
    let required = [support::required_scope()];
    let hash = LookupHasher::derived().hash(&fx.secret);

    // A wrong checksum on an otherwise well-shaped key: the last character
    // changed.
    let mut malformed = raw.clone();
    let last = malformed.pop().expect("non-empty");
    malformed.push(if last == 'A' { 'B' } else { 'A' });
    assert!(ApiKeySecret::parse(&malformed).is_err());

    // Warm the cache.
    let first = rt
        .block_on(fx.validator.validate(&raw, &required, CLIENT))
        .expect("validate");
    assert_eq!(first.code, ValidationCode::Valid);
    let allowlisted = fx.allowlisted.expose().to_owned();
    for (client, expected) in [
        (CLIENT, ValidationCode::Valid),
        (OUTSIDER, ValidationCode::IpNotAllowed),
    ] {
        let verdict = rt
            .block_on(fx.validator.validate(&allowlisted, &required, client))
            .expect("validate");
        assert_eq!(verdict.code, expected);
    }
    let policed = fx.policed.expose().to_owned();
    let verdict = rt
        .block_on(fx.validator.validate(&policed, &required, CLIENT))
        .expect("validate");
    assert_eq!(verdict.code, ValidationCode::Valid);
    assert!(verdict.metered && verdict.throttle.is_some());
    let widest = allowlist(64);
    let address = CLIENT.address.expect("an address");

    let mut group = c.benchmark_group("components");
    group.bench_function("parse", |b| b.iter(|| PresentedKey::parse(black_box(&raw))));
    group.bench_function("cache_get", |b| {
        b.iter(|| fx.validator.cache().get(black_box(&hash), Instant::now()))
    });
    group.bench_function("allowlist_contains_64", |b| {
        b.iter(|| black_box(&widest).contains(black_box(address)))
    });
    group.finish();

    let lookups = fx.validator.database_lookups();
    let mut group = c.benchmark_group("validate");
    group.bench_function("warm_hit", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator.validate(black_box(&raw), &required, CLIENT)
            })
        })
    });
    group.bench_function("warm_hit_allowlist", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator
                    .validate(black_box(&allowlisted), &required, CLIENT)
            })
        })
    });
    group.bench_function("warm_hit_policy", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator
                    .validate(black_box(&policed), &required, CLIENT)
            })
        })
    });
    group.bench_function("warm_hit_ip_not_allowed", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator
                    .validate(black_box(&allowlisted), &required, OUTSIDER)
            })
        })
    });
    group.bench_function("warm_hit_no_client_info", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator
                    .validate(black_box(&raw), &required, ClientInfo::default())
            })
        })
    });
    group.bench_function("malformed", |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, || {
                fx.validator
                    .validate(black_box(&malformed), &required, CLIENT)
            })
        })
    });
    // The cache's max_age (30 s) may expire the entry once during a long run.
    let extra = fx.validator.database_lookups() - lookups;
    assert!(
        extra <= 10,
        "warm benchmarks went to the database {extra} times"
    );

    group.bench_function("miss_sqlite", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += miss(fx, &raw, &required).await;
                }
                total
            })
        })
    });
    group.finish();
}

fn bench_postgres(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let raw = fx.secret.expose().to_owned();
    let required = [support::required_scope()];
    let mut group = c.benchmark_group("validate");
    group.bench_function("miss_postgres", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += miss(fx, &raw, &required).await;
                }
                total
            })
        })
    });
    group.finish();
}

/// Per-call miss latencies, printed as percentiles.
fn miss_percentiles(rt: &Runtime, name: &str, fx: &Fixture, calls: usize) {
    let raw = fx.secret.expose().to_owned();
    let required = [support::required_scope()];
    let samples = rt.block_on(async {
        for _ in 0..calls.min(200) {
            miss(fx, &raw, &required).await;
        }
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            samples.push(miss(fx, &raw, &required).await);
        }
        samples
    });
    println!(
        "{name} per call: {}",
        support::Latencies::new(samples).summary()
    );
}

fn main() {
    let args = support::Args::parse();
    let mut c = Criterion::default().configure_from_args();
    let rt = support::runtime();

    let sqlite = rt
        .block_on(fixture(Backend::Sqlite))
        .expect("SQLite is always available");
    bench_hashing(&mut c, &sqlite.secret);
    bench_sqlite(&mut c, &rt, &sqlite);

    let postgres = rt.block_on(fixture(Backend::Postgres));
    match &postgres {
        Some(fx) => bench_postgres(&mut c, &rt, fx),
        None => println!("validate/miss_postgres: SKIPPED (no PostgreSQL server)"),
    }
    c.final_summary();

    let calls = if args.quick { 20 } else { 5000 };
    miss_percentiles(&rt, "validate/miss_sqlite", &sqlite, calls);
    if let Some(fx) = &postgres {
        miss_percentiles(&rt, "validate/miss_postgres", fx, calls);
    }

    rt.block_on(async {
        sqlite.close().await;
        if let Some(fx) = postgres {
            fx.close().await;
        }
    });
}
