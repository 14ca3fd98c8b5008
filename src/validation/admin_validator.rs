//! [`AdminValidator`]: the admin API's [`Validator`] for the auth layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_auth::{
    Denial, ValidationFuture, ValidationRequest, Validator, ValidatorError, Verdict,
};
use keyward_core::{KeyKind, KeyStatus, PresentedKey, ValidationCode};

use super::{ClientInfo, KeyValidator, identity};
use crate::metrics::ValidationPath;

/// Authenticates admin API calls: an active admin key is allowed as its
/// organization; a valid standard key is forbidden; anything else is unknown.
#[derive(Debug, Clone)]
pub struct AdminValidator(pub Arc<KeyValidator>);

impl Validator for AdminValidator {
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        Box::pin(async move {
            // Counted as `in_process` validations, by the key's own verdict
            // (a valid standard key here is refused PERMISSION_DENIED).
            let metrics = &self.0.metrics;
            let path = ValidationPath::InProcess;
            let Ok(presented) = PresentedKey::parse(request.key) else {
                metrics.verdict(path, ValidationCode::Malformed, Duration::ZERO);
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let start = Instant::now();
            let mut at = start;
            let key = self.0.lookup(presented, &mut at).await.map_err(|error| {
                metrics.error(path);
                tracing::warn!(%error, "admin authentication unavailable");
                ValidatorError::unavailable(error.to_string())
            })?;
            let took = at.saturating_duration_since(start);
            let Some(key) = key else {
                metrics.verdict(path, ValidationCode::NotFound, took);
                return Ok(Verdict::Deny(Denial::Unauthenticated));
            };
            let now = self.0.clock.utc(at);
            metrics.verdict(path, status_code(key.status(now)), took);
            if key.authorizes_admin(now) {
                // An admin key's allowlist binds the admin API too.
                if !key.policy().admits(request.client_ip) {
                    return Ok(Verdict::Deny(Denial::IpNotAllowed));
                }
                let ip = request.client_ip.map(|ip| ip.to_canonical().to_string());
                let client = ClientInfo {
                    ip: ip.as_deref(),
                    address: request.client_ip,
                    user_agent: request.user_agent,
                    path,
                    cost: None,
                    idempotency_key: None,
                };
                self.0.usage.record(
                    &key,
                    ValidationCode::Valid,
                    client,
                    at,
                    self.0.clock.minute_start(at),
                );
                return Ok(Verdict::Allow(identity(&key)));
            }
            // A standard key is forbidden here whatever its allowlist says:
            // the verdict is asked without an address restriction.
            if key.kind == KeyKind::Standard && key.status(now) == KeyStatus::Active {
                return Ok(Verdict::Deny(Denial::Forbidden));
            }
            Ok(Verdict::Deny(Denial::Unauthenticated))
        })
    }
}

/// A key's status as a validation code, whatever its kind (an active admin
/// key is `valid` here, where ValidateKey says `not_found`).
fn status_code(status: KeyStatus) -> ValidationCode {
    match status {
        KeyStatus::Active => ValidationCode::Valid,
        KeyStatus::Inactive => ValidationCode::Inactive,
        KeyStatus::Archived => ValidationCode::Archived,
        KeyStatus::Expired => ValidationCode::Expired,
        KeyStatus::Revoked => ValidationCode::Revoked,
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{ApiKeySecret, Environment};
    use keyward_store::testing::{self, Backend};

    use super::*;
    use crate::validation::Change;
    use crate::validation::test_support::{
        create_admin_key, create_key, create_limited_key, validator,
    };

    fn ask(key: &str) -> ValidationRequest<'_> {
        ValidationRequest {
            key,
            required_scopes: &[],
            client_ip: Some([10, 0, 0, 1].into()),
            user_agent: None,
            idempotency_key: None,
        }
    }

    #[tokio::test]
    async fn an_admin_keys_allowlist_binds_the_admin_api() {
        testing::run(Backend::Sqlite, |store| async move {
            let admin = AdminValidator(Arc::new(validator(&store)));
            let (_, secret) = create_limited_key(&store, KeyKind::Admin, &["10.0.0.0/8"]).await;
            let from = |client_ip: Option<std::net::IpAddr>| ValidationRequest {
                client_ip,
                ..ask(secret.expose())
            };
            assert!(matches!(
                admin.validate(from(Some([10, 1, 2, 3].into()))).await,
                Ok(Verdict::Allow(_))
            ));
            for outside in [Some([192, 0, 2, 1].into()), None] {
                assert_eq!(
                    admin.validate(from(outside)).await.ok(),
                    Some(Verdict::Deny(Denial::IpNotAllowed)),
                    "{outside:?}"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn admin_keys_allowed_standard_keys_forbidden_others_unknown() {
        testing::run(Backend::Sqlite, |store| async move {
            let admin = AdminValidator(Arc::new(validator(&store)));
            let (admin_key, admin_secret) = create_admin_key(&store).await;
            let Ok(Verdict::Allow(identity)) = admin.validate(ask(admin_secret.expose())).await
            else {
                panic!("an active admin key is allowed");
            };
            assert_eq!(identity.key_id, admin_key.id.as_str());
            assert_eq!(identity.organization_id, "acme");
            assert_eq!(identity.environment, Environment::Live);
            assert_eq!(identity.expires_at, admin_key.expires_at);
            assert_eq!(admin.0.usage.pending(), 1, "its use is noted");

            let (_, standard) = create_key(&store).await;
            assert_eq!(
                admin.validate(ask(standard.expose())).await.ok(),
                Some(Verdict::Deny(Denial::Forbidden))
            );
            let unknown = ApiKeySecret::generate(KeyKind::Admin, Environment::Live);
            for key in [unknown.expose(), "not a key"] {
                assert_eq!(
                    admin.validate(ask(key)).await.ok(),
                    Some(Verdict::Deny(Denial::Unauthenticated))
                );
            }

            store
                .revoke_key("acme", &admin_key.id, &admin_key.created_by)
                .await
                .expect("revoked");
            admin.0.announce(Change::key(&admin_key.id));
            assert_eq!(
                admin.validate(ask(admin_secret.expose())).await.ok(),
                Some(Verdict::Deny(Denial::Unauthenticated))
            );
        })
        .await;
    }
}
