//! `keyward.v1.KeyValidationService`: the wire face of [`KeyValidator`].

use std::sync::Arc;

use keyward_core::Scope;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::Violations;
use crate::pb::{self, key_validation_service_server::KeyValidationService};
use crate::validation::{ClientInfo, KeyValidator};

const MAX_CLIENT_IP_CHARS: usize = 64;
const MAX_USER_AGENT_CHARS: usize = 512;
const MAX_REQUIRED_SCOPES: usize = 64;

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

#[tonic::async_trait]
impl KeyValidationService for ValidationApi {
    async fn validate_key(
        &self,
        request: Request<pb::ValidateKeyRequest>,
    ) -> Result<Response<pb::ValidateKeyResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.required_scopes.len() > MAX_REQUIRED_SCOPES {
            v.add(
                "required_scopes",
                format!("must hold at most {MAX_REQUIRED_SCOPES} scopes"),
            );
        }
        let required: Vec<Scope> = req
            .required_scopes
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| match Scope::parse(raw) {
                Ok(scope) => Some(scope),
                // The field name is only formatted for a bad scope: this is
                // the hot path.
                Err(error) => {
                    v.add(format!("required_scopes[{i}]"), error.description());
                    None
                }
            })
            .collect();
        if req.client_ip.chars().count() > MAX_CLIENT_IP_CHARS {
            v.add(
                "client_ip",
                format!("must be at most {MAX_CLIENT_IP_CHARS} characters"),
            );
        }
        if req.user_agent.chars().count() > MAX_USER_AGENT_CHARS
            || req.user_agent.chars().any(char::is_control)
        {
            v.add(
                "user_agent",
                format!(
                    "must be at most {MAX_USER_AGENT_CHARS} characters without control characters"
                ),
            );
        }
        v.finish()?;

        let client = ClientInfo {
            ip: Some(req.client_ip.as_str()),
            user_agent: Some(req.user_agent.as_str()),
        };
        let validation = self.validator.validate(&req.key, &required, client).await?;
        let code = convert::validation_code(validation.code);
        let mut response = pb::ValidateKeyResponse {
            valid: validation.code == keyward_core::ValidationCode::Valid,
            code: code.into(),
            cache_ttl: Some(duration(self.validator.cache_hint())),
            ..Default::default()
        };
        if let Some(key) = validation.key {
            response.key_id = key.id.as_str().to_owned();
            response.organization_id = key.organization_id.clone();
            response.workspace_id = key.workspace_id.clone().unwrap_or_default();
            response.name = key.name.clone();
            response.scopes = key
                .scopes
                .as_slice()
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect();
            response.metadata = key
                .metadata
                .as_map()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            response.environment = convert::environment(key.environment).into();
            response.user_id = key.user_id.clone().unwrap_or_default();
            response.service_account_id = key.service_account_id.clone().unwrap_or_default();
            response.expires_at = key.expires_at.map(convert::timestamp);
        }
        Ok(Response::new(response))
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
