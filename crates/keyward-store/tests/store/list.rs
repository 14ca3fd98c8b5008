//! Keyset pagination of keys and events, forwards and backwards, with every filter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{Duration, Utc};
use keyward_core::{ApiKey, KeyId, KeyStatus};
use keyward_store::{EventQuery, EventType, KeyPatch, ListQuery, Store, UsageRecord};

use crate::helpers::{new_key, user};

const KEYS: usize = 1100;

/// A key id smaller than every real one: `before_id` from here walks everything.
fn zero_id() -> KeyId {
    KeyId::from_trusted(format!("key_{}", "0".repeat(26)))
}

/// Walks every page of `query` forwards (`after_id`) with pages of `limit`.
async fn walk_forwards(store: &Store, org: &str, query: &ListQuery, limit: u32) -> Vec<KeyId> {
    let mut ids = Vec::new();
    let mut after: Option<KeyId> = None;
    loop {
        let page = store
            .list_keys(
                org,
                &ListQuery {
                    limit,
                    after_id: after.clone(),
                    before_id: None,
                    ..query.clone()
                },
            )
            .await
            .expect("list");
        assert!(page.items.len() <= limit as usize);
        assert!(
            page.items.windows(2).all(|w| w[0].id > w[1].id),
            "a page is newest first"
        );
        if page.has_more {
            assert_eq!(
                page.items.len(),
                limit as usize,
                "only the last page is short"
            );
        }
        ids.extend(page.items.iter().map(|k| k.id.clone()));
        match (page.has_more, page.items.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => break,
        }
    }
    ids
}

/// Walks every page of `query` backwards (`before_id`), from the oldest key to
/// the newest, and returns the ids newest first.
async fn walk_backwards(store: &Store, org: &str, query: &ListQuery, limit: u32) -> Vec<KeyId> {
    let mut pages: Vec<Vec<KeyId>> = Vec::new();
    let mut before = zero_id();
    loop {
        let page = store
            .list_keys(
                org,
                &ListQuery {
                    limit,
                    after_id: None,
                    before_id: Some(before.clone()),
                    ..query.clone()
                },
            )
            .await
            .expect("list");
        assert!(page.items.len() <= limit as usize);
        assert!(
            page.items.windows(2).all(|w| w[0].id > w[1].id),
            "a page is newest first, also when walking backwards"
        );
        if page.has_more {
            assert_eq!(
                page.items.len(),
                limit as usize,
                "only the last page is short"
            );
        }
        pages.push(page.items.iter().map(|k| k.id.clone()).collect());
        match (page.has_more, page.items.first()) {
            (true, Some(newest)) => before = newest.id.clone(),
            _ => break,
        }
    }
    pages.into_iter().rev().flatten().collect()
}

fn assert_no_repeats(ids: &[KeyId], what: &str) {
    let unique: BTreeSet<&KeyId> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{what}: a key was repeated");
}

keyward_store::store_test!(pagination_and_filters_over_many_keys, |store| async move {
    let admin = user("admin");
    let started = Instant::now();
    let long_ago = Utc::now() - Duration::days(30);
    let mut ids = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let mut key = new_key("acme", &format!("key {i}"));
        key.workspace_id = match i % 3 {
            0 => Some("ws_a".to_owned()),
            1 => Some("ws_b".to_owned()),
            _ => None,
        };
        key.user_id = (i % 5 == 0).then(|| "u_1".to_owned());
        key.service_account_id = (i % 7 == 0).then(|| "sa_1".to_owned());
        key.created_by = user(if i % 2 == 0 { "alice" } else { "bob" });
        if i % 11 == 0 {
            key.expires_at = Some(Utc::now() - Duration::hours(1));
        } else if i % 13 == 0 {
            key.expires_at = Some(Utc::now() + Duration::hours(1));
        }
        ids.push(store.create_key(key).await.expect("create").id);
    }
    for i in 0..5 {
        store
            .create_key(new_key("globex", &format!("other {i}")))
            .await
            .expect("create in another organization");
    }
    eprintln!("created {} keys in {:?}", KEYS + 5, started.elapsed());

    for (i, id) in ids.iter().enumerate() {
        if i % 23 == 0 {
            let patch = KeyPatch {
                disabled: Some(true),
                ..KeyPatch::default()
            };
            store
                .update_key("acme", id, patch, &admin)
                .await
                .expect("disable");
        }
        if i % 17 == 0 {
            store
                .archive_key("acme", id, &admin)
                .await
                .expect("archive");
        }
        if i % 19 == 0 {
            store.revoke_key("acme", id, &admin).await.expect("revoke");
        }
    }
    let usage: Vec<UsageRecord> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 0)
        .map(|(i, id)| UsageRecord {
            key_id: id.clone(),
            at: long_ago + Duration::minutes(i as i64),
            ip: None,
            user_agent: None,
        })
        .collect();
    store.record_usage(&usage).await.expect("usage");

    // The truth, read key by key.
    let mut truth: Vec<ApiKey> = Vec::with_capacity(KEYS);
    for id in &ids {
        truth.push(store.get_key("acme", id).await.expect("get"));
    }
    let now = Utc::now();
    let cutoff = long_ago + Duration::minutes(500);

    type Case = (
        &'static str,
        ListQuery,
        Box<dyn Fn(&ApiKey) -> bool + Send + Sync>,
    );
    let base = ListQuery::default();
    let not_archived = move |k: &ApiKey| k.status(now) != KeyStatus::Archived;
    let with_statuses = |statuses: &[KeyStatus]| ListQuery {
        statuses: statuses.to_vec(),
        ..ListQuery::default()
    };
    let cases: Vec<Case> = vec![
        (
            "default hides archived",
            base.clone(),
            Box::new(not_archived),
        ),
        (
            "include_archived",
            ListQuery {
                include_archived: true,
                ..base.clone()
            },
            Box::new(|_| true),
        ),
        (
            "active",
            with_statuses(&[KeyStatus::Active]),
            Box::new(move |k| k.status(now) == KeyStatus::Active),
        ),
        (
            "inactive",
            with_statuses(&[KeyStatus::Inactive]),
            Box::new(move |k| k.status(now) == KeyStatus::Inactive),
        ),
        (
            "expired",
            with_statuses(&[KeyStatus::Expired]),
            Box::new(move |k| k.status(now) == KeyStatus::Expired),
        ),
        (
            "archived (implies include_archived)",
            with_statuses(&[KeyStatus::Archived]),
            Box::new(move |k| k.status(now) == KeyStatus::Archived),
        ),
        (
            "revoked",
            with_statuses(&[KeyStatus::Revoked]),
            Box::new(move |k| k.status(now) == KeyStatus::Revoked),
        ),
        (
            "active or expired",
            with_statuses(&[KeyStatus::Active, KeyStatus::Expired]),
            Box::new(move |k| matches!(k.status(now), KeyStatus::Active | KeyStatus::Expired)),
        ),
        (
            "workspace",
            ListQuery {
                workspace_id: Some("ws_a".into()),
                ..base.clone()
            },
            Box::new(move |k| k.workspace_id.as_deref() == Some("ws_a") && not_archived(k)),
        ),
        (
            "created_by_id",
            ListQuery {
                created_by_id: Some("alice".into()),
                include_archived: true,
                ..base.clone()
            },
            Box::new(|k| k.created_by.id == "alice"),
        ),
        (
            "user_id",
            ListQuery {
                user_id: Some("u_1".into()),
                ..base.clone()
            },
            Box::new(move |k| k.user_id.as_deref() == Some("u_1") && not_archived(k)),
        ),
        (
            "service_account_id",
            ListQuery {
                service_account_id: Some("sa_1".into()),
                include_archived: true,
                ..base.clone()
            },
            Box::new(|k| k.service_account_id.as_deref() == Some("sa_1")),
        ),
        (
            "last_used_before",
            ListQuery {
                last_used_before: Some(cutoff),
                ..base.clone()
            },
            Box::new(move |k| k.last_used_at.is_none_or(|at| at < cutoff) && not_archived(k)),
        ),
        (
            "workspace and active",
            ListQuery {
                workspace_id: Some("ws_b".into()),
                statuses: vec![KeyStatus::Active],
                ..base.clone()
            },
            Box::new(move |k| {
                k.workspace_id.as_deref() == Some("ws_b") && k.status(now) == KeyStatus::Active
            }),
        ),
    ];

    for (name, query, predicate) in &cases {
        let mut expected: Vec<KeyId> = truth
            .iter()
            .filter(|k| predicate(k))
            .map(|k| k.id.clone())
            .collect();
        expected.sort_by(|a, b| b.cmp(a));
        assert!(
            !expected.is_empty(),
            "{name}: the fixture covers this filter"
        );

        let forwards = walk_forwards(&store, "acme", query, 97).await;
        assert_no_repeats(&forwards, name);
        assert_eq!(forwards, expected, "{name}: forwards");

        let backwards = walk_backwards(&store, "acme", query, 100).await;
        assert_no_repeats(&backwards, name);
        assert_eq!(backwards, expected, "{name}: backwards");
    }

    // A full page of 1000 says there is more.
    let page = store
        .list_keys(
            "acme",
            &ListQuery {
                limit: 1000,
                include_archived: true,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1000);
    assert!(page.has_more);
    assert!(page.items.iter().all(|k| k.organization_id == "acme"));

    // A cursor in the middle: the keys just older, and just newer, than it.
    let mut all: Vec<KeyId> = ids.clone();
    all.sort_by(|a, b| b.cmp(a));
    let middle = &all[500];
    let include = ListQuery {
        include_archived: true,
        limit: 10,
        ..ListQuery::default()
    };
    let older = store
        .list_keys(
            "acme",
            &ListQuery {
                after_id: Some(middle.clone()),
                ..include.clone()
            },
        )
        .await
        .expect("list");
    let older: Vec<KeyId> = older.items.into_iter().map(|k| k.id).collect();
    assert_eq!(older, all[501..511]);
    let newer = store
        .list_keys(
            "acme",
            &ListQuery {
                before_id: Some(middle.clone()),
                ..include.clone()
            },
        )
        .await
        .expect("list");
    assert!(newer.has_more);
    let newer: Vec<KeyId> = newer.items.into_iter().map(|k| k.id).collect();
    assert_eq!(newer, all[490..500]);

    // The other organization sees only its own keys.
    let theirs = walk_forwards(&store, "globex", &ListQuery::default(), 2).await;
    assert_eq!(theirs.len(), 5);
    eprintln!("whole test took {:?}", started.elapsed());
});

keyward_store::store_test!(event_pagination, |store| async move {
    let admin = user("admin");
    let mut keys = Vec::new();
    for i in 0..40 {
        keys.push(
            store
                .create_key(new_key("acme", &format!("k{i}")))
                .await
                .expect("create"),
        );
    }
    for key in keys.iter().step_by(3) {
        store
            .archive_key("acme", &key.id, &admin)
            .await
            .expect("archive");
        store
            .revoke_key("acme", &key.id, &admin)
            .await
            .expect("revoke");
    }
    store
        .create_key(new_key("globex", "theirs"))
        .await
        .expect("create");

    // Forwards with `after_seq`.
    let mut seqs = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_events(
                "acme",
                &EventQuery {
                    limit: 7,
                    after_seq: after,
                    ..EventQuery::default()
                },
            )
            .await
            .expect("events");
        assert!(page.items.windows(2).all(|w| w[0].seq > w[1].seq));
        assert!(page.items.iter().all(|e| e.organization_id == "acme"));
        seqs.extend(page.items.iter().map(|e| e.seq));
        match (page.has_more, page.items.last()) {
            (true, Some(last)) => after = Some(last.seq),
            _ => break,
        }
    }
    assert_eq!(seqs.len(), 40 + 2 * 14);
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "no repeats, newest first"
    );

    // Backwards with `before_seq`.
    let mut pages = Vec::new();
    let mut before = 0;
    loop {
        let page = store
            .list_events(
                "acme",
                &EventQuery {
                    limit: 9,
                    before_seq: Some(before),
                    ..EventQuery::default()
                },
            )
            .await
            .expect("events");
        assert!(page.items.windows(2).all(|w| w[0].seq > w[1].seq));
        pages.push(page.items.iter().map(|e| e.seq).collect::<Vec<_>>());
        match (page.has_more, page.items.first()) {
            (true, Some(newest)) => before = newest.seq,
            _ => break,
        }
    }
    let backwards: Vec<i64> = pages.into_iter().rev().flatten().collect();
    assert_eq!(backwards, seqs);

    // One key's history.
    let page = store
        .list_events(
            "acme",
            &EventQuery {
                limit: 10,
                key_id: Some(keys[0].id.clone()),
                ..EventQuery::default()
            },
        )
        .await
        .expect("events");
    let kinds: Vec<EventType> = page.items.iter().map(|e| e.event_type).collect();
    assert_eq!(
        kinds,
        [EventType::Revoked, EventType::Archived, EventType::Created]
    );
    assert!(!page.has_more);

    // The global feed, oldest first, across organizations.
    let batch = store.events_after(0, 1000).await.expect("feed");
    assert!(batch.skipped.is_empty() && !batch.has_more);
    let feed = batch.events;
    assert_eq!(batch.last_seq, feed.last().expect("events").seq);
    assert_eq!(feed.len(), seqs.len() + 1);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    let tail = store
        .events_after(feed[feed.len() - 3].seq, 1000)
        .await
        .expect("feed")
        .events;
    assert_eq!(tail.len(), 2);
    let by_org: BTreeMap<&str, usize> = feed.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.organization_id.as_str()).or_default() += 1;
        m
    });
    assert_eq!(by_org["globex"], 1);
});
