//! Everything the secret scan needs: every raw key the tests were handed, the
//! logs of the in-process servers, and the log files of every `keyward`
//! process the tests started (under [`process_log_dir`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Remembers a raw key handed out during the tests.
pub fn record_secret(secret: &str) {
    SECRETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(secret.to_owned());
}

/// All raw keys handed out so far.
pub fn recorded_secrets() -> Vec<String> {
    SECRETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Where spawned `keyward` processes of this test run write their stdout and
/// stderr: one directory per test binary run.
pub fn process_log_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "keyward-test-logs-{}",
            keyward_core::new_ulid().to_ascii_lowercase()
        ));
        std::fs::create_dir_all(&dir).expect("a log directory");
        dir
    })
}

/// A new, uniquely named log file under [`process_log_dir`].
pub fn new_process_log(name: &str) -> PathBuf {
    process_log_dir().join(format!(
        "{name}-{}.log",
        keyward_core::new_ulid().to_ascii_lowercase()
    ))
}

/// Everything logged so far: the in-process servers' log lines, then every
/// spawned process's log file.
pub fn captured_logs() -> String {
    let logs = LOGS.get_or_init(Default::default);
    let mut all =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    all.push_str(&process_logs());
    all
}

/// The contents of every spawned process's log file so far.
pub fn process_logs() -> String {
    let mut all = String::new();
    let entries = std::fs::read_dir(process_log_dir()).expect("the log directory is readable");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        all.push_str(&String::from_utf8_lossy(
            &std::fs::read(&path).unwrap_or_default(),
        ));
    }
    all
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

/// Captures every log line of this process at debug level, for the secret
/// scan (printed too when `TEST_LOG` is set).
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
