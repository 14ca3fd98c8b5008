//! Creating, reading and finding keys; organizations; the hasher check.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use keyward_core::{
    ActorKind, Description, Environment, KeyId, KeyKind, KeyStatus, LookupHash, Metadata,
    OrganizationId, Scopes,
};
use keyward_store::migration::Migrator;
use keyward_store::{EventType, StoreError};
use sea_orm_migration::MigratorTrait;

use crate::helpers::{events, micros, new_key};

keyward_store::store_test!(create_get_and_cross_org_not_found, |store| async move {
    let created = store
        .create_key(new_key("acme", "Production"))
        .await
        .expect("create");
    assert!(created.id.as_str().starts_with("key_"));
    assert_eq!(created.organization_id, "acme");
    assert_eq!(created.status(Utc::now()), KeyStatus::Active);
    assert_eq!(created.created_at, created.updated_at);

    let fetched = store.get_key("acme", &created.id).await.expect("get");
    assert_eq!(
        fetched, created,
        "what create returns is what get reads back"
    );

    // Another organization cannot see it, and cannot tell it exists.
    assert!(matches!(
        store.get_key("globex", &created.id).await,
        Err(StoreError::NotFound)
    ));
    let unknown = KeyId::generate();
    assert!(matches!(
        store.get_key("acme", &unknown).await,
        Err(StoreError::NotFound)
    ));

    let log = events(&store, "acme").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event_type, EventType::Created);
    assert_eq!(log[0].key_id, created.id);
    assert_eq!(log[0].actor, created.created_by);
    assert_eq!(log[0].changes["name"], "\"Production\"");
    assert_eq!(log[0].changes["scopes"], "[\"orders:read\"]");
    assert!(!log[0].changes.contains_key("lookup_hash"));
    assert!(events(&store, "globex").await.is_empty());
});

keyward_store::store_test!(every_field_round_trips, |store| async move {
    let mut key = new_key("acme", &"é".repeat(128));
    key.workspace_id = Some("ws_1".into());
    key.secret.kind = KeyKind::Admin;
    key.secret.environment = Environment::Test;
    key.description = Description::parse("two\nlines\tand ünïcode 🔑").expect("valid");
    key.scopes = Scopes::parse(&["orders:*", "billing:read"]).expect("valid");
    key.metadata = Metadata::from_trusted(BTreeMap::from([
        ("team".to_owned(), "payments".to_owned()),
        ("quote".to_owned(), "it's \"quoted\"".to_owned()),
    ]));
    key.user_id = Some("user@example.com".into());
    key.service_account_id = Some("sa:deployer".into());
    // Nanoseconds are cut to microseconds, and years past 2038 work.
    let expires = DateTime::from_timestamp(4_102_444_800, 123_456_789).expect("2100-01-01");
    key.expires_at = Some(expires);
    key.created_by.kind = ActorKind::ServiceAccount;

    let created = store.create_key(key.clone()).await.expect("create");
    assert_eq!(created.name, "é".repeat(128));
    assert_eq!(created.kind, KeyKind::Admin);
    assert_eq!(created.environment, Environment::Test);
    assert_eq!(created.description, "two\nlines\tand ünïcode 🔑");
    assert_eq!(created.scopes, key.scopes);
    assert_eq!(created.metadata, key.metadata);
    assert_eq!(created.workspace_id.as_deref(), Some("ws_1"));
    assert_eq!(created.user_id.as_deref(), Some("user@example.com"));
    assert_eq!(created.service_account_id.as_deref(), Some("sa:deployer"));
    assert_eq!(created.expires_at, Some(micros(expires)));
    assert_eq!(created.prefix, key.secret.prefix);
    assert_eq!(created.partial_key_hint, key.secret.partial_key_hint);
    assert_eq!(created.created_by, key.created_by);
    assert_eq!(created.rotated_from_id, None);

    let fetched = store.get_key("acme", &created.id).await.expect("get");
    assert_eq!(fetched, created);
    let log = events(&store, "acme").await;
    assert_eq!(
        log[0].changes["expires_at"],
        "\"2100-01-01T00:00:00.123456Z\""
    );
    assert_eq!(log[0].changes["workspace_id"], "\"ws_1\"");
    assert_eq!(log[0].at, created.created_at);
});

keyward_store::store_test!(find_by_lookup_hash, |store| async move {
    let key = new_key("acme", "validated");
    let hash = key.secret.lookup_hash;
    let created = store.create_key(key).await.expect("create");
    let found = store
        .find_by_lookup_hash(&hash)
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found, created);
    let missing = store
        .find_by_lookup_hash(&LookupHash([7; 32]))
        .await
        .expect("lookup");
    assert_eq!(missing, None);
});

keyward_store::store_test!(duplicate_lookup_hash_is_rejected, |store| async move {
    let key = new_key("acme", "one");
    store.create_key(key.clone()).await.expect("create");
    let err = store.create_key(key).await.expect_err("same hash twice");
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    // The failed insert wrote no event.
    assert_eq!(events(&store, "acme").await.len(), 1);
    assert!(
        store
            .verify_audit(None)
            .await
            .expect("verify")
            .broken
            .is_empty()
    );
});

keyward_store::store_test!(check_hasher_detects_a_changed_secret, |store| async move {
    store
        .check_hasher("fingerprint-a")
        .await
        .expect("first use records it");
    store
        .check_hasher("fingerprint-a")
        .await
        .expect("same hasher");
    assert!(matches!(
        store.check_hasher("fingerprint-b").await,
        Err(StoreError::HasherMismatch)
    ));
    store
        .check_hasher("fingerprint-a")
        .await
        .expect("still the first");
});

keyward_store::store_test!(ensure_organization_is_idempotent, |store| async move {
    let org = OrganizationId::parse("acme").expect("valid");
    store.ensure_organization(&org).await.expect("create");
    store.ensure_organization(&org).await.expect("again");
    let report = store.verify_audit(Some("acme")).await.expect("verify");
    assert_eq!(report.organizations_checked, 1);
    assert_eq!(report.events_checked, 0);
    assert!(report.broken.is_empty());
    // A key created afterwards starts the chain.
    store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    let report = store.verify_audit(Some("acme")).await.expect("verify");
    assert_eq!(report.events_checked, 1);
    assert!(report.broken.is_empty());
});

keyward_store::store_test!(migrations_go_down_and_up_again, |store| async move {
    store.migrate().await.expect("a second migrate is a no-op");
    store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    Migrator::down(store.connection(), None)
        .await
        .expect("down drops everything");
    store.migrate().await.expect("up again");
    let key = store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    assert_eq!(events(&store, "acme").await.len(), 1, "a fresh schema");
    assert_eq!(store.get_key("acme", &key.id).await.expect("get"), key);
});

keyward_store::store_test!(expired_status_is_computed, |store| async move {
    let mut key = new_key("acme", "short-lived");
    key.expires_at = Some(Utc::now() - Duration::seconds(1));
    let created = store.create_key(key).await.expect("create");
    assert_eq!(created.status(Utc::now()), KeyStatus::Expired);
});
