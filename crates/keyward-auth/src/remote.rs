//! `RemoteValidator`: a [`Validator`] that asks keyward's `ValidateKey` over
//! gRPC, with a local verdict cache that honours keyward's cache hint,
//! coalesces concurrent lookups of the same key, and fails closed.

mod cache;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// keyward's limits on the usage data sent along: longer values would make
// keyward reject the whole call as INVALID_ARGUMENT.
use chrono::{DateTime, Utc};
use keyward_core::{
    AllowedCidrs, Environment, MAX_USER_AGENT_CHARS, PresentedKey, check_idempotency_key,
};
use tonic::transport::Channel;

use self::cache::{Answer, Limits, VerdictCache, cache_key};
use self::pb::key_validation_service_client::KeyValidationServiceClient;
use crate::metrics::AuthMetrics;
use crate::validator::{
    Denial, Identity, IdentityDetails, Throttle, ValidationFuture, ValidationRequest, Validator,
    ValidatorError, Verdict,
};

/// The generated `keyward.v1` client and messages (wire types stay here).
#[allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
mod pb {
    tonic::include_proto!("keyward.v1");
}

// The generated request derives no `Debug` (see build.rs): it holds the raw key.
impl fmt::Debug for pb::ValidateKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateKeyRequest")
            .field("key", &crate::RedactedKey(&self.key))
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .field("user_agent", &self.user_agent)
            .field("cost", &self.cost)
            // A caller's idempotency key may be derived from a secret.
            .field("idempotency_key", &!self.idempotency_key.is_empty())
            .finish()
    }
}

/// How long one `ValidateKey` call may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default cap on how long a verdict is reused, whatever keyward hints.
pub const DEFAULT_MAX_CACHE_TTL: Duration = Duration::from_secs(5);
/// The default number of cached verdicts.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// The default memory budget of the verdict cache: 16 MiB, estimated per
/// verdict from its identity's strings, scopes and metadata.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// A [`Validator`] that asks a keyward server, for product services.
///
/// - Verdicts are cached locally for the `cache_ttl` keyward sends with each
///   answer, capped by [`RemoteValidatorBuilder::max_cache_ttl`] and by the
///   key's `expires_at` (read against this machine's clock), so a verdict is
///   never reused past the key's expiry; a zero or missing hint means the
///   verdict is not cached. The cache is bounded in
///   verdicts ([`RemoteValidatorBuilder::cache_capacity`]) and in bytes
///   ([`RemoteValidatorBuilder::cache_max_bytes`]), and keyed by a BLAKE3 hash
///   of the key and the required scopes, never by the raw key.
/// - A key's IP allowlist comes with its verdict (`allowed_cidrs`), and a
///   cached verdict is reused for a request only after that request's own
///   client address is checked against it: a "valid" cached for one address
///   never serves another outside the list (IP_NOT_ALLOWED, which the layer
///   answers PERMISSION_DENIED / 403). keyward's IP_NOT_ALLOWED answers are
///   cached per client address.
/// - Concurrent lookups of the same key with the same scopes from the same
///   client address share one `ValidateKey` call (the first request's user
///   agent is the one keyward records).
/// - Strings that are not keyward keys at all (wrong shape or checksum) are
///   denied locally, without a call.
/// - It fails closed: a transport error, a timeout or any non-OK status is a
///   [`ValidatorError`], which makes the layer answer UNAVAILABLE (503),
///   never "allowed". Errors are not cached; the next request asks again.
pub struct RemoteValidator {
    client: KeyValidationServiceClient<Channel>,
    cache: VerdictCache,
    timeout: Duration,
    calls: AtomicU64,
    metrics: AuthMetrics,
}

impl RemoteValidator {
    /// A validator calling keyward over `channel` with the default options.
    ///
    /// The channel may connect lazily
    /// (`tonic::transport::Endpoint::connect_lazy`): until keyward can be
    /// reached, every request is refused as UNAVAILABLE.
    pub fn new(channel: Channel) -> Self {
        Self::builder(channel).build()
    }

    /// A builder for a validator calling keyward over `channel`.
    pub fn builder(channel: Channel) -> RemoteValidatorBuilder {
        RemoteValidatorBuilder {
            channel,
            timeout: DEFAULT_TIMEOUT,
            max_cache_ttl: DEFAULT_MAX_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            metrics: AuthMetrics::default(),
        }
    }

    /// How many `ValidateKey` calls this validator has made (answered or
    /// not); cache hits and coalesced lookups do not count.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Makes one `ValidateKey` call: the answer and how long it may be reused.
    async fn ask(
        &self,
        request: ValidationRequest<'_>,
    ) -> Result<(Answer, Duration), ValidatorError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.metrics.note_keyward_call();
        let mut call = tonic::Request::new(pb::ValidateKeyRequest {
            key: request.key.to_owned(),
            required_scopes: request
                .required_scopes
                .iter()
                .map(ToString::to_string)
                .collect(),
            client_ip: request
                .client_ip
                .map(|ip| ip.to_canonical().to_string())
                .unwrap_or_default(),
            user_agent: request
                .user_agent
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_USER_AGENT_CHARS)
                .collect(),
            cost: 0,
            idempotency_key: request
                .idempotency_key
                // keyward would refuse the whole call over a longer one (or
                // one with control characters): such a request is charged as
                // any other.
                .filter(|key| check_idempotency_key(key).is_ok())
                .unwrap_or_default()
                .to_owned(),
        });
        call.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let response = tokio::time::timeout(self.timeout, client.validate_key(call))
            .await
            .map_err(|_| ValidatorError::unavailable("validate key timed out"))?
            .map_err(|status| {
                ValidatorError::unavailable(format!(
                    "validate key failed: {:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?
            .into_inner();
        // A metered key's verdict is never reused: each call spends.
        let hint = if response.metered {
            Duration::ZERO
        } else {
            within_lifetime(
                cache_hint(response.cache_ttl),
                response.expires_at.as_ref(),
                Utc::now(),
            )
        };
        Ok((answer(response)?, hint))
    }
}

/// A presented credential too long to be a keyward key: refused before it
/// is hashed, whatever its length.
fn not_a_key(request: &ValidationRequest<'_>) -> Option<Verdict> {
    (request.key.len() > PresentedKey::MAX_LEN).then_some(Verdict::Deny(Denial::Unauthenticated))
}

impl Validator for RemoteValidator {
    fn validate_cached(&self, request: &ValidationRequest<'_>) -> Option<Verdict> {
        if let Some(refused) = not_a_key(request) {
            return Some(refused);
        }
        let key = cache_key(request.key, request.required_scopes);
        self.cache.cached(&key, request.client_ip)
    }

    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        if let Some(refused) = not_a_key(&request) {
            return Box::pin(std::future::ready(Ok(refused)));
        }
        // `get_or_fetch` looks the verdict up before fetching. The layer's
        // warm path never comes here (`validate_cached` answers it); after
        // the layer's miss, this second look costs one lookup per miss and
        // finds a verdict another request's fetch has just stored.
        let key = cache_key(request.key, request.required_scopes);
        Box::pin(async move {
            self.cache
                .get_or_fetch(key, request.client_ip, || async move {
                    if PresentedKey::parse(request.key).is_err() {
                        // Not a keyward key at all: keyward would say
                        // MALFORMED. Checked on a miss only; never cached.
                        let denied = Verdict::Deny(Denial::Unauthenticated);
                        return Ok((denied.into(), Duration::ZERO));
                    }
                    self.ask(request).await
                })
                .await
        })
    }
}

impl fmt::Debug for RemoteValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteValidator")
            .field("timeout", &self.timeout)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

/// Options of a [`RemoteValidator`], from [`RemoteValidator::builder`].
#[derive(Debug, Clone)]
pub struct RemoteValidatorBuilder {
    channel: Channel,
    timeout: Duration,
    max_cache_ttl: Duration,
    cache_capacity: usize,
    cache_max_bytes: usize,
    metrics: AuthMetrics,
}

impl RemoteValidatorBuilder {
    /// How long one `ValidateKey` call may take before the request is refused
    /// as UNAVAILABLE (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a verdict is reused, whatever keyward hints (default 5 s).
    /// Zero turns the cache off.
    pub fn max_cache_ttl(mut self, max: Duration) -> Self {
        self.max_cache_ttl = max;
        self
    }

    /// The most verdicts kept (default 10,000); when full, expired verdicts
    /// and then arbitrary ones are evicted. Zero turns the cache off.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The most memory cached verdicts may hold, as estimated from each
    /// verdict's identity (strings, scopes, metadata; default 16 MiB): one
    /// verdict of a key with many long scopes and metadata weighs tens of
    /// kilobytes, so the verdict count alone does not bound memory. When
    /// full, expired and then arbitrary verdicts are evicted.
    pub fn cache_max_bytes(mut self, max_bytes: usize) -> Self {
        self.cache_max_bytes = max_bytes;
        self
    }

    /// Counts `ValidateKey` calls and cache hits into `metrics` (pass the
    /// layer's, `KeywardAuthLayer::metrics`, so one registry shows both).
    pub fn metrics(mut self, metrics: &AuthMetrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// The validator.
    pub fn build(self) -> RemoteValidator {
        RemoteValidator {
            client: KeyValidationServiceClient::new(self.channel),
            cache: VerdictCache::new(Limits {
                capacity: self.cache_capacity,
                max_bytes: self.cache_max_bytes,
                max_ttl: self.max_cache_ttl,
            })
            .with_metrics(self.metrics.clone()),
            timeout: self.timeout,
            calls: AtomicU64::new(0),
            metrics: self.metrics,
        }
    }
}

/// keyward's answer: its verdict, with the key's allowlist for later reuse.
/// An allowlist this client cannot read fails closed (an error, not cached):
/// reusing the verdict without it could let another address through.
fn answer(mut response: pb::ValidateKeyResponse) -> Result<Answer, ValidatorError> {
    let allowed_cidrs = if response.allowed_cidrs.is_empty() {
        None
    } else {
        let raw = std::mem::take(&mut response.allowed_cidrs);
        let allowed = AllowedCidrs::parse(&raw).map_err(|(_, error)| {
            ValidatorError::unavailable(format!("keyward sent an unreadable allowlist: {error}"))
        })?;
        Some(Arc::new(allowed))
    };
    Ok(Answer {
        metered: response.metered,
        verdict: verdict(response),
        allowed_cidrs,
    })
}

/// keyward's answer as a verdict: only VALID allows; a valid key lacking a
/// scope is forbidden, one used from outside its allowlist IP_NOT_ALLOWED;
/// anything else is unauthenticated. A VALID answer that names no
/// environment, or an expiry out of range, fails closed.
fn verdict(response: pb::ValidateKeyResponse) -> Verdict {
    match response.code() {
        pb::ValidationCode::Valid if response.valid => {
            let environment = match response.environment() {
                pb::Environment::Live => Environment::Live,
                pb::Environment::Test => Environment::Test,
                pb::Environment::Unspecified => return Verdict::Deny(Denial::Unauthenticated),
            };
            let expires_at = match response.expires_at.as_ref().map(date_time) {
                None => None,
                Some(Some(at)) => Some(at),
                Some(None) => return Verdict::Deny(Denial::Unauthenticated),
            };
            Verdict::Allow(Identity::new(IdentityDetails {
                key_id: response.key_id,
                organization_id: response.organization_id,
                workspace_id: non_empty(response.workspace_id),
                name: response.name,
                scopes: response.scopes,
                metadata: response.metadata.into_iter().collect(),
                user_id: non_empty(response.user_id),
                service_account_id: non_empty(response.service_account_id),
                environment,
                expires_at,
            }))
        }
        pb::ValidationCode::InsufficientScope => Verdict::Deny(Denial::Forbidden),
        pb::ValidationCode::IpNotAllowed => Verdict::Deny(Denial::IpNotAllowed),
        pb::ValidationCode::RateLimited => Verdict::Deny(Denial::RateLimited(throttle(&response))),
        pb::ValidationCode::UsageExceeded => {
            Verdict::Deny(Denial::UsageExceeded(throttle(&response)))
        }
        _ => Verdict::Deny(Denial::Unauthenticated),
    }
}

/// The limit keyward says refused the call.
fn throttle(response: &pb::ValidateKeyResponse) -> Throttle {
    let duration = |d: Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok());
    Throttle {
        name: Arc::from(response.limit_name.as_str()),
        limit: u64::try_from(response.limit).unwrap_or(0),
        remaining: u64::try_from(response.remaining).unwrap_or(0),
        reset: duration(response.reset),
        retry_after: duration(response.retry_after).unwrap_or(Duration::from_secs(1)),
        window: duration(response.window),
    }
}

/// How long keyward lets the verdict be reused: zero when unset or negative.
fn cache_hint(ttl: Option<prost_types::Duration>) -> Duration {
    ttl.and_then(|ttl| Duration::try_from(ttl).ok())
        .unwrap_or(Duration::ZERO)
}

/// `hint`, cut so that a verdict is never reused past the key's expiry
/// (`now` is this machine's clock): zero for a key that is already past it
/// or whose expiry cannot be read, `hint` for a key that never expires.
fn within_lifetime(
    hint: Duration,
    expires_at: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> Duration {
    let Some(expires_at) = expires_at else {
        return hint;
    };
    let left = date_time(expires_at)
        .and_then(|at| (at - now).to_std().ok())
        .unwrap_or(Duration::ZERO);
    hint.min(left)
}

/// A protobuf timestamp as a time; `None` if out of range.
fn date_time(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::from_timestamp(timestamp.seconds, nanos)
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::ApiKeySecret;

    fn response(valid: bool, code: pb::ValidationCode) -> pb::ValidateKeyResponse {
        pb::ValidateKeyResponse {
            valid,
            code: code.into(),
            key_id: "key_1".to_owned(),
            organization_id: "acme".to_owned(),
            name: "orders".to_owned(),
            scopes: vec!["orders:read".to_owned()],
            metadata: [("team".to_owned(), "core".to_owned())].into(),
            user_id: "u1".to_owned(),
            environment: pb::Environment::Live.into(),
            ..Default::default()
        }
    }

    fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("under a second"),
        }
    }

    #[test]
    fn the_identity_carries_the_environment_and_the_expiry() {
        let Verdict::Allow(identity) = verdict(response(true, pb::ValidationCode::Valid)) else {
            panic!("a valid key is allowed");
        };
        assert_eq!(identity.environment, Environment::Live);
        assert_eq!(identity.expires_at, None);

        let at = DateTime::from_timestamp(1_900_000_000, 250_000_000).expect("in range");
        let mut test_key = response(true, pb::ValidationCode::Valid);
        test_key.environment = pb::Environment::Test.into();
        test_key.expires_at = Some(timestamp(at));
        let Verdict::Allow(identity) = verdict(test_key) else {
            panic!("a valid key is allowed");
        };
        assert_eq!(identity.environment, Environment::Test);
        assert_eq!(identity.expires_at, Some(at));

        // A valid answer that does not say which environment, or whose
        // expiry cannot be read, fails closed.
        let mut unnamed = response(true, pb::ValidationCode::Valid);
        unnamed.environment = pb::Environment::Unspecified.into();
        assert_eq!(verdict(unnamed), Verdict::Deny(Denial::Unauthenticated));
        let mut unreadable = response(true, pb::ValidationCode::Valid);
        unreadable.expires_at = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        });
        assert_eq!(verdict(unreadable), Verdict::Deny(Denial::Unauthenticated));
    }

    #[test]
    fn a_verdict_is_never_reused_past_the_keys_expiry() {
        let now = DateTime::from_timestamp(1_900_000_000, 0).expect("in range");
        let hint = Duration::from_secs(3600);
        let in_2s = timestamp(now + chrono::Duration::seconds(2));
        assert_eq!(within_lifetime(hint, None, now), hint, "never expires");
        assert_eq!(
            within_lifetime(hint, Some(&in_2s), now),
            Duration::from_secs(2)
        );
        assert_eq!(
            within_lifetime(Duration::from_secs(1), Some(&in_2s), now),
            Duration::from_secs(1),
            "a shorter hint stays"
        );
        let past = timestamp(now - chrono::Duration::milliseconds(1));
        assert_eq!(within_lifetime(hint, Some(&past), now), Duration::ZERO);
        assert_eq!(
            within_lifetime(hint, Some(&timestamp(now)), now),
            Duration::ZERO
        );
        let unreadable = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            within_lifetime(hint, Some(&unreadable), now),
            Duration::ZERO
        );
    }

    #[test]
    fn only_a_valid_answer_allows() {
        let Verdict::Allow(identity) = verdict(response(true, pb::ValidationCode::Valid)) else {
            panic!("a valid key is allowed");
        };
        assert_eq!(identity.key_id, "key_1");
        assert_eq!(identity.organization_id, "acme");
        assert_eq!(identity.workspace_id, None);
        assert_eq!(identity.user_id.as_deref(), Some("u1"));
        assert_eq!(identity.service_account_id, None);
        assert_eq!(identity.metadata["team"], "core");

        assert_eq!(
            verdict(response(false, pb::ValidationCode::InsufficientScope)),
            Verdict::Deny(Denial::Forbidden)
        );
        assert_eq!(
            verdict(response(false, pb::ValidationCode::IpNotAllowed)),
            Verdict::Deny(Denial::IpNotAllowed)
        );
        // An allowlist comes along; one this client cannot read fails closed.
        let mut limited = response(true, pb::ValidationCode::Valid);
        limited.allowed_cidrs = vec!["10.0.0.0/8".to_owned()];
        let read = answer(limited.clone()).expect("a readable allowlist");
        assert_eq!(
            read.allowed_cidrs.expect("an allowlist").to_strings(),
            ["10.0.0.0/8"]
        );
        limited.allowed_cidrs.push("10.0.0.0/99".to_owned());
        assert!(answer(limited).is_err());
        for code in [
            pb::ValidationCode::Unspecified,
            pb::ValidationCode::Malformed,
            pb::ValidationCode::NotFound,
            pb::ValidationCode::Inactive,
            pb::ValidationCode::Archived,
            pb::ValidationCode::Expired,
            pb::ValidationCode::Revoked,
        ] {
            assert_eq!(
                verdict(response(false, code)),
                Verdict::Deny(Denial::Unauthenticated),
                "{code:?}"
            );
        }
        // Contradictory answers fail closed.
        assert_eq!(
            verdict(response(true, pb::ValidationCode::Revoked)),
            Verdict::Deny(Denial::Unauthenticated)
        );
        assert_eq!(
            verdict(response(false, pb::ValidationCode::Valid)),
            Verdict::Deny(Denial::Unauthenticated)
        );
        let mut unknown = response(true, pb::ValidationCode::Valid);
        unknown.code = 99;
        assert_eq!(verdict(unknown), Verdict::Deny(Denial::Unauthenticated));
    }

    #[test]
    fn a_missing_or_negative_hint_means_do_not_cache() {
        assert_eq!(cache_hint(None), Duration::ZERO);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(cache_hint(Some(negative)), Duration::ZERO);
        let second = prost_types::Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        assert_eq!(cache_hint(Some(second)), Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn an_unreachable_keyward_fails_closed_and_errors_are_not_cached() {
        // Bind, then drop, a listener: nothing listens on that port now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_lazy();
        let validator = RemoteValidator::new(channel);
        let key = ApiKeySecret::generate(
            keyward_core::KeyKind::Standard,
            keyward_core::Environment::Live,
        );
        let request = ValidationRequest {
            key: key.expose(),
            required_scopes: &[],
            client_ip: None,
            user_agent: None,
            idempotency_key: None,
        };
        assert!(validator.validate(request).await.is_err());
        assert!(validator.validate(request).await.is_err());
        assert_eq!(validator.calls(), 2);
    }

    #[tokio::test]
    async fn strings_that_are_not_keys_are_denied_without_a_call() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let validator = RemoteValidator::new(channel);
        let long = format!("sk_live_{}", "a".repeat(64 * 1024));
        for key in ["", "wrong", "sk_live_short", "Bearer sk_live_x", &long] {
            let verdict = validator
                .validate(ValidationRequest {
                    key,
                    required_scopes: &[],
                    client_ip: None,
                    user_agent: None,
                    idempotency_key: None,
                })
                .await
                .expect("no call, no error");
            assert_eq!(verdict, Verdict::Deny(Denial::Unauthenticated));
        }
        assert_eq!(validator.calls(), 0);
    }

    #[test]
    fn the_wire_request_debug_hides_the_key() {
        let key = ApiKeySecret::generate(
            keyward_core::KeyKind::Standard,
            keyward_core::Environment::Live,
        );
        let request = pb::ValidateKeyRequest {
            key: key.expose().to_owned(),
            required_scopes: vec!["orders:read".to_owned()],
            ..Default::default()
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains(key.expose()), "{shown}");
        assert!(shown.contains("orders:read"), "{shown}");
    }

    /// A keyward that accepts every `ValidateKey` call and never answers it.
    #[derive(Clone)]
    struct Silent;

    impl tonic::server::NamedService for Silent {
        const NAME: &'static str = "keyward.v1.KeyValidationService";
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Silent {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn dropped_requests_to_a_keyward_that_never_answers_leave_nothing_in_flight() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Silent)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_lazy();
        let validator = RemoteValidator::builder(channel)
            .timeout(Duration::from_secs(3600))
            .build();
        let keys: Vec<ApiKeySecret> = (0..16)
            .map(|_| {
                ApiKeySecret::generate(
                    keyward_core::KeyKind::Standard,
                    keyward_core::Environment::Live,
                )
            })
            .collect();
        let mut requests: Vec<_> = keys
            .iter()
            .map(|key| {
                validator.validate(ValidationRequest {
                    key: key.expose(),
                    required_scopes: &[],
                    client_ip: None,
                    user_agent: None,
                    idempotency_key: None,
                })
            })
            .collect();
        // Every call reaches the server and hangs there.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while validator.calls() < 16 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "calls never started"
            );
            for request in &mut requests {
                let polled = tokio::time::timeout(Duration::from_millis(1), request.as_mut()).await;
                assert!(polled.is_err(), "a silent keyward never answers");
            }
        }
        assert_eq!(validator.cache.in_flight(), 16);
        drop(requests);
        assert_eq!(validator.cache.in_flight(), 0);
        server.abort();
    }
}
