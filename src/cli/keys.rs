//! `keyward keys …`: one subcommand per key RPC; flags become the request.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::output::Report;
use super::{AdminClient, CliError, ClientArgs, connect, parse_span};
use crate::convert::{duration, timestamp};
use crate::pb;

/// `keyward keys`: the client options and the subcommand.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// How to reach keyward.
    #[command(flatten, next_help_heading = "Connection and output")]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key and prints its raw key, the only time it is shown.
    Create(CreateArgs),
    /// Shows one key.
    Get(IdArg),
    /// Lists keys, newest first (archived keys only when asked for).
    List(ListKeysArgs),
    /// Changes the given fields of a key; the others stay as they are.
    Update(UpdateArgs),
    /// Archives a key: it stops validating at once; reversible.
    Archive(IdArg),
    /// Brings an archived or inactive key back.
    Reactivate(IdArg),
    /// Revokes a key permanently.
    Revoke(IdArg),
    /// Issues a new key in place of a key and prints the new raw key once;
    /// the old key works until its grace period ends.
    Rotate(RotateArgs),
    /// Deletes a key record (its audit events stay).
    Delete(IdArg),
    /// Shows a key's validations per minute and outcome (the last 24 hours
    /// unless --from/--to say otherwise; at most 31 days).
    Usage(UsageArgs),
}

/// `keyward keys usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The key id (key_…).
    pub id: String,
    /// Start of the range (RFC 3339), rounded down to its minute.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// End of the range (RFC 3339, exclusive); now when unset.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
}

/// A key id argument.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The key id (key_…).
    pub id: String,
}

/// `keyward keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The key's name (1 to 128 characters).
    #[arg(long)]
    pub name: String,
    /// A scope the key grants (repeat for more), e.g. orders:read, orders:* or *.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A network the key may be used from (repeat for more), e.g.
    /// 203.0.113.0/24 or 2001:db8::/32; none: any address.
    #[arg(long = "allowed-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,
    /// A rate limit NAME=LIMIT/DURATION[:COST] (repeat for more, up to 8),
    /// e.g. requests=100/1s or bulk=1000/10s:5 (each call costs 5).
    #[arg(long = "rate-limit", value_name = "NAME=LIMIT/DURATION[:COST]", value_parser = parse_rate_limit)]
    pub rate_limits: Vec<pb::RateLimit>,
    /// Credits (a quota): each valid call spends one; none: unlimited.
    #[arg(long, value_name = "N")]
    pub credits: Option<i64>,
    /// Refill the credits to AMOUNT every day or month (00:00 UTC), e.g.
    /// 1000/daily. Needs --credits.
    #[arg(long, value_name = "AMOUNT/daily|monthly", value_parser = parse_refill, requires = "credits")]
    pub credits_refill: Option<Refill>,
    /// Free text (up to 1024 characters).
    #[arg(long, default_value = "")]
    pub description: String,
    /// The key expires this long from now, e.g. 30d or 12h.
    #[arg(long, value_parser = parse_span, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// The key expires at this time (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub expires_at: Option<DateTime<Utc>>,
    /// A metadata entry KEY=VALUE (repeat for more); ValidateKey returns them.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_entry)]
    pub metadata: Vec<(String, String)>,
    /// The environment, which picks the prefix: sk_live_ or sk_test_.
    #[arg(long, value_enum, default_value_t = EnvironmentArg::Live)]
    pub environment: EnvironmentArg,
    /// A standard key (for product services) or an admin key (for this API).
    #[arg(long, value_enum, default_value_t = KindArg::Standard)]
    pub kind: KindArg,
    /// The workspace within the organization.
    #[arg(long, default_value = "")]
    pub workspace_id: String,
    /// The user the key acts for.
    #[arg(long, default_value = "")]
    pub user_id: String,
    /// The service account the key acts for.
    #[arg(long, default_value = "")]
    pub service_account_id: String,
}

/// `keyward keys list`.
#[derive(Debug, Args)]
pub struct ListKeysArgs {
    /// Only keys with this status (repeat for any of several).
    #[arg(long = "status", value_name = "STATUS", value_enum)]
    pub statuses: Vec<StatusArg>,
    /// Include archived keys (implied by --status archived).
    #[arg(long)]
    pub include_archived: bool,
    /// Only keys of this workspace.
    #[arg(long, default_value = "")]
    pub workspace_id: String,
    /// Only keys created by this actor (an admin key id; `cli` for bootstrap).
    #[arg(long, default_value = "")]
    pub created_by_id: String,
    /// Only keys acting for this user.
    #[arg(long, default_value = "")]
    pub user_id: String,
    /// Only keys acting for this service account.
    #[arg(long, default_value = "")]
    pub service_account_id: String,
    /// Only keys never used or last used before this time (RFC 3339): stale keys.
    #[arg(long, value_parser = parse_time)]
    pub last_used_before: Option<DateTime<Utc>>,
    /// Only keys presented (any outcome) in the minute of this time (RFC 3339) or later.
    #[arg(long, value_parser = parse_time)]
    pub used_since: Option<DateTime<Utc>>,
    /// Only keys not presented in the minute of this time (RFC 3339) or later.
    #[arg(long, value_parser = parse_time)]
    pub unused_since: Option<DateTime<Utc>>,
    /// Keys per page, 1 to 1000 (keyward's default: 20; with --all: 1000).
    #[arg(long)]
    pub limit: Option<i32>,
    /// Start after this key id (the previous page's last id).
    #[arg(long, value_name = "ID", default_value = "")]
    pub after: String,
    /// Follow the cursors to the end: every matching key.
    #[arg(long, conflicts_with = "after")]
    pub all: bool,
}

/// `keyward keys update`: only the fields whose flags are given change (the
/// update mask is built from them). Clearing is explicit: `--clear-scopes`,
/// `--clear-metadata`, `--clear-expiry`; `--description ''` clears the
/// description.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args([
            "name", "description", "scopes", "clear_scopes", "metadata", "clear_metadata",
            "expires_in", "expires_at", "clear_expiry", "status", "allowed_cidrs",
            "clear_allowed_cidrs", "rate_limits", "clear_rate_limits", "credits", "clear_credits",
        ])
))]
pub struct UpdateArgs {
    /// The key id (key_…).
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New description (an empty one clears it).
    #[arg(long)]
    pub description: Option<String>,
    /// The scopes, replacing all of the current ones (repeat for more).
    #[arg(long = "scope", value_name = "SCOPE", conflicts_with = "clear_scopes")]
    pub scopes: Vec<String>,
    /// Remove every scope.
    #[arg(long)]
    pub clear_scopes: bool,
    /// The IP allowlist, replacing the current one (repeat for more).
    #[arg(
        long = "allowed-cidr",
        value_name = "CIDR",
        conflicts_with = "clear_allowed_cidrs"
    )]
    pub allowed_cidrs: Vec<String>,
    /// Remove the IP allowlist: the key may be used from any address.
    #[arg(long)]
    pub clear_allowed_cidrs: bool,
    /// The rate limits, replacing all of the current ones (repeat for more).
    #[arg(
        long = "rate-limit",
        value_name = "NAME=LIMIT/DURATION[:COST]",
        value_parser = parse_rate_limit,
        conflicts_with = "clear_rate_limits"
    )]
    pub rate_limits: Vec<pb::RateLimit>,
    /// Remove every rate limit.
    #[arg(long)]
    pub clear_rate_limits: bool,
    /// New credits, replacing the current ones and what was spent of them
    /// (the same number again is a top-up).
    #[arg(long, value_name = "N", conflicts_with = "clear_credits")]
    pub credits: Option<i64>,
    /// The new credits' refill, e.g. 1000/daily. Needs --credits.
    #[arg(long, value_name = "AMOUNT/daily|monthly", value_parser = parse_refill, requires = "credits")]
    pub credits_refill: Option<Refill>,
    /// Remove the credits: the key is unlimited.
    #[arg(long)]
    pub clear_credits: bool,
    /// The metadata, replacing all of the current entries (repeat for more).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_entry, conflicts_with = "clear_metadata")]
    pub metadata: Vec<(String, String)>,
    /// Remove every metadata entry.
    #[arg(long)]
    pub clear_metadata: bool,
    /// New expiry, this long from now.
    #[arg(long, value_parser = parse_span, conflicts_with_all = ["expires_at", "clear_expiry"])]
    pub expires_in: Option<Duration>,
    /// New expiry (RFC 3339).
    #[arg(long, value_parser = parse_time, conflicts_with = "clear_expiry")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Remove the expiry: the key never expires.
    #[arg(long)]
    pub clear_expiry: bool,
    /// Disable (inactive) or enable (active) the key.
    #[arg(long, value_enum)]
    pub status: Option<UpdateStatusArg>,
}

/// `keyward keys rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The key to replace.
    pub id: String,
    /// How long the old key keeps working, e.g. 1h; 0 ends it now
    /// (keyward's default: 24h; at most 365d).
    #[arg(long, value_parser = parse_span)]
    pub grace_period: Option<Duration>,
}

/// A key's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvironmentArg {
    /// Production: sk_live_.
    Live,
    /// Testing: sk_test_.
    Test,
}

/// A key's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A key product services accept.
    Standard,
    /// A key for the admin API of this organization.
    Admin,
}

/// A key status to filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// The key validates.
    Active,
    /// Disabled through update.
    Inactive,
    /// Its expiry has passed.
    Expired,
    /// Archived.
    Archived,
    /// Revoked.
    Revoked,
}

/// The statuses `update --status` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpdateStatusArg {
    /// Enabled.
    Active,
    /// Disabled (reversible).
    Inactive,
}

impl From<StatusArg> for pb::KeyStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Active => Self::Active,
            StatusArg::Inactive => Self::Inactive,
            StatusArg::Expired => Self::Expired,
            StatusArg::Archived => Self::Archived,
            StatusArg::Revoked => Self::Revoked,
        }
    }
}

/// Parses an RFC 3339 time.
fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| format!("{raw:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"))
}

/// A credits refill: `AMOUNT/daily` or `AMOUNT/monthly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    /// Credits after each refill.
    pub amount: i64,
    /// When.
    pub interval: pb::RefillInterval,
}

/// Parses a rate limit `NAME=LIMIT/DURATION[:COST]` (`requests=100/1s`,
/// `bulk=1000/10s:5`). Only the shape is checked here; keyward checks the
/// values (and names the bad one).
fn parse_rate_limit(raw: &str) -> Result<pb::RateLimit, String> {
    let bad = || format!("{raw:?} is not NAME=LIMIT/DURATION[:COST], e.g. requests=100/1s");
    let (name, rest) = raw.split_once('=').ok_or_else(bad)?;
    let (limit, rest) = rest.split_once('/').ok_or_else(bad)?;
    let (window, cost) = match rest.split_once(':') {
        Some((window, cost)) => (window, Some(cost)),
        None => (rest, None),
    };
    let number = |n: &str| n.parse::<i64>().map_err(|_| bad());
    Ok(pb::RateLimit {
        name: name.to_owned(),
        limit: number(limit)?,
        duration: Some(duration(parse_span(window)?)),
        cost: cost.map(number).transpose()?.unwrap_or(0),
    })
}

/// Parses a refill `AMOUNT/daily` or `AMOUNT/monthly`.
fn parse_refill(raw: &str) -> Result<Refill, String> {
    let bad = || format!("{raw:?} is not AMOUNT/daily or AMOUNT/monthly, e.g. 1000/daily");
    let (amount, interval) = raw.split_once('/').ok_or_else(bad)?;
    Ok(Refill {
        amount: amount.parse().map_err(|_| bad())?,
        interval: match interval {
            "daily" => pb::RefillInterval::Daily,
            "monthly" => pb::RefillInterval::Monthly,
            _ => return Err(bad()),
        },
    })
}

/// The credits of `--credits N [--credits-refill AMOUNT/INTERVAL]`.
fn credits(remaining: Option<i64>, refill: Option<Refill>) -> Option<pb::Credits> {
    remaining.map(|remaining| pb::Credits {
        remaining,
        refill_amount: refill.map_or(0, |r| r.amount),
        refill_interval: refill
            .map_or(pb::RefillInterval::Unspecified, |r| r.interval)
            .into(),
        refills_at: None,
    })
}

/// Parses a metadata entry `KEY=VALUE` (the value may hold `=`).
fn parse_entry(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

/// The entries as a map; a key given twice is a usage error, not a silent
/// choice of one of its values.
fn metadata_map(entries: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::with_capacity(entries.len());
    for (key, value) in entries {
        if map.insert(key.clone(), value).is_some() {
            return Err(CliError::Usage(format!(
                "--metadata {key:?} is given more than once"
            )));
        }
    }
    Ok(map)
}

/// An expiry from `--expires-in` (from now) or `--expires-at`.
fn expiry(
    expires_in: Option<Duration>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Option<prost_types::Timestamp>, CliError> {
    let at = match (expires_in, expires_at) {
        (Some(span), _) => Some(
            chrono::Duration::from_std(span)
                .ok()
                .and_then(|span| Utc::now().checked_add_signed(span))
                .ok_or_else(|| CliError::Usage("--expires-in is too long".into()))?,
        ),
        (None, at) => at,
    };
    Ok(at.map(timestamp))
}

/// Runs a key subcommand.
pub(super) async fn run(args: KeysArgs) -> Result<Report, CliError> {
    // Local checks first: a bad command line never needs the server.
    let request = Call::build(args.command)?;
    let mut client = connect(&args.client).await?;
    request.send(&mut client).await
}

/// A key subcommand as the request(s) it sends.
enum Call {
    Create(pb::CreateKeyRequest),
    Get(pb::GetKeyRequest),
    List {
        request: pb::ListKeysRequest,
        all: bool,
    },
    Update(pb::UpdateKeyRequest),
    Archive(pb::ArchiveKeyRequest),
    Reactivate(pb::ReactivateKeyRequest),
    Revoke(pb::RevokeKeyRequest),
    Rotate(pb::RotateKeyRequest),
    Delete(pb::DeleteKeyRequest),
    Usage(pb::GetKeyUsageRequest),
}

/// Page size of `--all` without `--limit`: keyward's largest, for the
/// fewest round trips.
const ALL_PAGE: i32 = 1000;

impl Call {
    fn build(command: KeysCommand) -> Result<Self, CliError> {
        Ok(match command {
            KeysCommand::Create(args) => Self::Create(pb::CreateKeyRequest {
                name: args.name,
                description: args.description,
                scopes: args.scopes,
                allowed_cidrs: args.allowed_cidrs,
                metadata: metadata_map(args.metadata)?,
                workspace_id: args.workspace_id,
                environment: match args.environment {
                    EnvironmentArg::Live => pb::Environment::Live,
                    EnvironmentArg::Test => pb::Environment::Test,
                }
                .into(),
                kind: match args.kind {
                    KindArg::Standard => pb::KeyKind::Standard,
                    KindArg::Admin => pb::KeyKind::Admin,
                }
                .into(),
                expires_at: expiry(args.expires_in, args.expires_at)?,
                user_id: args.user_id,
                service_account_id: args.service_account_id,
                rate_limits: args.rate_limits,
                credits: credits(args.credits, args.credits_refill),
            }),
            KeysCommand::Get(IdArg { id }) => Self::Get(pb::GetKeyRequest { id }),
            KeysCommand::Usage(args) => Self::Usage(pb::GetKeyUsageRequest {
                id: args.id,
                from: args.from.map(timestamp),
                to: args.to.map(timestamp),
            }),
            KeysCommand::List(args) => Self::List {
                request: pb::ListKeysRequest {
                    limit: args.limit.or(args.all.then_some(ALL_PAGE)),
                    after_id: args.after,
                    statuses: args
                        .statuses
                        .into_iter()
                        .map(|status| pb::KeyStatus::from(status).into())
                        .collect(),
                    include_archived: args.include_archived,
                    workspace_id: args.workspace_id,
                    created_by_id: args.created_by_id,
                    user_id: args.user_id,
                    service_account_id: args.service_account_id,
                    last_used_before: args.last_used_before.map(timestamp),
                    used_since: args.used_since.map(timestamp),
                    unused_since: args.unused_since.map(timestamp),
                    before_id: String::new(),
                },
                all: args.all,
            },
            KeysCommand::Update(args) => Self::Update(update_request(args)?),
            KeysCommand::Archive(IdArg { id }) => Self::Archive(pb::ArchiveKeyRequest { id }),
            KeysCommand::Reactivate(IdArg { id }) => {
                Self::Reactivate(pb::ReactivateKeyRequest { id })
            }
            KeysCommand::Revoke(IdArg { id }) => Self::Revoke(pb::RevokeKeyRequest { id }),
            KeysCommand::Rotate(args) => Self::Rotate(pb::RotateKeyRequest {
                id: args.id,
                grace_period: args.grace_period.map(duration),
            }),
            KeysCommand::Delete(IdArg { id }) => Self::Delete(pb::DeleteKeyRequest { id }),
        })
    }

    async fn send(self, client: &mut AdminClient) -> Result<Report, CliError> {
        /// The key of a response: keyward always sends it.
        fn required(key: Option<pb::ApiKey>) -> Result<pb::ApiKey, CliError> {
            key.ok_or(CliError::BadResponse("api_key"))
        }
        let one = |key| required(key).map(Report::Key);
        Ok(match self {
            Self::Create(request) => {
                let response = client.create_key(request).await?.into_inner();
                Report::Created {
                    key: required(response.api_key)?,
                    secret: response.secret,
                }
            }
            Self::Get(request) => {
                let response = client.get_key(request).await?.into_inner();
                one(response.api_key)?
            }
            Self::List { request, all } => list(client, request, all).await?,
            Self::Update(request) => {
                let response = client.update_key(request).await?.into_inner();
                one(response.api_key)?
            }
            Self::Archive(request) => {
                let response = client.archive_key(request).await?.into_inner();
                one(response.api_key)?
            }
            Self::Reactivate(request) => {
                let response = client.reactivate_key(request).await?.into_inner();
                one(response.api_key)?
            }
            Self::Revoke(request) => {
                let response = client.revoke_key(request).await?.into_inner();
                one(response.api_key)?
            }
            Self::Rotate(request) => {
                let response = client.rotate_key(request).await?.into_inner();
                Report::Rotated {
                    key: required(response.api_key)?,
                    secret: response.secret,
                    previous: Box::new(required(response.previous_key)?),
                }
            }
            Self::Delete(request) => {
                let response = client.delete_key(request).await?.into_inner();
                Report::Deleted { id: response.id }
            }
            Self::Usage(request) => {
                Report::Usage(client.get_key_usage(request).await?.into_inner())
            }
        })
    }
}

/// UpdateKey with the mask naming exactly the fields whose flags were given.
fn update_request(args: UpdateArgs) -> Result<pb::UpdateKeyRequest, CliError> {
    let mut paths = Vec::new();
    let mut request = pb::UpdateKeyRequest {
        id: args.id,
        ..Default::default()
    };
    if let Some(name) = args.name {
        paths.push("name");
        request.name = name;
    }
    if let Some(description) = args.description {
        paths.push("description");
        request.description = description;
    }
    if !args.scopes.is_empty() || args.clear_scopes {
        paths.push("scopes");
        request.scopes = args.scopes;
    }
    if !args.allowed_cidrs.is_empty() || args.clear_allowed_cidrs {
        paths.push("allowed_cidrs");
        request.allowed_cidrs = args.allowed_cidrs;
    }
    if !args.rate_limits.is_empty() || args.clear_rate_limits {
        paths.push("rate_limits");
        request.rate_limits = args.rate_limits;
    }
    if args.credits.is_some() || args.clear_credits {
        // Unset with credits in the mask removes them.
        paths.push("credits");
        request.credits = credits(args.credits, args.credits_refill);
    }
    if !args.metadata.is_empty() || args.clear_metadata {
        paths.push("metadata");
        request.metadata = metadata_map(args.metadata)?;
    }
    if args.expires_in.is_some() || args.expires_at.is_some() || args.clear_expiry {
        // Unset with expires_at in the mask clears the expiry.
        paths.push("expires_at");
        request.expires_at = expiry(args.expires_in, args.expires_at)?;
    }
    if let Some(status) = args.status {
        paths.push("status");
        request.status = match status {
            UpdateStatusArg::Active => pb::KeyStatus::Active,
            UpdateStatusArg::Inactive => pb::KeyStatus::Inactive,
        }
        .into();
    }
    request.update_mask = Some(prost_types::FieldMask {
        paths: paths.into_iter().map(str::to_owned).collect(),
    });
    Ok(request)
}

/// ListKeys; with `all`, following `last_id` until `has_more` is false.
async fn list(
    client: &mut AdminClient,
    mut request: pb::ListKeysRequest,
    all: bool,
) -> Result<Report, CliError> {
    let mut keys = Vec::new();
    loop {
        let page = client.list_keys(request.clone()).await?.into_inner();
        keys.extend(page.keys);
        if !all || !page.has_more {
            return Ok(Report::Keys {
                first_id: keys.first().map(|key| key.id.clone()).unwrap_or_default(),
                last_id: keys.last().map(|key| key.id.clone()).unwrap_or_default(),
                has_more: page.has_more,
                keys,
            });
        }
        if page.last_id.is_empty() || page.last_id == request.after_id {
            // A server that says "more" without moving on would loop forever.
            return Err(CliError::BadResponse("a new last_id with has_more"));
        }
        request.after_id = page.last_id;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn update(args: &[&str]) -> Result<pb::UpdateKeyRequest, String> {
        let line = ["keyward", "keys", "update", "key_x"].iter().chain(args);
        let cli = Cli::try_parse_from(line).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Keys(keys) => match keys.command {
                KeysCommand::Update(args) => update_request(args).map_err(|e| format!("{e:?}")),
                other => panic!("not keys update: {other:?}"),
            },
            other => panic!("not keys update: {other:?}"),
        }
    }

    fn mask(request: &pb::UpdateKeyRequest) -> Vec<&str> {
        let mask = request.update_mask.as_ref().expect("a mask");
        mask.paths.iter().map(String::as_str).collect()
    }

    #[test]
    fn the_mask_names_the_flags_given() {
        let request = update(&["--name", "n", "--scope", "a:b", "--scope", "c"]).unwrap();
        assert_eq!(mask(&request), ["name", "scopes"]);
        assert_eq!(request.scopes, ["a:b", "c"]);

        let request = update(&["--description", ""]).unwrap();
        assert_eq!(mask(&request), ["description"]);

        let request = update(&["--clear-expiry", "--clear-scopes", "--clear-metadata"]).unwrap();
        assert_eq!(mask(&request), ["scopes", "metadata", "expires_at"]);
        assert!(request.expires_at.is_none() && request.scopes.is_empty());

        let request = update(&["--expires-in", "1d", "--status", "inactive"]).unwrap();
        assert_eq!(mask(&request), ["expires_at", "status"]);
        assert!(request.expires_at.is_some());
        assert_eq!(request.status(), pb::KeyStatus::Inactive);

        let request = update(&["--metadata", "team=a=b"]).unwrap();
        assert_eq!(request.metadata["team"], "a=b");

        let request = update(&[
            "--rate-limit",
            "requests=100/1s",
            "--rate-limit",
            "bulk=1000/10s:5",
            "--credits",
            "500",
            "--credits-refill",
            "1000/monthly",
        ])
        .unwrap();
        assert_eq!(mask(&request), ["rate_limits", "credits"]);
        let limits: Vec<_> = request
            .rate_limits
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.limit,
                    l.duration.map(|d| d.seconds),
                    l.cost,
                )
            })
            .collect();
        assert_eq!(
            limits,
            [("requests", 100, Some(1), 0), ("bulk", 1000, Some(10), 5)]
        );
        let credits = request.credits.expect("credits");
        assert_eq!((credits.remaining, credits.refill_amount), (500, 1000));
        assert_eq!(credits.refill_interval(), pb::RefillInterval::Monthly);

        let request = update(&["--clear-rate-limits", "--clear-credits"]).unwrap();
        assert_eq!(mask(&request), ["rate_limits", "credits"]);
        assert!(request.rate_limits.is_empty() && request.credits.is_none());

        // The server checks the values: a negative limit is sent as it is.
        let request = update(&["--rate-limit", "r=-5/1m", "--credits=-1"]).unwrap();
        assert_eq!(request.rate_limits[0].limit, -5);
        assert_eq!(request.rate_limits[0].duration.map(|d| d.seconds), Some(60));
        assert_eq!(request.credits.map(|c| c.remaining), Some(-1));
    }

    #[test]
    fn contradictions_and_empty_updates_are_usage_errors() {
        for bad in [
            &[][..],
            &["--clear-expiry", "--expires-in", "1d"],
            &["--expires-at", "2030-01-01T00:00:00Z", "--expires-in", "1d"],
            &["--scope", "a", "--clear-scopes"],
            &["--metadata", "novalue"],
            &["--expires-at", "tomorrow"],
            &["--status", "revoked"],
            &["--rate-limit", "requests"],
            &["--rate-limit", "requests=100"],
            &["--rate-limit", "requests=many/1s"],
            &["--rate-limit", "requests=100/1w"],
            &["--rate-limit", "requests=100/1s:x"],
            &["--rate-limit", "r=1/1s", "--clear-rate-limits"],
            &["--credits", "5", "--clear-credits"],
            &["--credits-refill", "100/daily"],
            &["--credits", "5", "--credits-refill", "100/weekly"],
            &["--credits", "5", "--credits-refill", "100"],
        ] {
            assert!(update(bad).is_err(), "{bad:?}");
        }
        let twice = update(&["--metadata", "a=1", "--metadata", "a=2"]).unwrap_err();
        assert!(twice.contains("more than once"), "{twice}");
    }
}
