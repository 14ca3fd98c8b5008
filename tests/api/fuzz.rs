//! Fuzz targets of the request handlers: arbitrary `keyward.v1` requests
//! (unicode, control characters, very long strings, any integer or enum
//! value, repeated fields up to a few hundred entries) handed to the real
//! `AdminApi` and `ValidationApi` in process, over SQLite, with the caller
//! identity the auth layer inserts. For every request: no panic; the answer
//! is a response or a status with a code the RPC may return (never
//! UNAVAILABLE: the fixture's database deadlines are long enough for a
//! loaded machine); a refused request wrote nothing (the
//! organization's newest audit event is unchanged); another organization's key is never revealed; no secret in a
//! status; a status and its details fit in 8 KB (SPEC §11). ValidateKey never
//! calls a changed or unknown key valid. Budget and replay:
//! `tests/support/fuzz_runner.rs`.

#[path = "../support/fuzz_runner.rs"]
mod fuzz_runner;

use std::collections::HashMap;
use std::sync::Arc;

use fuzz_runner::fuzz;
use keyward::admin::AdminApi;
use keyward::pb;
use keyward::pb::key_admin_service_server::KeyAdminService;
use keyward::unary::WireCall;
use keyward::validation::{AdminValidator, KeyValidator};
use keyward::validation_api::ValidationApi;
use keyward::validation_api::wire::ValidateKeyCall;
use keyward::{bootstrap, open_store};
use keyward_auth::{Identity, ValidationRequest, Validator, Verdict};
use keyward_core::{KeyName, LookupHasher, OrganizationId};
use keyward_store::testing::{Backend, TestDatabase};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;
use tokio::runtime::Runtime;
use tonic::{Code, Request, Status};

/// Most bytes a status message and its details may take together (SPEC §11).
const MAX_STATUS_BYTES: usize = 8 * 1024;
/// Codes an admin RPC may answer a well-authenticated request with.
const ADMIN_CODES: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
];
/// Codes ValidateKey may answer with: an invalid key is a verdict, not an
/// error.
const VALIDATE_CODES: &[Code] = &[Code::InvalidArgument];
/// Keys each organization starts with, so ids name real keys.
const SEED_KEYS: usize = 6;

/// One organization's admin API over a fresh SQLite database, and the keys
/// the targets aim at.
struct Fixture {
    /// Set once a write RPC ran: the seed keys may no longer be active.
    keys_may_change: std::cell::Cell<bool>,
    admin: AdminApi,
    validation: ValidationApi,
    /// The identity the auth layer inserts for `fuzz`'s admin key.
    caller: Identity,
    /// Ids of keys of organization `fuzz`.
    own_ids: Vec<String>,
    /// Ids of keys of organization `other`: never visible to `fuzz`.
    other_ids: Vec<String>,
    /// Raw keys of `fuzz` (and its admin key): never in any status.
    secrets: Vec<String>,
    /// Raw keys of active standard keys of `fuzz`.
    active: Vec<String>,
    db: Option<TestDatabase>,
    // Last, so the database is dropped while the runtime still exists.
    runtime: Runtime,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let db = runtime
            .block_on(TestDatabase::create(Backend::Sqlite))
            .expect("SQLite is always available");
        let hasher = LookupHasher::derived();
        // Deadlines for a loaded machine, so that any UNAVAILABLE is a defect.
        let mut settings = crate::helpers::test_settings(&db.url);
        settings.validator.lookup_timeout = std::time::Duration::from_secs(10);
        // No feed follower runs here: without one, cached verdicts would
        // turn UNAVAILABLE once stale-if-error (60 s) has passed in a long run.
        settings.validator.stale_if_error = std::time::Duration::from_secs(365 * 24 * 3600);
        let store = runtime
            .block_on(open_store(&settings.database, &hasher))
            .expect("a fresh SQLite database opens");
        let validator = Arc::new(KeyValidator::new(
            store.clone(),
            hasher.clone(),
            settings.validator,
        ));
        let admin = AdminApi::new(store.clone(), hasher.clone(), Arc::clone(&validator));
        let validation = ValidationApi::new(Arc::clone(&validator));
        let admin_validator = AdminValidator(Arc::clone(&validator));
        let identity_of = |organization: &str| {
            runtime.block_on(async {
                let secret = bootstrap(
                    &store,
                    &hasher,
                    OrganizationId::parse(organization).expect("a valid organization"),
                    KeyName::parse("fuzz admin").expect("a valid name"),
                )
                .await
                .expect("bootstrap on a fresh database");
                let verdict = admin_validator
                    .validate(ValidationRequest {
                        key: secret.expose(),
                        required_scopes: &[],
                        client_ip: None,
                        user_agent: None,
                        idempotency_key: None,
                    })
                    .await
                    .expect("the admin key validates");
                let Verdict::Allow(identity) = verdict else {
                    panic!("a fresh admin key is allowed: {verdict:?}");
                };
                (identity, secret.expose().to_owned())
            })
        };
        let (caller, admin_secret) = identity_of("fuzz");
        let (other, _) = identity_of("other");
        let mut fixture = Self {
            keys_may_change: std::cell::Cell::new(false),
            admin,
            validation,
            caller,
            own_ids: Vec::new(),
            other_ids: Vec::new(),
            secrets: vec![admin_secret],
            active: Vec::new(),
            db: Some(db),
            runtime,
        };
        for i in 0..SEED_KEYS {
            let (id, secret) = fixture.create(&fixture.caller.clone(), i);
            fixture.own_ids.push(id);
            fixture.secrets.push(secret.clone());
            fixture.active.push(secret);
            let (id, _) = fixture.create(&other, i);
            fixture.other_ids.push(id);
        }
        fixture
    }

    /// Creates a key as `identity` and returns its id and raw key.
    fn create(&self, identity: &Identity, i: usize) -> (String, String) {
        let request = pb::CreateKeyRequest {
            name: format!("seed {i}"),
            scopes: vec!["orders:*".to_owned(), "billing:read".to_owned()],
            ..Default::default()
        };
        let created = self
            .runtime
            .block_on(self.admin.create_key(as_caller(identity, request)))
            .expect("a seed key is created")
            .into_inner();
        let id = created.api_key.expect("a created key").id;
        (id, created.secret)
    }

    /// The organization's newest audit event (0 if none): it moves exactly
    /// when something was written.
    fn newest_event(&self) -> i64 {
        let request = pb::ListKeyEventsRequest {
            limit: Some(1),
            ..Default::default()
        };
        self.runtime
            .block_on(self.admin.list_key_events(self.request(request)))
            .expect("ListKeyEvents with a limit of 1")
            .into_inner()
            .events
            .first()
            .map_or(0, |event| event.seq)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        as_caller(&self.caller, message)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.runtime.block_on(db.drop_database());
        }
    }
}

fn as_caller<T>(identity: &Identity, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(identity.clone());
    request
}

/// One request to one RPC.
#[derive(Debug, Clone)]
enum Rpc {
    Create(pb::CreateKeyRequest),
    Get(pb::GetKeyRequest),
    List(pb::ListKeysRequest),
    Update(pb::UpdateKeyRequest),
    Archive(pb::ArchiveKeyRequest),
    Reactivate(pb::ReactivateKeyRequest),
    Revoke(pb::RevokeKeyRequest),
    Delete(pb::DeleteKeyRequest),
    Rotate(pb::RotateKeyRequest),
    ListEvents(pb::ListKeyEventsRequest),
    Usage(pb::GetKeyUsageRequest),
    Validate(pb::ValidateKeyRequest),
}

impl Rpc {
    /// The one key the request acts on, if it acts on one.
    fn target(&self) -> Option<&str> {
        match self {
            Self::Get(r) => Some(&r.id),
            Self::Update(r) => Some(&r.id),
            Self::Archive(r) => Some(&r.id),
            Self::Reactivate(r) => Some(&r.id),
            Self::Revoke(r) => Some(&r.id),
            Self::Delete(r) => Some(&r.id),
            Self::Rotate(r) => Some(&r.id),
            Self::Usage(r) => Some(&r.id),
            Self::Create(_) | Self::List(_) | Self::ListEvents(_) | Self::Validate(_) => None,
        }
    }
}

/// What a successful answer shows, for the checks.
#[derive(Debug, Default)]
struct Answer {
    /// Every key id in the response.
    ids: Vec<String>,
    /// A raw key the response hands out (create, rotate).
    secret: Option<String>,
    /// ValidateKey's verdict.
    valid: Option<bool>,
}

fn ids_of(keys: &[&Option<pb::ApiKey>]) -> Vec<String> {
    keys.iter()
        .filter_map(|key| key.as_ref().map(|key| key.id.clone()))
        .collect()
}

impl Fixture {
    /// Sends `rpc` to its handler as the fixture's caller.
    fn send(&self, rpc: Rpc) -> Result<Answer, Status> {
        let admin = &self.admin;
        // Boxed: one arm per RPC makes a large future, which a debug build
        // would otherwise hold on the test thread's stack.
        self.runtime.block_on(Box::pin(async {
            let answer = match rpc {
                Rpc::Create(r) => {
                    let r = admin.create_key(self.request(r)).await?.into_inner();
                    Answer {
                        ids: ids_of(&[&r.api_key]),
                        secret: Some(r.secret),
                        valid: None,
                    }
                }
                Rpc::Get(r) => Answer {
                    ids: ids_of(&[&admin.get_key(self.request(r)).await?.into_inner().api_key]),
                    ..Answer::default()
                },
                Rpc::List(r) => {
                    let r = admin.list_keys(self.request(r)).await?.into_inner();
                    Answer {
                        ids: r.keys.into_iter().map(|key| key.id).collect(),
                        ..Answer::default()
                    }
                }
                Rpc::Update(r) => Answer {
                    ids: ids_of(&[&admin
                        .update_key(self.request(r))
                        .await?
                        .into_inner()
                        .api_key]),
                    ..Answer::default()
                },
                Rpc::Archive(r) => Answer {
                    ids: ids_of(&[&admin
                        .archive_key(self.request(r))
                        .await?
                        .into_inner()
                        .api_key]),
                    ..Answer::default()
                },
                Rpc::Reactivate(r) => {
                    let r = admin.reactivate_key(self.request(r)).await?.into_inner();
                    Answer {
                        ids: ids_of(&[&r.api_key]),
                        ..Answer::default()
                    }
                }
                Rpc::Revoke(r) => Answer {
                    ids: ids_of(&[&admin
                        .revoke_key(self.request(r))
                        .await?
                        .into_inner()
                        .api_key]),
                    ..Answer::default()
                },
                Rpc::Delete(r) => Answer {
                    ids: vec![admin.delete_key(self.request(r)).await?.into_inner().id],
                    ..Answer::default()
                },
                Rpc::Rotate(r) => {
                    let r = admin.rotate_key(self.request(r)).await?.into_inner();
                    Answer {
                        ids: ids_of(&[&r.api_key, &r.previous_key]),
                        secret: Some(r.secret),
                        valid: None,
                    }
                }
                Rpc::ListEvents(r) => {
                    let r = admin.list_key_events(self.request(r)).await?.into_inner();
                    Answer {
                        ids: r.events.into_iter().map(|event| event.key_id).collect(),
                        ..Answer::default()
                    }
                }
                Rpc::Usage(r) => Answer {
                    ids: vec![admin.get_key_usage(self.request(r)).await?.into_inner().id],
                    ..Answer::default()
                },
                Rpc::Validate(r) => {
                    // Through the server's own codec: the request as bytes,
                    // decoded as the server decodes it, and the answer
                    // decoded as a client reads it.
                    use prost::Message;
                    let call = ValidateKeyCall::decode(r.encode_to_vec().into())
                        .expect("a well-formed request decodes");
                    let r = self
                        .validation
                        .validate_key(Request::new(call))
                        .await?
                        .into_inner()
                        .to_message();
                    Answer {
                        ids: vec![r.key_id],
                        secret: None,
                        valid: Some(r.valid),
                    }
                }
            };
            Ok(answer)
        }))
    }

    /// Sends `rpc` and checks what every answer must satisfy (see the
    /// module documentation); returns the status when it failed.
    fn check(&self, rpc: Rpc) -> Result<Option<Status>, TestCaseError> {
        let before = self.newest_event();
        let outcome = self.send(rpc.clone());
        let after = self.newest_event();
        if after != before {
            self.keys_may_change.set(true);
        }
        let status = match outcome {
            Ok(answer) => {
                self.check_answer(&rpc, &answer, before, after)?;
                return Ok(None);
            }
            Err(status) => status,
        };
        let allowed = if matches!(rpc, Rpc::Validate(_)) {
            VALIDATE_CODES
        } else {
            ADMIN_CODES
        };
        prop_assert!(
            allowed.contains(&status.code()),
            "unexpected {:?}: {}",
            status.code(),
            status.message()
        );
        prop_assert_eq!(before, after, "a rejected request wrote an event");
        prop_assert!(!status.message().is_empty(), "a status without a message");
        for secret in &self.secrets {
            prop_assert!(
                !status.message().contains(secret.as_str()),
                "a secret in a status"
            );
        }
        Ok(Some(status))
    }

    fn check_answer(&self, rpc: &Rpc, answer: &Answer, before: i64, after: i64) -> TestCaseResult {
        if let Some(target) = rpc.target() {
            prop_assert!(
                !self.other_ids.iter().any(|id| id == target),
                "another organization's key was acted on"
            );
        }
        for id in &answer.ids {
            prop_assert!(
                !self.other_ids.contains(id),
                "another organization's key was revealed"
            );
        }
        match rpc {
            Rpc::Create(_) | Rpc::Rotate(_) => {
                prop_assert!(after > before, "a mutation wrote no event");
                let secret = answer.secret.as_deref().unwrap_or_default();
                prop_assert!(keyward_core::ApiKeySecret::parse(secret).is_ok());
            }
            Rpc::Update(_)
            | Rpc::Archive(_)
            | Rpc::Reactivate(_)
            | Rpc::Revoke(_)
            | Rpc::Delete(_) => {
                // Idempotent archive/reactivate may write nothing; nothing
                // else may go backwards.
                prop_assert!(after >= before);
            }
            Rpc::Get(_) | Rpc::List(_) | Rpc::ListEvents(_) | Rpc::Usage(_) | Rpc::Validate(_) => {
                prop_assert_eq!(before, after, "a read wrote an event");
            }
        }
        if let Rpc::Validate(request) = rpc {
            let known = self.active.contains(&request.key);
            if answer.valid == Some(true) {
                prop_assert!(known, "an unknown or changed key validated");
            }
            // Only while no write can have changed the seed keys: a mixed
            // target may have revoked, archived or expired one meanwhile.
            if known && request.required_scopes.is_empty() && !self.keys_may_change.get() {
                prop_assert_eq!(answer.valid, Some(true), "an active key did not validate");
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Strings of every sort: arbitrary unicode, control characters, very long
/// runs, and text close to what the fields accept.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z0-9_.:@ -]{0,24}",
        1 => Just(String::new()),
        1 => any::<String>(),
        1 => "\\PC{0,300}",
        1 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{202e}\u{feff}]{1,8}",
        1 => (any::<char>(), 0usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn scopes() -> impl Strategy<Value = Vec<String>> {
    let scope =
        prop_oneof![3 => "[a-z]{1,6}(:[a-z*]{1,6}){0,2}", 1 => Just("*".to_owned()), 1 => text()];
    prop_oneof![
        3 => vec(scope.clone(), 0..6),
        1 => vec(scope, 0..300),
    ]
}

fn metadata() -> impl Strategy<Value = HashMap<String, String>> {
    prop_oneof![
        3 => hash_map("[a-z_]{1,8}", "[a-z ]{0,12}", 0..4),
        1 => hash_map(text(), text(), 0..300),
    ]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = chrono::Utc::now().timestamp();
    prop_oneof![
        2 => Just(None),
        2 => (60i64..100_000_000).prop_map(move |ahead| Some(prost_types::Timestamp { seconds: now + ahead, nanos: 0 })),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        1 => (-1_000_000_000i64..1_000_000_000, 0i32..1_000_000_000)
            .prop_map(move |(offset, nanos)| Some(prost_types::Timestamp { seconds: now + offset, nanos })),
    ]
}

fn enum_value(known: std::ops::Range<i32>) -> impl Strategy<Value = i32> {
    prop_oneof![4 => known, 1 => any::<i32>()]
}

fn limit() -> impl Strategy<Value = Option<i32>> {
    prop_oneof![
        Just(None),
        (-2i32..1002).prop_map(Some),
        any::<i32>().prop_map(Some)
    ]
}

/// A key id: one of the organization's, another organization's, a
/// well-formed unknown one, or anything.
fn key_id(fixture: &Fixture) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        3 => proptest::sample::select(fixture.own_ids.clone()),
        1 => proptest::sample::select(fixture.other_ids.clone()),
        1 => "key_[0-7][0-9A-HJKMNP-TV-Z]{25}",
        1 => text(),
    ]
}

/// IP allowlists: mostly plausible ranges (some bad), sometimes anything,
/// sometimes more than the cap.
fn cidrs() -> impl Strategy<Value = Vec<String>> {
    let cidr = prop_oneof![
        3 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,2})?",
        1 => "[0-9a-f:]{2,20}(/[0-9]{1,3})?",
        1 => text(),
    ];
    prop_oneof![
        2 => Just(Vec::new()),
        3 => vec(cidr.clone(), 0..4),
        1 => vec(cidr, 60..70),
    ]
}

/// Rate limits: mostly plausible ones (some bad), sometimes any numbers,
/// sometimes more than the cap.
fn rate_limits() -> impl Strategy<Value = Vec<pb::RateLimit>> {
    let duration = prop_oneof![
        1 => Just(None),
        4 => (0i64..3_000_000).prop_map(|seconds| Some(prost_types::Duration { seconds, nanos: 0 })),
        1 => (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ];
    let number = prop_oneof![3 => -2i64..2000, 1 => any::<i64>()];
    let limit = (
        prop_oneof![3 => "[a-z_.-]{1,12}", 1 => text()],
        number.clone(),
        duration,
        number,
    )
        .prop_map(|(name, limit, duration, cost)| pb::RateLimit {
            name,
            limit,
            duration,
            cost,
        });
    prop_oneof![
        3 => Just(Vec::new()),
        3 => vec(limit.clone(), 0..4),
        1 => vec(limit, 8..12),
    ]
}

/// Credits: none, or any numbers and refill intervals (known or not).
fn credits() -> impl Strategy<Value = Option<pb::Credits>> {
    let number = prop_oneof![3 => -2i64..2000, 1 => any::<i64>()];
    let credits = (number.clone(), number, enum_value(0..3), timestamp()).prop_map(
        |(remaining, refill_amount, refill_interval, refills_at)| pb::Credits {
            remaining,
            refill_amount,
            refill_interval,
            refills_at,
        },
    );
    prop_oneof![2 => Just(None), 1 => credits.prop_map(Some)]
}

fn create() -> impl Strategy<Value = Rpc> {
    (
        prop_oneof![3 => "[A-Za-z][A-Za-z0-9 ]{0,20}", 1 => text()],
        text(),
        scopes(),
        metadata(),
        (text(), text(), text()),
        enum_value(0..3),
        enum_value(0..3),
        timestamp(),
        cidrs(),
        rate_limits(),
        credits(),
    )
        .prop_map(
            |(
                name,
                description,
                scopes,
                metadata,
                (workspace_id, user_id, service_account_id),
                environment,
                kind,
                expires_at,
                allowed_cidrs,
                rate_limits,
                credits,
            )| {
                Rpc::Create(pb::CreateKeyRequest {
                    name,
                    description,
                    scopes,
                    metadata,
                    workspace_id,
                    environment,
                    kind,
                    expires_at,
                    user_id,
                    service_account_id,
                    allowed_cidrs,
                    rate_limits,
                    credits,
                })
            },
        )
}

fn single_key(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    (0..5u8, key_id(fixture)).prop_map(|(rpc, id)| match rpc {
        0 => Rpc::Get(pb::GetKeyRequest { id }),
        1 => Rpc::Archive(pb::ArchiveKeyRequest { id }),
        2 => Rpc::Reactivate(pb::ReactivateKeyRequest { id }),
        3 => Rpc::Revoke(pb::RevokeKeyRequest { id }),
        _ => Rpc::Delete(pb::DeleteKeyRequest { id }),
    })
}

fn list(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    let cursor = prop_oneof![3 => Just(String::new()), 1 => key_id(fixture)];
    let statuses =
        prop_oneof![3 => vec(enum_value(0..7), 0..4), 1 => vec(enum_value(0..7), 0..400)];
    (
        limit(),
        cursor.clone(),
        cursor,
        statuses,
        any::<bool>(),
        (text(), text(), text(), text()),
        (timestamp(), timestamp(), timestamp()),
    )
        .prop_map(
            |(
                limit,
                after_id,
                before_id,
                statuses,
                include_archived,
                (workspace_id, created_by_id, user_id, service_account_id),
                (last_used_before, used_since, unused_since),
            )| {
                Rpc::List(pb::ListKeysRequest {
                    limit,
                    after_id,
                    before_id,
                    statuses,
                    include_archived,
                    workspace_id,
                    created_by_id,
                    user_id,
                    service_account_id,
                    last_used_before,
                    used_since,
                    unused_since,
                })
            },
        )
}

fn update(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    let path = prop_oneof![
        4 => proptest::sample::select(vec!["name", "description", "scopes", "metadata", "expires_at", "status", "allowed_cidrs", "rate_limits", "credits"])
            .prop_map(str::to_owned),
        1 => text(),
    ];
    let mask = prop_oneof![
        1 => Just(None),
        4 => vec(path.clone(), 0..4).prop_map(|paths| Some(prost_types::FieldMask { paths })),
        1 => vec(path, 0..300).prop_map(|paths| Some(prost_types::FieldMask { paths })),
    ];
    (
        key_id(fixture),
        mask,
        prop_oneof![3 => "[A-Za-z][A-Za-z0-9 ]{0,20}", 1 => text()],
        text(),
        scopes(),
        metadata(),
        timestamp(),
        enum_value(0..7),
        cidrs(),
        rate_limits(),
        credits(),
    )
        .prop_map(
            |(
                id,
                update_mask,
                name,
                description,
                scopes,
                metadata,
                expires_at,
                status,
                allowed_cidrs,
                rate_limits,
                credits,
            )| {
                Rpc::Update(pb::UpdateKeyRequest {
                    id,
                    update_mask,
                    name,
                    description,
                    scopes,
                    metadata,
                    expires_at,
                    status,
                    allowed_cidrs,
                    rate_limits,
                    credits,
                })
            },
        )
}

fn rotate(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    let grace = prop_oneof![
        Just(None),
        (0i64..40_000_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ];
    (key_id(fixture), grace)
        .prop_map(|(id, grace_period)| Rpc::Rotate(pb::RotateKeyRequest { id, grace_period }))
}

fn list_events(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    let seq = prop_oneof![
        Just(None),
        (-2i64..50).prop_map(Some),
        any::<i64>().prop_map(Some)
    ];
    let key = prop_oneof![Just(String::new()), key_id(fixture)];
    (limit(), seq.clone(), seq, key).prop_map(|(limit, after_seq, before_seq, key_id)| {
        Rpc::ListEvents(pb::ListKeyEventsRequest {
            limit,
            after_seq,
            before_seq,
            key_id,
        })
    })
}

fn usage(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    (key_id(fixture), timestamp(), timestamp())
        .prop_map(|(id, from, to)| Rpc::Usage(pb::GetKeyUsageRequest { id, from, to }))
}

/// A presented key: an active one, one changed by a byte, a well-formed
/// unknown one, or anything.
fn presented_key(fixture: &Fixture) -> impl Strategy<Value = String> + use<> {
    let active = proptest::sample::select(fixture.active.clone());
    let changed = (active.clone(), any::<usize>(), any::<u8>()).prop_map(|(key, at, byte)| {
        let mut bytes = key.into_bytes();
        let at = at % bytes.len();
        bytes[at] = if bytes[at] == byte {
            byte.wrapping_add(1)
        } else {
            byte
        };
        String::from_utf8_lossy(&bytes).into_owned()
    });
    prop_oneof![
        2 => active,
        2 => changed,
        1 => "sk_(live|test|admin)_[0-9A-Za-z]{38}",
        1 => text(),
    ]
}

fn validate(fixture: &Fixture) -> impl Strategy<Value = Rpc> + use<> {
    let scopes = prop_oneof![3 => Just(Vec::new()), 2 => scopes()];
    // Mostly addresses or empty (ValidateKey answers a verdict), sometimes
    // anything (INVALID_ARGUMENT unless it happens to be an address).
    let client_ip = prop_oneof![
        2 => Just(String::new()),
        3 => "1?[0-9]{1,2}\\.1?[0-9]{1,2}\\.1?[0-9]{1,2}\\.1?[0-9]{1,2}",
        1 => "[0-9a-f]{1,4}(:[0-9a-f]{1,4}){7}",
        2 => "[0-9.:a-f]{0,40}",
        1 => text(),
    ];
    // Mostly the key's own costs, sometimes any (out of range: INVALID_ARGUMENT).
    let cost = prop_oneof![3 => Just(0i64), 1 => 0i64..10, 1 => any::<i64>()];
    let idempotency_key = prop_oneof![3 => Just(String::new()), 1 => text()];
    (
        presented_key(fixture),
        scopes,
        client_ip,
        text(),
        cost,
        idempotency_key,
    )
        .prop_map(
            |(key, required_scopes, client_ip, user_agent, cost, idempotency_key)| {
                Rpc::Validate(pb::ValidateKeyRequest {
                    key,
                    required_scopes,
                    client_ip,
                    user_agent,
                    cost,
                    idempotency_key,
                })
            },
        )
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

/// Cases per target in a plain `cargo test` (each is a handler call and a
/// few SQLite statements).
const CASES: u32 = 48;

fn run(target: &str, strategy: impl Fn(&Fixture) -> BoxedStrategy<Rpc>) {
    let fixture = Fixture::new();
    fuzz(target, CASES, strategy(&fixture), |rpc| {
        fixture.check(rpc).map(drop)
    });
}

#[test]
fn fuzz_create_key() {
    run("api::create_key", |_| create().boxed());
}

#[test]
fn fuzz_single_key_rpcs() {
    run("api::get_archive_reactivate_revoke_delete", |f| {
        single_key(f).boxed()
    });
}

#[test]
fn fuzz_list_keys() {
    run("api::list_keys", |f| list(f).boxed());
}

#[test]
fn fuzz_update_key() {
    run("api::update_key", |f| update(f).boxed());
}

#[test]
fn fuzz_rotate_key() {
    run("api::rotate_key", |f| rotate(f).boxed());
}

#[test]
fn fuzz_list_key_events() {
    run("api::list_key_events", |f| list_events(f).boxed());
}

#[test]
fn fuzz_get_key_usage() {
    run("api::get_key_usage", |f| usage(f).boxed());
}

#[test]
fn fuzz_validate_key() {
    run("api::validate_key", |f| validate(f).boxed());
}

/// Every RPC, and no status larger than [`MAX_STATUS_BYTES`] whatever the
/// request holds (SPEC §11: a fixed maximum for messages and details).
#[test]
fn fuzz_status_size_is_bounded() {
    // A strategy over every RPC is a deep type: a debug build's generation
    // and shrinking outgrow the test thread's default stack.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(status_size_is_bounded)
        .expect("a thread")
        .join()
        .expect("the fuzz target passes");
}

fn status_size_is_bounded() {
    let fixture = Fixture::new();
    let any_rpc = prop_oneof![
        create(),
        single_key(&fixture),
        list(&fixture),
        update(&fixture),
        rotate(&fixture),
        list_events(&fixture),
        usage(&fixture),
        validate(&fixture),
    ];
    fuzz("api::status_size", CASES, any_rpc, |rpc| {
        if let Some(status) = fixture.check(rpc)? {
            let size = status.message().len() + status.details().len();
            prop_assert!(
                size <= MAX_STATUS_BYTES,
                "a {:?} status of {} bytes",
                status.code(),
                size
            );
        }
        Ok(())
    });
}
