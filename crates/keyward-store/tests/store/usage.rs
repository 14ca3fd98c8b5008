//! Last-used data written by the usage flusher.

use chrono::{Duration, Utc};
use keyward_core::{KeyId, ValidationCode};
use keyward_store::{ListQuery, Store, UsageCount, UsageRecord, minute_start};

use crate::helpers::{events, micros, new_key};

fn record(key_id: &KeyId, at: chrono::DateTime<Utc>, ip: &str) -> UsageRecord {
    UsageRecord {
        key_id: key_id.clone(),
        at,
        ip: Some(ip.to_owned()),
        user_agent: Some("grpc-go/1.60".to_owned()),
    }
}

keyward_store::store_test!(record_usage_keeps_the_latest, |store| async move {
    let a = store
        .create_key(new_key("acme", "a"))
        .await
        .expect("create");
    let b = store
        .create_key(new_key("acme", "b"))
        .await
        .expect("create");
    let deleted = store
        .create_key(new_key("acme", "gone"))
        .await
        .expect("create");
    store
        .delete_key("acme", &deleted.id, &crate::helpers::user("admin"))
        .await
        .expect("delete");
    let events_before = events(&store, "acme").await.len();

    let t1 = Utc::now() - Duration::minutes(10);
    let t2 = t1 + Duration::seconds(5);
    store
        .record_usage(&[
            record(&a.id, t1, "10.0.0.1"),
            // The same key twice in a batch: the latest wins.
            record(&a.id, t2, "10.0.0.2"),
            record(&b.id, t1, "2001:db8::1"),
            // Deleted meanwhile: skipped without an error.
            record(&deleted.id, t2, "10.0.0.3"),
        ])
        .await
        .expect("usage");

    let a_after = store.get_key("acme", &a.id).await.expect("get");
    assert_eq!(a_after.last_used_at, Some(micros(t2)));
    assert_eq!(a_after.last_used_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(
        a_after.last_used_user_agent.as_deref(),
        Some("grpc-go/1.60")
    );
    assert_eq!(
        a_after.updated_at, a.updated_at,
        "usage is not a change of the record"
    );
    let b_after = store.get_key("acme", &b.id).await.expect("get");
    assert_eq!(b_after.last_used_ip.as_deref(), Some("2001:db8::1"));

    // An older observation (say, from a slower replica) does not move it back.
    store
        .record_usage(&[record(&a.id, t1, "10.9.9.9")])
        .await
        .expect("usage");
    let a_again = store.get_key("acme", &a.id).await.expect("get");
    assert_eq!(a_again.last_used_at, Some(micros(t2)));
    assert_eq!(a_again.last_used_ip.as_deref(), Some("10.0.0.2"));

    // Long user agents are cut, not rejected.
    let mut long = record(&b.id, t2, "10.0.0.4");
    long.user_agent = Some("x".repeat(5000));
    store.record_usage(&[long]).await.expect("usage");
    let b_again = store.get_key("acme", &b.id).await.expect("get");
    assert_eq!(b_again.last_used_user_agent.map(|ua| ua.len()), Some(512));

    store
        .record_usage(&[])
        .await
        .expect("an empty batch is fine");
    assert_eq!(
        events(&store, "acme").await.len(),
        events_before,
        "usage writes no event"
    );
});

fn count(key_id: &KeyId, minute_start: i64, outcome: ValidationCode, calls: u64) -> UsageCount {
    UsageCount {
        organization_id: "acme".to_owned(),
        key_id: key_id.clone(),
        minute_start,
        outcome,
        calls,
    }
}

/// `(minute, outcome, calls)` of a key's series.
async fn series(store: &Store, key_id: &KeyId, from: i64, to: i64) -> Vec<(i64, String, u64)> {
    store
        .usage_series("acme", key_id, from, to)
        .await
        .expect("series")
        .into_iter()
        .map(|point| (point.minute_start, point.outcome, point.calls))
        .collect()
}

keyward_store::store_test!(
    usage_counts_add_up_across_flushes_and_replicas,
    |store| async move {
        let a = store
            .create_key(new_key("acme", "a"))
            .await
            .expect("create");
        let b = store
            .create_key(new_key("acme", "b"))
            .await
            .expect("create");
        let minute = minute_start(Utc::now());
        let events_before = events(&store, "acme").await.len();
        store
            .write_usage(
                &[],
                &[
                    count(&a.id, minute, ValidationCode::Valid, 3),
                    count(&a.id, minute, ValidationCode::InsufficientScope, 1),
                    // The same row twice in one batch is summed, not refused.
                    count(&a.id, minute, ValidationCode::Valid, 2),
                    count(&a.id, minute - 60, ValidationCode::Valid, 7),
                    count(&b.id, minute, ValidationCode::Revoked, 1),
                ],
            )
            .await
            .expect("first flush");
        // Another replica's flush of the same key, minute and outcome adds.
        let other = store.clone();
        let (ten, hundred) = (
            [count(&a.id, minute, ValidationCode::Valid, 10)],
            [count(&a.id, minute, ValidationCode::Valid, 100)],
        );
        let (one, two) = tokio::join!(
            store.write_usage(&[], &ten),
            other.write_usage(&[], &hundred),
        );
        one.expect("concurrent flush");
        two.expect("concurrent flush");
        assert_eq!(
            series(&store, &a.id, minute - 3600, minute + 60).await,
            [
                (minute - 60, "valid".to_owned(), 7),
                (minute, "insufficient_scope".to_owned(), 1),
                (minute, "valid".to_owned(), 115),
            ]
        );
        // The range is [from, to) and per organization.
        assert_eq!(series(&store, &a.id, minute, minute + 60).await.len(), 2);
        assert!(
            series(&store, &a.id, minute - 3600, minute - 60)
                .await
                .is_empty()
        );
        assert!(
            store
                .usage_series("globex", &a.id, minute - 3600, minute + 60)
                .await
                .expect("series")
                .is_empty()
        );
        // More rows than one statement takes.
        let many: Vec<UsageCount> = (0..1200)
            .map(|n| count(&b.id, minute - 60 * (n + 1), ValidationCode::Valid, 1))
            .collect();
        store.write_usage(&[], &many).await.expect("a large flush");
        let b_rows = series(&store, &b.id, minute - 60 * 2000, minute + 60).await;
        assert_eq!(b_rows.len(), 1201);
        assert_eq!(
            events(&store, "acme").await.len(),
            events_before,
            "no event"
        );

        // Keys used since a minute, and not, with keyset pages of one.
        let c = store
            .create_key(new_key("acme", "c"))
            .await
            .expect("create");
        let listed = |used: Option<i64>, unused: Option<i64>| {
            let store = store.clone();
            async move {
                let mut ids = Vec::new();
                let mut after_id = None;
                loop {
                    let page = store
                        .list_keys(
                            "acme",
                            &ListQuery {
                                limit: 1,
                                after_id: after_id.clone(),
                                used_since: used.map(at),
                                unused_since: unused.map(at),
                                ..ListQuery::default()
                            },
                        )
                        .await
                        .expect("list");
                    after_id = page.items.last().map(|key| key.id.clone());
                    ids.extend(page.items.into_iter().map(|key| key.id));
                    if !page.has_more {
                        return ids;
                    }
                }
            }
        };
        assert_eq!(
            listed(Some(minute), None).await,
            [b.id.clone(), a.id.clone()]
        );
        assert_eq!(listed(None, Some(minute)).await, vec![c.id.clone()]);
        assert_eq!(
            listed(Some(minute - 60), Some(minute)).await,
            Vec::<KeyId>::new()
        );
        assert_eq!(listed(None, Some(minute + 60)).await.len(), 3);
        // A time inside a minute means that whole minute.
        assert_eq!(listed(Some(minute + 59), None).await.len(), 2);

        // Pruning: oldest first, at most `limit` rows per call.
        assert_eq!(
            store.prune_usage(minute - 60, 100).await.expect("prune"),
            100
        );
        let pruned = store.prune_usage(minute - 60, 10_000).await.expect("prune");
        assert_eq!(
            pruned,
            1199 - 100,
            "the rest of b's rows before minute - 60"
        );
        assert_eq!(
            store.prune_usage(minute - 60, 10_000).await.expect("prune"),
            0
        );
        assert_eq!(series(&store, &b.id, 0, minute + 60).await.len(), 2);
        assert_eq!(series(&store, &a.id, 0, minute + 60).await.len(), 3);
    }
);

fn at(unix: i64) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(unix, 0).expect("a time")
}
