//! Usage counts per key, minute and outcome: GetKeyUsage, ListKeys'
//! `used_since` / `unused_since`, several replicas adding up, retention.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use tonic::Code;

use crate::e2e_test;
use crate::helpers::process::KeywardProcess;
use crate::helpers::{
    TestApp, code, eventually, record_secret, serve_until_dropped, try_validate, with_key,
};

/// GetKeyUsage's `from` and `to`.
type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Long enough for a flush (100 ms in tests) on a loaded machine.
const FLUSHED: Duration = Duration::from_secs(15);

/// The fields a google.rpc.BadRequest in `status` names.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|details| {
            details
                .field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// A response's totals by outcome.
fn totals(usage: &pb::GetKeyUsageResponse) -> BTreeMap<pb::ValidationCode, i64> {
    usage
        .totals
        .iter()
        .map(|count| (count.code(), count.count))
        .collect()
}

/// Waits until GetKeyUsage of `id` (the last 24 hours) totals `expected`.
async fn wait_for_totals(
    app: &TestApp,
    id: &str,
    expected: &[(pb::ValidationCode, i64)],
) -> pb::GetKeyUsageResponse {
    let expected: BTreeMap<_, _> = expected.iter().copied().collect();
    let found = eventually(FLUSHED, || async {
        let usage = app.key_usage(id, None, None).await.expect("GetKeyUsage");
        (totals(&usage) == expected).then_some(usage)
    })
    .await;
    found.unwrap_or_else(|| panic!("usage of {id} never totalled {expected:?}"))
}

e2e_test!(a_rotated_keys_grace_period_calls_show_in_its_usage, |app| {
    let old = app
        .create_key("billing")
        .scopes(&["billing:*"])
        .send()
        .await
        .expect("created");
    let rotated = app
        .admin()
        .rotate_key(app.acme(pb::RotateKeyRequest {
            id: old.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .expect("RotateKey")
        .into_inner();
    record_secret(&rotated.secret);
    let new_id = rotated.api_key.expect("the new key").id;
    // The client has not switched yet: it keeps calling with the old key.
    for _ in 0..7 {
        let verdict = app.validate(&old.secret, &["billing:read"]).await;
        assert_eq!(
            verdict.code(),
            pb::ValidationCode::Valid,
            "in its grace period"
        );
    }
    let usage = wait_for_totals(app, &old.id, &[(pb::ValidationCode::Valid, 7)]).await;
    assert_eq!(usage.id, old.id);
    assert_eq!(usage.total, 7);
    let points: i64 = usage
        .points
        .iter()
        .flat_map(|point| &point.counts)
        .map(|count| count.count)
        .sum();
    assert_eq!(points, 7, "the points add up to the totals");
    let unused = app.key_usage(&new_id, None, None).await.expect("usage");
    assert!(
        unused.points.is_empty() && unused.total == 0,
        "the new key was never presented: {unused:?}"
    );
});

e2e_test!(usage_is_counted_by_outcome_per_minute, |app| {
    let key = app
        .create_key("orders")
        .scopes(&["orders:read"])
        .send()
        .await
        .expect("created");
    let before = Utc::now();
    for _ in 0..3 {
        app.validate(&key.secret, &["orders:read"]).await;
    }
    for _ in 0..2 {
        let verdict = app.validate(&key.secret, &["orders:write"]).await;
        assert_eq!(verdict.code(), pb::ValidationCode::InsufficientScope);
    }
    app.archive(&key.id).await;
    let verdict = app.validate(&key.secret, &[]).await;
    assert_eq!(verdict.code(), pb::ValidationCode::Archived);
    // Malformed and unknown keys name no key: counted nowhere per key.
    app.validate("sk_live_not-a-key", &[]).await;
    let usage = wait_for_totals(
        app,
        &key.id,
        &[
            (pb::ValidationCode::Valid, 3),
            (pb::ValidationCode::InsufficientScope, 2),
            (pb::ValidationCode::Archived, 1),
        ],
    )
    .await;
    assert_eq!(usage.total, 6);
    let after = Utc::now();
    // One point per minute with calls, oldest first, counts in code order.
    let minutes: Vec<i64> = usage
        .points
        .iter()
        .map(|point| point.minute.expect("a minute").seconds)
        .collect();
    assert!(
        minutes.windows(2).all(|pair| pair[0] < pair[1]),
        "{minutes:?}"
    );
    for minute in &minutes {
        assert_eq!(minute % 60, 0, "a minute's start");
        assert!(
            (before.timestamp() - 60..=after.timestamp()).contains(minute),
            "{minute} is within the test"
        );
    }
    for point in &usage.points {
        let codes: Vec<i32> = point.counts.iter().map(|count| count.code).collect();
        assert!(codes.windows(2).all(|pair| pair[0] < pair[1]), "{codes:?}");
    }
    // A range that ends before the calls shows none of them.
    let earlier = app
        .key_usage(
            &key.id,
            Some(before - chrono::Duration::hours(2)),
            Some(before - chrono::Duration::hours(1)),
        )
        .await
        .expect("usage");
    assert!(earlier.points.is_empty() && earlier.total == 0);
});

e2e_test!(
    get_key_usage_rejects_bad_ranges_with_field_details,
    backends = [sqlite],
    |app| {
        let key = app.create_key("k").send().await.expect("created");
        let now = Utc::now();
        let cases: [(&str, Range, &str); 4] = [
            ("not-a-key-id", (None, None), "id"),
            (&key.id, (Some(now), Some(now)), "to"),
            (
                &key.id,
                (Some(now), Some(now - chrono::Duration::minutes(5))),
                "to",
            ),
            (
                &key.id,
                (Some(now - chrono::Duration::days(32)), Some(now)),
                "from",
            ),
        ];
        for (id, (from, to), field) in cases {
            let status = app
                .key_usage(id, from, to)
                .await
                .expect_err("a bad request");
            assert_eq!(status.code(), Code::InvalidArgument, "{id} {from:?} {to:?}");
            let violations = violations(&status);
            assert!(
                violations.iter().any(|(name, _)| name == field),
                "{field} is named: {violations:?}"
            );
        }
        // A timestamp that is no time at all.
        let status = app
            .admin()
            .get_key_usage(app.acme(pb::GetKeyUsageRequest {
                id: key.id.clone(),
                from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                to: None,
            }))
            .await
            .expect_err("a bad timestamp");
        assert_eq!(status.code(), Code::InvalidArgument);
        // Exactly 31 days is allowed; an unknown key is NOT_FOUND.
        let month = app
            .key_usage(&key.id, Some(now - chrono::Duration::days(31)), Some(now))
            .await
            .expect("31 days");
        assert_eq!(month.total, 0);
        let unknown = app
            .key_usage(&keyward_core::KeyId::generate().to_string(), None, None)
            .await;
        assert_eq!(code(unknown), Code::NotFound);
        // ListKeys: used_since must be the earlier minute.
        let status = app
            .admin()
            .list_keys(app.acme(pb::ListKeysRequest {
                used_since: Some(keyward::convert::timestamp(now)),
                unused_since: Some(keyward::convert::timestamp(now)),
                ..Default::default()
            }))
            .await
            .expect_err("an empty combination");
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = violations(&status);
        assert!(violations.iter().any(|(name, _)| name == "unused_since"));
    }
);

/// Every standard key ListKeys returns with `filter`, paging two at a time.
async fn list_standard(app: &TestApp, filter: pb::ListKeysRequest) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after_id = String::new();
    loop {
        let page = app
            .admin()
            .list_keys(app.acme(pb::ListKeysRequest {
                limit: Some(2),
                after_id: after_id.clone(),
                ..filter.clone()
            }))
            .await
            .expect("ListKeys")
            .into_inner();
        ids.extend(
            page.keys
                .iter()
                .filter(|key| key.kind() == pb::KeyKind::Standard)
                .map(|key| key.id.clone()),
        );
        if !page.has_more {
            return ids;
        }
        after_id = page.last_id;
    }
}

e2e_test!(list_keys_filters_by_use_across_pages, |app| {
    let mut keys = Vec::new();
    for n in 0..6 {
        keys.push(
            app.create_key(&format!("k{n}"))
                .send()
                .await
                .expect("created"),
        );
    }
    let since = Utc::now() - chrono::Duration::minutes(5);
    // Keys 0, 2 and 4 are presented (4 is revoked first: a denial is a use too).
    app.revoke(&keys[4].id).await;
    for key in keys.iter().step_by(2) {
        app.validate(&key.secret, &[]).await;
    }
    wait_for_totals(app, &keys[4].id, &[(pb::ValidationCode::Revoked, 1)]).await;
    wait_for_totals(app, &keys[0].id, &[(pb::ValidationCode::Valid, 1)]).await;
    wait_for_totals(app, &keys[2].id, &[(pb::ValidationCode::Valid, 1)]).await;
    // Newest first, like every listing.
    let ids = |picked: &[usize]| -> Vec<String> {
        picked.iter().rev().map(|n| keys[*n].id.clone()).collect()
    };
    let used = list_standard(
        app,
        pb::ListKeysRequest {
            used_since: Some(keyward::convert::timestamp(since)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(used, ids(&[0, 2, 4]));
    let unused = list_standard(
        app,
        pb::ListKeysRequest {
            unused_since: Some(keyward::convert::timestamp(since)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(unused, ids(&[1, 3, 5]));
    // Used since an hour ago, but not since five minutes ago: none.
    let stale = list_standard(
        app,
        pb::ListKeysRequest {
            used_since: Some(keyward::convert::timestamp(
                since - chrono::Duration::hours(1),
            )),
            unused_since: Some(keyward::convert::timestamp(since)),
            ..Default::default()
        },
    )
    .await;
    assert!(stale.is_empty(), "{stale:?}");
    // Since the next minute: nothing was used yet.
    let future = list_standard(
        app,
        pb::ListKeysRequest {
            used_since: Some(keyward::convert::timestamp(
                Utc::now() + chrono::Duration::minutes(2),
            )),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty(), "{future:?}");
});

e2e_test!(
    two_replicas_add_up_for_one_key_in_one_minute,
    backends = [postgres],
    |app| {
        let key = app.create_key("shared").send().await.expect("created");
        let mut replica = KeywardProcess::replica("usage-replica", &app.database_url);
        let channel = replica.wait_until_serving(&app.acme_key).await;
        let mut other = KeyValidationServiceClient::new(channel.clone());
        // Both replicas' calls in one minute: start early in a minute.
        while Utc::now().second() > 40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..5 {
            app.validate(&key.secret, &[]).await;
        }
        for _ in 0..4 {
            let verdict = try_validate(&mut other, &key.secret, &[]).await;
            assert_eq!(verdict, Ok(pb::ValidationCode::Valid));
        }
        let usage = wait_for_totals(app, &key.id, &[(pb::ValidationCode::Valid, 9)]).await;
        assert_eq!(usage.points.len(), 1, "one minute: {usage:?}");
        assert_eq!(usage.points[0].counts.len(), 1);
        assert_eq!(usage.points[0].counts[0].count, 9, "5 + 4, not either");
        // The other replica reads the same rows.
        let seen = KeyAdminServiceClient::new(channel)
            .get_key_usage(with_key(
                &app.acme_key,
                pb::GetKeyUsageRequest {
                    id: key.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("GetKeyUsage on the replica")
            .into_inner();
        assert_eq!(seen.total, 9);
        let status = replica.terminate();
        assert!(status.success(), "the replica stops cleanly");
    }
);

e2e_test!(
    usage_older_than_the_retention_is_pruned,
    backends = [sqlite, postgres, mariadb],
    |app| {
        let key = app.create_key("old").send().await.expect("created");
        app.validate(&key.secret, &[]).await;
        wait_for_totals(app, &key.id, &[(pb::ValidationCode::Valid, 1)]).await;
        // A replica that keeps one second of usage prunes the row at start.
        let replica = app
            .build_replica_with(|settings| settings.usage_retention = Duration::from_secs(1))
            .await;
        let replica = serve_until_dropped(replica);
        let pruned = eventually(Duration::from_secs(90), || async {
            let usage = app.key_usage(&key.id, None, None).await.expect("usage");
            (usage.total == 0).then_some(())
        })
        .await;
        replica.stop().await;
        assert!(pruned.is_some(), "the count was pruned");
        // The key itself and its last-used data are untouched.
        let kept = app.get_key(&key.id).await;
        assert!(kept.last_used_at.is_some());
    }
);

e2e_test!(
    the_cli_shows_usage_and_lists_by_use,
    backends = [sqlite],
    |app| {
        let used = app.create_key("used").send().await.expect("created");
        let idle = app.create_key("idle").send().await.expect("created");
        for _ in 0..2 {
            app.validate(&used.secret, &[]).await;
        }
        wait_for_totals(app, &used.id, &[(pb::ValidationCode::Valid, 2)]).await;
        let json = app
            .cli(&["keys", "usage", &used.id, "--output", "json"])
            .await
            .json();
        assert_eq!(json["id"], used.id.as_str());
        assert_eq!(json["total"], 2);
        assert_eq!(json["totals"][0]["code"], "valid");
        assert_eq!(json["points"][0]["counts"][0]["count"], 2);
        let table = app.cli(&["keys", "usage", &used.id]).await;
        assert!(table.success().contains("valid=2"), "{table:?}");
        let bad = app
            .cli(&[
                "keys",
                "usage",
                &used.id,
                "--from",
                "2026-01-01T00:00:00Z",
                "--to",
                "2025-01-01T00:00:00Z",
            ])
            .await;
        assert_ne!(bad.code, 0, "a reversed range fails: {bad:?}");
        let since = (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
        for (flag, expected) in [("--used-since", &used.id), ("--unused-since", &idle.id)] {
            let listed = app
                .cli(&["keys", "list", flag, &since, "--output", "json"])
                .await
                .json();
            let ids: Vec<&str> = listed["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .filter(|key| key["kind"] == "standard")
                .map(|key| key["id"].as_str().expect("an id"))
                .collect();
            assert_eq!(ids, [expected.as_str()], "{flag}");
        }
    }
);
