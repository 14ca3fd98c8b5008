//! Typed configuration: the command line, with `KEYWARD_*` environment equivalents.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
pub use keyward_core::Cidr;
use keyward_core::LookupHasher;
use keyward_store::StoreOptions;

use crate::limits::LimiterSettings;
use crate::validation::ValidatorSettings;

/// The embedded default: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keyward.db?mode=rwc";

/// keyward: issue, manage and validate API keys over gRPC.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC server (applies pending migrations first).
    Serve(Box<Settings>),
    /// Applies pending database migrations and exits.
    Migrate(DatabaseArgs),
    /// Creates an admin key for an organization and prints only the raw key on stdout.
    Bootstrap(BootstrapArgs),
    /// Audit-log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manages keys on a running keyward (admin key from KEYWARD_ADMIN_KEY or --admin-key-file).
    Keys(Box<crate::cli::KeysArgs>),
    /// Reads the audit log on a running keyward (admin key from KEYWARD_ADMIN_KEY or --admin-key-file).
    Events(crate::cli::EventsArgs),
}

/// Audit-log subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks every organization's hash chain; exits 1 and names the first
    /// broken link of each broken chain.
    Verify(AuditVerifyArgs),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Where the database is, and the lookup-hash secret it was created with.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://FILE?mode=rwc, postgres://..., or mysql://...
    #[arg(long, env = "KEYWARD_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: DatabaseUrl,
    /// Optional secret keying the BLAKE3 lookup hash. Must stay the same for the
    /// life of a database; keyward refuses to start with a different one.
    #[arg(long, env = "KEYWARD_LOOKUP_SECRET", hide_env_values = true)]
    pub lookup_secret: Option<Secret>,
    /// Read the lookup secret from this file instead (trailing newline ignored).
    #[arg(
        long,
        env = "KEYWARD_LOOKUP_SECRET_FILE",
        conflicts_with = "lookup_secret"
    )]
    pub lookup_secret_file: Option<PathBuf>,
    /// Deadline of every database operation (admin RPCs answer UNAVAILABLE
    /// past it when the database stops answering), e.g. 1500ms. Default:
    /// keyward-store's `StoreOptions` (1.5s).
    #[arg(long, env = "KEYWARD_DATABASE_TIMEOUT", value_parser = parse_interval)]
    pub database_timeout: Option<Duration>,
    /// Connections of the main pool (admin RPCs, change feed, usage flushes).
    /// Default: keyward-store's `StoreOptions` (16).
    #[arg(long, env = "KEYWARD_DATABASE_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub database_connections: Option<u32>,
    /// Connections of the separate pool for validation cache misses, so a
    /// flood of unknown keys cannot starve the feed and admin RPCs. Default:
    /// keyward-store's `StoreOptions` (4).
    #[arg(long, env = "KEYWARD_LOOKUP_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub lookup_connections: Option<u32>,
    /// Most keys one organization may have (archived and revoked keys
    /// count). Default: keyward-store's `StoreOptions` (100000).
    #[arg(long, env = "KEYWARD_MAX_KEYS_PER_ORGANIZATION", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_keys_per_organization: Option<u64>,
}

impl DatabaseArgs {
    /// The store options these arguments configure: each one not given is
    /// keyward-store's default, written once in `StoreOptions::default`.
    pub fn store_options(&self) -> StoreOptions {
        let defaults = StoreOptions::default();
        StoreOptions {
            operation_timeout: self.database_timeout.unwrap_or(defaults.operation_timeout),
            // Waiting for a connection is part of an operation: a longer
            // deadline lets that wait be longer too.
            acquire_timeout: self
                .database_timeout
                .map_or(defaults.acquire_timeout, |timeout| {
                    timeout.max(defaults.acquire_timeout)
                }),
            max_connections: self
                .database_connections
                .unwrap_or(defaults.max_connections),
            lookup_connections: self
                .lookup_connections
                .unwrap_or(defaults.lookup_connections),
            max_keys_per_organization: self
                .max_keys_per_organization
                .unwrap_or(defaults.max_keys_per_organization),
            ..defaults
        }
    }

    /// The hasher these arguments configure.
    pub fn hasher(&self) -> std::io::Result<LookupHasher> {
        if let Some(path) = &self.lookup_secret_file {
            let secret = std::fs::read_to_string(path)?;
            return Ok(LookupHasher::keyed(
                secret.trim_end_matches(['\r', '\n']).as_bytes(),
            ));
        }
        Ok(match &self.lookup_secret {
            Some(secret) => LookupHasher::keyed(secret.0.as_bytes()),
            None => LookupHasher::derived(),
        })
    }
}

/// Everything `keyward serve` (and [`crate::Application::build`]) needs. The
/// command line is the settings: every default is written once, in a
/// `#[arg]` attribute, and `Default` and [`Settings::for_database`] are built
/// from those same defaults.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address to serve Prometheus metrics on, at /metrics (plain HTTP).
    /// Off unless set.
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often coalesced usage (last-used data, counts per key, minute
    /// and outcome) is written, e.g. 1s or 500ms: a crash loses at most this
    /// much usage.
    #[arg(long, env = "KEYWARD_USAGE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub usage_flush_interval: Duration,
    /// How long usage counts are kept (GetKeyUsage, ListKeys' used_since and
    /// unused_since), e.g. 30d or 12h; older minutes are pruned by the flusher.
    #[arg(long, env = "KEYWARD_USAGE_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub usage_retention: Duration,
    /// Proxies whose `x-forwarded-for` is believed, as CIDRs separated by
    /// commas (e.g. 10.0.0.0/8,::1). Without any, a client's address is the
    /// connection's peer address and forwarded headers are ignored.
    #[arg(long, env = "KEYWARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,
    /// Cache, change-feed and outage settings of the validation path.
    #[command(flatten)]
    pub validator: ValidatorSettings,
    /// What one request or connection may cost.
    #[command(flatten)]
    pub limits: LimitSettings,
    /// TLS on the listener (off by default).
    #[command(flatten)]
    pub tls: TlsSettings,
    /// How rate limits and credits are counted (in memory, or shared
    /// through Redis).
    #[command(flatten)]
    pub limiter: LimiterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Settings {
    /// The defaults, over `database_url`, listening on a free port of
    /// 127.0.0.1 (for tests and tools; set fields to override).
    pub fn for_database(database_url: impl Into<String>) -> Self {
        let mut settings = Self::default();
        settings.database.database_url = DatabaseUrl(database_url.into());
        settings.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        settings
    }

    /// Refuses combinations that would break a healthy server.
    pub fn check(&self) -> Result<(), String> {
        let validator = &self.validator;
        if validator.stale_if_error < validator.sync_interval {
            // Between two successful syncs the cache would count as stale
            // and every cached verdict would be UNAVAILABLE.
            return Err(format!(
                "--stale-if-error ({:?}) must be at least --sync-interval ({:?})",
                validator.stale_if_error, validator.sync_interval
            ));
        }
        Ok(())
    }
}

/// TLS on keyward's port (SPEC §12). Off unless `--tls-cert` and
/// `--tls-key` are given; the files reload on SIGHUP and when they change.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TlsSettings {
    /// Serve TLS 1.3 with this PEM certificate chain (leaf first). Needs
    /// --tls-key.
    #[arg(long, env = "KEYWARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KEYWARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CA(s) in this PEM file
    /// (mTLS). Needs --tls-cert.
    #[arg(long, env = "KEYWARD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Longest a client may take to complete the TLS handshake before its
    /// connection is closed.
    #[arg(long, env = "KEYWARD_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub tls_handshake_timeout: Duration,
    /// How often the TLS files are checked for changes (a change reloads
    /// them; SIGHUP reloads at once).
    #[arg(long, env = "KEYWARD_TLS_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        clap_defaults()
    }
}

/// What one request or connection may cost (SPEC §11): decoded message sizes
/// per service, HTTP/2 limits, a per-request timeout, keepalive, and caps on
/// connections and on requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct LimitSettings {
    /// Largest ValidateKey request accepted (bytes, or with KiB/MiB);
    /// a larger one is RESOURCE_EXHAUSTED before it is decoded.
    #[arg(long, env = "KEYWARD_MAX_VALIDATION_MESSAGE_SIZE", default_value = "16KiB", value_parser = parse_size)]
    pub max_validation_message_size: usize,
    /// Largest Envoy Check request accepted (it carries the HTTP request's headers).
    #[arg(long, env = "KEYWARD_MAX_CHECK_MESSAGE_SIZE", default_value = "128KiB", value_parser = parse_size)]
    pub max_check_message_size: usize,
    /// Largest admin request accepted (about twice the largest valid CreateKey).
    #[arg(long, env = "KEYWARD_MAX_ADMIN_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_admin_message_size: usize,
    /// Largest HTTP/2 header list (request metadata) accepted.
    #[arg(long, env = "KEYWARD_MAX_HEADER_LIST_SIZE", default_value = "16KiB", value_parser = parse_size_u32)]
    pub max_header_list_size: u32,
    /// Most HTTP/2 streams (requests) open at once on one connection.
    #[arg(long, env = "KEYWARD_MAX_CONCURRENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// Most requests handled at once over all connections; beyond it a
    /// request is RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "KEYWARD_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = at_least_one())]
    pub max_in_flight: usize,
    /// Most open connections; a connection beyond it is closed at once.
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS", default_value_t = 1024, value_parser = at_least_one())]
    pub max_connections: usize,
    /// Longest a request may run (a shorter `grpc-timeout` wins).
    #[arg(long, env = "KEYWARD_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub request_timeout: Duration,
    /// How often a connection is probed (HTTP/2 PING and TCP keepalive).
    #[arg(long, env = "KEYWARD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    #[arg(long, env = "KEYWARD_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub keepalive_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        clap_defaults()
    }
}

/// Settings built from their `#[arg]` defaults alone: no command line and no
/// `KEYWARD_*` environment. The one way a `Default` of a settings struct is made,
/// so a default is written once.
pub fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command =
        T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("defaults parse into their own settings")
}

/// Arguments of `keyward bootstrap`.
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The organization the admin key manages (1 to 64 of [A-Za-z0-9_.-]).
    #[arg(long, env = "KEYWARD_ORGANIZATION")]
    pub organization: String,
    /// The admin key's name.
    #[arg(long, default_value = "bootstrap admin key")]
    pub name: String,
}

/// Arguments of `keyward audit verify`.
#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Check only this organization.
    #[arg(long)]
    pub organization: Option<String>,
}

/// A database URL. Its `Debug` hides any password.
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host/... → scheme://user:***@host/...
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let credentials = &self.0[scheme_end + 3..at];
                match credentials.split_once(':') {
                    Some((user, _)) => write!(
                        f,
                        "{}{user}:***{}",
                        &self.0[..scheme_end + 3],
                        &self.0[at..]
                    ),
                    None => f.write_str(&self.0),
                }
            }
            _ => f.write_str(&self.0),
        }
    }
}

/// A secret setting: never printed.
#[derive(Clone)]
pub struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("must not be empty");
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Parses `250ms`, `1s`, `2m`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: ms, s or m"))?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 500ms, 1s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{raw:?} is too long")),
        _ => Err(format!("{raw:?} has an unknown unit; use ms, s or m")),
    }
}

/// Parses a retention: `30d`, `12h`, or any non-zero [`parse_duration`].
pub fn parse_retention(raw: &str) -> Result<Duration, String> {
    let hours = |n: &str, per: u64| {
        n.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(per * 60 * 60))
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{raw:?} is not a retention such as 30d or 12h"))
    };
    match (raw.strip_suffix('d'), raw.strip_suffix('h')) {
        (Some(days), _) => hours(days, 24),
        (_, Some(n)) => hours(n, 1),
        _ => parse_interval(raw),
    }
}

/// Parses a size in bytes: `16384`, `16KiB`, `1MiB`.
pub fn parse_size(raw: &str) -> Result<usize, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size such as 16384, 16KiB or 1MiB"))?;
    let unit = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return Err(format!("{raw:?} has an unknown unit; use KiB or MiB")),
    };
    match n.checked_mul(unit) {
        Some(0) => Err(format!("{raw:?} must be more than zero")),
        Some(size) => Ok(size),
        None => Err(format!("{raw:?} is too large")),
    }
}

/// Like [`parse_size`], for sizes HTTP/2 carries in 32 bits.
fn parse_size_u32(raw: &str) -> Result<u32, String> {
    u32::try_from(parse_size(raw)?).map_err(|_| format!("{raw:?} is too large"))
}

/// A count that must be at least one (a capacity).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Parses a duration that must not be zero (an interval).
pub fn parse_interval(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        Duration::ZERO => Err(format!("{raw:?} must be more than zero")),
        interval => Ok(interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_debug_hides_the_password() {
        let url = DatabaseUrl("postgres://keyward:hunter2@db:5432/keyward".into());
        assert_eq!(format!("{url:?}"), "postgres://keyward:***@db:5432/keyward");
        let plain = DatabaseUrl(DEFAULT_DATABASE_URL.into());
        assert_eq!(format!("{plain:?}"), DEFAULT_DATABASE_URL);
        assert!(!format!("{:?}", "x".parse::<Secret>().unwrap()).contains('x'));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "5", "s", "1h", "-1s", "1.5s", "307445734561825861m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_interval("0ms").is_err());
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
    }

    /// `keyward serve ARGS`, with no `KEYWARD_*` variable of the test's
    /// environment taken into account.
    fn serve(args: &[&str]) -> Result<Settings, clap::Error> {
        use clap::CommandFactory;
        let command = Cli::command()
            .mut_subcommand("serve", |serve| serve.mut_args(|arg| arg.env(None::<&str>)));
        let command_line = ["keyward", "serve"].iter().chain(args);
        let matches = command.try_get_matches_from(command_line)?;
        match Cli::from_arg_matches(&matches)?.command {
            Command::Serve(settings) => Ok(*settings),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn an_empty_command_line_gives_the_defaults() {
        let settings = serve(&[]).expect("no flag is required");
        assert_eq!(settings.validator, ValidatorSettings::default());
        assert_eq!(settings.limits, LimitSettings::default());
        assert_eq!(settings.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(settings.database.database_url.0, DEFAULT_DATABASE_URL);
        assert!(settings.trusted_proxies.is_empty());
        assert_eq!(settings.metrics_listen, None, "metrics are off by default");
        // The documented values (README's flag table).
        assert_eq!(settings.usage_flush_interval, Duration::from_secs(1));
        assert_eq!(
            settings.usage_retention,
            Duration::from_secs(30 * 24 * 60 * 60)
        );
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_retention("90s"), Ok(Duration::from_secs(90)));
        for bad in ["0d", "d", "1.5d", "-1h", "0s"] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
        assert_eq!(settings.validator.sync_interval, Duration::from_millis(250));
        assert_eq!(settings.validator.stale_if_error, Duration::from_secs(60));
        assert_eq!(settings.validator.cache.max_age, Duration::from_secs(30));
        assert_eq!(settings.limits.max_validation_message_size, 16 * 1024);
        assert_eq!(settings.limits.max_check_message_size, 128 * 1024);
        assert_eq!(settings.limits.max_admin_message_size, 64 * 1024);
        assert_eq!(settings.limits.request_timeout, Duration::from_secs(10));
        assert_eq!(settings.limits.max_connections, 1024);
        assert_eq!(settings.tls, TlsSettings::default());
        assert_eq!(settings.tls.tls_cert, None, "plaintext by default");
        assert_eq!(settings.tls.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(settings.tls.tls_reload_interval, Duration::from_secs(1));

        let test = Settings::for_database("sqlite::memory:");
        assert_eq!(test.database.database_url.0, "sqlite::memory:");
        assert_eq!(test.listen.port(), 0);
        assert_eq!(test.limits, settings.limits);
    }

    #[test]
    fn flags_reach_the_settings() {
        let settings = serve(&[
            "--max-validation-message-size",
            "1MiB",
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--sync-interval",
            "100ms",
            "--cache-capacity",
            "7",
            "--metrics-listen",
            "0.0.0.0:9091",
        ])
        .expect("valid flags");
        assert_eq!(settings.limits.max_validation_message_size, 1 << 20);
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert_eq!(settings.validator.sync_interval, Duration::from_millis(100));
        assert_eq!(settings.validator.cache.capacity, 7);
        assert_eq!(
            settings.metrics_listen,
            Some("0.0.0.0:9091".parse().unwrap())
        );
    }

    #[test]
    fn tls_flags_go_together() {
        let settings = serve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).expect("a pair");
        assert_eq!(settings.tls.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(settings.tls.tls_key, Some(PathBuf::from("k.pem")));
        for lone in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-client-ca", "ca.pem"],
        ] {
            let error = serve(lone).expect_err("incomplete TLS settings");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{lone:?}"
            );
        }
    }

    #[test]
    fn stale_if_error_below_the_sync_interval_is_refused() {
        let settings = serve(&["--stale-if-error", "100ms"]).expect("parses");
        let error = settings.check().expect_err("shorter than the 250ms sync");
        assert!(error.contains("--stale-if-error"), "{error}");
        assert!(
            serve(&["--stale-if-error", "250ms"])
                .unwrap()
                .check()
                .is_ok()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        for bad in [
            "",
            "0",
            "0KiB",
            "1KB",
            "-1",
            "KiB",
            "99999999999999999999MiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metrics_listen_is_an_address_and_a_port() {
        let parsed = |value: &str| {
            serve(&["--metrics-listen", value]).map(|settings| settings.metrics_listen)
        };
        for (value, expected) in [
            ("127.0.0.1:9091", "127.0.0.1:9091"),
            ("[::1]:9091", "[::1]:9091"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ] {
            assert_eq!(
                parsed(value).expect("accepted"),
                Some(expected.parse().expect("an address")),
                "{value}"
            );
        }
        // A name is not resolved, and a bare address or port is not enough.
        for bad in [
            "",
            "9091",
            "127.0.0.1",
            "localhost:9091",
            "127.0.0.1:70000",
            "::1:9091",
        ] {
            let error = parsed(bad).expect_err("refused");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn capacities_must_be_at_least_one() {
        for flag in ["--cache-capacity", "--negative-cache-capacity"] {
            let error = Cli::try_parse_from(["keyward", "serve", flag, "0"])
                .expect_err("a zero capacity is refused");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag}"
            );
            assert!(
                Cli::try_parse_from(["keyward", "serve", flag, "1"]).is_ok(),
                "{flag}"
            );
        }
    }
}
