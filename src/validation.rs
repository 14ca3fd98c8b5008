//! The validation path shared by `ValidateKey`, Envoy's `Check` and the admin
//! API's auth layer: parse (shape and checksum, no lookup) → BLAKE3 lookup
//! hash → in-memory cache → on a miss, one indexed database lookup → cache.
//!
//! The cache stays current through [`KeyValidator::invalidate`] (this
//! replica's changes, at once) and [`follow_changes`] (other replicas'
//! changes, through the KeyEvent feed). When the database is unreachable,
//! cached verdicts are served for `stale_if_error` after the last successful
//! feed sync; anything else is UNAVAILABLE, never valid.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;
use keyward_auth::{
    Denial, Identity, IdentityDetails, ValidationFuture, ValidationRequest, Validator,
    ValidatorError, Verdict,
};
use keyward_core::{
    ApiKey, KeyId, KeyKind, LookupHash, LookupHasher, PresentedKey, Scope, ValidationCode,
};
use keyward_store::{EventType, KeyEvent, Store, UsageRecord};

use crate::cache::{CacheSettings, Cached, KeyCache};
use crate::error::ApiError;

/// The bound on how long a change takes to show in verdicts, here and through
/// a caller's cache: the feed interval plus the cache hint stays within it.
pub const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

/// How far behind its cursor the feed follower re-reads: an event whose
/// transaction commits later than this after taking its `seq` is caught by
/// the cache's `max_age` instead.
const REREAD_WINDOW: Duration = Duration::from_secs(2);

/// How the validator caches and stays current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ValidatorSettings {
    /// Cache limits.
    #[command(flatten)]
    pub cache: CacheSettings,
    /// How often the change feed is read, so other replicas' changes show here
    /// (keep it well under 1s: changes must show within 1s).
    #[arg(long, env = "KEYWARD_SYNC_INTERVAL", default_value = "250ms", value_parser = crate::config::parse_interval)]
    pub sync_interval: Duration,
    /// While the database is unreachable, how long cached verdicts are still
    /// served after the last successful sync (at least the sync interval).
    #[arg(long, env = "KEYWARD_STALE_IF_ERROR", default_value = "60s", value_parser = crate::config::parse_duration)]
    pub stale_if_error: Duration,
    /// Longest a cache miss waits for the database before answering
    /// UNAVAILABLE (callers such as Envoy give up after about a second).
    #[arg(long, env = "KEYWARD_LOOKUP_TIMEOUT", default_value = "1s", value_parser = crate::config::parse_interval)]
    pub lookup_timeout: Duration,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// The outcome of validating one presented key.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The verdict.
    pub code: ValidationCode,
    /// The key, when one was found and may be described to the caller
    /// (VALID and INSUFFICIENT_SCOPE).
    pub key: Option<Arc<ApiKey>>,
}

/// Where a presented key came from, recorded as last-used data on success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    /// The client's IP address.
    pub ip: Option<&'a str>,
    /// The client's user agent.
    pub user_agent: Option<&'a str>,
}

/// Validates presented keys against the cache and the store.
#[derive(Debug)]
pub struct KeyValidator {
    store: Store,
    hasher: LookupHasher,
    settings: ValidatorSettings,
    cache: KeyCache,
    usage: UsageRecorder,
    clock: Clock,
    /// Microseconds after the clock's start of the last successful feed sync.
    synced_at: AtomicI64,
    /// Lookups that reached the database.
    database_lookups: AtomicU64,
    /// Misses being read from the database: concurrent misses of one hash
    /// wait for the same read.
    in_flight: Mutex<HashMap<LookupHash, Arc<Flight>, RandomState>>,
}

/// One database read shared by concurrent misses: `None` if it failed.
type Flight = tokio::sync::OnceCell<Option<Option<Arc<ApiKey>>>>;

impl KeyValidator {
    /// A validator over `store`, hashing with `hasher`.
    pub fn new(store: Store, hasher: LookupHasher, settings: ValidatorSettings) -> Self {
        Self {
            store,
            hasher,
            cache: KeyCache::new(settings.cache),
            settings,
            usage: UsageRecorder::default(),
            clock: Clock::new(),
            synced_at: AtomicI64::new(0),
            database_lookups: AtomicU64::new(0),
            in_flight: Mutex::default(),
        }
    }

    /// How many lookups reached the database (cache misses) so far.
    pub fn database_lookups(&self) -> u64 {
        self.database_lookups.load(Ordering::Relaxed)
    }

    /// How long a caller may reuse a verdict: what the propagation bound
    /// leaves after this replica's own feed delay.
    pub fn cache_hint(&self) -> Duration {
        PROPAGATION_BOUND.saturating_sub(self.settings.sync_interval)
    }

    /// The cache, for inspection.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    fn mark_synced(&self) {
        let now = self.clock.since_start(Instant::now());
        self.synced_at.store(now, Ordering::Relaxed);
    }

    /// Whether cached verdicts are past `stale_if_error` at `now` (the feed
    /// has not synced for that long: the database is unreachable).
    fn is_stale(&self, now: Instant) -> bool {
        let synced = self.synced_at.load(Ordering::Relaxed);
        self.clock.since_start(now) - synced > micros(self.settings.stale_if_error)
    }

    /// Looks a well-formed key up as of `now`: `None` if it is unknown. A
    /// database read moves `now` to when the read finished.
    async fn lookup(
        &self,
        presented: PresentedKey<'_>,
        now: &mut Instant,
    ) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let hash = self.hasher.hash(presented);
        let key = match self.cache.get(&hash, *now) {
            Cached::Key(key) if !self.is_stale(*now) => Some(key),
            Cached::Unknown if !self.is_stale(*now) => None,
            Cached::Key(_) | Cached::Unknown => return Err(ApiError::Unavailable),
            Cached::Miss => {
                let key = self.read_through(hash).await?;
                *now = Instant::now();
                key
            }
        };
        // The prefix says which kind the key was issued as; a mismatch means a
        // forged prefix on a real body, which cannot happen without the body.
        Ok(key.filter(|key| key.kind == presented.kind()))
    }

    /// Reads a missed hash from the database and caches the answer; concurrent
    /// misses of the same hash share one read.
    async fn read_through(&self, hash: LookupHash) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let flight = Arc::clone(
            lock(&self.in_flight)
                .entry(hash)
                .or_insert_with(|| Arc::new(Flight::new())),
        );
        let answer = flight
            .get_or_init(|| async {
                self.database_lookups.fetch_add(1, Ordering::Relaxed);
                let read = self.cache.generation();
                let found = tokio::time::timeout(
                    self.settings.lookup_timeout,
                    self.store.find_by_lookup_hash(&hash),
                )
                .await;
                match found {
                    Ok(Ok(Some(key))) => {
                        let key = Arc::new(key);
                        self.cache.insert(hash, Arc::clone(&key), read);
                        Some(Some(key))
                    }
                    Ok(Ok(None)) => {
                        self.cache.insert_unknown(hash, read);
                        Some(None)
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "key lookup failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(timeout = ?self.settings.lookup_timeout, "key lookup timed out");
                        None
                    }
                }
            })
            .await
            .clone();
        {
            let mut in_flight = lock(&self.in_flight);
            if in_flight
                .get(&hash)
                .is_some_and(|current| Arc::ptr_eq(current, &flight))
            {
                in_flight.remove(&hash);
            }
        }
        answer.ok_or(ApiError::Unavailable)
    }

    /// Makes a change to `id` made on this replica visible at once.
    pub fn invalidate(&self, id: &KeyId) {
        self.cache.invalidate(id);
    }

    /// Makes a key created on this replica valid at once, even if its hash
    /// was remembered as unknown.
    pub fn key_created(&self) {
        self.cache.forget_unknown();
    }

    fn apply(&self, event: &KeyEvent) {
        match event.event_type {
            // A new key: its hash may be remembered as unknown. A copy cached
            // since its creation is current, so it stays.
            EventType::Created => self.cache.forget_unknown(),
            _ => self.cache.invalidate(&event.key_id),
        }
    }

    /// Validates a product (standard) key with the scopes it must hold.
    pub async fn validate(
        &self,
        raw: &str,
        required: &[Scope],
        client: ClientInfo<'_>,
    ) -> Result<Validation, ApiError> {
        let Ok(presented) = PresentedKey::parse(raw) else {
            return Ok(Validation {
                code: ValidationCode::Malformed,
                key: None,
            });
        };
        // The one clock read of a warm validation.
        let mut now = Instant::now();
        let Some(key) = self.lookup(presented, &mut now).await? else {
            return Ok(Validation {
                code: ValidationCode::NotFound,
                key: None,
            });
        };
        let code = key.verdict(required, || self.clock.utc(now));
        if code == ValidationCode::Valid {
            self.usage.record(&key, client, now);
        }
        let described = matches!(
            code,
            ValidationCode::Valid | ValidationCode::InsufficientScope
        );
        Ok(Validation {
            code,
            key: described.then_some(key),
        })
    }

    /// Writes pending last-used data to the database.
    pub async fn flush_usage(&self) {
        self.usage.flush(&self.store, &self.clock).await;
    }
}

/// Follows the KeyEvent feed every `sync_interval`, so changes made on other
/// replicas reach this replica's cache; each success marks the cache fresh.
/// Runs until dropped.
pub async fn follow_changes(validator: Arc<KeyValidator>) {
    let mut ticker = tokio::time::interval(validator.settings.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follower: Option<Follower> = None;
    let mut healthy = true;
    loop {
        ticker.tick().await;
        // Whether or not the feed answers, so that expiry follows the system
        // clock through an outage, a suspend or a clock step.
        validator.clock.anchor();
        match sync_once(&validator, &mut follower).await {
            Ok(()) => {
                validator.mark_synced();
                if !healthy {
                    tracing::info!("change feed reachable again");
                }
                healthy = true;
            }
            Err(error) => {
                if healthy {
                    tracing::warn!(%error, "change feed unreachable; serving cached verdicts for stale-if-error");
                }
                healthy = false;
            }
        }
    }
}

/// Where the feed follower is, and where it was during the re-read window.
#[derive(Debug)]
struct Follower {
    cursor: i64,
    history: VecDeque<(Instant, i64)>,
    /// Events of the re-read window already applied: each is applied once.
    applied: BTreeSet<i64>,
}

async fn sync_once(
    validator: &KeyValidator,
    follower: &mut Option<Follower>,
) -> Result<(), ApiError> {
    const BATCH: u32 = 1000;
    let Some(state) = follower else {
        // Start at the head: the cache is filled from the database afterwards.
        let cursor = validator.store.last_event_seq().await?;
        *follower = Some(Follower {
            cursor,
            history: VecDeque::from([(Instant::now(), cursor)]),
            applied: BTreeSet::new(),
        });
        return Ok(());
    };
    let now = Instant::now();
    while state
        .history
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > REREAD_WINDOW)
        && state.history.len() > 1
    {
        state.history.pop_front();
    }
    // Re-read from where the cursor was a window ago, to catch events whose
    // transactions committed late; apply only those not applied yet.
    let mut from = state.history.front().map_or(state.cursor, |(_, seq)| *seq);
    state.applied = state.applied.split_off(&(from + 1));
    loop {
        let events = validator.store.events_after(from, BATCH).await?;
        for event in &events {
            if state.applied.insert(event.seq) {
                validator.apply(event);
            }
        }
        let Some(last) = events.last() else { break };
        from = last.seq;
        state.cursor = state.cursor.max(last.seq);
        if events.len() < BATCH as usize {
            break;
        }
    }
    state.history.push_back((now, state.cursor));
    Ok(())
}

/// Authenticates admin API calls: an active admin key is allowed as its
/// organization; a valid standard key is forbidden; anything else is unknown.
#[derive(Debug, Clone)]
pub struct AdminValidator(pub Arc<KeyValidator>);

impl Validator for AdminValidator {
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        Box::pin(async move {
            let Ok(presented) = PresentedKey::parse(request.key) else {
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let mut at = Instant::now();
            let key = self.0.lookup(presented, &mut at).await.map_err(|error| {
                tracing::warn!(%error, "admin authentication unavailable");
                ValidatorError::unavailable(error.to_string())
            })?;
            let Some(key) = key else {
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let now = self.0.clock.utc(at);
            if key.authorizes_admin(now) {
                let client = ClientInfo {
                    ip: request.client_ip,
                    user_agent: request.user_agent,
                };
                self.0.usage.record(&key, client, at);
                return Ok(Verdict::Allow(identity(&key)));
            }
            if key.kind == KeyKind::Standard && key.verdict(&[], || now) == ValidationCode::Valid {
                return Ok(Verdict::Deny(Denial::Forbidden));
            }
            Ok(Verdict::Deny(Denial::Unauthenticated))
        })
    }
}

/// The identity a key grants, as the auth layer hands it to handlers.
pub fn identity(key: &ApiKey) -> Identity {
    Identity::new(IdentityDetails {
        key_id: key.id.to_string(),
        organization_id: key.organization_id.clone(),
        workspace_id: key.workspace_id.clone(),
        name: key.name.clone(),
        scopes: key.scopes.to_strings(),
        metadata: key.metadata.as_map().clone(),
        user_id: key.user_id.clone(),
        service_account_id: key.service_account_id.clone(),
    })
}

/// Coalesces last-used data in memory: at most one write per key per flush.
#[derive(Debug, Default)]
struct UsageRecorder {
    pending: Mutex<HashMap<KeyId, PendingUse, RandomState>>,
}

/// The latest use of a key since the last flush.
#[derive(Debug)]
struct PendingUse {
    /// Turned into wall-clock time at the flush, off the hot path.
    at: Instant,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl UsageRecorder {
    /// Notes a use. A key used again before the flush is updated in place,
    /// so the steady state allocates nothing.
    fn record(&self, key: &ApiKey, client: ClientInfo<'_>, at: Instant) {
        let ip = client.ip.filter(|ip| !ip.is_empty());
        let user_agent = client.user_agent.filter(|ua| !ua.is_empty());
        let mut pending = self.lock();
        if let Some(record) = pending.get_mut(&key.id) {
            record.at = at;
            if record.ip.as_deref() != ip {
                record.ip = ip.map(str::to_owned);
            }
            if record.user_agent.as_deref() != user_agent {
                record.user_agent = user_agent.map(str::to_owned);
            }
            return;
        }
        pending.insert(
            key.id.clone(),
            PendingUse {
                at,
                ip: ip.map(str::to_owned),
                user_agent: user_agent.map(str::to_owned),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, PendingUse, RandomState>> {
        lock(&self.pending)
    }

    async fn flush(&self, store: &Store, clock: &Clock) {
        let taken = std::mem::take(&mut *self.lock());
        if taken.is_empty() {
            return;
        }
        let batch: Vec<UsageRecord> = taken
            .iter()
            .map(|(key_id, used)| UsageRecord {
                key_id: key_id.clone(),
                at: clock.utc(used.at),
                ip: used.ip.clone(),
                user_agent: used.user_agent.clone(),
            })
            .collect();
        if let Err(error) = store.record_usage(&batch).await {
            tracing::warn!(%error, keys = batch.len(), "could not record key usage; will retry");
            let mut pending = self.lock();
            for (key_id, used) in taken {
                // Keep a newer observation made while the write was failing.
                pending.entry(key_id).or_insert(used);
            }
        }
    }
}

/// Wall-clock time read off the monotonic clock, so that a validation reads
/// the clock once. Re-anchored to the system clock on every tick of the feed
/// follower, successful or not (and at start), so it follows the system clock
/// to within a sync interval's drift.
#[derive(Debug)]
struct Clock {
    started: Instant,
    /// The system clock at `started`, in microseconds since the epoch.
    anchor: AtomicI64,
}

impl Clock {
    fn new() -> Self {
        let clock = Self {
            started: Instant::now(),
            anchor: AtomicI64::new(0),
        };
        clock.anchor();
        clock
    }

    fn anchor(&self) {
        // The monotonic reading first: a pause between the two reads then
        // makes this clock run early, so keys expire early, never late.
        let since = self.since_start(Instant::now());
        let utc = Utc::now().timestamp_micros();
        self.anchor.store(utc - since, Ordering::Relaxed);
    }

    /// Microseconds from the clock's start to `at`.
    fn since_start(&self, at: Instant) -> i64 {
        micros(at.saturating_duration_since(self.started))
    }

    fn utc(&self, at: Instant) -> DateTime<Utc> {
        let micros = self.anchor.load(Ordering::Relaxed) + self.since_start(at);
        DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Locks a mutex whose critical sections leave its data consistent even if a
/// holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
