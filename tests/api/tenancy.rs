//! Organizations are isolated from each other, and the admin API accepts only
//! an active admin key of the caller's organization.

use std::collections::HashSet;

use keyward::pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::e2e_test;
use crate::helpers::{CreatedKey, TestApp, record_secret, with_key};

/// Every KeyAdminService RPC. A new RPC must be added here (the service
/// descriptor is checked against this list) and given a tenancy case: the
/// exhaustive matches in [`Rpc::per_key`] and [`call`] make sure of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Create,
    Get,
    List,
    Update,
    Archive,
    Reactivate,
    Revoke,
    Delete,
    Rotate,
    ListEvents,
    Usage,
}

impl Rpc {
    const ALL: [Rpc; 11] = [
        Rpc::Create,
        Rpc::Get,
        Rpc::List,
        Rpc::Update,
        Rpc::Archive,
        Rpc::Reactivate,
        Rpc::Revoke,
        Rpc::Delete,
        Rpc::Rotate,
        Rpc::ListEvents,
        Rpc::Usage,
    ];

    /// The method's name in the service descriptor.
    fn method(self) -> &'static str {
        match self {
            Rpc::Create => "CreateKey",
            Rpc::Get => "GetKey",
            Rpc::List => "ListKeys",
            Rpc::Update => "UpdateKey",
            Rpc::Archive => "ArchiveKey",
            Rpc::Reactivate => "ReactivateKey",
            Rpc::Revoke => "RevokeKey",
            Rpc::Delete => "DeleteKey",
            Rpc::Rotate => "RotateKey",
            Rpc::ListEvents => "ListKeyEvents",
            Rpc::Usage => "GetKeyUsage",
        }
    }

    /// Whether the RPC acts on one key (tried by globex on acme's keys in
    /// `other_organizations_keys_are_not_found_and_unchanged`), or on the
    /// caller's organization (tried by globex in
    /// `lists_show_only_the_callers_organization`).
    fn per_key(self) -> bool {
        match self {
            Rpc::Create | Rpc::List => false,
            Rpc::Get
            | Rpc::Update
            | Rpc::Archive
            | Rpc::Reactivate
            | Rpc::Revoke
            | Rpc::Delete
            | Rpc::Rotate
            | Rpc::ListEvents
            | Rpc::Usage => true,
        }
    }
}

/// The RPCs that act on one key.
fn per_key_rpcs() -> impl Iterator<Item = Rpc> {
    Rpc::ALL.into_iter().filter(|rpc| rpc.per_key())
}

#[test]
fn every_admin_rpc_has_a_tenancy_case() {
    use prost::Message;

    let descriptors = prost_types::FileDescriptorSet::decode(keyward::pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let service = descriptors
        .file
        .iter()
        .filter(|file| file.package() == "keyward.v1")
        .flat_map(|file| &file.service)
        .find(|service| service.name() == "KeyAdminService")
        .expect("keyward.v1.KeyAdminService is described");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    for method in &methods {
        assert!(
            Rpc::ALL.iter().any(|rpc| rpc.method() == *method),
            "KeyAdminService.{method} has no tenancy case: add it to `Rpc` in tests/api/tenancy.rs"
        );
    }
    for rpc in Rpc::ALL {
        assert!(
            methods.contains(&rpc.method()),
            "{rpc:?} ({}) is not a KeyAdminService method",
            rpc.method()
        );
    }
}

/// Calls `rpc` with the admin credential `key`, on key `id` if it acts on
/// one; the ids of the keys a success shows (listed, created, or named by the
/// events listed) are returned so the caller can check them.
fn none<T>(_: T) -> Vec<String> {
    Vec::new()
}

async fn call(app: &TestApp, key: &str, rpc: Rpc, id: &str) -> Result<Vec<String>, Status> {
    let mut admin = app.admin();
    let id = id.to_owned();
    match rpc {
        Rpc::Create => admin
            .create_key(with_key(key, app.create_key("tenancy probe").request()))
            .await
            .map(|response| {
                let response = response.into_inner();
                record_secret(&response.secret);
                response.api_key.map(|key| key.id).into_iter().collect()
            }),
        Rpc::List => admin
            .list_keys(with_key(
                key,
                pb::ListKeysRequest {
                    limit: Some(1000),
                    include_archived: true,
                    ..Default::default()
                },
            ))
            .await
            .map(|response| {
                response
                    .into_inner()
                    .keys
                    .into_iter()
                    .map(|k| k.id)
                    .collect()
            }),
        Rpc::Get => admin
            .get_key(with_key(key, pb::GetKeyRequest { id }))
            .await
            .map(none),
        Rpc::Update => admin
            .update_key(with_key(
                key,
                pb::UpdateKeyRequest {
                    id,
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".into(), "scopes".into(), "status".into()],
                    }),
                    name: "taken over".into(),
                    scopes: vec!["*".into()],
                    status: pb::KeyStatus::Inactive.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(none),
        Rpc::Archive => admin
            .archive_key(with_key(key, pb::ArchiveKeyRequest { id }))
            .await
            .map(none),
        Rpc::Reactivate => admin
            .reactivate_key(with_key(key, pb::ReactivateKeyRequest { id }))
            .await
            .map(none),
        Rpc::Revoke => admin
            .revoke_key(with_key(key, pb::RevokeKeyRequest { id }))
            .await
            .map(none),
        Rpc::Delete => admin
            .delete_key(with_key(key, pb::DeleteKeyRequest { id }))
            .await
            .map(none),
        Rpc::Rotate => admin
            .rotate_key(with_key(
                key,
                pb::RotateKeyRequest {
                    id,
                    grace_period: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                },
            ))
            .await
            .map(|response| {
                record_secret(&response.get_ref().secret);
                Vec::new()
            }),
        Rpc::ListEvents => admin
            .list_key_events(with_key(
                key,
                pb::ListKeyEventsRequest {
                    key_id: id,
                    limit: Some(1000),
                    ..Default::default()
                },
            ))
            .await
            .map(|response| {
                let events = response.into_inner().events;
                events.into_iter().map(|event| event.key_id).collect()
            }),
        Rpc::Usage => admin
            .get_key_usage(with_key(
                key,
                pb::GetKeyUsageRequest {
                    id,
                    ..Default::default()
                },
            ))
            .await
            .map(|response| vec![response.into_inner().id]),
    }
}

/// The key as acme sees it, without usage data (which validation changes).
async fn acme_view(app: &TestApp, id: &str) -> pb::ApiKey {
    let mut key = app
        .admin()
        .get_key(app.acme(pb::GetKeyRequest { id: id.to_owned() }))
        .await
        .expect("acme still sees its key")
        .into_inner()
        .api_key
        .expect("the key is returned");
    key.last_used_at = None;
    key.last_used_ip.clear();
    key.last_used_user_agent.clear();
    key
}

async fn verdict(app: &TestApp, secret: &str) -> pb::ValidationCode {
    app.validation()
        .validate_key(pb::ValidateKeyRequest {
            key: secret.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ValidateKey answers")
        .into_inner()
        .code()
}

e2e_test!(
    other_organizations_keys_are_not_found_and_unchanged,
    |app| {
        let expiry = chrono::Utc::now() + chrono::Duration::days(30);
        let full = || {
            app.create_key("orders service")
                .scopes(&["orders:*"])
                .workspace("wrk_acme")
                .expires_at(expiry)
                .with(|request| {
                    request.description = "belongs to acme".into();
                    request.metadata = [("team".to_owned(), "payments".to_owned())].into();
                })
        };
        // An active key, and an archived one (so ReactivateKey would show too).
        let CreatedKey {
            key: active,
            secret: active_secret,
            ..
        } = full().await;
        let CreatedKey {
            key: archived,
            secret: archived_secret,
            ..
        } = full().await;
        app.archive(&archived.id).await;

        // What an id that exists nowhere looks like to globex.
        let unknown = keyward_core::KeyId::generate().to_string();

        for (key, secret, code) in [
            (&active, &active_secret, pb::ValidationCode::Valid),
            (&archived, &archived_secret, pb::ValidationCode::Archived),
        ] {
            let before = acme_view(app, &key.id).await;
            let acme_events = app.list_events(&app.acme_key, "").await;
            assert_eq!(verdict(app, secret).await, code);
            for rpc in per_key_rpcs() {
                let outcome = call(app, &app.globex_key, rpc, &key.id).await;
                let reference = call(app, &app.globex_key, rpc, &unknown).await;
                match (outcome, rpc) {
                    (Err(status), _) => {
                        assert_eq!(
                            status.code(),
                            Code::NotFound,
                            "{rpc:?} by globex on {}: {status:?}",
                            before.status().as_str_name()
                        );
                        let reference = reference.expect_err("an unknown id is an error as well");
                        assert_eq!(
                            (status.code(), status.message()),
                            (reference.code(), reference.message()),
                            "{rpc:?}: another organization's key looks exactly like an unknown one"
                        );
                        assert!(
                            !status.message().contains(&key.id),
                            "{rpc:?}: the message does not echo the id"
                        );
                    }
                    // A list filtered by a key id may answer with an empty page
                    // instead, as long as it cannot be told from an unknown id.
                    (Ok(listed), Rpc::ListEvents) => {
                        assert!(listed.is_empty(), "globex sees acme's events: {listed:?}");
                        assert!(reference.expect("an unknown key id also lists").is_empty());
                    }
                    (Ok(_), _) => panic!(
                        "{rpc:?} by globex on acme's {} key succeeded",
                        before.status().as_str_name()
                    ),
                }
                assert_eq!(
                    acme_view(app, &key.id).await,
                    before,
                    "{rpc:?} by globex changed acme's key"
                );
                assert_eq!(
                    app.list_events(&app.acme_key, "").await,
                    acme_events,
                    "{rpc:?} by globex wrote an event for acme"
                );
                assert_eq!(
                    verdict(app, secret).await,
                    code,
                    "{rpc:?} by globex changed the verdict"
                );
            }
            // The fields that matter most, once more by name (the whole record was compared above).
            let after = acme_view(app, &key.id).await;
            assert_eq!(after.status(), before.status());
            assert_eq!(after.name, before.name);
            assert_eq!(after.scopes, before.scopes);
            assert_eq!(after.updated_at, before.updated_at);
            assert_eq!(after.archived_at, before.archived_at);
            assert_eq!(after.revoked_at, before.revoked_at);
            assert_eq!(after.expires_at, before.expires_at);
        }
        // Globex created nothing and wrote nothing by trying.
        assert!(
            app.list_keys(&app.globex_key)
                .await
                .iter()
                .all(|k| k.organization_id == "globex")
        );
        assert!(
            app.list_events(&app.globex_key, "")
                .await
                .iter()
                .all(|e| e.organization_id == "globex")
        );
        assert_eq!(
            app.list_keys(&app.globex_key).await.len(),
            1,
            "only globex's own admin key"
        );
        assert_eq!(
            app.list_events(&app.globex_key, "").await.len(),
            1,
            "only the CREATED event of globex's admin key"
        );

        // The check runs both ways: acme cannot touch globex's key either.
        let CreatedKey {
            id: theirs,
            secret: theirs_secret,
            ..
        } = app.create_key("globex key").by(&app.globex_key).await;
        for rpc in [Rpc::Get, Rpc::Revoke, Rpc::Delete] {
            let status = call(app, &app.acme_key, rpc, &theirs)
                .await
                .expect_err("acme cannot act on globex's key");
            assert_eq!(status.code(), Code::NotFound, "{rpc:?} by acme");
        }
        assert_eq!(
            verdict(app, &theirs_secret).await,
            pb::ValidationCode::Valid
        );
    }
);

e2e_test!(lists_show_only_the_callers_organization, |app| {
    let mut acme_ids = HashSet::new();
    for name in ["acme one", "acme two", "acme three"] {
        acme_ids.insert(app.create_key(name).await.id);
    }
    let mut globex_ids = HashSet::new();
    for name in ["globex one", "globex two"] {
        globex_ids.insert(app.create_key(name).by(&app.globex_key).await.id);
    }
    // Archived keys and more event types, in both organizations.
    let acme_archived = acme_ids.iter().next().cloned().expect("a key");
    app.admin()
        .archive_key(app.acme(pb::ArchiveKeyRequest { id: acme_archived }))
        .await
        .expect("archive works");
    let globex_archived = globex_ids.iter().next().cloned().expect("a key");
    app.admin()
        .archive_key(app.globex(pb::ArchiveKeyRequest {
            id: globex_archived,
        }))
        .await
        .expect("archive works");

    let acme_keys = app.list_keys(&app.acme_key).await;
    let globex_keys = app.list_keys(&app.globex_key).await;
    assert!(
        acme_keys.iter().all(|k| k.organization_id == "acme"),
        "{acme_keys:?}"
    );
    assert!(
        globex_keys.iter().all(|k| k.organization_id == "globex"),
        "{globex_keys:?}"
    );
    let acme_listed: HashSet<String> = acme_keys.iter().map(|k| k.id.clone()).collect();
    let globex_listed: HashSet<String> = globex_keys.iter().map(|k| k.id.clone()).collect();
    assert!(acme_listed.is_disjoint(&globex_listed));
    assert!(acme_listed.is_superset(&acme_ids));
    assert!(globex_listed.is_superset(&globex_ids));
    // Each org has its created keys plus its bootstrap admin key, nothing else.
    assert_eq!(acme_listed.len(), acme_ids.len() + 1);
    assert_eq!(globex_listed.len(), globex_ids.len() + 1);

    // Filters do not reach across either: globex filtering by acme's creator.
    let acme_creator = acme_keys
        .iter()
        .find(|k| acme_ids.contains(&k.id))
        .and_then(|k| k.created_by.clone())
        .expect("created_by is set")
        .id;
    let filtered = app
        .admin()
        .list_keys(app.globex(pb::ListKeysRequest {
            created_by_id: acme_creator,
            include_archived: true,
            ..Default::default()
        }))
        .await
        .expect("ListKeys succeeds")
        .into_inner();
    assert!(
        filtered.keys.is_empty(),
        "globex sees keys made by acme's admin key: {:?}",
        filtered.keys
    );

    let acme_events = app.list_events(&app.acme_key, "").await;
    let globex_events = app.list_events(&app.globex_key, "").await;
    assert!(!acme_events.is_empty() && !globex_events.is_empty());
    assert!(
        acme_events.iter().all(|e| e.organization_id == "acme"),
        "{acme_events:?}"
    );
    assert!(
        globex_events.iter().all(|e| e.organization_id == "globex"),
        "{globex_events:?}"
    );
    assert!(
        globex_events
            .iter()
            .all(|e| !acme_listed.contains(&e.key_id))
    );
    assert!(
        acme_events
            .iter()
            .all(|e| !globex_listed.contains(&e.key_id))
    );
    let acme_seqs: HashSet<i64> = acme_events.iter().map(|e| e.seq).collect();
    assert!(globex_events.iter().all(|e| !acme_seqs.contains(&e.seq)));
    // Every key of each organization has its CREATED event in its own log.
    for id in &acme_listed {
        assert!(
            acme_events
                .iter()
                .any(|e| &e.key_id == id && e.r#type() == pb::KeyEventType::Created)
        );
    }
    for id in &globex_listed {
        assert!(
            globex_events
                .iter()
                .any(|e| &e.key_id == id && e.r#type() == pb::KeyEventType::Created)
        );
    }

    // The organization-wide RPCs, by globex: they show or make only globex's keys.
    let key_ids = |keys: Vec<pb::ApiKey>| keys.into_iter().map(|k| k.id).collect::<HashSet<_>>();
    for rpc in Rpc::ALL.into_iter().filter(|rpc| !rpc.per_key()) {
        let acme_before = key_ids(app.list_keys(&app.acme_key).await);
        let shown = call(app, &app.globex_key, rpc, "")
            .await
            .unwrap_or_else(|status| panic!("{rpc:?} by globex fails: {status:?}"));
        assert!(!shown.is_empty(), "{rpc:?} by globex shows a key");
        let globex_now = key_ids(app.list_keys(&app.globex_key).await);
        assert!(
            shown
                .iter()
                .all(|id| globex_now.contains(id) && !acme_before.contains(id)),
            "{rpc:?} by globex shows or makes only globex's keys: {shown:?}"
        );
        assert_eq!(
            key_ids(app.list_keys(&app.acme_key).await),
            acme_before,
            "{rpc:?} by globex changed acme's keys"
        );
    }
});

/// `message` with the metadata of `credential`.
fn rewrap<T>(credential: Request<()>, message: T) -> Request<T> {
    let (metadata, extensions, ()) = credential.into_parts();
    Request::from_parts(metadata, extensions, message)
}

/// Sends a few admin RPCs (a read, a write, the audit log) with `credential`;
/// each must fail.
async fn refused(app: &TestApp, credential: impl Fn() -> Request<()>) -> Vec<Status> {
    let mut admin = app.admin();
    vec![
        admin
            .list_keys(rewrap(credential(), pb::ListKeysRequest::default()))
            .await
            .map(drop)
            .expect_err("ListKeys is refused"),
        admin
            .create_key(rewrap(credential(), app.create_key("sneaky").request()))
            .await
            .map(drop)
            .expect_err("CreateKey is refused"),
        admin
            .list_key_events(rewrap(credential(), pb::ListKeyEventsRequest::default()))
            .await
            .map(drop)
            .expect_err("ListKeyEvents is refused"),
    ]
}

fn bearer(key: &str) -> impl Fn() -> Request<()> + '_ {
    move || with_key(key, ())
}

fn header<'a>(name: &'static str, value: &'a str) -> impl Fn() -> Request<()> + 'a {
    move || {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            name,
            MetadataValue::try_from(value).expect("an ASCII header value"),
        );
        request
    }
}

async fn assert_refused(app: &TestApp, what: &str, code: Code, request: impl Fn() -> Request<()>) {
    let keys_before = app.list_keys(&app.acme_key).await.len();
    let events_before = app.list_events(&app.acme_key, "").await.len();
    for status in refused(app, request).await {
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            !status.message().contains("sk_"),
            "{what}: no key in the message"
        );
    }
    assert_eq!(
        app.list_keys(&app.acme_key).await.len(),
        keys_before,
        "{what}: nothing was created"
    );
    assert_eq!(
        app.list_events(&app.acme_key, "").await.len(),
        events_before,
        "{what}: nothing was written"
    );
}

e2e_test!(standard_keys_are_forbidden_on_the_admin_api, |app| {
    let CreatedKey {
        id: standard,
        secret: live,
        ..
    } = app.create_key("product key").await;
    let test = app
        .create_key("test product key")
        .test_environment()
        .scopes(&["*"])
        .await
        .secret;
    assert_eq!(verdict(app, &live).await, pb::ValidationCode::Valid);
    assert_refused(
        app,
        "a live standard key",
        Code::PermissionDenied,
        bearer(&live),
    )
    .await;
    assert_refused(
        app,
        "a test standard key with scope *",
        Code::PermissionDenied,
        bearer(&test),
    )
    .await;
    assert_refused(
        app,
        "a standard key in x-api-key",
        Code::PermissionDenied,
        header("x-api-key", &live),
    )
    .await;
    // Per-key RPCs too, on the standard key's own record.
    for rpc in [Rpc::Get, Rpc::Archive, Rpc::Revoke] {
        let status = call(app, &live, rpc, &standard)
            .await
            .expect_err("a standard key is not an admin key");
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc:?}");
    }

    // A standard key that does not validate is simply not a credential.
    app.archive(&standard).await;
    assert_eq!(verdict(app, &live).await, pb::ValidationCode::Archived);
    assert_refused(
        app,
        "an archived standard key",
        Code::Unauthenticated,
        bearer(&live),
    )
    .await;
    let status = call(app, &live, Rpc::Get, &standard)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    // ...but it is the same key: reactivated, it is forbidden again.
    app.reactivate(&standard).await;
    assert_refused(
        app,
        "a reactivated standard key",
        Code::PermissionDenied,
        bearer(&live),
    )
    .await;
});

e2e_test!(admin_credentials_are_checked, |app| {
    assert_refused(app, "no key", Code::Unauthenticated, || Request::new(())).await;
    assert_refused(
        app,
        "malformed bearer",
        Code::Unauthenticated,
        bearer("not-a-key"),
    )
    .await;
    let mut typo = app.acme_key.clone().into_bytes();
    let at = typo.len() - 10;
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ASCII");
    assert_refused(
        app,
        "acme's key with a typo",
        Code::Unauthenticated,
        bearer(&typo),
    )
    .await;
    let unknown_admin = keyward_core::ApiKeySecret::generate(
        keyward_core::KeyKind::Admin,
        keyward_core::Environment::Live,
    );
    assert_refused(
        app,
        "unknown admin key",
        Code::Unauthenticated,
        bearer(unknown_admin.expose()),
    )
    .await;
    let unknown_live = keyward_core::ApiKeySecret::generate(
        keyward_core::KeyKind::Standard,
        keyward_core::Environment::Live,
    );
    assert_refused(
        app,
        "unknown standard key",
        Code::Unauthenticated,
        bearer(unknown_live.expose()),
    )
    .await;
    assert_refused(
        app,
        "empty bearer",
        Code::Unauthenticated,
        header("authorization", "Bearer "),
    )
    .await;
    assert_refused(
        app,
        "basic scheme",
        Code::Unauthenticated,
        header("authorization", "Basic xxx"),
    )
    .await;
    let basic = format!("Basic {}", app.acme_key);
    assert_refused(
        app,
        "basic scheme with a real key",
        Code::Unauthenticated,
        header("authorization", &basic),
    )
    .await;
    let bare = app.acme_key.clone();
    assert_refused(
        app,
        "a key without a scheme",
        Code::Unauthenticated,
        header("authorization", &bare),
    )
    .await;

    // x-api-key works, and acts as acme.
    let key = app.create_key("listed").await;
    let mut request = Request::new(pb::GetKeyRequest { id: key.id.clone() });
    request.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(app.acme_key.as_str()).expect("ASCII"),
    );
    let got = app
        .admin()
        .get_key(request)
        .await
        .expect("x-api-key authenticates")
        .into_inner();
    assert_eq!(got.api_key.expect("the key").organization_id, "acme");
    let mut request = Request::new(pb::GetKeyRequest { id: key.id.clone() });
    request.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(app.globex_key.as_str()).expect("ASCII"),
    );
    let status = app
        .admin()
        .get_key(request)
        .await
        .expect_err("x-api-key is globex");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "globex via x-api-key does not see acme's key"
    );
    // The auth scheme is case-insensitive (RFC 9110 §11.1).
    let lower = format!("bearer {}", app.acme_key);
    let mut request = Request::new(pb::GetKeyRequest { id: key.id.clone() });
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(lower.as_str()).expect("ASCII"),
    );
    app.admin()
        .get_key(request)
        .await
        .expect("a lowercase bearer scheme works");

    // A second admin key works until it is revoked; then it is unknown.
    let CreatedKey {
        id: second,
        secret: second_secret,
        ..
    } = app.create_key("second admin").admin().await;
    app.admin()
        .get_key(with_key(
            &second_secret,
            pb::GetKeyRequest { id: key.id.clone() },
        ))
        .await
        .expect("a new admin key works");
    app.revoke(&second).await;
    assert_refused(
        app,
        "a revoked admin key",
        Code::Unauthenticated,
        bearer(&second_secret),
    )
    .await;

    // An archived admin key is refused too, and works again once reactivated.
    let CreatedKey {
        id: third,
        secret: third_secret,
        ..
    } = app.create_key("third admin").admin().await;
    app.archive(&third).await;
    assert_refused(
        app,
        "an archived admin key",
        Code::Unauthenticated,
        bearer(&third_secret),
    )
    .await;
    app.reactivate(&third).await;
    app.admin()
        .list_keys(with_key(&third_secret, pb::ListKeysRequest::default()))
        .await
        .expect("a reactivated admin key works again");
});

e2e_test!(validate_key_needs_no_credentials, |app| {
    let CreatedKey { key, secret, .. } = app.create_key("product key").await;
    let response = app
        .validation()
        .validate_key(Request::new(pb::ValidateKeyRequest {
            key: secret.clone(),
            ..Default::default()
        }))
        .await
        .expect("ValidateKey needs no credentials")
        .into_inner();
    assert!(response.valid);
    assert_eq!(response.key_id, key.id);
    assert_eq!(response.organization_id, "acme");
    // A bad credential does not get in the way either.
    let mut request = Request::new(pb::ValidateKeyRequest {
        key: secret,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::from_static("Basic xxx"));
    let response = app
        .validation()
        .validate_key(request)
        .await
        .expect("ValidateKey ignores the authorization header")
        .into_inner();
    assert!(response.valid);
});
