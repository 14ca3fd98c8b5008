//! The hash chain: clean after real use, and tampering is found.

use keyward_store::{KeyPatch, Store};
use sea_orm::ConnectionTrait;

use crate::helpers::{events, material, new_key, user};

/// Some history in two organizations; returns the seqs of `acme`'s events, oldest first.
async fn history(store: &Store) -> Vec<i64> {
    let admin = user("admin");
    for org in ["acme", "globex"] {
        let a = store.create_key(new_key(org, "a")).await.expect("create");
        let b = store.create_key(new_key(org, "b")).await.expect("create");
        store
            .archive_key(org, &a.id, &admin)
            .await
            .expect("archive");
        store
            .update_key(
                org,
                &b.id,
                KeyPatch {
                    disabled: Some(true),
                    ..KeyPatch::default()
                },
                &admin,
            )
            .await
            .expect("update");
        store
            .rotate_key(org, &b.id, material(), &admin, std::time::Duration::ZERO)
            .await
            .expect("rotate");
        store.delete_key(org, &a.id, &admin).await.expect("delete");
    }
    let mut seqs: Vec<i64> = events(store, "acme").await.iter().map(|e| e.seq).collect();
    seqs.reverse();
    seqs
}

async fn exec(store: &Store, sql: &str) {
    store
        .connection()
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

keyward_store::store_test!(verify_is_clean_after_real_use, |store| async move {
    let seqs = history(&store).await;
    assert_eq!(seqs.len(), 7);
    let report = store.verify_audit(None).await.expect("verify");
    assert!(report.broken.is_empty(), "{report:?}");
    assert_eq!(report.organizations_checked, 2);
    assert_eq!(report.events_checked, 14);

    let only = store.verify_audit(Some("acme")).await.expect("verify");
    assert_eq!(only.organizations_checked, 1);
    assert_eq!(only.events_checked, 7);
    let none = store.verify_audit(Some("nobody")).await.expect("verify");
    assert_eq!(none.organizations_checked, 0);
});

keyward_store::store_test!(tampered_changes_are_found, |store| async move {
    let seqs = history(&store).await;
    let target = seqs[2];
    exec(
        &store,
        &format!("UPDATE key_events SET changes = '{{\"archived_at\":null}}' WHERE seq = {target}"),
    )
    .await;
    let report = store.verify_audit(None).await.expect("verify");
    assert_eq!(report.broken.len(), 1, "{report:?}");
    let broken = &report.broken[0];
    assert_eq!(broken.organization_id, "acme");
    assert_eq!(broken.seq, target);
    assert_eq!(broken.reason, "hash does not match the event's contents");
    assert_eq!(report.organizations_checked, 2);
});

keyward_store::store_test!(tampered_actor_is_found, |store| async move {
    let seqs = history(&store).await;
    let target = seqs[0];
    exec(
        &store,
        &format!("UPDATE key_events SET actor_id = 'mallory' WHERE seq = {target}"),
    )
    .await;
    let report = store.verify_audit(Some("acme")).await.expect("verify");
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].organization_id, "acme");
    assert_eq!(report.broken[0].seq, target);
    // globex is untouched.
    let report = store.verify_audit(Some("globex")).await.expect("verify");
    assert!(report.broken.is_empty());
});

keyward_store::store_test!(removed_events_are_found, |store| async move {
    let seqs = history(&store).await;
    // A removed event in the middle breaks the next one's link.
    exec(
        &store,
        &format!("DELETE FROM key_events WHERE seq = {}", seqs[3]),
    )
    .await;
    let report = store.verify_audit(Some("acme")).await.expect("verify");
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].seq, seqs[4]);
    assert!(
        report.broken[0].reason.starts_with("prev_hash"),
        "{report:?}"
    );

    // A removed latest event no longer matches the head.
    let globex: Vec<i64> = events(&store, "globex")
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    exec(
        &store,
        &format!("DELETE FROM key_events WHERE seq = {}", globex[0]),
    )
    .await;
    let report = store.verify_audit(Some("globex")).await.expect("verify");
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].seq, globex[1]);
    assert!(
        report.broken[0].reason.starts_with("head_hash"),
        "{report:?}"
    );
});

keyward_store::store_test!(a_missing_organization_row_is_found, |store| async move {
    history(&store).await;
    exec(&store, "DELETE FROM organizations WHERE id = 'globex'").await;
    let report = store.verify_audit(None).await.expect("verify");
    assert_eq!(report.organizations_checked, 2);
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].organization_id, "globex");
});

keyward_store::store_test!(
    concurrent_writers_keep_the_chain_intact,
    |store| async move {
        let admin = user("admin");
        let seed = store
            .create_key(new_key("acme", "seed"))
            .await
            .expect("create");
        let mut tasks = Vec::new();
        for i in 0..24 {
            let store = store.clone();
            let admin = admin.clone();
            let seed = seed.id.clone();
            tasks.push(tokio::spawn(async move {
                let org = if i % 3 == 0 { "globex" } else { "acme" };
                let key = store
                    .create_key(new_key(org, &format!("k{i}")))
                    .await
                    .expect("concurrent create");
                if i % 4 == 0 {
                    let patch = KeyPatch {
                        disabled: Some(i % 8 == 0),
                        ..KeyPatch::default()
                    };
                    store
                        .update_key("acme", &seed, patch, &admin)
                        .await
                        .expect("concurrent update");
                }
                store
                    .archive_key(org, &key.id, &admin)
                    .await
                    .expect("concurrent archive");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let report = store.verify_audit(None).await.expect("verify");
        assert!(report.broken.is_empty(), "{report:?}");
        assert_eq!(report.organizations_checked, 2);
        assert!(report.events_checked > 24 * 2, "{report:?}");
    }
);
