//! `keyward.v1.KeyAdminService`: parses requests into domain values, calls the
//! store, and answers with wire types. Runs behind the auth layer, which puts
//! the calling admin key's [`Identity`] into every request's extensions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use keyward_auth::Identity;
use keyward_core::{
    Actor, ActorKind, ApiKey, ApiKeySecret, Description, Environment, KeyId, KeyKind, KeyName,
    LookupHasher, MAX_METADATA_ENTRIES, Metadata, OptionalRef, OrganizationId, Scopes,
};
use keyward_store::{EventQuery, KeyMaterial, KeyPatch, ListQuery, MAX_PAGE, NewKey, Store};
use tonic::{Request, Response, Status};

use crate::convert::{self, from_timestamp};
use crate::error::{ApiError, PARSED, Violations};
use crate::pb::{self, key_admin_service_server::KeyAdminService};
use crate::validation::KeyValidator;

const DEFAULT_LIMIT: u32 = 20;
const MAX_YEAR: i32 = 9999;
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Most entries of ListKeys' `statuses` and of an update mask (each names one
/// of a handful of values; more is an attack, answered with one violation).
const MAX_STATUSES: usize = 16;
const MAX_MASK_PATHS: usize = 16;
const UPDATABLE: &[&str] = &[
    "name",
    "description",
    "scopes",
    "metadata",
    "expires_at",
    "status",
];

/// The admin API over a store. Every change is also told to the validator,
/// so it shows in verdicts on this replica at once.
#[derive(Debug, Clone)]
pub struct AdminApi {
    store: Store,
    hasher: LookupHasher,
    validator: Arc<KeyValidator>,
}

impl AdminApi {
    /// An admin API over `store`, hashing new keys with `hasher`.
    pub fn new(store: Store, hasher: LookupHasher, validator: Arc<KeyValidator>) -> Self {
        Self {
            store,
            hasher,
            validator,
        }
    }
}

/// The authenticated caller of an admin RPC.
struct Caller {
    organization_id: String,
    actor: Actor,
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    // The auth layer inserts the identity; without it the service is misconfigured.
    let identity = request
        .extensions()
        .get::<Identity>()
        .ok_or_else(|| Status::unauthenticated("unauthenticated"))?;
    Ok(Caller {
        organization_id: identity.organization_id.clone(),
        actor: Actor {
            kind: ActorKind::ApiKey,
            id: identity.key_id.clone(),
        },
    })
}

/// The caller and the key id of a request that acts on one key.
fn caller_and_id<T>(request: &Request<T>, raw_id: &str) -> Result<(Caller, KeyId), Status> {
    let caller = caller(request)?;
    let mut v = Violations::default();
    let id = parse_id(&mut v, "id", raw_id);
    v.finish()?;
    Ok((caller, id.expect(PARSED)))
}

fn parse_id(violations: &mut Violations, field: &str, raw: &str) -> Option<KeyId> {
    violations.check(field, KeyId::parse(raw))
}

fn parse_limit(violations: &mut Violations, limit: Option<i32>) -> u32 {
    match limit {
        None => DEFAULT_LIMIT,
        Some(n) => match u32::try_from(n) {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                violations.add("limit", format!("must be between 1 and {MAX_PAGE}"));
                DEFAULT_LIMIT
            }
        },
    }
}

fn parse_scopes(violations: &mut Violations, field: &str, raw: &[String]) -> Option<Scopes> {
    Scopes::parse(raw)
        .map_err(|(index, error)| match index {
            Some(i) => violations.add(format!("{field}[{i}]"), error.description()),
            None => violations.add(field, error.description()),
        })
        .ok()
}

fn parse_metadata(
    violations: &mut Violations,
    raw: &std::collections::HashMap<String, String>,
) -> Option<Metadata> {
    if !violations.check_count("metadata", raw.len(), MAX_METADATA_ENTRIES, "entries") {
        return None;
    }
    Metadata::parse(raw)
        .map_err(|(key, error)| match key {
            Some(key) => violations.add(format!("metadata[{key:?}]"), error.description()),
            None => violations.add("metadata", error.description()),
        })
        .ok()
}

/// An optional future expiry; `None` in the request means no expiry.
fn parse_expiry(
    violations: &mut Violations,
    raw: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let at = match raw.map(from_timestamp) {
        None => return None,
        Some(None) => {
            violations.add("expires_at", "must be a valid timestamp");
            return None;
        }
        Some(Some(at)) => at,
    };
    if at <= now {
        violations.add("expires_at", "must be in the future");
    } else if at.year() > MAX_YEAR {
        // Every backend stores it: MySQL's DATETIME ends with year 9999.
        violations.add(
            "expires_at",
            format!("must be before the year {}", MAX_YEAR + 1),
        );
    }
    Some(at)
}

fn parse_enum<E: TryFrom<i32>>(violations: &mut Violations, field: &str, raw: i32) -> Option<E> {
    E::try_from(raw)
        .map_err(|_| violations.add(field, format!("unknown value {raw}")))
        .ok()
}

fn api_key(key: ApiKey) -> Option<pb::ApiKey> {
    Some(convert::api_key(key, Utc::now()))
}

#[tonic::async_trait]
impl KeyAdminService for AdminApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::default();
        let name = v.check("name", KeyName::parse(&req.name));
        let description = v.check("description", Description::parse(&req.description));
        let scopes = parse_scopes(&mut v, "scopes", &req.scopes);
        let metadata = parse_metadata(&mut v, &req.metadata);
        let workspace_id = v.check("workspace_id", OptionalRef::parse(&req.workspace_id));
        let user_id = v.check("user_id", OptionalRef::parse(&req.user_id));
        let service_account_id = v.check(
            "service_account_id",
            OptionalRef::parse(&req.service_account_id),
        );
        let environment = match parse_enum(&mut v, "environment", req.environment) {
            Some(pb::Environment::Test) => Environment::Test,
            _ => Environment::Live,
        };
        let kind = match parse_enum(&mut v, "kind", req.kind) {
            Some(pb::KeyKind::Admin) => KeyKind::Admin,
            _ => KeyKind::Standard,
        };
        let expires_at = parse_expiry(&mut v, req.expires_at.as_ref(), now);
        v.finish()?;

        let secret = ApiKeySecret::generate(kind, environment);
        let new_key = NewKey {
            organization_id: OrganizationId::parse(&caller.organization_id)
                .map_err(|e| ApiError::Internal(format!("stored organization id: {e}")))?,
            workspace_id: workspace_id.expect(PARSED),
            name: name.expect(PARSED),
            description: description.expect(PARSED),
            scopes: scopes.expect(PARSED),
            metadata: metadata.expect(PARSED),
            secret: KeyMaterial::new(&self.hasher, &secret),
            created_by: caller.actor,
            user_id: user_id.expect(PARSED),
            service_account_id: service_account_id.expect(PARSED),
            expires_at,
        };
        let key = self
            .store
            .create_key(new_key)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(key_id = %key.id, organization_id = %key.organization_id, "key created");
        Ok(Response::new(pb::CreateKeyResponse {
            api_key: api_key(key),
            secret: secret.expose().to_owned(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let (caller, id) = caller_and_id(&request, &request.get_ref().id)?;
        let key = self
            .store
            .get_key(&caller.organization_id, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let limit = parse_limit(&mut v, req.limit);
        if !req.after_id.is_empty() && !req.before_id.is_empty() {
            v.add("before_id", "must not be set together with after_id");
        }
        let after_id = (!req.after_id.is_empty())
            .then(|| parse_id(&mut v, "after_id", &req.after_id))
            .flatten();
        let before_id = (!req.before_id.is_empty())
            .then(|| parse_id(&mut v, "before_id", &req.before_id))
            .flatten();
        let mut statuses = Vec::new();
        let counted = v.check_count("statuses", req.statuses.len(), MAX_STATUSES, "statuses");
        for (i, raw) in req.statuses.iter().enumerate().filter(|_| counted) {
            let field = format!("statuses[{i}]");
            if let Some(status) = parse_enum::<pb::KeyStatus>(&mut v, &field, *raw) {
                match convert::status_from_wire(status) {
                    Some(status) => statuses.push(status),
                    None => v.add(field, "must not be KEY_STATUS_UNSPECIFIED"),
                }
            }
        }
        let workspace_id = v.check("workspace_id", OptionalRef::parse(&req.workspace_id));
        let created_by_id = v.check("created_by_id", OptionalRef::parse(&req.created_by_id));
        let user_id = v.check("user_id", OptionalRef::parse(&req.user_id));
        let service_account_id = v.check(
            "service_account_id",
            OptionalRef::parse(&req.service_account_id),
        );
        let last_used_before = match req.last_used_before.as_ref().map(from_timestamp) {
            Some(None) => {
                v.add("last_used_before", "must be a valid timestamp");
                None
            }
            Some(at) => at,
            None => None,
        };
        v.finish()?;

        let query = ListQuery {
            limit,
            after_id,
            before_id,
            statuses,
            include_archived: req.include_archived,
            workspace_id: workspace_id.expect(PARSED),
            created_by_id: created_by_id.expect(PARSED),
            user_id: user_id.expect(PARSED),
            service_account_id: service_account_id.expect(PARSED),
            last_used_before,
        };
        let page = self
            .store
            .list_keys(&caller.organization_id, &query)
            .await
            .map_err(ApiError::from)?;
        let now = Utc::now();
        let keys: Vec<pb::ApiKey> = page
            .items
            .into_iter()
            .map(|key| convert::api_key(key, now))
            .collect();
        Ok(Response::new(pb::ListKeysResponse {
            first_id: keys.first().map(|k| k.id.clone()).unwrap_or_default(),
            last_id: keys.last().map(|k| k.id.clone()).unwrap_or_default(),
            has_more: page.has_more,
            keys,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::default();
        let id = parse_id(&mut v, "id", &req.id);
        let paths = req.update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                format!("must name at least one of {}", UPDATABLE.join(", ")),
            );
        }
        let mut patch = KeyPatch::default();
        let counted = v.check_count("update_mask.paths", paths.len(), MAX_MASK_PATHS, "paths");
        for (i, path) in paths.iter().enumerate().filter(|_| counted) {
            match path.as_str() {
                "name" => patch.name = v.check("name", KeyName::parse(&req.name)),
                "description" => {
                    patch.description =
                        v.check("description", Description::parse(&req.description));
                }
                "scopes" => patch.scopes = parse_scopes(&mut v, "scopes", &req.scopes),
                "metadata" => patch.metadata = parse_metadata(&mut v, &req.metadata),
                "expires_at" => {
                    patch.expires_at = Some(parse_expiry(&mut v, req.expires_at.as_ref(), now));
                }
                "status" => match parse_enum(&mut v, "status", req.status) {
                    Some(pb::KeyStatus::Active) => patch.disabled = Some(false),
                    Some(pb::KeyStatus::Inactive) => patch.disabled = Some(true),
                    Some(_) => v.add("status", "must be KEY_STATUS_ACTIVE or KEY_STATUS_INACTIVE"),
                    None => {}
                },
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "unknown field {other:?}; updatable: {}",
                        UPDATABLE.join(", ")
                    ),
                ),
            }
        }
        v.finish()?;
        let key = self
            .store
            .update_key(
                &caller.organization_id,
                &id.expect(PARSED),
                patch,
                &caller.actor,
            )
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&key.id);
        Ok(Response::new(pb::UpdateKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn archive_key(
        &self,
        request: Request<pb::ArchiveKeyRequest>,
    ) -> Result<Response<pb::ArchiveKeyResponse>, Status> {
        let (caller, id) = caller_and_id(&request, &request.get_ref().id)?;
        let key = self
            .store
            .archive_key(&caller.organization_id, &id, &caller.actor)
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&key.id);
        Ok(Response::new(pb::ArchiveKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn reactivate_key(
        &self,
        request: Request<pb::ReactivateKeyRequest>,
    ) -> Result<Response<pb::ReactivateKeyResponse>, Status> {
        let (caller, id) = caller_and_id(&request, &request.get_ref().id)?;
        let key = self
            .store
            .reactivate_key(&caller.organization_id, &id, &caller.actor)
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&key.id);
        Ok(Response::new(pb::ReactivateKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let (caller, id) = caller_and_id(&request, &request.get_ref().id)?;
        let key = self
            .store
            .revoke_key(&caller.organization_id, &id, &caller.actor)
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&key.id);
        Ok(Response::new(pb::RevokeKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let (caller, id) = caller_and_id(&request, &request.get_ref().id)?;
        self.store
            .delete_key(&caller.organization_id, &id, &caller.actor)
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&id);
        Ok(Response::new(pb::DeleteKeyResponse {
            id: id.to_string(),
            deleted: true,
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let id = parse_id(&mut v, "id", &req.id);
        let grace = match req.grace_period {
            None => DEFAULT_GRACE,
            Some(d) => match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
                (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => {
                    let grace = Duration::new(seconds, nanos);
                    if grace > MAX_GRACE {
                        v.add("grace_period", "must be at most 365 days");
                    }
                    grace
                }
                _ => {
                    v.add("grace_period", "must be a non-negative duration");
                    DEFAULT_GRACE
                }
            },
        };
        v.finish()?;
        let id = id.expect(PARSED);
        let old = self
            .store
            .get_key(&caller.organization_id, &id)
            .await
            .map_err(ApiError::from)?;
        // Kind and environment never change, so reading them outside the
        // store's transaction is safe; every other field is copied there.
        let secret = ApiKeySecret::generate(old.kind, old.environment);
        let (new_key, old_key) = self
            .store
            .rotate_key(
                &caller.organization_id,
                &id,
                KeyMaterial::new(&self.hasher, &secret),
                &caller.actor,
                grace,
            )
            .await
            .map_err(ApiError::from)?;
        self.validator.invalidate(&old_key.id);
        self.validator.key_created();
        tracing::info!(key_id = %new_key.id, rotated_from = %old_key.id, "key rotated");
        Ok(Response::new(pb::RotateKeyResponse {
            api_key: api_key(new_key),
            secret: secret.expose().to_owned(),
            previous_key: api_key(old_key),
        }))
    }

    async fn list_key_events(
        &self,
        request: Request<pb::ListKeyEventsRequest>,
    ) -> Result<Response<pb::ListKeyEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let limit = parse_limit(&mut v, req.limit);
        if req.after_seq.is_some() && req.before_seq.is_some() {
            v.add("before_seq", "must not be set together with after_seq");
        }
        for (field, seq) in [("after_seq", req.after_seq), ("before_seq", req.before_seq)] {
            if seq.is_some_and(|seq| seq < 0) {
                v.add(field, "must not be negative");
            }
        }
        let key_id = (!req.key_id.is_empty())
            .then(|| parse_id(&mut v, "key_id", &req.key_id))
            .flatten();
        v.finish()?;
        let query = EventQuery {
            limit,
            after_seq: req.after_seq,
            before_seq: req.before_seq,
            key_id,
        };
        let page = self
            .store
            .list_events(&caller.organization_id, &query)
            .await
            .map_err(ApiError::from)?;
        let events: Vec<pb::KeyEvent> = page.items.into_iter().map(convert::key_event).collect();
        Ok(Response::new(pb::ListKeyEventsResponse {
            first_seq: events.first().map_or(0, |e| e.seq),
            last_seq: events.last().map_or(0, |e| e.seq),
            has_more: page.has_more,
            events,
        }))
    }
}
