//! keyward-store: persistence of API keys and their audit log with sea-orm.
//!
//! Works on SQLite, PostgreSQL and MySQL/MariaDB. Knows nothing about tonic or
//! the wire format: it takes and returns `keyward-core` domain types.
//! Every mutation writes its `KeyEvent` in the same transaction as the change,
//! hash-chained per organization (see `audit`).

mod audit;
pub mod entity;
mod error;
pub mod migration;
mod repo;
#[cfg(feature = "testing")]
pub mod testing;
mod time;

pub use audit::{AuditReport, BrokenLink};
pub use error::{Outage, StoreError};
pub use repo::{
    EventPage, EventQuery, EventType, FeedBatch, KeyEvent, KeyMaterial, KeyPage, KeyPatch,
    ListQuery, MAX_PAGE, NewKey, Page, PoolUsage, Store, StoreOptions, UsageCount, UsagePoint,
    UsageRecord, minute_start,
};
