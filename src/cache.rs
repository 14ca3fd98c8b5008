//! The in-memory key cache of the validation path: bounded positive entries
//! by lookup hash, a bounded negative cache for unknown hashes, and
//! invalidation by key id (from this replica's mutations and the change feed).

use std::collections::HashMap;
use std::mem::size_of;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use keyward_auth::sync::lock;
use keyward_core::{ApiKey, KeyId, LookupHash};

use crate::config::parse_interval;

/// Cache limits: `keyward serve` flags, with `KEYWARD_*` environment
/// equivalents; `Default` is the flags' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct CacheSettings {
    /// Most keys held in the validation cache (eviction beyond it).
    #[arg(
        id = "cache_capacity",
        long = "cache-capacity",
        env = "KEYWARD_CACHE_CAPACITY",
        default_value_t = 100_000,
        value_parser = at_least_one()
    )]
    pub capacity: usize,
    /// Most memory the cached keys may hold, in bytes, as estimated from each
    /// key's strings, scopes and metadata and its encoded ValidateKey
    /// description (eviction beyond it): one key can weigh ~80 KB, so the key
    /// count alone does not bound memory. The default holds the default
    /// 100,000 keys of a typical size.
    #[arg(
        id = "cache_max_bytes",
        long = "cache-max-bytes",
        env = "KEYWARD_CACHE_MAX_BYTES",
        default_value_t = 128 * 1024 * 1024,
        value_parser = at_least_one()
    )]
    pub max_bytes: usize,
    /// Most unknown key hashes remembered (so floods of random keys stay off the database).
    #[arg(
        id = "negative_cache_capacity",
        long = "negative-cache-capacity",
        env = "KEYWARD_NEGATIVE_CACHE_CAPACITY",
        default_value_t = 100_000,
        value_parser = at_least_one()
    )]
    pub negative_capacity: usize,
    /// How long an unknown key hash is remembered.
    #[arg(
        id = "negative_cache_ttl",
        long = "negative-cache-ttl",
        env = "KEYWARD_NEGATIVE_CACHE_TTL",
        default_value = "5s",
        value_parser = parse_interval
    )]
    pub negative_ttl: Duration,
    /// Longest a cached key is served before it is read again: a safety net
    /// under the change feed.
    #[arg(
        id = "cache_max_age",
        long = "cache-max-age",
        env = "KEYWARD_CACHE_MAX_AGE",
        default_value = "30s",
        value_parser = parse_interval
    )]
    pub max_age: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        crate::clap_defaults()
    }
}

/// A count that must be at least one (a capacity).
pub(crate) fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A key as the validation path holds it: the record, and what
/// `ValidateKey` answers about it, encoded on first use and copied into
/// every answer after that (`validation_api::wire`). A change to the key is
/// a new `CachedKey`, so the encoding never outlives its version.
#[derive(Debug)]
pub struct CachedKey {
    key: ApiKey,
    description: OnceLock<Bytes>,
}

impl CachedKey {
    /// `key`, its description not encoded yet.
    pub fn new(key: ApiKey) -> Self {
        Self {
            key,
            description: OnceLock::new(),
        }
    }

    /// The key's description, made by `encode` the first time.
    pub fn description(&self, encode: impl FnOnce(&ApiKey) -> Bytes) -> &Bytes {
        self.description.get_or_init(|| encode(&self.key))
    }
}

impl Deref for CachedKey {
    type Target = ApiKey;

    fn deref(&self) -> &ApiKey {
        &self.key
    }
}

impl From<ApiKey> for CachedKey {
    fn from(key: ApiKey) -> Self {
        Self::new(key)
    }
}

/// What the cache knows of a hash.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The key, as read at most `max_age` ago.
    Key(Arc<CachedKey>),
    /// No key has this hash (as of at most `negative_ttl` ago).
    Unknown,
    /// Ask the database.
    Miss,
}

/// A snapshot of the cache's invalidation count, taken before a database
/// read, so that a read racing with a change is not cached (nor shared with
/// a caller that arrived after the change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation(u64);

#[derive(Debug)]
struct Entry {
    key: Arc<CachedKey>,
    read_at: Instant,
    /// [`weight`] of this entry, kept so that removal needs no recount.
    weight: usize,
}

/// The maps use foldhash, seeded per process: a lookup hash is already
/// uniform, and SipHash would cost a good part of a warm validation.
#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<LookupHash, Entry, RandomState>,
    by_id: HashMap<KeyId, LookupHash, RandomState>,
    unknown: HashMap<LookupHash, Instant, RandomState>,
    generation: u64,
    /// Sum of the cached keys' weights.
    bytes: usize,
}

/// The key cache. All operations take one short lock.
#[derive(Debug)]
pub struct KeyCache {
    settings: CacheSettings,
    inner: Mutex<Inner>,
}

impl KeyCache {
    /// An empty cache with these limits.
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        lock(&self.inner)
    }

    /// Looks a hash up as of `now`.
    pub fn get(&self, hash: &LookupHash, now: Instant) -> Cached {
        let inner = self.lock();
        if let Some(entry) = inner.by_hash.get(hash) {
            if now.duration_since(entry.read_at) < self.settings.max_age {
                return Cached::Key(Arc::clone(&entry.key));
            }
        } else if let Some(seen) = inner.unknown.get(hash) {
            if now.duration_since(*seen) < self.settings.negative_ttl {
                return Cached::Unknown;
            }
        }
        Cached::Miss
    }

    /// The current generation, to pass back to `insert` / `insert_unknown`.
    pub fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// Caches what a database read found, unless something was invalidated
    /// since `read` was taken (the read may predate the change). Evicts
    /// until both the key count and the byte budget hold the new key; a key
    /// heavier than the whole budget is not cached.
    pub fn insert(&self, hash: LookupHash, key: Arc<CachedKey>, read: Generation) {
        let weight = weight(&key);
        let mut inner = self.lock();
        if inner.generation != read.0 {
            return;
        }
        inner.unknown.remove(&hash);
        inner.remove(&hash);
        if weight > self.settings.max_bytes {
            return;
        }
        while inner.by_hash.len() >= self.settings.capacity
            || inner.bytes + weight > self.settings.max_bytes
        {
            if !inner.evict_one() {
                break;
            }
        }
        inner.bytes += weight;
        inner.by_id.insert(key.id.clone(), hash);
        inner.by_hash.insert(
            hash,
            Entry {
                key,
                read_at: Instant::now(),
                weight,
            },
        );
    }

    /// Remembers that no key has `hash`, unless a key was created since `read`.
    pub fn insert_unknown(&self, hash: LookupHash, read: Generation) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != read.0 {
            return;
        }
        if inner.unknown.len() >= self.settings.negative_capacity {
            let ttl = self.settings.negative_ttl;
            inner
                .unknown
                .retain(|_, seen| now.duration_since(*seen) < ttl);
            if inner.unknown.len() >= self.settings.negative_capacity {
                // Still full of fresh entries (a flood): forget them all
                // rather than grow. The flood costs at most one lookup per key
                // per negative_capacity keys.
                inner.unknown.clear();
            }
        }
        inner.unknown.insert(hash, now);
    }

    /// Forgets a key that changed.
    pub fn invalidate(&self, id: &KeyId) {
        let mut inner = self.lock();
        inner.generation += 1;
        if let Some(hash) = inner.by_id.get(id).copied() {
            inner.remove(&hash);
        }
    }

    /// Forgets every cached key: a change happened that cannot be tied to
    /// one key (an unreadable feed event).
    pub fn invalidate_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.by_hash.clear();
        inner.by_id.clear();
        inner.bytes = 0;
    }

    /// Forgets every unknown hash: a key was created, and it may be one of them.
    pub fn forget_unknown(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.unknown.clear();
    }

    /// Number of cached keys and of remembered unknown hashes.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.by_hash.len(), inner.unknown.len())
    }

    /// The estimated memory held by cached keys (their [`weight`]s), in bytes.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

impl Inner {
    /// Removes the key cached under `hash`, if any, from both maps.
    fn remove(&mut self, hash: &LookupHash) {
        if let Some(entry) = self.by_hash.remove(hash) {
            self.by_id.remove(&entry.key.id);
            self.bytes -= entry.weight;
        }
    }

    /// Evicts one entry; `false` if there is none. The maps' order is
    /// randomly seeded, which makes this random eviction: no bookkeeping on
    /// the hot path.
    fn evict_one(&mut self) -> bool {
        let Some(hash) = self.by_hash.keys().next().copied() else {
            return false;
        };
        self.remove(&hash);
        true
    }
}

/// An estimate of the memory one cached key holds: its entries in both maps,
/// the shared `ApiKey` and every string, scope and metadata entry it owns.
pub fn weight(key: &ApiKey) -> usize {
    let text = |s: &str| s.len();
    let optional = |s: &Option<String>| s.as_deref().map_or(0, text);
    let slots = size_of::<LookupHash>()
        + size_of::<Entry>()
        + size_of::<KeyId>() * 2
        + size_of::<LookupHash>();
    // An Arc's two counters and the record itself.
    slots
        + 2 * size_of::<usize>()
        + size_of::<CachedKey>()
        + description_weight(key)
        + text(key.id.as_str()) * 2
        + text(&key.organization_id)
        + optional(&key.workspace_id)
        + text(&key.name)
        + text(&key.description)
        + key.scopes.as_slice().len() * size_of::<String>()
        + key.scopes.as_slice().iter().map(|s| text(s.as_str())).sum::<usize>()
        // A B-tree entry: the pair, plus about a pointer of node overhead.
        + key
            .metadata
            .as_map()
            .iter()
            .map(|(k, v)| 2 * size_of::<String>() + size_of::<usize>() + k.len() + v.len())
            .sum::<usize>()
        + text(&key.prefix)
        + text(&key.partial_key_hint)
        + text(&key.created_by.id)
        + optional(&key.user_id)
        + optional(&key.service_account_id)
        + optional(&key.last_used_ip)
        // A policy: its Arc, the allowlist's canonical list and ranges, and
        // the rate limits with their names.
        + key.policy.as_ref().map_or(0, |policy| {
            2 * size_of::<usize>()
                + size_of::<keyward_core::Policy>()
                + policy.allowed_cidrs.as_slice().len()
                    * (size_of::<keyward_core::Cidr>() + 2 * size_of::<u128>())
                + policy
                    .rate_limits
                    .as_slice()
                    .iter()
                    .map(|limit| size_of::<keyward_core::RateLimit>() + limit.name.len())
                    .sum::<usize>()
        })
        + optional(&key.last_used_user_agent)
        + key.rotated_from_id.as_ref().map_or(0, |id| text(id.as_str()))
}

/// What a key's encoded description ([`CachedKey::description`]) holds: the
/// texts `ValidateKey` answers with again, each with its tag and length (a
/// few bytes, counted generously), and the allocation's header.
fn description_weight(key: &ApiKey) -> usize {
    const FIELD: usize = 4;
    let text = |s: &str| s.len() + FIELD;
    let optional = |s: &Option<String>| s.as_deref().map_or(0, text);
    4 * size_of::<usize>()
        + text(key.id.as_str())
        + text(&key.organization_id)
        + optional(&key.workspace_id)
        + text(&key.name)
        + key.scopes.as_slice().iter().map(|s| text(s.as_str())).sum::<usize>()
        + key
            .metadata
            .as_map()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 3 * FIELD)
            .sum::<usize>()
        + optional(&key.user_id)
        + optional(&key.service_account_id)
        // The environment and the expiry.
        + 4 * FIELD
        + 12
        // An address range in canonical form is at most 43 characters.
        + key.policy().allowed_cidrs.as_slice().len() * (43 + FIELD)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use keyward_core::{
        Actor, ActorKind, ApiKeySecret, Environment, KeyKind, LookupHasher, Metadata, Scopes,
    };

    fn key() -> (LookupHash, Arc<CachedKey>) {
        keyed(Scopes::default(), Metadata::default())
    }

    /// A key with every field at its longest: what an attacker with an admin
    /// key would create to fill a cache.
    fn maximal_key() -> (LookupHash, Arc<CachedKey>) {
        let scopes: Vec<String> = (0..64).map(|i| format!("{i:0128}")).collect();
        let metadata: std::collections::HashMap<String, String> = (0..32)
            .map(|i| (format!("{i:064}"), "v".repeat(512)))
            .collect();
        let (hash, key) = keyed(
            Scopes::parse(&scopes).expect("maximal scopes are valid"),
            Metadata::parse(&metadata).expect("maximal metadata is valid"),
        );
        let mut key = ApiKey::clone(&key);
        key.name = "n".repeat(128);
        key.description = "d".repeat(1024);
        key.last_used_user_agent = Some("u".repeat(512));
        (hash, Arc::new(key.into()))
    }

    /// A standard live key of `acme` with `scopes` and `metadata`, and its
    /// lookup hash: the crate's one in-memory key for unit tests.
    pub(crate) fn keyed(scopes: Scopes, metadata: Metadata) -> (LookupHash, Arc<CachedKey>) {
        let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let now = Utc::now();
        let key = ApiKey {
            id: KeyId::generate(),
            organization_id: "acme".into(),
            workspace_id: None,
            kind: KeyKind::Standard,
            environment: Environment::Live,
            name: "n".into(),
            description: String::new(),
            scopes,
            metadata,
            prefix: secret.display_prefix(),
            partial_key_hint: secret.partial_hint(),
            disabled: false,
            created_at: now,
            updated_at: now,
            created_by: Actor {
                kind: ActorKind::User,
                id: "u".into(),
            },
            user_id: None,
            service_account_id: None,
            expires_at: None,
            last_used_at: None,
            last_used_ip: None,
            last_used_user_agent: None,
            archived_at: None,
            revoked_at: None,
            rotated_from_id: None,
            policy: None,
            credits_spent: keyward_core::CreditsSpent::default(),
        };
        (LookupHasher::derived().hash(&secret), Arc::new(key.into()))
    }

    #[test]
    fn hits_invalidation_and_races() {
        let cache = KeyCache::new(CacheSettings::default());
        let (hash, key) = key();
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss));
        let read = cache.generation();
        cache.insert(hash, Arc::clone(&key), read);
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Key(_)));
        cache.invalidate(&key.id);
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss));
        // A read that started before an invalidation is not cached.
        cache.insert(hash, key, read);
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss));
    }

    #[test]
    fn unknown_hashes_are_remembered_until_a_key_is_created() {
        let cache = KeyCache::new(CacheSettings::default());
        let (hash, _) = key();
        cache.insert_unknown(hash, cache.generation());
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Unknown));
        cache.forget_unknown();
        assert!(matches!(cache.get(&hash, Instant::now()), Cached::Miss));
    }

    #[test]
    fn both_caches_stay_within_their_bounds() {
        let settings = CacheSettings {
            capacity: 10,
            negative_capacity: 10,
            ..CacheSettings::default()
        };
        let cache = KeyCache::new(settings);
        for _ in 0..100 {
            let (hash, key) = key();
            cache.insert(hash, key, cache.generation());
            let (unknown, _) = self::key();
            cache.insert_unknown(unknown, cache.generation());
            let (keys, unknowns) = cache.len();
            assert!(
                keys <= 10 && unknowns <= 10,
                "{keys} keys, {unknowns} unknown"
            );
        }
    }

    #[test]
    fn maximal_keys_stay_within_the_byte_budget() {
        let one = weight(&maximal_key().1);
        assert!(one > 30_000, "a maximal key weighs {one} bytes");
        // Room for about eight by bytes; the key cap (1,000) and the load
        // (100) are far above that, so only the byte bound can hold it.
        let budget = one * 8 + one / 2;
        let cache = KeyCache::new(CacheSettings {
            capacity: 1_000,
            max_bytes: budget,
            ..CacheSettings::default()
        });
        let mut last = None;
        for _ in 0..100 {
            let (hash, key) = maximal_key();
            cache.insert(hash, key, cache.generation());
            let (keys, _) = cache.len();
            let bytes = cache.bytes();
            assert!(bytes <= budget, "{bytes} bytes cached, budget {budget}");
            assert!(keys <= 8, "{keys} maximal keys cached");
            assert_eq!(bytes, keys * one, "the running total matches the weigher");
            last = Some(hash);
        }
        let last = last.expect("keys were inserted");
        assert!(matches!(cache.get(&last, Instant::now()), Cached::Key(_)));

        // Small keys are far lighter: many more fit the same budget.
        let (hash, key) = self::key();
        assert!(weight(&key) * 20 < one);
        cache.insert(hash, key, cache.generation());
        assert!(cache.bytes() <= budget);

        // A key heavier than the whole budget is not cached at all.
        let tiny = KeyCache::new(CacheSettings {
            max_bytes: one - 1,
            ..CacheSettings::default()
        });
        let (hash, key) = maximal_key();
        tiny.insert(hash, key, tiny.generation());
        assert_eq!((tiny.len(), tiny.bytes()), ((0, 0), 0));
    }

    #[test]
    fn invalidation_returns_the_bytes() {
        let cache = KeyCache::new(CacheSettings::default());
        let (hash, key) = maximal_key();
        let id = key.id.clone();
        cache.insert(hash, key, cache.generation());
        assert!(cache.bytes() > 0);
        cache.invalidate(&id);
        assert_eq!(cache.bytes(), 0);
        let (hash, key) = maximal_key();
        cache.insert(hash, key, cache.generation());
        cache.invalidate_all();
        assert_eq!((cache.len(), cache.bytes()), ((0, 0), 0));
    }

    #[test]
    fn settings_come_from_flags_with_the_documented_defaults() {
        use clap::Parser;

        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            cache: CacheSettings,
        }
        let defaults = CacheSettings::default();
        assert_eq!(defaults.capacity, 100_000);
        assert_eq!(defaults.max_bytes, 128 * 1024 * 1024);
        assert_eq!(defaults.negative_ttl, Duration::from_secs(5));
        assert_eq!(defaults.max_age, Duration::from_secs(30));
        let parsed = Flags::try_parse_from([
            "x",
            "--cache-capacity",
            "7",
            "--cache-max-bytes",
            "4096",
            "--negative-cache-ttl",
            "250ms",
        ])
        .expect("valid flags")
        .cache;
        assert_eq!((parsed.capacity, parsed.max_bytes), (7, 4096));
        assert_eq!(parsed.negative_ttl, Duration::from_millis(250));
        for flag in [
            "--cache-capacity",
            "--cache-max-bytes",
            "--negative-cache-capacity",
        ] {
            assert!(Flags::try_parse_from(["x", flag, "0"]).is_err(), "{flag} 0");
        }
    }
}
