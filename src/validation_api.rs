//! `keyward.v1.KeyValidationService`: the wire face of [`KeyValidator`].

use std::sync::Arc;

use keyward_core::{MAX_CLIENT_IP_CHARS, MAX_SCOPES, MAX_USER_AGENT_CHARS, Scope};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::Violations;
use crate::metrics::ValidationPath;
use crate::pb::{self, key_validation_service_server::KeyValidationService};
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

#[tonic::async_trait]
impl KeyValidationService for ValidationApi {
    async fn validate_key(
        &self,
        request: Request<pb::ValidateKeyRequest>,
    ) -> Result<Response<pb::ValidateKeyResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        // Counted before any element is looked at: a request over the cap
        // gets one violation, not one per element.
        let required: Vec<Scope> = if v.check_count(
            "required_scopes",
            req.required_scopes.len(),
            MAX_SCOPES,
            "scopes",
        ) {
            req.required_scopes
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| match Scope::parse(raw) {
                    Ok(scope) => Some(scope),
                    // The field name is only formatted for a bad scope:
                    // this is the hot path.
                    Err(error) => {
                        v.add(format!("required_scopes[{i}]"), error.description());
                        None
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
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
            path: ValidationPath::ValidateKey,
        };
        let validation = self.validator.validate(&req.key, &required, client).await?;
        let response = convert::validate_key_response(validation, self.validator.cache_hint());
        Ok(Response::new(response))
    }
}
