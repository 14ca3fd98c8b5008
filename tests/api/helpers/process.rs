//! Real `keyward` processes: the CLI ([`run_keyward`], and the admin CLI
//! against a server through [`AdminCli`]) and `keyward serve`
//! ([`KeywardProcess`]). Their logs go to files under
//! [`process_log_dir`](super::logs::process_log_dir), which the secret scan reads.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use keyward::pb;
use keyward::pb::key_admin_service_client::KeyAdminServiceClient;
use keyward_auth::ClientTls;
use tonic::transport::Channel;

use super::logs::new_process_log;
use super::{record_secret, with_key};

/// The `keyward` binary with no `KEYWARD_*` settings from the environment.
pub fn keyward_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYWARD_") {
            command.env_remove(name);
        }
    }
    command
}

/// A new log file for a process's output, read by the secret scan.
pub fn log_file(name: &str) -> (File, PathBuf) {
    let path = new_process_log(name);
    let file = File::create(&path).expect("a log file");
    (file, path)
}

/// Runs `command` to the end. Its stderr is kept in a log file for the
/// secret scan (stdout is the command's answer, a raw key for `bootstrap`).
pub fn output_logged(command: &mut Command) -> Output {
    let output = command.output().expect("the keyward binary runs");
    let (mut log, _) = log_file("keyward-cli");
    std::io::Write::write_all(&mut log, &output.stderr).expect("the log is written");
    output
}

/// `keyward ARGS` run to the end (see [`output_logged`]).
pub fn run_keyward(args: &[&str]) -> Output {
    output_logged(keyward_command().args(args))
}

/// The admin CLI (`keyward keys …`, `keyward events …`) against the keyward
/// at an address, built up like a `Command` and run on a blocking thread.
/// Every run checks that the admin key shows neither on stdout nor on
/// stderr, and records any raw key it prints for the secret scan.
pub struct AdminCli {
    command: Command,
    /// Options added after the test's arguments.
    options: Vec<std::ffi::OsString>,
    admin_key: Option<String>,
}

/// What one admin-CLI run printed, and its exit code.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (-1 if a signal ended the process).
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl AdminCli {
    /// `keyward` with `KEYWARD_SERVER=<url>` and no admin key.
    pub fn new(url: &str) -> Self {
        let mut command = keyward_command();
        command.env("KEYWARD_SERVER", url);
        Self {
            command,
            options: Vec::new(),
            admin_key: None,
        }
    }

    /// With `key` in `KEYWARD_ADMIN_KEY`.
    pub fn admin_key(mut self, key: &str) -> Self {
        self.command.env("KEYWARD_ADMIN_KEY", key);
        self.admin_key = Some(key.to_owned());
        self
    }

    /// With `--admin-key-file path`, the file holding `key`.
    pub fn admin_key_file(mut self, path: &Path, key: &str) -> Self {
        self.options.push("--admin-key-file".into());
        self.options.push(path.into());
        self.admin_key = Some(key.to_owned());
        self
    }

    /// With the environment variable `name` set to `value`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.command.env(name, value);
        self
    }

    /// Runs `keyward ARGS` to the end.
    pub async fn run(mut self, args: &[&str]) -> CliRun {
        self.command.args(args).args(&self.options);
        let output = tokio::task::spawn_blocking(move || output_logged(&mut self.command))
            .await
            .expect("the CLI runs");
        let run = CliRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).expect("UTF-8 on stdout"),
            stderr: String::from_utf8(output.stderr).expect("UTF-8 on stderr"),
        };
        for word in run
            .stdout
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        {
            if keyward_core::ApiKeySecret::parse(word).is_ok() {
                record_secret(word);
            }
        }
        if let Some(key) = &self.admin_key {
            assert!(
                !run.stdout.contains(key.as_str()) && !run.stderr.contains(key.as_str()),
                "the admin key is printed by keyward {args:?}"
            );
        }
        run
    }
}

impl CliRun {
    /// The JSON document on stdout of a successful run.
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "the CLI fails: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON document ({error}): {self:?}"))
    }

    /// Stdout of a successful run.
    pub fn success(&self) -> &str {
        assert_eq!(self.code, 0, "the CLI fails: {self:?}");
        &self.stdout
    }

    /// Stderr of a run that exited with `code` and printed nothing on stdout.
    pub fn failure(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "exit code: {self:?}");
        assert!(
            self.stdout.is_empty(),
            "a failure prints no answer: {self:?}"
        );
        &self.stderr
    }
}

/// `keyward bootstrap`: an admin key of `acme`.
pub fn bootstrap_with_cli(database_url: &str) -> String {
    bootstrap_organization_with_cli(database_url, "acme")
}

/// `keyward bootstrap`: an admin key of `organization`.
pub fn bootstrap_organization_with_cli(database_url: &str, organization: &str) -> String {
    let output = run_keyward(&[
        "bootstrap",
        "--database-url",
        database_url,
        "--organization",
        organization,
    ]);
    assert!(
        output.status.success(),
        "keyward bootstrap fails: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    record_secret(&key);
    key
}

/// A free port on 127.0.0.1 (bound, then released for a process to take).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// A `keyward serve` process, killed when dropped. Its stdout and stderr go
/// to one log file, kept for the secret scan.
pub struct KeywardProcess {
    name: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl KeywardProcess {
    /// `keyward serve --listen <a free port> ARGS`.
    pub fn serve(name: &str, args: &[&str]) -> Self {
        Self::serve_in(name, args, None)
    }

    /// [`serve`](Self::serve) in the working directory `dir`.
    pub fn serve_in(name: &str, args: &[&str], dir: Option<&Path>) -> Self {
        Self::serve_at(name, free_addr(), args, dir)
    }

    /// `keyward serve --listen ADDR ARGS` in the working directory `dir`.
    pub fn serve_at(name: &str, addr: SocketAddr, args: &[&str], dir: Option<&Path>) -> Self {
        let (log_out, log) = log_file(&format!("keyward-serve-{name}"));
        let log_err = log_out.try_clone().expect("a second handle to the log");
        let mut command = keyward_command();
        command
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log_err));
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let child = command.spawn().expect("keyward serve starts");
        Self {
            name: name.to_owned(),
            addr,
            child,
            log,
        }
    }

    /// A `keyward serve` replica over `database_url` whose cache only the
    /// change feed can invalidate (`--cache-max-age 10m`), with a 10 s store
    /// deadline.
    pub fn replica(name: &str, database_url: &str) -> Self {
        // A store deadline for a loaded test machine: replica tests show
        // propagation, not deadlines.
        Self::serve(
            name,
            &[
                "--database-url",
                database_url,
                "--cache-max-age",
                "10m",
                "--database-timeout",
                "10s",
            ],
        )
    }

    /// Its process id (to read `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until it answers ListKeys with `admin_key`; its channel.
    pub async fn wait_until_serving(&mut self, admin_key: &str) -> Channel {
        self.wait_until_serving_over(admin_key, &ClientTls::default())
            .await
    }

    /// [`wait_until_serving`](Self::wait_until_serving) over TLS with
    /// `client_tls` (plaintext when it is empty), on 127.0.0.1 and this
    /// process's port.
    pub async fn wait_until_serving_over(
        &mut self,
        admin_key: &str,
        client_tls: &ClientTls,
    ) -> Channel {
        let scheme = if client_tls.is_empty() {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://127.0.0.1:{}", self.addr.port());
        let endpoint = keyward_auth::tls::endpoint(&url, client_tls).expect("valid client TLS");
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("the process can be polled") {
                panic!(
                    "keyward {} exited ({status}) before serving:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(channel) = endpoint.connect().await {
                let answered = KeyAdminServiceClient::new(channel.clone())
                    .list_keys(with_key(admin_key, pb::ListKeysRequest::default()))
                    .await;
                if answered.is_ok() {
                    return channel;
                }
            }
            assert!(
                Instant::now() < give_up,
                "keyward {} did not answer within 60 s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGHUP (reload the TLS files).
    pub fn hang_up(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -HUP works");
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -TERM works");
        self.child.wait().expect("keyward exits")
    }
}

impl Drop for KeywardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
