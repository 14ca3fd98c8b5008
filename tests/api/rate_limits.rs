//! Rate limits and credits enforced by ValidateKey over real gRPC, on every
//! backend (SQLite counts in memory; PostgreSQL and MariaDB, as shared
//! deployments, count through the machine's Redis, see `test_settings`).
//! The admin side (validation of limits, GetKey, audit) is in `policy.rs`;
//! ext_authz through Envoy in `envoy.rs`; the keyward-auth layer in
//! `auth_layer.rs`.
//!
//! Windows here are 30 days long, aligned to the epoch, so no window ends
//! during a test: counts are exact, never timing-dependent.

use std::time::Duration;

use keyward::pb;
use keyward::pb::ValidationCode::{RateLimited, UsageExceeded, Valid};
use tonic::Code;

use keyward::Application;
use keyward::limits::{RedisFailureMode, RedisUrl};
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::startup::StartupError;
use keyward_store::testing::Backend;

use crate::e2e_test;
use crate::helpers::{
    CreatedKey, NewKey, TestApp, code, eventually, serve_until_dropped, with_app,
    with_app_configured,
};

/// The longest window, 30 days: none ends during a test.
const MONTH_SECONDS: i64 = 2_592_000;

/// A rate limit of `limit` per 30 days.
pub fn monthly_limit(name: &str, limit: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.to_owned(),
        limit,
        duration: Some(prost_types::Duration {
            seconds: MONTH_SECONDS,
            nanos: 0,
        }),
        cost: 0,
    }
}

/// Credits of `remaining`, never refilled.
pub fn credits(remaining: i64) -> pb::Credits {
    pb::Credits {
        remaining,
        ..Default::default()
    }
}

/// ValidateKey of `key` spending `cost` (0: the key's own costs) with an
/// optional idempotency key.
async fn spend(
    app: &TestApp,
    key: &str,
    cost: i64,
    idempotency_key: &str,
) -> Result<pb::ValidateKeyResponse, tonic::Status> {
    app.validation()
        .validate_key(pb::ValidateKeyRequest {
            key: key.to_owned(),
            client_ip: "192.0.2.10".to_owned(),
            cost,
            idempotency_key: idempotency_key.to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The codes of `n` calls of `key`, each spending the key's own costs.
async fn codes(app: &TestApp, key: &str, n: usize) -> Vec<pb::ValidationCode> {
    let mut codes = Vec::with_capacity(n);
    for _ in 0..n {
        codes.push(spend(app, key, 0, "").await.expect("answered").code());
    }
    codes
}

fn seconds(duration: Option<prost_types::Duration>) -> i64 {
    duration.map_or(-1, |d| d.seconds + i64::from(d.nanos > 0))
}

e2e_test!(
    a_key_over_its_limit_is_rate_limited_until_the_window_ends,
    |app| {
        let CreatedKey { secret: key, .. } = app
            .create_key("five a month")
            .with(|r| r.rate_limits = vec![monthly_limit("requests", 5)])
            .await;
        let mut left = Vec::new();
        for _ in 0..5 {
            let answer = spend(app, &key, 0, "").await.expect("answered");
            assert_eq!(answer.code(), Valid);
            assert!(answer.valid && answer.metered);
            assert_eq!(
                answer.cache_ttl.map(|d| d.seconds + i64::from(d.nanos)),
                Some(0)
            );
            assert_eq!((answer.limit_name.as_str(), answer.limit), ("requests", 5));
            assert!(
                answer.retry_after.is_none(),
                "an allowed call has no retry_after"
            );
            left.push(answer.remaining);
        }
        assert_eq!(left, [4, 3, 2, 1, 0]);
        let refused = spend(app, &key, 0, "").await.expect("answered");
        assert_eq!(refused.code(), RateLimited);
        assert!(!refused.valid);
        assert!(refused.key_id.is_empty(), "a refusal describes no key");
        assert_eq!(
            (
                refused.limit_name.as_str(),
                refused.limit,
                refused.remaining
            ),
            ("requests", 5, 0)
        );
        let reset = seconds(refused.reset);
        assert!((1..=MONTH_SECONDS).contains(&reset), "reset {reset}");
        assert_eq!(seconds(refused.retry_after), reset);
        assert_eq!(seconds(refused.window), MONTH_SECONDS);
    }
);

e2e_test!(a_calls_cost_spends_that_many_units, |app| {
    let CreatedKey { secret: key, .. } = app
        .create_key("costly")
        .with(|r| r.rate_limits = vec![monthly_limit("units", 5)])
        .await;
    let spent = |cost| spend(app, &key, cost, "");
    assert_eq!(spent(3).await.expect("answered").remaining, 2);
    assert_eq!(
        spent(3).await.expect("answered").code(),
        RateLimited,
        "3 more do not fit in 2: nothing is spent"
    );
    assert_eq!(spent(2).await.expect("answered").code(), Valid);
    for bad in [-1, 1_000_001] {
        let refused = spent(bad).await;
        assert_eq!(code(refused), Code::InvalidArgument, "cost {bad}");
    }
    for bad in ["k".repeat(257), "order\n17".to_owned()] {
        let refused = spend(app, &key, 1, &bad).await;
        assert_eq!(
            code(refused),
            Code::InvalidArgument,
            "idempotency key {bad:?}"
        );
    }
    assert_eq!(
        spent(1).await.expect("answered").code(),
        RateLimited,
        "the refused requests spent nothing: 2 + 3 of 5 are spent"
    );
});

e2e_test!(
    a_call_refused_by_one_limit_spends_nothing_of_the_others,
    |app| {
        let CreatedKey {
            id, secret: key, ..
        } = app
            .create_key("two limits")
            .with(|r| {
                r.rate_limits = vec![monthly_limit("hourly", 3), monthly_limit("burst", 2)];
            })
            .await;
        assert_eq!(codes(app, &key, 3).await, [Valid, Valid, RateLimited]);
        // Lift the tighter limit: the refused call took nothing of `hourly`,
        // so exactly one more call fits in it.
        app.admin()
            .update_key(app.acme(pb::UpdateKeyRequest {
                id,
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["rate_limits".to_owned()],
                }),
                rate_limits: vec![monthly_limit("hourly", 3), monthly_limit("burst", 100)],
                ..Default::default()
            }))
            .await
            .expect("UpdateKey succeeds");
        assert_eq!(
            eventually(Duration::from_secs(5), || async {
                let code = spend(app, &key, 0, "").await.expect("answered").code();
                (code != RateLimited).then_some(code)
            })
            .await,
            Some(Valid)
        );
        let refused = spend(app, &key, 0, "").await.expect("answered");
        assert_eq!(
            (refused.code(), refused.limit_name.as_str()),
            (RateLimited, "hourly")
        );
    }
);

e2e_test!(a_refused_scope_spends_nothing, |app| {
    let CreatedKey { secret: key, .. } = app
        .create_key("one call")
        .scopes(&["orders:read"])
        .with(|r| r.rate_limits = vec![monthly_limit("requests", 1)])
        .await;
    let scoped = app.validate(&key, &["orders:write"]).await;
    assert_eq!(scoped.code(), pb::ValidationCode::InsufficientScope);
    assert_eq!(codes(app, &key, 2).await, [Valid, RateLimited]);
});

e2e_test!(
    credits_run_out_and_retries_with_an_idempotency_key_are_charged_once,
    |app| {
        let CreatedKey {
            id, secret: key, ..
        } = app
            .create_key("three credits")
            .with(|r| r.credits = Some(credits(3)))
            .await;
        let first = spend(app, &key, 0, "order-17").await.expect("answered");
        assert_eq!(
            (first.code(), first.limit_name.as_str(), first.remaining),
            (Valid, "credits", 2)
        );
        let retried = spend(app, &key, 0, "order-17").await.expect("answered");
        assert_eq!(
            (retried.code(), retried.remaining),
            (Valid, 2),
            "the retry gets the first call's verdict and spends nothing"
        );
        assert_eq!(
            spend(app, &key, 2, "").await.expect("answered").remaining,
            0
        );
        let out = spend(app, &key, 0, "").await.expect("answered");
        assert_eq!(
            (out.code(), out.limit_name.as_str(), out.remaining),
            (UsageExceeded, "credits", 0)
        );
        assert!(out.reset.is_none(), "credits without a refill never reset");
        // What was spent is recorded in batches: GetKey shows it soon.
        let recorded = eventually(Duration::from_secs(10), || async {
            let credits = app.get_key(&id).await.credits.expect("credits");
            (credits.remaining == 0).then_some(())
        })
        .await;
        assert!(recorded.is_some(), "GetKey shows the credits spent");
    }
);

e2e_test!(
    replicas_sharing_redis_admit_a_limit_exactly_once,
    backends = [postgres, mariadb],
    |app| {
        let replica = app.build_replica().await;
        let replica_url = format!("http://{}", replica.local_addr());
        let _replica = serve_until_dropped(replica);
        let mut other = KeyValidationServiceClient::connect(replica_url)
            .await
            .expect("the replica accepts connections");
        let CreatedKey { secret: key, .. } = app
            .create_key("ten across replicas")
            .with(|r| r.rate_limits = vec![monthly_limit("requests", 10)])
            .await;
        let mut admitted = 0;
        for i in 0..30 {
            let request = pb::ValidateKeyRequest {
                key: key.clone(),
                client_ip: "192.0.2.10".to_owned(),
                ..Default::default()
            };
            let answer = if i % 2 == 0 {
                app.validation().validate_key(request).await
            } else {
                other.validate_key(request).await
            };
            let code = answer.expect("answered").into_inner().code();
            assert!(matches!(code, Valid | RateLimited), "{code:?}");
            admitted += usize::from(code == Valid);
        }
        assert_eq!(admitted, 10, "both replicas count one limit");
    }
);

/// A replica of a shared database that would count alone: without
/// `--redis-url`, its admin API refuses to give a key rate limits or
/// credits, and it refuses to start while such keys exist, unless
/// `--per-replica-limits` says that each replica enforcing them alone is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_database_without_redis_refuses_metered_keys_unless_told() {
    with_app(Backend::Postgres, async |app| {
        let without_redis = |per_replica_limits| {
            let mut settings = app.settings.clone();
            settings.listen = "127.0.0.1:0".parse().expect("an address");
            settings.limiter.redis_url = None;
            settings.limiter.per_replica_limits = per_replica_limits;
            settings
        };
        // Serves `replica` while CreateKey of a rate-limited key is sent to it.
        let create_on = async |replica: Application| {
            let url = format!("http://{}", replica.local_addr());
            let _served = serve_until_dropped(replica);
            let client = KeyAdminServiceClient::connect(url)
                .await
                .expect("the replica accepts connections");
            NewKey::on(client, &app.acme_key, "metered")
                .with(|r| r.rate_limits = vec![monthly_limit("requests", 5)])
                .send()
                .await
        };
        // No metered key yet: it starts, and refuses to create one.
        let alone = Application::build(without_redis(false))
            .await
            .expect("no metered key: it starts");
        let refused = create_on(alone).await.expect_err("refused");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("--redis-url"), "{refused:?}");

        // Once one exists (made through a replica with Redis), such a
        // replica does not start.
        app.create_key("metered")
            .with(|r| r.credits = Some(credits(5)))
            .await;
        let refused = Application::build(without_redis(false))
            .await
            .err()
            .expect("refused at startup");
        assert!(matches!(refused, StartupError::Config(_)), "{refused:?}");
        assert!(refused.to_string().contains("--redis-url"), "{refused}");
        assert!(
            refused.to_string().contains("--per-replica-limits"),
            "{refused}"
        );

        // Told that per-replica limits are accepted: it starts and creates.
        let accepted = Application::build(without_redis(true))
            .await
            .expect("--per-replica-limits: it starts");
        create_on(accepted).await.expect("accepted per replica");
    })
    .await;
}

/// Redis unreachable (`--redis-url` at a closed port): by default
/// (`--redis-failure-mode closed`) a metered key's calls are refused as
/// RATE_LIMITED, retry after 1 s, while keys without meters validate; with
/// `local`, this replica enforces its share of the limit in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_metered_keys_fail_closed_or_count_locally() {
    for mode in [RedisFailureMode::Closed, RedisFailureMode::Local] {
        let unreachable = |settings: &mut keyward::Settings| {
            settings.limiter.redis_url = Some(RedisUrl("redis://127.0.0.1:1".to_owned()));
            settings.limiter.redis_failure_mode = mode;
        };
        with_app_configured(Backend::Postgres, unreachable, async |app| {
            let plain = app.create_key("plain").await;
            let CreatedKey { secret: key, .. } = app
                .create_key("metered")
                .with(|r| r.rate_limits = vec![monthly_limit("requests", 3)])
                .await;
            assert_eq!(app.validate(&plain.secret, &[]).await.code(), Valid);
            let answers = codes(app, &key, 4).await;
            match mode {
                RedisFailureMode::Closed => {
                    assert_eq!(answers, [RateLimited; 4]);
                    let refused = spend(app, &key, 0, "").await.expect("answered");
                    assert_eq!(seconds(refused.retry_after), 1);
                }
                RedisFailureMode::Local => {
                    // One replica known (Redis never answered): all of N.
                    assert_eq!(answers, [Valid, Valid, Valid, RateLimited]);
                }
            }
        })
        .await;
    }
}
