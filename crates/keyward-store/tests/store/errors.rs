//! Infrastructure failures surface as `Unavailable`, so the server can answer
//! UNAVAILABLE rather than INTERNAL.

use keyward_core::KeyId;
use keyward_store::{Store, StoreError};

use crate::helpers::new_key;

#[tokio::test]
async fn unreachable_servers_are_unavailable() {
    for url in [
        "postgres://postgres@127.0.0.1:1/keyward",
        "mysql://root@127.0.0.1:1/keyward",
        "sqlite:///nonexistent-directory/keyward.db?mode=rwc",
    ] {
        let result = Store::connect(url).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{url}: {result:?}"
        );
    }
}

keyward_store::store_test!(a_closed_pool_is_unavailable, |store| async move {
    store
        .create_key(new_key("acme", "k"))
        .await
        .expect("create");
    store.connection().close_by_ref().await.expect("close");
    let result = store.get_key("acme", &KeyId::generate()).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    let result = store.create_key(new_key("acme", "k2")).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
});
