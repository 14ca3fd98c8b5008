//! `keyward.v1.KeyValidationService`: the wire face of [`KeyValidator`].
//! Its messages are read and written by [`wire`]'s codec, not prost's
//! generated structs: the hot path allocates nothing for them.
//!
//! The server is a [`UnaryServer`] rather than generated: tonic's generated
//! trait boxes every call's handler future a second time (`async_trait`),
//! on the path whose speed is the product. Clients, tests and reflection keep
//! the generated messages and client.

pub mod wire;

use std::net::IpAddr;
use std::str::Utf8Error;
use std::sync::Arc;

use keyward_core::{
    MAX_CLIENT_IP_CHARS, MAX_SCOPES, MAX_USER_AGENT_CHARS, Scope, check_idempotency_key, parse_cost,
};
use tonic::{Request, Response, Status};

use self::wire::{ValidateKeyCall, ValidateKeyReply};
use crate::error::Violations;
use crate::metrics::ValidationPath;
use crate::unary::{UnaryMethod, UnaryServer};
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

/// The tonic service serving `keyward.v1.KeyValidationService`.
pub type KeyValidationServiceServer = UnaryServer<ValidationApi>;

impl UnaryMethod for ValidationApi {
    const SERVICE: &'static str = "keyward.v1.KeyValidationService";
    const ROUTE: &'static str = "/keyward.v1.KeyValidationService/ValidateKey";
    type Call = ValidateKeyCall;
    type Reply = ValidateKeyReply;

    async fn call(
        self,
        request: Request<ValidateKeyCall>,
    ) -> Result<Response<ValidateKeyReply>, Status> {
        self.validate_key(request).await
    }
}
