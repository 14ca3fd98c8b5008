//! The in-memory key cache of the validation path: bounded positive entries
//! by lookup hash, a bounded negative cache for unknown hashes, and
//! invalidation by key id (from this replica's mutations and the change feed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;
use std::time::{Duration, Instant};

use keyward_core::{ApiKey, KeyId, LookupHash};

/// Cache limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct CacheSettings {
    /// Most keys held in the validation cache (eviction beyond it).
    #[arg(long = "cache-capacity", env = "KEYWARD_CACHE_CAPACITY", default_value_t = 100_000, value_parser = crate::config::at_least_one())]
    pub capacity: usize,
    /// Most unknown key hashes remembered (so floods of random keys stay off the database).
    #[arg(long = "negative-cache-capacity", env = "KEYWARD_NEGATIVE_CACHE_CAPACITY", default_value_t = 100_000, value_parser = crate::config::at_least_one())]
    pub negative_capacity: usize,
    /// How long an unknown key hash is remembered.
    #[arg(long = "negative-cache-ttl", env = "KEYWARD_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = crate::config::parse_interval)]
    pub negative_ttl: Duration,
    /// Longest a cached key is served before it is read again: a safety net
    /// under the change feed.
    #[arg(long = "cache-max-age", env = "KEYWARD_CACHE_MAX_AGE", default_value = "30s", value_parser = crate::config::parse_interval)]
    pub max_age: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// What the cache knows of a hash.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The key, as read at most `max_age` ago.
    Key(Arc<ApiKey>),
    /// No key has this hash (as of at most `negative_ttl` ago).
    Unknown,
    /// Ask the database.
    Miss,
}

/// A snapshot of the cache's invalidation count, taken before a database
/// read, so that a read racing with a change is not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

#[derive(Debug)]
struct Entry {
    key: Arc<ApiKey>,
    read_at: Instant,
}

/// The maps use foldhash, seeded per process: a lookup hash is already
/// uniform, and SipHash would cost a good part of a warm validation.
#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<LookupHash, Entry, RandomState>,
    by_id: HashMap<KeyId, LookupHash, RandomState>,
    unknown: HashMap<LookupHash, Instant, RandomState>,
    generation: u64,
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
        // Every critical section leaves the maps consistent, so a panic
        // elsewhere while holding the lock cannot corrupt them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// since `read` was taken (the read may predate the change).
    pub fn insert(&self, hash: LookupHash, key: Arc<ApiKey>, read: Generation) {
        let mut inner = self.lock();
        if inner.generation != read.0 {
            return;
        }
        inner.unknown.remove(&hash);
        if inner.by_hash.len() >= self.settings.capacity && !inner.by_hash.contains_key(&hash) {
            evict_one(&mut inner);
        }
        inner.by_id.insert(key.id.clone(), hash);
        inner.by_hash.insert(
            hash,
            Entry {
                key,
                read_at: Instant::now(),
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
        if let Some(hash) = inner.by_id.remove(id) {
            inner.by_hash.remove(&hash);
        }
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

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// Evicts one entry. HashMap iteration order is effectively random, which
/// makes this random eviction: no bookkeeping on the hot path.
fn evict_one(inner: &mut Inner) {
    let Some(hash) = inner.by_hash.keys().next().copied() else {
        return;
    };
    if let Some(entry) = inner.by_hash.remove(&hash) {
        inner.by_id.remove(&entry.key.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use keyward_core::{
        Actor, ActorKind, ApiKeySecret, Environment, KeyKind, LookupHasher, Metadata, Scopes,
    };

    fn key() -> (LookupHash, Arc<ApiKey>) {
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
            scopes: Scopes::default(),
            metadata: Metadata::default(),
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
        };
        (LookupHasher::derived().hash(&secret), Arc::new(key))
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
}
