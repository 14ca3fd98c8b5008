//! What the admin commands print: a table for people or one JSON document
//! for scripts. The one place wire types become JSON (prost types derive no
//! serde): field names are the proto's, enums are their short lowercase
//! names (`active`, `live`, `api_key`), timestamps RFC 3339 in UTC, unset
//! values `null`.

use std::fmt::Write as _;

use chrono::SecondsFormat;
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use crate::convert::from_timestamp;
use crate::pb;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (lists) or `field  value` lines (one key).
    Table,
    /// One JSON document on stdout.
    Json,
}

/// The answer of a command, ready to print. Deliberately no `Debug`: it may
/// hold a raw key.
pub(crate) enum Report {
    /// One key (get, update, archive, reactivate, revoke).
    Key(pb::ApiKey),
    /// A new key and its raw key (create).
    Created {
        /// The key.
        key: pb::ApiKey,
        /// The raw key, shown this once.
        secret: String,
    },
    /// A rotation: the new key, its raw key, the old key.
    Rotated {
        /// The new key.
        key: pb::ApiKey,
        /// The new raw key, shown this once.
        secret: String,
        /// The old key, expiring at the end of the grace period (boxed:
        /// the variants stay about one key in size).
        previous: Box<pb::ApiKey>,
    },
    /// A deleted key's id.
    Deleted {
        /// The id.
        id: String,
    },
    /// A list of keys (one page, or every page with `--all`).
    Keys {
        /// The keys, newest first.
        keys: Vec<pb::ApiKey>,
        /// The first key's id.
        first_id: String,
        /// The last key's id: `--after` of the next page.
        last_id: String,
        /// Whether more keys follow.
        has_more: bool,
    },
    /// A key's usage per minute and outcome.
    Usage(pb::GetKeyUsageResponse),
    /// A list of audit events.
    Events {
        /// The events, newest first.
        events: Vec<pb::KeyEvent>,
        /// The first event's seq.
        first_seq: i64,
        /// The last event's seq: `--after` of the next page.
        last_seq: i64,
        /// Whether more events follow.
        has_more: bool,
    },
}

/// The banner above a raw key in a table: it must not be missed.
pub const RAW_KEY_BANNER: &str =
    "RAW KEY (shown only this once; keyward keeps only its hash, so store it now):";

impl Report {
    /// The text to print on stdout, ending in a newline.
    pub(crate) fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Json => {
                let mut text = serde_json::to_string_pretty(&self.json())
                    .expect("a serde_json::Value always serializes");
                text.push('\n');
                text
            }
            OutputFormat::Table => self.table(),
        }
    }

    /// The JSON document: the RPC's response, field for field.
    fn json(&self) -> Value {
        match self {
            Self::Key(key) => json!({ "api_key": api_key_json(key) }),
            Self::Created { key, secret } => {
                json!({ "api_key": api_key_json(key), "secret": secret })
            }
            Self::Rotated {
                key,
                secret,
                previous,
            } => json!({
                "api_key": api_key_json(key),
                "secret": secret,
                "previous_key": api_key_json(previous),
            }),
            Self::Deleted { id } => json!({ "id": id, "deleted": true }),
            Self::Usage(usage) => {
                let counts = |counts: &[pb::OutcomeCount]| -> Value {
                    counts
                        .iter()
                        .map(|count| json!({ "code": outcome(count.code), "count": count.count }))
                        .collect()
                };
                json!({
                    "id": usage.id,
                    "from": time_json(usage.from.as_ref()),
                    "to": time_json(usage.to.as_ref()),
                    "points": usage.points.iter().map(|point| json!({
                        "minute": time_json(point.minute.as_ref()),
                        "counts": counts(&point.counts),
                    })).collect::<Vec<_>>(),
                    "totals": counts(&usage.totals),
                    "total": usage.total,
                })
            }
            Self::Keys {
                keys,
                first_id,
                last_id,
                has_more,
            } => json!({
                "keys": keys.iter().map(api_key_json).collect::<Vec<_>>(),
                "first_id": first_id,
                "last_id": last_id,
                "has_more": has_more,
            }),
            Self::Events {
                events,
                first_seq,
                last_seq,
                has_more,
            } => json!({
                "events": events.iter().map(event_json).collect::<Vec<_>>(),
                "first_seq": first_seq,
                "last_seq": last_seq,
                "has_more": has_more,
            }),
        }
    }

    fn table(&self) -> String {
        match self {
            Self::Key(key) => key_fields(key),
            Self::Created { key, secret } => {
                format!("{}\n{}", raw_key_block(secret), key_fields(key))
            }
            Self::Rotated {
                key,
                secret,
                previous,
            } => format!(
                "{}\n{}\nprevious key {} now expires at {}\n",
                raw_key_block(secret),
                key_fields(key),
                printable(&previous.id),
                time(previous.expires_at.as_ref()),
            ),
            Self::Deleted { id } => format!("deleted {}\n", printable(id)),
            Self::Usage(usage) => {
                let summary = |counts: &[pb::OutcomeCount]| {
                    counts
                        .iter()
                        .map(|count| format!("{}={}", outcome(count.code), count.count))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let mut text = if usage.points.is_empty() {
                    "no validations in this range\n".to_owned()
                } else {
                    table(
                        &["MINUTE", "COUNTS"],
                        usage
                            .points
                            .iter()
                            .map(|point| vec![time(point.minute.as_ref()), summary(&point.counts)]),
                    )
                };
                let _ = writeln!(
                    text,
                    "total {} from {} to {}: {}",
                    usage.total,
                    time(usage.from.as_ref()),
                    time(usage.to.as_ref()),
                    summary(&usage.totals)
                );
                text
            }
            Self::Keys {
                keys,
                last_id,
                has_more,
                ..
            } => {
                if keys.is_empty() {
                    return "no keys\n".into();
                }
                let mut text = table(
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "ENV",
                        "KEY",
                        "SCOPES",
                        "CREATED",
                        "EXPIRES",
                        "LAST USED",
                    ],
                    keys.iter().map(|key| {
                        vec![
                            printable(&key.id),
                            shortened(&key.name, 32),
                            status(key.status),
                            environment(key),
                            printable(&key.partial_key_hint),
                            shortened(&key.scopes.join(","), 40),
                            time(key.created_at.as_ref()),
                            time(key.expires_at.as_ref()),
                            time(key.last_used_at.as_ref()),
                        ]
                    }),
                );
                if *has_more {
                    let _ = writeln!(
                        text,
                        "more keys follow: --all lists them all, --after {} the next page",
                        printable(last_id)
                    );
                }
                text
            }
            Self::Events {
                events,
                last_seq,
                has_more,
                ..
            } => {
                if events.is_empty() {
                    return "no events\n".into();
                }
                let mut text = table(
                    &["SEQ", "AT", "TYPE", "KEY", "ACTOR", "CHANGED"],
                    events.iter().map(|event| {
                        let mut changed: Vec<&str> =
                            event.changes.keys().map(String::as_str).collect();
                        changed.sort_unstable();
                        vec![
                            event.seq.to_string(),
                            time(event.at.as_ref()),
                            event_type(event.r#type),
                            printable(&event.key_id),
                            actor(event.actor.as_ref()),
                            shortened(&changed.join(","), 60),
                        ]
                    }),
                );
                if *has_more {
                    let _ = writeln!(
                        text,
                        "more events follow: --all lists them all, --after {last_seq} the next page"
                    );
                }
                text
            }
        }
    }
}

fn raw_key_block(secret: &str) -> String {
    format!("{RAW_KEY_BANNER}\n\n    {}\n", printable(secret))
}

/// One key as `field  value` lines.
fn key_fields(key: &pb::ApiKey) -> String {
    let mut metadata: Vec<String> = key
        .metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    metadata.sort_unstable();
    let rows: Vec<(&str, String)> = vec![
        ("id", printable(&key.id)),
        ("name", printable(&key.name)),
        ("status", status(key.status)),
        ("kind", kind(key.kind)),
        ("environment", environment(key)),
        ("key", printable(&key.partial_key_hint)),
        ("organization", printable(&key.organization_id)),
        ("workspace", or_dash(&key.workspace_id)),
        ("description", or_dash(&key.description)),
        ("scopes", or_dash(&key.scopes.join(", "))),
        ("allowed cidrs", or_dash(&key.allowed_cidrs.join(", "))),
        ("rate limits", or_dash(&rate_limits(&key.rate_limits))),
        ("credits", credits(key.credits.as_ref())),
        ("metadata", or_dash(&metadata.join(", "))),
        ("user", or_dash(&key.user_id)),
        ("service account", or_dash(&key.service_account_id)),
        ("created", time(key.created_at.as_ref())),
        ("created by", actor(key.created_by.as_ref())),
        ("updated", time(key.updated_at.as_ref())),
        ("expires", time(key.expires_at.as_ref())),
        ("last used", time(key.last_used_at.as_ref())),
        ("last used ip", or_dash(&key.last_used_ip)),
        ("last used agent", or_dash(&key.last_used_user_agent)),
        ("archived", time(key.archived_at.as_ref())),
        ("revoked", time(key.revoked_at.as_ref())),
        ("rotated from", or_dash(&key.rotated_from_id)),
    ];
    let width = rows.iter().map(|(field, _)| field.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (field, value) in rows {
        let _ = writeln!(text, "{field:<width$}  {value}");
    }
    text
}

/// Rate limits as `--rate-limit` takes them: `requests=100/1s, bulk=1000/10s:5`.
fn rate_limits(limits: &[pb::RateLimit]) -> String {
    limits
        .iter()
        .map(|limit| {
            let mut text = format!(
                "{}={}/{}",
                printable(&limit.name),
                limit.limit,
                span(limit.duration.as_ref())
            );
            if limit.cost > 1 {
                let _ = write!(text, ":{}", limit.cost);
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Credits for people: `950 left, refilled to 1000 daily (next 2026-12-03T00:00:00Z)`.
fn credits(credits: Option<&pb::Credits>) -> String {
    let Some(credits) = credits else {
        return "-".into();
    };
    let mut text = format!("{} left", credits.remaining);
    if credits.refill_amount > 0 {
        let _ = write!(
            text,
            ", refilled to {} {} (next {})",
            credits.refill_amount,
            refill_interval(credits.refill_interval),
            time(credits.refills_at.as_ref())
        );
    }
    text
}

/// A duration as the shortest span `--rate-limit` takes (`90s`, `15m`,
/// `12h`, `30d`); `-` if unset.
fn span(duration: Option<&prost_types::Duration>) -> String {
    let Some(duration) = duration else {
        return "-".into();
    };
    let seconds = duration.seconds;
    match [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| seconds > 0 && seconds % unit == 0)
    {
        Some((unit, suffix)) => format!("{}{suffix}", seconds / unit),
        None => format!("{seconds}s"),
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `text` safe for a terminal: control characters (a description may hold
/// newlines; nothing may move the cursor or change colours) are escaped.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// [`printable`], cut to `max` characters with `…`.
fn shortened(text: &str, max: usize) -> String {
    let text = printable(text);
    if text.chars().count() <= max {
        return or_dash(&text);
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        printable(text)
    }
}

/// A validation code's short lowercase name (`valid`, `revoked`, ...).
fn outcome(code: i32) -> String {
    pb::ValidationCode::try_from(code).map_or_else(
        |_| code.to_string(),
        |code| {
            code.as_str_name()
                .trim_start_matches("VALIDATION_CODE_")
                .to_lowercase()
        },
    )
}

fn time(at: Option<&prost_types::Timestamp>) -> String {
    time_json(at)
        .as_str()
        .map_or_else(|| "-".into(), str::to_owned)
}

/// A timestamp as RFC 3339 (UTC, `Z`, fractional seconds only when present).
fn time_json(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(from_timestamp).map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    })
}

/// An enum value's short name: `KEY_STATUS_ACTIVE` → `active`; an unknown
/// number (a newer server) → `unknown(7)`.
fn short(name: Option<&str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase(),
        None => format!("unknown({raw})"),
    }
}

fn status(raw: i32) -> String {
    let name = pb::KeyStatus::try_from(raw).ok().map(|s| s.as_str_name());
    short(name, "KEY_STATUS_", raw)
}

fn kind(raw: i32) -> String {
    let name = pb::KeyKind::try_from(raw).ok().map(|k| k.as_str_name());
    short(name, "KEY_KIND_", raw)
}

fn environment(key: &pb::ApiKey) -> String {
    let name = pb::Environment::try_from(key.environment)
        .ok()
        .map(|e| e.as_str_name());
    short(name, "ENVIRONMENT_", key.environment)
}

fn event_type(raw: i32) -> String {
    let name = pb::KeyEventType::try_from(raw)
        .ok()
        .map(|t| t.as_str_name());
    short(name, "KEY_EVENT_TYPE_", raw)
}

fn refill_interval(raw: i32) -> String {
    let name = pb::RefillInterval::try_from(raw)
        .ok()
        .map(|i| i.as_str_name());
    short(name, "REFILL_INTERVAL_", raw)
}

fn actor_type(raw: i32) -> String {
    let name = pb::ActorType::try_from(raw).ok().map(|t| t.as_str_name());
    short(name, "ACTOR_TYPE_", raw)
}

fn actor(actor: Option<&pb::Actor>) -> String {
    actor.map_or_else(
        || "-".into(),
        |actor| format!("{}:{}", actor_type(actor.r#type), printable(&actor.id)),
    )
}

fn actor_json(actor: Option<&pb::Actor>) -> Value {
    actor.map_or(
        Value::Null,
        |actor| json!({ "type": actor_type(actor.r#type), "id": actor.id }),
    )
}

fn string_map(map: &std::collections::HashMap<String, String>) -> Value {
    // Sorted, so the same key prints the same document.
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable();
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A key as JSON: every field of `keyward.v1.ApiKey`.
pub(crate) fn api_key_json(key: &pb::ApiKey) -> Value {
    json!({
        "id": key.id,
        "organization_id": key.organization_id,
        "workspace_id": key.workspace_id,
        "kind": kind(key.kind),
        "environment": environment(key),
        "name": key.name,
        "description": key.description,
        "scopes": key.scopes,
        "allowed_cidrs": key.allowed_cidrs,
        "rate_limits": key.rate_limits.iter().map(rate_limit_json).collect::<Vec<_>>(),
        "credits": key.credits.as_ref().map_or(Value::Null, credits_json),
        "metadata": string_map(&key.metadata),
        "prefix": key.prefix,
        "partial_key_hint": key.partial_key_hint,
        "status": status(key.status),
        "created_at": time_json(key.created_at.as_ref()),
        "updated_at": time_json(key.updated_at.as_ref()),
        "created_by": actor_json(key.created_by.as_ref()),
        "user_id": key.user_id,
        "service_account_id": key.service_account_id,
        "expires_at": time_json(key.expires_at.as_ref()),
        "last_used_at": time_json(key.last_used_at.as_ref()),
        "last_used_ip": key.last_used_ip,
        "last_used_user_agent": key.last_used_user_agent,
        "archived_at": time_json(key.archived_at.as_ref()),
        "revoked_at": time_json(key.revoked_at.as_ref()),
        "rotated_from_id": key.rotated_from_id,
    })
}

/// A rate limit as JSON: its proto fields, `duration` as proto JSON writes
/// it (`"10s"`).
fn rate_limit_json(limit: &pb::RateLimit) -> Value {
    json!({
        "name": limit.name,
        "limit": limit.limit,
        "duration": limit.duration.map(|d| format!("{}s", d.seconds)),
        "cost": limit.cost,
    })
}

/// Credits as JSON: their proto fields; without a refill, `refill_amount` 0
/// and `refill_interval` and `refills_at` null.
fn credits_json(credits: &pb::Credits) -> Value {
    let refills = credits.refill_amount > 0;
    json!({
        "remaining": credits.remaining,
        "refill_amount": credits.refill_amount,
        "refill_interval": if refills { Value::String(refill_interval(credits.refill_interval)) } else { Value::Null },
        "refills_at": time_json(credits.refills_at.as_ref()),
    })
}

/// An audit event as JSON. `changes` values are JSON text on the wire; here
/// they are the JSON values themselves (text that does not parse stays a
/// string).
pub(crate) fn event_json(event: &pb::KeyEvent) -> Value {
    let mut entries: Vec<_> = event.changes.iter().collect();
    entries.sort_unstable();
    let changes: Map<String, Value> = entries
        .into_iter()
        .map(|(field, value)| {
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
            (field.clone(), value)
        })
        .collect();
    json!({
        "seq": event.seq,
        "organization_id": event.organization_id,
        "key_id": event.key_id,
        "type": event_type(event.r#type),
        "actor": actor_json(event.actor.as_ref()),
        "at": time_json(event.at.as_ref()),
        "changes": changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> pb::ApiKey {
        pb::ApiKey {
            id: "key_1".into(),
            name: "orders\u{1b}[31m".into(),
            status: pb::KeyStatus::Active.into(),
            environment: pb::Environment::Test.into(),
            kind: 42,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_names_enums_and_times_plainly() {
        let value = api_key_json(&key());
        assert_eq!(value["status"], "active");
        assert_eq!(value["environment"], "test");
        assert_eq!(value["kind"], "unknown(42)");
        assert_eq!(value["created_at"], "2027-01-15T08:00:00Z");
        assert_eq!(value["expires_at"], Value::Null);
        assert_eq!(value["created_by"], Value::Null);
        assert_eq!(value["rate_limits"], json!([]));
        assert_eq!(value["credits"], Value::Null);
    }

    #[test]
    fn rate_limits_and_credits_show_as_the_flags_take_them() {
        let metered = pb::ApiKey {
            rate_limits: vec![
                pb::RateLimit {
                    name: "bulk".into(),
                    limit: 1000,
                    duration: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                    cost: 5,
                },
                pb::RateLimit {
                    name: "hourly".into(),
                    limit: 100,
                    duration: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    cost: 1,
                },
            ],
            credits: Some(pb::Credits {
                remaining: 950,
                refill_amount: 1000,
                refill_interval: pb::RefillInterval::Daily.into(),
                refills_at: Some(prost_types::Timestamp {
                    seconds: 1_800_057_600,
                    nanos: 0,
                }),
            }),
            ..key()
        };
        let text = Report::Key(metered.clone()).render(OutputFormat::Table);
        assert!(text.contains("bulk=1000/10s:5, hourly=100/1h"), "{text}");
        assert!(
            text.contains("950 left, refilled to 1000 daily (next 2027-01-16T00:00:00Z)"),
            "{text}"
        );
        let value = api_key_json(&metered);
        assert_eq!(
            value["rate_limits"][0],
            json!({"name": "bulk", "limit": 1000, "duration": "10s", "cost": 5})
        );
        assert_eq!(
            value["credits"],
            json!({"remaining": 950, "refill_amount": 1000, "refill_interval": "daily", "refills_at": "2027-01-16T00:00:00Z"})
        );
        let once = pb::ApiKey {
            credits: Some(pb::Credits {
                remaining: 3,
                ..Default::default()
            }),
            ..key()
        };
        assert!(
            Report::Key(once.clone())
                .render(OutputFormat::Table)
                .contains("3 left\n")
        );
        assert_eq!(
            api_key_json(&once)["credits"]["refill_interval"],
            Value::Null
        );
    }

    #[test]
    fn tables_escape_control_characters_and_align() {
        let text = Report::Keys {
            keys: vec![key()],
            first_id: "key_1".into(),
            last_id: "key_1".into(),
            has_more: false,
        }
        .render(OutputFormat::Table);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("orders\\u{1b}[31m"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("NAME"), lines[1].find("orders"));
    }

    #[test]
    fn event_changes_are_json_values() {
        let event = pb::KeyEvent {
            changes: [
                ("scopes".to_owned(), r#"["a"]"#.to_owned()),
                ("odd".to_owned(), "not json".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let value = event_json(&event);
        assert_eq!(value["changes"]["scopes"], json!(["a"]));
        assert_eq!(value["changes"]["odd"], "not json");
    }
}
