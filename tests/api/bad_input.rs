//! Every bad field of every RPC: INVALID_ARGUMENT naming the field in a
//! `google.rpc.BadRequest`, a lowercase message, and nothing written.

use std::collections::HashMap;
use std::time::Duration;

use keyward::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::e2e_test;
use crate::helpers::{CreatedKey, TestApp, record_secret};

/// One RPC with its request.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few hundred short-lived test values"
)]
enum Call {
    Create(pb::CreateKeyRequest),
    Get(pb::GetKeyRequest),
    List(pb::ListKeysRequest),
    Update(pb::UpdateKeyRequest),
    Archive(pb::ArchiveKeyRequest),
    Reactivate(pb::ReactivateKeyRequest),
    Revoke(pb::RevokeKeyRequest),
    Delete(pb::DeleteKeyRequest),
    Rotate(pb::RotateKeyRequest),
    Events(pb::ListKeyEventsRequest),
    Usage(pb::GetKeyUsageRequest),
    Validate(pb::ValidateKeyRequest),
    /// A serialized ValidateKeyRequest: strings that are not UTF-8, which
    /// no generated message can hold.
    ValidateBytes(Vec<u8>),
}

/// Sends `call` as acme; `Ok` means the server accepted it.
async fn send(app: &TestApp, call: Call) -> Result<(), Status> {
    let mut admin = app.admin();
    match call {
        Call::Create(r) => admin
            .create_key(app.acme(r))
            .await
            .map(|r| record_secret(&r.get_ref().secret)),
        Call::Get(r) => admin.get_key(app.acme(r)).await.map(drop),
        Call::List(r) => admin.list_keys(app.acme(r)).await.map(drop),
        Call::Update(r) => admin.update_key(app.acme(r)).await.map(drop),
        Call::Archive(r) => admin.archive_key(app.acme(r)).await.map(drop),
        Call::Reactivate(r) => admin.reactivate_key(app.acme(r)).await.map(drop),
        Call::Revoke(r) => admin.revoke_key(app.acme(r)).await.map(drop),
        Call::Delete(r) => admin.delete_key(app.acme(r)).await.map(drop),
        Call::Rotate(r) => admin
            .rotate_key(app.acme(r))
            .await
            .map(|r| record_secret(&r.get_ref().secret)),
        Call::Events(r) => admin.list_key_events(app.acme(r)).await.map(drop),
        Call::Usage(r) => admin.get_key_usage(app.acme(r)).await.map(drop),
        Call::Validate(r) => app.validation().validate_key(r).await.map(drop),
        Call::ValidateBytes(message) => validate_bytes(app, message).await,
    }
}

/// A valid CreateKey request, changed by `bad`.
fn create(bad: impl FnOnce(&mut pb::CreateKeyRequest)) -> Call {
    let mut request = pb::CreateKeyRequest {
        name: "valid name".into(),
        description: "valid\ndescription".into(),
        scopes: vec!["orders:read".into()],
        metadata: [("team".to_owned(), "payments".to_owned())].into(),
        ..Default::default()
    };
    bad(&mut request);
    Call::Create(request)
}

/// An UpdateKey of `id` changing `paths`, with the request changed by `bad`.
fn update(id: &str, paths: &[&str], bad: impl FnOnce(&mut pb::UpdateKeyRequest)) -> Call {
    let mut request = pb::UpdateKeyRequest {
        id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        name: "valid name".into(),
        description: "valid description".into(),
        scopes: vec!["orders:read".into()],
        metadata: [("team".to_owned(), "payments".to_owned())].into(),
        status: pb::KeyStatus::Active.into(),
        ..Default::default()
    };
    bad(&mut request);
    Call::Update(request)
}

/// A wire rate limit of `limit` per `seconds`, each call costing `cost`.
fn limit(name: &str, limit: i64, seconds: i64, cost: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.to_owned(),
        limit,
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        cost,
    }
}

/// Wire credits with a raw refill interval.
fn credits(remaining: i64, refill_amount: i64, refill_interval: i32) -> pb::Credits {
    pb::Credits {
        remaining,
        refill_amount,
        refill_interval,
        refills_at: None,
    }
}

fn list(bad: impl FnOnce(&mut pb::ListKeysRequest)) -> Call {
    let mut request = pb::ListKeysRequest::default();
    bad(&mut request);
    Call::List(request)
}

fn events(bad: impl FnOnce(&mut pb::ListKeyEventsRequest)) -> Call {
    let mut request = pb::ListKeyEventsRequest::default();
    bad(&mut request);
    Call::Events(request)
}

fn usage(
    id: &str,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Call {
    Call::Usage(pb::GetKeyUsageRequest {
        id: id.to_owned(),
        from: from.and_then(timestamp),
        to: to.and_then(timestamp),
    })
}

fn rotate(id: &str, seconds: i64, nanos: i32) -> Call {
    Call::Rotate(pb::RotateKeyRequest {
        id: id.to_owned(),
        grace_period: Some(prost_types::Duration { seconds, nanos }),
    })
}

/// A valid ValidateKey request of `key`, changed by `bad`.
fn validate(key: &str, bad: impl FnOnce(&mut pb::ValidateKeyRequest)) -> Call {
    let mut request = pb::ValidateKeyRequest {
        key: key.to_owned(),
        required_scopes: vec!["orders:read".into()],
        client_ip: "203.0.113.7".into(),
        user_agent: "bad-input-test/1.0".into(),
        ..Default::default()
    };
    bad(&mut request);
    Call::Validate(request)
}

/// `validate(key, bad)`'s request serialized, with its UTF-8 text `valid`
/// (in one of its strings) made invalid: its first byte becomes 0xff.
fn not_utf8(key: &str, valid: &str, bad: impl FnOnce(&mut pb::ValidateKeyRequest)) -> Call {
    use prost::Message;
    let Call::Validate(request) = validate(key, bad) else {
        unreachable!("validate makes a ValidateKey call")
    };
    let mut message = request.encode_to_vec();
    let at = message
        .windows(valid.len())
        .position(|window| window == valid.as_bytes())
        .expect("the text is in the message");
    message[at] = 0xff;
    Call::ValidateBytes(message)
}

/// Sends a serialized ValidateKeyRequest as it is.
async fn validate_bytes(app: &TestApp, message: Vec<u8>) -> Result<(), Status> {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = ();
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
            buf.advance(buf.remaining());
            Ok(Some(()))
        }
    }

    let mut grpc = tonic::client::Grpc::new(app.lazy_channel());
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/keyward.v1.KeyValidationService/ValidateKey");
    grpc.unary(tonic::Request::new(message), path, Raw)
        .await
        .map(drop)
}

/// The RPCs that take one key's id, each with `id`.
fn by_id(id: &str) -> Vec<(&'static str, Call)> {
    let id = id.to_owned();
    vec![
        ("GetKey", Call::Get(pb::GetKeyRequest { id: id.clone() })),
        (
            "ArchiveKey",
            Call::Archive(pb::ArchiveKeyRequest { id: id.clone() }),
        ),
        (
            "ReactivateKey",
            Call::Reactivate(pb::ReactivateKeyRequest { id: id.clone() }),
        ),
        (
            "RevokeKey",
            Call::Revoke(pb::RevokeKeyRequest { id: id.clone() }),
        ),
        (
            "DeleteKey",
            Call::Delete(pb::DeleteKeyRequest { id: id.clone() }),
        ),
        (
            "RotateKey",
            Call::Rotate(pb::RotateKeyRequest {
                id: id.clone(),
                grace_period: None,
            }),
        ),
        (
            "UpdateKey",
            Call::Update(pb::UpdateKeyRequest {
                id: id.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                name: "valid name".into(),
                ..Default::default()
            }),
        ),
        (
            "GetKeyUsage",
            Call::Usage(pb::GetKeyUsageRequest {
                id: id.clone(),
                ..Default::default()
            }),
        ),
        (
            "ListKeyEvents",
            Call::Events(pb::ListKeyEventsRequest {
                key_id: id,
                ..Default::default()
            }),
        ),
    ]
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

/// One row of the table: a request with bad fields, and the fields a
/// violation must name.
struct Case {
    what: String,
    call: Call,
    fields: Vec<String>,
}

fn case(what: &str, call: Call, fields: &[&str]) -> Case {
    Case {
        what: what.to_owned(),
        call,
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// Everything acme's admin API can see, without usage data (the admin calls
/// themselves record usage of acme's admin key).
async fn snapshot(app: &TestApp) -> (Vec<pb::ApiKey>, Vec<pb::KeyEvent>) {
    let mut admin = app.admin();
    let mut keys = admin
        .list_keys(app.acme(pb::ListKeysRequest {
            limit: Some(1000),
            include_archived: true,
            ..Default::default()
        }))
        .await
        .expect("ListKeys succeeds")
        .into_inner()
        .keys;
    for key in &mut keys {
        key.last_used_at = None;
        key.last_used_ip.clear();
        key.last_used_user_agent.clear();
    }
    let events = admin
        .list_key_events(app.acme(pb::ListKeyEventsRequest {
            limit: Some(1000),
            ..Default::default()
        }))
        .await
        .expect("ListKeyEvents succeeds")
        .into_inner()
        .events;
    (keys, events)
}

fn starts_lowercase(text: &str) -> bool {
    text.chars().next().is_some_and(|c| !c.is_uppercase())
}

/// What is wrong with the server's answer to a case, if anything.
fn judge(outcome: Result<(), Status>, expected: &[String]) -> Option<String> {
    let status = match outcome {
        Ok(()) => return Some("accepted".into()),
        Err(status) => status,
    };
    if status.code() != Code::InvalidArgument {
        return Some(format!(
            "{:?} instead of INVALID_ARGUMENT: {}",
            status.code(),
            status.message()
        ));
    }
    let Some(details) = status.get_details_bad_request() else {
        return Some(format!("no BadRequest details: {}", status.message()));
    };
    let mut problems = Vec::new();
    if !starts_lowercase(status.message()) {
        problems.push(format!("message {:?} is not lowercase", status.message()));
    }
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    for field in expected {
        if !fields.contains(&field.as_str()) {
            problems.push(format!("no violation of {field:?} (got {fields:?})"));
        }
    }
    for field in &fields {
        if !expected.iter().any(|e| e == field) {
            problems.push(format!("unexpected violation of {field:?}"));
        }
    }
    for violation in &details.field_violations {
        if violation.description.is_empty() || !starts_lowercase(&violation.description) {
            problems.push(format!(
                "description {:?} of {:?} is not lowercase",
                violation.description, violation.field
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

e2e_test!(every_bad_field_is_named_and_nothing_is_written, |app| {
    let mut admin = app.admin();
    // A key for the id-taking RPCs to hit if a malformed id ever got through;
    // inactive, so ReactivateKey would change it too.
    let target_id = app.create_key("target").scopes(&["orders:read"]).await.id;
    admin
        .update_key(app.acme(pb::UpdateKeyRequest {
            id: target_id.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
            status: pb::KeyStatus::Inactive.into(),
            ..Default::default()
        }))
        .await
        .expect("UpdateKey succeeds");
    // An active product key whose usage ValidateKey would record.
    let CreatedKey {
        id: product_id,
        secret,
        ..
    } = app.create_key("product").scopes(&["orders:*"]).await;

    let ulid = target_id.strip_prefix("key_").expect("ids start with key_");
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let long = |n: usize| "x".repeat(n);

    let t = target_id.as_str();
    let scopes = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
    let meta = |key: &str, value: &str| -> HashMap<String, String> {
        [(key.to_owned(), value.to_owned())].into()
    };

    #[rustfmt::skip]
    let mut cases = vec![
        // CreateKey, one bad field at a time.
        case("create: empty name", create(|r| r.name.clear()), &["name"]),
        case("create: blank name", create(|r| r.name = " \t ".into()), &["name"]),
        case("create: 129-char name", create(|r| r.name = long(129)), &["name"]),
        case("create: 129 two-byte chars in name", create(|r| r.name = "é".repeat(129)), &["name"]),
        case("create: bell in name", create(|r| r.name = "bell\u{7}".into()), &["name"]),
        case("create: newline in name", create(|r| r.name = "two\nlines".into()), &["name"]),
        case("create: 1025-char description", create(|r| r.description = long(1025)), &["description"]),
        case("create: nul in description", create(|r| r.description = "nul\0".into()), &["description"]),
        case("create: escape in description", create(|r| r.description = "\u{1b}[31mred".into()), &["description"]),
        case("create: 129-char scope", create(|r| r.scopes = vec![long(129)]), &["scopes[0]"]),
        case("create: 65 scopes", create(|r| r.scopes = scopes(65)), &["scopes"]),
        case("create: metadata key with a space", create(|r| r.metadata = meta("bad key", "v")), &["metadata[\"bad key\"]"]),
        case("create: empty metadata key", create(|r| r.metadata = meta("", "v")), &["metadata[\"\"]"]),
        case("create: 65-char metadata key", create(|r| r.metadata = meta(&"k".repeat(65), "v")), &[&format!("metadata[{:?}]", "k".repeat(65))]),
        case("create: 33 metadata entries", create(|r| r.metadata = (0..33).map(|i| (format!("k{i}"), "v".into())).collect()), &["metadata"]),
        case("create: 513-char metadata value", create(|r| r.metadata = meta("big", &long(513))), &["metadata[\"big\"]"]),
        case("create: control char in metadata value", create(|r| r.metadata = meta("ansi", "\u{1b}[31m")), &["metadata[\"ansi\"]"]),
        case("create: workspace_id with a space", create(|r| r.workspace_id = "my workspace".into()), &["workspace_id"]),
        case("create: 129-char workspace_id", create(|r| r.workspace_id = long(129)), &["workspace_id"]),
        case("create: 129-char user_id", create(|r| r.user_id = long(129)), &["user_id"]),
        case("create: user_id with a slash", create(|r| r.user_id = "users/42".into()), &["user_id"]),
        case("create: service_account_id with a space", create(|r| r.service_account_id = "svc acct".into()), &["service_account_id"]),
        case("create: environment 99", create(|r| r.environment = 99), &["environment"]),
        case("create: environment -1", create(|r| r.environment = -1), &["environment"]),
        case("create: kind 99", create(|r| r.kind = 99), &["kind"]),
        case("create: past expires_at", create(|r| r.expires_at = timestamp(past)), &["expires_at"]),
        case("create: CIDR prefix past 32", create(|r| r.allowed_cidrs = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()]), &["allowed_cidrs[1]"]),
        case("create: host name as CIDR", create(|r| r.allowed_cidrs = vec!["office.example.com".into()]), &["allowed_cidrs[0]"]),
        case("create: empty CIDR", create(|r| r.allowed_cidrs = vec![String::new()]), &["allowed_cidrs[0]"]),
        case("create: 65-char CIDR", create(|r| r.allowed_cidrs = vec![long(65)]), &["allowed_cidrs[0]"]),
        case("create: 65 CIDRs", create(|r| r.allowed_cidrs = (0..65).map(|i| format!("10.0.{i}.0/24")).collect()), &["allowed_cidrs"]),
        case("create: 1000 bad CIDRs", create(|r| r.allowed_cidrs = vec!["bad".into(); 1000]), &["allowed_cidrs"]),
        case("create: rate limit of zero duration", create(|r| r.rate_limits = vec![limit("requests", 100, 0, 0)]), &["rate_limits[0].duration"]),
        case("create: rate limit without a duration", create(|r| r.rate_limits = vec![pb::RateLimit { duration: None, ..limit("requests", 100, 1, 0) }]), &["rate_limits[0].duration"]),
        case("create: rate limit of 1.5 s", create(|r| r.rate_limits = vec![pb::RateLimit { duration: Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }), ..limit("requests", 100, 1, 0) }]), &["rate_limits[0].duration"]),
        case("create: rate limit of 31 days", create(|r| r.rate_limits = vec![limit("monthly", 100, 31 * 86_400, 0)]), &["rate_limits[0].duration"]),
        case("create: negative rate limit", create(|r| r.rate_limits = vec![limit("ok", 1, 1, 0), limit("requests", -1, 1, 0)]), &["rate_limits[1].limit"]),
        case("create: rate limit of zero", create(|r| r.rate_limits = vec![limit("requests", 0, 1, 0)]), &["rate_limits[0].limit"]),
        case("create: negative rate limit cost", create(|r| r.rate_limits = vec![limit("requests", 100, 1, -5)]), &["rate_limits[0].cost"]),
        case("create: rate limit name with a space", create(|r| r.rate_limits = vec![limit("per second", 100, 1, 0)]), &["rate_limits[0].name"]),
        case("create: empty rate limit name", create(|r| r.rate_limits = vec![limit("", 100, 1, 0)]), &["rate_limits[0].name"]),
        case("create: duplicate rate limit names", create(|r| r.rate_limits = vec![limit("requests", 100, 1, 0), limit("bulk", 5, 10, 0), limit("requests", 1000, 60, 0)]), &["rate_limits[2].name"]),
        case("create: 9 rate limits", create(|r| r.rate_limits = (0..9).map(|i| limit(&format!("l{i}"), 100, 1, 0)).collect()), &["rate_limits"]),
        case("create: 1000 bad rate limits", create(|r| r.rate_limits = vec![limit("", -1, 0, -1); 1000]), &["rate_limits"]),
        case("create: negative credits", create(|r| r.credits = Some(credits(-1, 0, 0))), &["credits.remaining"]),
        case("create: credits past the maximum", create(|r| r.credits = Some(credits(1_000_000_000_001, 0, 0))), &["credits.remaining"]),
        case("create: refill amount without interval", create(|r| r.credits = Some(credits(10, 100, 0))), &["credits.refill_interval"]),
        case("create: refill interval without amount", create(|r| r.credits = Some(credits(10, 0, 1))), &["credits.refill_amount"]),
        case("create: negative refill amount", create(|r| r.credits = Some(credits(10, -100, 2))), &["credits.refill_amount"]),
        case("create: refill interval 9", create(|r| r.credits = Some(credits(10, 100, 9))), &["credits.refill_interval"]),
        case("create: expires_at in the year 10000", create(|r| r.expires_at = Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 })), &["expires_at"]),
        case("create: expires_at with negative nanos", create(|r| r.expires_at = Some(prost_types::Timestamp { seconds: 4_102_444_800, nanos: -1 })), &["expires_at"]),

        // ListKeys.
        case("list: limit 0", list(|r| r.limit = Some(0)), &["limit"]),
        case("list: limit 1001", list(|r| r.limit = Some(1001)), &["limit"]),
        case("list: limit -1", list(|r| r.limit = Some(-1)), &["limit"]),
        case("list: both cursors", list(|r| { r.after_id = target_id.clone(); r.before_id = product_id.clone(); }), &["before_id"]),
        case("list: malformed after_id", list(|r| r.after_id = "key_123".into()), &["after_id"]),
        case("list: malformed before_id", list(|r| r.before_id = format!("usr_{ulid}")), &["before_id"]),
        case("list: status 99", list(|r| r.statuses = vec![99]), &["statuses[0]"]),
        case("list: KEY_STATUS_UNSPECIFIED", list(|r| r.statuses = vec![pb::KeyStatus::Active.into(), pb::KeyStatus::Unspecified.into()]), &["statuses[1]"]),
        case("list: workspace_id with a space", list(|r| r.workspace_id = "a b".into()), &["workspace_id"]),
        case("list: 129-char created_by_id", list(|r| r.created_by_id = long(129)), &["created_by_id"]),
        case("list: user_id with a slash", list(|r| r.user_id = "users/1".into()), &["user_id"]),
        case("list: service_account_id with a space", list(|r| r.service_account_id = "a b".into()), &["service_account_id"]),
        case("list: last_used_before with negative nanos", list(|r| r.last_used_before = Some(prost_types::Timestamp { seconds: 0, nanos: -5 })), &["last_used_before"]),
        case("list: used_since with negative nanos", list(|r| r.used_since = Some(prost_types::Timestamp { seconds: 0, nanos: -5 })), &["used_since"]),
        case("list: unused_since not after used_since", list(|r| { r.used_since = timestamp(past); r.unused_since = timestamp(past); }), &["unused_since"]),

        // GetKeyUsage, on the real target.
        case("usage: from = to", usage(t, Some(past), Some(past)), &["to"]),
        case("usage: from after to", usage(t, Some(past), Some(past - chrono::Duration::minutes(1))), &["to"]),
        case("usage: more than 31 days", usage(t, Some(past - chrono::Duration::days(31)), Some(past + chrono::Duration::seconds(1))), &["from"]),
        case("usage: to with negative nanos", Call::Usage(pb::GetKeyUsageRequest { id: t.to_owned(), from: None, to: Some(prost_types::Timestamp { seconds: 0, nanos: -5 }) }), &["to"]),

        // UpdateKey, on the real (inactive) target.
        case("update: no update_mask", update(t, &[], |r| r.update_mask = None), &["update_mask"]),
        case("update: empty update_mask", update(t, &[], |_| {}), &["update_mask"]),
        case("update: unknown path", update(t, &["name", "color"], |_| {}), &["update_mask.paths[1]"]),
        case("update: immutable path", update(t, &["workspace_id"], |_| {}), &["update_mask.paths[0]"]),
        case("update: status ARCHIVED", update(t, &["status"], |r| r.status = pb::KeyStatus::Archived.into()), &["status"]),
        case("update: status REVOKED", update(t, &["status"], |r| r.status = pb::KeyStatus::Revoked.into()), &["status"]),
        case("update: status UNSPECIFIED", update(t, &["status"], |r| r.status = pb::KeyStatus::Unspecified.into()), &["status"]),
        case("update: status 99", update(t, &["status"], |r| r.status = 99), &["status"]),
        case("update: past expires_at", update(t, &["expires_at"], |r| r.expires_at = timestamp(past)), &["expires_at"]),
        case("update: empty name", update(t, &["name"], |r| r.name.clear()), &["name"]),
        case("update: 129-char name", update(t, &["name", "description"], |r| r.name = long(129)), &["name"]),
        case("update: nul in description", update(t, &["description"], |r| r.description = "\0".into()), &["description"]),
        case("update: bad scope", update(t, &["scopes"], |r| r.scopes = vec!["Orders".into()]), &["scopes[0]"]),
        case("update: 65 scopes", update(t, &["scopes"], |r| r.scopes = scopes(65)), &["scopes"]),
        case("update: bad metadata key", update(t, &["metadata"], |r| r.metadata = meta("bad key", "v")), &["metadata[\"bad key\"]"]),
        case("update: bad CIDR", update(t, &["allowed_cidrs"], |r| r.allowed_cidrs = vec!["::/129".into()]), &["allowed_cidrs[0]"]),
        case("update: zero rate-limit duration", update(t, &["rate_limits"], |r| r.rate_limits = vec![limit("requests", 100, 0, 0)]), &["rate_limits[0].duration"]),
        case("update: 9 rate limits", update(t, &["rate_limits"], |r| r.rate_limits = (0..9).map(|i| limit(&format!("l{i}"), 1, 1, 0)).collect()), &["rate_limits"]),
        case("update: negative credits", update(t, &["credits"], |r| r.credits = Some(credits(-5, 0, 0))), &["credits.remaining"]),
        case("update: refill interval without amount", update(t, &["credits", "name"], |r| r.credits = Some(credits(5, 0, 2))), &["credits.refill_amount"]),
        case("update: 65 CIDRs", update(t, &["allowed_cidrs"], |r| r.allowed_cidrs = (0..65).map(|i| format!("10.0.{i}.0/24")).collect()), &["allowed_cidrs"]),

        // RotateKey, on the real target.
        case("rotate: negative grace_period", rotate(t, -1, 0), &["grace_period"]),
        case("rotate: negative nanos", rotate(t, 0, -1), &["grace_period"]),
        case("rotate: nanos out of range", rotate(t, 0, 1_000_000_000), &["grace_period"]),
        case("rotate: 400 days", rotate(t, 400 * 24 * 3600, 0), &["grace_period"]),
        case("rotate: 365 days and a second", rotate(t, 365 * 24 * 3600 + 1, 0), &["grace_period"]),

        // ListKeyEvents.
        case("events: limit 0", events(|r| r.limit = Some(0)), &["limit"]),
        case("events: limit 1001", events(|r| r.limit = Some(1001)), &["limit"]),
        case("events: both cursors", events(|r| { r.after_seq = Some(5); r.before_seq = Some(1); }), &["before_seq"]),
        case("events: negative after_seq", events(|r| r.after_seq = Some(-1)), &["after_seq"]),
        case("events: negative before_seq", events(|r| r.before_seq = Some(-1)), &["before_seq"]),
        case("events: malformed key_id", events(|r| r.key_id = "key_123".into()), &["key_id"]),

        // ValidateKey, with a real, valid key (a usage record would show).
        case("validate: bad required scope", validate(&secret, |r| r.required_scopes.push("Orders".into())), &["required_scopes[1]"]),
        case("validate: empty required scope", validate(&secret, |r| r.required_scopes = vec![String::new()]), &["required_scopes[0]"]),
        case("validate: 65 required scopes", validate(&secret, |r| r.required_scopes = scopes(65)), &["required_scopes"]),
        case("validate: 513-char user_agent", validate(&secret, |r| r.user_agent = long(513)), &["user_agent"]),
        case("validate: newline in user_agent", validate(&secret, |r| r.user_agent = "agent\r\nx-injected: 1".into()), &["user_agent"]),
        // Strings that are not UTF-8: prost would refuse the whole message
        // (INTERNAL); keyward names the field.
        case("validate: key not UTF-8", not_utf8(&secret, "sk_", |_| {}), &["key"]),
        case("validate: required scope not UTF-8", not_utf8(&secret, "b:\u{e9}", |r| r.required_scopes.push("b:\u{e9}".into())), &["required_scopes[1]"]),
        case("validate: client_ip not UTF-8", not_utf8(&secret, "203.", |_| {}), &["client_ip"]),
        case("validate: user_agent not UTF-8", not_utf8(&secret, "bad-input-test", |_| {}), &["user_agent"]),
        case("validate: idempotency_key not UTF-8", not_utf8(&secret, "retry-1", |r| r.idempotency_key = "retry-1".into()), &["idempotency_key"]),
        case("validate: 65-char client_ip", validate(&secret, |r| r.client_ip = long(65)), &["client_ip"]),
        case("validate: client_ip not an address", validate(&secret, |r| r.client_ip = "unknown".into()), &["client_ip"]),
        case("validate: client_ip with a port", validate(&secret, |r| r.client_ip = "203.0.113.7:443".into()), &["client_ip"]),
        case("validate: client_ip a CIDR", validate(&secret, |r| r.client_ip = "203.0.113.0/24".into()), &["client_ip"]),

        // Several bad fields at once: every one is named in the one response.
        case(
            "create: eight bad fields",
            create(|r| {
                r.name.clear();
                r.description = "\0".into();
                r.scopes = vec!["ok".into(), "Bad".into()];
                r.metadata = meta("bad key", "v");
                r.workspace_id = "a b".into();
                r.environment = 99;
                r.kind = 99;
                r.expires_at = timestamp(past);
            }),
            &["name", "description", "scopes[1]", "metadata[\"bad key\"]", "workspace_id", "environment", "kind", "expires_at"],
        ),
        case(
            "create: rate limits and credits, five bad fields",
            create(|r| {
                r.rate_limits = vec![limit("a b", 1, 1, 0), limit("ok", -1, 1, 0), limit("fine", 1, 0, 0)];
                r.credits = Some(credits(-1, -1, 1));
            }),
            &["rate_limits[0].name", "rate_limits[1].limit", "rate_limits[2].duration", "credits.remaining", "credits.refill_amount"],
        ),
        case(
            "update: five bad fields",
            update("key_123", &["name", "status", "expires_at", "colour"], |r| {
                r.name = long(129);
                r.status = pb::KeyStatus::Revoked.into();
                r.expires_at = timestamp(past);
            }),
            &["id", "name", "status", "expires_at", "update_mask.paths[3]"],
        ),
        case(
            "list: four bad fields",
            list(|r| { r.limit = Some(0); r.after_id = "x".into(); r.before_id = "y".into(); r.statuses = vec![42]; }),
            &["limit", "after_id", "before_id", "statuses[0]"],
        ),
        case(
            "validate: three bad fields",
            validate(&secret, |r| { r.required_scopes = vec!["A".into()]; r.client_ip = long(65); r.user_agent = long(513); }),
            &["required_scopes[0]", "client_ip", "user_agent"],
        ),
        case(
            "events: three bad fields",
            events(|r| { r.limit = Some(-3); r.after_seq = Some(-1); r.key_id = "k".into(); }),
            &["limit", "after_seq", "key_id"],
        ),
        case("rotate: two bad fields", rotate("key_123", -5, 0), &["id", "grace_period"]),
    ];

    // Scope syntax, each as the second of two scopes.
    for bad in [
        "Orders",
        "orders:",
        "a b",
        "*:read",
        "",
        "orders::read",
        "or*ders",
        ":read",
    ] {
        cases.push(case(
            &format!("create: scope {bad:?}"),
            create(|r| r.scopes = vec!["orders:read".into(), bad.into()]),
            &["scopes[1]"],
        ));
    }
    // Malformed ids on every RPC that takes one, several close to the real target's id.
    let malformed = [
        String::new(),
        "key_123".to_owned(),
        format!("usr_{ulid}"),
        format!("key_{}", ulid.to_lowercase()),
        format!("{target_id} "),
        format!("key_{ulid}0"),
        "key_81JC3Y4M9ZQ8W6D4T2B1N0XK7P".to_owned(),
        "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7U".to_owned(),
    ];
    for id in &malformed {
        for (rpc, call) in by_id(id) {
            match rpc {
                // An empty key_id means "all keys".
                "ListKeyEvents" if id.is_empty() => {}
                "ListKeyEvents" => {
                    cases.push(case(&format!("{rpc}: key_id {id:?}"), call, &["key_id"]))
                }
                _ => cases.push(case(&format!("{rpc}: id {id:?}"), call, &["id"])),
            }
        }
    }

    let initial = snapshot(app).await;
    let mut failures = Vec::new();
    let mut previous = initial.clone();
    for Case { what, call, fields } in cases {
        if let Some(problem) = judge(send(app, call).await, &fields) {
            failures.push(format!("{what}: {problem}"));
        }
        let now = snapshot(app).await;
        if now != previous {
            failures.push(format!("{what}: something was written"));
            previous = now;
        }
    }
    // Give usage recording a few flushes to show, then compare once more.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let last = snapshot(app).await;
    if last != initial {
        failures.push("the table as a whole wrote something".into());
    }
    let product_now = admin
        .get_key(app.acme(pb::GetKeyRequest {
            id: product_id.clone(),
        }))
        .await
        .expect("GetKey succeeds")
        .into_inner()
        .api_key
        .expect("the key");
    if product_now.last_used_at.is_some() {
        failures.push("a rejected ValidateKey recorded usage".into());
    }
    assert!(
        failures.is_empty(),
        "{} bad-input failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // And the same requests, made valid, work: the table tested what it meant to.
    let ok = send(app, validate(&secret, |_| {})).await;
    assert!(ok.is_ok(), "a valid ValidateKey works: {ok:?}");
    let ok = send(app, update(t, &["name"], |_| {})).await;
    assert!(ok.is_ok(), "a valid UpdateKey works: {ok:?}");
    let ok = send(app, create(|_| {})).await;
    assert!(ok.is_ok(), "a valid CreateKey works: {ok:?}");
    let ok = send(
        app,
        create(|r| {
            r.rate_limits = vec![
                limit("requests", 100, 1, 0),
                limit("bulk", 1000, 2_592_000, 1_000_000),
            ];
            r.credits = Some(credits(1_000_000_000_000, 1, 2));
        }),
    )
    .await;
    assert!(
        ok.is_ok(),
        "rate limits and credits at their bounds work: {ok:?}"
    );
});
