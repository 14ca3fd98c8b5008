//! Every store call has a deadline: a database that stops answering without
//! closing connections makes each call fail with `Unavailable` in time, and
//! the store recovers by itself when it answers again.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use keyward_core::KeyId;
use keyward_store::testing::{Backend, TestDatabase};
use keyward_store::{EventQuery, KeyPatch, ListQuery, Store, StoreError, StoreOptions};
use tokio::time::Instant;

use crate::helpers::{material, new_key, user};
use crate::tcp_proxy::TcpProxy;

/// Splits `url` into what comes before its `host:port`, the `host:port`,
/// and the rest.
fn split_authority(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").expect("a URL") + 3;
    let rest = &url[start..];
    let end = start + rest.find('/').unwrap_or(rest.len());
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    (&url[..host_start], &url[host_start..end], &url[end..])
}

/// The server `url` points at.
fn upstream(url: &str) -> SocketAddr {
    split_authority(url)
        .1
        .parse()
        .expect("tests use a numeric host:port")
}

/// `url` pointed at `addr` instead.
fn through(url: &str, addr: SocketAddr) -> String {
    let (before, _, after) = split_authority(url);
    format!("{before}{addr}{after}")
}

/// Runs `call` and asserts it fails with `Unavailable` within `bound`.
async fn unavailable_within<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    // Boxed: the store's futures are large in debug builds.
    let result = tokio::time::timeout(bound, Box::pin(call))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {bound:?}"));
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{what}: {result:?} after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_blackholed_database_is_unavailable_within_the_deadline() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let direct = Store::connect(&database.url).await.expect("connect");
    direct.migrate().await.expect("migrate");
    let key = direct
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    direct.close().await;

    let proxy = TcpProxy::start(upstream(&database.url).to_string()).await;
    let url = through(&database.url, proxy.addr());
    let options = StoreOptions::default();
    let store = Store::connect_with(&url, options)
        .await
        .expect("connect through the proxy");
    store
        .get_key("acme", &key.id)
        .await
        .expect("read through the proxy");

    proxy.blackhole();
    let bound = options.operation_timeout + Duration::from_secs(1);
    let actor = user("u");
    let id = key.id.clone();
    let hash = material().lookup_hash;
    unavailable_within("get_key", bound, store.get_key("acme", &id)).await;
    unavailable_within(
        "find_by_lookup_hash",
        bound,
        store.find_by_lookup_hash(&hash),
    )
    .await;
    unavailable_within("create_key", bound, store.create_key(new_key("acme", "x"))).await;
    let query = ListQuery {
        limit: 10,
        ..ListQuery::default()
    };
    unavailable_within("list_keys", bound, store.list_keys("acme", &query)).await;
    let patch = KeyPatch {
        disabled: Some(true),
        ..KeyPatch::default()
    };
    unavailable_within(
        "update_key",
        bound,
        store.update_key("acme", &id, patch, &actor),
    )
    .await;
    unavailable_within("archive_key", bound, store.archive_key("acme", &id, &actor)).await;
    unavailable_within(
        "reactivate_key",
        bound,
        store.reactivate_key("acme", &id, &actor),
    )
    .await;
    unavailable_within("revoke_key", bound, store.revoke_key("acme", &id, &actor)).await;
    unavailable_within(
        "rotate_key",
        bound,
        store.rotate_key("acme", &id, material(), &actor, Duration::ZERO),
    )
    .await;
    unavailable_within(
        "delete_key",
        bound,
        store.delete_key("acme", &KeyId::generate(), &actor),
    )
    .await;
    let events = EventQuery {
        limit: 10,
        ..EventQuery::default()
    };
    unavailable_within("list_events", bound, store.list_events("acme", &events)).await;
    unavailable_within("events_after", bound, store.events_after(0, 100)).await;
    unavailable_within("last_event_seq", bound, store.last_event_seq()).await;
    unavailable_within(
        "record_usage",
        bound,
        store.record_usage(&[keyward_store::UsageRecord {
            key_id: id.clone(),
            at: chrono::Utc::now(),
            ip: None,
            user_agent: None,
        }]),
    )
    .await;
    unavailable_within("check_hasher", bound, store.check_hasher("fingerprint")).await;
    unavailable_within(
        "ensure_organization",
        bound,
        store.ensure_organization(&keyward_core::OrganizationId::parse("acme").unwrap()),
    )
    .await;
    unavailable_within("verify_audit", bound, store.verify_audit(None)).await;
    unavailable_within(
        "connect_with",
        options.connect_timeout + Duration::from_secs(1),
        Store::connect_with(&url, options),
    )
    .await;

    // The database answers again: the same store recovers on its own.
    proxy.forward();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.get_key("acme", &id).await {
            Ok(found) => {
                assert_eq!(found.id, id);
                break;
            }
            Err(err) => {
                assert!(Instant::now() < deadline, "no recovery: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    store
        .create_key(new_key("acme", "after"))
        .await
        .expect("writes again");
    store.close().await;
    drop(proxy);
    database.drop_database().await;
}
