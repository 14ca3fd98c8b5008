//! keyward under hostile input and faults (SPEC §11):
//! - huge repeated fields from a real client get one small error, and a real
//!   `keyward serve` process barely grows while answering them;
//! - a list over its count cap is ONE field violation;
//! - connections beyond the cap are closed at once; requests beyond the
//!   in-flight cap are RESOURCE_EXHAUSTED at once; a stuck request ends at
//!   the request timeout;
//! - health follows the database: NOT_SERVING while it is away, SERVING after;
//! - ext_authz strips every credential header; `x-forwarded-for` counts only
//!   from trusted proxies; `--stale-if-error` below the sync interval is
//!   refused; shutdown writes pending last-used data.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use futures_util::future::join_all;
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::{Application, Settings, StartupError};
use keyward_core::KeyId;
use keyward_store::testing::Backend;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

use keyward_store::testing::on_fresh_database;

use crate::helpers::process::{KeywardProcess, bootstrap_with_cli, keyward_command};
use crate::helpers::proxy::proxied_database;
use crate::helpers::{TestApp, eventually, record_secret, spawn_app_with, with_app, with_key};

/// The most an error may weigh: message plus `grpc-status-details-bin`.
const MAX_ERROR_BYTES: usize = 8 * 1024;
/// Clients here may send what the server must refuse.
const CLIENT_LIMIT: usize = 64 << 20;

fn admin_client(channel: Channel) -> KeyAdminServiceClient<Channel> {
    KeyAdminServiceClient::new(channel)
        .max_encoding_message_size(CLIENT_LIMIT)
        .max_decoding_message_size(CLIENT_LIMIT)
}

fn validation_client(channel: Channel) -> KeyValidationServiceClient<Channel> {
    KeyValidationServiceClient::new(channel)
        .max_encoding_message_size(CLIENT_LIMIT)
        .max_decoding_message_size(CLIENT_LIMIT)
}

/// Whether `status` refuses a message over the size limit before decoding it
/// (tonic answers OUT_OF_RANGE, "decoded message length too large"; other
/// gRPC servers RESOURCE_EXHAUSTED).
fn too_large(status: &Status) -> bool {
    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted)
}

/// Checks that `status` is a small refusal: over the message size, or
/// INVALID_ARGUMENT with exactly one violation, of `field`.
fn assert_bounded(status: &Status, field: &str) {
    let weight = status.message().len() + status.details().len();
    assert!(
        weight <= MAX_ERROR_BYTES,
        "{field}: the error weighs {weight} bytes"
    );
    if !too_large(status) {
        assert_one_violation(status, field);
    }
}

fn assert_one_violation(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let details = status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest");
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "one violation for the whole list");
    assert!(
        status.message().len() + status.details().len() <= MAX_ERROR_BYTES,
        "{field}"
    );
}

/// Creates a standard key through `admin` as `admin_key`.
async fn create_key_with(
    mut admin: KeyAdminServiceClient<Channel>,
    admin_key: &str,
    name: &str,
) -> pb::CreateKeyResponse {
    let request = pb::CreateKeyRequest {
        name: name.to_owned(),
        ..Default::default()
    };
    let created = admin
        .create_key(with_key(admin_key, request))
        .await
        .expect("CreateKey succeeds")
        .into_inner();
    record_secret(&created.secret);
    created
}

/// Creates a standard key of `acme`.
async fn create_key(app: &TestApp, name: &str) -> pb::CreateKeyResponse {
    create_key_with(app.admin(), &app.acme_key, name).await
}

fn update_with_paths(id: &str, paths: usize) -> pb::UpdateKeyRequest {
    pb::UpdateKeyRequest {
        id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".to_owned(); paths],
        }),
        name: "renamed".to_owned(),
        ..Default::default()
    }
}

fn list_with_statuses(statuses: usize) -> pb::ListKeysRequest {
    pb::ListKeysRequest {
        statuses: vec![pb::KeyStatus::Active as i32; statuses],
        ..Default::default()
    }
}

fn validate_with_scopes(scopes: usize) -> pb::ValidateKeyRequest {
    pb::ValidateKeyRequest {
        key: "sk_live_nope".to_owned(),
        required_scopes: vec![String::new(); scopes],
        ..Default::default()
    }
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kib * 1024
}

/// 1.9M empty scopes, 1M statuses, 100k mask paths, eight of each at once,
/// against a real `keyward serve`: each a small error, and the process's peak
/// RSS grows by less than 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_repeated_fields_cost_a_small_error_and_little_memory() {
    let dir = std::env::temp_dir().join(format!("keyward-limits-{}", keyward_core::new_ulid()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("keyward.db").display());
    let admin_key = bootstrap_with_cli(&url);
    let mut replica = KeywardProcess::serve("limits", &["--database-url", &url]);
    let channel = replica.wait_until_serving(&admin_key).await;
    let pid = replica.pid();

    let created = create_key_with(admin_client(channel.clone()), &admin_key, "target").await;
    let id = created.api_key.expect("the key").id;

    let validate = validate_with_scopes(1_900_000);
    let list = list_with_statuses(1_000_000);
    let update = update_with_paths(&id, 100_000);
    let before = peak_rss(pid);
    let calls = (0..8).map(|_| {
        let (channel, admin_key) = (channel.clone(), admin_key.clone());
        let (validate, list, update) = (validate.clone(), list.clone(), update.clone());
        async move {
            let mut validation = validation_client(channel.clone());
            let mut lister = admin_client(channel.clone());
            let mut updater = admin_client(channel);
            let (validated, listed, updated) = tokio::join!(
                validation.validate_key(validate),
                lister.list_keys(with_key(&admin_key, list)),
                updater.update_key(with_key(&admin_key, update)),
            );
            assert_bounded(&validated.expect_err("refused"), "required_scopes");
            assert_bounded(&listed.expect_err("refused"), "statuses");
            assert_bounded(&updated.expect_err("refused"), "update_mask.paths");
        }
    });
    join_all(calls).await;
    let grown = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "peak RSS of keyward serve: {} MB before, grown by {} KB",
        before >> 20,
        grown >> 10
    );
    assert!(grown < 100 << 20, "peak RSS grew by {} MB", grown >> 20);

    // Still serving.
    admin_client(channel)
        .list_keys(with_key(&admin_key, pb::ListKeysRequest::default()))
        .await
        .expect("ListKeys still works");
    drop(replica);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn count_caps(app: &TestApp) {
    let mut validation = app
        .validation()
        .max_encoding_message_size(CLIENT_LIMIT)
        .max_decoding_message_size(CLIENT_LIMIT);
    let mut admin = app
        .admin()
        .max_encoding_message_size(CLIENT_LIMIT)
        .max_decoding_message_size(CLIENT_LIMIT);

    // Under the size limit, over the count cap: one violation.
    let refused = validation
        .validate_key(validate_with_scopes(5_000))
        .await
        .expect_err("5,000 scopes are refused");
    assert_one_violation(&refused, "required_scopes");
    // Over the size limit: refused before decoding.
    let refused = validation
        .validate_key(validate_with_scopes(1_900_000))
        .await
        .expect_err("a 3.8 MB request is refused");
    assert!(too_large(&refused), "{refused:?}");
    assert!(refused.message().len() + refused.details().len() <= MAX_ERROR_BYTES);

    let refused = admin
        .list_keys(app.acme(list_with_statuses(1_000)))
        .await
        .expect_err("1,000 statuses are refused");
    assert_one_violation(&refused, "statuses");

    let created = create_key(app, "target").await;
    let id = created.api_key.expect("the key").id;
    let refused = admin
        .update_key(app.acme(update_with_paths(&id, 1_000)))
        .await
        .expect_err("1,000 mask paths are refused");
    assert_one_violation(&refused, "update_mask.paths");

    let refused = admin
        .create_key(
            app.acme(pb::CreateKeyRequest {
                name: "too much".to_owned(),
                metadata: (0..1_000)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect(),
                ..Default::default()
            }),
        )
        .await
        .expect_err("1,000 metadata entries are refused");
    assert_one_violation(&refused, "metadata");

    // Many bad elements under the cap: at most 16 violations and a count.
    let refused = validation
        .validate_key(pb::ValidateKeyRequest {
            key: "sk_live_nope".to_owned(),
            required_scopes: vec!["bad scope!".to_owned(); 64],
            ..Default::default()
        })
        .await
        .expect_err("bad scopes are refused");
    let details = refused.get_details_bad_request().expect("BadRequest");
    assert_eq!(details.field_violations.len(), 17);
    assert_eq!(
        details.field_violations[16].description,
        "and 48 more violations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_over_its_cap_is_one_violation() {
    with_app(Backend::Sqlite, async |app| count_caps(app).await).await;
}

/// A connected channel to `app` (one TCP connection).
async fn connect(app: &TestApp) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid URI")
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let Some((app, db)) = spawn_app_with(Backend::Sqlite, |settings| {
        settings.limits.max_connections = 2;
    })
    .await
    else {
        return;
    };
    // The harness's channel holds the first connection.
    let health = |channel: Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
    };
    let second = connect(&app)
        .await
        .expect("the second connection is accepted");
    health(second.clone()).await.expect("it is served");

    if let Ok(third) = connect(&app).await {
        // Closed by the server: a transport error (reset or broken pipe).
        health(third)
            .await
            .expect_err("a third connection is not served");
    }

    drop(second);
    let served_again = eventually(Duration::from_secs(5), || async {
        let channel = connect(&app).await.ok()?;
        health(channel).await.ok()
    })
    .await;
    assert!(served_again.is_some(), "a freed slot is used again");
    app.stop().await;
    db.drop_database().await;
}

async fn serving(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

const ADMIN: &str = "keyward.v1.KeyAdminService";
const VALIDATION: &str = "keyward.v1.KeyValidationService";
const STALE_IF_ERROR: Duration = Duration::from_secs(5);

async fn health_follows_the_database(backend: Backend) {
    on_fresh_database(backend, |url| async move {
        let (proxy, proxied_url) = proxied_database(&url).await;
        let mut settings = Settings::for_database(proxied_url);
        settings.validator.stale_if_error = STALE_IF_ERROR;
        let app = Application::build(settings).await.expect("keyward starts");
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("keyward accepts connections");
        let mut health = HealthClient::new(channel);
        assert_eq!(serving(&mut health, ADMIN).await, ServingStatus::Serving);
        assert_eq!(
            serving(&mut health, VALIDATION).await,
            ServingStatus::Serving
        );
        let mut watch = health
            .watch(HealthCheckRequest {
                service: ADMIN.to_owned(),
            })
            .await
            .expect("Watch answers")
            .into_inner();
        let mut next_watched = async || {
            tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("a change within 10 s")
                .expect("the stream goes on")
                .expect("a status")
                .status()
        };
        assert_eq!(next_watched().await, ServingStatus::Serving);

        proxy.cut();
        let cut_at = std::time::Instant::now();
        let admin_down =
            eventually(Duration::from_secs(5), || {
                let mut health = health.clone();
                async move {
                    (serving(&mut health, ADMIN).await == ServingStatus::NotServing).then_some(())
                }
            })
            .await;
        assert!(
            admin_down.is_some(),
            "admin NOT_SERVING within 5 s of the cut"
        );
        if cut_at.elapsed() < STALE_IF_ERROR - Duration::from_secs(1) {
            assert_eq!(
                serving(&mut health, VALIDATION).await,
                ServingStatus::Serving,
                "validation answers from cache within stale-if-error"
            );
        }
        assert_eq!(next_watched().await, ServingStatus::NotServing);
        let validation_down = eventually(STALE_IF_ERROR + Duration::from_secs(5), || {
            let mut health = health.clone();
            async move {
                (serving(&mut health, VALIDATION).await == ServingStatus::NotServing).then_some(())
            }
        })
        .await;
        assert!(
            validation_down.is_some(),
            "validation NOT_SERVING beyond stale-if-error"
        );
        assert!(
            cut_at.elapsed() >= STALE_IF_ERROR - Duration::from_secs(1),
            "validation stayed SERVING for stale-if-error"
        );

        proxy.restore();
        assert_eq!(
            next_watched().await,
            ServingStatus::Serving,
            "Watch streams the return"
        );
        let both_up = eventually(Duration::from_secs(10), || {
            let mut health = health.clone();
            async move {
                let admin = serving(&mut health, ADMIN).await;
                let validation = serving(&mut health, VALIDATION).await;
                (admin == ServingStatus::Serving && validation == ServingStatus::Serving)
                    .then_some(())
            }
        })
        .await;
        assert!(both_up.is_some(), "both SERVING after the database returns");
        let _ = stop.send(());
        server
            .await
            .expect("no panic")
            .expect("the server stops cleanly");
        drop(proxy);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_on_postgres_and_mariadb() {
    for backend in [Backend::Postgres, Backend::MariaDb] {
        health_follows_the_database(backend).await;
    }
}

/// A Check request from Envoy carrying `headers`.
fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<HashMap<_, _>>(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Headers sent to Check, headers it must remove, headers it must keep.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);

async fn ext_authz_strips_every_credential(app: &TestApp) {
    let created = create_key(app, "envoy").await;
    let channel = connect(app).await.expect("keyward accepts connections");
    let mut authz = AuthorizationClient::new(channel);
    let bearer = format!("Bearer {}", created.secret);
    let key = created.secret.as_str();
    let cases: [Case<'_>; 3] = [
        (
            &[("authorization", &bearer), ("x-api-key", "sk_live_second")],
            &["authorization", "x-api-key"],
            &[],
        ),
        (
            &[("x-api-key", key), ("authorization", "Basic dXNlcjpwdw==")],
            &["x-api-key"],
            &["authorization"],
        ),
        (&[("x-api-key", key)], &["x-api-key"], &["authorization"]),
    ];
    for (headers, removed, kept) in cases {
        let response = authz
            .check(check_request(headers))
            .await
            .expect("Check answers")
            .into_inner();
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("{headers:?} is allowed");
        };
        for header in removed {
            assert!(
                ok.headers_to_remove.iter().any(|h| h == header),
                "{header} removed: {:?}",
                ok.headers_to_remove
            );
        }
        for header in kept {
            assert!(
                !ok.headers_to_remove.iter().any(|h| h == header),
                "{header} kept: {:?}",
                ok.headers_to_remove
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_strips_every_credential_header() {
    with_app(Backend::Sqlite, async |app| {
        ext_authz_strips_every_credential(app).await
    })
    .await;
}

/// The admin key's `last_used_ip` after one admin call with a forged
/// `x-forwarded-for`, on an app with `trusted_proxies`.
async fn recorded_ip(trusted_proxies: &str) -> String {
    let Some((app, db)) = spawn_app_with(Backend::Sqlite, |settings| {
        settings.trusted_proxies = trusted_proxies
            .split(',')
            .filter(|cidr| !cidr.is_empty())
            .map(|cidr| cidr.parse().expect("a CIDR"))
            .collect();
    })
    .await
    else {
        panic!("SQLite is always available");
    };
    let ip = app.ip_recorded_with_a_forged_forwarded_for().await;
    app.stop().await;
    db.drop_database().await;
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    assert_eq!(
        recorded_ip("").await,
        "127.0.0.1",
        "no trusted proxy: the peer"
    );
    assert_eq!(
        recorded_ip("10.0.0.0/8").await,
        "127.0.0.1",
        "an untrusted peer: the peer"
    );
    assert_eq!(
        recorded_ip("127.0.0.1/32").await,
        "203.0.113.7",
        "a trusted proxy: what it forwarded"
    );
}

#[tokio::test]
async fn stale_if_error_below_the_sync_interval_is_refused() {
    let mut settings = Settings::for_database("sqlite::memory:");
    settings.validator.stale_if_error = Duration::from_millis(100);
    let error = Application::build(settings)
        .await
        .err()
        .expect("refused at startup");
    assert!(matches!(error, StartupError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("--stale-if-error"), "{error}");

    let output = keyward_command()
        .args([
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--sync-interval", "500ms", "--stale-if-error", "200ms"])
        .output()
        .expect("keyward runs");
    assert!(!output.status.success(), "keyward serve refuses to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--stale-if-error") && stderr.contains("--sync-interval"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_pending_last_used_data() {
    // The periodic flusher never runs again after its first tick: only the
    // shutdown can write this use.
    let Some((app, db)) = spawn_app_with(Backend::Sqlite, |settings| {
        settings.usage_flush_interval = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let created = create_key(&app, "used once").await;
    let answer = app
        .validation()
        .validate_key(pb::ValidateKeyRequest {
            key: created.secret.clone(),
            client_ip: "198.51.100.9".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ValidateKey answers")
        .into_inner();
    assert_eq!(answer.code(), pb::ValidationCode::Valid);
    let id = KeyId::parse(&created.api_key.expect("the key").id).expect("a key id");
    let before = app.store.get_key("acme", &id).await.expect("the key");
    assert_eq!(before.last_used_at, None, "not written before shutdown");

    app.stop().await;
    let after = app.store.get_key("acme", &id).await.expect("the key");
    assert!(after.last_used_at.is_some(), "written at shutdown");
    assert_eq!(after.last_used_ip.as_deref(), Some("198.51.100.9"));
    db.drop_database().await;
}

/// A ValidateKey call whose message never comes: it holds a slot of
/// `--max-in-flight` until `--request-timeout` ends it.
async fn hold_a_slot(channel: Channel) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let codec =
        tonic_prost::ProstCodec::<pb::ValidateKeyRequest, pb::ValidateKeyResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/keyward.v1.KeyValidationService/ValidateKey");
    let never = futures_util::stream::pending::<pb::ValidateKeyRequest>();
    grpc.client_streaming(tonic::Request::new(never), path, codec)
        .await
        .expect_err("a call without its message does not succeed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_cap_are_shed_and_slow_ones_time_out() {
    const TIMEOUT: Duration = Duration::from_secs(6);
    let Some((app, db)) = spawn_app_with(Backend::Sqlite, |settings| {
        settings.limits.max_in_flight = 1;
        settings.limits.request_timeout = TIMEOUT;
    })
    .await
    else {
        return;
    };
    let validate = || {
        let mut client = app.validation();
        async move {
            client
                .validate_key(pb::ValidateKeyRequest {
                    key: "sk_live_nope".to_owned(),
                    ..Default::default()
                })
                .await
        }
    };
    validate().await.expect("served while nothing is in flight");

    // The held call itself is shed when it arrives while a probe holds the
    // only slot: then it is made again. Probes go on for as long as a held
    // call lasts, however long it took to arrive on a loaded machine: no
    // deadline of the test's own. A probe that waited for the slot instead
    // of being shed would be answered OK once the held call ends.
    let channel = connect(&app).await.expect("keyward accepts connections");
    let hold = || {
        let channel = channel.clone();
        async move {
            let started = std::time::Instant::now();
            (started, hold_a_slot(channel).await)
        }
    };
    let mut held = tokio::spawn(hold());
    let mut shed = None;
    let (started, held) = loop {
        if held.is_finished() {
            match held.await.expect("no panic") {
                (_, status) if status.code() == Code::ResourceExhausted => {
                    held = tokio::spawn(hold());
                    continue;
                }
                ended => break ended,
            }
        }
        match validate().await {
            Err(status) if status.code() == Code::ResourceExhausted => shed = Some(status),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(
        shed.is_some(),
        "a request beyond the cap is RESOURCE_EXHAUSTED while the slot is held"
    );
    assert_eq!(
        held.code(),
        Code::Cancelled,
        "ended by the server's timeout: {held:?}"
    );
    assert!(started.elapsed() >= TIMEOUT, "not before the timeout");
    validate()
        .await
        .expect("served again once the slot is free");
    app.stop().await;
    db.drop_database().await;
}
