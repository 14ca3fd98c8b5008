//! `ListKeys` page latency at depth over a seeded database (target <= 10 ms;
//! figures in BENCHMARKS.md). In process: `Store::list_keys`, the query and
//! row decoding `ListKeys` runs, without gRPC (scripts/bench-listkeys.sh adds
//! the same pages through a running server).
//!
//!   cargo bench --bench listkeys                      # 1,000,000 keys, temp SQLite
//!   cargo bench --bench listkeys -- --quick           # 10,000 keys
//!   cargo test  --bench listkeys                      # quick, debug build
//!
//! Options (after `--`):
//!   --keys N            keys to seed (default 1,000,000; quick 10,000)
//!   --depth D           cursor depth (default 90% of N: 900,000)
//!   --samples S         timed pages per depth (default 500; quick 20)
//!   --db PATH           SQLite file to use and keep (seeded unless it already
//!                       holds N keys of organization `bench`)
//!   --postgres          a fresh database on KEYWARD_TEST_POSTGRES_URL instead
//!                       (dropped afterwards)
//!
//! Keys are seeded with multi-row INSERTs (1,000 rows each, 20 per
//! transaction; see `support::seed`) into organization `bench`, with
//! ULID-shaped ids one millisecond apart. Pages are 100 keys, newest first,
//! default filters (archived keys hidden). Depth D means `after_id` is the
//! D-th key of the listing, so the page holds keys D+1..D+100.
//!
//! The last line is machine-readable for the script:
//! `LISTKEYS depth=D after_id=key_... db=URL`.

use std::time::{Duration, Instant};

use keyward_core::KeyId;
use keyward_store::testing::{Backend, TestDatabase};
use keyward_store::{ListQuery, Store};
use sea_orm::{ConnectionTrait, Statement};

mod support;

const PAGE: u32 = 100;

async fn id_at_depth(store: &Store, depth: usize) -> String {
    let backend = store.connection().get_database_backend();
    let sql = format!(
        "SELECT id FROM api_keys WHERE organization_id = '{}' ORDER BY id DESC LIMIT 1 OFFSET {}",
        support::ORG,
        depth - 1
    );
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(backend, sql))
        .await
        .expect("query")
        .expect("a key at that depth");
    row.try_get::<String>("", "id").expect("id")
}

/// Times `samples` pages after `after` (after 20 untimed ones).
async fn pages(store: &Store, after: Option<&str>, samples: usize) -> support::Latencies {
    let query = ListQuery {
        limit: PAGE,
        after_id: after.map(|id| KeyId::from_trusted(id.to_owned())),
        ..ListQuery::default()
    };
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let start = Instant::now();
        let page = store
            .list_keys(support::ORG, &query)
            .await
            .expect("list_keys");
        let took = start.elapsed();
        assert_eq!(page.items.len(), PAGE as usize, "a full page");
        if let Some(after) = after {
            assert!(page.items[0].id.as_str() < after, "page after the cursor");
        }
        if i >= 20 {
            times.push(took);
        }
    }
    support::Latencies::new(times)
}

fn main() {
    let args = support::Args::parse();
    let keys = args.number("--keys", if args.quick { 10_000 } else { 1_000_000 });
    let depth = args.number("--depth", keys / 10 * 9);
    let samples = args.number("--samples", if args.quick { 20 } else { 500 });
    assert!(
        depth >= 1 && depth + PAGE as usize <= keys,
        "depth out of range"
    );

    let rt = support::runtime();
    rt.block_on(async {
        let (url, temp) = if args.flag("--postgres") {
            let db = TestDatabase::create(Backend::Postgres).await;
            let Some(db) = db else {
                println!("listkeys: SKIPPED (no PostgreSQL server)");
                return;
            };
            (db.url.clone(), Some(db))
        } else if let Some(path) = args.value("--db") {
            (format!("sqlite://{path}?mode=rwc"), None)
        } else {
            let db = TestDatabase::create(Backend::Sqlite).await.expect("sqlite");
            (db.url.clone(), Some(db))
        };
        let store = support::open(&url).await;
        let present = support::count_keys(&store).await as usize;
        if present >= keys {
            println!("listkeys: {present} keys already in {url}; not seeding");
        } else {
            assert_eq!(present, 0, "{url} holds {present} keys, fewer than {keys}");
            let seeded = support::seed(&store, keys, false, false).await;
            println!(
                "listkeys: seeded {keys} keys in {:.1}s ({:.0} keys/s)",
                seeded.took.as_secs_f64(),
                keys as f64 / seeded.took.as_secs_f64()
            );
        }
        // Let the database settle its statistics the way a live one would.
        if url.starts_with("postgres") {
            store
                .connection()
                .execute_unprepared("ANALYZE api_keys")
                .await
                .expect("analyze");
        }

        let after = id_at_depth(&store, depth).await;
        let top = pages(&store, None, samples).await;
        let deep = pages(&store, Some(&after), samples).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("listkeys: {keys} keys, page of {PAGE}, {samples} timed pages per depth");
        println!("listkeys depth 0:       {}", top.summary());
        println!("listkeys depth {depth}: {}", deep.summary());
        println!(
            "listkeys: median {:.3} ms at depth 0, {:.3} ms at depth {depth} (target <= 10 ms)",
            ms(top.pct(50.0)),
            ms(deep.pct(50.0))
        );
        println!("LISTKEYS depth={depth} after_id={after} db={url}");

        let _ = store.connection().close_by_ref().await;
        if let Some(db) = temp {
            db.drop_database().await;
        }
    });
}
