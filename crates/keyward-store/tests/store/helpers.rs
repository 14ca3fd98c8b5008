//! Builders shared by the store tests.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_core::{
    Actor, ActorKind, ApiKeySecret, Description, Environment, KeyKind, KeyName, LookupHasher,
    Metadata, OrganizationId, Scopes,
};
use keyward_store::{EventQuery, KeyEvent, KeyMaterial, NewKey, Store};

/// A user actor.
pub fn user(id: &str) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: id.to_owned(),
    }
}

/// A standard live key of `org` named `name`, with a fresh secret.
pub fn new_key(org: &str, name: &str) -> NewKey {
    let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
    NewKey {
        organization_id: OrganizationId::parse(org).expect("test organization ids are valid"),
        workspace_id: None,
        name: KeyName::parse(name).expect("test names are valid"),
        description: Description::default(),
        scopes: Scopes::parse(&["orders:read"]).expect("test scopes are valid"),
        metadata: Metadata::default(),
        secret: KeyMaterial::new(&LookupHasher::derived(), &secret),
        created_by: user("creator"),
        user_id: None,
        service_account_id: None,
        expires_at: None,
        policy: keyward_core::Policy::default(),
    }
}

/// The material of a fresh standard live secret, for rotations.
pub fn material() -> KeyMaterial {
    let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
    KeyMaterial::new(&LookupHasher::derived(), &secret)
}

/// Every event of `org`, newest first.
pub async fn events(store: &Store, org: &str) -> Vec<KeyEvent> {
    let query = EventQuery {
        limit: 1000,
        ..EventQuery::default()
    };
    let page = store.list_events(org, &query).await.expect("list events");
    assert!(
        !page.has_more,
        "tests keep fewer than 1000 events per organization"
    );
    page.items
}

/// Whole microseconds of `at` (what the store keeps).
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).expect("in range")
}

/// `a` and `b` differ by at most `slack`.
pub fn close(a: DateTime<Utc>, b: DateTime<Utc>, slack: Duration) -> bool {
    (a - b).abs().to_std().is_ok_and(|d| d <= slack)
}

/// Defines one `#[tokio::test]` per named backend, in a module named like the
/// test function, calling `$test(Backend::…)`: for tests that need the
/// backend itself (`store_test!` hands them only a store).
macro_rules! per_backend {
    ($test:ident, $($name:ident: $backend:ident),+) => {
        mod $test {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$test(keyward_store::testing::Backend::$backend).await;
                }
            )+
        }
    };
}
