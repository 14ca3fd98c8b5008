//! `KeywardAuthLayer` and the `KeywardAuth` service it produces.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use foldhash::fast::RandomState;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Request, Response, StatusCode};
use keyward_core::{Cidr, Environment, Scope, client_address};
use tower::{Layer, Service};

use crate::metrics::{AuthMetrics, DenialReason};
use crate::validator::{Denial, Throttle, ValidationRequest, Validator, ValidatorError, Verdict};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// A client's idempotency key: a retried request with the same one spends
/// a metered key's rate limits and credits once.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where the layer looks for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// `authorization: Bearer <key>`, else `x-api-key: <key>` (the default).
    #[default]
    BearerOrApiKey,
    /// Only `authorization: Bearer <key>`.
    Bearer,
    /// Only `x-api-key: <key>`.
    ApiKey,
}

/// The client's address as the server determined it, put into a request's
/// extensions by whatever accepted the connection. The layer reads the
/// client's address from here first; without it, from tonic's connection
/// info (with the `remote` feature). It never takes a client-written header's
/// word for it: `x-forwarded-for` counts only when the peer is one of the
/// [`trusted_proxies`](KeywardAuthLayer::trusted_proxies).
///
/// A server that is not tonic (axum with `ConnectInfo`, plain hyper) inserts
/// `ClientIp(peer.ip())` in a layer before this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

#[derive(Debug, Clone, Default)]
struct Config {
    source: CredentialSource,
    hide_credentials: bool,
    method_scopes: HashMap<String, Vec<Scope>, RandomState>,
    public_prefixes: Vec<String>,
    trusted_proxies: Vec<Cidr>,
    environment: Option<Environment>,
    metrics: AuthMetrics,
}

/// A tower layer that authenticates every request with a keyward key.
pub struct KeywardAuthLayer<V> {
    validator: Arc<V>,
    config: Arc<Config>,
}

impl<V> Clone for KeywardAuthLayer<V> {
    fn clone(&self) -> Self {
        Self {
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

impl<V: Validator> KeywardAuthLayer<V> {
    /// A layer asking `validator`, reading the key from `authorization: Bearer`
    /// or `x-api-key`, requiring no scopes and protecting every path.
    pub fn new(validator: V) -> Self {
        Self::from_shared(Arc::new(validator))
    }

    /// Like `new`, sharing a validator with other users.
    pub fn from_shared(validator: Arc<V>) -> Self {
        Self {
            validator,
            config: Arc::new(Config::default()),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Where to look for the key.
    pub fn credential_source(mut self, source: CredentialSource) -> Self {
        self.config_mut().source = source;
        self
    }

    /// Whether to strip the key before the inner service sees it: the header
    /// it came from and, when both headers are accepted, `x-api-key` too (an
    /// ignored second key is still a credential).
    pub fn hide_credentials(mut self, hide: bool) -> Self {
        self.config_mut().hide_credentials = hide;
        self
    }

    /// Scopes a request to `path` (a gRPC method path such as
    /// `/orders.v1.OrderService/CreateOrder`, or an HTTP path) must hold.
    pub fn require_scopes(
        mut self,
        path: impl Into<String>,
        scopes: impl IntoIterator<Item = Scope>,
    ) -> Self {
        self.config_mut()
            .method_scopes
            .insert(path.into(), scopes.into_iter().collect());
        self
    }

    /// Proxies whose `x-forwarded-for` is believed: when the connection's
    /// peer is in one of these networks, the client is the first address
    /// from the right of `x-forwarded-for` that is not a trusted proxy. With
    /// none (the default) the client is the connection's peer and forwarded
    /// headers are ignored, since anyone can write them.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = Cidr>) -> Self {
        self.config_mut().trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Lets only keys of `environment` through: a live service refuses
    /// `sk_test_` keys, a test deployment `sk_live_` keys. Without it (the
    /// default) keys of both environments are accepted.
    ///
    /// A key of the other environment is refused as unauthenticated (gRPC
    /// `UNAUTHENTICATED`, HTTP 401), like any key that is no credential for
    /// this service: the client learns nothing about whether the key exists.
    /// The key's prefix is checked before the validator is asked (such a key
    /// costs no call to keyward), and the allowed identity's
    /// [`environment`](crate::IdentityDetails::environment) after, so a
    /// cached verdict, or a validator whose keys carry no prefix, is held to
    /// it as well. Such refusals are counted as
    /// [`DenialReason::WrongEnvironment`].
    pub fn require_environment(mut self, environment: Environment) -> Self {
        self.config_mut().environment = Some(environment);
        self
    }

    /// Counts requests, denials by reason and validator errors into
    /// `metrics` (share them with `RemoteValidatorBuilder::metrics` and
    /// export them with `AuthMetrics::register`, feature `metrics`).
    pub fn metrics(mut self, metrics: &AuthMetrics) -> Self {
        self.config_mut().metrics = metrics.clone();
        self
    }

    /// Lets requests whose path starts with `prefix` through without a key
    /// (for example `/grpc.health.v1.Health/`). Everything else stays protected.
    pub fn public_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config_mut().public_prefixes.push(prefix.into());
        self
    }
}

impl<S, V> Layer<S> for KeywardAuthLayer<V> {
    type Service = KeywardAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        KeywardAuth {
            inner,
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

/// The service produced by [`KeywardAuthLayer`].
pub struct KeywardAuth<S, V> {
    inner: S,
    validator: Arc<V>,
    config: Arc<Config>,
}

impl<S: Clone, V> Clone for KeywardAuth<S, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S, V, B, ResBody> Service<Request<B>> for KeywardAuth<S, V>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    V: Validator,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        let path = request.uri().path();

        if config
            .public_prefixes
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return ResponseFuture::inner(inner.call(request));
        }

        config.metrics.note_request();
        // The warm path decides here, with no future of its own: a verdict
        // the validator has at hand lets the request through (or refuses
        // it) at once.
        let (header, cached) = match question(config, &request) {
            Ok((header, question)) => (header, self.validator.validate_cached(&question)),
            Err(reason) => {
                return ResponseFuture::refused(refuse(config, &request, reason));
            }
        };
        if let Some(verdict) = cached {
            return match admit(config, &header, Ok(verdict), &mut request) {
                Ok(()) => ResponseFuture::inner(inner.call(request)),
                Err(refused) => ResponseFuture::refused(refused),
            };
        }

        // A miss: the question borrows the request, which the future now
        // owns, so it is asked again there (header lookups, once per miss).
        let config = Arc::clone(&self.config);
        let validator = Arc::clone(&self.validator);
        ResponseFuture::validating(async move {
            let verdict = match question(&config, &request) {
                Ok((_, question)) => validator.validate(question).await,
                Err(reason) => return Ok(refuse(&config, &request, reason)),
            };
            match admit(&config, &header, verdict, &mut request) {
                Ok(()) => inner.call(request).await,
                Err(refused) => Ok(refused),
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`KeywardAuth`] call. When the layer decides at once
    /// (a verdict at hand, the warm path; or a request refused without
    /// asking) it is the inner service's own future, or the refusal, with
    /// nothing boxed; only a call that waits for the validator is boxed.
    pub struct ResponseFuture<F, ResBody, E> {
        #[pin]
        state: Decision<F, ResBody, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = DecisionProj]
    enum Decision<F, ResBody, E> {
        Admitted { #[pin] inner: F },
        Refused { response: Option<Response<ResBody>> },
        Validating { future: Pin<Box<dyn Future<Output = Result<Response<ResBody>, E>> + Send>> },
    }
}

impl<F, ResBody, E> ResponseFuture<F, ResBody, E> {
    fn inner(inner: F) -> Self {
        Self {
            state: Decision::Admitted { inner },
        }
    }

    fn refused(response: Response<ResBody>) -> Self {
        Self {
            state: Decision::Refused {
                response: Some(response),
            },
        }
    }

    fn validating(
        future: impl Future<Output = Result<Response<ResBody>, E>> + Send + 'static,
    ) -> Self {
        Self {
            state: Decision::Validating {
                future: Box::pin(future),
            },
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            DecisionProj::Admitted { inner } => inner.poll(cx),
            DecisionProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("a refusal is answered once")))
            }
            DecisionProj::Validating { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, ResBody, E> std::fmt::Debug for ResponseFuture<F, ResBody, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// What the layer asks the validator about `request`, and the header the
/// key came in; or why it refuses the request without asking (no key, or a
/// key of the other environment by its prefix).
fn question<'r, B>(
    config: &'r Config,
    request: &'r Request<B>,
) -> Result<(HeaderName, ValidationRequest<'r>), DenialReason> {
    let Some((header, key)) = presented_key(config.source, |name| header_str(request, name)) else {
        return Err(DenialReason::MissingKey);
    };
    if config
        .environment
        .is_some_and(|wanted| Environment::of_key_prefix(key).is_some_and(|named| named != wanted))
    {
        return Err(DenialReason::WrongEnvironment);
    }
    let required = config
        .method_scopes
        .get(request.uri().path())
        .map_or(&[][..], Vec::as_slice);
    let question = ValidationRequest {
        key,
        required_scopes: required,
        client_ip: client_ip(request, &config.trusted_proxies),
        user_agent: header_str(request, &USER_AGENT),
        idempotency_key: header_str(request, &IDEMPOTENCY_KEY),
    };
    Ok((header, question))
}

/// The answer to a request refused before the validator was asked: every
/// such refusal is UNAUTHENTICATED / 401.
fn refuse<B, ResBody: Default>(
    config: &Config,
    request: &Request<B>,
    reason: DenialReason,
) -> Response<ResBody> {
    config.metrics.note_denial(reason);
    deny(is_grpc(request), Denial::Unauthenticated)
}

/// Lets `request` through as the verdict's identity, its credential (which
/// came in `header`) removed if the layer hides credentials; or the answer
/// that refuses it.
fn admit<B, ResBody: Default>(
    config: &Config,
    header: &HeaderName,
    verdict: Result<Verdict, ValidatorError>,
    request: &mut Request<B>,
) -> Result<(), Response<ResBody>> {
    let metrics = &config.metrics;
    match verdict {
        Ok(Verdict::Allow(identity))
            if config
                .environment
                .is_some_and(|wanted| identity.environment != wanted) =>
        {
            metrics.note_denial(DenialReason::WrongEnvironment);
            Err(deny(is_grpc(request), Denial::Unauthenticated))
        }
        Ok(Verdict::Allow(identity)) => {
            if config.hide_credentials {
                let headers = request.headers_mut();
                headers.remove(header);
                if config.source == CredentialSource::BearerOrApiKey {
                    headers.remove(X_API_KEY);
                }
            }
            request.extensions_mut().insert(identity);
            Ok(())
        }
        Ok(Verdict::Deny(denial)) => {
            metrics.note_denial((&denial).into());
            Err(deny(is_grpc(request), denial))
        }
        Err(error) => {
            metrics.note_error();
            tracing::warn!(%error, "denying request: key validation unavailable");
            Err(unavailable(is_grpc(request)))
        }
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    header_str(request, &CONTENT_TYPE).is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The client's address: a [`ClientIp`] the server set, else the
/// connection's peer; `x-forwarded-for` only through a trusted proxy.
fn client_ip<B>(request: &Request<B>, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = match request.extensions().get::<ClientIp>() {
        Some(ClientIp(ip)) => return Some(*ip),
        None => connection_peer(request),
    };
    if trusted.is_empty() {
        return peer;
    }
    let mut forwarded = request
        .headers()
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let first = forwarded.next();
    match forwarded.next() {
        // One header (the usual case): read it in place.
        None => client_address(peer, first, trusted),
        Some(second) => {
            let joined = [first.unwrap_or_default(), second]
                .into_iter()
                .chain(forwarded)
                .collect::<Vec<_>>()
                .join(",");
            client_address(peer, Some(&joined), trusted)
        }
    }
}

/// The peer address tonic's server records for each connection, plaintext
/// or over tonic's own TLS.
#[cfg(feature = "remote")]
fn connection_peer<B>(request: &Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

#[cfg(not(feature = "remote"))]
fn connection_peer<B>(_request: &Request<B>) -> Option<IpAddr> {
    None
}

fn header_str<'r, B>(request: &'r Request<B>, name: &HeaderName) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The key a request presents, and the header it came in, by the rule of
/// `source`: `authorization: Bearer <key>` and/or `x-api-key: <key>`.
/// `header` looks a header's value up by its name. keyward's Envoy ext_authz
/// service reads credentials with it too, so both read them alike.
pub fn presented_key<'a>(
    source: CredentialSource,
    header: impl Fn(&HeaderName) -> Option<&'a str>,
) -> Option<(HeaderName, &'a str)> {
    let bearer = || {
        let (scheme, token) = header(&AUTHORIZATION)?.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| (AUTHORIZATION, token.trim()))
    };
    let api_key = || header(&X_API_KEY).map(|v| (X_API_KEY, v.trim()));
    match source {
        CredentialSource::BearerOrApiKey => bearer().or_else(api_key),
        CredentialSource::Bearer => bearer(),
        CredentialSource::ApiKey => api_key(),
    }
    .filter(|(_, key)| !key.is_empty())
}

fn deny<ResBody: Default>(grpc: bool, denial: Denial) -> Response<ResBody> {
    match (grpc, denial) {
        (true, Denial::Unauthenticated) => grpc_error(16, "unauthenticated"),
        // The same answer for both: the client learns neither which check
        // failed nor what the allowlist holds.
        (true, Denial::Forbidden | Denial::IpNotAllowed) => grpc_error(7, "permission denied"),
        (false, Denial::Unauthenticated) => {
            let mut response = http_error(StatusCode::UNAUTHORIZED);
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward\""),
            );
            response
        }
        (false, Denial::Forbidden | Denial::IpNotAllowed) => http_error(StatusCode::FORBIDDEN),
        (grpc, Denial::RateLimited(throttle)) => exhausted(grpc, "rate limited", &throttle),
        (grpc, Denial::UsageExceeded(throttle)) => exhausted(grpc, "usage exceeded", &throttle),
    }
}

/// RESOURCE_EXHAUSTED (gRPC) or 429 (HTTP), with the limit's RateLimit
/// headers and `retry-after`.
fn exhausted<ResBody: Default>(
    grpc: bool,
    message: &'static str,
    throttle: &Throttle,
) -> Response<ResBody> {
    let mut response = if grpc {
        grpc_error(8, message)
    } else {
        http_error(StatusCode::TOO_MANY_REQUESTS)
    };
    let headers = response.headers_mut();
    for (name, value) in throttle.headers(true) {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    response
}

fn unavailable<ResBody: Default>(grpc: bool) -> Response<ResBody> {
    if grpc {
        grpc_error(14, "authentication unavailable")
    } else {
        http_error(StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// A trailers-only gRPC error response.
fn grpc_error<ResBody: Default>(code: u8, message: &'static str) -> Response<ResBody> {
    let mut response = Response::new(ResBody::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

fn http_error<ResBody: Default>(status: StatusCode) -> Response<ResBody> {
    let mut response = Response::new(ResBody::default());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tower::ServiceExt;

    use super::*;
    use crate::validator::{Identity, IdentityDetails, ValidationFuture, ValidatorError};

    /// One question the stub was asked: key, required scopes, client address.
    type Asked = (String, Vec<String>, Option<String>);

    /// Allows `good` (a live key) and `good-test` (a test key), both with
    /// scope `orders:read`; fails on `down`; denies the rest. Remembers what
    /// it was asked.
    #[derive(Default)]
    struct Stub {
        asked: Mutex<Vec<Asked>>,
    }

    impl Validator for Stub {
        fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
            self.asked.lock().expect("no panic").push((
                request.key.to_owned(),
                request
                    .required_scopes
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                request.client_ip.map(|ip| ip.to_string()),
            ));
            Box::pin(async move {
                match request.key {
                    "down" => Err(ValidatorError::unavailable("stub is down")),
                    "good" | "good-test"
                        if request
                            .required_scopes
                            .iter()
                            .all(|s| s.as_str() == "orders:read") =>
                    {
                        let environment = if request.key == "good" {
                            Environment::Live
                        } else {
                            Environment::Test
                        };
                        Ok(Verdict::Allow(Identity::new(IdentityDetails {
                            key_id: format!("key_{}", request.key),
                            organization_id: "acme".to_owned(),
                            workspace_id: None,
                            name: "good".to_owned(),
                            scopes: vec!["orders:read".to_owned()],
                            metadata: Default::default(),
                            user_id: None,
                            service_account_id: None,
                            environment,
                            expires_at: None,
                        })))
                    }
                    "good" | "good-test" => Ok(Verdict::Deny(Denial::Forbidden)),
                    _ => Ok(Verdict::Deny(Denial::Unauthenticated)),
                }
            })
        }
    }

    /// The inner service: echoes the identity's key id and the credential
    /// headers it was shown.
    async fn echo(request: Request<()>) -> Result<Response<String>, Infallible> {
        let key_id = request
            .extensions()
            .get::<Identity>()
            .map_or("-", |identity| identity.key_id.as_str());
        Ok(Response::new(format!(
            "{key_id} authorization={} x-api-key={}",
            request.headers().contains_key(AUTHORIZATION),
            request.headers().contains_key(X_API_KEY)
        )))
    }

    async fn send(
        layer: &KeywardAuthLayer<Stub>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<String> {
        send_with(layer, path, headers, http::Extensions::new()).await
    }

    async fn send_with(
        layer: &KeywardAuthLayer<Stub>,
        path: &str,
        headers: &[(&str, &str)],
        extensions: http::Extensions,
    ) -> Response<String> {
        let mut request = Request::builder().uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(()).expect("a valid request");
        *request.extensions_mut() = extensions;
        layer
            .layer(tower::service_fn(echo))
            .oneshot(request)
            .await
            .expect("infallible")
    }

    fn layer() -> KeywardAuthLayer<Stub> {
        KeywardAuthLayer::new(Stub::default())
            .require_scopes("/write", [Scope::parse("orders:write").expect("valid")])
            .public_prefix("/health/")
    }

    fn grpc_status(response: &Response<String>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test]
    async fn the_key_is_read_from_bearer_or_x_api_key() {
        let layer = layer();
        for headers in [
            &[("authorization", "Bearer good")][..],
            &[("authorization", "bearer  good ")][..],
            &[("x-api-key", "good")][..],
            &[("authorization", "Bearer good"), ("x-api-key", "other")][..],
        ] {
            let response = send(&layer, "/read", headers).await;
            assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
            assert!(response.body().starts_with("key_good "), "{headers:?}");
        }
        for headers in [
            &[][..],
            &[("authorization", "Basic good")][..],
            &[("authorization", "Bearer ")][..],
            &[("x-api-key", "")][..],
        ] {
            let response = send(&layer, "/read", headers).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
            assert!(
                response
                    .headers()
                    .contains_key(http::header::WWW_AUTHENTICATE)
            );
        }
        let only_bearer = layer.clone().credential_source(CredentialSource::Bearer);
        let response = send(&only_bearer, "/read", &[("x-api-key", "good")]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let only_api_key = layer.credential_source(CredentialSource::ApiKey);
        let response = send(&only_api_key, "/read", &[("authorization", "Bearer good")]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn each_path_asks_for_its_scopes_and_public_paths_ask_nothing() {
        let layer = layer();
        let headers = [
            ("authorization", "Bearer good"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
        ];
        assert_eq!(
            send(&layer, "/read", &headers).await.status(),
            StatusCode::OK
        );
        let response = send(&layer, "/write", &headers).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.body().is_empty());
        let response = send(&layer, "/health/check", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "- authorization=false x-api-key=false");

        let asked = layer.validator.asked.lock().expect("no panic").clone();
        assert_eq!(
            asked,
            vec![
                ("good".to_owned(), vec![], None),
                ("good".to_owned(), vec!["orders:write".to_owned()], None),
            ],
            "no connection, no trusted proxy: the forwarded header is not believed"
        );
    }

    #[cfg(feature = "remote")]
    #[tokio::test]
    async fn the_client_address_comes_from_the_connection_not_a_header() {
        use tonic::transport::server::TcpConnectInfo;
        let from_peer = |peer: [u8; 4]| {
            let mut extensions = http::Extensions::new();
            extensions.insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some((peer, 50000).into()),
            });
            extensions
        };
        let forged = [
            ("authorization", "Bearer good"),
            ("x-forwarded-for", "203.0.113.7"),
        ];
        let asked_ip = |layer: &KeywardAuthLayer<Stub>| {
            let asked = layer.validator.asked.lock().expect("no panic");
            asked.last().expect("asked").2.clone()
        };

        let layer = layer();
        send_with(&layer, "/read", &forged, from_peer([10, 0, 0, 5])).await;
        assert_eq!(asked_ip(&layer).as_deref(), Some("10.0.0.5"), "the peer");

        let behind_proxy = layer.trusted_proxies(["10.0.0.0/8".parse().expect("a CIDR")]);
        send_with(&behind_proxy, "/read", &forged, from_peer([10, 0, 0, 5])).await;
        assert_eq!(
            asked_ip(&behind_proxy).as_deref(),
            Some("203.0.113.7"),
            "forwarded by a trusted proxy"
        );
        send_with(&behind_proxy, "/read", &forged, from_peer([192, 0, 2, 9])).await;
        assert_eq!(
            asked_ip(&behind_proxy).as_deref(),
            Some("192.0.2.9"),
            "a peer that is no trusted proxy cannot forward"
        );

        let mut resolved = from_peer([10, 0, 0, 5]);
        resolved.insert(ClientIp([198, 51, 100, 4].into()));
        send_with(&behind_proxy, "/read", &forged, resolved).await;
        assert_eq!(
            asked_ip(&behind_proxy).as_deref(),
            Some("198.51.100.4"),
            "the server's own resolution wins"
        );
    }

    #[tokio::test]
    async fn grpc_requests_get_grpc_statuses_and_failures_are_unavailable() {
        let layer = layer();
        let grpc = ("content-type", "application/grpc");
        for (headers, status) in [
            (&[grpc][..], "16"),
            (&[grpc, ("authorization", "Bearer good")][..], "7"),
            (&[grpc, ("authorization", "Bearer down")][..], "14"),
        ] {
            let response = send(&layer, "/write", headers).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "trailers-only gRPC error"
            );
            assert_eq!(grpc_status(&response), Some(status), "{headers:?}");
        }
        let response = send(&layer, "/read", &[("x-api-key", "down")]).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.body().is_empty(), "never passed to the handler");
    }

    #[tokio::test]
    async fn hide_credentials_strips_every_accepted_credential_header() {
        let both = [("authorization", "Bearer good"), ("x-api-key", "other")];
        let hiding = layer().hide_credentials(true);
        let response = send(&hiding, "/read", &both).await;
        assert_eq!(
            response.body(),
            "key_good authorization=false x-api-key=false"
        );
        let response = send(&hiding, "/read", &[("x-api-key", "good")]).await;
        assert_eq!(
            response.body(),
            "key_good authorization=false x-api-key=false"
        );
        // Only bearer accepted: a stray x-api-key is not this layer's to strip.
        let bearer_only = layer()
            .hide_credentials(true)
            .credential_source(CredentialSource::Bearer);
        let response = send(&bearer_only, "/read", &both).await;
        assert_eq!(
            response.body(),
            "key_good authorization=false x-api-key=true"
        );

        let showing = layer();
        let response = send(&showing, "/read", &both).await;
        assert_eq!(
            response.body(),
            "key_good authorization=true x-api-key=true"
        );
    }

    #[tokio::test]
    async fn require_environment_refuses_keys_of_the_other_environment_as_unauthenticated() {
        use keyward_core::{ApiKeySecret, KeyKind};

        let asked = |layer: &KeywardAuthLayer<Stub>| {
            let asked = layer.validator.asked.lock().expect("no panic");
            asked
                .iter()
                .map(|(key, _, _)| key.clone())
                .collect::<Vec<_>>()
        };
        let bearer = |key: &str| format!("Bearer {key}");
        let grpc = ("content-type", "application/grpc");

        // Without the option, both environments pass.
        let any = layer();
        for key in ["good", "good-test"] {
            let response = send(&any, "/read", &[("authorization", &bearer(key))]).await;
            assert_eq!(response.status(), StatusCode::OK, "{key}");
        }

        // Prefix-less stub keys: the allowed identity's environment decides
        // (what a cached verdict is held to as well).
        let live = layer().require_environment(Environment::Live);
        let response = send(&live, "/read", &[("authorization", &bearer("good"))]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().starts_with("key_good "));
        let response = send(&live, "/read", &[("authorization", &bearer("good-test"))]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response
                .headers()
                .contains_key(http::header::WWW_AUTHENTICATE)
        );
        assert!(response.body().is_empty(), "never passed to the handler");
        let response = send(&live, "/read", &[grpc, ("x-api-key", "good-test")]).await;
        assert_eq!(grpc_status(&response), Some("16"));

        let test = layer().require_environment(Environment::Test);
        let response = send(&test, "/read", &[("authorization", &bearer("good-test"))]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let response = send(&test, "/read", &[("authorization", &bearer("good"))]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        // Real keys: the prefix names the environment, so a key of the other
        // environment is refused without asking the validator.
        let test_key = ApiKeySecret::generate(KeyKind::Standard, Environment::Test);
        let live_key = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let live = layer().require_environment(Environment::Live);
        let response = send(&live, "/read", &[("x-api-key", test_key.expose())]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let response = send(&live, "/read", &[("x-api-key", live_key.expose())]).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "unknown to the stub"
        );
        assert_eq!(
            asked(&live),
            [live_key.expose()],
            "the test key was never asked about"
        );
        // Admin keys name no environment: the validator decides.
        let admin_key = ApiKeySecret::generate(KeyKind::Admin, Environment::Live);
        send(&live, "/read", &[("x-api-key", admin_key.expose())]).await;
        assert_eq!(asked(&live).len(), 2);
    }
}
