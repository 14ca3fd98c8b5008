//! The change feed misses nothing: `seq` order is commit order, and
//! unreadable rows are skipped, not fatal.

use std::collections::BTreeSet;
use std::time::Duration;

use keyward_store::entity::key_events;
use keyward_store::testing::{self, Backend, run_with};
use keyward_store::{Store, StoreOptions};
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, EntityTrait, Statement};
use tokio::time::Instant;

use crate::helpers::new_key;

/// How long the test trigger keeps the slow transaction open after its event
/// took its `seq`.
const DELAY_SECS: u32 = 3;

/// A trigger that sleeps after inserting any event of organization `slow`,
/// inside the inserting transaction.
async fn install_slow_trigger(store: &Store, backend: Backend) {
    let sql = match backend {
        Backend::Postgres => format!(
            "CREATE FUNCTION keyward_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.organization_id = 'slow' THEN PERFORM pg_sleep({DELAY_SECS}); END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER keyward_test_slow AFTER INSERT ON key_events \
             FOR EACH ROW EXECUTE FUNCTION keyward_test_slow();"
        ),
        Backend::MariaDb => format!(
            "CREATE TRIGGER keyward_test_slow AFTER INSERT ON key_events FOR EACH ROW \
             BEGIN IF NEW.organization_id = 'slow' THEN DO SLEEP({DELAY_SECS}); END IF; END"
        ),
        Backend::Sqlite => unreachable!("SQLite has a single writer"),
    };
    store
        .connection()
        .execute_unprepared(&sql)
        .await
        .expect("install the test trigger");
}

/// Whether a session of this database is sleeping in the trigger.
async fn someone_sleeps(store: &Store, backend: Backend) -> bool {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event = 'PgSleep'"
        }
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND STATE = 'User sleep'"
        }
    };
    let db = store.connection();
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("read the session list")
        .expect("one row");
    row.try_get::<i64>("", "n").expect("a count") > 0
}

/// A transaction of organization `slow` takes its `seq` and stays
/// uncommitted for 3 s while organization `fast` writes. A follower reading
/// `events_after(cursor)` in a loop must deliver every event exactly once, in
/// `seq` order; with `seq` in insert order instead of commit order it would
/// deliver `fast`'s event, move its cursor past it, and never see `slow`'s.
async fn a_late_commit_is_never_skipped(backend: Backend) {
    let options = StoreOptions {
        // The slow transaction legitimately takes 3 s, and `fast` waits for it.
        operation_timeout: Duration::from_secs(20),
        ..testing::options()
    };
    run_with(backend, options, move |store| async move {
        store
            .create_key(new_key("fast", "before"))
            .await
            .expect("create");
        let start = store.last_event_seq().await.expect("head");
        install_slow_trigger(&store, backend).await;

        let slow = tokio::spawn({
            let store = store.clone();
            async move { store.create_key(new_key("slow", "late")).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !someone_sleeps(&store, backend).await {
            assert!(
                Instant::now() < deadline,
                "the slow transaction never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // `slow` holds a `seq` and is uncommitted: now another organization writes.
        let fast = tokio::spawn({
            let store = store.clone();
            async move { store.create_key(new_key("fast", "quick")).await }
        });

        let mut cursor = start;
        let mut delivered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let done = slow.is_finished() && fast.is_finished();
            let batch = store.events_after(cursor, 1000).await.expect("feed");
            assert!(batch.skipped.is_empty());
            for event in batch.events {
                assert!(event.seq > cursor, "the feed went backwards");
                delivered.push((event.seq, event.organization_id));
            }
            cursor = batch.last_seq;
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "the writers never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let slow = slow.await.expect("join").expect("slow create");
        let fast = fast.await.expect("join").expect("fast create");

        // Everything committed after `start`, read afresh.
        let all: Vec<i64> = store
            .events_after(start, 1000)
            .await
            .expect("feed")
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        let seqs: Vec<i64> = delivered.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, all, "the follower missed or repeated an event");
        let orgs: Vec<&str> = delivered.iter().map(|(_, org)| org.as_str()).collect();
        assert_eq!(
            orgs,
            ["slow", "fast"],
            "the slow organization's event comes first, in seq and commit order"
        );
        assert_eq!(seqs.iter().collect::<BTreeSet<_>>().len(), 2);
        assert_ne!(slow.id, fast.id);
    })
    .await;
}

per_backend!(
    a_late_commit_is_never_skipped,
    postgres: Postgres,
    mariadb: MariaDb
);

keyward_store::store_test!(unreadable_events_are_skipped, |store| async move {
    store
        .create_key(new_key("acme", "one"))
        .await
        .expect("create");
    for (event_type, changes) in [("exploded", "{}"), ("created", "{not json")] {
        key_events::Entity::insert(key_events::ActiveModel {
            seq: NotSet,
            organization_id: Set("acme".into()),
            key_id: Set("key_corrupt".into()),
            event_type: Set(event_type.into()),
            actor_type: Set("user".into()),
            actor_id: Set("intruder".into()),
            at: Set(chrono::Utc::now().fixed_offset()),
            changes: Set(changes.into()),
            prev_hash: Set("0".repeat(64)),
            hash: Set("0".repeat(64)),
        })
        .exec_without_returning(store.connection())
        .await
        .expect("insert a corrupt event");
    }
    store
        .create_key(new_key("acme", "two"))
        .await
        .expect("create");

    let batch = store.events_after(0, 1000).await.expect("feed");
    assert_eq!(batch.events.len(), 2, "both readable events: {batch:?}");
    assert_eq!(batch.skipped.len(), 2);
    let (first, last) = (batch.events[0].seq, batch.events[1].seq);
    assert!(batch.skipped.iter().all(|seq| first < *seq && *seq < last));
    assert_eq!(batch.last_seq, last);
    assert!(!batch.has_more);

    // A page ending on an unreadable row still moves the cursor past it.
    let page = store.events_after(first, 2).await.expect("feed");
    assert!(page.events.is_empty());
    assert_eq!(page.skipped, batch.skipped);
    assert_eq!(page.last_seq, batch.skipped[1]);
    assert!(page.has_more);
    let rest = store.events_after(page.last_seq, 2).await.expect("feed");
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].seq, last);
});
