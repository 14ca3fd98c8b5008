//! The validation path shared by `ValidateKey`, Envoy's `Check` and the admin
//! API's auth layer: parse (shape and checksum, no lookup) → BLAKE3 lookup
//! hash → in-memory cache → on a miss, one indexed database lookup → cache.
//!
//! The cache stays current through [`KeyValidator::announce`] (this
//! replica's changes, at once) and [`follow_changes`] (other replicas'
//! changes, through the KeyEvent feed). When the database is unreachable,
//! cached verdicts are served for `stale_if_error` after the last successful
//! feed sync; anything else is UNAVAILABLE, never valid.
//!
//! One job per module: this one is the validator; `feed` follows the change
//! feed; `usage` coalesces usage (last-used data, counts per minute); `clock` reads wall-clock time off
//! the monotonic clock; `admin_validator` authenticates the admin API.

mod admin_validator;
mod clock;
mod feed;
mod usage;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyward_auth::{Identity, IdentityDetails, SingleFlight, Throttle};
use keyward_core::{
    ApiKey, CreditsSpent, KeyId, LookupHash, LookupHasher, Policy, PresentedKey, ValidationCode,
};
use keyward_store::{EventType, KeyEvent, Store, StoreError};

pub use self::admin_validator::AdminValidator;
use self::clock::{Clock, micros};
pub use self::feed::follow_changes;
use self::usage::{FLUSH_TIMEOUT, UsageRecorder};
pub use self::usage::{FlushError, Flushed};
use crate::cache::{CacheSettings, Cached, CachedKey, Generation, KeyCache};
use crate::config::{parse_duration, parse_interval};
use crate::error::ApiError;
use crate::limits::{Call, Decision, LimitState, Limiter, LimiterSettings, Which};
use crate::metrics::{ValidationMetrics, ValidationPath};

/// The bound on how long a change takes to show in verdicts, here and through
/// a caller's cache: the feed interval plus the cache hint stays within it.
pub const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

/// How the validator caches and stays current: `keyward serve` flags, with
/// `KEYWARD_*` environment equivalents; `Default` is the flags' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ValidatorSettings {
    /// Cache limits.
    #[command(flatten)]
    pub cache: CacheSettings,
    /// How often the change feed is read, so other replicas' changes show here
    /// (keep it well under 1s: changes must show within 1s).
    #[arg(
        id = "sync_interval",
        long = "sync-interval",
        env = "KEYWARD_SYNC_INTERVAL",
        default_value = "250ms",
        value_parser = parse_interval
    )]
    pub sync_interval: Duration,
    /// While the database is unreachable, how long cached verdicts are still
    /// served after the last successful sync.
    #[arg(
        id = "stale_if_error",
        long = "stale-if-error",
        env = "KEYWARD_STALE_IF_ERROR",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub stale_if_error: Duration,
    /// Longest a cache miss or one read of the change feed waits for the
    /// database before giving up (a miss answers UNAVAILABLE; callers such
    /// as Envoy give up after about a second).
    #[arg(
        id = "lookup_timeout",
        long = "lookup-timeout",
        env = "KEYWARD_LOOKUP_TIMEOUT",
        default_value = "1s",
        value_parser = parse_interval
    )]
    pub lookup_timeout: Duration,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        crate::clap_defaults()
    }
}

/// What a committed change means for cached verdicts: the one rule for this
/// replica's own writes (announced by the admin API) and for the feed's
/// events (from other replicas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change<'a> {
    /// A key was created: its hash may be remembered as unknown.
    pub created: bool,
    /// This key changed or was deleted: its cached copy is stale.
    pub key: Option<&'a KeyId>,
}

impl<'a> Change<'a> {
    /// A new key. A copy cached since its creation is current, so none is
    /// dropped; unknown hashes are forgotten.
    pub fn created() -> Self {
        Self {
            created: true,
            key: None,
        }
    }

    /// A change to (or the deletion of) `id`.
    pub fn key(id: &'a KeyId) -> Self {
        Self {
            created: false,
            key: Some(id),
        }
    }

    /// A rotation of `old`: `old` changed and a new key exists.
    pub fn rotated(old: &'a KeyId) -> Self {
        Self {
            created: true,
            key: Some(old),
        }
    }

    /// What a feed event means.
    pub fn of(event: &'a KeyEvent) -> Self {
        match event.event_type {
            EventType::Created => Self::created(),
            _ => Self::key(&event.key_id),
        }
    }
}

/// The outcome of validating one presented key.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The verdict.
    pub code: ValidationCode,
    /// The key, when one was found and may be described to the caller
    /// (VALID and INSUFFICIENT_SCOPE).
    pub key: Option<Arc<CachedKey>>,
    /// The key has rate limits or credits: this verdict was for this one
    /// call, and no caller may reuse it.
    pub metered: bool,
    /// For a metered key's VALID, RATE_LIMITED or USAGE_EXCEEDED: the limit
    /// that decided (the refusing one, or the one with the least left).
    pub throttle: Option<Limited>,
}

/// The limit that decided a metered key's call: the limiter's state of it,
/// with the key's policy for its name and window. Nothing is copied on the
/// warm path; [`Limited::throttle`] builds what a client is told.
#[derive(Debug, Clone)]
pub struct Limited {
    /// The meter's state after the call.
    pub state: LimitState,
    /// The key's policy (the meter's name and window).
    pub policy: Arc<Policy>,
}

impl Limited {
    /// The meter's name: the rate limit's, or `credits`.
    pub fn name(&self) -> &str {
        match self.state.which {
            Which::RateLimit(index) => &self.policy.rate_limits.as_slice()[index].name,
            Which::Credits => "credits",
        }
    }

    /// The rate limit's window; `None` for credits.
    pub fn window(&self) -> Option<Duration> {
        match self.state.which {
            Which::RateLimit(index) => Some(self.policy.rate_limits.as_slice()[index].window),
            Which::Credits => None,
        }
    }

    /// Until the window ends (credits: until the refill); `None` for
    /// credits that are never refilled.
    pub fn reset(&self) -> Option<Duration> {
        match self.state.which {
            Which::RateLimit(_) => Some(self.state.reset),
            Which::Credits => Some(self.state.reset).filter(|reset| !reset.is_zero()),
        }
    }

    /// What the client is told: the RateLimit headers' values.
    pub fn throttle(&self) -> Throttle {
        Throttle {
            name: Arc::from(self.name()),
            limit: self.state.limit,
            remaining: self.state.remaining,
            reset: self.reset(),
            retry_after: self.state.retry_after,
            window: self.window(),
        }
    }
}

impl Validation {
    /// A verdict that names no key and spent nothing.
    pub(crate) fn bare(code: ValidationCode) -> Self {
        Self {
            code,
            key: None,
            metered: false,
            throttle: None,
        }
    }
}

/// Where a presented key came from: checked against the key's policy,
/// recorded as last-used data on success, and the entrypoint, counted in the
/// metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    /// The client's IP address as text, recorded as `last_used_ip`.
    pub ip: Option<&'a str>,
    /// The client's IP address, checked against the key's allowlist: `None`
    /// (unknown) fails a key that has one.
    pub address: Option<IpAddr>,
    /// The client's user agent.
    pub user_agent: Option<&'a str>,
    /// The entrypoint that asked (the `path` label of
    /// `keyward_validations_total`).
    pub path: ValidationPath,
    /// Units this call spends of a metered key's rate limits and credits;
    /// `None`: each limit's own cost, and one credit.
    pub cost: Option<u64>,
    /// The caller's idempotency key: a retry with the same one is charged
    /// once.
    pub idempotency_key: Option<&'a str>,
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
    /// wait for the same read, which is dropped when they all go away. A
    /// read is shared only within the cache generation it began in: a miss
    /// that arrives after an invalidation starts a read of its own, since
    /// the one under way may have begun before the change committed.
    in_flight: SingleFlight<(LookupHash, Generation), Read>,
    /// Counters of everything above, exported by `/metrics`.
    metrics: ValidationMetrics,
    /// Counts metered keys' calls (rate limits, credits, idempotency).
    limiter: Limiter,
}

/// One database read shared by concurrent misses: `None` if it failed.
type Read = Option<Option<Arc<CachedKey>>>;

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
            in_flight: SingleFlight::new(),
            metrics: ValidationMetrics::default(),
            limiter: Limiter::new(LimiterSettings::default()),
        }
    }

    /// This validator counting metered keys with `limiter` (by default, a
    /// limiter counting in memory with the default settings).
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// The limiter counting metered keys.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Whether this replica must refuse metered keys (rate limits,
    /// credits): its database is one several replicas may share
    /// (PostgreSQL, MySQL/MariaDB), it has no Redis to count with the others
    /// and the operator did not accept per-replica limits
    /// (`--per-replica-limits`). Several replicas each counting alone would
    /// each admit a key's whole limit.
    pub fn refuses_metered_keys(&self) -> bool {
        self.store.is_shared()
            && !self.limiter.uses_redis()
            && !self.limiter.settings().per_replica_limits
    }

    /// The validation path's counters.
    pub fn metrics(&self) -> &ValidationMetrics {
        &self.metrics
    }

    /// How long ago the change feed was last read successfully (since the
    /// validator was built, before the first read).
    pub fn since_last_sync(&self) -> Duration {
        let now = self.clock.since_start(Instant::now());
        let synced = self.synced_at.load(Ordering::Relaxed);
        Duration::from_micros(u64::try_from(now - synced).unwrap_or(0))
    }

    /// Counts applied feed events and how long after their commit they
    /// were applied.
    fn note_applied(&self, events: &[KeyEvent]) {
        if events.is_empty() {
            return;
        }
        let applied_at = self.clock.utc(Instant::now());
        for event in events {
            let lag = (applied_at - event.at).to_std().unwrap_or_default();
            self.metrics.feed_lag.observe(lag);
        }
        self.metrics.feed_events.inc_by(events.len() as u64);
    }

    /// How many keys have last-used data not yet written.
    pub fn usage_pending(&self) -> usize {
        self.usage.pending()
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

    /// How long a caller may reuse `validation`'s verdict: the
    /// [`cache_hint`](Self::cache_hint), cut at the key's `expires_at` so
    /// that no caller reuses "valid" past it; zero for a metered key (each
    /// call spends).
    pub fn cache_hint_for(&self, validation: &Validation) -> Duration {
        if validation.metered {
            return Duration::ZERO;
        }
        let hint = self.cache_hint();
        match validation.key.as_ref().and_then(|key| key.expires_at) {
            Some(expires_at) => until_expiry(hint, expires_at, self.clock.utc(Instant::now())),
            None => hint,
        }
    }

    /// The cache, for inspection.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// How many distinct missed hashes are being read from the database.
    pub fn in_flight(&self) -> usize {
        self.in_flight.in_flight()
    }

    fn mark_synced(&self) {
        let now = self.clock.since_start(Instant::now());
        self.synced_at.store(now, Ordering::Relaxed);
    }

    /// Whether cached verdicts are served now: the feed synced within
    /// `stale_if_error`. The same test as every verdict's, so validation's
    /// health and its answers cannot disagree.
    pub fn answers_from_cache(&self) -> bool {
        !self.is_stale(Instant::now())
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
    ) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let hash = self.hasher.hash(presented);
        let key = match self.cache.get(&hash, *now) {
            Cached::Key(key) if !self.is_stale(*now) => {
                self.metrics.cache_hits.inc();
                Some(key)
            }
            Cached::Unknown if !self.is_stale(*now) => {
                self.metrics.negative_cache_hits.inc();
                None
            }
            Cached::Key(_) | Cached::Unknown => return Err(ApiError::Unavailable),
            Cached::Miss => {
                self.metrics.cache_misses.inc();
                // Boxed: the database read's state would otherwise make
                // every validation's future (moved on each call) kilobytes.
                let key = Box::pin(self.read_through(hash)).await?;
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
    async fn read_through(&self, hash: LookupHash) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let read = self.cache.generation();
        let answer = self.in_flight.run((hash, read), || async {
            self.database_lookups.fetch_add(1, Ordering::Relaxed);
            let found = tokio::time::timeout(
                self.settings.lookup_timeout,
                self.store.find_by_lookup_hash(&hash),
            )
            .await;
            match found {
                Ok(Ok(Some(key))) => {
                    let key = Arc::new(CachedKey::new(key));
                    self.cache.insert(hash, Arc::clone(&key), read);
                    Some(Some(key))
                }
                Ok(Ok(None)) => {
                    self.cache.insert_unknown(hash, read);
                    Some(None)
                }
                Ok(Err(error)) => {
                    self.metrics.lookup_errors.inc();
                    tracing::warn!(%error, "key lookup failed");
                    None
                }
                Err(_) => {
                    self.metrics.lookup_errors.inc();
                    tracing::warn!(timeout = ?self.settings.lookup_timeout, "key lookup timed out");
                    None
                }
            }
        });
        answer.await.ok_or(ApiError::Unavailable)
    }

    /// Makes a committed change visible in this replica's verdicts at once:
    /// the admin API announces its own writes here, and the feed follower
    /// every event from other replicas.
    pub fn announce(&self, change: Change<'_>) {
        if let Some(id) = change.key {
            self.cache.invalidate(id);
            self.limiter.forget(id);
        }
        if change.created {
            self.cache.forget_unknown();
        }
    }

    /// Validates a product (standard) key with the scopes it must hold (parsed,
    /// or borrowed from the request and [`Scope::check`](keyward_core::Scope::check)ed);
    /// counts the verdict under `client.path`.
    pub async fn validate(
        &self,
        raw: &str,
        required: &[&str],
        client: ClientInfo<'_>,
    ) -> Result<Validation, ApiError> {
        let Ok(presented) = PresentedKey::parse(raw) else {
            self.metrics
                .verdict(client.path, ValidationCode::Malformed, Duration::ZERO);
            return Ok(Validation::bare(ValidationCode::Malformed));
        };
        // The one clock read of a warm validation. A miss moves `now` to the
        // end of its database read, so `now - start` is the validation's
        // time for the metrics: zero for a hit (no I/O, well under a
        // microsecond), the read for a miss, with no clock read of its own.
        let start = Instant::now();
        let mut now = start;
        let found = match self.lookup(presented, &mut now).await {
            Ok(found) => found,
            Err(error) => {
                self.metrics.error(client.path);
                return Err(error);
            }
        };
        // (A hit did not move `now`: no subtraction on the hot path.)
        let took = if now == start {
            Duration::ZERO
        } else {
            now.saturating_duration_since(start)
        };
        let Some(key) = found else {
            self.metrics
                .verdict(client.path, ValidationCode::NotFound, took);
            return Ok(Validation::bare(ValidationCode::NotFound));
        };
        let code = key.verdict(required, client.address, || self.clock.utc(now));
        let metered = key.policy.as_ref().filter(|policy| policy.is_metered());
        // Charged only once everything else passed: a refused call spends
        // nothing.
        let (code, throttle) = match metered {
            Some(policy) if code == ValidationCode::Valid => {
                self.charge(&key, policy, client, now).await
            }
            _ => (code, None),
        };
        self.metrics.verdict(client.path, code, took);
        if code.names_a_key() {
            self.usage
                .record(&key, code, client, now, self.clock.minute_start(now));
        }
        let described = matches!(
            code,
            ValidationCode::Valid | ValidationCode::InsufficientScope
        );
        Ok(Validation {
            code,
            metered: metered.is_some(),
            key: described.then_some(key),
            throttle,
        })
    }

    /// Charges one valid call of a metered key: its verdict (VALID,
    /// RATE_LIMITED or USAGE_EXCEEDED) and the limit that decided.
    async fn charge(
        &self,
        key: &ApiKey,
        policy: &Arc<Policy>,
        client: ClientInfo<'_>,
        now: Instant,
    ) -> (ValidationCode, Option<Limited>) {
        let call = Call {
            cost: client.cost,
            idempotency_key: client.idempotency_key,
            now_ms: self.clock.unix_millis(now),
        };
        let charge = self.limiter.charge(key, policy, call).await;
        let code = match charge.decision {
            Decision::Admitted => ValidationCode::Valid,
            Decision::RateLimited => ValidationCode::RateLimited,
            Decision::UsageExceeded => ValidationCode::UsageExceeded,
        };
        let limited = charge.state.map(|state| Limited {
            state,
            policy: Arc::clone(policy),
        });
        (code, limited)
    }

    /// Writes pending usage (last-used data and counts per minute and
    /// outcome) to the database, waiting at most
    /// [`FLUSH_TIMEOUT`](usage::FLUSH_TIMEOUT): what was written.
    /// A failure is logged here; its batch stays pending for the next flush,
    /// also when this future is dropped mid-way (a shutdown that gives up),
    /// so the periodic flusher can be aborted and a final flush still sends it.
    pub async fn flush_usage(&self) -> Result<Flushed, FlushError> {
        self.flush_credit_spends().await;
        let flushed = self
            .usage
            .flush(&self.store, &self.clock, FLUSH_TIMEOUT)
            .await;
        match &flushed {
            Ok(Flushed { keys: 0, .. }) => {}
            Ok(written) => {
                self.metrics.usage_flushes.inc();
                self.metrics.usage_flushed_keys.inc_by(written.keys as u64);
                self.metrics
                    .usage_flushed_counts
                    .inc_by(written.counts as u64);
            }
            Err(error) => {
                self.metrics.usage_flush_failures.inc();
                tracing::warn!(%error, keys = self.usage.pending(), "key usage not recorded; will retry");
            }
        }
        flushed
    }

    /// Adds the credits admitted calls spent since the last flush to the
    /// database (one transaction). A write that fails, times out or is
    /// dropped puts its batch back for the next flush.
    async fn flush_credit_spends(&self) {
        struct Pending<'a> {
            limiter: &'a Limiter,
            batch: Vec<(KeyId, CreditsSpent)>,
        }
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if !self.batch.is_empty() {
                    self.limiter.restore_spends(std::mem::take(&mut self.batch));
                }
            }
        }
        let mut pending = Pending {
            limiter: &self.limiter,
            batch: self.limiter.take_spends(),
        };
        if pending.batch.is_empty() {
            return;
        }
        let written =
            tokio::time::timeout(FLUSH_TIMEOUT, self.store.add_credit_spends(&pending.batch)).await;
        match written {
            Ok(Ok(())) => pending.batch.clear(),
            Ok(Err(error)) => {
                tracing::warn!(%error, keys = pending.batch.len(), "credits spent not recorded; will retry");
            }
            Err(_) => {
                tracing::warn!(
                    keys = pending.batch.len(),
                    "credits spent not recorded in time; will retry"
                );
            }
        }
    }

    /// Deletes at most `limit` usage counts whose minute started more than
    /// `retention` ago (by this replica's clock): how many were deleted.
    /// Failures are logged here; the next prune tries again.
    pub async fn prune_usage(&self, retention: Duration, limit: u64) -> Result<u64, StoreError> {
        let now = self.clock.utc(Instant::now()).timestamp();
        let before = now.saturating_sub(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX));
        let pruned = self.store.prune_usage(before, limit).await;
        match &pruned {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "old usage counts pruned"),
            Err(error) => tracing::warn!(%error, "old usage counts not pruned; will retry"),
        }
        pruned
    }
}

/// `hint`, or less when the key expires sooner (zero once it has expired).
fn until_expiry(hint: Duration, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (expires_at - now)
        .to_std()
        .map_or(Duration::ZERO, |left| hint.min(left))
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
        environment: key.environment,
        expires_at: key.expires_at,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Keys in a real store, for the validation modules' tests.

    use keyward_core::{
        Actor, ActorKind, AllowedCidrs, ApiKey, ApiKeySecret, Description, Environment, KeyKind,
        KeyName, LookupHasher, Metadata, OrganizationId, Policy, Scopes,
    };
    use keyward_store::{KeyMaterial, NewKey, Store};

    use super::{KeyValidator, ValidatorSettings};

    /// A validator over `store` with the default settings.
    pub(crate) fn validator(store: &Store) -> KeyValidator {
        KeyValidator::new(
            store.clone(),
            LookupHasher::derived(),
            ValidatorSettings::default(),
        )
    }

    /// A standard key of organization `acme`, and its secret.
    pub(crate) async fn create_key(store: &Store) -> (ApiKey, ApiKeySecret) {
        create(store, KeyKind::Standard, Policy::default()).await
    }

    /// An admin key of organization `acme`, and its secret.
    pub(crate) async fn create_admin_key(store: &Store) -> (ApiKey, ApiKeySecret) {
        create(store, KeyKind::Admin, Policy::default()).await
    }

    /// A key of `kind` usable only from `cidrs`, and its secret.
    pub(crate) async fn create_limited_key(
        store: &Store,
        kind: KeyKind,
        cidrs: &[&str],
    ) -> (ApiKey, ApiKeySecret) {
        let policy = Policy {
            allowed_cidrs: AllowedCidrs::parse(cidrs).expect("valid ranges"),
            ..Policy::default()
        };
        create(store, kind, policy).await
    }

    async fn create(store: &Store, kind: KeyKind, policy: Policy) -> (ApiKey, ApiKeySecret) {
        let organization = OrganizationId::parse("acme").expect("a valid organization");
        store
            .ensure_organization(&organization)
            .await
            .expect("an organization");
        let secret = ApiKeySecret::generate(kind, Environment::Live);
        let key = store
            .create_key(NewKey {
                organization_id: organization,
                workspace_id: None,
                name: KeyName::parse("k").expect("a valid name"),
                description: Description::default(),
                scopes: Scopes::default(),
                metadata: Metadata::default(),
                secret: KeyMaterial::new(&LookupHasher::derived(), &secret),
                created_by: Actor {
                    kind: ActorKind::User,
                    id: "u".to_owned(),
                },
                user_id: None,
                service_account_id: None,
                expires_at: None,
                policy,
            })
            .await
            .expect("a key");
        (key, secret)
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{ApiKeySecret, Environment, KeyKind};
    use keyward_store::testing::{self, Backend};
    use sea_orm::{ConnectionTrait, TransactionTrait};

    use super::test_support::{create_key, create_limited_key, validator};
    use super::*;

    #[test]
    fn settings_come_from_flags_with_the_documented_defaults() {
        use clap::Parser;

        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            validator: ValidatorSettings,
        }
        let defaults = ValidatorSettings::default();
        assert_eq!(defaults.sync_interval, Duration::from_millis(250));
        assert_eq!(defaults.stale_if_error, Duration::from_secs(60));
        assert_eq!(defaults.lookup_timeout, Duration::from_secs(1));
        assert_eq!(defaults.cache.capacity, 100_000);
        let parsed = Flags::try_parse_from([
            "x",
            "--sync-interval",
            "100ms",
            "--stale-if-error",
            "0s",
            "--cache-max-age",
            "2s",
        ])
        .expect("valid flags")
        .validator;
        assert_eq!(parsed.sync_interval, Duration::from_millis(100));
        assert_eq!(parsed.stale_if_error, Duration::ZERO);
        assert_eq!(parsed.cache.max_age, Duration::from_secs(2));
        for bad in [["--sync-interval", "0ms"], ["--lookup-timeout", "1h"]] {
            assert!(
                Flags::try_parse_from(["x", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_cache_hint_never_reaches_past_the_keys_expiry() {
        let now = Utc::now();
        let hint = Duration::from_millis(750);
        let at = |millis| now + chrono::Duration::milliseconds(millis);
        assert_eq!(until_expiry(hint, at(10_000), now), hint);
        assert_eq!(until_expiry(hint, at(300), now), Duration::from_millis(300));
        assert_eq!(until_expiry(hint, at(0), now), Duration::ZERO);
        assert_eq!(until_expiry(hint, at(-5), now), Duration::ZERO);
    }

    #[test]
    fn a_feed_event_means_what_the_same_local_write_means() {
        let id = KeyId::generate();
        assert_eq!(
            Change::created(),
            Change {
                created: true,
                key: None
            }
        );
        assert_eq!(
            Change::key(&id),
            Change {
                created: false,
                key: Some(&id)
            }
        );
        assert_eq!(
            Change::rotated(&id),
            Change {
                created: true,
                key: Some(&id)
            }
        );
    }

    #[tokio::test]
    async fn announced_changes_show_at_once() {
        testing::run(Backend::Sqlite, |store| async move {
            let validator = validator(&store);
            let (key, secret) = create_key(&store).await;
            let check = || validator.validate(secret.expose(), &[], ClientInfo::default());
            assert_eq!(
                check().await.expect("a verdict").code,
                ValidationCode::Valid
            );
            assert_eq!(validator.database_lookups(), 1);
            assert_eq!(
                check().await.expect("a verdict").code,
                ValidationCode::Valid
            );
            assert_eq!(validator.database_lookups(), 1, "the second is a hit");
            store
                .archive_key("acme", &key.id, &key.created_by)
                .await
                .expect("archived");
            validator.announce(Change::key(&key.id));
            assert_eq!(
                check().await.expect("a verdict").code,
                ValidationCode::Archived
            );

            // An unknown hash is remembered until a key is created.
            let unknown = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
            let ask = || validator.validate(unknown.expose(), &[], ClientInfo::default());
            assert_eq!(
                ask().await.expect("a verdict").code,
                ValidationCode::NotFound
            );
            let lookups = validator.database_lookups();
            assert_eq!(
                ask().await.expect("a verdict").code,
                ValidationCode::NotFound
            );
            assert_eq!(validator.database_lookups(), lookups);
            validator.announce(Change::created());
            ask().await.expect("a verdict");
            assert_eq!(validator.database_lookups(), lookups + 1);
        })
        .await;
    }

    #[tokio::test]
    async fn an_allowlist_is_checked_on_hits_and_misses_and_fails_closed() {
        testing::run(Backend::Sqlite, |store| async move {
            let validator = validator(&store);
            let (_, secret) =
                create_limited_key(&store, KeyKind::Standard, &["203.0.113.0/24"]).await;
            for round in ["miss", "hit"] {
                for (address, expected) in [
                    (Some("203.0.113.9"), ValidationCode::Valid),
                    (Some("198.51.100.1"), ValidationCode::IpNotAllowed),
                    // No address: fail closed.
                    (None, ValidationCode::IpNotAllowed),
                ] {
                    let client = ClientInfo {
                        ip: address,
                        address: address.map(|a| a.parse().expect("an address")),
                        user_agent: None,
                        path: ValidationPath::ValidateKey,
                        cost: None,
                        idempotency_key: None,
                    };
                    let verdict = validator
                        .validate(secret.expose(), &[], client)
                        .await
                        .expect("a verdict");
                    assert_eq!(verdict.code, expected, "{address:?} ({round})");
                    // A refused address learns nothing of the key.
                    assert_eq!(verdict.key.is_some(), expected == ValidationCode::Valid);
                }
            }
            assert_eq!(validator.database_lookups(), 1, "later calls were hits");
        })
        .await;
    }

    /// A validator whose database reads wait an hour before they time out.
    fn patient_validator(store: &Store) -> KeyValidator {
        KeyValidator::new(
            store.clone(),
            LookupHasher::derived(),
            ValidatorSettings {
                lookup_timeout: Duration::from_secs(3600),
                ..ValidatorSettings::default()
            },
        )
    }

    /// Every read of `api_keys` waits (behind this transaction's exclusive
    /// lock) until the transaction ends.
    async fn block_key_reads(store: &Store) -> sea_orm::DatabaseTransaction {
        let blocker = store.connection().begin().await.expect("a transaction");
        blocker
            .execute_unprepared("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("the lock");
        blocker
    }

    /// Polls `misses` until the validator has started `lookups` database
    /// reads in all; none may answer meanwhile.
    async fn until_lookups<F: Future + Unpin>(
        validator: &KeyValidator,
        misses: &mut [F],
        lookups: u64,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while validator.database_lookups() < lookups {
            assert!(
                Instant::now() < deadline,
                "{} of {lookups} lookups started",
                validator.database_lookups()
            );
            for miss in misses.iter_mut() {
                let polled = tokio::time::timeout(Duration::from_millis(1), miss).await;
                assert!(polled.is_err(), "a blocked lookup never answers");
            }
        }
    }

    /// A miss that arrives after a change does not wait for a read that
    /// began before it: that read may predate the change's commit, and
    /// sharing its answer would serve the old verdict for as long as the
    /// read takes, past the propagation bound.
    #[tokio::test]
    async fn a_miss_after_a_change_does_not_share_a_read_that_began_before_it() {
        testing::run(Backend::Postgres, |store| async move {
            let validator = patient_validator(&store);
            let (key, secret) = create_key(&store).await;
            let blocker = block_key_reads(&store).await;
            let miss = || Box::pin(validator.validate(secret.expose(), &[], ClientInfo::default()));
            let mut misses = vec![miss()];
            until_lookups(&validator, &mut misses, 1).await;
            // Unchanged: a second miss waits for the same read.
            misses.push(miss());
            until_lookups(&validator, &mut misses, 1).await;
            assert_eq!(validator.database_lookups(), 1);
            validator.announce(Change::key(&key.id));
            misses.push(miss());
            until_lookups(&validator, &mut misses, 2).await;
            assert_eq!(validator.in_flight(), 2, "one read per generation");
            blocker.rollback().await.expect("released");
            for miss in misses {
                assert_eq!(miss.await.expect("a verdict").code, ValidationCode::Valid);
            }
            assert_eq!(validator.database_lookups(), 2);
            assert_eq!(validator.in_flight(), 0);
        })
        .await;
    }

    /// Misses against a database that never answers (every read of
    /// `api_keys` waits behind another transaction's exclusive lock), whose
    /// callers all go away (reset streams, expired `grpc-timeout`s), leave
    /// nothing in flight; concurrent misses of one key share one read.
    #[tokio::test]
    async fn dropped_misses_against_a_store_that_never_answers_leave_nothing_in_flight() {
        testing::run(Backend::Postgres, |store| async move {
            let validator = patient_validator(&store);
            let blocker = block_key_reads(&store).await;
            let secrets: Vec<ApiKeySecret> = (0..8)
                .map(|_| ApiKeySecret::generate(KeyKind::Standard, Environment::Live))
                .collect();
            let mut misses: Vec<_> = secrets
                .iter()
                .chain(std::iter::repeat_n(&secrets[0], 4))
                .map(|secret| {
                    Box::pin(validator.validate(secret.expose(), &[], ClientInfo::default()))
                })
                .collect();
            until_lookups(&validator, &mut misses, 8).await;
            assert_eq!(validator.in_flight(), 8);
            assert_eq!(validator.database_lookups(), 8, "one read per distinct key");
            drop(misses);
            assert_eq!(validator.in_flight(), 0);
            blocker.rollback().await.expect("released");
            // The database answers again: a new miss reads afresh.
            let verdict = validator
                .validate(secrets[0].expose(), &[], ClientInfo::default())
                .await
                .expect("a verdict");
            assert_eq!(verdict.code, ValidationCode::NotFound);
            assert_eq!(validator.in_flight(), 0);
        })
        .await;
    }
}
