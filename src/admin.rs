//! `keyward.v1.KeyAdminService`: parses requests into domain values, calls the
//! store, and answers with wire types. Runs behind the auth layer, which puts
//! the calling admin key's [`Identity`] into every request's extensions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use keyward_auth::Identity;
use keyward_core::ValidationCode;
use keyward_core::{
    Actor, ActorKind, AllowedCidrs, ApiKey, ApiKeySecret, Credits, CreditsField, Description,
    Environment, KeyId, KeyKind, KeyName, LookupHasher, MAX_ALLOWED_CIDRS, MAX_METADATA_ENTRIES,
    MAX_RATE_LIMITS, Metadata, OptionalRef, OrganizationId, Policy, RateLimit, RateLimits,
    RefillInterval, Scopes,
};
use keyward_store::{
    EventQuery, KeyMaterial, KeyPatch, ListQuery, MAX_PAGE, NewKey, Store, UsagePoint, minute_start,
};
use tonic::{Request, Response, Status};

use self::keys::{Archive, Create, Delete, Keys, Reactivate, Revoke, Rotate, Update, Write};
use crate::convert::{self, from_timestamp};
use crate::error::{ApiError, PARSED, Violations};
use crate::pb::{self, key_admin_service_server::KeyAdminService};
use crate::validation::KeyValidator;

const DEFAULT_LIMIT: u32 = 20;
const MAX_YEAR: i32 = 9999;
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// GetKeyUsage's range when `from` is unset, and its longest range.
const DEFAULT_USAGE_RANGE: chrono::TimeDelta = chrono::TimeDelta::hours(24);
const MAX_USAGE_RANGE: chrono::TimeDelta = chrono::TimeDelta::days(31);
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
    "allowed_cidrs",
    "rate_limits",
    "credits",
];

/// The admin API over a store. Every change is also told to the validator,
/// so it shows in verdicts on this replica at once: the handlers reach the
/// store only through [`Keys`], whose one write path announces each change.
#[derive(Debug, Clone)]
pub struct AdminApi {
    keys: Keys,
    hasher: LookupHasher,
}

impl AdminApi {
    /// An admin API over `store`, hashing new keys with `hasher`, announcing
    /// its changes to `validator`.
    pub fn new(store: Store, hasher: LookupHasher, validator: Arc<KeyValidator>) -> Self {
        Self {
            keys: Keys::new(store, validator),
            hasher,
        }
    }

    /// The one path of the RPCs that act on one key by `id`: the caller and
    /// the parsed id (the shared prologue), then `write` of that id.
    async fn write_key<T, W: Write>(
        &self,
        request: &Request<T>,
        raw_id: &str,
        write: impl FnOnce(KeyId) -> W,
    ) -> Result<W::Output, Status> {
        let (caller, id) = caller_and_id(request, raw_id)?;
        Ok(self.keys.write(&caller, write(id)).await?)
    }
}

/// The admin API's only handle on the store. Reads pass through; a write is
/// a [`Write`] value, which names its store call and the [`Change`] it makes,
/// and [`Keys::write`] is the only way to run one: it runs the call and then
/// announces the change to this replica's validator, on every outcome. The
/// store is private to this module, so a handler cannot write without the
/// announcement, and a new mutation is a new `Write` (its `change` required).
///
/// [`Change`]: crate::validation::Change
mod keys {
    use std::sync::Arc;
    use std::time::Duration;

    use keyward_core::{ApiKey, KeyId};
    use keyward_store::{
        EventPage, EventQuery, KeyMaterial, KeyPage, KeyPatch, ListQuery, NewKey, Store,
        StoreError, UsagePoint,
    };

    use super::Caller;
    use crate::error::ApiError;
    use crate::startup::UNCOUNTED_REPLICAS;
    use crate::validation::{Change, KeyValidator};

    /// The store behind the admin API, and the validator its writes are
    /// announced to.
    #[derive(Debug, Clone)]
    pub(super) struct Keys {
        store: Store,
        validator: Arc<KeyValidator>,
    }

    /// One mutation: its store call and what it changes for cached verdicts.
    pub(super) trait Write: Send {
        /// What the store call returns.
        type Output;
        /// What the write changes, known before it runs (a new key's id is
        /// not needed: creation forgets unknown hashes).
        fn change(&self) -> Change<'_>;
        /// The store call, made by `caller`.
        fn run(
            self,
            store: &Store,
            caller: &Caller,
        ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
    }

    impl Keys {
        pub(super) fn new(store: Store, validator: Arc<KeyValidator>) -> Self {
            Self { store, validator }
        }

        /// Refuses to give a key rate limits or credits (`metered`) on a
        /// replica that would count them alone on a shared database
        /// ([`KeyValidator::refuses_metered_keys`]): FAILED_PRECONDITION.
        pub(super) fn check_metering(&self, metered: bool) -> Result<(), ApiError> {
            if metered && self.validator.refuses_metered_keys() {
                return Err(ApiError::FailedPrecondition(UNCOUNTED_REPLICAS.to_owned()));
            }
            Ok(())
        }

        /// Runs `write`, then announces its change. Also on failure and when
        /// this future is dropped mid-way: the outcome of a write that timed
        /// out or was cancelled is unknown, and a needless announcement
        /// costs one cache miss.
        pub(super) async fn write<W: Write>(
            &self,
            caller: &Caller,
            write: W,
        ) -> Result<W::Output, ApiError> {
            let announce = Announce {
                validator: &self.validator,
                created: write.change().created,
                key: write.change().key.cloned(),
            };
            let output = write.run(&self.store, caller).await;
            drop(announce);
            Ok(output?)
        }

        /// A key of the caller's organization.
        pub(super) async fn get(&self, caller: &Caller, id: &KeyId) -> Result<ApiKey, ApiError> {
            Ok(self.store.get_key(&caller.organization_id, id).await?)
        }

        /// A page of the caller's keys.
        pub(super) async fn list(
            &self,
            caller: &Caller,
            query: &ListQuery,
        ) -> Result<KeyPage, ApiError> {
            Ok(self.store.list_keys(&caller.organization_id, query).await?)
        }

        /// The usage counts of the caller's key `id` whose minute starts in
        /// `[from, to)` (unix seconds): NOT_FOUND for another organization's key.
        pub(super) async fn usage(
            &self,
            caller: &Caller,
            id: &KeyId,
            from: i64,
            to: i64,
        ) -> Result<Vec<UsagePoint>, ApiError> {
            // The key first: another organization's key is NOT_FOUND, like a missing one.
            self.store.get_key(&caller.organization_id, id).await?;
            Ok(self
                .store
                .usage_series(&caller.organization_id, id, from, to)
                .await?)
        }

        /// A page of the caller's audit log.
        pub(super) async fn events(
            &self,
            caller: &Caller,
            query: &EventQuery,
        ) -> Result<EventPage, ApiError> {
            Ok(self
                .store
                .list_events(&caller.organization_id, query)
                .await?)
        }
    }

    /// Announces a write's change when dropped: after the store call,
    /// whatever its outcome.
    struct Announce<'a> {
        validator: &'a KeyValidator,
        created: bool,
        key: Option<KeyId>,
    }

    impl Drop for Announce<'_> {
        fn drop(&mut self) {
            self.validator.announce(Change {
                created: self.created,
                key: self.key.as_ref(),
            });
        }
    }

    /// CreateKey.
    pub(super) struct Create(pub(super) NewKey);
    /// UpdateKey.
    pub(super) struct Update(pub(super) KeyId, pub(super) KeyPatch);
    /// ArchiveKey.
    pub(super) struct Archive(pub(super) KeyId);
    /// ReactivateKey.
    pub(super) struct Reactivate(pub(super) KeyId);
    /// RevokeKey.
    pub(super) struct Revoke(pub(super) KeyId);
    /// DeleteKey: its output is the deleted key's id.
    pub(super) struct Delete(pub(super) KeyId);
    /// RotateKey: its output is (new key, updated old key).
    pub(super) struct Rotate {
        pub(super) id: KeyId,
        pub(super) material: KeyMaterial,
        pub(super) grace: Duration,
    }

    impl Write for Create {
        type Output = ApiKey;
        fn change(&self) -> Change<'_> {
            Change::created()
        }
        async fn run(self, store: &Store, _: &Caller) -> Result<ApiKey, StoreError> {
            store.create_key(self.0).await
        }
    }

    impl Write for Update {
        type Output = ApiKey;
        fn change(&self) -> Change<'_> {
            Change::key(&self.0)
        }
        async fn run(self, store: &Store, by: &Caller) -> Result<ApiKey, StoreError> {
            store
                .update_key(&by.organization_id, &self.0, self.1, &by.actor)
                .await
        }
    }

    /// The lifecycle steps: same shape, one store method each.
    macro_rules! lifecycle {
        ($($write:ident => $method:ident),* $(,)?) => {$(
            impl Write for $write {
                type Output = ApiKey;
                fn change(&self) -> Change<'_> {
                    Change::key(&self.0)
                }
                async fn run(self, store: &Store, by: &Caller) -> Result<ApiKey, StoreError> {
                    store.$method(&by.organization_id, &self.0, &by.actor).await
                }
            }
        )*};
    }
    lifecycle!(Archive => archive_key, Reactivate => reactivate_key, Revoke => revoke_key);

    impl Write for Delete {
        type Output = KeyId;
        fn change(&self) -> Change<'_> {
            Change::key(&self.0)
        }
        async fn run(self, store: &Store, by: &Caller) -> Result<KeyId, StoreError> {
            store
                .delete_key(&by.organization_id, &self.0, &by.actor)
                .await?;
            Ok(self.0)
        }
    }

    impl Write for Rotate {
        type Output = (ApiKey, ApiKey);
        fn change(&self) -> Change<'_> {
            Change::rotated(&self.id)
        }
        async fn run(self, store: &Store, by: &Caller) -> Result<(ApiKey, ApiKey), StoreError> {
            store
                .rotate_key(
                    &by.organization_id,
                    &self.id,
                    self.material,
                    &by.actor,
                    self.grace,
                )
                .await
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

/// An IP allowlist: counted first (one violation over the cap), then each
/// range, a violation naming its index.
fn parse_allowed_cidrs(violations: &mut Violations, raw: &[String]) -> Option<AllowedCidrs> {
    if !violations.check_count("allowed_cidrs", raw.len(), MAX_ALLOWED_CIDRS, "CIDR ranges") {
        return None;
    }
    AllowedCidrs::parse(raw)
        .map_err(|(index, error)| match index {
            Some(i) => violations.add(format!("allowed_cidrs[{i}]"), error.description()),
            None => violations.add("allowed_cidrs", error.description()),
        })
        .ok()
}

/// Rate limits: counted first (one violation over the cap), then each limit
/// (a violation naming its index and field, `rate_limits[1].limit`), then
/// the list as a whole (unique names).
fn parse_rate_limits(violations: &mut Violations, raw: &[pb::RateLimit]) -> Option<RateLimits> {
    if !violations.check_count("rate_limits", raw.len(), MAX_RATE_LIMITS, "rate limits") {
        return None;
    }
    let field = |i: usize, field: keyward_core::RateLimitField| {
        format!("rate_limits[{i}].{}", field.as_str())
    };
    let mut limits = Vec::with_capacity(raw.len());
    for (i, limit) in raw.iter().enumerate() {
        let window = limit.duration.as_ref().and_then(convert::from_duration);
        match RateLimit::parse(&limit.name, limit.limit, window, limit.cost) {
            Ok(limit) => limits.push(limit),
            Err((bad, error)) => violations.add(field(i, bad), error.description()),
        }
    }
    if limits.len() < raw.len() {
        return None;
    }
    RateLimits::new(limits)
        .map_err(|(at, error)| match at {
            Some((i, bad)) => violations.add(field(i, bad), error.description()),
            None => violations.add("rate_limits", error.description()),
        })
        .ok()
}

/// Optional credits, set at `now`: `Some(None)` when unset (unlimited),
/// `None` when a field is bad (each named, `credits.remaining`).
/// `refills_at` is output only: ignored.
fn parse_credits(
    violations: &mut Violations,
    raw: Option<&pb::Credits>,
    now: DateTime<Utc>,
) -> Option<Option<Credits>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let field = |bad: CreditsField| format!("credits.{}", bad.as_str());
    let interval = parse_enum(
        violations,
        &field(CreditsField::RefillInterval),
        raw.refill_interval,
    );
    let interval_known = interval.is_some();
    let interval = match interval {
        Some(pb::RefillInterval::Daily) => Some(RefillInterval::Daily),
        Some(pb::RefillInterval::Monthly) => Some(RefillInterval::Monthly),
        Some(pb::RefillInterval::Unspecified) | None => None,
    };
    Credits::parse(
        raw.remaining,
        raw.refill_amount,
        interval,
        now.timestamp_micros(),
    )
    .map_err(|errors| {
        for (bad, error) in errors {
            // An unknown interval is already named: not again as missing.
            if interval_known || bad != CreditsField::RefillInterval {
                violations.add(field(bad), error.description());
            }
        }
    })
    .ok()
    .map(Some)
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

/// An optional timestamp field.
fn parse_time(
    violations: &mut Violations,
    field: &str,
    raw: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    match raw.map(from_timestamp) {
        Some(None) => {
            violations.add(field, "must be a valid timestamp");
            None
        }
        Some(at) => at,
        None => None,
    }
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
        let allowed_cidrs = parse_allowed_cidrs(&mut v, &req.allowed_cidrs);
        let rate_limits = parse_rate_limits(&mut v, &req.rate_limits);
        let credits = parse_credits(&mut v, req.credits.as_ref(), now);
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
            created_by: caller.actor.clone(),
            user_id: user_id.expect(PARSED),
            service_account_id: service_account_id.expect(PARSED),
            expires_at,
            policy: Policy {
                allowed_cidrs: allowed_cidrs.expect(PARSED),
                rate_limits: rate_limits.expect(PARSED),
                credits: credits.expect(PARSED),
            },
        };
        self.keys.check_metering(new_key.policy.is_metered())?;
        let key = self.keys.write(&caller, Create(new_key)).await?;
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
        let key = self.keys.get(&caller, &id).await?;
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
        let last_used_before =
            parse_time(&mut v, "last_used_before", req.last_used_before.as_ref());
        let used_since = parse_time(&mut v, "used_since", req.used_since.as_ref());
        let unused_since = parse_time(&mut v, "unused_since", req.unused_since.as_ref());
        if let (Some(used), Some(unused)) = (used_since, unused_since)
            && minute_start(used) >= minute_start(unused)
        {
            // Used since one minute but not since a later one: else nothing matches.
            v.add(
                "unused_since",
                "must be in a later minute than used_since when both are set",
            );
        }
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
            used_since,
            unused_since,
        };
        let page = self.keys.list(&caller, &query).await?;
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
                "allowed_cidrs" => {
                    patch.allowed_cidrs = parse_allowed_cidrs(&mut v, &req.allowed_cidrs);
                }
                "rate_limits" => {
                    patch.rate_limits = parse_rate_limits(&mut v, &req.rate_limits);
                }
                "credits" => patch.credits = parse_credits(&mut v, req.credits.as_ref(), now),
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
        let adds_meters = patch.rate_limits.as_ref().is_some_and(|l| !l.is_empty())
            || patch.credits.as_ref().is_some_and(Option::is_some);
        self.keys.check_metering(adds_meters)?;
        let key = self
            .keys
            .write(&caller, Update(id.expect(PARSED), patch))
            .await?;
        Ok(Response::new(pb::UpdateKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn archive_key(
        &self,
        request: Request<pb::ArchiveKeyRequest>,
    ) -> Result<Response<pb::ArchiveKeyResponse>, Status> {
        let key = self
            .write_key(&request, &request.get_ref().id, Archive)
            .await?;
        Ok(Response::new(pb::ArchiveKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn reactivate_key(
        &self,
        request: Request<pb::ReactivateKeyRequest>,
    ) -> Result<Response<pb::ReactivateKeyResponse>, Status> {
        let key = self
            .write_key(&request, &request.get_ref().id, Reactivate)
            .await?;
        Ok(Response::new(pb::ReactivateKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let key = self
            .write_key(&request, &request.get_ref().id, Revoke)
            .await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            api_key: api_key(key),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let id = self
            .write_key(&request, &request.get_ref().id, Delete)
            .await?;
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
        let old = self.keys.get(&caller, &id).await?;
        // Kind and environment never change, so reading them outside the
        // store's transaction is safe; every other field is copied there.
        let secret = ApiKeySecret::generate(old.kind, old.environment);
        let rotate = Rotate {
            id,
            material: KeyMaterial::new(&self.hasher, &secret),
            grace,
        };
        let (new_key, old_key) = self.keys.write(&caller, rotate).await?;
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
        let page = self.keys.events(&caller, &query).await?;
        let events: Vec<pb::KeyEvent> = page.items.into_iter().map(convert::key_event).collect();
        Ok(Response::new(pb::ListKeyEventsResponse {
            first_seq: events.first().map_or(0, |e| e.seq),
            last_seq: events.last().map_or(0, |e| e.seq),
            has_more: page.has_more,
            events,
        }))
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let to = parse_time(&mut v, "to", req.to.as_ref());
        let from = parse_time(&mut v, "from", req.from.as_ref());
        // The range is checked when both ends are valid (else they are reported).
        let times_valid = v.is_empty();
        let to = to.unwrap_or_else(Utc::now);
        let from = from.unwrap_or_else(|| {
            to.checked_sub_signed(DEFAULT_USAGE_RANGE)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        });
        if times_valid && from >= to {
            v.add("to", "must be after from");
        } else if times_valid && to - from > MAX_USAGE_RANGE {
            v.add(
                "from",
                format!(
                    "must be at most {} days before to",
                    MAX_USAGE_RANGE.num_days()
                ),
            );
        }
        let id = parse_id(&mut v, "id", &req.id);
        // Whole minutes: the range read starts at the minute of `from`.
        let (from, to_unix) = (minute_start(from), to.timestamp());
        v.finish()?;
        let id = id.expect(PARSED);
        // `to` is exclusive: a minute starting at `to` is not read, one
        // starting within its second is (its start is before `to`).
        let end = if to.timestamp_subsec_nanos() > 0 {
            to_unix + 1
        } else {
            to_unix
        };
        let rows = self.keys.usage(&caller, &id, from, end).await?;
        Ok(Response::new(usage_response(id, from, to, rows)))
    }
}

/// GetKeyUsage's answer: `rows` (by minute, then outcome) grouped by minute,
/// with totals by outcome.
fn usage_response(
    id: KeyId,
    from: i64,
    to: DateTime<Utc>,
    rows: Vec<UsagePoint>,
) -> pb::GetKeyUsageResponse {
    let code = |outcome: &str| {
        ValidationCode::from_name(outcome)
            .map_or(pb::ValidationCode::Unspecified, convert::validation_code)
    };
    let mut points: Vec<pb::KeyUsagePoint> = Vec::new();
    let mut totals: Vec<pb::OutcomeCount> = Vec::new();
    let mut total: i64 = 0;
    let mut current = None;
    for row in rows {
        let count = i64::try_from(row.calls).unwrap_or(i64::MAX);
        let code = code(&row.outcome);
        total = total.saturating_add(count);
        match totals.iter_mut().find(|t| t.code == code as i32) {
            Some(sum) => sum.count = sum.count.saturating_add(count),
            None => totals.push(pb::OutcomeCount {
                code: code.into(),
                count,
            }),
        }
        if current != Some(row.minute_start) {
            current = Some(row.minute_start);
            points.push(pb::KeyUsagePoint {
                minute: Some(prost_types::Timestamp {
                    seconds: row.minute_start,
                    nanos: 0,
                }),
                counts: Vec::new(),
            });
        }
        let point = points.last_mut().expect("a point for this minute");
        match point.counts.iter_mut().find(|c| c.code == code as i32) {
            Some(same) => same.count = same.count.saturating_add(count),
            None => point.counts.push(pb::OutcomeCount {
                code: code.into(),
                count,
            }),
        }
    }
    totals.sort_by_key(|t| t.code);
    for point in &mut points {
        point.counts.sort_by_key(|c| c.code);
    }
    pb::GetKeyUsageResponse {
        id: id.to_string(),
        from: Some(prost_types::Timestamp {
            seconds: from,
            nanos: 0,
        }),
        to: Some(convert::timestamp(to)),
        points,
        totals,
        total,
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::ValidationCode;
    use keyward_store::testing::{self, Backend};

    use super::*;
    use crate::error::ApiError;
    use crate::validation::ClientInfo;
    use crate::validation::test_support::{create_key, validator};

    #[tokio::test]
    async fn every_write_is_announced_whatever_its_outcome() {
        testing::run(Backend::Sqlite, |store| async move {
            let validator = Arc::new(validator(&store));
            let keys = Keys::new(store.clone(), Arc::clone(&validator));
            let (key, secret) = create_key(&store).await;
            let caller = Caller {
                organization_id: key.organization_id.clone(),
                actor: key.created_by.clone(),
            };
            let check = || validator.validate(secret.expose(), &[], ClientInfo::default());
            assert_eq!(
                check().await.expect("a verdict").code,
                ValidationCode::Valid
            );

            // Shown at once, with no feed follower running.
            keys.write(&caller, Revoke(key.id.clone()))
                .await
                .expect("revoked");
            assert_eq!(
                check().await.expect("a verdict").code,
                ValidationCode::Revoked
            );

            // A failed write is announced too: its outcome may be unknown.
            let lookups = validator.database_lookups();
            let refused = keys
                .write(&caller, Reactivate(key.id.clone()))
                .await
                .expect_err("a revoked key cannot be reactivated");
            assert!(
                matches!(refused, ApiError::FailedPrecondition(_)),
                "{refused:?}"
            );
            check().await.expect("a verdict");
            assert_eq!(validator.database_lookups(), lookups + 1, "read again");
        })
        .await;
    }
}
