//! `envoy.service.auth.v3.Authorization/Check`: keyward as Envoy's ext_authz
//! service, so any HTTP service behind Envoy is protected with no code.
//!
//! Allowed: OK, with `x-keyward-key-id`, `-organization-id`, `-workspace-id`
//! and `-scopes` set on the upstream request (overwriting anything the client
//! sent), every credential header removed, and the same data as dynamic
//! metadata. Denied: 401 with `www-authenticate` (403 when a required scope is
//! missing). Required scopes come from the route's `context_extensions`
//! (`required_scopes`, separated by commas or spaces).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use http::HeaderName;
use keyward_auth::{CredentialSource, presented_key};
use keyward_core::{MAX_SCOPES, Scope, ValidationCode};
use tonic::{Code, Request, Response, Status};

use crate::metrics::ValidationPath;
use crate::validation::{ClientInfo, KeyValidator};

/// The `context_extensions` entry naming the scopes a route requires.
pub const REQUIRED_SCOPES: &str = "required_scopes";
/// The dynamic-metadata namespace keyward writes under.
pub const METADATA_NAMESPACE: &str = "keyward";

const KEY_ID: &str = "x-keyward-key-id";
const ORGANIZATION_ID: &str = "x-keyward-organization-id";
const WORKSPACE_ID: &str = "x-keyward-workspace-id";
const SCOPES: &str = "x-keyward-scopes";

/// The ext_authz service over the shared validator.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    validator: Arc<KeyValidator>,
}

impl ExtAuthz {
    /// An ext_authz service over `validator`.
    pub fn new(validator: Arc<KeyValidator>) -> Self {
        Self { validator }
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

fn required_scopes(request: &CheckRequest) -> Result<Vec<Scope>, Status> {
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
            Scope::parse(scope).map_err(|error| {
                // A route misconfiguration: deny, and tell the operator why.
                tracing::error!(scope, %error, "bad required_scopes in an Envoy route's context_extensions");
                Status::invalid_argument(format!("context_extensions {REQUIRED_SCOPES} {scope:?} {error}"))
            })
        })
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
    let mut headers = Vec::new();
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
        let client = ClientInfo {
            ip: request.get_client_address().map(String::as_str),
            user_agent: headers.get("user-agent").map(String::as_str),
            path: ValidationPath::ExtAuthz,
        };
        // UNAVAILABLE when the database is: Envoy then denies
        // (failure_mode_allow: false).
        let validation = self
            .validator
            .validate(key, &required, client)
            .await
            .map_err(Status::from)?;
        let response = match (validation.code, validation.key) {
            (ValidationCode::Valid, Some(key)) => {
                let scopes = key
                    .scopes
                    .as_slice()
                    .iter()
                    .map(Scope::as_str)
                    .collect::<Vec<_>>()
                    .join(",");
                let key_id = key.id.to_string();
                let mut upstream = vec![
                    set_header(KEY_ID, &key_id),
                    set_header(ORGANIZATION_ID, &key.organization_id),
                    set_header(SCOPES, &scopes),
                ];
                let mut remove = credential_headers(headers);
                let mut fields = HashMap::from([
                    ("key_id".to_owned(), string_value(&key_id)),
                    (
                        "organization_id".to_owned(),
                        string_value(&key.organization_id),
                    ),
                    ("scopes".to_owned(), string_value(&scopes)),
                ]);
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
            (ValidationCode::InsufficientScope, _) => {
                denied(Code::PermissionDenied, HttpStatusCode::Forbidden)
            }
            _ => denied(Code::Unauthenticated, HttpStatusCode::Unauthorized),
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
