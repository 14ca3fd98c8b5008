//! The API key record and its lifecycle rules.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::fields::{Metadata, Scopes};
use crate::id::KeyId;
use crate::policy::{CreditsSpent, Policy};

/// Standard keys protect product services; admin keys call the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Validates through `ValidateKey`, the auth layer and ext_authz.
    Standard,
    /// Authenticates admin RPCs of its organization; never validates as a product key.
    Admin,
}

impl KeyKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Admin => "admin",
        }
    }

    /// Reads the stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "standard" => Some(Self::Standard),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Which environment a standard key is for; it picks the `sk_live` or `sk_test` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Production traffic: `sk_live_`.
    Live,
    /// Test traffic: `sk_test_`.
    Test,
}

impl Environment {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    /// Reads the stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

/// A key's status, computed from its timestamps and its `disabled` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Validates.
    Active,
    /// Disabled by an update; reversible.
    Inactive,
    /// `expires_at` has passed.
    Expired,
    /// Soft deleted; reversible.
    Archived,
    /// Permanently revoked.
    Revoked,
}

/// Who performed a change or created a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// An API key (an admin key calling the admin API).
    ApiKey,
    /// A human user, by an id of the operator's identity system.
    User,
    /// A service account, by an id of the operator's identity system.
    ServiceAccount,
}

impl ActorKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::User => "user",
            Self::ServiceAccount => "service_account",
        }
    }

    /// Reads the stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "api_key" => Some(Self::ApiKey),
            "user" => Some(Self::User),
            "service_account" => Some(Self::ServiceAccount),
            _ => None,
        }
    }
}

/// An actor: what kind and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// What kind of actor.
    pub kind: ActorKind,
    /// Its id (a key id for `ApiKey`).
    pub id: String,
}

/// The verdict of a validation, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidationCode {
    /// The key is valid and holds every required scope.
    Valid,
    /// Not a keyward key (shape or checksum): rejected without a lookup.
    Malformed,
    /// Well formed, but no such key (or an admin key, which never validates here).
    NotFound,
    /// Disabled by an update.
    Inactive,
    /// Archived.
    Archived,
    /// Past its `expires_at`.
    Expired,
    /// Revoked.
    Revoked,
    /// Valid, but the client's address is outside the key's allowlist (or
    /// unknown while the key has one). Checked before the scopes: it says
    /// less about the key.
    IpNotAllowed,
    /// Valid, but lacks a required scope.
    InsufficientScope,
    /// Valid, but over one of its rate limits in the current window.
    /// Decided after every check above: a denied call spends nothing.
    RateLimited,
    /// Valid, but without credits left for this call.
    UsageExceeded,
}

impl ValidationCode {
    /// Every code, in declaration order: `ALL[code as usize] == code`. A new
    /// code is added here too (a test checks the order).
    pub const ALL: [ValidationCode; 11] = [
        ValidationCode::Valid,
        ValidationCode::Malformed,
        ValidationCode::NotFound,
        ValidationCode::Inactive,
        ValidationCode::Archived,
        ValidationCode::Expired,
        ValidationCode::Revoked,
        ValidationCode::IpNotAllowed,
        ValidationCode::InsufficientScope,
        ValidationCode::RateLimited,
        ValidationCode::UsageExceeded,
    ];

    /// The stable lowercase name, as usage counts store it (`valid`,
    /// `insufficient_scope`, ...): a new code needs no migration.
    pub fn name(self) -> &'static str {
        match self {
            ValidationCode::Valid => "valid",
            ValidationCode::Malformed => "malformed",
            ValidationCode::NotFound => "not_found",
            ValidationCode::Inactive => "inactive",
            ValidationCode::Archived => "archived",
            ValidationCode::Expired => "expired",
            ValidationCode::Revoked => "revoked",
            ValidationCode::IpNotAllowed => "ip_not_allowed",
            ValidationCode::InsufficientScope => "insufficient_scope",
            ValidationCode::RateLimited => "rate_limited",
            ValidationCode::UsageExceeded => "usage_exceeded",
        }
    }

    /// The code named `name` (see [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Whether the verdict is about a key that was found, so it is counted
    /// in that key's usage (malformed and unknown keys have no key).
    pub fn names_a_key(self) -> bool {
        !matches!(self, ValidationCode::Malformed | ValidationCode::NotFound)
    }
}

/// An API key record, as stored (without its lookup hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// `key_...`.
    pub id: KeyId,
    /// The owning organization.
    pub organization_id: String,
    /// Optional workspace within the organization.
    pub workspace_id: Option<String>,
    /// Standard or admin.
    pub kind: KeyKind,
    /// Live or test.
    pub environment: Environment,
    /// Human name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// First 12 characters of the raw key.
    pub prefix: String,
    /// First 12 + `...` + last 4 characters of the raw key.
    pub partial_key_hint: String,
    /// Set by an update to status INACTIVE.
    pub disabled: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the record.
    pub updated_at: DateTime<Utc>,
    /// Who created the key.
    pub created_by: Actor,
    /// The user the key acts for, if any.
    pub user_id: Option<String>,
    /// The service account the key acts for, if any.
    pub service_account_id: Option<String>,
    /// When the key stops validating, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful validation.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client IP of the last successful validation.
    pub last_used_ip: Option<String>,
    /// User agent of the last successful validation.
    pub last_used_user_agent: Option<String>,
    /// When archived, if archived.
    pub archived_at: Option<DateTime<Utc>>,
    /// When revoked, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced by rotation.
    pub rotated_from_id: Option<KeyId>,
    /// What a validation must also satisfy; `None` when the key has no
    /// restriction (the warm path's one branch).
    pub policy: Option<Arc<Policy>>,
    /// What was spent of the key's credits, as last recorded in the database.
    pub credits_spent: CreditsSpent,
}

impl ApiKey {
    /// The status at `now`: REVOKED > ARCHIVED > EXPIRED > INACTIVE > ACTIVE.
    pub fn status(&self, now: DateTime<Utc>) -> KeyStatus {
        self.status_with(|| now)
    }

    /// The status, reading the clock only if it matters (the key can expire
    /// and is neither revoked nor archived).
    fn status_with(&self, now: impl FnOnce() -> DateTime<Utc>) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.archived_at.is_some() {
            KeyStatus::Archived
        } else if self.expires_at.is_some_and(|at| at <= now()) {
            KeyStatus::Expired
        } else if self.disabled {
            KeyStatus::Inactive
        } else {
            KeyStatus::Active
        }
    }

    /// The key's policy, the default (unrestricted) one if it has none.
    pub fn policy(&self) -> &Policy {
        static UNRESTRICTED: Policy = Policy {
            allowed_cidrs: crate::policy::AllowedCidrs::EMPTY,
            rate_limits: crate::policy::RateLimits::EMPTY,
            credits: None,
        };
        self.policy.as_deref().unwrap_or(&UNRESTRICTED)
    }

    /// The verdict for presenting this key as a product (standard) key from
    /// `client`. Checks run in this order: kind, status, the key's
    /// allowlist (IP_NOT_ALLOWED; an unknown client address fails it), then
    /// the scopes. `now` is called only for a key that can expire: the hot
    /// path skips the wall-clock conversion for the others.
    pub fn verdict<S: AsRef<str>>(
        &self,
        required: &[S],
        client: Option<IpAddr>,
        now: impl FnOnce() -> DateTime<Utc>,
    ) -> ValidationCode {
        if self.kind == KeyKind::Admin {
            // Admin keys never validate as product keys, and we do not say why.
            return ValidationCode::NotFound;
        }
        match self.status_with(now) {
            KeyStatus::Revoked => ValidationCode::Revoked,
            KeyStatus::Archived => ValidationCode::Archived,
            KeyStatus::Expired => ValidationCode::Expired,
            KeyStatus::Inactive => ValidationCode::Inactive,
            KeyStatus::Active if self.policy.as_ref().is_some_and(|p| !p.admits(client)) => {
                ValidationCode::IpNotAllowed
            }
            KeyStatus::Active if !self.scopes.grant_all(required) => {
                ValidationCode::InsufficientScope
            }
            KeyStatus::Active => ValidationCode::Valid,
        }
    }

    /// Whether this key may call the admin API of its organization at `now`.
    pub fn authorizes_admin(&self, now: DateTime<Utc>) -> bool {
        self.kind == KeyKind::Admin && self.status(now) == KeyStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::Scope;
    use chrono::Duration;

    #[test]
    fn validation_codes_are_listed_in_order_with_distinct_names() {
        // Exhaustive: a new code does not compile here until it is placed.
        let position = |code: ValidationCode| match code {
            ValidationCode::Valid => 0,
            ValidationCode::Malformed => 1,
            ValidationCode::NotFound => 2,
            ValidationCode::Inactive => 3,
            ValidationCode::Archived => 4,
            ValidationCode::Expired => 5,
            ValidationCode::Revoked => 6,
            ValidationCode::IpNotAllowed => 7,
            ValidationCode::InsufficientScope => 8,
            ValidationCode::RateLimited => 9,
            ValidationCode::UsageExceeded => 10,
        };
        assert_eq!(ValidationCode::ALL.len(), 11, "every code is in ALL");
        for (index, code) in ValidationCode::ALL.into_iter().enumerate() {
            assert_eq!(position(code), index);
            assert_eq!(code as usize, index, "{code:?} is out of order in ALL");
            assert_eq!(ValidationCode::from_name(code.name()), Some(code));
        }
        assert_eq!(ValidationCode::from_name("Valid"), None);
    }

    fn key() -> ApiKey {
        let now = Utc::now();
        ApiKey {
            id: KeyId::generate(),
            organization_id: "acme".into(),
            workspace_id: None,
            kind: KeyKind::Standard,
            environment: Environment::Live,
            name: "n".into(),
            description: String::new(),
            scopes: Scopes::parse(&["orders:*"]).unwrap(),
            metadata: Metadata::default(),
            prefix: "sk_live_abcd".into(),
            partial_key_hint: "sk_live_abcd...wxyz".into(),
            disabled: false,
            created_at: now,
            updated_at: now,
            created_by: Actor {
                kind: ActorKind::User,
                id: "u".into(),
            },
            user_id: None,
            service_account_id: None,
            expires_at: None,
            last_used_at: None,
            last_used_ip: None,
            last_used_user_agent: None,
            archived_at: None,
            revoked_at: None,
            rotated_from_id: None,
            policy: None,
            credits_spent: CreditsSpent::default(),
        }
    }

    #[test]
    fn status_precedence() {
        let now = Utc::now();
        let mut k = key();
        assert_eq!(k.status(now), KeyStatus::Active);
        k.disabled = true;
        assert_eq!(k.status(now), KeyStatus::Inactive);
        k.expires_at = Some(now - Duration::seconds(1));
        assert_eq!(k.status(now), KeyStatus::Expired);
        k.archived_at = Some(now);
        assert_eq!(k.status(now), KeyStatus::Archived);
        k.revoked_at = Some(now);
        assert_eq!(k.status(now), KeyStatus::Revoked);
    }

    #[test]
    fn verdicts() {
        let now = Utc::now();
        let read = Scope::parse("orders:read").unwrap();
        let other = Scope::parse("billing:read").unwrap();
        let mut k = key();
        assert_eq!(
            k.verdict(std::slice::from_ref(&read), None, || now),
            ValidationCode::Valid
        );
        assert_eq!(
            k.verdict(&[read.clone(), other.clone()], None, || now),
            ValidationCode::InsufficientScope
        );
        k.expires_at = Some(now + Duration::hours(1));
        assert_eq!(
            k.verdict(&[] as &[&str], None, || now),
            ValidationCode::Valid
        );

        // The allowlist: checked after the status, before the scopes; an
        // unknown address fails it.
        let inside: IpAddr = [203, 0, 113, 9].into();
        let outside: IpAddr = [198, 51, 100, 1].into();
        let mut limited = key();
        limited.policy = Policy {
            allowed_cidrs: crate::AllowedCidrs::parse(&["203.0.113.0/24"]).unwrap(),
            ..Policy::default()
        }
        .shared();
        let verdict = |k: &ApiKey, required: &[Scope], client| k.verdict(required, client, || now);
        assert_eq!(verdict(&limited, &[], Some(inside)), ValidationCode::Valid);
        assert_eq!(
            verdict(&limited, &[], Some(outside)),
            ValidationCode::IpNotAllowed
        );
        assert_eq!(verdict(&limited, &[], None), ValidationCode::IpNotAllowed);
        assert_eq!(
            verdict(&limited, std::slice::from_ref(&other), Some(outside)),
            ValidationCode::IpNotAllowed,
            "the address is checked before the scopes"
        );
        assert_eq!(
            verdict(&limited, std::slice::from_ref(&other), Some(inside)),
            ValidationCode::InsufficientScope
        );
        limited.revoked_at = Some(now);
        assert_eq!(
            verdict(&limited, &[], Some(outside)),
            ValidationCode::Revoked
        );

        k.kind = KeyKind::Admin;
        assert_eq!(
            k.verdict(&[] as &[&str], None, || now),
            ValidationCode::NotFound
        );
        assert!(k.authorizes_admin(now));
        k.archived_at = Some(now);
        assert!(!k.authorizes_admin(now));
    }
}
