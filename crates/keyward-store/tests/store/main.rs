//! Integration tests of the store. Every test runs on SQLite, PostgreSQL and
//! MariaDB, each on a fresh database (see `keyward_store::testing`).

#[macro_use]
mod helpers;

mod audit;
mod deadlines;
mod errors;
mod feed;
mod keys;
mod lifecycle;
mod limits;
mod list;
mod migrate;
mod policy;
#[path = "../../../../tests/support/tcp_proxy.rs"]
mod tcp_proxy;
mod usage;
