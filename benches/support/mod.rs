//! Shared by the benchmark binaries: argument handling, fast seeding of
//! `api_keys` rows, latency percentiles and resident memory.
//!
//! Each bench target includes this module (`mod support;`) and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keyward_core::{
    Actor, ActorKind, ApiKeySecret, Description, Environment, KeyKind, KeyName, LookupHash,
    LookupHasher, Metadata, OrganizationId, Scope, Scopes,
};
use keyward_store::entity::api_keys;
use keyward_store::{KeyMaterial, NewKey, Store};
use sea_orm::{EntityTrait, IntoActiveModel, TransactionTrait};

/// The organization every seeded key belongs to.
pub const ORG: &str = "bench";
/// Scopes of every benchmark key (the warm-hit bench requires the first).
pub const SCOPES: [&str; 2] = ["orders:read", "orders:write"];

/// How the bench binary was started.
#[derive(Debug, Clone)]
pub struct Args {
    /// `cargo bench` passes `--bench`; `cargo test --bench NAME` does not.
    /// Without it, or with `--quick` / `--test`, the run is a tiny smoke run.
    pub quick: bool,
    raw: Vec<String>,
}

impl Args {
    /// The process's arguments.
    pub fn parse() -> Self {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| raw.iter().any(|a| a == flag);
        let quick = has("--quick") || has("--test") || !has("--bench");
        Self { quick, raw }
    }

    /// The value after `--name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        let at = self.raw.iter().position(|a| a == name)?;
        Some(
            self.raw
                .get(at + 1)
                .unwrap_or_else(|| panic!("{name} needs a value")),
        )
    }

    /// `--name N` as a number (underscores allowed), or `default`.
    pub fn number(&self, name: &str, default: usize) -> usize {
        self.value(name).map_or(default, |v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.raw.iter().any(|a| a == name)
    }
}

/// A current-thread runtime: the benchmark drives one call at a time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connects and migrates, recording the default (derived) hasher's
/// fingerprint so that `keyward serve` without a lookup secret accepts it.
pub async fn open(url: &str) -> Store {
    let store = Store::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
        .check_hasher(&LookupHasher::derived().fingerprint())
        .await
        .expect("hasher fingerprint");
    store
}

/// Creates one standard key through the store's normal path (transaction,
/// audit event) and returns its secret.
pub async fn create_key(store: &Store, name: &str) -> (ApiKeySecret, keyward_core::ApiKey) {
    create_key_with_policy(store, name, keyward_core::Policy::default()).await
}

/// Like [`create_key`], with a policy (an IP allowlist).
pub async fn create_key_with_policy(
    store: &Store,
    name: &str,
    policy: keyward_core::Policy,
) -> (ApiKeySecret, keyward_core::ApiKey) {
    store
        .ensure_organization(&OrganizationId::parse(ORG).expect("org id"))
        .await
        .expect("organization");
    let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
    let key = store
        .create_key(NewKey {
            organization_id: OrganizationId::parse(ORG).expect("org id"),
            workspace_id: None,
            name: KeyName::parse(name).expect("name"),
            description: Description::default(),
            scopes: Scopes::parse(&SCOPES).expect("scopes"),
            metadata: Metadata::default(),
            secret: KeyMaterial::new(&LookupHasher::derived(), &secret),
            created_by: Actor {
                kind: ActorKind::User,
                id: "bench".into(),
            },
            user_id: None,
            service_account_id: None,
            expires_at: None,
            policy,
        })
        .await
        .expect("create key");
    (secret, key)
}

/// The scope the warm-hit benchmark requires.
pub fn required_scope() -> &'static str {
    Scope::check(SCOPES[0]).expect("scope")
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `key_` + a ULID of `millis` and 80 pseudo-random bits derived from `n`.
pub fn key_id(millis: u64, n: u64) -> String {
    // splitmix64, twice: distinct, well-spread random parts.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let random = ((u128::from(mix(n)) << 64) | u128::from(mix(!n))) & ((1 << 80) - 1);
    let value = (u128::from(millis & ((1 << 48) - 1)) << 80) | random;
    let ulid: String = (0..26)
        .rev()
        .map(|i| char::from(CROCKFORD[((value >> (i * 5)) & 31) as usize]))
        .collect();
    format!("key_{ulid}")
}

/// What `seed` made.
pub struct Seeded {
    /// Ids in creation order (ascending), when asked for.
    pub ids: Vec<String>,
    /// Secrets in creation order, when asked for.
    pub secrets: Vec<ApiKeySecret>,
    /// How long the inserts took.
    pub took: Duration,
}

/// Inserts `count` standard keys of organization [`ORG`] with increasing,
/// ULID-shaped ids (one millisecond apart, ending an hour ago), in
/// multi-row INSERTs of 1,000 rows, `batches_per_txn` batches per
/// transaction. No audit events are written: this is a fixture, not the API.
/// Real secrets (and their lookup hashes) are made when `keep_secrets`,
/// otherwise the lookup hash is a BLAKE3 of the index (unique, never
/// presented).
pub async fn seed(store: &Store, count: usize, keep_secrets: bool, keep_ids: bool) -> Seeded {
    const BATCH: usize = 1000;
    store
        .ensure_organization(&OrganizationId::parse(ORG).expect("org id"))
        .await
        .expect("organization");
    let hasher = LookupHasher::derived();
    let scopes = serde_json::to_string(&SCOPES).expect("json");
    let end: DateTime<Utc> = Utc::now() - TimeDelta::hours(1);
    let start = end - TimeDelta::milliseconds(count as i64);
    let start = start.with_timezone(&Utc);
    let mut seeded = Seeded {
        ids: Vec::with_capacity(if keep_ids { count } else { 0 }),
        secrets: Vec::with_capacity(if keep_secrets { count } else { 0 }),
        took: Duration::ZERO,
    };
    let began = std::time::Instant::now();
    let mut done = 0;
    while done < count {
        let txn = store.connection().begin().await.expect("begin");
        for _ in 0..20 {
            if done >= count {
                break;
            }
            let rows = (done..count.min(done + BATCH)).map(|i| {
                let at = start + TimeDelta::milliseconds(i as i64);
                let at = at.fixed_offset();
                let id = key_id(at.timestamp_millis() as u64, i as u64);
                let (hash, prefix, hint) = if keep_secrets {
                    let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
                    let parts = (
                        hasher.hash(&secret),
                        secret.display_prefix(),
                        secret.partial_hint(),
                    );
                    seeded.secrets.push(secret);
                    parts
                } else {
                    let hash = LookupHash(*blake3::hash(id.as_bytes()).as_bytes());
                    (
                        hash,
                        "sk_live_seed".to_owned(),
                        "sk_live_seed...0000".to_owned(),
                    )
                };
                if keep_ids {
                    seeded.ids.push(id.clone());
                }
                api_keys::Model {
                    id,
                    organization_id: ORG.to_owned(),
                    workspace_id: None,
                    kind: KeyKind::Standard.as_str().to_owned(),
                    environment: Environment::Live.as_str().to_owned(),
                    name: format!("seeded key {i}"),
                    description: String::new(),
                    scopes: scopes.clone(),
                    metadata: "{}".to_owned(),
                    lookup_hash: hash.to_hex(),
                    prefix,
                    partial_key_hint: hint,
                    disabled: false,
                    created_at: at,
                    updated_at: at,
                    created_by_type: ActorKind::User.as_str().to_owned(),
                    created_by_id: "bench".to_owned(),
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
                    credits_set_at: None,
                    credits_period: None,
                    credits_used: 0,
                }
                .into_active_model()
            });
            let rows: Vec<api_keys::ActiveModel> = rows.collect();
            done += rows.len();
            api_keys::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await
                .expect("insert keys");
        }
        txn.commit().await.expect("commit");
    }
    seeded.took = began.elapsed();
    seeded
}

/// Number of keys of [`ORG`] in the store.
pub async fn count_keys(store: &Store) -> u64 {
    use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
    api_keys::Entity::find()
        .filter(api_keys::Column::OrganizationId.eq(ORG))
        .count(store.connection())
        .await
        .expect("count")
}

/// Sorted per-call latencies.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// From unsorted samples.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        Self(samples)
    }

    /// The `p`th percentile (nearest rank).
    pub fn pct(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// Count, min, p50, p90, p99, max, formatted in microseconds.
    pub fn summary(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            "n={} min={:.1}µs p50={:.1}µs p90={:.1}µs p99={:.1}µs max={:.1}µs",
            self.0.len(),
            us(self.0[0]),
            us(self.pct(50.0)),
            us(self.pct(90.0)),
            us(self.pct(99.0)),
            us(self.0[self.0.len() - 1]),
        )
    }
}

/// This process's resident set size in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}
