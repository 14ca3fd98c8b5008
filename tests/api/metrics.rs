//! Prometheus metrics end to end: keyward's `/metrics` (`--metrics-listen`)
//! counts what the tests did, passes `promtool check metrics`, is scraped by
//! a real Prometheus started from `deploy/prometheus/prometheus.yml`, and
//! carries no key material; `keyward-auth`'s counters likewise. Logs carry
//! the request id and the caller's `traceparent`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::AUTHORIZATION;
use http::{Request as HttpRequest, StatusCode};
use keyward::metrics::text_format;
use keyward::pb;
use keyward_auth::{
    AuthMetrics, DenialReason, Environment, KeywardAuthLayer, RemoteValidator, Scope,
};
use keyward_core::PresentedKey;
use keyward_store::testing::Backend;
use tonic::metadata::MetadataValue;
use tower::ServiceExt;

use crate::helpers::process::{free_addr, log_file};
use crate::helpers::{
    CreatedKey, TestApp, captured_logs, eventually, http_get, missing_tool, unknown_key,
    with_app_configured, with_key,
};

/// Settings with `/metrics` on a free port.
fn with_metrics(settings: &mut keyward::Settings) {
    settings.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// The value of the sample line `series` (name and labels exactly as
/// exposed), if there is one.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

fn validations(metrics: &str, code: &str, path: &str) -> Option<f64> {
    sample(
        metrics,
        &format!("keyward_validations_total{{code=\"{code}\",path=\"{path}\"}}"),
    )
}

/// Whether `tool` (of the Debian package prometheus) runs; says so loudly
/// when it does not (a failure under CI).
fn prometheus_tool(tool: &str) -> Option<()> {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        missing_tool(
            tool,
            "run bash scripts/install-tools.sh (Debian package prometheus)",
        );
    }
    found.then_some(())
}

/// Whether `promtool` runs.
fn promtool() -> Option<()> {
    prometheus_tool("promtool")
}

/// Runs `promtool check metrics` on `metrics`; panics with its complaints.
fn promtool_accepts(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("a stdin")
        .write_all(metrics.as_bytes())
        .expect("promtool reads the metrics");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What one validation round did, by code.
const VALID: usize = 3;
const NOT_FOUND: usize = 2;
const MALFORMED: usize = 4;

/// Validates through ValidateKey: [`VALID`] times a valid key, [`NOT_FOUND`]
/// unknown keys, [`MALFORMED`] strings that are no key, one key lacking a
/// scope. Returns the key.
async fn validate_a_round(app: &TestApp) -> CreatedKey {
    let key = app
        .create_key("metered")
        .scopes(&["orders:read"])
        .send()
        .await
        .expect("a key");
    for _ in 0..VALID {
        assert!(app.validate(&key.secret, &[]).await.valid);
    }
    for _ in 0..NOT_FOUND {
        app.validate(&unknown_key(), &[]).await;
    }
    for i in 0..MALFORMED {
        app.validate(&format!("not a key {i}"), &[]).await;
    }
    let lacking = app.validate(&key.secret, &["orders:write"]).await;
    assert_eq!(lacking.code(), pb::ValidationCode::InsufficientScope);
    key
}

async fn counts_validations(backend: Backend) {
    with_app_configured(backend, with_metrics, async |app| {
        validate_a_round(app).await;
        let metrics = app.scrape().await;
        let path = "validate_key";
        assert_eq!(validations(&metrics, "valid", path), Some(VALID as f64));
        assert_eq!(
            validations(&metrics, "not_found", path),
            Some(NOT_FOUND as f64)
        );
        assert_eq!(
            validations(&metrics, "malformed", path),
            Some(MALFORMED as f64)
        );
        assert_eq!(validations(&metrics, "insufficient_scope", path), Some(1.0));
        assert_eq!(validations(&metrics, "revoked", path), Some(0.0));
        assert_eq!(
            sample(
                &metrics,
                "keyward_validation_duration_seconds_count{path=\"validate_key\"}"
            ),
            Some((VALID + NOT_FOUND + MALFORMED + 1) as f64)
        );
        // The admin API authenticated one CreateKey in process, as valid.
        assert_eq!(validations(&metrics, "valid", "in_process"), Some(1.0));
        assert_eq!(
            sample(
                &metrics,
                "keyward_admin_requests_total{method=\"CreateKey\",code=\"ok\"}"
            ),
            Some(1.0)
        );
        // Every well-formed key was answered from the cache or missed it:
        // the key's first validation and each unknown key missed, later ones
        // of the key were hits (as many as the feed follower's refresh of
        // the new key left: it may reload the key once).
        let hits = sample(&metrics, "keyward_cache_hits_total").expect("cache hits");
        let misses = sample(&metrics, "keyward_cache_misses_total").expect("cache misses");
        assert!(hits >= 1.0, "{hits}");
        assert!(misses >= (1 + NOT_FOUND) as f64, "{misses}");
        assert!(
            hits + misses >= (VALID + 1 + NOT_FOUND) as f64,
            "hits {hits} + misses {misses}"
        );
        let entries = sample(&metrics, "keyward_cache_entries").expect("cache entries");
        assert!(entries >= 1.0, "{metrics}");
        for series in [
            "keyward_cache_bytes",
            "keyward_negative_cache_entries",
            "keyward_feed_sync_age_seconds",
            "keyward_feed_sync_errors_total",
            "keyward_usage_flush_failures_total",
            "keyward_database_connections{pool=\"main\",state=\"idle\"}",
            "keyward_database_connections{pool=\"lookup\",state=\"in_use\"}",
            "keyward_database_max_connections{pool=\"lookup\"}",
            "keyward_feed_lag_seconds_count",
        ] {
            assert!(sample(&metrics, series).is_some(), "{series} in\n{metrics}");
        }
        // The key's creation reached the feed follower; its last use the
        // usage flusher.
        let applied = eventually(Duration::from_secs(10), || async {
            let metrics = app.scrape().await;
            let events = sample(&metrics, "keyward_feed_events_total")?;
            let flushes = sample(&metrics, "keyward_usage_flushes_total")?;
            (events >= 1.0 && flushes >= 1.0).then_some(())
        })
        .await;
        assert!(applied.is_some(), "{}", app.scrape().await);

        // Rate-limit decisions: one call admitted, one refused.
        let limited = app
            .create_key("one a month")
            .with(|r| r.rate_limits = vec![crate::rate_limits::monthly_limit("requests", 1)])
            .await;
        app.validate(&limited.secret, &[]).await;
        app.validate(&limited.secret, &[]).await;
        let metrics = app.scrape().await;
        assert_eq!(
            validations(&metrics, "rate_limited", "validate_key"),
            Some(1.0)
        );
        for (decision, count) in [
            ("admitted", 1.0),
            ("rate_limited", 1.0),
            ("usage_exceeded", 0.0),
        ] {
            let series = format!("keyward_rate_limit_decisions_total{{decision=\"{decision}\"}}");
            assert_eq!(
                sample(&metrics, &series),
                Some(count),
                "{series} in\n{metrics}"
            );
        }
        assert_eq!(
            sample(&metrics, "keyward_rate_limit_redis_up"),
            (backend != Backend::Sqlite).then_some(1.0),
            "Redis counts on the shared databases"
        );
        if promtool().is_some() {
            promtool_accepts(&metrics);
        }
    })
    .await;
}

mod counts_validations {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        counts_validations(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        counts_validations(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        counts_validations(Backend::MariaDb).await;
    }
}

/// Everything about `key` that must never show in a label.
fn key_material(app: &TestApp, key: &CreatedKey) -> Vec<String> {
    let presented = PresentedKey::parse(&key.secret).expect("a well-formed key");
    vec![
        key.secret.clone(),
        key.id.clone(),
        key.key.prefix.clone(),
        key.key.partial_key_hint.clone(),
        app.hasher.hash(presented).to_hex(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_hash_hint_or_id_appears_in_the_metrics() {
    with_app_configured(Backend::Sqlite, with_metrics, async |app| {
        let mut keys = Vec::new();
        for _ in 0..3 {
            keys.push(validate_a_round(app).await);
        }
        app.revoke(&keys[0].id).await;
        assert!(!app.validate(&keys[0].secret, &[]).await.valid);
        let metrics = app.scrape().await;
        assert_eq!(validations(&metrics, "revoked", "validate_key"), Some(1.0));
        let mut material: Vec<String> =
            keys.iter().flat_map(|key| key_material(app, key)).collect();
        material.push(app.acme_key.clone());
        material.push(app.globex_key.clone());
        for secret in &material {
            assert!(!secret.is_empty());
            assert!(
                !metrics.contains(secret.as_str()),
                "{secret:?} appears in the metrics:\n{metrics}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_layer_counts_calls_hits_denials_and_errors() {
    with_app_configured(
        Backend::Sqlite,
        |_| {},
        async |app| {
            let key = app
                .create_key("layered")
                .scopes(&["orders:read"])
                .send()
                .await
                .expect("a key");
            let test_key = app
                .create_key("test environment")
                .scopes(&["orders:read"])
                .test_environment()
                .send()
                .await
                .expect("a key");
            let metrics = AuthMetrics::new();
            let validator = RemoteValidator::builder(app.lazy_channel())
                .metrics(&metrics)
                .build();
            let layer = KeywardAuthLayer::new(validator)
                .metrics(&metrics)
                .require_environment(Environment::Live)
                .require_scopes("/write", [Scope::parse("orders:write").expect("a scope")])
                .public_prefix("/health");
            let service = Router::new()
                .route("/read", get(|| async { "read" }))
                .route("/write", get(|| async { "written" }))
                .route("/health", get(|| async { "ok" }))
                .layer(layer);
            let call = |path: &str, key: Option<&str>| {
                let mut request = HttpRequest::get(path);
                if let Some(key) = key {
                    request = request.header(AUTHORIZATION, format!("Bearer {key}"));
                }
                let request = request.body(Body::empty()).expect("a request");
                let service = service.clone();
                async move { service.oneshot(request).await.expect("infallible").status() }
            };
            assert_eq!(call("/read", Some(&key.secret)).await, StatusCode::OK);
            assert_eq!(call("/read", Some(&key.secret)).await, StatusCode::OK);
            assert_eq!(call("/read", None).await, StatusCode::UNAUTHORIZED);
            assert_eq!(
                call("/read", Some(&unknown_key())).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                call("/write", Some(&key.secret)).await,
                StatusCode::FORBIDDEN
            );
            assert_eq!(
                call("/read", Some(&test_key.secret)).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(call("/health", None).await, StatusCode::OK);

            assert_eq!(metrics.requests(), 6, "public paths are not counted");
            assert_eq!(metrics.denials(DenialReason::MissingKey), 1);
            assert_eq!(metrics.denials(DenialReason::Unauthenticated), 1);
            assert_eq!(metrics.denials(DenialReason::Forbidden), 1);
            assert_eq!(
                metrics.denials(DenialReason::WrongEnvironment),
                1,
                "the test key, refused without a call"
            );
            assert_eq!(metrics.cache_hits(), 1, "the second /read");
            assert_eq!(metrics.keyward_calls(), 3);
            assert_eq!(metrics.errors(), 0);

            // keyward goes away: the layer fails closed and counts the error.
            app.stop().await;
            assert_eq!(
                call("/read", Some(&unknown_key())).await,
                StatusCode::SERVICE_UNAVAILABLE
            );
            assert_eq!(metrics.errors(), 1);

            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let mut openmetrics = String::new();
            prometheus_client::encoding::text::encode(&mut openmetrics, &registry)
                .expect("encodes");
            let text = text_format(&openmetrics);
            for (series, value) in [
                ("keyward_auth_requests_total", 7.0),
                ("keyward_auth_denials_total{reason=\"missing_key\"}", 1.0),
                ("keyward_auth_denials_total{reason=\"forbidden\"}", 1.0),
                (
                    "keyward_auth_denials_total{reason=\"wrong_environment\"}",
                    1.0,
                ),
                ("keyward_auth_errors_total", 1.0),
                ("keyward_auth_keyward_calls_total", 4.0),
                ("keyward_auth_cache_hits_total", 1.0),
            ] {
                assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
            }
            for secret in key_material(app, &key) {
                assert!(!text.contains(secret.as_str()), "{secret:?} in\n{text}");
            }
            if promtool().is_some() {
                promtool_accepts(&text);
            }
        },
    )
    .await;
}

/// The shipped Prometheus configuration.
fn shipped_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/prometheus.yml")
}

/// A Prometheus process, killed (and its directory removed) when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Prometheus on a free port with the shipped configuration, copied
    /// verbatim into a temporary directory beside a `targets/test.json`
    /// naming `target`.
    fn start(target: SocketAddr) -> Option<Self> {
        prometheus_tool("prometheus")?;
        let dir = std::env::temp_dir().join(format!(
            "keyward-prometheus-{}",
            keyward_core::new_ulid().to_ascii_lowercase()
        ));
        std::fs::create_dir_all(dir.join("targets")).expect("a temporary directory");
        std::fs::copy(shipped_config(), dir.join("prometheus.yml")).expect("the config is copied");
        // The alerting rules it loads, so a broken rule file fails here too.
        std::fs::copy(
            shipped_config().with_file_name("alerts.yml"),
            dir.join("alerts.yml"),
        )
        .expect("the rules are copied");
        std::fs::write(
            dir.join("targets/test.json"),
            format!(r#"[{{"targets": ["{target}"]}}]"#),
        )
        .expect("the targets file is written");
        let addr = free_addr();
        let (log, _) = log_file("prometheus");
        let log_err = log.try_clone().expect("a second handle to the log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .expect("prometheus starts");
        Some(Self { child, dir, addr })
    }

    /// The instant vector `query` returns, as label sets and values.
    async fn query(&self, query: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            http_get_quiet(self.addr, &format!("/api/v1/query?query={query}")),
        )
        .await
        .ok()??;
        if status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let results = answer["data"]["result"].as_array()?;
        results
            .iter()
            .map(|result| {
                let labels = result["metric"]
                    .as_object()?
                    .iter()
                    .map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                let value = result["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }
}

/// [`http_get`], or `None` while nothing listens yet.
async fn http_get_quiet(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await)
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_validation_counts() {
    assert!(shipped_config().exists());
    with_app_configured(Backend::Sqlite, with_metrics, async |app| {
        validate_a_round(app).await;
        let target = app.metrics_addr.expect("metrics are on");
        let Some(prometheus) = Prometheus::start(target) else {
            return;
        };
        let expected: BTreeMap<String, f64> = [
            ("valid", VALID),
            ("not_found", NOT_FOUND),
            ("malformed", MALFORMED),
            ("insufficient_scope", 1),
            ("inactive", 0),
            ("archived", 0),
            ("expired", 0),
            ("revoked", 0),
            ("ip_not_allowed", 0),
            ("rate_limited", 0),
            ("usage_exceeded", 0),
        ]
        .into_iter()
        .map(|(code, count)| (code.to_owned(), count as f64))
        .collect();
        // The shipped scrape interval is 5 s: the first scrape of a new
        // target comes within it.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            if let Some(results) = prometheus.query("keyward_validations_total").await {
                let by_code: BTreeMap<String, f64> = results
                    .iter()
                    .filter(|(labels, _)| {
                        labels.get("path").map(String::as_str) == Some("validate_key")
                            && labels.get("job").map(String::as_str) == Some("keyward")
                    })
                    .filter_map(|(labels, value)| Some((labels.get("code")?.clone(), *value)))
                    .collect();
                if by_code == expected {
                    break;
                }
                last = Some(by_code);
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "Prometheus never reported {expected:?}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_the_request_id_and_traceparent() {
    with_app_configured(
        Backend::Sqlite,
        |_| {},
        async |app| {
            let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let request_id = format!("req-{}", keyward_core::new_ulid());
            let mut request = with_key(&app.acme_key, app.create_key("traced").request());
            let metadata = request.metadata_mut();
            metadata.insert(
                "traceparent",
                MetadataValue::try_from(traceparent).expect("ASCII"),
            );
            metadata.insert(
                "x-request-id",
                MetadataValue::try_from(request_id.as_str()).expect("ASCII"),
            );
            let created = app
                .admin()
                .create_key(request)
                .await
                .expect("CreateKey succeeds");
            crate::helpers::record_secret(&created.get_ref().secret);
            let logs = captured_logs();
            let line = logs
                .lines()
                .find(|line| line.contains("key created") && line.contains(&request_id))
                .unwrap_or_else(|| panic!("no \"key created\" line with {request_id}"));
            assert!(line.contains(traceparent), "{line}");
        },
    )
    .await;
}
