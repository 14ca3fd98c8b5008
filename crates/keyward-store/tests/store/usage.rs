//! Last-used data written by the usage flusher.

use chrono::{Duration, Utc};
use keyward_core::KeyId;
use keyward_store::UsageRecord;

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
