//! Test harness: [`TestApp::start`] runs a real keyward on a port-0 listener
//! with test settings (overridable per test), bootstraps two organizations'
//! admin keys and hands out typed gRPC clients; [`with_app`] and
//! [`e2e_test!`](crate::e2e_test) run a test body on a fresh database of each
//! backend through `keyward_store::testing::on_fresh_database`, the one "fresh
//! database, run, drop, re-raise" of the suite. Real `keyward` processes are
//! started through [`process`], and every log line of both (in-process and
//! spawned) reaches the secret scan through [`logs`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward::convert::timestamp;
use keyward::limits::RedisUrl;
use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::validation::KeyValidator;
use keyward::{Application, Settings, bootstrap};
use keyward_auth::ClientTls;
use keyward_core::{ApiKeySecret, Environment, KeyKind, KeyName, LookupHasher, OrganizationId};
use keyward_store::Store;
use keyward_store::testing::{Backend, TestDatabase, on_fresh_database};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub mod certs;
mod keys;
pub mod logs;
pub mod process;
pub mod proxy;
pub mod readme;

pub use keys::{CreatedKey, NewKey};
pub use logs::{captured_logs, init_logs, record_secret, recorded_secrets};

/// Runs an async test body once per backend, as tests `NAME::sqlite`,
/// `NAME::postgres` and `NAME::mariadb` (or only the backends listed with
/// `backends = [sqlite, ...]`). The body gets `$app: &TestApp`.
#[macro_export]
macro_rules! e2e_test {
    ($name:ident, |$app:ident| $body:block) => {
        $crate::e2e_test!($name, backends = [sqlite, postgres, mariadb], |$app| $body);
    };
    ($name:ident, backends = [$($backend:ident),+], |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: &$crate::helpers::TestApp) $body

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    let backend = $crate::helpers::backend_named(stringify!($backend));
                    $crate::helpers::with_app(backend, run).await;
                }
            )+
        }
    };
}

/// The backend whose [`Backend::name`] is `name`.
pub fn backend_named(name: &str) -> Backend {
    Backend::ALL
        .into_iter()
        .find(|backend| backend.name() == name)
        .unwrap_or_else(|| panic!("no backend is called {name}"))
}

/// The settings every test server starts from: `keyward serve`'s defaults
/// on port 0, with a short usage flush interval and a database deadline for
/// a loaded machine. The one place a
/// test builds `Settings`; a test changes them through the `configure`
/// closure of [`TestApp::start`] or [`with_app_configured`].
/// On PostgreSQL and MariaDB, shared deployments, rate limits and credits
/// are counted through the machine's Redis (`KEYWARD_TEST_REDIS_URL`,
/// default 127.0.0.1:6379), as every replica of such a deployment must,
/// under a prefix of the server's own so that tests never share a count.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings::for_database(database_url);
    if !database_url.starts_with("sqlite:") {
        let url = std::env::var("KEYWARD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        settings.limiter.redis_url = Some(RedisUrl(url));
        settings.limiter.redis_key_prefix = format!("kwtest-{}", keyward_core::new_ulid());
    }
    settings.usage_flush_interval = Duration::from_millis(100);
    // Long enough for a loaded test machine; the deadline tests set their own.
    settings.database.database_timeout = Some(Duration::from_secs(10));
    settings
}

/// A running keyward and what a test needs to talk to it.
pub struct TestApp {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// Its URL: `http://ADDR`, or `https://ADDR` when it serves TLS.
    pub url: String,
    /// How the test's clients speak TLS to it (empty for plaintext).
    pub client_tls: ClientTls,
    /// Where `/metrics` is served, when the settings set `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// The database URL (for tests that inspect rows or run the CLI).
    pub database_url: String,
    /// The settings the server was started with.
    pub settings: Settings,
    /// The store, for direct inspection.
    pub store: Store,
    /// The lookup hasher the server uses.
    pub hasher: LookupHasher,
    /// The validation path, for its counters and cache.
    pub validator: Arc<KeyValidator>,
    /// Admin client (add a key with `acme`, `globex` or `with_key`).
    pub admin: KeyAdminServiceClient<Channel>,
    /// Validation client.
    pub validation: KeyValidationServiceClient<Channel>,
    /// An admin key of organization `acme`.
    pub acme_key: String,
    /// An admin key of organization `globex`.
    pub globex_key: String,
    running: Mutex<Option<Running>>,
}

/// How to stop a served application.
struct Running {
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl TestApp {
    /// Starts keyward on `database_url` with [`test_settings`] changed by
    /// `configure`, and bootstraps admin keys of `acme` and `globex`.
    pub async fn start(database_url: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
        Self::start_with_client_tls(database_url, configure, ClientTls::default()).await
    }

    /// [`TestApp::start`] for a server that `configure` may put on TLS: the
    /// test's clients connect over `https://` with `client_tls` when the
    /// settings name a certificate.
    pub async fn start_with_client_tls(
        database_url: &str,
        configure: impl FnOnce(&mut Settings),
        client_tls: ClientTls,
    ) -> TestApp {
        init_logs();
        let mut settings = test_settings(database_url);
        configure(&mut settings);
        let app = Application::build(settings.clone())
            .await
            .expect("the application starts");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let store = app.store().clone();
        let hasher = app.hasher().clone();
        let validator = Arc::clone(app.validator());
        let mut keys = Vec::new();
        for org in ["acme", "globex"] {
            let secret = bootstrap(
                &store,
                &hasher,
                OrganizationId::parse(org).expect("a valid organization"),
                KeyName::parse("test admin").expect("a valid name"),
            )
            .await
            .expect("bootstrap works");
            record_secret(secret.expose());
            keys.push(secret.expose().to_owned());
        }
        let running = serve(app);
        let scheme = if settings.tls.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        let channel = keyward_auth::tls::endpoint(&url, &client_tls)
            .expect("valid client TLS settings")
            .connect()
            .await
            .expect("the server accepts connections");
        let globex_key = keys.pop().expect("two keys");
        let acme_key = keys.pop().expect("two keys");
        TestApp {
            addr,
            url,
            client_tls,
            metrics_addr,
            database_url: database_url.to_owned(),
            settings,
            store,
            hasher,
            validator,
            admin: KeyAdminServiceClient::new(channel.clone()),
            validation: KeyValidationServiceClient::new(channel),
            acme_key,
            globex_key,
            running: Mutex::new(Some(running)),
        }
    }

    /// A second keyward in this process over the same database and with the
    /// same settings: bound, not serving until [`serve_until_dropped`].
    pub async fn build_replica(&self) -> Application {
        self.build_replica_with(|_| {}).await
    }

    /// [`build_replica`](Self::build_replica) with its settings changed by
    /// `configure`.
    pub async fn build_replica_with(&self, configure: impl FnOnce(&mut Settings)) -> Application {
        let mut settings = self.settings.clone();
        settings.listen = "127.0.0.1:0".parse().expect("a valid socket address");
        configure(&mut settings);
        Application::build(settings)
            .await
            .expect("the replica starts")
    }

    /// The text `/metrics` serves (the settings must set `metrics_listen`).
    pub async fn scrape(&self) -> String {
        let addr = self
            .metrics_addr
            .expect("the test configured settings.metrics_listen");
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// A fresh admin client.
    pub fn admin(&self) -> KeyAdminServiceClient<Channel> {
        self.admin.clone()
    }

    /// A fresh validation client.
    pub fn validation(&self) -> KeyValidationServiceClient<Channel> {
        self.validation.clone()
    }

    /// A channel to this keyward that connects on first use (and again after
    /// the server went away).
    pub fn lazy_channel(&self) -> Channel {
        keyward_auth::tls::endpoint(&self.url, &self.client_tls)
            .expect("valid client TLS settings")
            .connect_lazy()
    }

    /// `message` with `authorization: Bearer <acme's admin key>`.
    pub fn acme<T>(&self, message: T) -> Request<T> {
        with_key(&self.acme_key, message)
    }

    /// `message` with `authorization: Bearer <globex's admin key>`.
    pub fn globex<T>(&self, message: T) -> Request<T> {
        with_key(&self.globex_key, message)
    }

    /// A key of `acme` named `name`, created through CreateKey when awaited;
    /// the builder sets the other fields and the credential.
    pub fn create_key<'a>(&'a self, name: &str) -> NewKey<'a> {
        NewKey::on(self.admin(), &self.acme_key, name)
    }

    /// ValidateKey with a client IP and user agent; panics if keyward cannot answer.
    pub async fn validate(&self, key: &str, scopes: &[&str]) -> pb::ValidateKeyResponse {
        self.validation()
            .validate_key(validate_request(key, scopes))
            .await
            .expect("ValidateKey answers")
            .into_inner()
    }

    /// ValidateKey's verdict, or the gRPC code when keyward cannot answer.
    pub async fn try_validate(
        &self,
        key: &str,
        scopes: &[&str],
    ) -> Result<pb::ValidationCode, Code> {
        try_validate(&mut self.validation(), key, scopes).await
    }

    /// The key `id` as acme's GetKey shows it.
    pub async fn get_key(&self, id: &str) -> pb::ApiKey {
        self.admin()
            .get_key(self.acme(pb::GetKeyRequest { id: id.to_owned() }))
            .await
            .expect("GetKey succeeds")
            .into_inner()
            .api_key
            .expect("the key is returned")
    }

    /// Archives acme's key `id`.
    pub async fn archive(&self, id: &str) {
        self.admin()
            .archive_key(self.acme(pb::ArchiveKeyRequest { id: id.to_owned() }))
            .await
            .expect("ArchiveKey succeeds");
    }

    /// Reactivates acme's key `id`.
    pub async fn reactivate(&self, id: &str) {
        self.admin()
            .reactivate_key(self.acme(pb::ReactivateKeyRequest { id: id.to_owned() }))
            .await
            .expect("ReactivateKey succeeds");
    }

    /// Revokes acme's key `id`.
    pub async fn revoke(&self, id: &str) {
        self.admin()
            .revoke_key(self.acme(pb::RevokeKeyRequest { id: id.to_owned() }))
            .await
            .expect("RevokeKey succeeds");
    }

    /// GetKeyUsage of acme's key `id` over `[from, to)`.
    pub async fn key_usage(
        &self,
        id: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<pb::GetKeyUsageResponse, Status> {
        self.admin()
            .get_key_usage(self.acme(pb::GetKeyUsageRequest {
                id: id.to_owned(),
                from: from.map(timestamp),
                to: to.map(timestamp),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The `last_used_ip` keyward records for acme's admin key after one
    /// ListKeys that carries a forged `x-forwarded-for: 203.0.113.7`: what
    /// keyward believed the client's address was. Read from the store, since
    /// another admin call would record its own use.
    pub async fn ip_recorded_with_a_forged_forwarded_for(&self) -> String {
        let mut request = self.acme(pb::ListKeysRequest::default());
        request
            .metadata_mut()
            .insert("x-forwarded-for", "203.0.113.7".parse().expect("ASCII"));
        self.admin()
            .list_keys(request)
            .await
            .expect("ListKeys succeeds");
        let query = keyward_store::ListQuery {
            limit: 10,
            ..keyward_store::ListQuery::default()
        };
        eventually(Duration::from_secs(10), || async {
            let page = self.store.list_keys("acme", &query).await.ok()?;
            page.items.into_iter().find_map(|key| key.last_used_ip)
        })
        .await
        .expect("the admin key's use is recorded")
    }

    /// The admin CLI against this keyward ([`TestApp::url`]), with no admin
    /// key yet (and no TLS options: a TLS test adds its own).
    pub fn admin_cli(&self) -> process::AdminCli {
        process::AdminCli::new(&self.url)
    }

    /// `keyward ARGS` (`keys …` or `events …`) against this keyward with
    /// acme's admin key in `KEYWARD_ADMIN_KEY`.
    pub async fn cli(&self, args: &[&str]) -> process::CliRun {
        self.admin_cli().admin_key(&self.acme_key).run(args).await
    }

    /// Every key (archived ones too) that `admin_key`'s organization sees.
    pub async fn list_keys(&self, admin_key: &str) -> Vec<pb::ApiKey> {
        self.admin()
            .list_keys(with_key(
                admin_key,
                pb::ListKeysRequest {
                    limit: Some(1000),
                    include_archived: true,
                    ..Default::default()
                },
            ))
            .await
            .expect("ListKeys succeeds")
            .into_inner()
            .keys
    }

    /// The audit log of `admin_key`'s organization (of one key if `key_id`
    /// is not empty), newest first.
    pub async fn list_events(&self, admin_key: &str, key_id: &str) -> Vec<pb::KeyEvent> {
        self.admin()
            .list_key_events(with_key(
                admin_key,
                pb::ListKeyEventsRequest {
                    key_id: key_id.to_owned(),
                    limit: Some(1000),
                    ..Default::default()
                },
            ))
            .await
            .expect("ListKeyEvents succeeds")
            .into_inner()
            .events
    }

    /// Stops the server gracefully and waits for it (flushing usage data);
    /// its port is closed after. Does nothing the second time.
    pub async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Running { shutdown, server }) = running {
            let _ = shutdown.send(());
            server.await.expect("the server task does not panic");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A failed test: do not leave the server holding database connections.
        if let Some(running) = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            running.server.abort();
        }
    }
}

/// Serves `app` until the returned handle's sender fires or is dropped.
fn serve(app: Application) -> Running {
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .expect("the server runs");
    });
    Running { shutdown, server }
}

/// Serves `app` (e.g. from [`TestApp::build_replica`]) until the returned
/// guard is dropped; [`ServedGuard::stop`] stops it gracefully.
pub fn serve_until_dropped(app: Application) -> ServedGuard {
    ServedGuard(Some(serve(app)))
}

/// A served [`Application`]; aborted when dropped.
pub struct ServedGuard(Option<Running>);

impl ServedGuard {
    /// Stops the application gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(Running { shutdown, server }) = self.0.take() {
            let _ = shutdown.send(());
            server.await.expect("the server task does not panic");
        }
    }
}

impl Drop for ServedGuard {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.server.abort();
        }
    }
}

/// `GET path_and_query` over HTTP/1.1 to `addr`: the status code and the
/// body (for `/metrics` and Prometheus' API).
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 30 s")
        .expect("the response is read");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_owned());
    }
    // Chunked: `<hex length>\r\n<data>\r\n`, ending with a zero length.
    let mut rest = body;
    let mut data = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("a hexadecimal chunk size");
        if size == 0 {
            return (status, data);
        }
        data.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `message` carrying `authorization: Bearer <key>`.
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {key}")).expect("keys are ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// The client IP every test validation reports.
pub const CLIENT_IP: &str = "203.0.113.7";
/// The user agent every test validation reports.
pub const USER_AGENT: &str = "keyward-test/1.0";

fn validate_request(key: &str, scopes: &[&str]) -> pb::ValidateKeyRequest {
    pb::ValidateKeyRequest {
        key: key.to_owned(),
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        client_ip: CLIENT_IP.into(),
        user_agent: USER_AGENT.into(),
        ..Default::default()
    }
}

/// ValidateKey through `client`: the verdict, or the gRPC code when keyward
/// cannot answer.
pub async fn try_validate(
    client: &mut KeyValidationServiceClient<Channel>,
    key: &str,
    scopes: &[&str],
) -> Result<pb::ValidationCode, Code> {
    client
        .validate_key(validate_request(key, scopes))
        .await
        .map(|response| response.into_inner().code())
        .map_err(|status| status.code())
}

/// A well-formed standard key that no database holds.
pub fn unknown_key() -> String {
    ApiKeySecret::generate(KeyKind::Standard, Environment::Live)
        .expose()
        .to_owned()
}

/// The gRPC code of a result (`Ok` for a success).
pub fn code<T>(result: Result<T, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Starts keyward over a fresh database of `backend`; `None` if that database
/// server is unavailable outside CI (the test then reports that it skipped).
/// The caller drops the database; [`with_app`] does all of it.
#[allow(
    dead_code,
    reason = "kept for callers that manage the database themselves"
)]
pub async fn spawn_app(backend: Backend) -> Option<(TestApp, TestDatabase)> {
    spawn_app_with(backend, |_| {}).await
}

/// [`spawn_app`] with [`test_settings`] changed by `configure`.
#[allow(
    dead_code,
    reason = "kept for callers that manage the database themselves"
)]
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> Option<(TestApp, TestDatabase)> {
    let db = TestDatabase::create(backend).await?;
    let app = TestApp::start(&db.url, configure).await;
    Some((app, db))
}

/// Runs `body` with a keyward on a fresh database of `backend`, then stops
/// it and drops the database (also when `body` panics; the panic is passed on).
pub async fn with_app(backend: Backend, body: impl AsyncFnOnce(&TestApp)) {
    with_app_configured(backend, |_| {}, body).await;
}

/// [`with_app`] with [`test_settings`] changed by `configure`.
pub async fn with_app_configured(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    body: impl AsyncFnOnce(&TestApp),
) {
    with_tls_app(backend, configure, ClientTls::default(), body).await;
}

/// [`with_app_configured`] for a server `configure` may put on TLS (see
/// [`TestApp::start_with_client_tls`]).
pub async fn with_tls_app(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    client_tls: ClientTls,
    body: impl AsyncFnOnce(&TestApp),
) {
    on_fresh_database(backend, |url| async move {
        let app = TestApp::start_with_client_tls(&url, configure, client_tls).await;
        body(&app).await;
        app.stop().await;
    })
    .await;
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use keyward_store::testing::in_ci;

/// For a test that needs an external `tool`: fails under CI (a missing tool
/// must not pass silently there), else prints a loud `SKIPPED:` line straight
/// to stderr (libtest would swallow an `eprintln!` of a passing test).
pub fn missing_tool(tool: &str, hint: &str) {
    assert!(!in_ci(), "{tool} is missing under CI: {hint}");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {tool} not found; {hint} (under CI this fails)"
    );
}
