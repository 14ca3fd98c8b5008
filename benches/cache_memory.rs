//! Resident memory per cached key (the cache is bounded; figures in
//! BENCHMARKS.md):
//!
//!   cargo bench --bench cache_memory                 # 100,000 keys (the default capacity)
//!   cargo bench --bench cache_memory -- --quick      # 2,000 keys
//!   cargo test  --bench cache_memory                 # quick, debug build
//!
//! Options (after `--`): `--keys N`.
//!
//! Two measurements, each in a child process of its own (so that neither
//! inherits the other's freed-but-resident heap), reading VmRSS from
//! /proc/self/status before and after filling:
//! - `validator`: N keys seeded (by the parent process) in a temporary SQLite
//!   database (two scopes, no metadata, a ~16-character name), then
//!   `KeyValidator::validate` of each: the real miss path fills the cache. Last-used data is flushed
//!   every 1,000 calls, as the server's 1 s flush would. The baseline is
//!   taken after 1,000 warm-up validations (connections, statement cache and
//!   SQLite page cache already in use); SQLite's page cache (2 MiB per
//!   connection at most) can still grow and is counted.
//! - `cache`: the same N keys built in memory and inserted straight into a
//!   `KeyCache`: the cache's own cost, with nothing else moving.
//!
//! The cache capacity is set to N, so nothing is evicted.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyward::cache::{CacheSettings, KeyCache};
use keyward::validation::{ClientInfo, KeyValidator, ValidatorSettings};
use keyward_core::{
    Actor, ActorKind, ApiKey, ApiKeySecret, Environment, KeyId, KeyKind, LookupHasher, Metadata,
    ValidationCode,
};

mod support;

fn settings(keys: usize) -> CacheSettings {
    CacheSettings {
        capacity: keys,
        ..CacheSettings::default()
    }
}

fn report(mode: &str, keys: usize, before: u64, after: u64, cached: usize) {
    assert_eq!(cached, keys, "every key cached");
    let per_key = (after as f64 - before as f64) / keys as f64;
    println!(
        "cache_memory {mode}: {keys} keys, VmRSS {:.1} MiB -> {:.1} MiB: {per_key:.0} bytes per cached key",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
}

const WARMUP: usize = 1000;

/// Seeds N + 1,000 keys into a new SQLite file and writes their raw keys,
/// one a line, next to it: done in the parent, so the child measuring the
/// validator starts with a heap that seeding never grew.
fn seed(path: &str, secrets: &str, keys: usize) {
    let rt = support::runtime();
    rt.block_on(async {
        let store = support::open(&format!("sqlite://{path}?mode=rwc")).await;
        let seeded = support::seed(&store, keys + WARMUP, true, false).await;
        let mut text = String::with_capacity(seeded.secrets.len() * 48);
        for secret in &seeded.secrets {
            text.push_str(secret.expose());
            text.push('\n');
        }
        std::fs::write(secrets, text).expect("write secrets");
        let _ = store.connection().close_by_ref().await;
    });
}

/// Fills a validator's cache through `validate`.
fn via_validator(path: &str, secrets: &str, keys: usize) {
    let text = std::fs::read_to_string(secrets).expect("read secrets");
    let mut raws: Vec<String> = Vec::with_capacity(keys + WARMUP);
    raws.extend(text.lines().map(str::to_owned));
    drop(text);
    assert_eq!(raws.len(), keys + WARMUP);
    let rt = support::runtime();
    rt.block_on(async {
        let store = support::open(&format!("sqlite://{path}?mode=rwc")).await;
        let validator = KeyValidator::new(
            store.clone(),
            LookupHasher::derived(),
            ValidatorSettings {
                cache: settings(keys + WARMUP),
                stale_if_error: Duration::from_secs(3600),
                ..ValidatorSettings::default()
            },
        );
        let client = ClientInfo {
            ip: Some("203.0.113.7"),
            address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                203, 0, 113, 7,
            ))),
            user_agent: Some("bench-client/1.0"),
            ..ClientInfo::default()
        };
        let mut rss_before = 0;
        for (i, raw) in raws.iter().enumerate() {
            if i == WARMUP {
                rss_before = support::rss_bytes();
            }
            let validation = validator
                .validate(raw, &[], client)
                .await
                .expect("validate");
            assert_eq!(validation.code, ValidationCode::Valid);
            if (i + 1) % 1000 == 0 {
                validator.flush_usage().await.expect("usage flushed");
            }
        }
        validator.flush_usage().await.expect("usage flushed");
        let rss_after = support::rss_bytes();
        report(
            "validator",
            keys,
            rss_before,
            rss_after,
            validator.cache().len().0 - WARMUP,
        );
        drop(validator);
        let _ = store.connection().close_by_ref().await;
    });
}

/// Inserts keys built in memory straight into a `KeyCache`.
fn via_cache(keys: usize) {
    let hasher = LookupHasher::derived();
    let mut hashes = Vec::with_capacity(keys);
    hashes.extend((0..keys).map(|_| {
        hasher.hash(&ApiKeySecret::generate(
            KeyKind::Standard,
            Environment::Live,
        ))
    }));
    let cache = KeyCache::new(settings(keys));
    let scopes = keyward_core::Scopes::parse(&support::SCOPES).expect("scopes");
    let now = Utc::now();
    let rss_before = support::rss_bytes();
    for (i, hash) in hashes.iter().enumerate() {
        let secret_prefix = "sk_live_AbCd".to_owned();
        let key = ApiKey {
            id: KeyId::from_trusted(support::key_id(now.timestamp_millis() as u64, i as u64)),
            organization_id: support::ORG.to_owned(),
            workspace_id: None,
            kind: KeyKind::Standard,
            environment: Environment::Live,
            name: format!("seeded key {i}"),
            description: String::new(),
            scopes: scopes.clone(),
            metadata: Metadata::default(),
            partial_key_hint: format!("{secret_prefix}...wxyz"),
            prefix: secret_prefix,
            disabled: false,
            created_at: now,
            updated_at: now,
            created_by: Actor {
                kind: ActorKind::User,
                id: "bench".to_owned(),
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
        let read = cache.generation();
        cache.insert(*hash, Arc::new(key.into()), read);
    }
    let rss_after = support::rss_bytes();
    report("cache", keys, rss_before, rss_after, cache.len().0);
    println!(
        "cache_memory: size_of::<ApiKey>() = {} bytes",
        std::mem::size_of::<ApiKey>()
    );
}

fn main() {
    let args = support::Args::parse();
    let keys = args.number("--keys", if args.quick { 2_000 } else { 100_000 });
    match args.value("--child") {
        Some("validator") => via_validator(
            args.value("--db").expect("--db"),
            args.value("--secrets").expect("--secrets"),
            keys,
        ),
        Some("cache") => via_cache(keys),
        Some(other) => panic!("unknown --child {other}"),
        None => {
            let base = std::env::temp_dir().join(format!(
                "keyward_bench_memory_{}",
                keyward_core::new_ulid().to_ascii_lowercase()
            ));
            let db = format!("{}.db", base.display());
            let secrets = format!("{}.keys", base.display());
            seed(&db, &secrets, keys);
            let exe = std::env::current_exe().expect("current exe");
            let mut failed = Vec::new();
            for mode in ["validator", "cache"] {
                let status = Command::new(&exe)
                    .args(["--child", mode, "--keys", &keys.to_string()])
                    .args(["--db", &db, "--secrets", &secrets])
                    .status()
                    .expect("run child");
                if !status.success() {
                    failed.push(mode);
                }
            }
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{db}{suffix}"));
            }
            let _ = std::fs::remove_file(&secrets);
            assert!(failed.is_empty(), "measurements failed: {failed:?}");
        }
    }
}
