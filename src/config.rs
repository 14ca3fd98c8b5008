//! Typed configuration: the command line, with `KEYWARD_*` environment equivalents.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward_core::LookupHasher;

use crate::cache::CacheSettings;
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
    Serve(ServeArgs),
    /// Applies pending database migrations and exits.
    Migrate(DatabaseArgs),
    /// Creates an admin key for an organization and prints only the raw key on stdout.
    Bootstrap(BootstrapArgs),
    /// Audit-log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
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
}

impl DatabaseArgs {
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

/// Arguments of `keyward serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// How often coalesced last-used data is written, e.g. 1s or 500ms.
    #[arg(long, env = "KEYWARD_USAGE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub usage_flush_interval: Duration,
    /// Most keys held in the validation cache (eviction beyond it).
    #[arg(long, env = "KEYWARD_CACHE_CAPACITY", default_value_t = 100_000, value_parser = at_least_one())]
    pub cache_capacity: usize,
    /// Longest a cached key is served before it is read again.
    #[arg(long, env = "KEYWARD_CACHE_MAX_AGE", default_value = "30s", value_parser = parse_interval)]
    pub cache_max_age: Duration,
    /// Most unknown key hashes remembered (so floods of random keys stay off the database).
    #[arg(
        long,
        env = "KEYWARD_NEGATIVE_CACHE_CAPACITY",
        default_value_t = 100_000,
        value_parser = at_least_one()
    )]
    pub negative_cache_capacity: usize,
    /// How long an unknown key hash is remembered.
    #[arg(long, env = "KEYWARD_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = parse_interval)]
    pub negative_cache_ttl: Duration,
    /// How often the change feed is read, so other replicas' changes show here
    /// (keep it well under 1s: changes must show within 1s).
    #[arg(long, env = "KEYWARD_SYNC_INTERVAL", default_value = "250ms", value_parser = parse_interval)]
    pub sync_interval: Duration,
    /// While the database is unreachable, how long cached verdicts are still
    /// served after the last successful sync.
    #[arg(long, env = "KEYWARD_STALE_IF_ERROR", default_value = "60s", value_parser = parse_duration)]
    pub stale_if_error: Duration,
    /// Longest a cache miss waits for the database before answering UNAVAILABLE.
    #[arg(long, env = "KEYWARD_LOOKUP_TIMEOUT", default_value = "1s", value_parser = parse_interval)]
    pub lookup_timeout: Duration,
}

impl ServeArgs {
    /// The validation path's settings.
    pub fn validator_settings(&self) -> ValidatorSettings {
        ValidatorSettings {
            cache: CacheSettings {
                capacity: self.cache_capacity,
                negative_capacity: self.negative_cache_capacity,
                negative_ttl: self.negative_cache_ttl,
                max_age: self.cache_max_age,
                ..CacheSettings::default()
            },
            sync_interval: self.sync_interval,
            stale_if_error: self.stale_if_error,
            lookup_timeout: self.lookup_timeout,
        }
    }
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

/// A count that must be at least one (a capacity).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
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
