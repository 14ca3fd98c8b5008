//! The full life of a key through every admin RPC, checked through ValidateKey.

use std::time::Duration;

use keyward::pb;
use tonic::Code;

use crate::e2e_test;
use crate::helpers::{CLIENT_IP, TestApp, USER_AGENT, eventually, record_secret, with_key};

async fn validate(app: &TestApp, key: &str, scopes: &[&str]) -> pb::ValidateKeyResponse {
    app.validate(key, scopes).await
}

fn code(response: &pb::ValidateKeyResponse) -> pb::ValidationCode {
    response.code()
}

e2e_test!(full_lifecycle, |app| {
    let mut admin = app.admin();
    let created = app
        .create_key("orders service")
        .scopes(&["orders:*", "billing:read"])
        .workspace("wrk_1")
        .with(|request| {
            request.description = "talks to orders".into();
            request.metadata = [("team".to_owned(), "payments".to_owned())].into();
            request.user_id = "user_42".into();
        })
        .await;
    let key = created.key;
    let secret = created.secret;
    assert!(secret.starts_with("sk_live_"));
    assert_eq!(key.prefix, secret[..12]);
    assert_eq!(
        key.partial_key_hint,
        format!("{}...{}", &secret[..12], &secret[secret.len() - 4..])
    );
    assert_eq!(key.status(), pb::KeyStatus::Active);
    assert_eq!(key.scopes, vec!["billing:read", "orders:*"]);
    assert_eq!(key.organization_id, "acme");
    let creator = key.created_by.clone().expect("created_by is set");
    assert_eq!(creator.r#type(), pb::ActorType::ApiKey);

    // Validate: valid, with wildcards; missing scopes are INSUFFICIENT_SCOPE.
    let verdict = validate(app, &secret, &["orders:read"]).await;
    assert!(verdict.valid);
    assert_eq!(verdict.key_id, key.id);
    assert_eq!(verdict.organization_id, "acme");
    assert_eq!(verdict.workspace_id, "wrk_1");
    assert_eq!(
        verdict.metadata.get("team").map(String::as_str),
        Some("payments")
    );
    assert!(verdict.cache_ttl.is_some());
    let verdict = validate(app, &secret, &["admin:write"]).await;
    assert!(!verdict.valid);
    assert_eq!(code(&verdict), pb::ValidationCode::InsufficientScope);

    // Last-used data becomes visible through GetKey after a flush.
    let used = eventually(Duration::from_secs(5), || {
        let mut admin = app.admin();
        let id = key.id.clone();
        async move {
            let got = admin
                .get_key(app.acme(pb::GetKeyRequest { id }))
                .await
                .ok()?
                .into_inner()
                .api_key?;
            got.last_used_at.is_some().then_some(got)
        }
    })
    .await
    .expect("last_used_at is recorded within a few flushes");
    assert_eq!(used.last_used_ip, CLIENT_IP);
    assert_eq!(used.last_used_user_agent, USER_AGENT);

    // Update: scopes, then disable → INACTIVE, then enable again.
    let updated = admin
        .update_key(app.acme(pb::UpdateKeyRequest {
            id: key.id.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["scopes".into(), "name".into()],
            }),
            scopes: vec!["reports:read".into()],
            name: "reports service".into(),
            ..Default::default()
        }))
        .await
        .expect("UpdateKey succeeds")
        .into_inner()
        .api_key
        .expect("the key is returned");
    assert_eq!(updated.scopes, vec!["reports:read"]);
    assert_eq!(updated.name, "reports service");
    assert_eq!(
        updated.description, "talks to orders",
        "fields outside the mask stay"
    );
    assert_eq!(
        code(&validate(app, &secret, &["orders:read"]).await),
        pb::ValidationCode::InsufficientScope
    );
    let disable = |status: pb::KeyStatus| pb::UpdateKeyRequest {
        id: key.id.clone(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["status".into()],
        }),
        status: status.into(),
        ..Default::default()
    };
    admin
        .update_key(app.acme(disable(pb::KeyStatus::Inactive)))
        .await
        .expect("disable");
    assert_eq!(
        code(&validate(app, &secret, &[]).await),
        pb::ValidationCode::Inactive
    );
    admin
        .update_key(app.acme(disable(pb::KeyStatus::Active)))
        .await
        .expect("enable");
    assert!(validate(app, &secret, &[]).await.valid);

    // Archive: validation fails with ARCHIVED at once; archiving again is a no-op.
    let archived = admin
        .archive_key(app.acme(pb::ArchiveKeyRequest { id: key.id.clone() }))
        .await
        .expect("ArchiveKey succeeds")
        .into_inner()
        .api_key
        .expect("the key is returned");
    assert_eq!(archived.status(), pb::KeyStatus::Archived);
    assert!(archived.archived_at.is_some());
    assert_eq!(
        code(&validate(app, &secret, &[]).await),
        pb::ValidationCode::Archived
    );
    admin
        .archive_key(app.acme(pb::ArchiveKeyRequest { id: key.id.clone() }))
        .await
        .expect("archiving twice is fine");

    // Reactivate: valid again.
    let reactivated = admin
        .reactivate_key(app.acme(pb::ReactivateKeyRequest { id: key.id.clone() }))
        .await
        .expect("ReactivateKey succeeds")
        .into_inner()
        .api_key
        .expect("the key is returned");
    assert_eq!(reactivated.status(), pb::KeyStatus::Active);
    assert!(validate(app, &secret, &[]).await.valid);

    // Rotate with a grace period: both keys work; the new one copies the old.
    let rotated = admin
        .rotate_key(app.acme(pb::RotateKeyRequest {
            id: key.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .expect("RotateKey succeeds")
        .into_inner();
    record_secret(&rotated.secret);
    let new_key = rotated.api_key.expect("the new key is returned");
    let previous = rotated.previous_key.expect("the old key is returned");
    assert_eq!(new_key.rotated_from_id, key.id);
    assert_eq!(new_key.name, "reports service");
    assert_eq!(new_key.scopes, vec!["reports:read"]);
    assert_eq!(new_key.workspace_id, "wrk_1");
    assert_eq!(new_key.user_id, "user_42");
    assert_ne!(rotated.secret, secret);
    assert!(previous.expires_at.is_some(), "the old key now expires");
    assert!(
        validate(app, &secret, &[]).await.valid,
        "old key works during its grace"
    );
    assert!(
        validate(app, &rotated.secret, &[]).await.valid,
        "new key works"
    );

    // Rotating with no grace ends the old key now.
    let again = admin
        .rotate_key(app.acme(pb::RotateKeyRequest {
            id: new_key.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        }))
        .await
        .expect("RotateKey with zero grace succeeds")
        .into_inner();
    record_secret(&again.secret);
    assert_eq!(
        code(&validate(app, &rotated.secret, &[]).await),
        pb::ValidationCode::Expired
    );
    assert!(validate(app, &again.secret, &[]).await.valid);

    // Revoke: never valid again; reactivate and update are refused.
    let newest = again.api_key.expect("the newest key").id;
    app.revoke(&newest).await;
    assert_eq!(
        code(&validate(app, &again.secret, &[]).await),
        pb::ValidationCode::Revoked
    );
    let refused = admin
        .reactivate_key(app.acme(pb::ReactivateKeyRequest { id: newest.clone() }))
        .await
        .expect_err("a revoked key cannot be reactivated");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refused = admin
        .update_key(app.acme(pb::UpdateKeyRequest {
            id: newest.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
            name: "renamed".into(),
            ..Default::default()
        }))
        .await
        .expect_err("a revoked key cannot be updated");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // Delete: NOT_FOUND afterwards; the audit events stay.
    let deleted = admin
        .delete_key(app.acme(pb::DeleteKeyRequest { id: newest.clone() }))
        .await
        .expect("DeleteKey succeeds")
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(deleted.id, newest);
    let gone = admin
        .get_key(app.acme(pb::GetKeyRequest { id: newest.clone() }))
        .await
        .expect_err("a deleted key is gone");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        code(&validate(app, &again.secret, &[]).await),
        pb::ValidationCode::NotFound
    );
    let events = app.list_events(&app.acme_key, &newest).await;
    let types: Vec<pb::KeyEventType> = events.iter().map(pb::KeyEvent::r#type).collect();
    assert_eq!(
        types,
        vec![
            pb::KeyEventType::Deleted,
            pb::KeyEventType::Revoked,
            pb::KeyEventType::Created
        ],
        "newest first, the deleted key's history kept"
    );

    // The first key's history, newest first, one event per change.
    let history = app.list_events(&app.acme_key, &key.id).await;
    let types: Vec<pb::KeyEventType> = history.iter().map(pb::KeyEvent::r#type).collect();
    assert_eq!(
        types,
        vec![
            pb::KeyEventType::Rotated,
            pb::KeyEventType::Reactivated,
            pb::KeyEventType::Archived,
            pb::KeyEventType::Updated,
            pb::KeyEventType::Updated,
            pb::KeyEventType::Updated,
            pb::KeyEventType::Created,
        ]
    );
    assert!(history.iter().all(|e| e.organization_id == "acme"));
});

e2e_test!(expiry_and_kinds, |app| {
    let mut admin = app.admin();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(600);
    let created = app
        .create_key("short lived")
        .test_environment()
        .expires_at(soon)
        .await;
    assert!(created.secret.starts_with("sk_test_"));
    // Valid until `soon`; a slow database may already have passed it.
    let first = code(&validate(app, &created.secret, &[]).await);
    assert!(
        first == pb::ValidationCode::Valid
            || (first == pb::ValidationCode::Expired && chrono::Utc::now() >= soon),
        "a key is valid until it expires, got {first:?}"
    );
    let expired = eventually(Duration::from_secs(5), || async {
        (code(&validate(app, &created.secret, &[]).await) == pb::ValidationCode::Expired)
            .then_some(())
    })
    .await;
    assert!(expired.is_some(), "the key expires");

    // Admin keys never validate as product keys.
    let admin_key = app.create_key("second admin").admin().await;
    assert!(admin_key.secret.starts_with("sk_admin_"));
    assert_eq!(
        code(&validate(app, &admin_key.secret, &[]).await),
        pb::ValidationCode::NotFound
    );
    assert_eq!(
        code(&validate(app, &app.acme_key, &[]).await),
        pb::ValidationCode::NotFound
    );
    // ...but they work on the admin API.
    admin
        .get_key(with_key(
            &admin_key.secret,
            pb::GetKeyRequest { id: created.id },
        ))
        .await
        .expect("a created admin key can call the admin API");

    // Malformed and unknown keys.
    assert_eq!(
        code(&validate(app, "not a key", &[]).await),
        pb::ValidationCode::Malformed
    );
    let mut typo = created.secret.clone().into_bytes();
    let last = typo.len() - 10;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ASCII");
    assert_eq!(
        code(&validate(app, &typo, &[]).await),
        pb::ValidationCode::Malformed
    );
    let unknown = keyward_core::ApiKeySecret::generate(
        keyward_core::KeyKind::Standard,
        keyward_core::Environment::Live,
    );
    assert_eq!(
        code(&validate(app, unknown.expose(), &[]).await),
        pb::ValidationCode::NotFound
    );
});
