//! `envoy.service.auth.v3.Authorization/Check`: keyward as Envoy's ext_authz
//! service, so any HTTP service behind Envoy is protected with no code. Its
//! messages are read and written by [`wire`]'s codec (a [`UnaryServer`], as
//! `ValidateKey`'s are), not prost's generated structs and server.
//!
//! Allowed: OK, with `x-keyward-key-id`, `-organization-id`, `-workspace-id`,
//! `-scopes` and `-environment` (`live` or `test`) set on the upstream request
//! (overwriting anything the client sent; a client-sent workspace header is
//! removed when the key has no workspace), every credential header removed,
//! and the same data as dynamic metadata, plus `expires_at` (RFC 3339) when
//! the key expires. Denied: 401 with `www-authenticate` (403 when a required
//! scope is missing or the client's address is outside the key's allowlist;
//! the 403 says neither which nor what the allowlist holds). Required scopes
//! come from the route's `context_extensions` (`required_scopes`, separated
//! by commas or spaces); `required_environment` (`live` or `test`) there
//! refuses keys of the other environment with 401, as the auth layer's
//! `require_environment` does.
//!
//! The client's address is the downstream address Envoy reports
//! (`attributes.source.address`); when that address is one of keyward's
//! `--trusted-proxies` (a proxy in front of Envoy), the first untrusted hop
//! from the right of the request's `x-forwarded-for`, by the same rule as
//! keyward's own connections ([`client_address`]). No address: a key with an
//! allowlist is refused.
//!
//! A key with rate limits or credits spends on every allowed Check: a route
//! may set what a call costs in `context_extensions.cost` (1 to 1,000,000;
//! 0 or unset: each limit's own cost and one credit), and a client may send an
//! `idempotency-key` header so that a retry is charged once. Over a limit or
//! out of credits: 429 with `retry-after`, `ratelimit-policy` and
//! `ratelimit` (IETF httpapi ratelimit-headers draft); an allowed call of
//! such a key gets `ratelimit-policy` and `ratelimit` on its response.

pub mod wire;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, HttpStatusCode,
};
use envoy_types::pb::google::rpc;
use keyward_auth::{CredentialSource, Throttle, presented_key};
use keyward_core::{
    Cidr, Environment, FieldError, MAX_SCOPES, Scope, ValidationCode, check_idempotency_key,
    client_address, parse_cost,
};
use tonic::{Code, Request, Response, Status};

use self::wire::{Allowed, CheckCall, CheckReply, Extension, Header};
use crate::metrics::ValidationPath;
use crate::unary::{UnaryMethod, UnaryServer};
use crate::validation::{ClientInfo, KeyValidator, Limited};

/// The `context_extensions` entry naming the scopes a route requires.
pub const REQUIRED_SCOPES: &str = "required_scopes";
/// The `context_extensions` entry naming the one environment (`live` or
/// `test`) whose keys a route accepts.
pub const REQUIRED_ENVIRONMENT: &str = "required_environment";
/// The `context_extensions` entry setting what one call of the route costs.
pub const COST: &str = "cost";
/// The dynamic-metadata namespace keyward writes under.
pub const METADATA_NAMESPACE: &str = "keyward";

const KEY_ID: &str = "x-keyward-key-id";
const ORGANIZATION_ID: &str = "x-keyward-organization-id";
const WORKSPACE_ID: &str = "x-keyward-workspace-id";
const SCOPES: &str = "x-keyward-scopes";
const ENVIRONMENT: &str = "x-keyward-environment";

/// The ext_authz service over the shared validator.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    validator: Arc<KeyValidator>,
    trusted_proxies: Arc<[Cidr]>,
}

impl ExtAuthz {
    /// An ext_authz service over `validator`, believing the
    /// `x-forwarded-for` of requests that reached Envoy from
    /// `trusted_proxies`.
    pub fn new(validator: Arc<KeyValidator>, trusted_proxies: &[Cidr]) -> Self {
        Self {
            validator,
            trusted_proxies: trusted_proxies.into(),
        }
    }

    /// The client's address, as text to record and as an address to check
    /// (see the module documentation).
    fn client<'r>(
        &self,
        call: &'r CheckCall,
    ) -> Result<(Option<Cow<'r, str>>, Option<IpAddr>), Status> {
        let source = call.source_address()?;
        let peer = source.and_then(|raw| raw.parse::<IpAddr>().ok());
        if self.trusted_proxies.is_empty() {
            return Ok((source.map(Cow::Borrowed), peer));
        }
        let forwarded = call.header(Header::ForwardedFor)?;
        Ok(
            match client_address(peer, forwarded, &self.trusted_proxies) {
                Some(client) if Some(client) != peer => (
                    Some(Cow::Owned(client.to_canonical().to_string())),
                    Some(client),
                ),
                client => (source.map(Cow::Borrowed), client),
            },
        )
    }
}

/// The credentials a request carries, read as the auth layer reads them
/// (Envoy lowercases header names).
#[derive(Debug, Clone, Copy)]
struct Credentials<'r> {
    authorization: Option<&'r str>,
    api_key: Option<&'r str>,
}

impl<'r> Credentials<'r> {
    fn of(call: &'r CheckCall) -> Result<Self, Status> {
        Ok(Self {
            authorization: call.header(Header::Authorization)?,
            api_key: call.header(Header::ApiKey)?,
        })
    }

    fn read(&self, source: CredentialSource) -> Option<&'r str> {
        presented_key(source, |name| {
            if name == http::header::AUTHORIZATION {
                self.authorization
            } else {
                self.api_key
            }
        })
        .map(|(_, key)| key)
    }

    /// The presented key: `authorization: Bearer …`, else `x-api-key`.
    fn key(&self) -> Option<&'r str> {
        self.read(CredentialSource::BearerOrApiKey)
    }

    /// Whether each header carries a credential keyward recognizes: all of
    /// them are removed from the upstream request, so an ignored second key
    /// never reaches it (a non-bearer `authorization` is the upstream's).
    fn carried(&self) -> (bool, bool) {
        (
            self.read(CredentialSource::Bearer).is_some(),
            self.read(CredentialSource::ApiKey).is_some(),
        )
    }
}

/// The route's required scopes, borrowed from the request, each checked.
fn required_scopes(raw: Option<&str>) -> Result<Vec<&str>, Status> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let scopes = raw.split([',', ' ']).filter(|scope| !scope.is_empty());
    if scopes.clone().count() > MAX_SCOPES {
        return Err(Status::invalid_argument(format!(
            "context_extensions {REQUIRED_SCOPES} must hold at most {MAX_SCOPES} scopes"
        )));
    }
    scopes
        .map(|scope| {
            Scope::check(scope).map_err(|error| {
                // A route misconfiguration: deny, and tell the operator why.
                tracing::error!(scope, %error, "bad required_scopes in an Envoy route's context_extensions");
                Status::invalid_argument(format!("context_extensions {REQUIRED_SCOPES} {scope:?} {error}"))
            })
        })
        .collect()
}

fn required_environment(raw: Option<&str>) -> Result<Option<Environment>, Status> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    Environment::from_stored(raw).map(Some).ok_or_else(|| {
        // A route misconfiguration: deny, and tell the operator why.
        tracing::error!(
            environment = raw,
            "bad required_environment in an Envoy route's context_extensions"
        );
        Status::invalid_argument(format!(
            "context_extensions {REQUIRED_ENVIRONMENT} {raw:?} must be live or test"
        ))
    })
}

fn route_cost(raw: Option<&str>) -> Result<Option<u64>, Status> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let parsed = raw
        .parse::<i64>()
        .map_err(|_| FieldError::new("must be a whole number"))
        .and_then(parse_cost);
    parsed.map_err(|error| {
        // A route misconfiguration: deny, and tell the operator why.
        tracing::error!(cost = raw, %error, "bad cost in an Envoy route's context_extensions");
        Status::invalid_argument(format!("context_extensions {COST} {raw:?} {error}"))
    })
}

/// The RateLimit headers of `throttle` as Envoy header options.
fn throttle_headers(throttle: &Throttle, refused: bool) -> Vec<HeaderValueOption> {
    throttle
        .headers(refused)
        .iter()
        .map(|(name, value)| set_header(name, value))
        .collect()
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

fn denied(code: Code, status: HttpStatusCode) -> CheckResponse {
    denied_with(code, status, Vec::new())
}

fn denied_with(
    code: Code,
    status: HttpStatusCode,
    mut headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    if status == HttpStatusCode::Unauthorized {
        headers.push(set_header(
            "www-authenticate",
            "Bearer realm=\"keyward\", error=\"invalid_token\"",
        ));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: status.into(),
            }),
            headers,
            body: String::new(),
        })),
        ..Default::default()
    }
}

/// The tonic service serving `envoy.service.auth.v3.Authorization`.
pub type AuthorizationServer = UnaryServer<ExtAuthz>;

impl UnaryMethod for ExtAuthz {
    const SERVICE: &'static str = "envoy.service.auth.v3.Authorization";
    const ROUTE: &'static str = "/envoy.service.auth.v3.Authorization/Check";
    type Call = CheckCall;
    type Reply = CheckReply;

    async fn call(self, request: Request<CheckCall>) -> Result<Response<CheckReply>, Status> {
        self.check(&request.into_inner()).await.map(Response::new)
    }
}

impl ExtAuthz {
    /// `Check`: allows a request presenting a valid key, with keyward's
    /// headers and metadata (see the module documentation).
    pub async fn check(&self, call: &CheckCall) -> Result<CheckReply, Status> {
        let refused = |code, status| Ok(CheckReply::Message(Box::new(denied(code, status))));
        let credentials = Credentials::of(call)?;
        let Some(key) = credentials.key() else {
            return refused(Code::Unauthenticated, HttpStatusCode::Unauthorized);
        };
        let required = required_scopes(call.extension(Extension::RequiredScopes)?)?;
        let environment = required_environment(call.extension(Extension::RequiredEnvironment)?)?;
        let cost = route_cost(call.extension(Extension::Cost)?)?;
        // A key of another environment is no credential here: refused before
        // it is looked up (its prefix is authentic: the lookup hash covers it).
        if environment.is_some_and(|wanted| {
            Environment::of_key_prefix(key).is_some_and(|named| named != wanted)
        }) {
            return refused(Code::Unauthenticated, HttpStatusCode::Unauthorized);
        }
        let (ip, address) = self.client(call)?;
        let client = ClientInfo {
            ip: ip.as_deref(),
            address,
            user_agent: call.header(Header::UserAgent)?,
            path: ValidationPath::ExtAuthz,
            cost,
            // A client's bad idempotency key is ignored: the call is charged.
            idempotency_key: call
                .header(Header::IdempotencyKey)?
                .filter(|key| !key.is_empty() && check_idempotency_key(key).is_ok()),
        };
        // UNAVAILABLE when the database is: Envoy then denies
        // (failure_mode_allow: false).
        let validation = self
            .validator
            .validate(key, &required, client)
            .await
            .map_err(Status::from)?;
        let throttle = validation.throttle.as_ref().map(Limited::throttle);
        match (validation.code, validation.key) {
            (ValidationCode::Valid, Some(key))
                if environment.is_some_and(|wanted| key.environment != wanted) =>
            {
                refused(Code::Unauthenticated, HttpStatusCode::Unauthorized)
            }
            (ValidationCode::Valid, Some(key)) => {
                let (remove_authorization, remove_api_key) = credentials.carried();
                Ok(CheckReply::Allowed(Allowed {
                    key,
                    remove_authorization,
                    remove_api_key,
                    response_headers: throttle
                        .map(|throttle| throttle_headers(&throttle, false))
                        .unwrap_or_default(),
                }))
            }
            (ValidationCode::InsufficientScope | ValidationCode::IpNotAllowed, _) => {
                refused(Code::PermissionDenied, HttpStatusCode::Forbidden)
            }
            (ValidationCode::RateLimited | ValidationCode::UsageExceeded, _) => {
                Ok(CheckReply::Message(Box::new(denied_with(
                    Code::ResourceExhausted,
                    HttpStatusCode::TooManyRequests,
                    throttle
                        .map(|throttle| throttle_headers(&throttle, true))
                        .unwrap_or_default(),
                ))))
            }
            _ => refused(Code::Unauthenticated, HttpStatusCode::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_its_environment_as_live_or_test() {
        assert_eq!(required_environment(None).ok(), Some(None));
        assert_eq!(
            required_environment(Some("live")).ok(),
            Some(Some(Environment::Live))
        );
        assert_eq!(
            required_environment(Some("test")).ok(),
            Some(Some(Environment::Test))
        );
        for bad in ["", "LIVE", "production"] {
            let refused = required_environment(Some(bad));
            assert_eq!(
                refused.map_err(|status| status.code()),
                Err(Code::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_route_sets_a_calls_cost() {
        assert_eq!(route_cost(None).ok(), Some(None));
        assert_eq!(route_cost(Some("0")).ok(), Some(None));
        assert_eq!(route_cost(Some("5")).ok(), Some(Some(5)));
        for bad in ["", "five", "-1", "1000001", "1.5"] {
            assert_eq!(
                route_cost(Some(bad)).map_err(|status| status.code()),
                Err(Code::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_come_from_bearer_then_x_api_key() {
        let credentials = |authorization, api_key| Credentials {
            authorization,
            api_key,
        };
        assert_eq!(credentials(Some("Bearer sk_1"), None).key(), Some("sk_1"));
        assert_eq!(
            credentials(Some("Basic x"), Some("sk_2")).key(),
            Some("sk_2")
        );
        assert_eq!(credentials(Some("Bearer "), None).key(), None);
        assert_eq!(credentials(None, None).key(), None);

        assert_eq!(
            credentials(Some("Bearer sk_1"), Some("sk_2")).carried(),
            (true, true)
        );
        assert_eq!(
            credentials(Some("Basic x"), Some("sk_2")).carried(),
            (false, true),
            "a non-bearer authorization belongs to the upstream"
        );
        assert_eq!(
            credentials(Some("bearer sk_1"), None).carried(),
            (true, false)
        );
    }
}
