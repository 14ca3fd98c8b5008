//! keyward-auth: the tower layer that protects a service with keyward API keys.
//!
//! [`KeywardAuthLayer`] wraps any `tower::Service<http::Request<B>>` (tonic
//! and axum alike). For each request it takes the key from
//! `authorization: Bearer` or `x-api-key`, asks a [`Validator`] for a verdict,
//! and either passes the request on with the caller's [`Identity`] in its
//! extensions or answers with a generic denial: gRPC `UNAUTHENTICATED` /
//! `PERMISSION_DENIED` for gRPC requests, HTTP 401 / 403 otherwise (403 for a
//! missing scope and for a client address outside the key's IP allowlist
//! alike). A validator that cannot answer makes the layer fail closed
//! (`UNAVAILABLE` / 503). The identity carries the key's [`Environment`] and
//! expiry; a layer built with [`KeywardAuthLayer::require_environment`]
//! refuses keys of the other environment (a test key on a live service) as
//! unauthenticated.
//!
//! keyward itself validates in process. Product services use
//! `RemoteValidator` (cargo feature `remote`, on by default), which calls
//! keyward's `ValidateKey` over gRPC and caches verdicts for keyward's cache
//! hint, never past the key's `expires_at` (a cached verdict of a key with an
//! IP allowlist is reused only for client addresses inside it):
//!
//! ```no_run
//! # #[cfg(feature = "remote")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use keyward_auth::{Environment, Identity, KeywardAuthLayer, RemoteValidator, Scope};
//! use tonic::transport::Endpoint;
//!
//! let keyward = Endpoint::from_shared("http://keyward:50051")?.connect_lazy();
//! let validator = Arc::new(RemoteValidator::new(keyward));
//! let auth = KeywardAuthLayer::from_shared(Arc::clone(&validator))
//!     // A live service: sk_test_ keys are refused as unauthenticated.
//!     .require_environment(Environment::Live)
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
pub use keyward_core::Environment;
pub use keyward_core::Scope;
pub use layer::{
    ClientIp, CredentialSource, KeywardAuth, KeywardAuthLayer, ResponseFuture, presented_key,
};
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
    Denial, Identity, IdentityDetails, RedactedKey, Throttle, ValidationFuture, ValidationRequest,
    Validator, ValidatorError, Verdict,
};
