//! Update, archive, reactivate, revoke, delete and rotate: their rules, their
//! events, and that doing nothing writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_core::{Environment, KeyKind, KeyName, KeyStatus, Metadata, Scopes};
use keyward_store::{EventType, KeyPatch, StoreError};

use crate::helpers::{close, events, material, new_key, user};

const SLACK: Duration = Duration::from_secs(60);

keyward_store::store_test!(update_records_only_changed_fields, |store| async move {
    let created = store
        .create_key(new_key("acme", "old name"))
        .await
        .expect("create");
    let admin = user("admin");

    let patch = KeyPatch {
        name: Some(KeyName::parse("new name").expect("valid")),
        // Same scopes as before: not a change.
        scopes: Some(Scopes::parse(&["orders:read"]).expect("valid")),
        metadata: Some(Metadata::from_trusted(BTreeMap::from([(
            "team".to_owned(),
            "core".to_owned(),
        )]))),
        expires_at: Some(Some(
            DateTime::from_timestamp(4_102_444_800, 999_999_999).expect("in range"),
        )),
        ..KeyPatch::default()
    };
    let updated = store
        .update_key("acme", &created.id, patch.clone(), &admin)
        .await
        .expect("update");
    assert_eq!(updated.name, "new name");
    assert_eq!(updated.metadata.as_map()["team"], "core");
    assert_eq!(
        updated.expires_at.map(|at| at.timestamp_subsec_nanos()),
        Some(999_999_000)
    );
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(
        store.get_key("acme", &created.id).await.expect("get"),
        updated
    );

    let log = events(&store, "acme").await;
    assert_eq!(log.len(), 2);
    let event = &log[0];
    assert_eq!(event.event_type, EventType::Updated);
    assert_eq!(event.actor, admin);
    assert_eq!(event.at, updated.updated_at);
    let fields: Vec<&str> = event.changes.keys().map(String::as_str).collect();
    assert_eq!(fields, ["expires_at", "metadata", "name"]);
    assert_eq!(event.changes["name"], "\"new name\"");
    assert_eq!(event.changes["metadata"], "{\"team\":\"core\"}");
    assert_eq!(
        event.changes["expires_at"],
        "\"2100-01-01T00:00:00.999999Z\""
    );

    // The same patch again changes nothing: no write, no event.
    let again = store
        .update_key("acme", &created.id, patch, &admin)
        .await
        .expect("update again");
    assert_eq!(again, updated);
    assert_eq!(events(&store, "acme").await.len(), 2);

    // Clearing the expiry and disabling.
    let disabled = store
        .update_key(
            "acme",
            &created.id,
            KeyPatch {
                expires_at: Some(None),
                disabled: Some(true),
                ..KeyPatch::default()
            },
            &admin,
        )
        .await
        .expect("disable");
    assert_eq!(disabled.expires_at, None);
    assert_eq!(disabled.status(Utc::now()), KeyStatus::Inactive);
    let log = events(&store, "acme").await;
    assert_eq!(log[0].changes["expires_at"], "null");
    assert_eq!(log[0].changes["disabled"], "true");

    let enabled = store
        .update_key(
            "acme",
            &created.id,
            KeyPatch {
                disabled: Some(false),
                ..KeyPatch::default()
            },
            &admin,
        )
        .await
        .expect("enable");
    assert_eq!(enabled.status(Utc::now()), KeyStatus::Active);
    assert!(
        store
            .verify_audit(None)
            .await
            .expect("verify")
            .broken
            .is_empty()
    );
});

keyward_store::store_test!(archive_reactivate_revoke, |store| async move {
    let key = store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    let admin = user("admin");

    let archived = store
        .archive_key("acme", &key.id, &admin)
        .await
        .expect("archive");
    assert_eq!(archived.status(Utc::now()), KeyStatus::Archived);
    assert!(archived.archived_at.is_some());
    assert_eq!(archived.updated_at, archived.archived_at.expect("set"));
    let again = store
        .archive_key("acme", &key.id, &admin)
        .await
        .expect("archive again");
    assert_eq!(again, archived);
    let log = events(&store, "acme").await;
    assert_eq!(log.len(), 2, "archiving twice records once");
    assert_eq!(log[0].event_type, EventType::Archived);
    assert!(log[0].changes.contains_key("archived_at"));

    let reactivated = store
        .reactivate_key("acme", &key.id, &admin)
        .await
        .expect("reactivate");
    assert_eq!(reactivated.status(Utc::now()), KeyStatus::Active);
    assert_eq!(reactivated.archived_at, None);
    store
        .reactivate_key("acme", &key.id, &admin)
        .await
        .expect("reactivate again");
    let log = events(&store, "acme").await;
    assert_eq!(log.len(), 3, "reactivating an active key records nothing");
    assert_eq!(log[0].event_type, EventType::Reactivated);
    assert_eq!(log[0].changes["archived_at"], "null");

    // Reactivate also clears `disabled`.
    store
        .update_key(
            "acme",
            &key.id,
            KeyPatch {
                disabled: Some(true),
                ..KeyPatch::default()
            },
            &admin,
        )
        .await
        .expect("disable");
    let active = store
        .reactivate_key("acme", &key.id, &admin)
        .await
        .expect("reactivate inactive");
    assert!(!active.disabled);
    assert_eq!(events(&store, "acme").await[0].changes["disabled"], "false");

    let revoked = store
        .revoke_key("acme", &key.id, &admin)
        .await
        .expect("revoke");
    assert_eq!(revoked.status(Utc::now()), KeyStatus::Revoked);
    let count = events(&store, "acme").await.len();
    let again = store
        .revoke_key("acme", &key.id, &admin)
        .await
        .expect("revoke again");
    assert_eq!(again, revoked);
    assert_eq!(
        events(&store, "acme").await.len(),
        count,
        "revoking twice records once"
    );

    // A revoked key can no longer change.
    let failures = [
        store.archive_key("acme", &key.id, &admin).await,
        store.reactivate_key("acme", &key.id, &admin).await,
        store
            .update_key(
                "acme",
                &key.id,
                KeyPatch {
                    name: Some(KeyName::parse("renamed").expect("valid")),
                    ..KeyPatch::default()
                },
                &admin,
            )
            .await,
    ];
    let messages: Vec<String> = failures
        .into_iter()
        .map(|result| match result {
            Err(StoreError::FailedPrecondition(message)) => message,
            other => panic!("expected FailedPrecondition, got {other:?}"),
        })
        .collect();
    assert_eq!(
        messages,
        [
            "key is revoked and cannot be archived",
            "key is revoked and cannot be reactivated",
            "key is revoked and can no longer be changed",
        ]
    );
    assert_eq!(
        events(&store, "acme").await.len(),
        count,
        "rejected requests write nothing"
    );
    assert_eq!(store.get_key("acme", &key.id).await.expect("get"), revoked);

    // Revoking an archived key is allowed; it is then REVOKED.
    let other = store
        .create_key(new_key("acme", "other"))
        .await
        .expect("create");
    store
        .archive_key("acme", &other.id, &admin)
        .await
        .expect("archive");
    let revoked = store
        .revoke_key("acme", &other.id, &admin)
        .await
        .expect("revoke");
    assert_eq!(revoked.status(Utc::now()), KeyStatus::Revoked);
    assert!(
        store
            .verify_audit(None)
            .await
            .expect("verify")
            .broken
            .is_empty()
    );
});

keyward_store::store_test!(other_organizations_get_not_found, |store| async move {
    let key = store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    let mallory = user("mallory");
    let results = [
        store.archive_key("globex", &key.id, &mallory).await.err(),
        store
            .reactivate_key("globex", &key.id, &mallory)
            .await
            .err(),
        store.revoke_key("globex", &key.id, &mallory).await.err(),
        store
            .update_key("globex", &key.id, KeyPatch::default(), &mallory)
            .await
            .err(),
        store.delete_key("globex", &key.id, &mallory).await.err(),
        store
            .rotate_key("globex", &key.id, material(), &mallory, Duration::ZERO)
            .await
            .err(),
    ];
    for result in results {
        assert!(matches!(result, Some(StoreError::NotFound)), "{result:?}");
    }
    assert_eq!(
        store.get_key("acme", &key.id).await.expect("untouched"),
        key
    );
    assert_eq!(events(&store, "acme").await.len(), 1);
    assert!(events(&store, "globex").await.is_empty());
    let report = store.verify_audit(None).await.expect("verify");
    assert!(report.broken.is_empty(), "{report:?}");
});

keyward_store::store_test!(delete_keeps_the_events, |store| async move {
    let key = store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    let admin = user("admin");
    store
        .delete_key("acme", &key.id, &admin)
        .await
        .expect("delete");
    assert!(matches!(
        store.get_key("acme", &key.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_key("acme", &key.id, &admin).await,
        Err(StoreError::NotFound)
    ));
    let log = events(&store, "acme").await;
    let kinds: Vec<EventType> = log.iter().map(|e| e.event_type).collect();
    assert_eq!(kinds, [EventType::Deleted, EventType::Created]);
    assert!(log.iter().all(|e| e.key_id == key.id));
    assert_eq!(log[0].actor, admin);
    assert!(
        store
            .verify_audit(None)
            .await
            .expect("verify")
            .broken
            .is_empty()
    );
});

keyward_store::store_test!(
    rotate_replaces_and_expires_the_old_key,
    |store| async move {
        let old = store
            .create_key(new_key("acme", "service"))
            .await
            .expect("create");
        let replacement = material();
        let rotator = user("rotator");
        let (new, old_after) = store
            .rotate_key(
                "acme",
                &old.id,
                replacement.clone(),
                &rotator,
                Duration::from_secs(3600),
            )
            .await
            .expect("rotate");

        assert_ne!(new.id, old.id);
        assert!(new.id > old.id, "ids sort by creation");
        assert_eq!(new.rotated_from_id.as_ref(), Some(&old.id));
        assert_eq!(new.name, "service");
        assert_eq!(new.prefix, replacement.prefix);
        let expiry = old_after.expires_at.expect("old key now expires");
        assert!(close(expiry, Utc::now() + Duration::from_secs(3600), SLACK));
        assert_eq!(old_after.status(Utc::now()), KeyStatus::Active);
        assert_eq!(old_after.updated_at, new.created_at);
        assert_eq!(
            store.get_key("acme", &old.id).await.expect("get"),
            old_after
        );
        assert_eq!(store.get_key("acme", &new.id).await.expect("get"), new);
        assert_eq!(
            store
                .find_by_lookup_hash(&replacement.lookup_hash)
                .await
                .expect("lookup"),
            Some(new.clone())
        );

        let log = events(&store, "acme").await;
        assert_eq!(log.len(), 3);
        assert_eq!(log[1].event_type, EventType::Created);
        assert_eq!(log[1].key_id, new.id);
        assert_eq!(log[1].changes["rotated_from_id"], format!("\"{}\"", old.id));
        assert_eq!(log[0].event_type, EventType::Rotated);
        assert_eq!(log[0].key_id, old.id);
        assert_eq!(log[0].actor, rotator);
        assert_eq!(log[0].changes["replaced_by"], format!("\"{}\"", new.id));
        assert!(log[0].changes["expires_at"].starts_with('"'));

        // A second rotation with a longer grace keeps the earlier expiry.
        let (_, old_again) = store
            .rotate_key(
                "acme",
                &old.id,
                material(),
                &rotator,
                Duration::from_secs(86_400),
            )
            .await
            .expect("rotate again");
        assert_eq!(old_again.expires_at, Some(expiry));

        // Grace zero: the old key expires at once.
        let (_, expired) = store
            .rotate_key("acme", &new.id, material(), &rotator, Duration::ZERO)
            .await
            .expect("rotate with no grace");
        assert_eq!(expired.status(Utc::now()), KeyStatus::Expired);
        assert!(
            store
                .verify_audit(None)
                .await
                .expect("verify")
                .broken
                .is_empty()
        );
    }
);

keyward_store::store_test!(
    rotate_refuses_a_secret_of_another_kind_or_environment,
    |store| async move {
        let admin = user("admin");
        let key = store
            .create_key(new_key("acme", "live standard"))
            .await
            .expect("create");
        let before = events(&store, "acme").await.len();
        for (kind, environment) in [
            (KeyKind::Admin, Environment::Live),
            (KeyKind::Standard, Environment::Test),
        ] {
            let mut replacement = material();
            replacement.kind = kind;
            replacement.environment = environment;
            let hash = replacement.lookup_hash;
            let result = store
                .rotate_key("acme", &key.id, replacement, &admin, Duration::ZERO)
                .await;
            assert!(
                matches!(result, Err(StoreError::FailedPrecondition(_))),
                "{kind:?} {environment:?}: {result:?}"
            );
            assert_eq!(
                store.find_by_lookup_hash(&hash).await.expect("lookup"),
                None
            );
        }
        assert_eq!(events(&store, "acme").await.len(), before);
        assert_eq!(store.get_key("acme", &key.id).await.expect("get"), key);
    }
);

keyward_store::store_test!(
    rotate_copies_the_key_as_it_is_when_rotated,
    |store| async move {
        let admin = user("admin");
        let old = store
            .create_key(new_key("acme", "before"))
            .await
            .expect("create");
        let patch = KeyPatch {
            name: Some(KeyName::parse("after").expect("name")),
            scopes: Some(Scopes::parse(&["orders:write"]).expect("scopes")),
            ..KeyPatch::default()
        };
        let updated = store
            .update_key("acme", &old.id, patch, &admin)
            .await
            .expect("update");
        let (new, _) = store
            .rotate_key("acme", &old.id, material(), &admin, Duration::ZERO)
            .await
            .expect("rotate");
        assert_eq!(new.name, updated.name);
        assert_eq!(new.scopes, updated.scopes);
        assert_eq!(new.kind, updated.kind);
        assert_eq!(new.environment, updated.environment);
        assert_eq!(new.created_by, admin);
    }
);

keyward_store::store_test!(
    rotate_refuses_revoked_and_archived_keys,
    |store| async move {
        let admin = user("admin");
        let revoked = store
            .create_key(new_key("acme", "r"))
            .await
            .expect("create");
        store
            .revoke_key("acme", &revoked.id, &admin)
            .await
            .expect("revoke");
        let archived = store
            .create_key(new_key("acme", "a"))
            .await
            .expect("create");
        store
            .archive_key("acme", &archived.id, &admin)
            .await
            .expect("archive");
        let before = events(&store, "acme").await.len();

        for id in [&revoked.id, &archived.id] {
            let replacement = material();
            let hash = replacement.lookup_hash;
            let result = store
                .rotate_key("acme", id, replacement, &admin, Duration::from_secs(60))
                .await;
            assert!(
                matches!(result, Err(StoreError::FailedPrecondition(_))),
                "{result:?}"
            );
            // Nothing was inserted.
            assert_eq!(
                store.find_by_lookup_hash(&hash).await.expect("lookup"),
                None
            );
        }
        assert_eq!(events(&store, "acme").await.len(), before);
    }
);
