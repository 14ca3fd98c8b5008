//! Repository functions over a sea-orm connection.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_core::{
    Actor, ApiKey, Description, Environment, KeyId, KeyKind, KeyName, KeyStatus, LookupHash,
    Metadata, OrganizationId, Scopes,
};
use sea_orm::DatabaseConnection;

use crate::audit::AuditReport;
use crate::error::StoreError;

/// A handle on the database. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// A key to insert. The lookup hash is computed by the caller from the raw key,
/// which never reaches the store.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The owning organization.
    pub organization_id: OrganizationId,
    /// Optional workspace.
    pub workspace_id: Option<String>,
    /// Standard or admin.
    pub kind: KeyKind,
    /// Live or test.
    pub environment: Environment,
    /// Required name.
    pub name: KeyName,
    /// Free text (may be empty).
    pub description: Description,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Metadata.
    pub metadata: Metadata,
    /// BLAKE3 lookup hash of the raw key.
    pub lookup_hash: LookupHash,
    /// First 12 characters of the raw key.
    pub prefix: String,
    /// Partial hint of the raw key.
    pub partial_key_hint: String,
    /// Who creates it.
    pub created_by: Actor,
    /// The user the key acts for.
    pub user_id: Option<String>,
    /// The service account the key acts for.
    pub service_account_id: Option<String>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A partial update: `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<KeyName>,
    /// New description.
    pub description: Option<Description>,
    /// New scopes (replaces the list).
    pub scopes: Option<Scopes>,
    /// New metadata (replaces the map).
    pub metadata: Option<Metadata>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `Some(true)` makes the key INACTIVE, `Some(false)` ACTIVE again.
    pub disabled: Option<bool>,
}

/// Filters and cursor of a key listing. Results are newest first (id descending).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Page size, already checked to be 1..=1000.
    pub limit: u32,
    /// Exclusive cursor: keys older than this id.
    pub after_id: Option<KeyId>,
    /// Exclusive cursor: keys newer than this id (the page is still returned newest first).
    pub before_id: Option<KeyId>,
    /// Only keys whose status (computed now) is one of these; empty = any.
    pub statuses: Vec<KeyStatus>,
    /// Include archived keys; `statuses` containing ARCHIVED implies it.
    pub include_archived: bool,
    /// Only keys of this workspace.
    pub workspace_id: Option<String>,
    /// Only keys created by this actor id.
    pub created_by_id: Option<String>,
    /// Only keys of this user.
    pub user_id: Option<String>,
    /// Only keys of this service account.
    pub service_account_id: Option<String>,
    /// Only keys never used, or last used before this instant.
    pub last_used_before: Option<DateTime<Utc>>,
}

/// A page of results in cursor order.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Whether more items exist in the requested direction.
    pub has_more: bool,
}

/// A page of keys.
pub type KeyPage = Page<ApiKey>;
/// A page of events.
pub type EventPage = Page<KeyEvent>;

/// What kind of mutation an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A key was created (by CreateKey, RotateKey or bootstrap).
    Created,
    /// Fields changed through UpdateKey.
    Updated,
    /// Archived.
    Archived,
    /// Reactivated.
    Reactivated,
    /// Revoked.
    Revoked,
    /// Deleted (the event outlives the key).
    Deleted,
    /// The key was rotated: recorded on the old key; the new key has its own `Created`.
    Rotated,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEvent {
    /// Position in the global feed (strictly increasing).
    pub seq: i64,
    /// The organization.
    pub organization_id: String,
    /// The key the event is about.
    pub key_id: KeyId,
    /// What happened.
    pub event_type: EventType,
    /// Who did it.
    pub actor: Actor,
    /// When.
    pub at: DateTime<Utc>,
    /// Changed field names with their new values as JSON text (no secrets).
    pub changes: BTreeMap<String, String>,
}

/// Filters and cursor of an event listing. Newest first (seq descending).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Exclusive cursor: events with a smaller seq.
    pub after_seq: Option<i64>,
    /// Exclusive cursor: events with a larger seq.
    pub before_seq: Option<i64>,
    /// Only events about this key.
    pub key_id: Option<KeyId>,
}

/// One coalesced last-used observation, written by the usage flusher.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// The key.
    pub key_id: KeyId,
    /// When it was last used.
    pub at: DateTime<Utc>,
    /// Client IP, if known.
    pub ip: Option<String>,
    /// User agent, if known.
    pub user_agent: Option<String>,
}

impl Store {
    /// Connects to `url` (`sqlite://...`, `postgres://...`, `mysql://...`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        todo!()
    }

    /// The underlying connection, for tests and tooling.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Records the hasher fingerprint on first use; afterwards fails with
    /// `HasherMismatch` if it differs.
    pub async fn check_hasher(&self, fingerprint: &str) -> Result<(), StoreError> {
        todo!()
    }

    /// Creates the organization if it does not exist yet (idempotent).
    pub async fn ensure_organization(&self, org: &OrganizationId) -> Result<(), StoreError> {
        todo!()
    }

    /// Inserts a key and its `Created` event.
    pub async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// A key of `org` by id.
    pub async fn get_key(&self, org: &str, id: &KeyId) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// The key with this lookup hash, in any organization (the validation path).
    pub async fn find_by_lookup_hash(&self, hash: &LookupHash) -> Result<Option<ApiKey>, StoreError> {
        todo!()
    }

    /// A page of keys of `org`.
    pub async fn list_keys(&self, org: &str, query: &ListQuery) -> Result<KeyPage, StoreError> {
        todo!()
    }

    /// Applies a patch; revoked keys: `FailedPrecondition`. Records `Updated` with
    /// the changed fields (no event and no write if nothing changed).
    pub async fn update_key(
        &self,
        org: &str,
        id: &KeyId,
        patch: KeyPatch,
        actor: &Actor,
    ) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// Archives (idempotent: archiving an archived key changes nothing and
    /// records nothing). Revoked keys: `FailedPrecondition`.
    pub async fn archive_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// Clears `archived_at` and `disabled` (idempotent). Revoked: `FailedPrecondition`.
    pub async fn reactivate_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// Sets `revoked_at` (idempotent).
    pub async fn revoke_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<ApiKey, StoreError> {
        todo!()
    }

    /// Deletes the key row; its events stay and a `Deleted` event is added.
    pub async fn delete_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<(), StoreError> {
        todo!()
    }

    /// Inserts `replacement` (copying nothing itself: the caller fills it from
    /// the old key) with `rotated_from_id = id`, sets the old key's expiry to
    /// `min(existing expiry, now + grace)`, and records `Created` on the new key
    /// and `Rotated` on the old, in one transaction. Revoked or archived old key:
    /// `FailedPrecondition`. Returns (new key, updated old key).
    pub async fn rotate_key(
        &self,
        org: &str,
        id: &KeyId,
        replacement: NewKey,
        grace: Duration,
    ) -> Result<(ApiKey, ApiKey), StoreError> {
        todo!()
    }

    /// A page of `org`'s events.
    pub async fn list_events(&self, org: &str, query: &EventQuery) -> Result<EventPage, StoreError> {
        todo!()
    }

    /// Writes coalesced last-used data (one UPDATE per key at most); keys
    /// deleted meanwhile are skipped. Writes no event.
    pub async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        todo!()
    }

    /// Walks every organization's hash chain (or only `org`) and reports the
    /// first broken link of each.
    pub async fn verify_audit(&self, org: Option<&str>) -> Result<AuditReport, StoreError> {
        todo!()
    }
}
