//! `KeywardAuthLayer` and the `KeywardAuth` service it produces.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Request, Response, StatusCode};
use keyward_core::Scope;
use tower::{Layer, Service};

use crate::validator::{Denial, ValidationRequest, Validator, Verdict};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
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

#[derive(Debug, Clone, Default)]
struct Config {
    source: CredentialSource,
    hide_credentials: bool,
    method_scopes: HashMap<String, Vec<Scope>>,
    public_prefixes: Vec<String>,
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

    /// Whether to strip the credential header before the inner service sees it.
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let path = request.uri().path();

        if config
            .public_prefixes
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return Box::pin(inner.call(request));
        }

        let validator = Arc::clone(&self.validator);
        Box::pin(async move {
            let grpc = is_grpc(&request);
            let Some((header, key)) = extract_key(&request, config.source) else {
                return Ok(deny(grpc, Denial::Unauthenticated));
            };
            let required = config
                .method_scopes
                .get(request.uri().path())
                .map_or(&[][..], Vec::as_slice);
            let client_ip = header_str(&request, &X_FORWARDED_FOR)
                .map(|forwarded| forwarded.split(',').next().unwrap_or_default().trim());
            let verdict = validator
                .validate(ValidationRequest {
                    key: &key,
                    required_scopes: required,
                    client_ip,
                    user_agent: header_str(&request, &USER_AGENT),
                })
                .await;
            match verdict {
                Ok(Verdict::Allow(identity)) => {
                    if config.hide_credentials {
                        request.headers_mut().remove(header);
                    }
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Ok(Verdict::Deny(denial)) => Ok(deny(grpc, denial)),
                Err(error) => {
                    tracing::warn!(%error, "denying request: key validation unavailable");
                    Ok(unavailable(grpc))
                }
            }
        })
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    header_str(request, &CONTENT_TYPE).is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn header_str<'r, B>(request: &'r Request<B>, name: &HeaderName) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The key and the header it came from.
fn extract_key<B>(request: &Request<B>, source: CredentialSource) -> Option<(HeaderName, String)> {
    let bearer = || {
        let value = header_str(request, &AUTHORIZATION)?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| (AUTHORIZATION, token.trim().to_owned()))
    };
    let api_key = || header_str(request, &X_API_KEY).map(|v| (X_API_KEY, v.trim().to_owned()));
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
        (true, Denial::Forbidden) => grpc_error(7, "permission denied"),
        (false, Denial::Unauthenticated) => {
            let mut response = http_error(StatusCode::UNAUTHORIZED);
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward\""),
            );
            response
        }
        (false, Denial::Forbidden) => http_error(StatusCode::FORBIDDEN),
    }
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
