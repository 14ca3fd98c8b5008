//! The validation path shared by `ValidateKey` and the admin API's auth layer:
//! parse (shape and checksum, no lookup) → BLAKE3 lookup hash → database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use keyward_auth::{
    Denial, Identity, ValidationFuture, ValidationRequest, Validator, ValidatorError, Verdict,
};
use keyward_core::{ApiKey, ApiKeySecret, KeyKind, LookupHasher, Scope, ValidationCode};
use keyward_store::{Store, StoreError, UsageRecord};

use crate::error::ApiError;

/// How long a caller may reuse a verdict. Every change is visible to the next
/// lookup on this server, so this bounds how stale a caller's copy can be.
pub const CACHE_HINT: Duration = Duration::from_secs(1);

/// The outcome of validating one presented key.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The verdict.
    pub code: ValidationCode,
    /// The key, when one was found and may be described to the caller
    /// (VALID and INSUFFICIENT_SCOPE).
    pub key: Option<ApiKey>,
}

/// Where a presented key came from, recorded as last-used data on success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    /// The client's IP address.
    pub ip: Option<&'a str>,
    /// The client's user agent.
    pub user_agent: Option<&'a str>,
}

/// Validates presented keys against the store.
#[derive(Debug)]
pub struct KeyValidator {
    store: Store,
    hasher: LookupHasher,
    usage: UsageRecorder,
}

impl KeyValidator {
    /// A validator over `store`, hashing with `hasher`.
    pub fn new(store: Store, hasher: LookupHasher) -> Self {
        Self {
            store,
            hasher,
            usage: UsageRecorder::default(),
        }
    }

    /// Looks a well-formed key up: `None` if it is unknown.
    async fn lookup(&self, secret: &ApiKeySecret) -> Result<Option<ApiKey>, StoreError> {
        let key = self
            .store
            .find_by_lookup_hash(&self.hasher.hash(secret))
            .await?;
        // The prefix says which kind the key was issued as; a mismatch means a
        // forged prefix on a real body, which cannot happen without the body.
        Ok(key.filter(|key| key.kind == secret.kind()))
    }

    /// Validates a product (standard) key with the scopes it must hold.
    pub async fn validate(
        &self,
        raw: &str,
        required: &[Scope],
        client: ClientInfo<'_>,
    ) -> Result<Validation, ApiError> {
        let Ok(secret) = ApiKeySecret::parse(raw) else {
            return Ok(Validation {
                code: ValidationCode::Malformed,
                key: None,
            });
        };
        let Some(key) = self.lookup(&secret).await? else {
            return Ok(Validation {
                code: ValidationCode::NotFound,
                key: None,
            });
        };
        let code = key.verdict(required, Utc::now());
        if code == ValidationCode::Valid {
            self.usage.record(&key, client);
        }
        let described = matches!(
            code,
            ValidationCode::Valid | ValidationCode::InsufficientScope
        );
        Ok(Validation {
            code,
            key: described.then_some(key),
        })
    }

    /// Writes pending last-used data to the database.
    pub async fn flush_usage(&self) {
        self.usage.flush(&self.store).await;
    }
}

/// Authenticates admin API calls: an active admin key is allowed as its
/// organization; a valid standard key is forbidden; anything else is unknown.
#[derive(Debug, Clone)]
pub struct AdminValidator(pub Arc<KeyValidator>);

impl Validator for AdminValidator {
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        Box::pin(async move {
            let Ok(secret) = ApiKeySecret::parse(request.key) else {
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let key = self.0.lookup(&secret).await.map_err(|error| {
                tracing::warn!(%error, "admin authentication failed: store error");
                ValidatorError::unavailable(error.to_string())
            })?;
            let Some(key) = key else {
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let now = Utc::now();
            if key.authorizes_admin(now) {
                let client = ClientInfo {
                    ip: request.client_ip,
                    user_agent: request.user_agent,
                };
                self.0.usage.record(&key, client);
                return Ok(Verdict::Allow(identity(&key)));
            }
            if key.kind == KeyKind::Standard && key.verdict(&[], now) == ValidationCode::Valid {
                return Ok(Verdict::Deny(Denial::Forbidden));
            }
            Ok(Verdict::Deny(Denial::Unauthenticated))
        })
    }
}

/// The identity a key grants, as the auth layer hands it to handlers.
pub fn identity(key: &ApiKey) -> Identity {
    Identity {
        key_id: key.id.to_string(),
        organization_id: key.organization_id.clone(),
        workspace_id: key.workspace_id.clone(),
        name: key.name.clone(),
        scopes: key
            .scopes
            .as_slice()
            .iter()
            .map(ToString::to_string)
            .collect(),
        metadata: key.metadata.as_map().clone(),
        user_id: key.user_id.clone(),
        service_account_id: key.service_account_id.clone(),
    }
}

/// Coalesces last-used data in memory: at most one write per key per flush.
#[derive(Debug, Default)]
struct UsageRecorder {
    pending: Mutex<HashMap<String, UsageRecord>>,
}

impl UsageRecorder {
    fn record(&self, key: &ApiKey, client: ClientInfo<'_>) {
        let record = UsageRecord {
            key_id: key.id.clone(),
            at: Utc::now(),
            ip: client.ip.filter(|ip| !ip.is_empty()).map(str::to_owned),
            user_agent: client
                .user_agent
                .filter(|ua| !ua.is_empty())
                .map(str::to_owned),
        };
        self.lock().insert(key.id.to_string(), record);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UsageRecord>> {
        // A panic while holding the lock cannot leave the map inconsistent:
        // every critical section is a single insert or swap.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn flush(&self, store: &Store) {
        let batch: Vec<UsageRecord> = std::mem::take(&mut *self.lock()).into_values().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(error) = store.record_usage(&batch).await {
            tracing::warn!(%error, keys = batch.len(), "could not record key usage; will retry");
            let mut pending = self.lock();
            for record in batch {
                // Keep a newer observation made while the write was failing.
                pending.entry(record.key_id.to_string()).or_insert(record);
            }
        }
    }
}
