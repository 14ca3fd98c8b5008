//! What the layer asks, and what it is told.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyward_core::{Environment, PresentedKey, Scope};

/// The future a [`Validator`] returns.
pub type ValidationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Verdict, ValidatorError>> + Send + 'a>>;

/// Decides whether a presented key may make a request.
///
/// keyward itself uses an in-process validator over its own cache and database;
/// product services use a remote one that calls `ValidateKey`.
pub trait Validator: Send + Sync + 'static {
    /// Validates one presented key.
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a>;
}

/// One question to a [`Validator`]. Its `Debug` shows only the display
/// prefix of a well-formed key (`sk_live_7Gq2...`), never the key.
#[derive(Clone, Copy)]
pub struct ValidationRequest<'a> {
    /// The raw key exactly as presented (not yet parsed).
    pub key: &'a str,
    /// Scopes the request needs; all must be granted.
    pub required_scopes: &'a [Scope],
    /// The client's address, if known.
    pub client_ip: Option<std::net::IpAddr>,
    /// The client's user agent, if known.
    pub user_agent: Option<&'a str>,
}

impl fmt::Debug for ValidationRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationRequest")
            .field("key", &RedactedKey(self.key))
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// A presented credential in `Debug` output: a well-formed keyward key as
/// its public display prefix (`PresentedKey(sk_live_7Gq2...)`), anything
/// else as `<redacted>`. For hand-written `Debug` impls of types that carry
/// a raw key.
pub struct RedactedKey<'a>(pub &'a str);

impl fmt::Debug for RedactedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PresentedKey::parse(self.0) {
            Ok(key) => fmt::Debug::fmt(&key, f),
            Err(_) => f.write_str("<redacted>"),
        }
    }
}

/// A validator's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Let the request through as this identity.
    Allow(Identity),
    /// Refuse it.
    Deny(Denial),
}

/// Why a request is refused. Only the kind is ever told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No usable key: missing, malformed, unknown, archived, expired, revoked.
    Unauthenticated,
    /// A good key that may not do this (a missing scope, a non-admin key).
    Forbidden,
    /// A good key used from a client address outside its IP allowlist (or
    /// from an unknown address). Told to the client as [`Denial::Forbidden`]
    /// is (PERMISSION_DENIED / 403), with the same generic message.
    IpNotAllowed,
}

/// The caller a request was allowed for, inserted into request extensions.
///
/// Shared, so cloning it (once per request, from a cached verdict) copies a
/// pointer; its fields read through [`IdentityDetails`]: `identity.key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(Arc<IdentityDetails>);

impl Identity {
    /// An identity with these details.
    pub fn new(details: IdentityDetails) -> Self {
        Self(Arc::new(details))
    }
}

impl From<IdentityDetails> for Identity {
    fn from(details: IdentityDetails) -> Self {
        Self::new(details)
    }
}

impl Deref for Identity {
    type Target = IdentityDetails;

    fn deref(&self) -> &IdentityDetails {
        &self.0
    }
}

/// What an [`Identity`] says of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDetails {
    /// The key's id.
    pub key_id: String,
    /// The key's organization.
    pub organization_id: String,
    /// The key's workspace, if any.
    pub workspace_id: Option<String>,
    /// The key's name.
    pub name: String,
    /// The key's scopes.
    pub scopes: Vec<String>,
    /// The key's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The user the key acts for, if any.
    pub user_id: Option<String>,
    /// The service account the key acts for, if any.
    pub service_account_id: Option<String>,
    /// The key's environment: `Live` for `sk_live_` keys, `Test` for
    /// `sk_test_` keys. A layer built with
    /// [`require_environment`](crate::KeywardAuthLayer::require_environment)
    /// only lets one of them through.
    pub environment: Environment,
    /// When the key expires; `None` if never. A cached "allowed" verdict is
    /// never reused past it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The validator could not reach a verdict; the layer fails closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("key validation unavailable: {reason}")]
pub struct ValidatorError {
    reason: String,
}

impl ValidatorError {
    /// An error with a reason for the logs (never shown to the client).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{ApiKeySecret, Environment, KeyKind};

    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let scopes = [Scope::parse("orders:read").expect("a valid scope")];
        for key in [
            secret.expose(),
            "not-a-keyward-key-but-still-secret",
            "s3cr3t",
        ] {
            let request = ValidationRequest {
                key,
                required_scopes: &scopes,
                client_ip: Some([10, 0, 0, 1].into()),
                user_agent: None,
            };
            let shown = format!("{request:?} {request:#?}");
            assert!(!shown.contains(key), "{shown}");
            assert!(shown.contains("orders:read") && shown.contains("10.0.0.1"));
        }
        let shown = format!(
            "{:?}",
            ValidationRequest {
                key: secret.expose(),
                required_scopes: &[],
                client_ip: None,
                user_agent: None,
            }
        );
        assert!(shown.contains(&secret.display_prefix()), "{shown}");
    }
}
