//! Per-key policy over real gRPC: the IP allowlist (`allowed_cidrs`), rate
//! limits and credits set by CreateKey and UpdateKey, returned by GetKey and
//! ListKeys, recorded in the audit log, and carried by RotateKey; the
//! allowlist enforced by ValidateKey. Bad values are in `bad_input.rs`
//! (named violations, nothing written); ext_authz through a real Envoy is in
//! `envoy.rs`, the keyward-auth layer in `auth_layer.rs`.

use std::collections::HashMap;

use keyward::pb;
use tonic::Code;

use crate::e2e_test;
use crate::helpers::{CreatedKey, TestApp};

/// ValidateKey of `key` from `client_ip` with `scopes`.
async fn validate_from(
    app: &TestApp,
    key: &str,
    client_ip: &str,
    scopes: &[&str],
) -> Result<pb::ValidateKeyResponse, tonic::Status> {
    app.validation()
        .validate_key(pb::ValidateKeyRequest {
            key: key.to_owned(),
            required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            client_ip: client_ip.to_owned(),
            user_agent: "policy-test".to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// UpdateKey of `id` with mask `paths`, the body set by `body` (and a new name).
async fn update(
    app: &TestApp,
    id: &str,
    paths: &[&str],
    body: impl FnOnce(&mut pb::UpdateKeyRequest),
) -> Result<pb::ApiKey, tonic::Status> {
    let mut request = pb::UpdateKeyRequest {
        id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        name: "renamed".to_owned(),
        ..Default::default()
    };
    body(&mut request);
    app.admin()
        .update_key(app.acme(request))
        .await
        .map(|r| r.into_inner().api_key.expect("the key"))
}

/// UpdateKey of `id` with mask `paths`, the body carrying `cidrs` (and a new name).
async fn set_allowlist(
    app: &TestApp,
    id: &str,
    cidrs: &[&str],
    paths: &[&str],
) -> Result<pb::ApiKey, tonic::Status> {
    update(app, id, paths, |r| {
        r.allowed_cidrs = cidrs.iter().map(|c| (*c).to_owned()).collect();
    })
    .await
}

/// A wire rate limit of `limit` per `seconds`, each call costing `cost` (0: the default).
fn rate_limit(name: &str, limit: i64, seconds: i64, cost: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.to_owned(),
        limit,
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        cost,
    }
}

/// Wire credits: `remaining`, refilled daily to `daily` (0: never).
fn credits(remaining: i64, daily: i64) -> pb::Credits {
    pb::Credits {
        remaining,
        refill_amount: daily,
        refill_interval: if daily > 0 {
            pb::RefillInterval::Daily
        } else {
            pb::RefillInterval::Unspecified
        }
        .into(),
        refills_at: None,
    }
}

/// The next 00:00 UTC after now: when daily credits are refilled.
fn next_midnight() -> prost_types::Timestamp {
    let day = chrono::Utc::now().timestamp().div_euclid(86_400);
    prost_types::Timestamp {
        seconds: (day + 1) * 86_400,
        nanos: 0,
    }
}

/// The changes of `key_id`'s newest event, parsed.
async fn newest_changes(
    app: &TestApp,
    key_id: &str,
) -> (pb::KeyEventType, HashMap<String, serde_json::Value>) {
    let events = app.list_events(&app.acme_key, key_id).await;
    let newest = events.first().expect("an event");
    let changes = newest
        .changes
        .iter()
        .map(|(field, json)| {
            let value = serde_json::from_str(json).expect("changes are JSON text");
            (field.clone(), value)
        })
        .collect();
    (newest.r#type(), changes)
}

e2e_test!(
    an_allowlist_is_stored_canonically_returned_and_audited,
    |app| {
        let CreatedKey { id, key, .. } = app
            .create_key("office only")
            .scopes(&["orders:read"])
            .with(|r| {
                r.allowed_cidrs = ["2001:db8::1/32", "10.9.8.7/8", "203.0.113.7", "10.0.0.0/8"]
                    .map(str::to_owned)
                    .to_vec();
            })
            .await;
        let canonical = ["10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32"];
        assert_eq!(key.allowed_cidrs, canonical, "CreateKey's answer");
        assert_eq!(app.get_key(&id).await.allowed_cidrs, canonical, "GetKey");
        let listed = app.list_keys(&app.acme_key).await;
        let listed = listed.iter().find(|k| k.id == id).expect("listed");
        assert_eq!(listed.allowed_cidrs, canonical, "ListKeys");
        let plain = app.create_key("anywhere").await;
        assert!(
            plain.key.allowed_cidrs.is_empty(),
            "no list: no restriction"
        );

        let (kind, changes) = newest_changes(app, &id).await;
        assert_eq!(kind, pb::KeyEventType::Created);
        assert_eq!(changes["allowed_cidrs"], serde_json::json!(canonical));

        // A mask without allowed_cidrs leaves the list alone, whatever the body says.
        let renamed = set_allowlist(app, &id, &["192.0.2.0/24"], &["name"])
            .await
            .expect("UpdateKey succeeds");
        assert_eq!(renamed.name, "renamed");
        assert_eq!(renamed.allowed_cidrs, canonical);

        // With it, the list is replaced; the event records both lists.
        let updated = set_allowlist(app, &id, &["198.51.100.0/24", "::1"], &["allowed_cidrs"])
            .await
            .expect("UpdateKey succeeds");
        assert_eq!(updated.allowed_cidrs, ["198.51.100.0/24", "::1/128"]);
        assert_eq!(app.get_key(&id).await.allowed_cidrs, updated.allowed_cidrs);
        let (kind, changes) = newest_changes(app, &id).await;
        assert_eq!(kind, pb::KeyEventType::Updated);
        assert_eq!(
            changes["allowed_cidrs"],
            serde_json::json!(["198.51.100.0/24", "::1/128"])
        );
        assert_eq!(
            changes["previous_allowed_cidrs"],
            serde_json::json!(canonical)
        );

        // The same list again changes nothing and records nothing.
        let events = app.list_events(&app.acme_key, &id).await.len();
        set_allowlist(app, &id, &["::1", "198.51.100.7/24"], &["allowed_cidrs"])
            .await
            .expect("UpdateKey succeeds");
        assert_eq!(app.list_events(&app.acme_key, &id).await.len(), events);

        // A rotated key keeps the allowlist.
        let rotated = app
            .admin()
            .rotate_key(app.acme(pb::RotateKeyRequest {
                id: id.clone(),
                grace_period: None,
            }))
            .await
            .expect("RotateKey succeeds")
            .into_inner();
        crate::helpers::record_secret(&rotated.secret);
        let new_key = rotated.api_key.expect("the new key");
        assert_eq!(new_key.allowed_cidrs, updated.allowed_cidrs);

        // An empty list with the path lifts the restriction.
        let lifted = set_allowlist(app, &id, &[], &["allowed_cidrs"])
            .await
            .expect("UpdateKey succeeds");
        assert!(lifted.allowed_cidrs.is_empty());
        let (_, changes) = newest_changes(app, &id).await;
        assert_eq!(changes["allowed_cidrs"], serde_json::json!([]));
    }
);

e2e_test!(validate_key_checks_client_ip_against_the_allowlist, |app| {
    let CreatedKey { id, secret, .. } = app
        .create_key("limited")
        .scopes(&["orders:read"])
        .with(|r| r.allowed_cidrs = vec!["203.0.113.0/24".into(), "2001:db8::/32".into()])
        .await;

    // Inside (IPv4, IPv4-mapped IPv6, IPv6 with a zone): valid, and the
    // answer carries the list for callers that reuse verdicts.
    for inside in ["203.0.113.7", "::ffff:203.0.113.200", "2001:db8::5%eth0"] {
        let answer = validate_from(app, &secret, inside, &["orders:read"])
            .await
            .expect("ValidateKey answers");
        assert_eq!(answer.code(), pb::ValidationCode::Valid, "{inside}");
        assert!(answer.valid);
        assert_eq!(answer.key_id, id);
        assert_eq!(answer.allowed_cidrs, ["203.0.113.0/24", "2001:db8::/32"]);
    }

    // Outside, or no address at all (fail closed): IP_NOT_ALLOWED, nothing
    // of the key described; the address is checked before the scopes.
    for (outside, scopes) in [
        ("198.51.100.1", &["orders:read"][..]),
        ("2001:db9::1", &[][..]),
        ("", &[][..]),
        ("198.51.100.1", &["orders:write"][..]),
    ] {
        let answer = validate_from(app, &secret, outside, scopes)
            .await
            .expect("ValidateKey answers");
        assert_eq!(
            answer.code(),
            pb::ValidationCode::IpNotAllowed,
            "{outside:?} {scopes:?}"
        );
        assert!(!answer.valid);
        assert!(answer.key_id.is_empty() && answer.scopes.is_empty());
        assert!(answer.allowed_cidrs.is_empty(), "the list is not told");
    }
    let answer = validate_from(app, &secret, "203.0.113.9", &["orders:write"])
        .await
        .expect("ValidateKey answers");
    assert_eq!(answer.code(), pb::ValidationCode::InsufficientScope);

    // A client_ip that is no address is the caller's mistake.
    let refused = validate_from(app, &secret, "office", &[])
        .await
        .expect_err("not an address");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // A key without a list works from anywhere, and without an address.
    let open = app.create_key("open").await;
    for anywhere in ["198.51.100.1", ""] {
        let answer = validate_from(app, &open.secret, anywhere, &[])
            .await
            .expect("ValidateKey answers");
        assert_eq!(answer.code(), pb::ValidationCode::Valid);
        assert!(answer.allowed_cidrs.is_empty());
    }

    // Changes show at once (the validator's cache follows the admin API).
    set_allowlist(app, &id, &["198.51.100.0/24"], &["allowed_cidrs"])
        .await
        .expect("UpdateKey succeeds");
    for (client, expected) in [
        ("198.51.100.1", pb::ValidationCode::Valid),
        ("203.0.113.7", pb::ValidationCode::IpNotAllowed),
    ] {
        let answer = validate_from(app, &secret, client, &[])
            .await
            .expect("ValidateKey answers");
        assert_eq!(answer.code(), expected, "{client}");
    }
    set_allowlist(app, &id, &[], &["allowed_cidrs"])
        .await
        .expect("UpdateKey succeeds");
    let answer = validate_from(app, &secret, "203.0.113.7", &[])
        .await
        .expect("ValidateKey answers");
    assert_eq!(answer.code(), pb::ValidationCode::Valid);
});

e2e_test!(
    an_admin_keys_allowlist_binds_the_admin_api,
    backends = [sqlite],
    |app| {
        // Test clients connect from 127.0.0.1.
        let elsewhere = app
            .create_key("remote admin")
            .admin()
            .with(|r| r.allowed_cidrs = vec!["192.0.2.0/24".into()])
            .await;
        let here = app
            .create_key("local admin")
            .admin()
            .with(|r| r.allowed_cidrs = vec!["127.0.0.0/8".into()])
            .await;
        let get = async |key: &str| {
            let request = pb::GetKeyRequest {
                id: here.id.clone(),
            };
            app.admin()
                .get_key(crate::helpers::with_key(key, request))
                .await
        };
        assert_eq!(
            get(&elsewhere.secret).await.expect_err("refused").code(),
            Code::PermissionDenied
        );
        get(&here.secret).await.expect("allowed from 127.0.0.1");
    }
);

e2e_test!(
    rate_limits_and_credits_are_returned_updated_and_audited,
    |app| {
        let CreatedKey { id, key, .. } = app
            .create_key("metered")
            .with(|r| {
                r.rate_limits = vec![
                    rate_limit("requests", 100, 1, 0),
                    rate_limit("bulk", 1000, 10, 5),
                ];
                // refills_at is output only: what is sent is ignored.
                r.credits = Some(pb::Credits {
                    refills_at: Some(prost_types::Timestamp::default()),
                    ..credits(500, 1000)
                });
            })
            .await;
        // Sorted by name, the default cost made explicit.
        let limits = vec![
            rate_limit("bulk", 1000, 10, 5),
            rate_limit("requests", 100, 1, 1),
        ];
        let granted = pb::Credits {
            refills_at: Some(next_midnight()),
            ..credits(500, 1000)
        };
        assert_eq!(key.rate_limits, limits, "CreateKey's answer");
        assert_eq!(key.credits, Some(granted), "CreateKey's answer");
        let got = app.get_key(&id).await;
        assert_eq!(
            (&got.rate_limits, &got.credits),
            (&limits, &key.credits),
            "GetKey"
        );
        let listed = app.list_keys(&app.acme_key).await;
        let listed = listed.iter().find(|k| k.id == id).expect("listed");
        assert_eq!(
            (&listed.rate_limits, &listed.credits),
            (&limits, &key.credits),
            "ListKeys"
        );
        let plain = app.create_key("unmetered").await.key;
        assert!(plain.rate_limits.is_empty() && plain.credits.is_none());

        let (kind, changes) = newest_changes(app, &id).await;
        assert_eq!(kind, pb::KeyEventType::Created);
        assert_eq!(
            changes["rate_limits"],
            serde_json::json!([
                {"name": "bulk", "limit": 1000, "window_s": 10, "cost": 5},
                {"name": "requests", "limit": 100, "window_s": 1, "cost": 1},
            ])
        );
        assert_eq!(changes["credits"]["remaining"], 500);
        assert_eq!(changes["credits"]["refill_interval"], "daily");

        // A mask without them leaves them alone, whatever the body says.
        let renamed = update(app, &id, &["name"], |r| {
            r.rate_limits = vec![rate_limit("other", 1, 1, 0)];
            r.credits = Some(credits(1, 0));
        })
        .await
        .expect("UpdateKey succeeds");
        assert_eq!(
            (&renamed.rate_limits, &renamed.credits),
            (&limits, &key.credits)
        );

        // With them, both are replaced; the event records old and new.
        let updated = update(app, &id, &["rate_limits", "credits"], |r| {
            r.rate_limits = vec![rate_limit("hourly", 5000, 3600, 0)];
            r.credits = Some(credits(20, 0));
        })
        .await
        .expect("UpdateKey succeeds");
        assert_eq!(updated.rate_limits, [rate_limit("hourly", 5000, 3600, 1)]);
        assert_eq!(
            updated.credits,
            Some(credits(20, 0)),
            "no refill: no refills_at"
        );
        assert_eq!(app.get_key(&id).await.credits, updated.credits);
        let (kind, changes) = newest_changes(app, &id).await;
        assert_eq!(kind, pb::KeyEventType::Updated);
        assert_eq!(
            changes["rate_limits"],
            serde_json::json!([{"name": "hourly", "limit": 5000, "window_s": 3600, "cost": 1}])
        );
        assert_eq!(changes["previous_rate_limits"][1]["name"], "requests");
        assert_eq!(changes["credits"]["remaining"], 20);
        assert!(changes["credits"].get("refill_amount").is_none());
        assert_eq!(changes["previous_credits"]["remaining"], 500);
        assert_eq!(changes["previous_credits"]["refill_amount"], 1000);

        // A rotated key keeps its rate limits and what is left of its credits.
        let rotated = app
            .admin()
            .rotate_key(app.acme(pb::RotateKeyRequest {
                id: id.clone(),
                grace_period: None,
            }))
            .await
            .expect("RotateKey succeeds")
            .into_inner();
        crate::helpers::record_secret(&rotated.secret);
        let new_key = rotated.api_key.expect("the new key");
        assert_eq!(new_key.rate_limits, updated.rate_limits);
        assert_eq!(new_key.credits, updated.credits);

        // Empty rate limits and unset credits with their paths remove them.
        let cleared = update(app, &id, &["rate_limits", "credits"], |_| {})
            .await
            .expect("UpdateKey succeeds");
        assert!(cleared.rate_limits.is_empty() && cleared.credits.is_none());
        assert!(app.get_key(&id).await.credits.is_none());
        let (_, changes) = newest_changes(app, &id).await;
        assert_eq!(changes["rate_limits"], serde_json::json!([]));
        assert_eq!(changes["credits"], serde_json::Value::Null);
        assert_eq!(changes["previous_credits"]["remaining"], 20);
    }
);

e2e_test!(recorded_spending_shows_in_what_is_left, |app| {
    let CreatedKey { id, key, .. } = app
        .create_key("quota")
        .with(|r| r.credits = Some(credits(100, 0)))
        .await;
    assert_eq!(key.credits.as_ref().map(|c| c.remaining), Some(100));
    // What a usage flush writes: spending of the key's current setting.
    let key_id = keyward_core::KeyId::parse(&id).expect("a key id");
    let stored = app.store.get_key("acme", &key_id).await.expect("the key");
    let spent = keyward_core::CreditsSpent {
        used: 30,
        ..stored.credits_spent
    };
    app.store
        .add_credit_spends(&[(key_id.clone(), spent), (key_id.clone(), spent)])
        .await
        .expect("recorded");
    assert_eq!(
        app.get_key(&id).await.credits.map(|c| c.remaining),
        Some(40)
    );
    let listed = app.list_keys(&app.acme_key).await;
    let listed = listed.iter().find(|k| k.id == id).expect("listed");
    assert_eq!(listed.credits.as_ref().map(|c| c.remaining), Some(40));

    // More than granted shows as none left, not less than none.
    app.store
        .add_credit_spends(&[(key_id.clone(), spent), (key_id, spent)])
        .await
        .expect("recorded");
    assert_eq!(app.get_key(&id).await.credits.map(|c| c.remaining), Some(0));

    // New credits start over, the same amount included (a top-up).
    let topped = update(app, &id, &["credits"], |r| {
        r.credits = Some(credits(100, 0))
    })
    .await
    .expect("UpdateKey succeeds");
    assert_eq!(topped.credits.map(|c| c.remaining), Some(100));
});
