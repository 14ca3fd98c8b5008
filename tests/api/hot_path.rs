//! The validation hot path end to end:
//! - 10,000 validations of one key write nothing per call (PostgreSQL's own
//!   row counters: at most its last-used row and its usage count per
//!   flush), and last-used data shows after a flush;
//! - two real `keyward serve` processes on one database see each other's
//!   changes within 1 s, with the other replica's cache warm;
//! - through a database outage, cached verdicts last for stale-if-error and
//!   then turn UNAVAILABLE, unknown keys are UNAVAILABLE, and recovery is
//!   automatic;
//! - a flood of unknown keys reaches the database once per key, and the
//!   caches stay within their configured bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{StreamExt, stream};
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::validation::{ClientInfo, KeyValidator};
use keyward::{CacheSettings, Settings};
use keyward_core::{
    Actor, ActorKind, ApiKeySecret, Description, Environment, KeyKind, KeyName, LookupHasher,
    Metadata, OrganizationId, Scopes, ValidationCode,
};
use keyward_store::testing::{Backend, on_fresh_database};
use keyward_store::{KeyMaterial, Store};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::process::{KeywardProcess, bootstrap_with_cli};
use crate::helpers::proxy::proxied_database;
use crate::helpers::{
    CLIENT_IP, NewKey, TestApp, USER_AGENT, eventually, record_secret, try_validate, unknown_key,
    with_app_configured, with_key,
};

/// Inserts a standard key of `acme` straight through the store (no admin API,
/// so no cache is told); returns the raw key.
async fn insert_key(store: &Store, hasher: &LookupHasher, name: &str) -> String {
    let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
    store
        .create_key(keyward_store::NewKey {
            organization_id: OrganizationId::parse("acme").expect("a valid organization"),
            workspace_id: None,
            name: KeyName::parse(name).expect("a valid name"),
            description: Description::default(),
            scopes: Scopes::default(),
            metadata: Metadata::default(),
            secret: KeyMaterial::new(hasher, &secret),
            created_by: Actor {
                kind: ActorKind::ServiceAccount,
                id: "hot-path-test".to_owned(),
            },
            user_id: None,
            service_account_id: None,
            expires_at: None,
            policy: keyward_core::Policy::default(),
        })
        .await
        .expect("the key is inserted");
    record_secret(secret.expose());
    secret.expose().to_owned()
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---------------------------------------------------------------------------
// 1. No database write per validation; last-used data after a flush.
// ---------------------------------------------------------------------------

const CALLS: usize = 10_000;
/// keyward's default flush interval (`--usage-flush-interval 1s`).
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// PostgreSQL 15+ flushes a backend's table counters lazily: at most once a
/// second while busy, and at the latest 10 s after it went idle
/// (PGSTAT_IDLE_INTERVAL). Counters unchanged for longer than that are settled.
const STATS_SETTLE: Duration = Duration::from_secs(11);
/// Rows written besides the validated key's usage flushes: the admin key's
/// own usage (last-used data and counts) while GetKey is polled, and headroom.
const WRITE_SLACK: u64 = 8;

/// Rows inserted, updated or deleted in the database's tables so far, per
/// PostgreSQL's statistics.
async fn pg_row_writes(stats: &DatabaseConnection) -> i64 {
    let backend = stats.get_database_backend();
    // `stats_fetch_consistency = cache` would otherwise keep showing the
    // counters as first read in this transaction.
    stats
        .execute_unprepared("SELECT pg_stat_clear_snapshot()")
        .await
        .expect("pg_stat_clear_snapshot runs");
    let row = stats
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)::BIGINT \
             FROM pg_stat_user_tables"
                .to_owned(),
        ))
        .await
        .expect("pg_stat_user_tables is readable")
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

/// `pg_row_writes` once it has stopped changing for `STATS_SETTLE`.
async fn settled_pg_row_writes(stats: &DatabaseConnection) -> i64 {
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut last = pg_row_writes(stats).await;
    let mut unchanged_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = pg_row_writes(stats).await;
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() >= STATS_SETTLE {
            return last;
        }
        assert!(
            Instant::now() < give_up,
            "PostgreSQL's table counters never settled (last {last})"
        );
    }
}

async fn validations_write_nothing_per_call(backend: Backend) {
    let flush_interval = |settings: &mut Settings| settings.usage_flush_interval = FLUSH_INTERVAL;
    with_app_configured(backend, flush_interval, async |app| {
        let created = app.create_key("busy").scopes(&["orders:read"]).await;
        let (id, secret) = (created.id, created.secret);

        // PostgreSQL's counters, read on a connection of our own.
        let stats = if backend == Backend::Postgres {
            let mut options = ConnectOptions::new(app.database_url.clone());
            options.max_connections(1).sqlx_logging(false);
            Some(
                Database::connect(options)
                    .await
                    .expect("a statistics connection"),
            )
        } else {
            None
        };
        let writes_before = match &stats {
            Some(stats) => {
                let writes = settled_pg_row_writes(stats).await;
                // Bootstrap and CreateKey wrote rows: the counters see keyward's tables.
                assert!(writes > 0, "pg_stat_user_tables counts keyward's writes");
                Some(writes)
            }
            None => None,
        };

        let lookups_before = app.validator.database_lookups();
        let started = Instant::now();
        let started_wall = Utc::now();
        let client = app.validation();
        let codes: Vec<pb::ValidationCode> = stream::iter(0..CALLS)
            .map(|_| {
                let mut client = client.clone();
                let key = secret.clone();
                async move {
                    client
                        .validate_key(pb::ValidateKeyRequest {
                            key,
                            required_scopes: vec!["orders:read".into()],
                            client_ip: CLIENT_IP.into(),
                            user_agent: USER_AGENT.into(),
                            ..Default::default()
                        })
                        .await
                        .expect("ValidateKey answers")
                        .into_inner()
                        .code()
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let lookups = app.validator.database_lookups() - lookups_before;
        let not_valid = codes
            .iter()
            .filter(|code| **code != pb::ValidationCode::Valid)
            .count();
        assert_eq!(not_valid, 0, "every one of {CALLS} validations is VALID");

        // Last-used data shows through GetKey after a flush.
        eprintln!(
            "{} {CALLS} validations: {lookups} database lookups",
            backend.name()
        );
        let key = eventually(Duration::from_secs(15), || {
            let mut admin = app.admin();
            let request = app.acme(pb::GetKeyRequest { id: id.clone() });
            async move {
                let key = admin.get_key(request).await.ok()?.into_inner().api_key?;
                (key.last_used_at.is_some()
                    && key.last_used_ip == CLIENT_IP
                    && key.last_used_user_agent == USER_AGENT)
                    .then_some(key)
            }
        })
        .await
        .expect("last_used_at, last_used_ip and last_used_user_agent show through GetKey");
        // Every one of them is counted, once.
        let counted = eventually(Duration::from_secs(15), || async {
            let usage = app.key_usage(&id, None, None).await.ok()?;
            (usage.total == CALLS as i64).then_some(usage)
        })
        .await
        .expect("GetKeyUsage counts every validation");
        assert_eq!(counted.totals.len(), 1, "all VALID: {:?}", counted.totals);
        let window = started.elapsed();
        let used_at = key.last_used_at.expect("checked above");
        assert!(
            used_at.seconds >= started_wall.timestamp() - 1
                && used_at.seconds <= Utc::now().timestamp() + 1,
            "last_used_at {used_at:?} is a time of the validations (from {started_wall})"
        );

        if let (Some(stats), Some(before)) = (&stats, writes_before) {
            let after = settled_pg_row_writes(stats).await;
            let written = u64::try_from(after - before).expect("counters only grow");
            // At most two rows per key per flush (its last-used data and
            // its usage count of the minute, added to): the flushes that
            // could have run from the first validation to the last GetKey,
            // plus the one after it, and one more count row for each
            // minute that ended meanwhile.
            let flushes = u64::try_from(window.as_millis() / FLUSH_INTERVAL.as_millis())
                .expect("a small number")
                + 2;
            let minutes = window.as_secs() / 60 + 1;
            eprintln!(
                "{CALLS} validations in {}: {written} rows written ({flushes} flush intervals)",
                millis(window)
            );
            assert!(
                written <= 2 * flushes + minutes + WRITE_SLACK,
                "{CALLS} validations wrote {written} rows in {} ({flushes} flush intervals): \
                 more than two rows per flush interval",
                millis(window)
            );
            stats.close_by_ref().await.ok();
        }
        // Checked last, so that the verdict on writes above is not hidden.
        // The first miss, and at most one reload: the feed follower applies
        // this replica's own Created event too, and if that lands after the
        // key was cached it drops the entry once (src/validation/feed.rs).
        assert!(
            lookups <= 2,
            "{CALLS} validations of one key (16 at a time) reached the database {lookups} times; \
             at most 2 (the first miss, one reload after the follower applies the key's creation) \
             is right"
        );
    })
    .await;
}

mod no_write_per_validation {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        validations_write_nothing_per_call(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        validations_write_nothing_per_call(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        validations_write_nothing_per_call(Backend::MariaDb).await;
    }
}

// ---------------------------------------------------------------------------
// 2. Two `keyward serve` processes on one database.
// ---------------------------------------------------------------------------

/// A change on one replica shows on another within this.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long a late change is still waited for, so the report can say how late.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Watches verdicts on replica B and records how long each change took to show.
struct Watch {
    replica: KeyValidationServiceClient<Channel>,
    latencies: Vec<(&'static str, Duration)>,
}

impl Watch {
    async fn verdict(&mut self, key: &str, scopes: &[&str]) -> pb::ValidationCode {
        try_validate(&mut self.replica, key, scopes)
            .await
            .unwrap_or_else(|code| panic!("replica B cannot answer ValidateKey: {code:?}"))
    }

    /// Asserts B's verdict before a change, which also puts the key in B's cache.
    async fn warm(&mut self, step: &str, key: &str, scopes: &[&str], expected: pb::ValidationCode) {
        let code = self.verdict(key, scopes).await;
        assert_eq!(
            code, expected,
            "before {step}: replica B answers {code:?}, expected {expected:?}"
        );
    }

    /// Polls B every 10 ms until it answers `expected`; records the time since
    /// `since` (replica A's response).
    async fn observe(
        &mut self,
        step: &'static str,
        key: &str,
        scopes: &[&str],
        expected: pb::ValidationCode,
        since: Instant,
    ) {
        loop {
            let code = self.verdict(key, scopes).await;
            if code == expected {
                self.latencies.push((step, since.elapsed()));
                return;
            }
            assert!(
                since.elapsed() < GIVE_UP,
                "{step}: replica B still answers {code:?} (expected {expected:?}) {} after replica A's response; so far: {}",
                millis(GIVE_UP),
                self.report()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn report(&self) -> String {
        self.latencies
            .iter()
            .map(|(step, latency)| format!("{step} {}", millis(*latency)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn replicas_see_each_others_changes_within_a_second(backend: Backend) {
    use pb::ValidationCode::{Archived, Expired, InsufficientScope, NotFound, Revoked, Valid};

    on_fresh_database(backend, |url| async move {
        let admin_key = bootstrap_with_cli(&url);
        let mut a = KeywardProcess::replica("A", &url);
        let mut b = KeywardProcess::replica("B", &url);
        let mut admin = KeyAdminServiceClient::new(a.wait_until_serving(&admin_key).await);
        let mut watch = Watch {
            replica: KeyValidationServiceClient::new(b.wait_until_serving(&admin_key).await),
            latencies: Vec::new(),
        };

        // Create on A: B has never seen the key (it cannot be warmed before
        // it exists), so this is a cold lookup on B.
        let created = NewKey::on(admin.clone(), &admin_key, "replicated")
            .scopes(&["orders:read"])
            .await;
        let since = Instant::now();
        let (key, id) = (created.secret, created.id);
        watch.observe("create", &key, &[], Valid, since).await;

        watch.warm("archive", &key, &[], Valid).await;
        admin
            .archive_key(with_key(&admin_key, pb::ArchiveKeyRequest { id: id.clone() }))
            .await
            .expect("ArchiveKey on A");
        let since = Instant::now();
        watch.observe("archive", &key, &[], Archived, since).await;

        watch.warm("reactivate", &key, &[], Archived).await;
        admin
            .reactivate_key(with_key(&admin_key, pb::ReactivateKeyRequest { id: id.clone() }))
            .await
            .expect("ReactivateKey on A");
        let since = Instant::now();
        watch.observe("reactivate", &key, &[], Valid, since).await;

        let scopes = |scopes: &[&str]| pb::UpdateKeyRequest {
            id: id.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["scopes".into()],
            }),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let needs = &["billing:write"];
        watch
            .warm("update scopes (add)", &key, needs, InsufficientScope)
            .await;
        admin
            .update_key(with_key(&admin_key, scopes(&["orders:read", "billing:write"])))
            .await
            .expect("UpdateKey on A");
        let since = Instant::now();
        watch
            .observe("update scopes (add)", &key, needs, Valid, since)
            .await;

        watch.warm("update scopes (remove)", &key, needs, Valid).await;
        admin
            .update_key(with_key(&admin_key, scopes(&["orders:read"])))
            .await
            .expect("UpdateKey on A");
        let since = Instant::now();
        watch
            .observe("update scopes (remove)", &key, needs, InsufficientScope, since)
            .await;

        // Rotate with no grace: the old key expires at once, the new one is valid.
        watch.warm("rotate", &key, &[], Valid).await;
        let rotated = admin
            .rotate_key(with_key(&admin_key, pb::RotateKeyRequest {
                id: id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
            }))
            .await
            .expect("RotateKey on A")
            .into_inner();
        let since = Instant::now();
        record_secret(&rotated.secret);
        watch.observe("rotate (old key)", &key, &[], Expired, since).await;
        watch
            .observe("rotate (new key)", &rotated.secret, &[], Valid, since)
            .await;
        let new_id = rotated.api_key.expect("the new key").id;

        watch.warm("revoke", &rotated.secret, &[], Valid).await;
        admin
            .revoke_key(with_key(&admin_key, pb::RevokeKeyRequest { id: new_id }))
            .await
            .expect("RevokeKey on A");
        let since = Instant::now();
        watch
            .observe("revoke", &rotated.secret, &[], Revoked, since)
            .await;

        let doomed = NewKey::on(admin.clone(), &admin_key, "doomed").await;
        let doomed_id = doomed.id;
        let since = Instant::now();
        watch
            .observe("create (second key)", &doomed.secret, &[], Valid, since)
            .await;
        watch.warm("delete", &doomed.secret, &[], Valid).await;
        admin
            .delete_key(with_key(&admin_key, pb::DeleteKeyRequest { id: doomed_id }))
            .await
            .expect("DeleteKey on A");
        let since = Instant::now();
        watch
            .observe("delete", &doomed.secret, &[], NotFound, since)
            .await;

        let report = watch.report();
        eprintln!("{} replica propagation: {report}", backend.name());
        let late: Vec<&str> = watch
            .latencies
            .iter()
            .filter(|(_, latency)| *latency > PROPAGATION)
            .map(|(step, _)| *step)
            .collect();
        assert!(
            late.is_empty(),
            "changes on replica A took longer than {} to show on replica B: {late:?}; all: {report}",
            millis(PROPAGATION)
        );
        drop(a);
        drop(b);
    })
    .await;
}

mod replicas {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        replicas_see_each_others_changes_within_a_second(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        replicas_see_each_others_changes_within_a_second(Backend::MariaDb).await;
    }
}

// ---------------------------------------------------------------------------
// 3. Database outage: stale-if-error, then UNAVAILABLE; automatic recovery.
// ---------------------------------------------------------------------------

/// How long this test lets cached verdicts outlive the last feed sync.
const STALE_IF_ERROR: Duration = Duration::from_secs(3);
/// How far from stale-if-error the end of the cached verdicts may fall: the
/// last sync before the cut is up to a sync interval (250 ms) earlier, and a
/// poll runs every 50 ms.
const STALE_MARGIN: Duration = Duration::from_secs(1);

async fn cached_verdicts_outlive_an_outage_for_stale_if_error(backend: Backend) {
    use pb::ValidationCode::{NotFound, Valid};

    on_fresh_database(backend, |url| async move {
        let (proxy, proxied_url) = proxied_database(&url).await;
        let app = TestApp::start(&proxied_url, |settings| {
            settings.usage_flush_interval = FLUSH_INTERVAL;
            settings.validator.stale_if_error = STALE_IF_ERROR;
        })
        .await;
        let key = app.create_key("outage").await.secret;
        // The feed follower applies every event, this replica's own too: its
        // KeyCreated, applied after the key was cached, would drop it from the
        // cache (a miss the outage would then refuse). Cache it once a sync
        // that began after the creation has finished: the second sync to
        // finish after it.
        let created = Instant::now();
        let validator = &app.validator;
        let synced_after = |since: Instant| async move {
            while validator.since_last_sync() >= since.elapsed() {
                assert!(
                    created.elapsed() < Duration::from_secs(30),
                    "the feed follower syncs"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Instant::now() - validator.since_last_sync()
        };
        let first = synced_after(created).await;
        synced_after(first).await;
        assert_eq!(app.try_validate(&key, &[]).await, Ok(Valid));

        proxy.cut();
        let cut_at = Instant::now();
        assert_eq!(
            app.try_validate(&key, &[]).await,
            Ok(Valid),
            "right after the database goes away, the cached verdict is served"
        );
        let never_seen = unknown_key();
        let asked = Instant::now();
        let answer = app.try_validate(&never_seen, &[]).await;
        let unknown_took = asked.elapsed();
        assert_eq!(
            answer,
            Err(Code::Unavailable),
            "an unknown key while the database is away is UNAVAILABLE, never NOT_FOUND or valid"
        );

        // Valid until stale-if-error has passed since the last sync, then UNAVAILABLE.
        let mut valid_answers = 1;
        let unavailable_after = loop {
            match app.try_validate(&key, &[]).await {
                Ok(Valid) => valid_answers += 1,
                Err(Code::Unavailable) => break cut_at.elapsed(),
                other => panic!(
                    "during the outage the cached key answered {other:?}: only VALID (cached) or UNAVAILABLE are right"
                ),
            }
            assert!(
                cut_at.elapsed() < STALE_IF_ERROR + STALE_MARGIN,
                "the cached key is still served {} into the outage; stale-if-error is {}",
                millis(cut_at.elapsed()),
                millis(STALE_IF_ERROR)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            unavailable_after >= STALE_IF_ERROR - STALE_MARGIN,
            "the cached key turned UNAVAILABLE {} into the outage; stale-if-error {} promises it longer",
            millis(unavailable_after),
            millis(STALE_IF_ERROR)
        );
        assert_eq!(
            app.try_validate(&key, &[]).await,
            Err(Code::Unavailable),
            "once stale, the key stays UNAVAILABLE while the database is away"
        );
        assert_eq!(
            app.try_validate(&unknown_key(), &[]).await,
            Err(Code::Unavailable)
        );

        // The database comes back: no restart needed.
        proxy.restore();
        let restored_at = Instant::now();
        let recovered = eventually(Duration::from_secs(30), || async {
            let known = app.try_validate(&key, &[]).await;
            let unknown = app.try_validate(&unknown_key(), &[]).await;
            (known == Ok(Valid) && unknown == Ok(NotFound)).then_some(())
        })
        .await;
        assert!(
            recovered.is_some(),
            "after the database returns, the key is VALID again and unknown keys NOT_FOUND"
        );
        let recovered_after = restored_at.elapsed();
        assert_eq!(
            app.try_validate(&never_seen, &[]).await,
            Ok(NotFound),
            "the key asked about during the outage is NOT_FOUND now"
        );
        eprintln!(
            "{} outage: unknown key answered UNAVAILABLE in {}; cached key valid for {valid_answers} polls, \
             UNAVAILABLE {} after the cut (stale-if-error {}); recovered {} after restore",
            backend.name(),
            millis(unknown_took),
            millis(unavailable_after),
            millis(STALE_IF_ERROR),
            millis(recovered_after)
        );
        app.stop().await;
        drop(proxy);
    })
    .await;
}

mod outage {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        cached_verdicts_outlive_an_outage_for_stale_if_error(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        cached_verdicts_outlive_an_outage_for_stale_if_error(Backend::MariaDb).await;
    }
}

// ---------------------------------------------------------------------------
// 4. A flood of unknown keys; bounded caches.
// ---------------------------------------------------------------------------

const FLOOD: usize = 100_000;

/// Validates every key in-process (8 concurrent workers), asserting each
/// verdict and, after every call, that the caches are within `bounds`
/// (keys, unknown hashes). Returns the largest sizes seen.
async fn flood(
    validator: &Arc<KeyValidator>,
    keys: &Arc<Vec<(String, ValidationCode)>>,
    bounds: (usize, usize),
) -> (usize, usize) {
    const WORKERS: usize = 8;
    let largest = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let check = {
        let largest = Arc::clone(&largest);
        move |validator: &KeyValidator| {
            let (cached, unknown) = validator.cache().len();
            largest.0.fetch_max(cached, Ordering::Relaxed);
            largest.1.fetch_max(unknown, Ordering::Relaxed);
            assert!(
                cached <= bounds.0 && unknown <= bounds.1,
                "the cache holds {cached} keys and {unknown} unknown hashes; bounds are {bounds:?}"
            );
        }
    };
    // Meanwhile, an observer samples the sizes too.
    let done = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn({
        let (validator, done, check) = (Arc::clone(validator), Arc::clone(&done), check.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                check(&validator);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let workers: Vec<JoinHandle<()>> = (0..WORKERS)
        .map(|worker| {
            let (validator, keys, check) = (Arc::clone(validator), Arc::clone(keys), check.clone());
            tokio::spawn(async move {
                for (key, expected) in keys.iter().skip(worker).step_by(WORKERS) {
                    let validation = validator
                        .validate(key, &[], ClientInfo::default())
                        .await
                        .expect("the validation path answers");
                    assert_eq!(validation.code, *expected);
                    check(&validator);
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(error) = worker.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    done.store(true, Ordering::Relaxed);
    if let Err(error) = observer.await {
        std::panic::resume_unwind(error.into_panic());
    }
    check(validator);
    (
        largest.0.load(Ordering::Relaxed),
        largest.1.load(Ordering::Relaxed),
    )
}

/// Cache limits for the flood tests, far below their load.
fn small_cache(capacity: usize, negative_capacity: usize) -> impl FnOnce(&mut Settings) {
    move |settings| {
        settings.usage_flush_interval = FLUSH_INTERVAL;
        settings.validator.cache = CacheSettings {
            capacity,
            negative_capacity,
            // Every pass falls within the TTL: only the bound evicts.
            negative_ttl: Duration::from_secs(600),
            ..CacheSettings::default()
        };
        // These tests count lookups, not time: a lookup slowed by a busy
        // machine must not turn into UNAVAILABLE.
        settings.validator.lookup_timeout = Duration::from_secs(60);
    }
}

/// Validates `keys` over gRPC, 16 at a time, asserting each is NOT_FOUND;
/// returns the database lookups it took.
async fn unknown_over_grpc(app: &TestApp, keys: &[String]) -> u64 {
    let before = app.validator.database_lookups();
    let client = app.validation();
    let codes: Vec<Result<pb::ValidationCode, Code>> = stream::iter(keys)
        .map(|key| {
            let mut client = client.clone();
            async move { try_validate(&mut client, key, &[]).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        codes
            .iter()
            .all(|code| *code == Ok(pb::ValidationCode::NotFound)),
        "every unknown key is NOT_FOUND"
    );
    app.validator.database_lookups() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_reaches_the_database_once_per_key() {
    // Half the flood fits: the bound must evict.
    let bounds = (1_000, FLOOD / 2);
    with_app_configured(Backend::Sqlite, small_cache(bounds.0, bounds.1), async |app| {
        // Over gRPC, while the cache has room: once per key, then never again.
        let some: Vec<String> = (0..2_000).map(|_| unknown_key()).collect();
        let first = unknown_over_grpc(app, &some).await;
        assert!(first <= 2_000, "2,000 unknown keys reached the database {first} times");
        let again = unknown_over_grpc(app, &some).await;
        assert_eq!(
            again, 0,
            "the same 2,000 unknown keys again, within the negative-cache TTL, reached the database"
        );

        // A flood twice the negative cache's bound.
        let keys: Arc<Vec<(String, ValidationCode)>> = Arc::new(
            (0..FLOOD)
                .map(|_| (unknown_key(), ValidationCode::NotFound))
                .collect(),
        );
        let validator = &app.validator;
        let before = validator.database_lookups();
        let (_, largest_unknown) = flood(validator, &keys, bounds).await;
        let first = validator.database_lookups() - before;
        assert!(
            first <= FLOOD as u64,
            "{FLOOD} distinct unknown keys reached the database {first} times"
        );
        assert_eq!(
            largest_unknown, bounds.1,
            "the flood filled the negative cache up to its bound"
        );
        // Again: the keys the bound evicted (at least half) are read again,
        // and still no key more than once.
        flood(validator, &keys, bounds).await;
        let second = validator.database_lookups() - before - first;
        assert!(
            (FLOOD - bounds.1) as u64 <= second && second <= FLOOD as u64,
            "the same {FLOOD} unknown keys again, {} of them remembered at most, reached the database {second} times",
            bounds.1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_caches_stay_within_their_bounds() {
    let bounds = (50, 200);
    with_app_configured(Backend::Sqlite, small_cache(bounds.0, bounds.1), async |app| {
        let validator = &app.validator;

        // Over gRPC: 500 unknown keys (2.5x the bound), twice.
        let unknown: Vec<String> = (0..500).map(|_| unknown_key()).collect();
        let first = unknown_over_grpc(app, &unknown).await;
        assert!(first <= 500, "500 unknown keys reached the database {first} times");
        assert!(validator.cache().len().1 <= bounds.1);
        let second = unknown_over_grpc(app, &unknown).await;
        assert!(
            (500 - bounds.1) as u64 <= second && second <= 500,
            "500 unknown keys again, {} of them remembered at most, reached the database {second} times",
            bounds.1
        );
        assert!(validator.cache().len().1 <= bounds.1);

        // 500 real keys (10x the key bound) among 5,000 unknown ones.
        let mut real = Vec::new();
        for i in 0..500 {
            real.push(insert_key(&app.store, &app.hasher, &format!("real {i}")).await);
        }
        let mut keys: Vec<(String, ValidationCode)> = Vec::new();
        for i in 0..5_000 {
            keys.push((unknown_key(), ValidationCode::NotFound));
            if i % 5 == 0 {
                keys.push((real[(i / 5) % real.len()].clone(), ValidationCode::Valid));
            }
        }
        let keys = Arc::new(keys);
        let (largest_keys, largest_unknown) = flood(validator, &keys, bounds).await;
        let (cached, remembered) = validator.cache().len();
        assert!(cached <= bounds.0 && remembered <= bounds.1);
        assert_eq!(
            (largest_keys, largest_unknown),
            bounds,
            "the load filled both caches up to their bounds"
        );
    })
    .await;
}
