//! keyward-core: the API-key format and the domain rules of keyward.
//!
//! Everything here is pure: no I/O, no async, no database and no wire types.
//! Values are parsed once at the edge (`ApiKeySecret::parse`, `KeyName::parse`,
//! `Scope::parse`, ...) and are known good afterwards.

mod fields;
mod hash;
mod id;
mod key;
mod net;
mod policy;
mod secret;

pub use fields::{
    Description, FieldError, KeyName, MAX_CLIENT_IP_CHARS, MAX_METADATA_ENTRIES, MAX_SCOPES,
    MAX_USER_AGENT_CHARS, Metadata, OptionalRef, OrganizationId, Scope, Scopes,
};
pub use hash::{LookupHash, LookupHasher};
pub use id::{KeyId, ULID_LEN, new_ulid, new_ulid_bytes};
pub use key::{Actor, ActorKind, ApiKey, Environment, KeyKind, KeyStatus, ValidationCode};
pub use net::{Cidr, client_address};
pub use policy::{
    AllowedCidrs, Credits, CreditsField, CreditsSpent, MAX_ALLOWED_CIDRS, MAX_CIDR_CHARS, MAX_COST,
    MAX_CREDITS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_RATE_LIMIT, MAX_RATE_LIMIT_NAME_CHARS,
    MAX_RATE_LIMIT_WINDOW, MAX_RATE_LIMITS, Policy, RateLimit, RateLimitError, RateLimitField,
    RateLimits, Refill, RefillInterval, check_idempotency_key, parse_cost,
};
pub use secret::{ApiKeySecret, KEY_REGEX, KeyFormatError, PresentedKey};
