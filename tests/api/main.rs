//! End-to-end tests: a real keyward on a port-0 listener, real gRPC clients,
//! and a fresh SQLite, PostgreSQL and MariaDB database per test.

mod helpers;

mod admin_cli;
mod auth_layer;
mod bad_input;
mod cli;
mod envoy;
mod faults;
mod fuzz;
mod grpcurl;
mod hot_path;
mod lifecycle;
mod limits;
mod list;
mod metrics;
mod policy;
mod rate_limits;
mod secrets;
mod server;
mod tenancy;
mod tls;
mod usage;

// The shared fault proxy; its own tests run with this binary.
#[path = "../support/tcp_proxy.rs"]
mod tcp_proxy;
