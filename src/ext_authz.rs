//! `envoy.service.auth.v3.Authorization/Check`: keyward as Envoy's ext_authz
//! service, so any HTTP service behind Envoy is protected with no code.
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::SecondsFormat;
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use http::HeaderName;
use keyward_auth::{CredentialSource, Throttle, presented_key};
use keyward_core::{
    Cidr, Environment, FieldError, MAX_SCOPES, Scope, ValidationCode, check_idempotency_key,
    client_address, parse_cost,
};
use tonic::{Code, Request, Response, Status};

use crate::metrics::ValidationPath;
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
        request: &'r CheckRequest,
        headers: &'r HashMap<String, String>,
    ) -> (Option<Cow<'r, str>>, Option<IpAddr>) {
        let source = request.get_client_address().map(String::as_str);
        let peer = source.and_then(|raw| raw.parse::<IpAddr>().ok());
        if self.trusted_proxies.is_empty() {
            return (source.map(Cow::Borrowed), peer);
        }
        let forwarded = headers.get("x-forwarded-for").map(String::as_str);
        match client_address(peer, forwarded, &self.trusted_proxies) {
            Some(client) if Some(client) != peer => (
                Some(Cow::Owned(client.to_canonical().to_string())),
                Some(client),
            ),
            client => (source.map(Cow::Borrowed), client),
        }
    }
}

/// The presented key and the header it came in, read as the auth layer reads
/// them (Envoy lowercases header names, as `HeaderName` is).
fn credential(headers: &HashMap<String, String>) -> Option<(HeaderName, &str)> {
    presented_key(CredentialSource::BearerOrApiKey, |name| {
        headers.get(name.as_str()).map(String::as_str)
    })
}

/// Every header that carries a credential keyward recognizes: `authorization:
/// Bearer …` and `x-api-key`, whichever was used. All of them are removed from
/// the upstream request, so an ignored second key never reaches it.
fn credential_headers(headers: &HashMap<String, String>) -> Vec<String> {
    [CredentialSource::Bearer, CredentialSource::ApiKey]
        .into_iter()
        .filter_map(|source| {
            presented_key(source, |name| {
                headers.get(name.as_str()).map(String::as_str)
            })
        })
        .map(|(header, _)| header.as_str().to_owned())
        .collect()
}

/// The route's required scopes, borrowed from the request, each checked.
fn required_scopes(request: &CheckRequest) -> Result<Vec<&str>, Status> {
    let Some(raw) = request
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.context_extensions.get(REQUIRED_SCOPES))
    else {
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

fn required_environment(request: &CheckRequest) -> Result<Option<Environment>, Status> {
    let Some(raw) = request
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.context_extensions.get(REQUIRED_ENVIRONMENT))
    else {
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

fn route_cost(request: &CheckRequest) -> Result<Option<u64>, Status> {
    let Some(raw) = request
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.context_extensions.get(COST))
    else {
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

fn string_value(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

fn ok_status() -> Option<rpc::Status> {
    Some(rpc::Status {
        code: Code::Ok.into(),
        ..Default::default()
    })
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

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let empty = HashMap::new();
        let headers = request.get_client_headers().unwrap_or(&empty);
        let Some((_, key)) = credential(headers) else {
            return Ok(Response::new(denied(
                Code::Unauthenticated,
                HttpStatusCode::Unauthorized,
            )));
        };
        let required = required_scopes(&request)?;
        let environment = required_environment(&request)?;
        let cost = route_cost(&request)?;
        // A key of another environment is no credential here: refused before
        // it is looked up (its prefix is authentic: the lookup hash covers it).
        if environment.is_some_and(|wanted| {
            Environment::of_key_prefix(key).is_some_and(|named| named != wanted)
        }) {
            return Ok(Response::new(denied(
                Code::Unauthenticated,
                HttpStatusCode::Unauthorized,
            )));
        }
        let (ip, address) = self.client(&request, headers);
        let client = ClientInfo {
            ip: ip.as_deref(),
            address,
            user_agent: headers.get("user-agent").map(String::as_str),
            path: ValidationPath::ExtAuthz,
            cost,
            // A client's bad idempotency key is ignored: the call is charged.
            idempotency_key: headers
                .get("idempotency-key")
                .map(String::as_str)
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
        let response = match (validation.code, validation.key) {
            (ValidationCode::Valid, Some(key))
                if environment.is_some_and(|wanted| key.environment != wanted) =>
            {
                denied(Code::Unauthenticated, HttpStatusCode::Unauthorized)
            }
            (ValidationCode::Valid, Some(key)) => {
                let scopes = key
                    .scopes
                    .as_slice()
                    .iter()
                    .map(Scope::as_str)
                    .collect::<Vec<_>>()
                    .join(",");
                let key_id = key.id.to_string();
                let environment = key.environment.as_str();
                let mut upstream = vec![
                    set_header(KEY_ID, &key_id),
                    set_header(ORGANIZATION_ID, &key.organization_id),
                    set_header(SCOPES, &scopes),
                    set_header(ENVIRONMENT, environment),
                ];
                let mut remove = credential_headers(headers);
                let mut fields = HashMap::from([
                    ("key_id".to_owned(), string_value(&key_id)),
                    (
                        "organization_id".to_owned(),
                        string_value(&key.organization_id),
                    ),
                    ("scopes".to_owned(), string_value(&scopes)),
                    ("environment".to_owned(), string_value(environment)),
                ]);
                if let Some(expires_at) = key.expires_at {
                    fields.insert(
                        "expires_at".to_owned(),
                        string_value(&expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                    );
                }
                match &key.workspace_id {
                    Some(workspace) => {
                        upstream.push(set_header(WORKSPACE_ID, workspace));
                        fields.insert("workspace_id".to_owned(), string_value(workspace));
                    }
                    // Never let a client-sent workspace header through.
                    None => remove.push(WORKSPACE_ID.to_owned()),
                }
                CheckResponse {
                    status: ok_status(),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: upstream,
                        headers_to_remove: remove,
                        response_headers_to_add: throttle
                            .map(|throttle| throttle_headers(&throttle, false))
                            .unwrap_or_default(),
                        ..Default::default()
                    })),
                    dynamic_metadata: Some(Struct {
                        fields: HashMap::from([(
                            METADATA_NAMESPACE.to_owned(),
                            Value {
                                kind: Some(Kind::StructValue(Struct { fields })),
                            },
                        )]),
                    }),
                }
            }
            (ValidationCode::InsufficientScope | ValidationCode::IpNotAllowed, _) => {
                denied(Code::PermissionDenied, HttpStatusCode::Forbidden)
            }
            (ValidationCode::RateLimited | ValidationCode::UsageExceeded, _) => denied_with(
                Code::ResourceExhausted,
                HttpStatusCode::TooManyRequests,
                throttle
                    .map(|throttle| throttle_headers(&throttle, true))
                    .unwrap_or_default(),
            ),
            _ => denied(Code::Unauthenticated, HttpStatusCode::Unauthorized),
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    use super::*;

    #[test]
    fn a_route_names_its_environment_as_live_or_test() {
        let with = |extensions: &[(&str, &str)]| CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: extensions
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
        };
        assert_eq!(
            required_environment(&CheckRequest::default()).ok(),
            Some(None)
        );
        assert_eq!(
            required_environment(&with(&[(REQUIRED_SCOPES, "orders:read")])).ok(),
            Some(None)
        );
        assert_eq!(
            required_environment(&with(&[(REQUIRED_ENVIRONMENT, "live")])).ok(),
            Some(Some(Environment::Live))
        );
        assert_eq!(
            required_environment(&with(&[(REQUIRED_ENVIRONMENT, "test")])).ok(),
            Some(Some(Environment::Test))
        );
        for bad in ["", "LIVE", "production"] {
            let refused = required_environment(&with(&[(REQUIRED_ENVIRONMENT, bad)]));
            assert_eq!(
                refused.map_err(|status| status.code()),
                Err(Code::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_route_sets_a_calls_cost() {
        let with = |cost: &str| CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: [(COST.to_owned(), cost.to_owned())].into(),
                ..Default::default()
            }),
        };
        assert_eq!(route_cost(&CheckRequest::default()).ok(), Some(None));
        assert_eq!(route_cost(&with("0")).ok(), Some(None));
        assert_eq!(route_cost(&with("5")).ok(), Some(Some(5)));
        for bad in ["", "five", "-1", "1000001", "1.5"] {
            assert_eq!(
                route_cost(&with(bad)).map_err(|status| status.code()),
                Err(Code::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_come_from_bearer_then_x_api_key() {
        let headers = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let found = |pairs: &[(&str, &str)]| {
            credential(&headers(pairs))
                .map(|(header, key)| (header.as_str().to_owned(), key.to_owned()))
        };
        let pair = |header: &str, key: &str| Some((header.to_owned(), key.to_owned()));
        assert_eq!(
            found(&[("authorization", "Bearer sk_1")]),
            pair("authorization", "sk_1")
        );
        assert_eq!(
            found(&[("authorization", "Basic x"), ("x-api-key", "sk_2")]),
            pair("x-api-key", "sk_2")
        );
        assert_eq!(found(&[("authorization", "Bearer ")]), None);
        assert_eq!(found(&[]), None);

        let removed = |pairs: &[(&str, &str)]| credential_headers(&headers(pairs));
        assert_eq!(
            removed(&[("authorization", "Bearer sk_1"), ("x-api-key", "sk_2")]),
            ["authorization", "x-api-key"]
        );
        assert_eq!(
            removed(&[("authorization", "Basic x"), ("x-api-key", "sk_2")]),
            ["x-api-key"],
            "a non-bearer authorization belongs to the upstream"
        );
        assert_eq!(
            removed(&[("authorization", "bearer sk_1")]),
            ["authorization"]
        );
    }
}
