//! Conversions between wire types (`pb`) and domain types. Wire types stop here.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keyward_auth::RedactedKey;
use keyward_core::{
    Actor, ActorKind, ApiKey, Credits, CreditsSpent, Environment, KeyKind, KeyStatus, Metadata,
    RateLimit, RefillInterval, ValidationCode,
};
use keyward_store::{EventType, KeyEvent};

use crate::pb;

// The messages that carry a raw key derive no `Debug` (see build.rs): these
// show everything but the key.

impl fmt::Debug for pb::ValidateKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateKeyRequest")
            .field("key", &RedactedKey(&self.key))
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .field("user_agent", &self.user_agent)
            .field("cost", &self.cost)
            // A caller's idempotency key may be derived from a secret.
            .field("idempotency_key", &!self.idempotency_key.is_empty())
            .finish()
    }
}

impl fmt::Debug for pb::CreateKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateKeyResponse")
            .field("api_key", &self.api_key)
            .field("secret", &RedactedKey(&self.secret))
            .finish()
    }
}

impl fmt::Debug for pb::RotateKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateKeyResponse")
            .field("api_key", &self.api_key)
            .field("secret", &RedactedKey(&self.secret))
            .field("previous_key", &self.previous_key)
            .finish()
    }
}

/// A domain time as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A domain duration as a protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration as a domain duration; `None` if negative or malformed.
pub fn from_duration(d: &prost_types::Duration) -> Option<Duration> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos))
}

/// Metadata as the wire's map.
pub fn metadata(metadata: &Metadata) -> HashMap<String, String> {
    metadata
        .as_map()
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// What a `ValidateKeyResponse` says about the key that was presented (only
/// those fields set): the same for every call of one key version.
pub fn key_description(key: &ApiKey) -> pb::ValidateKeyResponse {
    pb::ValidateKeyResponse {
        key_id: key.id.as_str().to_owned(),
        organization_id: key.organization_id.clone(),
        workspace_id: key.workspace_id.clone().unwrap_or_default(),
        name: key.name.clone(),
        scopes: key.scopes.to_strings(),
        metadata: metadata(&key.metadata),
        environment: environment(key.environment).into(),
        user_id: key.user_id.clone().unwrap_or_default(),
        service_account_id: key.service_account_id.clone().unwrap_or_default(),
        expires_at: key.expires_at.map(timestamp),
        allowed_cidrs: key.policy().allowed_cidrs.to_strings(),
        ..Default::default()
    }
}

/// A protobuf timestamp as a domain time; `None` if out of range.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    Utc.timestamp_opt(ts.seconds, nanos).single()
}

/// Wire form of a key kind.
pub fn kind(kind: KeyKind) -> pb::KeyKind {
    match kind {
        KeyKind::Standard => pb::KeyKind::Standard,
        KeyKind::Admin => pb::KeyKind::Admin,
    }
}

/// Wire form of an environment.
pub fn environment(environment: Environment) -> pb::Environment {
    match environment {
        Environment::Live => pb::Environment::Live,
        Environment::Test => pb::Environment::Test,
    }
}

/// Wire form of a status.
pub fn status(status: KeyStatus) -> pb::KeyStatus {
    match status {
        KeyStatus::Active => pb::KeyStatus::Active,
        KeyStatus::Inactive => pb::KeyStatus::Inactive,
        KeyStatus::Expired => pb::KeyStatus::Expired,
        KeyStatus::Archived => pb::KeyStatus::Archived,
        KeyStatus::Revoked => pb::KeyStatus::Revoked,
    }
}

/// Domain form of a wire status; `None` for UNSPECIFIED.
pub fn status_from_wire(status: pb::KeyStatus) -> Option<KeyStatus> {
    match status {
        pb::KeyStatus::Unspecified => None,
        pb::KeyStatus::Active => Some(KeyStatus::Active),
        pb::KeyStatus::Inactive => Some(KeyStatus::Inactive),
        pb::KeyStatus::Expired => Some(KeyStatus::Expired),
        pb::KeyStatus::Archived => Some(KeyStatus::Archived),
        pb::KeyStatus::Revoked => Some(KeyStatus::Revoked),
    }
}

/// Wire form of an actor.
pub fn actor(actor: &Actor) -> pb::Actor {
    let kind = match actor.kind {
        ActorKind::ApiKey => pb::ActorType::ApiKey,
        ActorKind::User => pb::ActorType::User,
        ActorKind::ServiceAccount => pb::ActorType::ServiceAccount,
    };
    pb::Actor {
        r#type: kind.into(),
        id: actor.id.clone(),
    }
}

/// Wire form of a validation code.
pub fn validation_code(code: ValidationCode) -> pb::ValidationCode {
    match code {
        ValidationCode::Valid => pb::ValidationCode::Valid,
        ValidationCode::Malformed => pb::ValidationCode::Malformed,
        ValidationCode::NotFound => pb::ValidationCode::NotFound,
        ValidationCode::Inactive => pb::ValidationCode::Inactive,
        ValidationCode::Archived => pb::ValidationCode::Archived,
        ValidationCode::Expired => pb::ValidationCode::Expired,
        ValidationCode::Revoked => pb::ValidationCode::Revoked,
        ValidationCode::IpNotAllowed => pb::ValidationCode::IpNotAllowed,
        ValidationCode::InsufficientScope => pb::ValidationCode::InsufficientScope,
        ValidationCode::RateLimited => pb::ValidationCode::RateLimited,
        ValidationCode::UsageExceeded => pb::ValidationCode::UsageExceeded,
    }
}

/// Wire form of a rate limit.
pub fn rate_limit(limit: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        name: limit.name.clone(),
        limit: i64::try_from(limit.limit).unwrap_or(i64::MAX),
        duration: Some(duration(limit.window)),
        cost: i64::try_from(limit.cost).unwrap_or(i64::MAX),
    }
}

/// Wire form of a key's credits at `now`: what is left in the current
/// refill period as last recorded (`spent`), and when it is next refilled.
pub fn credits(credits: &Credits, spent: CreditsSpent, now: DateTime<Utc>) -> pb::Credits {
    let period = credits.period_at(now);
    let wire = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let (refill_amount, refill_interval) = match credits.refill {
        Some(refill) => (
            wire(refill.amount),
            match refill.interval {
                RefillInterval::Daily => pb::RefillInterval::Daily,
                RefillInterval::Monthly => pb::RefillInterval::Monthly,
            },
        ),
        None => (0, pb::RefillInterval::Unspecified),
    };
    pb::Credits {
        remaining: wire(credits.remaining_in(period, spent)),
        refill_amount,
        refill_interval: refill_interval.into(),
        refills_at: credits.refilled_after(period).map(timestamp),
    }
}

/// Wire form of a key record, with its status and credits computed at `now`.
pub fn api_key(key: ApiKey, now: DateTime<Utc>) -> pb::ApiKey {
    let policy = key.policy();
    let allowed_cidrs = policy.allowed_cidrs.to_strings();
    let rate_limits = policy
        .rate_limits
        .as_slice()
        .iter()
        .map(rate_limit)
        .collect();
    let credits = policy
        .credits
        .as_ref()
        .map(|c| credits(c, key.credits_spent, now));
    pb::ApiKey {
        allowed_cidrs,
        rate_limits,
        credits,
        status: status(key.status(now)).into(),
        kind: kind(key.kind).into(),
        environment: environment(key.environment).into(),
        created_by: Some(actor(&key.created_by)),
        id: key.id.to_string(),
        organization_id: key.organization_id,
        workspace_id: key.workspace_id.unwrap_or_default(),
        name: key.name,
        description: key.description,
        scopes: key.scopes.to_strings(),
        metadata: metadata(&key.metadata),
        prefix: key.prefix,
        partial_key_hint: key.partial_key_hint,
        created_at: Some(timestamp(key.created_at)),
        updated_at: Some(timestamp(key.updated_at)),
        user_id: key.user_id.unwrap_or_default(),
        service_account_id: key.service_account_id.unwrap_or_default(),
        expires_at: key.expires_at.map(timestamp),
        last_used_at: key.last_used_at.map(timestamp),
        last_used_ip: key.last_used_ip.unwrap_or_default(),
        last_used_user_agent: key.last_used_user_agent.unwrap_or_default(),
        archived_at: key.archived_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        rotated_from_id: key
            .rotated_from_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

/// Wire form of an audit event.
pub fn key_event(event: KeyEvent) -> pb::KeyEvent {
    let kind = match event.event_type {
        EventType::Created => pb::KeyEventType::Created,
        EventType::Updated => pb::KeyEventType::Updated,
        EventType::Archived => pb::KeyEventType::Archived,
        EventType::Reactivated => pb::KeyEventType::Reactivated,
        EventType::Revoked => pb::KeyEventType::Revoked,
        EventType::Deleted => pb::KeyEventType::Deleted,
        EventType::Rotated => pb::KeyEventType::Rotated,
    };
    pb::KeyEvent {
        seq: event.seq,
        organization_id: event.organization_id,
        key_id: event.key_id.to_string(),
        r#type: kind.into(),
        actor: Some(actor(&event.actor)),
        at: Some(timestamp(event.at)),
        changes: event.changes.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{ApiKeySecret, Environment, KeyKind};

    use super::*;

    #[test]
    fn no_message_debugs_a_raw_key() {
        let secret = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let raw = secret.expose().to_owned();
        let shown = [
            format!(
                "{:?}",
                pb::ValidateKeyRequest {
                    key: raw.clone(),
                    required_scopes: vec!["orders:read".to_owned()],
                    ..Default::default()
                }
            ),
            format!(
                "{:#?}",
                pb::CreateKeyResponse {
                    secret: raw.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                pb::RotateKeyResponse {
                    secret: raw.clone(),
                    ..Default::default()
                }
            ),
        ];
        for shown in shown {
            assert!(!shown.contains(&raw), "{shown}");
            assert!(shown.contains(&secret.display_prefix()), "{shown}");
        }
    }
}
