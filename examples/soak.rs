//! Soak driver (RELIABILITY.md, `scripts/soak.sh`): two `keyward serve`
//! replicas on one fresh PostgreSQL database, each reaching it through its
//! own [`TcpProxy`], under a mixed load for a given time, with one database
//! blackhole (both proxies stop forwarding without closing) in the middle.
//!
//! The load, over the public gRPC API only:
//! - validations on both replicas of active keys, of denied keys (revoked,
//!   archived, or expired by a rotation with no grace) and of fresh random
//!   well-formed keys that were never issued;
//! - admin mutations (create, revoke, archive, reactivate, rotate) spread
//!   over both replicas.
//!
//! A verdict is **wrong** when (the propagation bound is 1 s, SPEC §6):
//! - `unknown_valid`: a key that was never issued is VALID. Always wrong.
//! - `denied_valid`: a key is VALID although the mutation that denied it
//!   (revoke, archive, rotate with grace 0) returned more than 1 s before
//!   the validation was sent, and nothing changed the key meanwhile. When
//!   that 1 s overlaps the blackhole, the replica may not have read the
//!   change before the database went away and keeps serving its cached
//!   verdict (stale-if-error, 60 s here, longer than the blackhole), so the
//!   bound becomes 1 s after the blackhole ends.
//! - `active_denied`: an active key gets a verdict other than VALID although
//!   it was created or reactivated more than 1 s before (same blackhole
//!   rule). An error (UNAVAILABLE, DEADLINE_EXCEEDED) is not a verdict: it
//!   is counted by code, never as wrong.
//!
//! A key whose mutation failed with an error that leaves its outcome open
//! (UNAVAILABLE, DEADLINE_EXCEEDED, ...) may still change when the database
//! returns; it is judged no more. After the load, every judged key is
//! validated once more on both replicas (the final sweep). The driver
//! prints a report and exits 1 on any wrong verdict, 2 when it could not
//! run.

#[allow(dead_code)] // `cut` and `mode` serve the end-to-end tests.
#[path = "../tests/support/tcp_proxy.rs"]
mod tcp_proxy;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward_core::{ApiKeySecret, Environment, KeyKind};
use keyward_store::testing::{Backend, TestDatabase};
use tcp_proxy::TcpProxy;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// How soon a change must show on every replica (SPEC §6).
const PROPAGATION: Duration = Duration::from_secs(1);
/// stale-if-error given to both replicas: longer than any blackhole here.
const STALE_IF_ERROR: &str = "60s";
/// Longest the driver waits for one RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys created before the load starts.
const INITIAL_KEYS: usize = 150;
/// Keys kept active; above it, mutations lean towards denying keys.
const TARGET_ACTIVE: usize = 300;

#[derive(Debug, Parser)]
#[command(about = "Soak keyward: two replicas on PostgreSQL, mixed load, one database blackhole")]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds the database is blackholed, in the middle of the load.
    #[arg(long, default_value_t = 10)]
    blackhole: u64,
    /// The keyward binary.
    #[arg(long, default_value = "target/debug/keyward")]
    keyward: PathBuf,
    /// Validations per second, over both replicas.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// Admin mutations per second.
    #[arg(long, default_value_t = 5)]
    admin_rate: u32,
    /// Where the replicas' logs go.
    #[arg(long, default_value = "target/soak")]
    logs: PathBuf,
}

// ---------------------------------------------------------------------------
// What the driver knows about its keys
// ---------------------------------------------------------------------------

/// What a validation of a key should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    Denied,
    /// A mutation's outcome is unknown: never judged again.
    Open,
}

#[derive(Debug, Clone)]
struct Key {
    id: String,
    secret: String,
    expect: Expect,
    /// When the mutation that set `expect` returned.
    since: Instant,
    /// Bumped by every mutation, so a verdict that raced one is not judged.
    version: u64,
    archived: bool,
}

#[derive(Debug, Default)]
struct Keys {
    all: Vec<Key>,
}

impl Keys {
    fn indices(&self, expect: Expect) -> Vec<usize> {
        (0..self.all.len())
            .filter(|&i| self.all[i].expect == expect)
            .collect()
    }

    fn set(&mut self, index: usize, expect: Expect, archived: bool) {
        let key = &mut self.all[index];
        key.expect = expect;
        key.archived = archived;
        key.since = Instant::now();
        key.version += 1;
    }
}

/// The blackhole's window, once it happened.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    end: Option<Instant>,
}

impl Window {
    /// When a change that returned at `since` must show on every replica.
    fn bound(&self, since: Instant) -> Instant {
        let normal = since + PROPAGATION;
        match (self.start, self.end) {
            (Some(start), end) if normal > start && end.is_none_or(|end| since < end) => {
                // Not surely read before the database went away: the cached
                // verdict may stay until the feed runs again after the end.
                end.map_or(far_future(), |end| end + PROPAGATION)
            }
            _ => normal,
        }
    }

    fn phase(&self, at: Instant) -> &'static str {
        match (self.start, self.end) {
            (Some(start), _) if at < start => "before",
            (None, _) => "before",
            (Some(_), Some(end)) if at >= end => "after",
            _ => "blackhole",
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Everything counted.
#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    /// `rpc code` -> count, for RPCs that ended in an error.
    errors: BTreeMap<String, u64>,
    /// `phase category verdict-or-error` -> count.
    outcomes: BTreeMap<String, u64>,
    /// `kind` -> count of wrong verdicts.
    wrong: BTreeMap<&'static str, u64>,
    /// The first few wrong verdicts, described.
    wrong_examples: Vec<String>,
    /// Verdicts not judged because a mutation raced them.
    raced: u64,
    /// Admin mutations that succeeded, by RPC.
    mutations: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn count(map: &mut BTreeMap<String, u64>, key: String) {
        *map.entry(key).or_default() += 1;
    }

    fn wrong(&mut self, kind: &'static str, detail: String) {
        *self.wrong.entry(kind).or_default() += 1;
        if self.wrong_examples.len() < 20 {
            self.wrong_examples.push(format!("{kind}: {detail}"));
        }
    }
}

struct Shared {
    keys: Mutex<Keys>,
    stats: Mutex<Stats>,
    window: Mutex<Window>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A small PRNG per task (xorshift64*): choices, not secrets.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(RandomState::new().hash_one(Instant::now()) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

// ---------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------

struct Replica {
    name: String,
    child: Child,
    proxy: TcpProxy,
    /// Where it serves `/metrics`.
    metrics: std::net::SocketAddr,
    validation: KeyValidationServiceClient<Channel>,
    admin: KeyAdminServiceClient<Channel>,
}

impl Replica {
    async fn start(
        name: &str,
        args: &Args,
        database_url: &str,
        upstream: &str,
    ) -> Result<Self, String> {
        let proxy = TcpProxy::start(upstream).await;
        let url = database_url.replacen(upstream, &proxy.addr().to_string(), 1);
        let port = free_port()?;
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = log_file(args, name)?;
        let child = Command::new(&args.keyward)
            .args(["serve", "--database-url", &url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--stale-if-error", STALE_IF_ERROR])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.keyward.display()))?;
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .connect_lazy();
        let mut replica = Self {
            name: name.to_owned(),
            child,
            proxy,
            metrics,
            validation: KeyValidationServiceClient::new(channel.clone()),
            admin: KeyAdminServiceClient::new(channel),
        };
        replica.wait_ready().await?;
        Ok(replica)
    }

    /// Polls until the replica answers a validation (30 s at most).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited at startup: {status}", self.name));
            }
            let probe = pb::ValidateKeyRequest {
                key: "not a key".to_owned(),
                ..Default::default()
            };
            if self.validation.validate_key(probe).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not answer within 30 s", self.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (VmRSS, VmHWM) in kB, from /proc.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// How late its change feed applied other replicas' changes, from its
    /// `/metrics` (`keyward_feed_lag_seconds`): events applied in all, and
    /// how many of them more than 0.75 s and more than 1 s after their
    /// commit. A wrong verdict with no late event was not the feed's lag.
    fn feed_lag(&self) -> Result<(u64, u64, u64), String> {
        use std::io::{Read, Write};
        let fetch = || -> std::io::Result<String> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&self.metrics, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")?;
            let mut page = String::new();
            stream.read_to_string(&mut page)?;
            Ok(page)
        };
        let page = fetch().map_err(|e| format!("{}: /metrics: {e}", self.name))?;
        let value = |prefix: &str| {
            page.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .map(|count| count as u64)
                .ok_or_else(|| format!("{}: no {prefix:?} in /metrics", self.name))
        };
        let events = value("keyward_feed_lag_seconds_count ")?;
        let within = |bound: &str| {
            value(&format!(
                "keyward_feed_lag_seconds_bucket{{le=\"{bound}\"}} "
            ))
        };
        Ok((
            events,
            events.saturating_sub(within("0.75")?),
            events.saturating_sub(within("1.0")?),
        ))
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    async fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_key<T>(admin_key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {admin_key}")
        .parse()
        .expect("an admin key is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// Validation categories.
#[derive(Debug, Clone, Copy)]
enum Category {
    Active,
    Denied,
    Unknown,
}

async fn validate_once(
    shared: &Shared,
    client: &mut KeyValidationServiceClient<Channel>,
    replica: &str,
    category: Category,
    index: Option<usize>,
) {
    let (secret, snapshot) = match index {
        Some(i) => {
            let keys = lock(&shared.keys);
            let key = &keys.all[i];
            (
                key.secret.clone(),
                Some((key.version, key.expect, key.since)),
            )
        }
        None => (
            ApiKeySecret::generate(KeyKind::Standard, Environment::Live)
                .expose()
                .to_owned(),
            None,
        ),
    };
    let sent = Instant::now();
    let result = client
        .validate_key(pb::ValidateKeyRequest {
            key: secret,
            ..Default::default()
        })
        .await;
    let window = *lock(&shared.window);
    let phase = window.phase(sent);
    let mut stats = lock(&shared.stats);
    stats.requests += 1;
    let response = match result {
        Ok(response) => response.into_inner(),
        Err(status) => {
            Stats::count(
                &mut stats.errors,
                format!("ValidateKey {:?}", status.code()),
            );
            Stats::count(
                &mut stats.outcomes,
                format!("{phase} {category:?} error:{:?}", status.code()),
            );
            return;
        }
    };
    let code = pb::ValidationCode::try_from(response.code).map_or_else(
        |_| format!("code {}", response.code),
        |c| c.as_str_name().to_owned(),
    );
    Stats::count(&mut stats.outcomes, format!("{phase} {category:?} {code}"));
    let Some((version, expect, since)) = snapshot else {
        if response.valid {
            stats.wrong("unknown_valid", format!("on {replica}, {phase}"));
        }
        return;
    };
    let current = index.map(|i| lock(&shared.keys).all[i].version);
    if current != Some(version) {
        stats.raced += 1;
        return;
    }
    let late = sent > window.bound(since);
    let key_id = index
        .map(|i| lock(&shared.keys).all[i].id.clone())
        .unwrap_or_default();
    match expect {
        Expect::Denied if response.valid && late => stats.wrong(
            "denied_valid",
            format!(
                "{key_id} VALID on {replica} {:.3}s after it was denied ({phase})",
                sent.duration_since(since).as_secs_f64()
            ),
        ),
        Expect::Valid if !response.valid && late => stats.wrong(
            "active_denied",
            format!(
                "{key_id} {code} on {replica} {:.3}s after it became active ({phase})",
                sent.duration_since(since).as_secs_f64()
            ),
        ),
        _ => {}
    }
}

async fn validation_worker(
    shared: Arc<Shared>,
    mut clients: Vec<(String, KeyValidationServiceClient<Channel>)>,
    every: Duration,
    until: Instant,
) {
    let mut rng = Rng::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        ticker.tick().await;
        let which = rng.below(clients.len());
        let roll = rng.below(100);
        let (category, index) = {
            let keys = lock(&shared.keys);
            let pick = |expect: Expect, rng: &mut Rng| {
                let pool = keys.indices(expect);
                // Recently changed keys are where propagation bugs show.
                let recent = pool.len().saturating_sub(20);
                if pool.is_empty() {
                    None
                } else if rng.chance(50) {
                    Some(pool[recent + rng.below(pool.len() - recent)])
                } else {
                    Some(pool[rng.below(pool.len())])
                }
            };
            match roll {
                0..50 => (Category::Active, pick(Expect::Valid, &mut rng)),
                50..80 => (Category::Denied, pick(Expect::Denied, &mut rng)),
                _ => (Category::Unknown, None),
            }
        };
        if !matches!(category, Category::Unknown) && index.is_none() {
            continue;
        }
        let (name, client) = &mut clients[which];
        validate_once(&shared, client, name, category, index).await;
    }
}

/// The admin mutations, one at a time, alternating replicas.
async fn admin_worker(
    shared: Arc<Shared>,
    mut clients: Vec<KeyAdminServiceClient<Channel>>,
    admin_key: String,
    every: Duration,
    until: Instant,
) {
    let mut rng = Rng::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0;
    while Instant::now() < until {
        ticker.tick().await;
        turn += 1;
        let client = &mut clients[turn % 2];
        let (active, archived) = {
            let keys = lock(&shared.keys);
            let active = keys.indices(Expect::Valid);
            let archived: Vec<usize> = keys
                .indices(Expect::Denied)
                .into_iter()
                .filter(|&i| keys.all[i].archived)
                .collect();
            (active, archived)
        };
        let roll = rng.below(100);
        let create =
            active.len() < TARGET_ACTIVE / 2 || (active.len() < TARGET_ACTIVE && roll < 25);
        if create || active.is_empty() {
            create_key(&shared, client, &admin_key, turn).await;
        } else if roll < 45 {
            let i = active[rng.below(active.len())];
            mutate(&shared, client, &admin_key, Mutation::Revoke, i).await;
        } else if roll < 65 {
            let i = active[rng.below(active.len())];
            mutate(&shared, client, &admin_key, Mutation::Archive, i).await;
        } else if roll < 85 && !archived.is_empty() {
            let i = archived[rng.below(archived.len())];
            mutate(&shared, client, &admin_key, Mutation::Reactivate, i).await;
        } else {
            let i = active[rng.below(active.len())];
            mutate(&shared, client, &admin_key, Mutation::Rotate, i).await;
        }
    }
}

fn admin_error(shared: &Shared, rpc: &str, code: Code) {
    Stats::count(&mut lock(&shared.stats).errors, format!("{rpc} {code:?}"));
}

/// Whether an error leaves the mutation's outcome open: it may have
/// committed, or may still commit when the database answers again.
fn outcome_open(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::PermissionDenied
    )
}

async fn create_key(
    shared: &Shared,
    client: &mut KeyAdminServiceClient<Channel>,
    admin_key: &str,
    n: usize,
) -> bool {
    lock(&shared.stats).requests += 1;
    let request = pb::CreateKeyRequest {
        name: format!("soak {n}"),
        scopes: vec!["orders:*".to_owned()],
        ..Default::default()
    };
    match client.create_key(with_key(admin_key, request)).await {
        Ok(response) => {
            let response = response.into_inner();
            let Some(key) = response.api_key else {
                return false;
            };
            add_key(shared, key.id, response.secret);
            *lock(&shared.stats)
                .mutations
                .entry("CreateKey")
                .or_default() += 1;
            true
        }
        Err(status) => {
            admin_error(shared, "CreateKey", status.code());
            false
        }
    }
}

fn add_key(shared: &Shared, id: String, secret: String) {
    lock(&shared.keys).all.push(Key {
        id,
        secret,
        expect: Expect::Valid,
        since: Instant::now(),
        version: 0,
        archived: false,
    });
}

#[derive(Debug, Clone, Copy)]
enum Mutation {
    Revoke,
    Archive,
    Reactivate,
    Rotate,
}

async fn mutate(
    shared: &Shared,
    client: &mut KeyAdminServiceClient<Channel>,
    admin_key: &str,
    mutation: Mutation,
    index: usize,
) {
    lock(&shared.stats).requests += 1;
    let id = lock(&shared.keys).all[index].id.clone();
    let (rpc, result) = match mutation {
        Mutation::Revoke => (
            "RevokeKey",
            client
                .revoke_key(with_key(admin_key, pb::RevokeKeyRequest { id }))
                .await
                .map(|_| None),
        ),
        Mutation::Archive => (
            "ArchiveKey",
            client
                .archive_key(with_key(admin_key, pb::ArchiveKeyRequest { id }))
                .await
                .map(|_| None),
        ),
        Mutation::Reactivate => (
            "ReactivateKey",
            client
                .reactivate_key(with_key(admin_key, pb::ReactivateKeyRequest { id }))
                .await
                .map(|_| None),
        ),
        Mutation::Rotate => (
            "RotateKey",
            client
                .rotate_key(with_key(
                    admin_key,
                    pb::RotateKeyRequest {
                        id,
                        // The old key expires at once: it must stop validating.
                        grace_period: Some(prost_types::Duration::default()),
                    },
                ))
                .await
                .map(|response| {
                    let response = response.into_inner();
                    response.api_key.map(|key| (key.id, response.secret))
                }),
        ),
    };
    match result {
        Ok(created) => {
            let mut keys = lock(&shared.keys);
            match mutation {
                Mutation::Revoke | Mutation::Rotate => keys.set(index, Expect::Denied, false),
                Mutation::Archive => keys.set(index, Expect::Denied, true),
                Mutation::Reactivate => keys.set(index, Expect::Valid, false),
            }
            drop(keys);
            if let Some((id, secret)) = created {
                add_key(shared, id, secret);
            }
            *lock(&shared.stats).mutations.entry(rpc).or_default() += 1;
        }
        Err(status) => {
            admin_error(shared, rpc, status.code());
            if outcome_open(status.code()) {
                lock(&shared.keys).set(index, Expect::Open, false);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

type Memory = Vec<(&'static str, Vec<(u64, u64)>)>;

async fn soak(args: &Args, database_url: &str) -> Result<bool, String> {
    let upstream = authority(database_url)?;
    std::fs::create_dir_all(&args.logs)
        .map_err(|e| format!("cannot create {:?}: {e}", args.logs))?;
    let output = Command::new(&args.keyward)
        .args([
            "bootstrap",
            "--database-url",
            database_url,
            "--organization",
            "soak",
        ])
        .stderr(log_file(args, "bootstrap")?)
        .output()
        .map_err(|e| format!("cannot run {} bootstrap: {e}", args.keyward.display()))?;
    if !output.status.success() {
        return Err(format!("keyward bootstrap failed: {}", output.status));
    }
    let admin_key = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        replicas.push(Replica::start(name, args, database_url, &upstream).await?);
    }
    let shared = Arc::new(Shared {
        keys: Mutex::default(),
        stats: Mutex::default(),
        window: Mutex::default(),
    });

    // Initial keys, some denied at once.
    let mut admins: Vec<_> = replicas.iter().map(|r| r.admin.clone()).collect();
    for n in 0..INITIAL_KEYS {
        create_key(&shared, &mut admins[n % 2], &admin_key, n).await;
    }
    let created = lock(&shared.keys).all.len();
    for i in 0..created / 4 {
        let mutation = if i < created / 5 {
            Mutation::Revoke
        } else {
            Mutation::Archive
        };
        mutate(&shared, &mut admins[i % 2], &admin_key, mutation, i).await;
    }
    let mut memory: Memory = vec![("start", replicas.iter().map(Replica::memory).collect())];

    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let clients: Vec<_> = replicas
        .iter()
        .map(|r| (r.name.clone(), r.validation.clone()))
        .collect();
    // Enough workers that slow answers (a blackhole) do not lower the rate
    // much; each waits for its own answer before its next request.
    let workers = 32u32;
    let every = Duration::from_secs_f64(f64::from(workers) / f64::from(args.rate.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(validation_worker(
            Arc::clone(&shared),
            clients.clone(),
            every,
            until,
        ));
    }
    tasks.spawn(admin_worker(
        Arc::clone(&shared),
        admins.clone(),
        admin_key.clone(),
        Duration::from_secs_f64(1.0 / f64::from(args.admin_rate.max(1))),
        until,
    ));

    // The blackhole, centred in the run.
    let blackhole = Duration::from_secs(args.blackhole.min(args.duration));
    let middle = started + Duration::from_secs(args.duration) / 2;
    tokio::time::sleep_until((middle - blackhole / 2).into()).await;
    memory.push(("middle", replicas.iter().map(Replica::memory).collect()));
    let lag_before = tokio::task::block_in_place(|| feed_lags(&replicas));
    for replica in &replicas {
        replica.proxy.blackhole();
    }
    lock(&shared.window).start = Some(Instant::now());
    eprintln!("soak: database blackholed for {}s", blackhole.as_secs());
    tokio::time::sleep(blackhole).await;
    for replica in &replicas {
        replica.proxy.restore();
    }
    lock(&shared.window).end = Some(Instant::now());
    eprintln!("soak: database back");
    while tasks.join_next().await.is_some() {}
    let load_seconds = started.elapsed().as_secs_f64();

    // The final sweep: every judged key once more on both replicas, after
    // the propagation bound of the last mutation.
    tokio::time::sleep(PROPAGATION * 2).await;
    let judged: Vec<(usize, Expect)> = {
        let keys = lock(&shared.keys);
        (0..keys.all.len())
            .filter(|&i| keys.all[i].expect != Expect::Open)
            .map(|i| (i, keys.all[i].expect))
            .collect()
    };
    let mut sweep = clients.clone();
    for (i, expect) in &judged {
        let category = if *expect == Expect::Valid {
            Category::Active
        } else {
            Category::Denied
        };
        for (name, client) in &mut sweep {
            validate_once(
                &shared,
                client,
                &format!("{name} (final sweep)"),
                category,
                Some(*i),
            )
            .await;
        }
    }
    memory.push(("end", replicas.iter().map(Replica::memory).collect()));
    let lag_after = tokio::task::block_in_place(|| feed_lags(&replicas));
    let alive: Vec<bool> = replicas.iter_mut().map(Replica::running).collect();
    for replica in &mut replicas {
        replica.stop().await;
    }

    let stats = lock(&shared.stats);
    let keys = lock(&shared.keys);
    report(
        args,
        load_seconds,
        &stats,
        &keys,
        &memory,
        &replicas,
        judged.len(),
    );
    // The blackhole holds events back by design: a late event is only
    // suspect before it.
    for (when, lags) in [
        ("before the blackhole", &lag_before),
        ("the whole run, the blackhole's included", &lag_after),
    ] {
        println!("change-feed lag per replica, {when}:");
        for lag in lags {
            println!("  {lag}");
        }
    }
    let all_alive = alive.iter().all(|&a| a);
    if !all_alive {
        println!(
            "a replica died during the run: {alive:?} (see {})",
            args.logs.display()
        );
    }
    Ok(stats.wrong.values().sum::<u64>() == 0 && all_alive)
}

fn report(
    args: &Args,
    load_seconds: f64,
    stats: &Stats,
    keys: &Keys,
    memory: &Memory,
    replicas: &[Replica],
    swept: usize,
) {
    println!("==== soak report");
    println!(
        "load: {load_seconds:.0}s ({}s requested), blackhole {}s in the middle, {} validations/s target, {} admin mutations/s target",
        args.duration, args.blackhole, args.rate, args.admin_rate
    );
    println!(
        "requests: {} ({:.0}/s)",
        stats.requests,
        stats.requests as f64 / load_seconds.max(1.0)
    );
    println!("admin mutations that succeeded: {:?}", stats.mutations);
    println!(
        "keys: {} known ({} active, {} denied, {} with an open outcome); final sweep over {swept} keys x 2 replicas",
        keys.all.len(),
        keys.indices(Expect::Valid).len(),
        keys.indices(Expect::Denied).len(),
        keys.indices(Expect::Open).len()
    );
    println!("errors by RPC and gRPC code:");
    if stats.errors.is_empty() {
        println!("  none");
    }
    for (key, count) in &stats.errors {
        println!("  {key:<40} {count}");
    }
    println!("validation outcomes by phase, category and verdict (or error):");
    for (key, count) in &stats.outcomes {
        println!("  {key:<50} {count}");
    }
    println!(
        "verdicts not judged because a mutation of the key raced them: {}",
        stats.raced
    );
    let wrong: u64 = stats.wrong.values().sum();
    println!("wrong verdicts: {wrong}");
    for kind in ["unknown_valid", "denied_valid", "active_denied"] {
        println!(
            "  {kind:<15} {}",
            stats.wrong.get(kind).copied().unwrap_or(0)
        );
    }
    for example in &stats.wrong_examples {
        println!("  e.g. {example}");
    }
    println!("memory per replica (VmRSS, and VmHWM peak), MiB:");
    for (i, replica) in replicas.iter().enumerate() {
        let figures: Vec<String> = memory
            .iter()
            .map(|(when, values)| {
                let (rss, hwm) = values[i];
                format!(
                    "{when} {:.1} (peak {:.1})",
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0
                )
            })
            .collect();
        println!("  {}: {}", replica.name, figures.join(", "));
    }
}

/// Each replica's [`Replica::feed_lag`], described.
fn feed_lags(replicas: &[Replica]) -> Vec<String> {
    replicas
        .iter()
        .map(|replica| match replica.feed_lag() {
            Ok((events, late, past_bound)) => format!(
                "{}: {events} events applied, {late} of them more than 0.75 s after their commit, \
                 {past_bound} more than 1 s",
                replica.name
            ),
            Err(error) => format!("{}: unknown ({error})", replica.name),
        })
        .collect()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn log_file(args: &Args, name: &str) -> Result<std::fs::File, String> {
    let path = args.logs.join(format!("{name}.log"));
    std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// `host:port` of a database URL.
fn authority(url: &str) -> Result<String, String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        Ok(host.to_owned())
    } else {
        Err(format!("the database URL names no port: {host}"))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        eprintln!("soak: PostgreSQL is not reachable (KEYWARD_TEST_POSTGRES_URL)");
        std::process::exit(2);
    };
    eprintln!("soak: fresh database {}", database.url);
    let outcome = soak(&args, &database.url).await;
    database.drop_database().await;
    match outcome {
        Ok(true) => println!("soak: PASSED"),
        Ok(false) => {
            println!("soak: FAILED");
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("soak: could not run: {error}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blackhole_extends_the_bound_of_changes_it_may_have_hidden() {
        let t0 = Instant::now();
        let window = Window {
            start: Some(t0 + Duration::from_secs(10)),
            end: Some(t0 + Duration::from_secs(20)),
        };
        // Long before: the normal bound.
        assert_eq!(window.bound(t0), t0 + PROPAGATION);
        // Within 1 s of the start, or during it: 1 s after the end.
        let after_end = t0 + Duration::from_secs(21);
        assert_eq!(window.bound(t0 + Duration::from_millis(9_500)), after_end);
        assert_eq!(window.bound(t0 + Duration::from_secs(15)), after_end);
        // After the end: the normal bound again.
        let late = t0 + Duration::from_secs(25);
        assert_eq!(window.bound(late), late + PROPAGATION);
        assert_eq!(window.phase(t0), "before");
        assert_eq!(window.phase(t0 + Duration::from_secs(12)), "blackhole");
        assert_eq!(window.phase(late), "after");
    }

    #[test]
    fn the_authority_of_a_database_url() {
        assert_eq!(
            authority("postgres://postgres@127.0.0.1:5432/db?x=1").unwrap(),
            "127.0.0.1:5432"
        );
        assert!(authority("postgres://localhost/db").is_err());
    }
}
