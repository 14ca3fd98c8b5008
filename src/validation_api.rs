//! `keyward.v1.KeyValidationService`: the wire face of [`KeyValidator`].

use std::net::IpAddr;
use std::sync::Arc;

use keyward_core::{
    MAX_CLIENT_IP_CHARS, MAX_SCOPES, MAX_USER_AGENT_CHARS, Scope, check_idempotency_key, parse_cost,
};
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

/// `client_ip` as an address: empty is unknown (a key with an allowlist is
/// then IP_NOT_ALLOWED); anything else must be an IPv4 or IPv6 address (an
/// IPv6 zone, `%eth0`, is allowed and ignored). The caller wrote it, so a
/// bad one is the caller's mistake, answered INVALID_ARGUMENT rather than
/// taken as "unknown".
fn client_address(v: &mut Violations, raw: &str) -> Option<IpAddr> {
    if raw.is_empty() {
        return None;
    }
    let address = raw.split_once('%').map_or(raw, |(address, _zone)| address);
    match address.parse::<IpAddr>() {
        Ok(ip) if address.len() == raw.len() || ip.is_ipv6() => Some(ip),
        _ => {
            v.add("client_ip", "must be an IPv4 or IPv6 address, or empty");
            None
        }
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
        let address = if req.client_ip.chars().count() > MAX_CLIENT_IP_CHARS {
            v.add(
                "client_ip",
                format!("must be at most {MAX_CLIENT_IP_CHARS} characters"),
            );
            None
        } else {
            client_address(&mut v, &req.client_ip)
        };
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
        let cost = v.check("cost", parse_cost(req.cost)).flatten();
        v.check(
            "idempotency_key",
            check_idempotency_key(&req.idempotency_key),
        );
        v.finish()?;

        let client = ClientInfo {
            ip: Some(req.client_ip.as_str()),
            address,
            user_agent: Some(req.user_agent.as_str()),
            path: ValidationPath::ValidateKey,
            cost,
            idempotency_key: Some(req.idempotency_key.as_str()).filter(|key| !key.is_empty()),
        };
        let validation = self.validator.validate(&req.key, &required, client).await?;
        let hint = self.validator.cache_hint_for(&validation);
        let response = convert::validate_key_response(validation, hint);
        Ok(Response::new(response))
    }
}
