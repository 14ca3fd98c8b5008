//! The admin CLI (SPEC §14): `keyward keys …` and `keyward events list` call a
//! running keyward's `KeyAdminService` over gRPC.
//!
//! `mod.rs` holds what every command shares: the client options, the admin
//! key (from `KEYWARD_ADMIN_KEY` or `--admin-key-file`, never a plain
//! argument), the connection, and the one mapping from errors to messages
//! and [exit codes](exit). `keys` and `events` turn flags into requests;
//! `output` turns responses into tables or JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keyward_auth::tls::ClientTls;
use keyward_core::ApiKeySecret;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::config::parse_interval;
use crate::pb::key_admin_service_client::KeyAdminServiceClient;

mod events;
mod keys;
mod output;

pub use events::{EventsArgs, EventsCommand, ListEventsArgs};
pub use keys::{
    CreateArgs, EnvironmentArg, IdArg, KeysArgs, KeysCommand, KindArg, ListKeysArgs, RotateArgs,
    StatusArg, UpdateArgs, UpdateStatusArg,
};
pub use output::OutputFormat;

/// The environment variable holding the admin key when `--admin-key-file` is
/// not given. There is deliberately no `--admin-key` flag: arguments show in
/// `ps` and in shell history.
pub const ADMIN_KEY_ENV: &str = "KEYWARD_ADMIN_KEY";

/// The default server URL (`keyward serve`'s default listen address).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The exit codes of `keyward keys …` and `keyward events …` (README, "Admin
/// CLI"). Each failure class a script may want to tell apart has its own code.
pub mod exit {
    /// The command succeeded.
    pub const SUCCESS: u8 = 0;
    /// Anything unexpected: INTERNAL, UNKNOWN, an unreadable answer, a failed write to stdout.
    pub const FAILURE: u8 = 1;
    /// A bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// Local setup: no admin key, an unreadable key file, a malformed key, bad TLS files or URL.
    pub const CONFIG: u8 = 3;
    /// keyward cannot be reached or cannot answer now (connection failed,
    /// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED): worth retrying.
    pub const UNAVAILABLE: u8 = 4;
    /// UNAUTHENTICATED: the admin key is unknown or no longer valid.
    pub const UNAUTHENTICATED: u8 = 5;
    /// PERMISSION_DENIED: the key is valid but not an admin key.
    pub const PERMISSION_DENIED: u8 = 6;
    /// NOT_FOUND: no such key in the admin key's organization.
    pub const NOT_FOUND: u8 = 7;
    /// INVALID_ARGUMENT (or OUT_OF_RANGE): keyward refused a field; nothing changed.
    pub const INVALID_ARGUMENT: u8 = 8;
    /// FAILED_PRECONDITION (or ALREADY_EXISTS, ABORTED): the key's lifecycle
    /// forbids the change, e.g. updating a revoked key.
    pub const FAILED_PRECONDITION: u8 = 9;
}

/// How every admin command reaches keyward. Global: the options may come
/// before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// keyward's gRPC URL: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS).
    #[arg(long, env = "KEYWARD_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// File holding the admin key (surrounding whitespace ignored). Without
    /// it the key comes from the KEYWARD_ADMIN_KEY environment variable; it
    /// is never a plain argument.
    #[arg(long, env = "KEYWARD_ADMIN_KEY_FILE", global = true)]
    pub admin_key_file: Option<PathBuf>,
    /// Output: a table for people, or one JSON document for scripts.
    #[arg(long, short = 'o', env = "KEYWARD_OUTPUT", value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    /// PEM file of the CA certificate(s) keyward's certificate is checked
    /// against (https:// only; default: the system's trusted roots).
    #[arg(long, env = "KEYWARD_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM file of a client certificate to present (mTLS); needs --client-key.
    #[arg(long, env = "KEYWARD_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs --client-cert.
    #[arg(long, env = "KEYWARD_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// Deadline of the connection and of each call, e.g. 10s or 2m.
    #[arg(long, env = "KEYWARD_TIMEOUT", default_value = "30s", value_parser = parse_interval, global = true)]
    pub timeout: Duration,
}

/// Why an admin command failed. Its `Display` is the message printed after
/// `error: `; no variant ever holds the admin key.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The command line is wrong in a way clap cannot see (exit 2).
    Usage(String),
    /// Local setup is wrong (exit 3).
    Config(String),
    /// No connection to keyward (exit 4).
    Connect {
        /// The URL tried.
        server: String,
        /// The transport error and its causes.
        detail: String,
    },
    /// The connection broke during a call (exit 4).
    Transport(String),
    /// keyward answered with an error.
    Status(Status),
    /// keyward answered without a field it always sends (exit 1).
    BadResponse(&'static str),
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        // A status with a source was made here from a local error, not sent
        // by keyward: tonic reports a connection that broke (a TLS client
        // certificate the server refused after the handshake, a reset, a
        // timeout) as UNKNOWN "transport error" or the like; its cause is
        // the source.
        match std::error::Error::source(&status) {
            Some(cause) => Self::Transport(format!("{}: {}", status.message(), error_chain(cause))),
            None => Self::Status(status),
        }
    }
}

impl CliError {
    /// The process exit code (see [`exit`]).
    fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Config(_) => exit::CONFIG,
            Self::Connect { .. } | Self::Transport(_) => exit::UNAVAILABLE,
            Self::BadResponse(_) => exit::FAILURE,
            Self::Status(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    exit::UNAVAILABLE
                }
                Code::Unauthenticated => exit::UNAUTHENTICATED,
                Code::PermissionDenied => exit::PERMISSION_DENIED,
                Code::NotFound => exit::NOT_FOUND,
                Code::InvalidArgument | Code::OutOfRange => exit::INVALID_ARGUMENT,
                Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                    exit::FAILED_PRECONDITION
                }
                Code::Ok
                | Code::Cancelled
                | Code::Unknown
                | Code::Unimplemented
                | Code::Internal
                | Code::DataLoss => exit::FAILURE,
            },
        }
    }

    /// What is printed on stderr: `error: ` and the message; for a gRPC
    /// error its code, message, every field violation and the request id.
    fn render(&self) -> String {
        let mut text = String::from("error: ");
        match self {
            Self::Usage(message) | Self::Config(message) => text.push_str(message),
            Self::Connect { server, detail } => {
                let _ = write!(text, "cannot connect to {server}: {detail}");
            }
            Self::Transport(detail) => {
                let _ = write!(text, "the connection to keyward failed: {detail}");
            }
            Self::BadResponse(field) => {
                let _ = write!(text, "keyward answered without {field}");
            }
            Self::Status(status) => {
                let _ = write!(text, "{}: {}", code_name(status.code()), status.message());
                if let Some(bad_request) = status.get_details_bad_request() {
                    for violation in &bad_request.field_violations {
                        let _ = write!(
                            text,
                            "\n  {}: {}",
                            output::printable(&violation.field),
                            output::printable(&violation.description)
                        );
                    }
                }
                if let Some(id) = status
                    .metadata()
                    .get("x-request-id")
                    .and_then(|id| id.to_str().ok())
                {
                    let _ = write!(text, "\n  request id: {}", output::printable(id));
                }
            }
        }
        text
    }
}

/// The canonical name of a gRPC code, as grpcurl and the gRPC docs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Runs `keyward keys …`; prints the answer on stdout or the error on stderr.
pub async fn run_keys(args: KeysArgs) -> ExitCode {
    let client = args.client.clone();
    finish(keys::run(args).await, &client)
}

/// Runs `keyward events …`; prints the answer on stdout or the error on stderr.
pub async fn run_events(args: EventsArgs) -> ExitCode {
    let client = args.client.clone();
    finish(events::run(args).await, &client)
}

/// Prints the outcome of a command and picks the exit code.
fn finish(outcome: Result<output::Report, CliError>, client: &ClientArgs) -> ExitCode {
    match outcome {
        Ok(report) => {
            let text = report.render(client.output);
            let mut stdout = std::io::stdout().lock();
            match std::io::Write::write_all(&mut stdout, text.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout))
            {
                Ok(()) => ExitCode::from(exit::SUCCESS),
                // `| head` closed the pipe: what was wanted was read.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::from(exit::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: cannot write the answer: {error}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        Err(error) => {
            eprintln!("{}", error.render());
            let broken = matches!(error, CliError::Connect { .. } | CliError::Transport(_));
            if broken && client.server.starts_with("https://") && client.client_cert.is_none() {
                // With TLS 1.3 a refused client certificate shows as a
                // connection closed after the handshake, not as a TLS error.
                eprintln!(
                    "  hint: a keyward that requires client certificates closes connections \
                     without one (--client-cert and --client-key)"
                );
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// An admin client: every request carries the admin key.
pub(crate) type AdminClient = KeyAdminServiceClient<InterceptedService<Channel, BearerKey>>;

/// Adds `authorization: Bearer <admin key>` to every request. The header
/// value is marked sensitive, so HTTP/2 never indexes it and it never shows
/// in `Debug` output.
#[derive(Clone)]
pub(crate) struct BearerKey(AsciiMetadataValue);

impl Interceptor for BearerKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Connects to keyward with the admin key: the shared prologue of every command.
pub(crate) async fn connect(args: &ClientArgs) -> Result<AdminClient, CliError> {
    let key = admin_key(args)?;
    let mut bearer: AsciiMetadataValue =
        MetadataValue::try_from(format!("Bearer {}", key.expose()))
            .map_err(|_| CliError::Config("the admin key is not ASCII".into()))?;
    bearer.set_sensitive(true);
    let endpoint = endpoint(args)?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| CliError::Connect {
            server: args.server.clone(),
            detail: error_chain(&error),
        })?;
    Ok(KeyAdminServiceClient::with_interceptor(
        channel,
        BearerKey(bearer),
    ))
}

/// The endpoint of `--server`: plaintext for `http://`, TLS with the
/// `--ca-cert`/`--client-cert`/`--client-key` files for `https://`.
fn endpoint(args: &ClientArgs) -> Result<Endpoint, CliError> {
    let tls = ClientTls {
        ca_cert: args.ca_cert.clone(),
        client_cert: args.client_cert.clone(),
        client_key: args.client_key.clone(),
    };
    keyward_auth::tls::endpoint(&args.server, &tls)
        .map_err(|error| CliError::Config(error_chain(&error)))
}

/// An error and its causes, `: `-separated (tonic's transport error alone
/// says only "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Layers often repeat their cause's words: say them once.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The admin key: from `--admin-key-file` when given, else from
/// `KEYWARD_ADMIN_KEY`. Checked locally for keyward's key format (a typo or
/// a truncated copy is caught before any call); error messages name where
/// the key came from, never the key.
fn admin_key(args: &ClientArgs) -> Result<ApiKeySecret, CliError> {
    let (raw, source) = match &args.admin_key_file {
        Some(path) => (read_key_file(path)?, path.display().to_string()),
        None => match std::env::var(ADMIN_KEY_ENV) {
            Ok(raw) => (raw, ADMIN_KEY_ENV.to_owned()),
            Err(std::env::VarError::NotPresent) => {
                return Err(CliError::Config(format!(
                    "no admin key: set {ADMIN_KEY_ENV} or pass --admin-key-file PATH"
                )));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(CliError::Config(format!(
                    "{ADMIN_KEY_ENV} is not a keyward key (not UTF-8)"
                )));
            }
        },
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(CliError::Config(format!(
            "the admin key from {source} is empty"
        )));
    }
    ApiKeySecret::parse(raw)
        .map_err(|error| CliError::Config(format!("the admin key from {source}: {error}")))
}

/// Reads an admin key file. A file other users may read is used, with a
/// warning: refusing would break mounted secrets, which are often 0644.
fn read_key_file(path: &Path) -> Result<String, CliError> {
    let unreadable = |error: std::io::Error| {
        CliError::Config(format!("cannot read {}: {error}", path.display()))
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(unreadable)?
            .permissions()
            .mode();
        if mode & 0o004 != 0 {
            eprintln!(
                "warning: {} is readable by every user; chmod 600 it",
                path.display()
            );
        }
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

/// Parses a span such as `30s`, `15m`, `12h` or `90d` (`0` alone is zero).
pub fn parse_span(raw: &str) -> Result<Duration, String> {
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&split| split > 0)
        .ok_or_else(|| format!("{raw:?} is not a duration such as 30s, 15m, 12h or 90d"))?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{raw:?} is too long"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(format!("{raw:?} has an unknown unit; use s, m, h or d")),
    };
    n.checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(parse_span("0"), Ok(Duration::ZERO));
        assert_eq!(parse_span("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_span("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_span("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_span("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_span("90d"), Ok(Duration::from_secs(90 * 86_400)));
        for bad in [
            "",
            "5",
            "h",
            "-1h",
            "1.5h",
            "1w",
            "1 h",
            "999999999999999999999d",
        ] {
            assert!(parse_span(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_status_has_a_distinct_class() {
        let code = |code| CliError::Status(Status::new(code, "x")).exit_code();
        assert_eq!(code(Code::NotFound), exit::NOT_FOUND);
        assert_eq!(code(Code::InvalidArgument), exit::INVALID_ARGUMENT);
        assert_eq!(code(Code::Unauthenticated), exit::UNAUTHENTICATED);
        assert_eq!(code(Code::PermissionDenied), exit::PERMISSION_DENIED);
        assert_eq!(code(Code::FailedPrecondition), exit::FAILED_PRECONDITION);
        assert_eq!(code(Code::Unavailable), exit::UNAVAILABLE);
        assert_eq!(code(Code::Internal), exit::FAILURE);
        let codes = [
            exit::SUCCESS,
            exit::FAILURE,
            exit::USAGE,
            exit::CONFIG,
            exit::UNAVAILABLE,
            exit::UNAUTHENTICATED,
            exit::PERMISSION_DENIED,
            exit::NOT_FOUND,
            exit::INVALID_ARGUMENT,
            exit::FAILED_PRECONDITION,
        ];
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }
}
