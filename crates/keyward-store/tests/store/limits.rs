//! The per-organization key cap.

use keyward_store::testing::{self, Backend, run_with};
use keyward_store::{StoreError, StoreOptions};

use crate::helpers::{events, material, new_key, user};

fn capped(limit: u64) -> StoreOptions {
    StoreOptions {
        max_keys_per_organization: limit,
        ..testing::options()
    }
}

async fn the_key_cap_holds(backend: Backend) {
    run_with(backend, capped(3), |store| async move {
        let mut keys = Vec::new();
        for name in ["a", "b", "c"] {
            keys.push(
                store
                    .create_key(new_key("acme", name))
                    .await
                    .expect("create"),
            );
        }
        let result = store.create_key(new_key("acme", "d")).await;
        assert!(
            matches!(result, Err(StoreError::TooManyKeys { limit: 3 })),
            "{result:?}"
        );
        let result = store
            .rotate_key(
                "acme",
                &keys[0].id,
                material(),
                &user("u"),
                Default::default(),
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::TooManyKeys { limit: 3 })),
            "{result:?}"
        );
        // Nothing was written by the refused calls.
        assert_eq!(events(&store, "acme").await.len(), 3);
        let page = store
            .list_keys(
                "acme",
                &keyward_store::ListQuery {
                    limit: 10,
                    include_archived: true,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(page.items.len(), 3);

        // Another organization has its own budget.
        store
            .create_key(new_key("globex", "a"))
            .await
            .expect("create");

        // Archived and revoked keys still count; deleted keys do not.
        store
            .archive_key("acme", &keys[1].id, &user("u"))
            .await
            .expect("archive");
        store
            .revoke_key("acme", &keys[2].id, &user("u"))
            .await
            .expect("revoke");
        assert!(matches!(
            store.create_key(new_key("acme", "d")).await,
            Err(StoreError::TooManyKeys { .. })
        ));
        store
            .delete_key("acme", &keys[2].id, &user("u"))
            .await
            .expect("delete");
        store
            .create_key(new_key("acme", "d"))
            .await
            .expect("room again");

        // Concurrent creations of a new organization cannot pass the cap together.
        let attempts = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_key(new_key("race", &format!("k{i}"))).await })
        });
        let mut created = 0;
        for attempt in attempts {
            match attempt.await.expect("join") {
                Ok(_) => created += 1,
                Err(StoreError::TooManyKeys { limit: 3 }) => {}
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(created, 3);
    })
    .await;
}

per_backend!(the_key_cap_holds, sqlite: Sqlite, postgres: Postgres, mariadb: MariaDb);
