//! What the layer asks, and what it is told.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

    /// The verdict for `request` when this validator has it at hand (a
    /// cached one), decided without a future: the layer asks this first and
    /// calls [`validate`](Self::validate) only on `None`, the default. It
    /// must answer exactly as `validate` would, and must not spend anything
    /// a metered key's call spends (such verdicts are never at hand).
    fn validate_cached(&self, request: &ValidationRequest<'_>) -> Option<Verdict> {
        let _ = request;
        None
    }
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
    /// The request's idempotency key (the `idempotency-key` header), if any:
    /// a retry with the same one spends the key's rate limits and credits
    /// once.
    pub idempotency_key: Option<&'a str>,
}

impl fmt::Debug for ValidationRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationRequest")
            .field("key", &RedactedKey(self.key))
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .field("user_agent", &self.user_agent)
            .field("idempotency_key", &self.idempotency_key.is_some())
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No usable key: missing, malformed, unknown, archived, expired, revoked.
    Unauthenticated,
    /// A good key that may not do this (a missing scope, a non-admin key).
    Forbidden,
    /// A good key used from a client address outside its IP allowlist (or
    /// from an unknown address). Told to the client as [`Denial::Forbidden`]
    /// is (PERMISSION_DENIED / 403), with the same generic message.
    IpNotAllowed,
    /// A good key over one of its rate limits: RESOURCE_EXHAUSTED / 429,
    /// with `retry-after` and the RateLimit headers.
    RateLimited(Throttle),
    /// A good key without credits left: RESOURCE_EXHAUSTED / 429.
    UsageExceeded(Throttle),
}

/// The limit that refused a request, as the client is told it: the
/// `RateLimit-Policy` and `RateLimit` headers (IETF httpapi
/// ratelimit-headers draft, structured-field form) and `retry-after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// The limit's name (`credits` for credits).
    pub name: Arc<str>,
    /// Units per window (credits: per refill period).
    pub limit: u64,
    /// Units left (zero when refused).
    pub remaining: u64,
    /// Until the window ends (credits: until the refill; `None` if never).
    pub reset: Option<Duration>,
    /// How long the client should wait before trying again.
    pub retry_after: Duration,
    /// The window's length, for `RateLimit-Policy` (`None` for credits).
    pub window: Option<Duration>,
}

impl Throttle {
    /// The response headers that describe this limit: `ratelimit-policy`
    /// (when it has a window), `ratelimit`, and `retry-after` in whole
    /// seconds (rounded up, at least 1) when `refused`.
    pub fn headers(&self, refused: bool) -> Vec<(&'static str, String)> {
        let name = sf_string(&self.name);
        let mut headers = Vec::with_capacity(3);
        if let Some(window) = self.window {
            headers.push((
                "ratelimit-policy",
                format!("{name};q={};w={}", self.limit, window.as_secs()),
            ));
        }
        let mut state = format!("{name};r={}", self.remaining);
        if let Some(reset) = self.reset {
            state.push_str(&format!(";t={}", whole_seconds_up(reset)));
        }
        headers.push(("ratelimit", state));
        if refused {
            headers.push((
                "retry-after",
                whole_seconds_up(self.retry_after).max(1).to_string(),
            ));
        }
        headers
    }
}

/// `d` in whole seconds, rounded up.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A structured-field string: quoted, with `"` and `\` escaped (limit names
/// are `[A-Za-z0-9_.-]`, so this never changes one).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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
    fn a_throttle_is_told_in_ratelimit_headers() {
        let limited = Throttle {
            name: Arc::from("requests"),
            limit: 100,
            remaining: 0,
            reset: Some(Duration::from_millis(1_200)),
            retry_after: Duration::from_millis(1_200),
            window: Some(Duration::from_secs(10)),
        };
        assert_eq!(
            limited.headers(true),
            [
                ("ratelimit-policy", "\"requests\";q=100;w=10".to_owned()),
                ("ratelimit", "\"requests\";r=0;t=2".to_owned()),
                ("retry-after", "2".to_owned()),
            ]
        );
        let credits = Throttle {
            name: Arc::from("credits"),
            remaining: 7,
            reset: None,
            window: None,
            ..limited
        };
        assert_eq!(
            credits.headers(false),
            [("ratelimit", "\"credits\";r=7".to_owned())]
        );
    }

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
                idempotency_key: None,
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
                idempotency_key: None,
            }
        );
        assert!(shown.contains(&secret.display_prefix()), "{shown}");
    }
}
