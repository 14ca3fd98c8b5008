//! Rate limits and credits: stored in the policy, set and cleared by
//! updates with their audit events, carried by rotation; the spending
//! record that usage flushes add to; the startup question whether any key
//! is metered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_core::{
    ApiKey, Credits, CreditsSpent, KeyId, Policy, RateLimit, RateLimits, Refill, RefillInterval,
};
use keyward_store::{KeyPatch, Store};
use serde_json::{Value, json};

use crate::helpers::{events, material, new_key, user};

fn limits(raw: &[(&str, i64, u64, i64)]) -> RateLimits {
    RateLimits::new(
        raw.iter()
            .map(|&(name, limit, secs, cost)| {
                RateLimit::parse(name, limit, Some(Duration::from_secs(secs)), cost).expect("valid")
            })
            .collect(),
    )
    .expect("valid")
}

/// Credits as an admin asks for them (the store sets `set_at`).
fn credits(remaining: u64, refill: Option<(u64, RefillInterval)>) -> Credits {
    Credits {
        remaining,
        refill: refill.map(|(amount, interval)| Refill { amount, interval }),
        set_at: 0,
    }
}

/// A key of acme named `name` with `policy`.
async fn create(store: &Store, name: &str, policy: Policy) -> ApiKey {
    let mut key = new_key("acme", name);
    key.policy = policy;
    store.create_key(key).await.expect("create")
}

/// The changes of the key's newest event, parsed.
async fn newest_changes(store: &Store, id: &KeyId) -> serde_json::Map<String, Value> {
    let log = events(store, "acme").await;
    let newest = log.iter().find(|e| e.key_id == *id).expect("an event");
    newest
        .changes
        .iter()
        .map(|(field, text)| (field.clone(), serde_json::from_str(text).expect("JSON")))
        .collect()
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

keyward_store::store_test!(
    rate_limits_and_credits_are_stored_and_audited,
    |store| async move {
        let policy = Policy {
            rate_limits: limits(&[("requests", 100, 1, 0), ("bulk", 1000, 10, 5)]),
            credits: Some(credits(500, Some((1000, RefillInterval::Daily)))),
            ..Policy::default()
        };
        let key = create(&store, "metered", policy.clone()).await;
        let stored = key.policy().credits.expect("credits");
        assert_eq!(stored.set_at, micros(key.created_at), "set by the write");
        assert_eq!(
            (stored.remaining, stored.refill),
            (500, policy.credits.unwrap().refill)
        );
        assert_eq!(key.policy().rate_limits, policy.rate_limits);
        assert_eq!(
            key.credits_spent,
            CreditsSpent {
                set_at: stored.set_at,
                period: stored.period_at(key.created_at),
                used: 0
            }
        );
        assert_eq!(store.get_key("acme", &key.id).await.expect("get"), key);

        let created = newest_changes(&store, &key.id).await;
        assert_eq!(
            created["rate_limits"],
            json!([
                {"name": "bulk", "limit": 1000, "window_s": 10, "cost": 5},
                {"name": "requests", "limit": 100, "window_s": 1, "cost": 1},
            ])
        );
        assert_eq!(
            created["credits"],
            json!({"remaining": 500, "refill_amount": 1000, "refill_interval": "daily", "set_at": stored.set_at})
        );
        let plain = create(&store, "plain", Policy::default()).await;
        assert!(plain.policy.is_none());
        assert_eq!(plain.credits_spent, CreditsSpent::default());
        let changes = newest_changes(&store, &plain.id).await;
        assert!(!changes.contains_key("rate_limits") && !changes.contains_key("credits"));
    }
);

keyward_store::store_test!(
    updates_set_and_clear_rate_limits_and_credits,
    |store| async move {
        let admin = user("admin");
        let key = create(&store, "metered", Policy::default()).await;
        let update = |patch: KeyPatch| {
            let store = store.clone();
            let admin = admin.clone();
            let id = key.id.clone();
            async move {
                store
                    .update_key("acme", &id, patch, &admin)
                    .await
                    .expect("update")
            }
        };

        // Set both: the event records the new values and what they replaced.
        let requests = limits(&[("requests", 10, 60, 0)]);
        let updated = update(KeyPatch {
            rate_limits: Some(requests.clone()),
            credits: Some(Some(credits(100, None))),
            ..KeyPatch::default()
        })
        .await;
        let set = updated.policy().credits.expect("credits");
        assert_eq!(set.set_at, micros(updated.updated_at));
        assert_eq!(updated.policy().rate_limits, requests);
        assert_eq!(
            updated.credits_spent,
            CreditsSpent {
                set_at: set.set_at,
                period: 0,
                used: 0
            }
        );
        let changes = newest_changes(&store, &key.id).await;
        assert_eq!(changes["previous_rate_limits"], json!([]));
        assert_eq!(
            changes["rate_limits"],
            json!([{"name": "requests", "limit": 10, "window_s": 60, "cost": 1}])
        );
        assert_eq!(changes["previous_credits"], Value::Null);
        assert_eq!(
            changes["credits"],
            json!({"remaining": 100, "set_at": set.set_at})
        );

        // The same rate limits again: no change, no event.
        let before = events(&store, "acme").await.len();
        update(KeyPatch {
            rate_limits: Some(requests.clone()),
            ..KeyPatch::default()
        })
        .await;
        assert_eq!(events(&store, "acme").await.len(), before);

        // Spend some, then set the same credits again: a top-up, recorded,
        // with what was spent starting over.
        store
            .add_credit_spends(&[(
                key.id.clone(),
                CreditsSpent {
                    used: 60,
                    ..updated.credits_spent
                },
            )])
            .await
            .expect("spend");
        let spent = store.get_key("acme", &key.id).await.expect("get");
        assert_eq!(spent.credits_spent.used, 60);
        assert_eq!(set.remaining_in(0, spent.credits_spent), 40);
        let topped = update(KeyPatch {
            credits: Some(Some(credits(100, None))),
            ..KeyPatch::default()
        })
        .await;
        let again = topped.policy().credits.expect("credits");
        assert!(again.set_at > set.set_at, "a new setting");
        assert_eq!(topped.credits_spent.used, 0);
        assert_eq!(again.remaining_in(0, topped.credits_spent), 100);
        assert_eq!(events(&store, "acme").await.len(), before + 1);
        let changes = newest_changes(&store, &key.id).await;
        assert_eq!(changes["previous_credits"]["set_at"], json!(set.set_at));
        assert!(!changes.contains_key("rate_limits"));

        // Clear both: back to no policy, no spending record.
        let cleared = update(KeyPatch {
            rate_limits: Some(RateLimits::EMPTY),
            credits: Some(None),
            ..KeyPatch::default()
        })
        .await;
        assert!(cleared.policy.is_none());
        assert_eq!(cleared.credits_spent, CreditsSpent::default());
        let changes = newest_changes(&store, &key.id).await;
        assert_eq!(changes["rate_limits"], json!([]));
        assert_eq!(changes["credits"], Value::Null);
        assert_eq!(changes["previous_credits"]["remaining"], json!(100));
        assert_eq!(store.get_key("acme", &key.id).await.expect("get"), cleared);

        // Clearing what is not there changes nothing.
        let before = events(&store, "acme").await.len();
        update(KeyPatch {
            credits: Some(None),
            rate_limits: Some(RateLimits::EMPTY),
            ..KeyPatch::default()
        })
        .await;
        assert_eq!(events(&store, "acme").await.len(), before);
    }
);

keyward_store::store_test!(
    credit_spends_add_up_per_setting_and_period,
    |store| async move {
        let a = create(
            &store,
            "a",
            Policy {
                credits: Some(credits(1000, Some((1000, RefillInterval::Daily)))),
                ..Policy::default()
            },
        )
        .await;
        let b = create(
            &store,
            "b",
            Policy {
                credits: Some(credits(50, None)),
                ..Policy::default()
            },
        )
        .await;
        let gone = create(
            &store,
            "gone",
            Policy {
                credits: Some(credits(5, None)),
                ..Policy::default()
            },
        )
        .await;
        store
            .delete_key("acme", &gone.id, &user("admin"))
            .await
            .expect("delete");
        let events_before = events(&store, "acme").await.len();
        let (sa, sb) = (a.credits_spent, b.credits_spent);
        let spend = |spent: CreditsSpent, used: u64| CreditsSpent { used, ..spent };
        let used = |key: ApiKey| key.credits_spent;

        // Two replicas' batches, out of order, duplicates included; a deleted
        // key and nothing spent are skipped.
        store
            .add_credit_spends(&[
                (b.id.clone(), spend(sb, 7)),
                (a.id.clone(), spend(sa, 10)),
                (gone.id.clone(), spend(gone.credits_spent, 1)),
                (a.id.clone(), spend(sa, 5)),
                (b.id.clone(), spend(sb, 0)),
            ])
            .await
            .expect("spend");
        let a_now = store.get_key("acme", &a.id).await.expect("get");
        assert_eq!(used(a_now.clone()), spend(sa, 15));
        assert_eq!(a_now.updated_at, a.updated_at, "spending is not a change");
        assert_eq!(
            used(store.get_key("acme", &b.id).await.expect("get")),
            spend(sb, 7)
        );
        assert_eq!(
            events(&store, "acme").await.len(),
            events_before,
            "no event"
        );

        // A refill: the next period's spending replaces the record; a late
        // batch of the older period no longer counts.
        let next = CreditsSpent {
            period: sa.period + 1,
            ..spend(sa, 3)
        };
        store
            .add_credit_spends(&[(a.id.clone(), next), (a.id.clone(), spend(sa, 99))])
            .await
            .expect("spend");
        assert_eq!(used(store.get_key("acme", &a.id).await.expect("get")), next);
        let credits = a.policy().credits.expect("credits");
        assert_eq!(
            credits.remaining_in(next.period, next),
            997,
            "refilled, 3 spent"
        );
        store
            .add_credit_spends(&[(a.id.clone(), spend(sa, 1))])
            .await
            .expect("spend");
        assert_eq!(used(store.get_key("acme", &a.id).await.expect("get")), next);

        // Spending of an older setting does not count against a new one.
        let renewed = store
            .update_key(
                "acme",
                &b.id,
                KeyPatch {
                    credits: Some(Some(self::credits(50, None))),
                    ..KeyPatch::default()
                },
                &user("admin"),
            )
            .await
            .expect("update");
        store
            .add_credit_spends(&[(b.id.clone(), spend(sb, 20))])
            .await
            .expect("spend");
        assert_eq!(
            used(store.get_key("acme", &b.id).await.expect("get")),
            renewed.credits_spent,
            "nothing of the old setting"
        );
        store.add_credit_spends(&[]).await.expect("nothing to do");
    }
);

keyward_store::store_test!(
    a_rotated_key_keeps_the_policy_and_what_is_left,
    |store| async move {
        let policy = Policy {
            rate_limits: limits(&[("requests", 100, 1, 0)]),
            credits: Some(credits(100, Some((500, RefillInterval::Monthly)))),
            ..Policy::default()
        };
        let old = create(&store, "old", policy).await;
        store
            .add_credit_spends(&[(
                old.id.clone(),
                CreditsSpent {
                    used: 30,
                    ..old.credits_spent
                },
            )])
            .await
            .expect("spend");
        let (new, old_after) = store
            .rotate_key(
                "acme",
                &old.id,
                material(),
                &user("admin"),
                Duration::from_secs(3600),
            )
            .await
            .expect("rotate");
        assert_eq!(new.policy().rate_limits, old.policy().rate_limits);
        let carried = new.policy().credits.expect("credits");
        assert_eq!(carried.remaining, 70, "what the old key had left");
        assert_eq!(
            carried.refill,
            old.policy().credits.expect("credits").refill
        );
        assert_eq!(carried.set_at, micros(new.created_at), "a new setting");
        assert_eq!(new.credits_spent.used, 0);
        assert_eq!(new.credits_spent.set_at, carried.set_at);
        assert_eq!(store.get_key("acme", &new.id).await.expect("get"), new);
        // The old key keeps its own credits for its grace period.
        assert_eq!(old_after.policy, old.policy);
        assert_eq!(old_after.credits_spent.used, 30);
        let created = newest_changes(&store, &new.id).await;
        assert_eq!(created["credits"]["remaining"], json!(70));
    }
);

keyward_store::store_test!(metered_keys_are_found, |store| async move {
    assert!(!store.has_metered_keys().await.expect("ask"), "no keys");
    create(&store, "plain", Policy::default()).await;
    create(
        &store,
        "fenced",
        Policy {
            allowed_cidrs: keyward_core::AllowedCidrs::parse(&["10.0.0.0/8"]).expect("valid"),
            ..Policy::default()
        },
    )
    .await;
    assert!(
        !store.has_metered_keys().await.expect("ask"),
        "an allowlist meters nothing"
    );

    let limited = create(
        &store,
        "limited",
        Policy {
            rate_limits: limits(&[("requests", 100, 1, 0)]),
            ..Policy::default()
        },
    )
    .await;
    assert!(store.has_metered_keys().await.expect("ask"));
    store
        .revoke_key("acme", &limited.id, &user("admin"))
        .await
        .expect("revoke");
    assert!(
        !store.has_metered_keys().await.expect("ask"),
        "revoked keys never validate"
    );

    // Credits alone, on another organization's key, set by an update.
    let mut other = new_key("globex", "quota");
    other.policy = Policy::default();
    let other = store.create_key(other).await.expect("create");
    store
        .update_key(
            "globex",
            &other.id,
            KeyPatch {
                credits: Some(Some(credits(0, None))),
                ..KeyPatch::default()
            },
            &user("admin"),
        )
        .await
        .expect("update");
    assert!(store.has_metered_keys().await.expect("ask"));
    store
        .delete_key("globex", &other.id, &user("admin"))
        .await
        .expect("delete");
    assert!(!store.has_metered_keys().await.expect("ask"));
});
