//! keyward-auth: the tower layer that protects a service with keyward API keys.
//!
//! [`KeywardAuthLayer`] wraps any `tower::Service<http::Request<B>>` (tonic
//! and axum alike). For each request it takes the key from
//! `authorization: Bearer` or `x-api-key`, asks a [`Validator`] for a verdict,
//! and either passes the request on with the caller's [`Identity`] in its
//! extensions or answers with a generic denial: gRPC `UNAUTHENTICATED` /
//! `PERMISSION_DENIED` for gRPC requests, HTTP 401 / 403 otherwise. A
//! validator that cannot answer makes the layer fail closed (`UNAVAILABLE` /
//! 503).
//!
//! keyward itself validates in process. Product services use
//! `RemoteValidator` (cargo feature `remote`, on by default), which calls
//! keyward's `ValidateKey` over gRPC and caches verdicts for keyward's cache
//! hint:
//!
//! ```no_run
//! # #[cfg(feature = "remote")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use keyward_auth::{Identity, KeywardAuthLayer, RemoteValidator, Scope};
//! use tonic::transport::Endpoint;
//!
//! let keyward = Endpoint::from_shared("http://keyward:50051")?.connect_lazy();
//! let validator = Arc::new(RemoteValidator::new(keyward));
//! let auth = KeywardAuthLayer::from_shared(Arc::clone(&validator))
//!     .require_scopes("/orders.v1.OrderService/GetOrder", [Scope::parse("orders:read")?])
//!     .require_scopes("/orders.v1.OrderService/CreateOrder", [Scope::parse("orders:write")?])
//!     .public_prefix("/grpc.health.v1.Health/")
//!     .hide_credentials(true);
//! // tonic::transport::Server::builder().layer(auth).add_service(..)
//! // or axum::Router::new().route(..).layer(auth)
//!
//! // In a handler: `request.extensions().get::<Identity>()` is the caller.
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```
//!
//! [`AuthMetrics`] counts what the layer and the validator did (requests,
//! denials by reason, errors, `ValidateKey` calls, cache hits); cargo feature
//! `metrics` exports them on a `prometheus-client` registry
//! (`AuthMetrics::register`).
//!
//! This crate does not depend on the keyward server or on any database.

#![forbid(unsafe_code)]

mod layer;
mod metrics;
#[cfg(feature = "remote")]
mod remote;
pub mod single_flight;
pub mod sync;
#[cfg(feature = "remote")]
pub mod tls;
mod validator;

pub use keyward_core::Cidr;
pub use keyward_core::Scope;
pub use layer::{ClientIp, CredentialSource, KeywardAuth, KeywardAuthLayer, presented_key};
pub use metrics::{AuthMetrics, DenialReason};
#[cfg(feature = "remote")]
pub use remote::{
    DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_MAX_BYTES, DEFAULT_MAX_CACHE_TTL, DEFAULT_TIMEOUT,
    RemoteValidator, RemoteValidatorBuilder,
};
pub use single_flight::SingleFlight;
#[cfg(feature = "remote")]
pub use tls::{ClientTls, TlsError};
pub use validator::{
    Denial, Identity, IdentityDetails, RedactedKey, ValidationFuture, ValidationRequest, Validator,
    ValidatorError, Verdict,
};
