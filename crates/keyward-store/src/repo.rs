//! Repository functions over a sea-orm connection.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keyward_core::{
    Actor, ActorKind, ApiKey, ApiKeySecret, Description, Environment, KeyId, KeyKind, KeyName,
    KeyStatus, LookupHash, LookupHasher, MAX_CLIENT_IP_CHARS, MAX_USER_AGENT_CHARS, Metadata,
    OrganizationId, Scopes,
};
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectOptions, ConnectionTrait,
    Database, DatabaseConnection, DatabaseTransaction, EntityTrait, IntoActiveModel, Iterable,
    ModelTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use serde_json::json;

use crate::audit::{self, AuditReport, Chain, Changes, NewEvent};
use crate::entity::{api_keys, key_events, keyward_settings};
use crate::error::StoreError;
use crate::migration::Migrator;
use crate::time;

/// A handle on the database. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// What the store keeps of a new key's secret: the kind and environment its
/// prefix says, its lookup hash and the parts safe to show. The raw key never
/// reaches the store.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    /// Standard or admin, as the secret's prefix says.
    pub kind: KeyKind,
    /// Live or test, as the secret's prefix says.
    pub environment: Environment,
    /// BLAKE3 lookup hash of the raw key.
    pub lookup_hash: LookupHash,
    /// First 12 characters of the raw key.
    pub prefix: String,
    /// Partial hint of the raw key.
    pub partial_key_hint: String,
}

impl KeyMaterial {
    /// The material of `secret`, hashed with `hasher`.
    pub fn new(hasher: &LookupHasher, secret: &ApiKeySecret) -> Self {
        Self {
            kind: secret.kind(),
            environment: secret.environment(),
            lookup_hash: hasher.hash(secret),
            prefix: secret.display_prefix(),
            partial_key_hint: secret.partial_hint(),
        }
    }
}

/// A key to insert. The lookup hash is computed by the caller from the raw key,
/// which never reaches the store.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The owning organization.
    pub organization_id: OrganizationId,
    /// Optional workspace.
    pub workspace_id: Option<String>,
    /// Required name.
    pub name: KeyName,
    /// Free text (may be empty).
    pub description: Description,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Metadata.
    pub metadata: Metadata,
    /// Its secret's kind, environment, lookup hash and display parts.
    pub secret: KeyMaterial,
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

/// Name of the setting holding the lookup-hasher fingerprint.
const HASHER_FINGERPRINT: &str = "lookup_hasher_fingerprint";
/// Largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

impl Store {
    /// Connects to `url` (`sqlite://...`, `postgres://...`, `mysql://...`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(url);
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5));
        if url.starts_with("sqlite:") {
            if url.contains(":memory:") || url.contains("mode=memory") {
                // Every connection to an in-memory database is its own database:
                // keep exactly one, forever.
                options
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None::<Duration>)
                    .max_lifetime(None::<Duration>);
            } else {
                // WAL lets readers (the validation path) proceed while a writer
                // commits; writers queue on the busy timeout.
                options.max_connections(8).map_sqlx_sqlite_opts(|opts| {
                    opts.journal_mode(SqliteJournalMode::Wal)
                        .busy_timeout(Duration::from_secs(5))
                });
            }
        } else {
            options
                .max_connections(16)
                .min_connections(1)
                .idle_timeout(Duration::from_secs(300));
        }
        let db = Database::connect(options)
            .await
            .map_err(|err| StoreError::from(err).classify())?;
        Ok(Self { db })
    }

    /// The underlying connection, for tests and tooling.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None)
            .await
            .map_err(|err| StoreError::from(err).classify())
    }

    /// Records the hasher fingerprint on first use; afterwards fails with
    /// `HasherMismatch` if it differs.
    pub async fn check_hasher(&self, fingerprint: &str) -> Result<(), StoreError> {
        self.check_hasher_inner(fingerprint)
            .await
            .map_err(StoreError::classify)
    }

    /// Creates the organization if it does not exist yet (idempotent).
    pub async fn ensure_organization(&self, org: &OrganizationId) -> Result<(), StoreError> {
        audit::insert_organization(&self.db, org.as_str())
            .await
            .map_err(StoreError::classify)
    }

    /// Inserts a key and its `Created` event.
    pub async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        retry_conflicts(|| self.create_key_inner(&key))
            .await
            .map_err(StoreError::classify)
    }

    /// A key of `org` by id.
    pub async fn get_key(&self, org: &str, id: &KeyId) -> Result<ApiKey, StoreError> {
        load_key(&self.db, org, id)
            .await
            .and_then(key_from_row)
            .map_err(StoreError::classify)
    }

    /// The key with this lookup hash, in any organization (the validation path).
    pub async fn find_by_lookup_hash(
        &self,
        hash: &LookupHash,
    ) -> Result<Option<ApiKey>, StoreError> {
        let found = api_keys::Entity::find()
            .filter(api_keys::Column::LookupHash.eq(hash.to_hex()))
            .one(&self.db)
            .await
            .map_err(|err| StoreError::from(err).classify())?;
        found.map(key_from_row).transpose()
    }

    /// A page of keys of `org`.
    pub async fn list_keys(&self, org: &str, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.list_keys_inner(org, query)
            .await
            .map_err(StoreError::classify)
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
        self.mutate(org, id, actor, EventType::Updated, |current, now| {
            if current.revoked_at.is_some() {
                return Err(revoked("can no longer be changed"));
            }
            let before = key_from_row(current.clone())?;
            let mut next = current.clone();
            let mut changes = Changes::new();
            if let Some(name) = patch.name.clone().filter(|n| n.as_str() != before.name) {
                changes.insert("name", json!(name.as_str()));
                next.name = name.as_str().to_owned();
            }
            if let Some(description) = patch
                .description
                .clone()
                .filter(|d| d.as_str() != before.description)
            {
                changes.insert("description", json!(description.as_str()));
                next.description = description.as_str().to_owned();
            }
            if let Some(scopes) = patch.scopes.clone().filter(|s| *s != before.scopes) {
                changes.insert("scopes", scopes_value(&scopes));
                next.scopes = scopes_json(&scopes)?;
            }
            if let Some(metadata) = patch.metadata.clone().filter(|m| *m != before.metadata) {
                changes.insert("metadata", json!(metadata.as_map()));
                next.metadata = metadata_json(&metadata)?;
            }
            if let Some(expires_at) = patch
                .expires_at
                .map(|at| at.map(time::micros))
                .filter(|at| *at != before.expires_at)
            {
                changes.insert("expires_at", time_value(expires_at));
                next.expires_at = expires_at.map(time::db);
            }
            if let Some(disabled) = patch.disabled.filter(|d| *d != before.disabled) {
                changes.insert("disabled", json!(disabled));
                next.disabled = disabled;
            }
            if changes.is_empty() {
                return Ok(None);
            }
            next.updated_at = time::db(now);
            Ok(Some((next, changes)))
        })
        .await
    }

    /// Archives (idempotent: archiving an archived key changes nothing and
    /// records nothing). Revoked keys: `FailedPrecondition`.
    pub async fn archive_key(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
    ) -> Result<ApiKey, StoreError> {
        self.mutate(org, id, actor, EventType::Archived, |current, now| {
            if current.revoked_at.is_some() {
                return Err(revoked("cannot be archived"));
            }
            if current.archived_at.is_some() {
                return Ok(None);
            }
            let mut next = current.clone();
            next.archived_at = Some(time::db(now));
            next.updated_at = time::db(now);
            let changes = Changes::from([("archived_at", time_value(Some(now)))]);
            Ok(Some((next, changes)))
        })
        .await
    }

    /// Clears `archived_at` and `disabled` (idempotent). Revoked: `FailedPrecondition`.
    pub async fn reactivate_key(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
    ) -> Result<ApiKey, StoreError> {
        self.mutate(org, id, actor, EventType::Reactivated, |current, now| {
            if current.revoked_at.is_some() {
                return Err(revoked("cannot be reactivated"));
            }
            let mut next = current.clone();
            let mut changes = Changes::new();
            if current.archived_at.is_some() {
                next.archived_at = None;
                changes.insert("archived_at", serde_json::Value::Null);
            }
            if current.disabled {
                next.disabled = false;
                changes.insert("disabled", json!(false));
            }
            if changes.is_empty() {
                return Ok(None);
            }
            next.updated_at = time::db(now);
            Ok(Some((next, changes)))
        })
        .await
    }

    /// Sets `revoked_at` (idempotent).
    pub async fn revoke_key(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
    ) -> Result<ApiKey, StoreError> {
        self.mutate(org, id, actor, EventType::Revoked, |current, now| {
            if current.revoked_at.is_some() {
                return Ok(None);
            }
            let mut next = current.clone();
            next.revoked_at = Some(time::db(now));
            next.updated_at = time::db(now);
            let changes = Changes::from([("revoked_at", time_value(Some(now)))]);
            Ok(Some((next, changes)))
        })
        .await
    }

    /// Deletes the key row; its events stay and a `Deleted` event is added.
    pub async fn delete_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<(), StoreError> {
        retry_conflicts(|| self.delete_key_inner(org, id, actor))
            .await
            .map_err(StoreError::classify)
    }

    /// Inserts a new key with the secret `material`, made by `actor`, that
    /// copies the old key's fields as they are under the transaction's lock
    /// (name, description, scopes, metadata, workspace, user, service
    /// account; kind and environment, which never change), with
    /// `rotated_from_id = id`; sets the old key's expiry to
    /// `min(existing expiry, now + grace)`; and records `Created` on the new
    /// key and `Rotated` on the old, in one transaction. Revoked or archived
    /// old key: `FailedPrecondition`. Returns (new key, updated old key).
    pub async fn rotate_key(
        &self,
        org: &str,
        id: &KeyId,
        material: KeyMaterial,
        actor: &Actor,
        grace: Duration,
    ) -> Result<(ApiKey, ApiKey), StoreError> {
        retry_conflicts(|| self.rotate_key_inner(org, id, &material, actor, grace))
            .await
            .map_err(StoreError::classify)
    }

    /// A page of `org`'s events.
    pub async fn list_events(
        &self,
        org: &str,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        self.list_events_inner(org, query)
            .await
            .map_err(StoreError::classify)
    }

    /// Events of every organization with `seq > after_seq`, oldest first, at
    /// most `limit` (1..=1000): the change feed other replicas follow.
    ///
    /// `seq` is assigned at insert but becomes visible at commit, so a
    /// transaction that took a smaller `seq` may commit after a larger one was
    /// already read. A follower that must not miss events should re-read a
    /// window behind its cursor (events are immutable, so re-reading is safe).
    pub async fn events_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        let rows = key_events::Entity::find()
            .filter(key_events::Column::Seq.gt(after_seq))
            .order_by_asc(key_events::Column::Seq)
            .limit(u64::from(limit.clamp(1, MAX_PAGE)))
            .all(&self.db)
            .await
            .map_err(|err| StoreError::from(err).classify())?;
        rows.into_iter().map(event_from_row).collect()
    }

    /// The newest event's `seq` (0 when there is none): where a new follower
    /// of the change feed starts.
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let newest = key_events::Entity::find()
            .order_by_desc(key_events::Column::Seq)
            .one(&self.db)
            .await
            .map_err(|err| StoreError::from(err).classify())?;
        Ok(newest.map_or(0, |row| row.seq))
    }

    /// Writes coalesced last-used data (one UPDATE per key at most); keys
    /// deleted meanwhile are skipped. Writes no event.
    pub async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.record_usage_inner(batch)
            .await
            .map_err(StoreError::classify)
    }

    /// Walks every organization's hash chain (or only `org`) and reports the
    /// first broken link of each.
    pub async fn verify_audit(&self, org: Option<&str>) -> Result<AuditReport, StoreError> {
        audit::verify(&self.db, org)
            .await
            .map_err(StoreError::classify)
    }

    async fn check_hasher_inner(&self, fingerprint: &str) -> Result<(), StoreError> {
        keyward_settings::Entity::insert(keyward_settings::ActiveModel {
            name: Set(HASHER_FINGERPRINT.to_owned()),
            value: Set(fingerprint.to_owned()),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(&self.db)
        .await?;
        let stored = keyward_settings::Entity::find_by_id(HASHER_FINGERPRINT.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(
                    "the lookup-hasher fingerprint vanished after being stored".into(),
                )
            })?;
        if stored.value == fingerprint {
            Ok(())
        } else {
            Err(StoreError::HasherMismatch)
        }
    }

    async fn create_key_inner(&self, key: &NewKey) -> Result<ApiKey, StoreError> {
        let txn = self.db.begin().await?;
        let result: Result<Outcome<ApiKey>, StoreError> = async {
            let mut chain = Chain::lock(&txn, key.organization_id.as_str()).await?;
            let now = time::now();
            let row = new_row(key, now)?;
            insert_key(&txn, &row).await?;
            chain
                .append(&txn, created_event(&row, &key.created_by, now)?)
                .await?;
            Ok(Outcome::Commit(key_from_row(row)?))
        }
        .await;
        finish(txn, result).await
    }

    async fn list_keys_inner(&self, org: &str, query: &ListQuery) -> Result<KeyPage, StoreError> {
        use api_keys::Column as C;
        let limit = query.limit.clamp(1, MAX_PAGE) as usize;
        let now = time::now();
        let mut filter = Condition::all().add(C::OrganizationId.eq(org));
        if let Some(after) = &query.after_id {
            filter = filter.add(C::Id.lt(after.as_str()));
        }
        if let Some(before) = &query.before_id {
            filter = filter.add(C::Id.gt(before.as_str()));
        }
        if !query.statuses.is_empty() {
            let mut any = Condition::any();
            for status in &query.statuses {
                any = any.add(status_condition(*status, now));
            }
            filter = filter.add(any);
        } else if !query.include_archived {
            // Hide keys whose status is ARCHIVED (a revoked key stays visible).
            filter = filter.add(status_condition(KeyStatus::Archived, now).not());
        }
        if let Some(workspace) = &query.workspace_id {
            filter = filter.add(C::WorkspaceId.eq(workspace.as_str()));
        }
        if let Some(creator) = &query.created_by_id {
            filter = filter.add(C::CreatedById.eq(creator.as_str()));
        }
        if let Some(user) = &query.user_id {
            filter = filter.add(C::UserId.eq(user.as_str()));
        }
        if let Some(account) = &query.service_account_id {
            filter = filter.add(C::ServiceAccountId.eq(account.as_str()));
        }
        if let Some(before) = query.last_used_before {
            filter = filter.add(
                Condition::any()
                    .add(C::LastUsedAt.is_null())
                    .add(C::LastUsedAt.lt(time::db(time::ceil_micros(before)))),
            );
        }

        // `before_id` alone walks towards newer keys: read upwards from the
        // cursor, then flip the page to newest first.
        let ascending = query.before_id.is_some() && query.after_id.is_none();
        let select = api_keys::Entity::find().filter(filter);
        let select = if ascending {
            select.order_by_asc(C::Id)
        } else {
            select.order_by_desc(C::Id)
        };
        let rows = select.limit(limit as u64 + 1).all(&self.db).await?;
        let (items, has_more) = page_of(rows, limit, ascending);
        Ok(Page {
            items: items
                .into_iter()
                .map(key_from_row)
                .collect::<Result<_, _>>()?,
            has_more,
        })
    }

    async fn list_events_inner(
        &self,
        org: &str,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        use key_events::Column as C;
        let limit = query.limit.clamp(1, MAX_PAGE) as usize;
        let mut filter = Condition::all().add(C::OrganizationId.eq(org));
        if let Some(after) = query.after_seq {
            filter = filter.add(C::Seq.lt(after));
        }
        if let Some(before) = query.before_seq {
            filter = filter.add(C::Seq.gt(before));
        }
        if let Some(key) = &query.key_id {
            filter = filter.add(C::KeyId.eq(key.as_str()));
        }
        let ascending = query.before_seq.is_some() && query.after_seq.is_none();
        let select = key_events::Entity::find().filter(filter);
        let select = if ascending {
            select.order_by_asc(C::Seq)
        } else {
            select.order_by_desc(C::Seq)
        };
        let rows = select.limit(limit as u64 + 1).all(&self.db).await?;
        let (items, has_more) = page_of(rows, limit, ascending);
        Ok(Page {
            items: items
                .into_iter()
                .map(event_from_row)
                .collect::<Result<_, _>>()?,
            has_more,
        })
    }

    /// The shape of every single-key mutation: lock the organization's chain,
    /// load the key, let `change` decide the new row and the recorded changes
    /// (`None`: nothing to do, so nothing is written), write both, commit.
    /// A transaction lost to a deadlock runs again.
    async fn mutate<F>(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
        event_type: EventType,
        change: F,
    ) -> Result<ApiKey, StoreError>
    where
        F: Fn(
            &api_keys::Model,
            DateTime<Utc>,
        ) -> Result<Option<(api_keys::Model, Changes)>, StoreError>,
    {
        retry_conflicts(|| self.mutate_once(org, id, actor, event_type, &change))
            .await
            .map_err(StoreError::classify)
    }

    async fn mutate_once<F>(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
        event_type: EventType,
        change: &F,
    ) -> Result<ApiKey, StoreError>
    where
        F: Fn(
            &api_keys::Model,
            DateTime<Utc>,
        ) -> Result<Option<(api_keys::Model, Changes)>, StoreError>,
    {
        let txn = self.db.begin().await?;
        let result: Result<Outcome<ApiKey>, StoreError> = async {
            let mut chain = Chain::lock(&txn, org).await?;
            let current = load_key(&txn, org, id).await?;
            let now = time::now();
            let Some((next, changes)) = change(&current, now)? else {
                // Nothing changes, so nothing is written (the lock itself
                // changed no value either).
                return Ok(Outcome::Rollback(key_from_row(current)?));
            };
            update_row(&txn, &current, &next).await?;
            chain
                .append(
                    &txn,
                    NewEvent {
                        key_id: &next.id,
                        event_type: event_type.as_str(),
                        actor_type: actor.kind.as_str(),
                        actor_id: &actor.id,
                        at: now,
                        changes,
                    },
                )
                .await?;
            Ok(Outcome::Commit(key_from_row(next)?))
        }
        .await;
        finish(txn, result).await
    }

    async fn delete_key_inner(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let result: Result<Outcome<()>, StoreError> = async {
            let mut chain = Chain::lock(&txn, org).await?;
            let current = load_key(&txn, org, id).await?;
            api_keys::Entity::delete_by_id(current.id.as_str())
                .exec(&txn)
                .await?;
            chain
                .append(
                    &txn,
                    NewEvent {
                        key_id: &current.id,
                        event_type: EventType::Deleted.as_str(),
                        actor_type: actor.kind.as_str(),
                        actor_id: &actor.id,
                        at: time::now(),
                        changes: Changes::new(),
                    },
                )
                .await?;
            Ok(Outcome::Commit(()))
        }
        .await;
        finish(txn, result).await
    }

    async fn rotate_key_inner(
        &self,
        org: &str,
        id: &KeyId,
        material: &KeyMaterial,
        actor: &Actor,
        grace: Duration,
    ) -> Result<(ApiKey, ApiKey), StoreError> {
        let txn = self.db.begin().await?;
        let result: Result<Outcome<(ApiKey, ApiKey)>, StoreError> = async {
            let mut chain = Chain::lock(&txn, org).await?;
            let old = load_key(&txn, org, id).await?;
            if old.revoked_at.is_some() {
                return Err(revoked("cannot be rotated"));
            }
            if old.archived_at.is_some() {
                return Err(StoreError::FailedPrecondition(
                    "key is archived and cannot be rotated; reactivate it first".into(),
                ));
            }
            if material.kind.as_str() != old.kind
                || material.environment.as_str() != old.environment
            {
                return Err(StoreError::FailedPrecondition(
                    "a rotated key keeps its kind and environment".into(),
                ));
            }
            let now = time::now();

            let new = api_keys::Model {
                id: KeyId::generate().as_str().to_owned(),
                lookup_hash: material.lookup_hash.to_hex(),
                prefix: material.prefix.clone(),
                partial_key_hint: material.partial_key_hint.clone(),
                disabled: false,
                created_at: time::db(now),
                updated_at: time::db(now),
                created_by_type: actor.kind.as_str().to_owned(),
                created_by_id: actor.id.clone(),
                expires_at: None,
                last_used_at: None,
                last_used_ip: None,
                last_used_user_agent: None,
                archived_at: None,
                revoked_at: None,
                rotated_from_id: Some(old.id.clone()),
                ..old.clone()
            };
            insert_key(&txn, &new).await?;

            // A grace period too large to represent leaves the expiry as it was.
            let grace_end = TimeDelta::from_std(grace)
                .ok()
                .and_then(|grace| now.checked_add_signed(grace))
                .map(time::micros);
            let expires_at = match (old.expires_at.map(time::utc), grace_end) {
                (Some(existing), Some(end)) => Some(existing.min(end)),
                (existing, end) => existing.or(end),
            };
            let mut next_old = old.clone();
            next_old.expires_at = expires_at.map(time::db);
            next_old.updated_at = time::db(now);
            update_row(&txn, &old, &next_old).await?;

            chain.append(&txn, created_event(&new, actor, now)?).await?;
            chain
                .append(
                    &txn,
                    NewEvent {
                        key_id: &old.id,
                        event_type: EventType::Rotated.as_str(),
                        actor_type: actor.kind.as_str(),
                        actor_id: &actor.id,
                        at: now,
                        changes: Changes::from([
                            ("expires_at", time_value(expires_at)),
                            ("replaced_by", json!(new.id)),
                        ]),
                    },
                )
                .await?;
            Ok(Outcome::Commit((
                key_from_row(new)?,
                key_from_row(next_old)?,
            )))
        }
        .await;
        finish(txn, result).await
    }

    async fn record_usage_inner(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        use api_keys::Column as C;
        // At most one write per key: keep each key's latest observation.
        let mut latest: BTreeMap<&str, &UsageRecord> = BTreeMap::new();
        for record in batch {
            let slot = latest.entry(record.key_id.as_str()).or_insert(record);
            if record.at > slot.at {
                *slot = record;
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        // One transaction: one commit (one fsync) per batch, not per key.
        let txn = self.db.begin().await?;
        let result: Result<Outcome<()>, StoreError> = async {
            for (key_id, record) in latest {
                let at = time::db(record.at);
                api_keys::Entity::update_many()
                    .col_expr(C::LastUsedAt, Expr::value(at))
                    .col_expr(
                        C::LastUsedIp,
                        Expr::value(cut(&record.ip, MAX_CLIENT_IP_CHARS)),
                    )
                    .col_expr(
                        C::LastUsedUserAgent,
                        Expr::value(cut(&record.user_agent, MAX_USER_AGENT_CHARS)),
                    )
                    .filter(C::Id.eq(key_id))
                    // Never move last-used data backwards (another replica may have
                    // written a newer observation).
                    .filter(
                        Condition::any()
                            .add(C::LastUsedAt.is_null())
                            .add(C::LastUsedAt.lt(at)),
                    )
                    .exec(&txn)
                    .await?;
            }
            Ok(Outcome::Commit(()))
        }
        .await;
        finish(txn, result).await
    }
}

/// How a transaction body wants its transaction to end.
enum Outcome<T> {
    /// Commit, then return the value.
    Commit(T),
    /// Nothing to write: roll back, then return the value.
    Rollback(T),
}

/// Ends `txn` as its body asked. On an error the transaction is rolled back
/// right away, so an SQLite write lock or a row lock is not held until the
/// pooled connection happens to be used again.
async fn finish<T>(
    txn: DatabaseTransaction,
    result: Result<Outcome<T>, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(Outcome::Commit(value)) => {
            txn.commit().await?;
            Ok(value)
        }
        Ok(Outcome::Rollback(value)) => {
            txn.rollback().await?;
            Ok(value)
        }
        Err(err) => {
            // The body's error is the one worth reporting; a failed rollback
            // ends with the connection anyway.
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

impl EventType {
    /// The stored name.
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Archived => "archived",
            Self::Reactivated => "reactivated",
            Self::Revoked => "revoked",
            Self::Deleted => "deleted",
            Self::Rotated => "rotated",
        }
    }

    /// Reads the stored name.
    fn from_stored(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "archived" => Self::Archived,
            "reactivated" => Self::Reactivated,
            "revoked" => Self::Revoked,
            "deleted" => Self::Deleted,
            "rotated" => Self::Rotated,
            _ => return None,
        })
    }
}

/// Runs a write transaction again (up to five times in all) when the database
/// rolled it back as the victim of a deadlock or serialization conflict. On
/// MySQL/MariaDB, the first writers of a new organization take gap locks that
/// can deadlock each other; the victim's retry finds the organization there.
async fn retry_conflicts<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    const ATTEMPTS: usize = 5;
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if error.is_conflict() && tries < ATTEMPTS => {
                tracing::debug!(%error, tries, "transaction lost a conflict; running it again");
                tries += 1;
            }
            result => return result,
        }
    }
}

fn revoked(what: &str) -> StoreError {
    StoreError::FailedPrecondition(format!("key is revoked and {what}"))
}

/// The key `id` of `org`; a key of another organization is `NotFound`.
async fn load_key<C: ConnectionTrait>(
    db: &C,
    org: &str,
    id: &KeyId,
) -> Result<api_keys::Model, StoreError> {
    api_keys::Entity::find_by_id(id.as_str().to_owned())
        .filter(api_keys::Column::OrganizationId.eq(org))
        .one(db)
        .await?
        .ok_or(StoreError::NotFound)
}

async fn insert_key<C: ConnectionTrait>(db: &C, row: &api_keys::Model) -> Result<(), StoreError> {
    // `reset_all` marks every column as set, so each one is inserted.
    let active = row.clone().into_active_model().reset_all();
    api_keys::Entity::insert(active)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Writes the columns in which `next` differs from `current`.
async fn update_row<C: ConnectionTrait>(
    db: &C,
    current: &api_keys::Model,
    next: &api_keys::Model,
) -> Result<(), StoreError> {
    let mut active = next.clone().into_active_model();
    let mut changed = false;
    for column in api_keys::Column::iter() {
        if current.get(column) != next.get(column) {
            active.reset(column);
            changed = true;
        }
    }
    if changed {
        api_keys::Entity::update(active)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The row of a new key.
fn new_row(key: &NewKey, now: DateTime<Utc>) -> Result<api_keys::Model, StoreError> {
    Ok(api_keys::Model {
        id: KeyId::generate().as_str().to_owned(),
        organization_id: key.organization_id.as_str().to_owned(),
        workspace_id: key.workspace_id.clone(),
        kind: key.secret.kind.as_str().to_owned(),
        environment: key.secret.environment.as_str().to_owned(),
        name: key.name.as_str().to_owned(),
        description: key.description.as_str().to_owned(),
        scopes: scopes_json(&key.scopes)?,
        metadata: metadata_json(&key.metadata)?,
        lookup_hash: key.secret.lookup_hash.to_hex(),
        prefix: key.secret.prefix.clone(),
        partial_key_hint: key.secret.partial_key_hint.clone(),
        disabled: false,
        created_at: time::db(now),
        updated_at: time::db(now),
        created_by_type: key.created_by.kind.as_str().to_owned(),
        created_by_id: key.created_by.id.clone(),
        user_id: key.user_id.clone(),
        service_account_id: key.service_account_id.clone(),
        expires_at: key.expires_at.map(time::db),
        last_used_at: None,
        last_used_ip: None,
        last_used_user_agent: None,
        archived_at: None,
        revoked_at: None,
        rotated_from_id: None,
    })
}

/// The `Created` event of a new key: its initial, non-secret fields. The
/// lookup hash and the partial hint stay out of the audit log.
fn created_event<'a>(
    row: &'a api_keys::Model,
    actor: &'a Actor,
    now: DateTime<Utc>,
) -> Result<NewEvent<'a>, StoreError> {
    let stored = |what: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| StoreError::Corrupt(format!("api key {}: {what}: {e}", row.id)))
    };
    let mut changes = Changes::from([
        ("name", json!(row.name)),
        ("description", json!(row.description)),
        ("kind", json!(row.kind)),
        ("environment", json!(row.environment)),
        ("prefix", json!(row.prefix)),
        ("scopes", stored("scopes", &row.scopes)?),
        ("metadata", stored("metadata", &row.metadata)?),
    ]);
    let optional = [
        ("workspace_id", &row.workspace_id),
        ("user_id", &row.user_id),
        ("service_account_id", &row.service_account_id),
        ("rotated_from_id", &row.rotated_from_id),
    ];
    for (field, value) in optional {
        if let Some(value) = value {
            changes.insert(field, json!(value));
        }
    }
    if row.expires_at.is_some() {
        changes.insert("expires_at", time_value(row.expires_at.map(time::utc)));
    }
    Ok(NewEvent {
        key_id: &row.id,
        event_type: EventType::Created.as_str(),
        actor_type: actor.kind.as_str(),
        actor_id: &actor.id,
        at: now,
        changes,
    })
}

/// Splits `limit + 1` fetched rows into a page and whether more exist, and
/// puts an ascending read back into newest-first order.
fn page_of<T>(mut rows: Vec<T>, limit: usize, ascending: bool) -> (Vec<T>, bool) {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    if ascending {
        rows.reverse();
    }
    (rows, has_more)
}

/// The SQL condition "status computed at `now` is `status`", following the
/// precedence REVOKED > ARCHIVED > EXPIRED > INACTIVE > ACTIVE of
/// `ApiKey::status`.
fn status_condition(status: KeyStatus, now: DateTime<Utc>) -> Condition {
    use api_keys::Column as C;
    let live = || {
        Condition::all()
            .add(C::RevokedAt.is_null())
            .add(C::ArchivedAt.is_null())
    };
    let unexpired = || {
        Condition::any()
            .add(C::ExpiresAt.is_null())
            .add(C::ExpiresAt.gt(time::db(now)))
    };
    match status {
        KeyStatus::Revoked => Condition::all().add(C::RevokedAt.is_not_null()),
        KeyStatus::Archived => Condition::all()
            .add(C::RevokedAt.is_null())
            .add(C::ArchivedAt.is_not_null()),
        KeyStatus::Expired => live().add(C::ExpiresAt.lte(time::db(now))),
        KeyStatus::Inactive => live().add(unexpired()).add(C::Disabled.eq(true)),
        KeyStatus::Active => live().add(unexpired()).add(C::Disabled.eq(false)),
    }
}

fn scopes_value(scopes: &Scopes) -> serde_json::Value {
    scopes.as_slice().iter().map(|s| s.as_str()).collect()
}

fn scopes_json(scopes: &Scopes) -> Result<String, StoreError> {
    serde_json::to_string(&scopes_value(scopes))
        .map_err(|e| StoreError::Corrupt(format!("scopes cannot be serialized: {e}")))
}

fn metadata_json(metadata: &Metadata) -> Result<String, StoreError> {
    serde_json::to_string(metadata.as_map())
        .map_err(|e| StoreError::Corrupt(format!("metadata cannot be serialized: {e}")))
}

/// A timestamp as a JSON value in event changes: RFC 3339 text, or null.
fn time_value(at: Option<DateTime<Utc>>) -> serde_json::Value {
    at.map_or(serde_json::Value::Null, |at| json!(time::rfc3339(at)))
}

/// At most `max` characters of an optional string.
fn cut(value: &Option<String>, max: usize) -> Option<String> {
    value.as_ref().map(|v| v.chars().take(max).collect())
}

fn key_from_row(row: api_keys::Model) -> Result<ApiKey, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("api key {}: {what}", row.id));
    let kind = KeyKind::from_stored(&row.kind).ok_or_else(|| corrupt("unknown kind"))?;
    let environment =
        Environment::from_stored(&row.environment).ok_or_else(|| corrupt("unknown environment"))?;
    let created_by_kind = ActorKind::from_stored(&row.created_by_type)
        .ok_or_else(|| corrupt("unknown created_by type"))?;
    let scopes: Vec<String> =
        serde_json::from_str(&row.scopes).map_err(|e| corrupt(&format!("scopes: {e}")))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&row.metadata).map_err(|e| corrupt(&format!("metadata: {e}")))?;
    Ok(ApiKey {
        id: KeyId::from_trusted(row.id),
        organization_id: row.organization_id,
        workspace_id: row.workspace_id,
        kind,
        environment,
        name: row.name,
        description: row.description,
        scopes: Scopes::from_trusted(scopes),
        metadata: Metadata::from_trusted(metadata),
        prefix: row.prefix,
        partial_key_hint: row.partial_key_hint,
        disabled: row.disabled,
        created_at: time::utc(row.created_at),
        updated_at: time::utc(row.updated_at),
        created_by: Actor {
            kind: created_by_kind,
            id: row.created_by_id,
        },
        user_id: row.user_id,
        service_account_id: row.service_account_id,
        expires_at: row.expires_at.map(time::utc),
        last_used_at: row.last_used_at.map(time::utc),
        last_used_ip: row.last_used_ip,
        last_used_user_agent: row.last_used_user_agent,
        archived_at: row.archived_at.map(time::utc),
        revoked_at: row.revoked_at.map(time::utc),
        rotated_from_id: row.rotated_from_id.map(KeyId::from_trusted),
    })
}

fn event_from_row(row: key_events::Model) -> Result<KeyEvent, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("key event {}: {what}", row.seq));
    let event_type =
        EventType::from_stored(&row.event_type).ok_or_else(|| corrupt("unknown event type"))?;
    let actor_kind =
        ActorKind::from_stored(&row.actor_type).ok_or_else(|| corrupt("unknown actor type"))?;
    let changes: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&row.changes).map_err(|e| corrupt(&format!("changes: {e}")))?;
    Ok(KeyEvent {
        seq: row.seq,
        organization_id: row.organization_id,
        key_id: KeyId::from_trusted(row.key_id),
        event_type,
        actor: Actor {
            kind: actor_kind,
            id: row.actor_id,
        },
        at: time::utc(row.at),
        changes: changes
            .into_iter()
            .map(|(field, value)| (field, value.to_string()))
            .collect(),
    })
}
