//! keyward-auth: the tower layer that protects a service with keyward API keys.
//!
//! `KeywardAuthLayer` wraps any `tower::Service<http::Request<B>>` (tonic and
//! axum alike). For each request it takes the key from `authorization: Bearer`
//! or `x-api-key`, asks a [`Validator`] for a verdict, and either passes the
//! request on with the caller's [`Identity`] in its extensions or answers with
//! a generic denial: gRPC `UNAUTHENTICATED` / `PERMISSION_DENIED` for gRPC
//! requests, HTTP 401 / 403 otherwise. A validator that cannot answer makes the
//! layer fail closed (`UNAVAILABLE` / 503).
//!
//! This crate does not depend on the keyward server or on any database.

mod layer;
mod validator;

pub use layer::{CredentialSource, KeywardAuth, KeywardAuthLayer};
pub use validator::{
    Denial, Identity, ValidationFuture, ValidationRequest, Validator, ValidatorError, Verdict,
};
