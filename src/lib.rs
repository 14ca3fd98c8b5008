//! keyward: the gRPC server and CLI.
//!
//! `startup` builds the application (store, listener, services); `admin` and
//! `validation_api` are the two keyward.v1 services; `ext_authz` is Envoy's
//! `Authorization/Check`; `metrics` serves Prometheus metrics; `validation` is the
//! validation path they share with the auth layer; `error` is the one place
//! where errors become `tonic::Status`; `limits` counts rate limits and
//! credits (in memory, or shared through Redis); `convert` holds every wire/domain
//! conversion; `cli` is the admin CLI (`keyward keys …`, `keyward events
//! list`), a gRPC client of a running server. Only this crate knows about tonic.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod connection;
pub mod convert;
pub mod error;
pub mod ext_authz;
pub mod limits;
pub mod metrics;
pub mod pb;
pub mod request_id;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod unary;
pub mod validation;
pub mod validation_api;

pub use cache::CacheSettings;
pub use startup::{Application, Settings, StartupError, bootstrap, open_store};
pub use validation::ValidatorSettings;

pub(crate) use config::clap_defaults;
