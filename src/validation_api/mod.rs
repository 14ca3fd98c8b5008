//! `keyward.v1.KeyValidationService`: the wire face of [`KeyValidator`].
//! Its messages are read and written by [`wire`]'s codec, not prost's
//! generated structs: the hot path allocates nothing for them.
//!
//! The server is written out here rather than generated: tonic's generated
//! trait boxes every call's handler future a second time (`async_trait`),
//! on the path whose speed is the product. Clients, tests and reflection keep
//! the generated messages and client.

pub mod wire;

use std::convert::Infallible;
use std::net::IpAddr;
use std::str::Utf8Error;
use std::sync::Arc;
use std::task::{Context, Poll};

use keyward_core::{
    MAX_CLIENT_IP_CHARS, MAX_SCOPES, MAX_USER_AGENT_CHARS, Scope, check_idempotency_key, parse_cost,
};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use self::wire::{ValidateKeyCall, ValidateKeyCodec, ValidateKeyReply};
use crate::error::Violations;
use crate::metrics::ValidationPath;
use crate::validation::{ClientInfo, KeyValidator};

/// The validation API over a shared validator.
#[derive(Debug, Clone)]
pub struct ValidationApi {
    validator: Arc<KeyValidator>,
}

impl ValidationApi {
    /// The validation API over `validator`.
    pub fn new(validator: Arc<KeyValidator>) -> Self {
        Self { validator }
    }
}

/// `client_ip` as an address: empty is unknown (a key with an allowlist is
/// then IP_NOT_ALLOWED); anything else must be an IPv4 or IPv6 address (an
/// IPv6 zone, `%eth0`, is allowed and ignored). The caller wrote it, so a
/// bad one is the caller's mistake, answered INVALID_ARGUMENT rather than
/// taken as "unknown".
fn client_address(v: &mut Violations, raw: &str) -> Option<IpAddr> {
    if raw.is_empty() {
        return None;
    }
    let address = raw
        .bytes()
        .position(|b| b == b'%')
        .map_or(raw, |zone| &raw[..zone]);
    match address.parse::<IpAddr>() {
        Ok(ip) if address.len() == raw.len() || ip.is_ipv6() => Some(ip),
        _ => {
            v.add("client_ip", "must be an IPv4 or IPv6 address, or empty");
            None
        }
    }
}

/// A string field of the call as text; a violation of `field` when it is
/// not UTF-8 (then read as empty).
fn text<'a>(v: &mut Violations, field: &str, text: Result<&'a str, Utf8Error>) -> &'a str {
    text.unwrap_or_else(|_| {
        v.add(field, "must be UTF-8");
        ""
    })
}

/// Whether `text` is longer than `max` characters: no count when its bytes
/// already fit.
fn longer_than(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

impl ValidationApi {
    /// `ValidateKey`: checks the call's fields (INVALID_ARGUMENT, each
    /// violation named by field), then validates its key.
    pub async fn validate_key(
        &self,
        request: Request<ValidateKeyCall>,
    ) -> Result<Response<ValidateKeyReply>, Status> {
        let call = request.into_inner();
        let mut v = Violations::default();
        let key = text(&mut v, "key", call.key());
        // Counted before any element is looked at: a request over the cap
        // gets one violation, not one per element. Checked, not copied: they
        // are compared with the key's scopes and dropped.
        let required: Vec<&str> = if v.check_count(
            "required_scopes",
            call.required_scope_count(),
            MAX_SCOPES,
            "scopes",
        ) {
            let mut required = Vec::with_capacity(call.required_scope_count());
            for (i, raw) in call.required_scopes().enumerate() {
                // The field name is only formatted for a bad scope: this is
                // the hot path.
                match raw.map(Scope::check) {
                    Ok(Ok(scope)) => required.push(scope),
                    Ok(Err(error)) => v.add(format!("required_scopes[{i}]"), error.description()),
                    Err(_) => v.add(format!("required_scopes[{i}]"), "must be UTF-8"),
                }
            }
            required
        } else {
            Vec::new()
        };
        let client_ip = text(&mut v, "client_ip", call.client_ip());
        let address = if longer_than(client_ip, MAX_CLIENT_IP_CHARS) {
            v.add(
                "client_ip",
                format!("must be at most {MAX_CLIENT_IP_CHARS} characters"),
            );
            None
        } else {
            client_address(&mut v, client_ip)
        };
        let user_agent = text(&mut v, "user_agent", call.user_agent());
        if longer_than(user_agent, MAX_USER_AGENT_CHARS) || user_agent.chars().any(char::is_control)
        {
            v.add(
                "user_agent",
                format!(
                    "must be at most {MAX_USER_AGENT_CHARS} characters without control characters"
                ),
            );
        }
        let cost = v.check("cost", parse_cost(call.cost())).flatten();
        let idempotency_key = text(&mut v, "idempotency_key", call.idempotency_key());
        v.check("idempotency_key", check_idempotency_key(idempotency_key));
        v.finish()?;

        let client = ClientInfo {
            ip: Some(client_ip),
            address,
            user_agent: Some(user_agent),
            path: ValidationPath::ValidateKey,
            cost,
            idempotency_key: Some(idempotency_key).filter(|key| !key.is_empty()),
        };
        let validation = self.validator.validate(key, &required, client).await?;
        let hint = self.validator.cache_hint_for(&validation);
        Ok(Response::new(ValidateKeyReply::new(validation, hint)))
    }
}

/// The route of `ValidateKey`, the service's one method.
const VALIDATE_KEY: &str = "/keyward.v1.KeyValidationService/ValidateKey";

/// The tonic service serving `keyward.v1.KeyValidationService` from a
/// [`ValidationApi`], through [`wire`]'s codec (no compression, like the
/// generated servers by default).
#[derive(Debug, Clone)]
pub struct KeyValidationServiceServer {
    api: ValidationApi,
    max_decoding_message_size: Option<usize>,
    max_encoding_message_size: Option<usize>,
}

impl KeyValidationServiceServer {
    /// The service over `api`, with tonic's default message-size limits.
    pub fn new(api: ValidationApi) -> Self {
        Self {
            api,
            max_decoding_message_size: None,
            max_encoding_message_size: None,
        }
    }

    /// Largest request accepted (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// Largest answer sent (tonic's default: unlimited).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding_message_size = Some(limit);
        self
    }
}

impl NamedService for KeyValidationServiceServer {
    const NAME: &'static str = "keyward.v1.KeyValidationService";
}

impl<B> Service<http::Request<B>> for KeyValidationServiceServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != VALIDATE_KEY {
            let unknown =
                Status::unimplemented("keyward.v1.KeyValidationService has no such method");
            return Box::pin(std::future::ready(Ok(unknown.into_http())));
        }
        let method = ValidateKey(self.api.clone());
        let mut grpc = Grpc::new(ValidateKeyCodec).apply_max_message_size_config(
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        Box::pin(async move { Ok(grpc.unary(method, request).await) })
    }
}

/// `ValidateKey` as tonic's unary calls take a method.
struct ValidateKey(ValidationApi);

impl UnaryService<ValidateKeyCall> for ValidateKey {
    type Response = ValidateKeyReply;
    type Future = BoxFuture<Response<ValidateKeyReply>, Status>;

    fn call(&mut self, request: Request<ValidateKeyCall>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.validate_key(request).await })
    }
}
