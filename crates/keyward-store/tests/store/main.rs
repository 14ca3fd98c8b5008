//! Integration tests of the store. Every test runs on SQLite, PostgreSQL and
//! MariaDB, each on a fresh database (see `keyward_store::testing`).

mod audit;
mod errors;
mod helpers;
mod keys;
mod lifecycle;
mod list;
mod usage;
