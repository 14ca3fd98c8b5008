//! Keys: reads, and every mutation as a body of the one write path
//! (`Store::write`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keyward_core::{
    Actor, ActorKind, AllowedCidrs, ApiKey, ApiKeySecret, Credits, CreditsSpent, Description,
    Environment, KeyId, KeyKind, KeyName, LookupHash, LookupHasher, Metadata, OrganizationId,
    Policy, RateLimits, Scopes,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, IntoActiveModel, Iterable, ModelTrait, QueryFilter,
    QuerySelect,
};
use serde_json::json;

use super::Store;
use super::feed::EventType;
use super::policy;
use crate::audit::Changes;
use crate::entity::{api_keys, keyward_settings};
use crate::error::{Error, StoreError};
use crate::time;

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
    /// What validations must also satisfy (the default restricts nothing).
    /// Credits are set by the write: their `set_at` is replaced by its time,
    /// and nothing of them is spent yet.
    pub policy: Policy,
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
    /// New IP allowlist (replaces the list; empty lifts the restriction).
    /// The rest of the key's policy stays as it is.
    pub allowed_cidrs: Option<AllowedCidrs>,
    /// New rate limits (replace the list; empty removes them). Counts in
    /// the current windows are not the store's: they stay as they are.
    pub rate_limits: Option<RateLimits>,
    /// `Some(Some(_))` sets new credits: their `set_at` is replaced by the
    /// time of the write, and what was spent starts again from zero (even
    /// when the values are those already set: an operator's top-up).
    /// `Some(None)` removes them (unlimited).
    pub credits: Option<Option<Credits>>,
}

/// Name of the setting holding the lookup-hasher fingerprint.
const HASHER_FINGERPRINT: &str = "lookup_hasher_fingerprint";

impl Store {
    /// Inserts a key and its `Created` event. Fails with `TooManyKeys` when
    /// the organization is full.
    pub async fn create_key(&self, key: NewKey) -> Result<ApiKey, StoreError> {
        let key = &key;
        self.write(
            key.organization_id.as_str(),
            &key.created_by,
            |tx| async move {
                tx.ensure_room_for_key().await?;
                let row = new_row(key, tx.now())?;
                insert_key(tx.txn(), &row).await?;
                tx.record(&row.id, EventType::Created, created_changes(&row)?);
                key_from_row(row)
            },
        )
        .await
    }

    /// A key of `org` by id.
    pub async fn get_key(&self, org: &str, id: &KeyId) -> Result<ApiKey, StoreError> {
        self.bounded(async { key_from_row(load_key(&self.db, org, id).await?) })
            .await
    }

    /// The key with this lookup hash, in any organization (the validation
    /// path). Runs on its own small pool (`StoreOptions::lookup_connections`).
    pub async fn find_by_lookup_hash(
        &self,
        hash: &LookupHash,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.bounded(async {
            let found = api_keys::Entity::find()
                .filter(api_keys::Column::LookupHash.eq(hash.to_hex()))
                .one(&self.lookups)
                .await?;
            found.map(key_from_row).transpose()
        })
        .await
    }

    /// Whether any key that can still validate (not deleted, not revoked)
    /// has rate limits or credits: what several replicas must share counts
    /// of (asked at startup).
    pub async fn has_metered_keys(&self) -> Result<bool, StoreError> {
        use api_keys::Column as C;
        self.bounded(async {
            // Credits are exactly the keys with a spending record; rate
            // limits show as their field of the policy's JSON (written only
            // when there are some; no value holds that quoted text).
            let metered = api_keys::Entity::find()
                .select_only()
                .column(C::Id)
                .filter(C::RevokedAt.is_null())
                .filter(
                    Condition::any()
                        .add(C::CreditsSetAt.is_not_null())
                        .add(C::Policy.like("%\"rate_limits\":%")),
                )
                .into_tuple::<String>()
                .one(&self.db)
                .await?;
            Ok(metered.is_some())
        })
        .await
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
        let patch = &patch;
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
            let mut next_policy = before.policy().clone();
            if let Some(cidrs) = patch
                .allowed_cidrs
                .clone()
                .filter(|c| *c != before.policy().allowed_cidrs)
            {
                // The audit log keeps both lists: an allowlist change is a
                // security change, worth reading without replaying history.
                changes.insert(
                    "previous_allowed_cidrs",
                    policy::cidrs_value(&before.policy().allowed_cidrs),
                );
                changes.insert("allowed_cidrs", policy::cidrs_value(&cidrs));
                next_policy.allowed_cidrs = cidrs;
            }
            if let Some(limits) = patch
                .rate_limits
                .clone()
                .filter(|l| *l != before.policy().rate_limits)
            {
                // Like the allowlist: both lists, for the audit log's reader.
                changes.insert(
                    "previous_rate_limits",
                    policy::rate_limits_value(&before.policy().rate_limits),
                );
                changes.insert("rate_limits", policy::rate_limits_value(&limits));
                next_policy.rate_limits = limits;
            }
            // New credits are always a change (a top-up to the same amount
            // restarts what was spent); removing none is not.
            if let Some(credits) = patch
                .credits
                .filter(|c| c.is_some() || before.policy().credits.is_some())
            {
                let credits = credits.map(|c| stamped(c, now));
                changes.insert(
                    "previous_credits",
                    policy::credits_value(before.policy().credits.as_ref()),
                );
                changes.insert("credits", policy::credits_value(credits.as_ref()));
                set_credits_spent(&mut next, credits.as_ref());
                next_policy.credits = credits;
            }
            next.policy = policy::to_column(&next_policy);
            next.updated_at = time::db(now);
            Ok((next, changes))
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
            let mut next = current.clone();
            let mut changes = Changes::new();
            if current.archived_at.is_none() {
                next.archived_at = Some(time::db(now));
                next.updated_at = time::db(now);
                changes.insert("archived_at", time_value(Some(now)));
            }
            Ok((next, changes))
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
            next.updated_at = time::db(now);
            Ok((next, changes))
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
            let mut next = current.clone();
            let mut changes = Changes::new();
            if current.revoked_at.is_none() {
                next.revoked_at = Some(time::db(now));
                next.updated_at = time::db(now);
                changes.insert("revoked_at", time_value(Some(now)));
            }
            Ok((next, changes))
        })
        .await
    }

    /// Deletes the key row; its events stay and a `Deleted` event is added.
    pub async fn delete_key(&self, org: &str, id: &KeyId, actor: &Actor) -> Result<(), StoreError> {
        self.write(org, actor, |tx| async move {
            let current = load_key(tx.txn(), org, id).await?;
            api_keys::Entity::delete_by_id(current.id.as_str())
                .exec(tx.txn())
                .await?;
            tx.record(&current.id, EventType::Deleted, Changes::new());
            Ok(())
        })
        .await
    }

    /// Inserts a new key with the secret `material`, made by `actor`, that
    /// copies the old key's fields as they are under the transaction's lock
    /// (name, description, scopes, metadata, workspace, user, service
    /// account; kind and environment, which never change), with
    /// `rotated_from_id = id`; sets the old key's expiry to
    /// `min(existing expiry, now + grace)`; and records `Created` on the new
    /// key and `Rotated` on the old, in one transaction. Revoked or archived
    /// old key: `FailedPrecondition`; a full organization: `TooManyKeys` (the
    /// old key counts until it is deleted). Returns (new key, updated old key).
    pub async fn rotate_key(
        &self,
        org: &str,
        id: &KeyId,
        material: KeyMaterial,
        actor: &Actor,
        grace: Duration,
    ) -> Result<(ApiKey, ApiKey), StoreError> {
        let material = &material;
        self.write(org, actor, |tx| async move {
            let old = load_key(tx.txn(), org, id).await?;
            if old.revoked_at.is_some() {
                return Err(revoked("cannot be rotated"));
            }
            if old.archived_at.is_some() {
                return Err(StoreError::FailedPrecondition(
                    "key is archived and cannot be rotated; reactivate it first".into(),
                )
                .into());
            }
            if material.kind.as_str() != old.kind
                || material.environment.as_str() != old.environment
            {
                return Err(StoreError::FailedPrecondition(
                    "a rotated key keeps its kind and environment".into(),
                )
                .into());
            }
            tx.ensure_room_for_key().await?;
            let now = tx.now();

            // The new key keeps the old key's policy. Its credits are what
            // the old key has left, as last recorded, set anew now: the new
            // key spends from that; the old key, during its grace period,
            // from what it had (see RotateKey's documentation).
            let old_key = key_from_row(old.clone())?;
            let mut policy = old_key.policy().clone();
            policy.credits = policy.credits.map(|credits| {
                let left = credits.remaining_in(credits.period_at(now), old_key.credits_spent);
                stamped(
                    Credits {
                        remaining: left,
                        ..credits
                    },
                    now,
                )
            });
            let mut new = api_keys::Model {
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
                policy: policy::to_column(&policy),
                ..old.clone()
            };
            set_credits_spent(&mut new, policy.credits.as_ref());
            insert_key(tx.txn(), &new).await?;

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
            update_row(tx.txn(), &old, &next_old).await?;

            tx.record(&new.id, EventType::Created, created_changes(&new)?);
            tx.record(
                &old.id,
                EventType::Rotated,
                Changes::from([
                    ("expires_at", time_value(expires_at)),
                    ("replaced_by", json!(new.id)),
                ]),
            );
            Ok((key_from_row(new)?, key_from_row(next_old)?))
        })
        .await
    }

    /// The shape of every single-key change: load the key under the
    /// organization's lock, let `change` decide the new row and the recorded
    /// changes, write both. No changes: nothing is recorded, so the write
    /// helper rolls back and the key is returned as it is.
    async fn mutate<F>(
        &self,
        org: &str,
        id: &KeyId,
        actor: &Actor,
        event_type: EventType,
        change: F,
    ) -> Result<ApiKey, StoreError>
    where
        F: Fn(&api_keys::Model, DateTime<Utc>) -> Result<(api_keys::Model, Changes), Error>,
    {
        let change = &change;
        self.write(org, actor, |tx| async move {
            let current = load_key(tx.txn(), org, id).await?;
            let (next, changes) = change(&current, tx.now())?;
            if changes.is_empty() {
                return key_from_row(current);
            }
            update_row(tx.txn(), &current, &next).await?;
            tx.record(&next.id, event_type, changes);
            key_from_row(next)
        })
        .await
    }
}

/// Records the hasher fingerprint on first use; afterwards `HasherMismatch`
/// if it differs.
pub(super) async fn check_hasher(db: &DatabaseConnection, fingerprint: &str) -> Result<(), Error> {
    keyward_settings::Entity::insert(keyward_settings::ActiveModel {
        name: Set(HASHER_FINGERPRINT.to_owned()),
        value: Set(fingerprint.to_owned()),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    let stored = keyward_settings::Entity::find_by_id(HASHER_FINGERPRINT.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| {
            Error::corrupt("the lookup-hasher fingerprint vanished after being stored")
        })?;
    if stored.value == fingerprint {
        Ok(())
    } else {
        Err(StoreError::HasherMismatch.into())
    }
}

fn revoked(what: &str) -> Error {
    StoreError::FailedPrecondition(format!("key is revoked and {what}")).into()
}

/// The key `id` of `org`; a key of another organization is `NotFound`.
async fn load_key<C: ConnectionTrait>(
    db: &C,
    org: &str,
    id: &KeyId,
) -> Result<api_keys::Model, Error> {
    api_keys::Entity::find_by_id(id.as_str().to_owned())
        .filter(api_keys::Column::OrganizationId.eq(org))
        .one(db)
        .await?
        .ok_or(Error::Store(StoreError::NotFound))
}

async fn insert_key<C: ConnectionTrait>(db: &C, row: &api_keys::Model) -> Result<(), Error> {
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
) -> Result<(), Error> {
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
fn new_row(key: &NewKey, now: DateTime<Utc>) -> Result<api_keys::Model, Error> {
    let policy = Policy {
        credits: key.policy.credits.map(|c| stamped(c, now)),
        ..key.policy.clone()
    };
    let mut row = api_keys::Model {
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
        policy: policy::to_column(&policy),
        credits_set_at: None,
        credits_period: None,
        credits_used: 0,
    };
    set_credits_spent(&mut row, policy.credits.as_ref());
    Ok(row)
}

/// `credits` set at `now`: a new setting.
fn stamped(credits: Credits, now: DateTime<Utc>) -> Credits {
    Credits {
        set_at: time::micros(now).timestamp_micros(),
        ..credits
    }
}

/// Starts the spending record of a new credits setting (nothing spent, in
/// the period it was set in), or clears it without credits.
fn set_credits_spent(row: &mut api_keys::Model, credits: Option<&Credits>) {
    row.credits_set_at = credits.map(|c| c.set_at);
    row.credits_period = credits.map(Credits::set_period);
    row.credits_used = 0;
}

/// The changes of a new key's `Created` event: its initial, non-secret
/// fields. The lookup hash and the partial hint stay out of the audit log.
fn created_changes(row: &api_keys::Model) -> Result<Changes, Error> {
    let stored = |what: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Error::corrupt(format!("api key {}: {what}: {e}", row.id)))
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
    if let Some(policy) = policy::from_column(&row.id, row.policy.as_deref())? {
        if !policy.allowed_cidrs.is_empty() {
            changes.insert("allowed_cidrs", policy::cidrs_value(&policy.allowed_cidrs));
        }
        if !policy.rate_limits.is_empty() {
            changes.insert(
                "rate_limits",
                policy::rate_limits_value(&policy.rate_limits),
            );
        }
        if policy.credits.is_some() {
            changes.insert("credits", policy::credits_value(policy.credits.as_ref()));
        }
    }
    Ok(changes)
}

fn scopes_value(scopes: &Scopes) -> serde_json::Value {
    scopes.as_slice().iter().map(|s| s.as_str()).collect()
}

fn scopes_json(scopes: &Scopes) -> Result<String, Error> {
    serde_json::to_string(&scopes_value(scopes))
        .map_err(|e| Error::corrupt(format!("scopes cannot be serialized: {e}")))
}

fn metadata_json(metadata: &Metadata) -> Result<String, Error> {
    serde_json::to_string(metadata.as_map())
        .map_err(|e| Error::corrupt(format!("metadata cannot be serialized: {e}")))
}

/// A timestamp as a JSON value in event changes: RFC 3339 text, or null.
fn time_value(at: Option<DateTime<Utc>>) -> serde_json::Value {
    at.map_or(serde_json::Value::Null, |at| json!(time::rfc3339(at)))
}

pub(super) fn key_from_row(row: api_keys::Model) -> Result<ApiKey, Error> {
    let corrupt = |what: &str| Error::corrupt(format!("api key {}: {what}", row.id));
    let kind = KeyKind::from_stored(&row.kind).ok_or_else(|| corrupt("unknown kind"))?;
    let environment =
        Environment::from_stored(&row.environment).ok_or_else(|| corrupt("unknown environment"))?;
    let created_by_kind = ActorKind::from_stored(&row.created_by_type)
        .ok_or_else(|| corrupt("unknown created_by type"))?;
    let scopes: Vec<String> =
        serde_json::from_str(&row.scopes).map_err(|e| corrupt(&format!("scopes: {e}")))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&row.metadata).map_err(|e| corrupt(&format!("metadata: {e}")))?;
    let policy = policy::from_column(&row.id, row.policy.as_deref())?;
    let credits_spent = match (row.credits_set_at, row.credits_period) {
        (Some(set_at), Some(period)) => CreditsSpent {
            set_at,
            period,
            used: u64::try_from(row.credits_used).unwrap_or(0),
        },
        _ => CreditsSpent::default(),
    };
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
        policy,
        credits_spent,
    })
}
