//! Test harness: `spawn_app` starts a real keyward on a port-0 listener over a
//! fresh database and returns typed gRPC clients and two organizations' admin keys.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::{Application, Settings, bootstrap};
use keyward_core::{KeyName, OrganizationId};
use keyward_store::Store;
use keyward_store::testing::{Backend, TestDatabase};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Runs an async test body once per backend: `sqlite_NAME`, `postgres_NAME`, `mariadb_NAME`.
#[macro_export]
macro_rules! e2e_test {
    ($name:ident, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: &$crate::helpers::TestApp) $body

            fn boxed(app: &$crate::helpers::TestApp) -> $crate::helpers::TestBody<'_> {
                Box::pin(run(app))
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::helpers::with_app(keyward_store::testing::Backend::Sqlite, boxed).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::helpers::with_app(keyward_store::testing::Backend::Postgres, boxed).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                $crate::helpers::with_app(keyward_store::testing::Backend::MariaDb, boxed).await;
            }
        }
    };
}

/// A running keyward and what a test needs to talk to it.
pub struct TestApp {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The database URL (for tests that inspect rows or run the CLI).
    pub database_url: String,
    /// The store, for direct inspection.
    pub store: Store,
    /// Admin client (add a key with `as_admin`).
    pub admin: KeyAdminServiceClient<Channel>,
    /// Validation client.
    pub validation: KeyValidationServiceClient<Channel>,
    /// An admin key of organization `acme`.
    pub acme_key: String,
    /// An admin key of organization `globex`.
    pub globex_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    /// A fresh admin client.
    pub fn admin(&self) -> KeyAdminServiceClient<Channel> {
        self.admin.clone()
    }

    /// A fresh validation client.
    pub fn validation(&self) -> KeyValidationServiceClient<Channel> {
        self.validation.clone()
    }

    /// `message` with `authorization: Bearer <acme's admin key>`.
    pub fn acme<T>(&self, message: T) -> Request<T> {
        with_key(&self.acme_key, message)
    }

    /// `message` with `authorization: Bearer <globex's admin key>`.
    pub fn globex<T>(&self, message: T) -> Request<T> {
        with_key(&self.globex_key, message)
    }

    /// Stops the server gracefully and waits for it (flushing usage data).
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("the server task does not panic");
        }
    }
}

/// `message` carrying `authorization: Bearer <key>`.
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {key}")).expect("keys are ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Starts keyward over a fresh database of `backend`; `None` if that database
/// server is unavailable outside CI (the test then reports that it skipped).
pub async fn spawn_app(backend: Backend) -> Option<(TestApp, TestDatabase)> {
    spawn_app_with(backend, |_| {}).await
}

/// Like [`spawn_app`], with the test's settings: `configure` edits the
/// defaults (over the fresh database) before the application is built.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> Option<(TestApp, TestDatabase)> {
    init_logs();
    let db = TestDatabase::create(backend).await?;
    let mut settings = Settings {
        usage_flush_interval: Duration::from_millis(100),
        ..Settings::for_database(db.url.clone())
    };
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let hasher = app.hasher().clone();
    let addr = app.local_addr();
    let store = app.store().clone();
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
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .expect("the server runs");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the server accepts connections");
    let globex_key = keys.pop().expect("two keys");
    let acme_key = keys.pop().expect("two keys");
    Some((
        TestApp {
            addr,
            database_url: db.url.clone(),
            store,
            admin: KeyAdminServiceClient::new(channel.clone()),
            validation: KeyValidationServiceClient::new(channel),
            acme_key,
            globex_key,
            shutdown: Some(shutdown),
            server: Some(server),
        },
        db,
    ))
}

/// The boxed future of a test body borrowing its app.
pub type TestBody<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Spawns an app, runs `body`, stops the app and drops the database (also
/// when `body` panics, after which the panic is resumed).
pub async fn with_app(backend: Backend, body: fn(&TestApp) -> TestBody<'_>) {
    let Some((mut app, db)) = spawn_app(backend).await else {
        return;
    };
    let outcome = std::panic::AssertUnwindSafe(body(&app))
        .catch_unwind()
        .await;
    app.stop().await;
    db.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Every secret the tests were handed, and every log line keyward wrote,
/// so a test can check that no secret was ever logged.
static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Remembers a raw key handed out during the tests.
pub fn record_secret(secret: &str) {
    SECRETS
        .get_or_init(Default::default)
        .lock()
        .expect("no test panics while holding the lock")
        .push(secret.to_owned());
}

/// All raw keys handed out so far.
pub fn recorded_secrets() -> Vec<String> {
    SECRETS
        .get_or_init(Default::default)
        .lock()
        .expect("no test panics while holding the lock")
        .clone()
}

/// Everything logged so far.
pub fn captured_logs() -> String {
    let logs = LOGS.get_or_init(Default::default);
    String::from_utf8_lossy(&logs.lock().expect("no panic while logging")).into_owned()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("no panic while logging")
            .extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line at debug level (printed too when `TEST_LOG` is set).
pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let capture = Capture(Arc::clone(LOGS.get_or_init(Default::default)));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,h2=info,hyper=info,tower=info")
            .with_writer(move || capture.clone())
            .with_ansi(false)
            .try_init();
    });
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
