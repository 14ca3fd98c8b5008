//! The README's "Using it with grpcurl" section, run with the real grpcurl
//! (v1.8, which speaks server reflection v1alpha only) against a real keyward:
//! `list` and `describe` show the services with their proto comments, and the
//! README's own commands, read from README.md, create, validate, list,
//! archive, reactivate, rotate, update and audit a key. grpcurl also watches
//! `grpc.health.v1.Health` follow a database that is cut and restored.
//!
//! grpcurl is `KEYWARD_GRPCURL_BIN`, else `target/tools/venv/bin/grpcurl`
//! (`bash scripts/install-tools.sh`), else `grpcurl` on `PATH`. Without one the
//! tests print `SKIPPED: …` and pass, except under CI (any truthy `CI`), where they fail.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_auth::ClientTls;
use keyward_store::testing::{Backend, on_fresh_database};
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::helpers::certs::display;
use crate::helpers::proxy::proxied_database;
use crate::helpers::{TestApp, eventually, missing_tool, readme, record_secret, with_app};

/// The address the README's commands use; replaced by the test server's.
const README_ADDR: &str = "127.0.0.1:50051";
/// The README's placeholder for a raw key.
pub(crate) const README_SECRET: &str = "sk_live_…";
/// The README's placeholder for a key id.
const README_KEY_ID: &str = "key_…";

pub(crate) const CREATE: &str = "keyward.v1.KeyAdminService/CreateKey";
pub(crate) const LIST: &str = "keyward.v1.KeyAdminService/ListKeys";
const ARCHIVE: &str = "keyward.v1.KeyAdminService/ArchiveKey";
const REACTIVATE: &str = "keyward.v1.KeyAdminService/ReactivateKey";
const ROTATE: &str = "keyward.v1.KeyAdminService/RotateKey";
const UPDATE: &str = "keyward.v1.KeyAdminService/UpdateKey";
const EVENTS: &str = "keyward.v1.KeyAdminService/ListKeyEvents";
pub(crate) const VALIDATE: &str = "keyward.v1.KeyValidationService/ValidateKey";
const HEALTH_CHECK: &str = "grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "grpc.health.v1.Health/Watch";
const ADMIN_SERVICE: &str = "keyward.v1.KeyAdminService";
const VALIDATION_SERVICE: &str = "keyward.v1.KeyValidationService";

/// `--stale-if-error` of the health test: long enough to check validation
/// while the database is away, short enough to wait out.
const STALE_IF_ERROR: Duration = Duration::from_secs(10);

/// How long one grpcurl call may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe_show_the_services_and_their_comments() {
    if grpcurl_or_skip().is_some() {
        with_app(Backend::Sqlite, reflection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_manage_a_key() {
    if grpcurl_or_skip().is_some() {
        with_app(Backend::Sqlite, walkthrough).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_give_a_key_an_ip_allowlist() {
    if grpcurl_or_skip().is_some() {
        with_app(Backend::Sqlite, allowlist).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_give_a_key_rate_limits_and_credits() {
    if grpcurl_or_skip().is_some() {
        with_app(Backend::Sqlite, rate_limits).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_request_ids_show_in_grpcurl() {
    if grpcurl_or_skip().is_some() {
        with_app(Backend::Sqlite, errors).await;
    }
}

/// SPEC §11, seen by an outside client: with the database cut (a TCP proxy
/// in front of PostgreSQL closes every connection and refuses new ones),
/// `Health/Check` says NOT_SERVING for the admin service while validation
/// stays SERVING and answers a cached key, until stale-if-error runs out;
/// once the database is back both are SERVING again. One `Health/Watch`
/// stream of the admin service shows SERVING → NOT_SERVING → SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_cut_database() {
    if grpcurl_or_skip().is_none() {
        return;
    }
    on_fresh_database(Backend::Postgres, |url| async move {
        let (proxy, proxied_url) = proxied_database(&url).await;
        let app = TestApp::start(&proxied_url, |settings| {
            settings.validator.stale_if_error = STALE_IF_ERROR;
        })
        .await;
        health_across_a_cut(&app, &proxy).await;
        app.stop().await;
    })
    .await;
}

async fn health_across_a_cut(app: &TestApp, proxy: &crate::helpers::proxy::Proxy) {
    assert_eq!(health(app, ADMIN_SERVICE).await, "SERVING");
    assert_eq!(health(app, VALIDATION_SERVICE).await, "SERVING");
    let mut watch = HealthWatch::start(app, ADMIN_SERVICE);
    assert_eq!(
        watch.next().await,
        "SERVING",
        "Watch starts with the status"
    );

    // A key validated once is in the cache.
    let created = app.create_key("cached").scopes(&["orders:read"]).await;
    let validate = readme_command(app, VALIDATE).with(README_SECRET, &created.secret);
    assert_valid(&validate.clone().run().await.json(), &created.id);

    proxy.cut();
    let cut_at = Instant::now();
    let admin_down = eventually(Duration::from_secs(15), || async {
        (health(app, ADMIN_SERVICE).await == "NOT_SERVING").then_some(())
    })
    .await;
    assert!(
        admin_down.is_some(),
        "the admin service is NOT_SERVING within 15 s of the cut"
    );
    assert_eq!(
        watch.next().await,
        "NOT_SERVING",
        "Watch streams the change"
    );
    // Validation answers from cache for stale-if-error after the last sync,
    // which was at most a sync interval before the cut.
    let validation = health(app, VALIDATION_SERVICE).await;
    let verdict = validate.clone().run().await;
    if cut_at.elapsed() < STALE_IF_ERROR - Duration::from_secs(1) {
        assert_eq!(validation, "SERVING", "validation answers from cache");
        assert_valid(&verdict.json(), &created.id);
    }

    // Beyond stale-if-error: NOT_SERVING, and the cached key UNAVAILABLE
    // (grpcurl exits 64 + 14), never valid.
    let validation_down = eventually(STALE_IF_ERROR + Duration::from_secs(10), || async {
        (health(app, VALIDATION_SERVICE).await == "NOT_SERVING").then_some(())
    })
    .await;
    assert!(
        validation_down.is_some(),
        "validation NOT_SERVING once stale-if-error has run out"
    );
    assert!(
        cut_at.elapsed() >= STALE_IF_ERROR - Duration::from_secs(1),
        "validation stayed SERVING for stale-if-error"
    );
    let refused = validate.clone().run().await;
    assert_eq!(refused.code, Some(64 + 14), "UNAVAILABLE: {refused}");
    assert!(refused.stderr.contains("Code: Unavailable"), "{refused}");

    proxy.restore();
    assert_eq!(
        watch.next().await,
        "SERVING",
        "the same Watch stream streams the recovery"
    );
    let both_back = eventually(Duration::from_secs(15), || async {
        (health(app, ADMIN_SERVICE).await == "SERVING"
            && health(app, VALIDATION_SERVICE).await == "SERVING")
            .then_some(())
    })
    .await;
    assert!(both_back.is_some(), "both services SERVING again");
    assert_valid(&validate.run().await.json(), &created.id);
    watch.assert_quiet();
}

/// The README's allowlist commands: CreateKey with `allowed_cidrs`,
/// ValidateKey with `client_ip` inside and outside, UpdateKey replacing it.
async fn allowlist(app: &TestApp) {
    let created = readme_command_with(app, CREATE, "allowed_cidrs")
        .run()
        .await
        .json();
    let secret = str_at(&created, "/secret").to_owned();
    record_secret(&secret);
    let id = str_at(&created, "/apiKey/id").to_owned();
    assert_eq!(
        created["apiKey"]["allowedCidrs"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    let validate = readme_command_with(app, VALIDATE, "client_ip").with(README_SECRET, &secret);
    let inside = validate.clone().run().await.json();
    assert_valid(&inside, &id);
    assert_eq!(
        inside["allowedCidrs"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    let outside = validate
        .clone()
        .with("203.0.113.7", "198.51.100.7")
        .run()
        .await
        .json();
    assert_invalid(&outside, "VALIDATION_CODE_IP_NOT_ALLOWED");
    assert!(
        outside.get("keyId").is_none(),
        "nothing of the key: {outside:#}"
    );

    let updated = readme_command_with(app, UPDATE, "allowed_cidrs")
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    assert_eq!(
        updated["apiKey"]["allowedCidrs"],
        serde_json::json!(["198.51.100.7/32"])
    );
    assert_invalid(
        &validate.clone().run().await.json(),
        "VALIDATION_CODE_IP_NOT_ALLOWED",
    );
    let moved = validate
        .with("203.0.113.7", "198.51.100.7")
        .run()
        .await
        .json();
    assert_valid(&moved, &id);
}

/// README's "Rate limits and credits" grpcurl commands: CreateKey with
/// rate limits and credits, then UpdateKey replacing both.
async fn rate_limits(app: &TestApp) {
    let commands: Vec<Grpcurl> = readme_section("### Rate limits and credits")
        .into_iter()
        .map(|command| {
            command
                .with(README_ADDR, &app.addr.to_string())
                .with("$ADMIN", &app.acme_key)
        })
        .collect();
    let [create, update] = <[Grpcurl; 2]>::try_from(commands).expect("CreateKey and UpdateKey");
    let created = create.run().await.json();
    record_secret(str_at(&created, "/secret"));
    let id = str_at(&created, "/apiKey/id").to_owned();
    // Proto3 JSON: int64 as strings, a default cost of 1 shown.
    assert_eq!(
        created["apiKey"]["rateLimits"],
        serde_json::json!([
            {"name": "bulk", "limit": "1000", "duration": "10s", "cost": "5"},
            {"name": "requests", "limit": "100", "duration": "1s", "cost": "1"},
        ])
    );
    let credits = &created["apiKey"]["credits"];
    assert_eq!(credits["remaining"], "10000");
    assert_eq!(credits["refillAmount"], "10000");
    assert_eq!(credits["refillInterval"], "REFILL_INTERVAL_MONTHLY");
    assert!(credits["refillsAt"].is_string(), "{credits:#}");

    let updated = update.with(README_KEY_ID, &id).run().await.json();
    assert_eq!(
        updated["apiKey"]["rateLimits"],
        serde_json::json!([{"name": "requests", "limit": "10", "duration": "1s", "cost": "1"}])
    );
    assert_eq!(
        updated["apiKey"]["credits"],
        serde_json::json!({"remaining": "500"})
    );
    assert_eq!(
        app.get_key(&id).await.credits.map(|c| c.remaining),
        Some(500)
    );
}

async fn reflection(app: &TestApp) {
    let list = readme_command(app, "list").run().await.success();
    let services: Vec<&str> = list.stdout.lines().map(str::trim).collect();
    for service in [
        "keyward.v1.KeyAdminService",
        "keyward.v1.KeyValidationService",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(
            services.contains(&service),
            "`grpcurl list` shows {service}; it showed:\n{}",
            list.stdout
        );
    }

    let describe = readme_command(app, "describe").run().await.success();
    let admin = &describe.stdout;
    assert!(
        admin.starts_with("keyward.v1.KeyAdminService is a service:"),
        "{admin}"
    );
    for comment in [
        // The service's comment.
        "// Manages the API keys of one organization.",
        // CreateKey's and ArchiveKey's.
        "// Creates a key. The raw key is in the response's `secret`, and only there.",
        "// Soft deletes a key: it stops validating at once. Reversible; idempotent.",
        // A comment spanning two lines (RotateKey's).
        "// and owner; the old key keeps working until its grace period ends.",
    ] {
        assert!(
            admin.contains(comment),
            "`grpcurl describe keyward.v1.KeyAdminService` shows {comment:?}; it showed:\n{admin}"
        );
    }
    assert!(
        admin.contains("rpc CreateKey ( .keyward.v1.CreateKeyRequest ) returns ( .keyward.v1.CreateKeyResponse );"),
        "{admin}"
    );

    let describe = readme_command(app, "describe")
        .last_arg("keyward.v1.CreateKeyRequest")
        .run()
        .await
        .success();
    let request = &describe.stdout;
    for line in [
        "keyward.v1.CreateKeyRequest is a message:",
        "// Required. 1 to 128 characters, not blank, no control characters.",
        "string name = 1;",
        "// Up to 64 scopes: `*`, or `:`-separated segments of [a-z0-9_.-] whose last may be `*`.",
        "repeated string scopes = 3;",
    ] {
        assert!(
            request.contains(line),
            "`grpcurl describe keyward.v1.CreateKeyRequest` shows {line:?}; it showed:\n{request}"
        );
    }
}

async fn walkthrough(app: &TestApp) {
    // Create a key: the secret is in the response, lowerCamelCase JSON.
    let created = readme_command(app, CREATE).run().await.json();
    let secret = str_at(&created, "/secret").to_owned();
    record_secret(&secret);
    let id = str_at(&created, "/apiKey/id").to_owned();
    assert!(secret.starts_with("sk_live_"), "{created:#}");
    assert!(id.starts_with("key_"), "{created:#}");
    assert_eq!(str_at(&created, "/apiKey/name"), "orders service");
    assert_eq!(created["apiKey"]["scopes"], serde_json::json!(["orders:*"]));
    assert_eq!(str_at(&created, "/apiKey/metadata/team"), "payments");
    assert_eq!(str_at(&created, "/apiKey/status"), "KEY_STATUS_ACTIVE");
    assert_eq!(str_at(&created, "/apiKey/organizationId"), "acme");

    // Validate it, requiring orders:read (granted by orders:*).
    let validate = |key: &str| readme_command(app, VALIDATE).with(README_SECRET, key);
    let verdict = validate(&secret).run().await.json();
    assert_valid(&verdict, &id);
    assert_eq!(str_at(&verdict, "/organizationId"), "acme");
    assert_eq!(str_at(&verdict, "/metadata/team"), "payments");

    // List the active keys, with either header.
    for listing in [
        readme_command(app, LIST),
        readme_command(app, LIST).with("authorization: Bearer $ADMIN", "x-api-key: $ADMIN"),
    ] {
        let listed = listing.run().await.json();
        assert!(key_ids(&listed).contains(&id), "{id} is listed: {listed:#}");
    }

    // Archive: it stops validating at once.
    let archived = readme_command(app, ARCHIVE)
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    assert_eq!(str_at(&archived, "/apiKey/status"), "KEY_STATUS_ARCHIVED");
    assert!(
        archived["apiKey"].get("archivedAt").is_some(),
        "{archived:#}"
    );
    assert_invalid(
        &validate(&secret).run().await.json(),
        "VALIDATION_CODE_ARCHIVED",
    );

    // Reactivate: it validates again.
    let reactivated = readme_command(app, REACTIVATE)
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    assert_eq!(str_at(&reactivated, "/apiKey/status"), "KEY_STATUS_ACTIVE");
    assert_valid(&validate(&secret).run().await.json(), &id);

    // Rotate with a 1 h grace period: both keys validate.
    let rotated = readme_command(app, ROTATE)
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    let new_secret = str_at(&rotated, "/secret").to_owned();
    record_secret(&new_secret);
    let new_id = str_at(&rotated, "/apiKey/id").to_owned();
    assert_ne!(new_id, id, "{rotated:#}");
    assert_ne!(new_secret, secret, "{rotated:#}");
    assert_eq!(str_at(&rotated, "/apiKey/rotatedFromId"), id);
    assert_eq!(str_at(&rotated, "/previousKey/id"), id);
    assert!(
        rotated["previousKey"].get("expiresAt").is_some(),
        "the grace period ends the old key: {rotated:#}"
    );
    assert_valid(&validate(&secret).run().await.json(), &id);
    assert_valid(&validate(&new_secret).run().await.json(), &new_id);

    // Update the fields named in the mask: the old key becomes inactive.
    let updated = readme_command(app, UPDATE)
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    assert_eq!(str_at(&updated, "/apiKey/status"), "KEY_STATUS_INACTIVE");
    assert_eq!(
        updated["apiKey"]["scopes"],
        serde_json::json!(["orders:read"])
    );
    assert_invalid(
        &validate(&secret).run().await.json(),
        "VALIDATION_CODE_INACTIVE",
    );
    assert_valid(&validate(&new_secret).run().await.json(), &new_id);

    // The audit log of the old key, newest first.
    let events = readme_command(app, EVENTS)
        .with(README_KEY_ID, &id)
        .run()
        .await
        .json();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap_or_else(|| panic!("ListKeyEvents answers events: {events:#}"))
        .iter()
        .map(|event| str_at(event, "/type"))
        .collect();
    assert_eq!(
        types,
        [
            "KEY_EVENT_TYPE_UPDATED",
            "KEY_EVENT_TYPE_ROTATED",
            "KEY_EVENT_TYPE_REACTIVATED",
            "KEY_EVENT_TYPE_ARCHIVED",
            "KEY_EVENT_TYPE_CREATED",
        ],
        "{events:#}"
    );
}

async fn errors(app: &TestApp) {
    let all_keys = readme_command(app, LIST).data("{}");
    let before = key_ids(&all_keys.clone().run().await.json());

    // A bad field: INVALID_ARGUMENT (exit code 64 + 3) naming the field.
    let rejected = readme_command(app, CREATE)
        .data(r#"{"name": ""}"#)
        .run()
        .await;
    assert_eq!(rejected.code, Some(67), "{rejected}");
    assert!(
        rejected.stderr.contains("Code: InvalidArgument"),
        "{rejected}"
    );
    let violations = field_violations(&rejected);
    assert!(
        violations
            .iter()
            .any(|(field, description)| field == "name" && !description.is_empty()),
        "a described violation of field name: {violations:?}\n{rejected}"
    );

    // And nothing was created.
    assert_eq!(key_ids(&all_keys.run().await.json()), before);

    // x-request-id on the response headers (shown by -v), generated...
    let verbose = readme_command(app, VALIDATE).flags(&["-v"]);
    let generated = verbose.clone().run().await.success();
    let id = response_header(&generated.stdout, "x-request-id")
        .unwrap_or_else(|| panic!("x-request-id is a response header: {generated}"));
    assert_eq!(id.len(), 26, "a ULID: {generated}");

    // ...or echoed.
    let echoed = verbose
        .flags(&["-H", "x-request-id: grpcurl-e2e-1"])
        .run()
        .await
        .success();
    assert_eq!(
        response_header(&echoed.stdout, "x-request-id").as_deref(),
        Some("grpcurl-e2e-1"),
        "{echoed}"
    );
}

// ---------------------------------------------------------------- verdicts

#[track_caller]
pub(crate) fn assert_valid(verdict: &Value, id: &str) {
    assert_eq!(verdict["valid"], Value::Bool(true), "{verdict:#}");
    assert_eq!(str_at(verdict, "/code"), "VALIDATION_CODE_VALID");
    assert_eq!(str_at(verdict, "/keyId"), id);
}

/// Proto3 JSON leaves out `valid: false`, so `valid` is false or absent.
#[track_caller]
fn assert_invalid(verdict: &Value, code: &str) {
    assert!(
        matches!(verdict.get("valid"), None | Some(Value::Bool(false))),
        "{verdict:#}"
    );
    assert_eq!(str_at(verdict, "/code"), code, "{verdict:#}");
}

/// The string at a JSON pointer, or a panic showing the document.
#[track_caller]
pub(crate) fn str_at<'a>(json: &'a Value, pointer: &str) -> &'a str {
    match json.pointer(pointer).and_then(Value::as_str) {
        Some(text) => text,
        None => panic!("a string at {pointer} in {json:#}"),
    }
}

/// The ids of a ListKeys response.
#[track_caller]
fn key_ids(listed: &Value) -> Vec<String> {
    let Some(keys) = listed["keys"].as_array() else {
        panic!("ListKeys answers keys: {listed:#}");
    };
    keys.iter()
        .map(|key| str_at(key, "/id").to_owned())
        .collect()
}

/// The value of a response header in `grpcurl -v` output.
fn response_header(verbose: &str, name: &str) -> Option<String> {
    let headers = verbose.split("Response headers received:").nth(1)?;
    let headers = headers.split("\n\n").next()?;
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The `(field, description)` pairs of the google.rpc.BadRequest in grpcurl's
/// error output. grpcurl decodes it when reflection knows the type and shows
/// the raw bytes (`@value`, base64) when it does not.
fn field_violations(run: &Run) -> Vec<(String, String)> {
    let details = run
        .stderr
        .split("Details:")
        .nth(1)
        .unwrap_or_else(|| panic!("the error has details: {run}"));
    // "  1)\t{...}" then continuation lines indented with "    \t".
    let json: String = details
        .lines()
        .map(|line| {
            let line = line.trim_start();
            line.strip_prefix("1)").unwrap_or(line).trim()
        })
        .collect();
    let detail: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("one JSON detail ({e}): {json}\n{run}"));
    assert_eq!(
        str_at(&detail, "/@type"),
        "type.googleapis.com/google.rpc.BadRequest",
        "{run}"
    );
    if let Some(violations) = detail.get("fieldViolations").and_then(Value::as_array) {
        return violations
            .iter()
            .map(|v| {
                let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
                (text("field"), text("description"))
            })
            .collect();
    }
    let bytes = base64_decode(str_at(&detail, "/@value"));
    tonic_types::pb::BadRequest::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("@value is a google.rpc.BadRequest ({e}): {run}"))
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

/// Standard base64 with padding, as grpcurl prints bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text}"),
        };
        bits = ((bits << 6) | u32::from(value)) & 0xFFFF;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xFF).expect("masked to a byte"));
        }
    }
    out
}

// ------------------------------------------------------- README's commands

/// One grpcurl command line (without `grpcurl` itself).
#[derive(Debug, Clone)]
pub(crate) struct Grpcurl {
    args: Vec<String>,
}

/// The README command with the word `word` (a method, `list` or `describe`),
/// pointed at `app`, with acme's admin key as `$ADMIN`.
pub(crate) fn readme_command(app: &TestApp, word: &str) -> Grpcurl {
    readme_command_with(app, word, "")
}

/// The first of the README's `grpcurl … word` commands whose arguments
/// contain `marker` (e.g. the CreateKey that sets `allowed_cidrs`).
fn readme_command_with(app: &TestApp, word: &str, marker: &str) -> Grpcurl {
    let args = readme_commands()
        .iter()
        .find(|args| {
            args.iter().any(|arg| arg == word) && args.iter().any(|arg| arg.contains(marker))
        })
        .unwrap_or_else(|| {
            panic!("README's \"Using it with grpcurl\" shows no `grpcurl … {word}` command with {marker:?}")
        })
        .clone();
    Grpcurl { args }
        .with(README_ADDR, &app.addr.to_string())
        .with("$ADMIN", &app.acme_key)
}

/// `grpcurl -plaintext -d '{"service": SERVICE}' ADDR METHOD` for a
/// `grpc.health.v1.Health` method.
fn health_command(app: &TestApp, method: &str, service: &str) -> Grpcurl {
    let request = serde_json::json!({ "service": service }).to_string();
    Grpcurl {
        args: ["-plaintext", "-d", &request, &app.addr.to_string(), method]
            .map(str::to_owned)
            .to_vec(),
    }
}

/// What `Health/Check` says of `service`: `SERVING`, `NOT_SERVING`, ...
async fn health(app: &TestApp, service: &str) -> String {
    let answer = health_command(app, HEALTH_CHECK, service)
        .run()
        .await
        .json();
    str_at(&answer, "/status").to_owned()
}

/// A running `grpcurl … grpc.health.v1.Health/Watch`: the statuses it
/// prints, one JSON message each, in order. Killed when dropped.
struct HealthWatch {
    child: Child,
    statuses: mpsc::UnboundedReceiver<String>,
}

impl HealthWatch {
    fn start(app: &TestApp, service: &str) -> Self {
        let bin = grpcurl().expect("checked before the test started");
        let mut child = Command::new(&bin)
            .args(health_command(app, HEALTH_WATCH, service).args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e})", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (send, statuses) = mpsc::unbounded_channel();
        // grpcurl prints each message as soon as it arrives, as indented
        // JSON; the stream of documents ends when grpcurl does.
        std::thread::spawn(move || {
            for message in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(message) = message else { return };
                let status = message["status"].as_str().unwrap_or("UNKNOWN").to_owned();
                if send.send(status).is_err() {
                    return;
                }
            }
        });
        Self { child, statuses }
    }

    /// The next status on the stream, within [`TIMEOUT`].
    async fn next(&mut self) -> String {
        match tokio::time::timeout(TIMEOUT, self.statuses.recv()).await {
            Ok(Some(status)) => status,
            Ok(None) => panic!("grpcurl's Watch stream ended: {:?}", self.child.try_wait()),
            Err(_) => panic!("no Watch message within {TIMEOUT:?}"),
        }
    }

    /// Panics if the stream printed anything not yet read, or ended.
    #[track_caller]
    fn assert_quiet(&mut self) {
        match self.statuses.try_recv() {
            Err(mpsc::error::TryRecvError::Empty) => {}
            other => panic!("Watch tells only changes, and goes on: {other:?}"),
        }
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Grpcurl {
    /// Replaces `from` with `to` in every argument.
    pub(crate) fn with(mut self, from: &str, to: &str) -> Self {
        for arg in &mut self.args {
            *arg = arg.replace(from, to);
        }
        self
    }

    /// Replaces every argument that is exactly `from` with `to`.
    pub(crate) fn with_arg(mut self, from: &str, to: &str) -> Self {
        for arg in &mut self.args {
            if arg == from {
                to.clone_into(arg);
            }
        }
        self
    }

    /// Replaces the last argument.
    fn last_arg(mut self, arg: &str) -> Self {
        *self.args.last_mut().expect("a command has arguments") = arg.to_owned();
        self
    }

    /// Replaces the request body (the argument after `-d`).
    fn data(mut self, body: &str) -> Self {
        let at = self
            .args
            .iter()
            .position(|arg| arg == "-d")
            .unwrap_or_else(|| panic!("a -d body in {:?}", self.args));
        self.args[at + 1] = body.to_owned();
        self
    }

    /// The same command over TLS: `-plaintext` replaced by `-cacert` and,
    /// with a client certificate, `-cert` and `-key`.
    pub(crate) fn over_tls(mut self, tls: &ClientTls) -> Self {
        let mut flags = Vec::new();
        let paths = [
            ("-cacert", &tls.ca_cert),
            ("-cert", &tls.client_cert),
            ("-key", &tls.client_key),
        ];
        for (flag, path) in paths {
            if let Some(path) = path {
                flags.extend([flag.to_owned(), display(path)]);
            }
        }
        let at = self
            .args
            .iter()
            .position(|arg| arg == "-plaintext")
            .unwrap_or_else(|| panic!("a -plaintext flag in {:?}", self.args));
        self.args.splice(at..=at, flags);
        self
    }

    /// Puts `flags` in front of the README's flags.
    fn flags(mut self, flags: &[&str]) -> Self {
        self.args
            .splice(0..0, flags.iter().map(|flag| (*flag).to_owned()));
        self
    }

    /// Runs grpcurl (off the async runtime's worker threads).
    pub(crate) async fn run(self) -> Run {
        let bin = grpcurl().expect("checked before the test started");
        let args = self.args;
        tokio::task::spawn_blocking(move || run_blocking(&bin, args))
            .await
            .expect("the blocking task runs")
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

/// The grpcurl commands of README's "Using it with grpcurl" block.
fn readme_commands() -> &'static [Vec<String>] {
    static COMMANDS: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    COMMANDS.get_or_init(|| {
        let commands = readme::commands("## Using it with grpcurl", "grpcurl");
        assert!(commands.len() >= 10, "README's commands: {commands:?}");
        commands
    })
}

/// The grpcurl commands of README's section `heading` (with its `#`s), to
/// run as they are after replacements (see [`Grpcurl::with`]).
pub(crate) fn readme_section(heading: &str) -> Vec<Grpcurl> {
    readme::commands(heading, "grpcurl")
        .into_iter()
        .map(|args| Grpcurl { args })
        .collect()
}

// ------------------------------------------------------- running grpcurl

/// What a grpcurl run printed.
pub(crate) struct Run {
    args: Vec<String>,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "grpcurl {:?}\nexit code: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Panics unless grpcurl succeeded.
    #[track_caller]
    pub(crate) fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "grpcurl succeeds:\n{self}");
        self
    }

    /// The response: grpcurl's JSON output of a successful call.
    #[track_caller]
    pub(crate) fn json(self) -> Value {
        let run = self.success();
        match serde_json::from_str(&run.stdout) {
            Ok(json) => json,
            Err(e) => panic!("grpcurl prints JSON ({e}):\n{run}"),
        }
    }
}

fn run_blocking(bin: &Path, args: Vec<String>) -> Result<Run, String> {
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); run bash scripts/install-tools.sh",
                bin.display()
            )
        })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("grpcurl {args:?} took more than {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Run {
        args,
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// The grpcurl binary: `KEYWARD_GRPCURL_BIN`, the project's venv, or `PATH`.
fn grpcurl() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("KEYWARD_GRPCURL_BIN").filter(|b| !b.is_empty()) {
                let bin = PathBuf::from(bin);
                assert!(
                    bin.is_file(),
                    "KEYWARD_GRPCURL_BIN={} is not a file",
                    bin.display()
                );
                return Some(bin);
            }
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/grpcurl");
            if venv.is_file() {
                return Some(venv);
            }
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join("grpcurl"))
                .find(|bin| bin.is_file())
        })
        .clone()
}

/// The grpcurl binary; `None` (after saying so) when there is none outside
/// CI; a panic in CI, where a missing tool is a failure.
pub(crate) fn grpcurl_or_skip() -> Option<PathBuf> {
    let found = grpcurl();
    if found.is_none() {
        missing_tool(
            "grpcurl",
            "run bash scripts/install-tools.sh or set KEYWARD_GRPCURL_BIN",
        );
    }
    found
}
