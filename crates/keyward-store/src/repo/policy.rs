//! The `api_keys.policy` column: a key's [`Policy`] as versioned JSON text,
//! and NULL for a key without restrictions:
//!
//! ```text
//! {"v":1,
//!  "allowed_cidrs":["10.0.0.0/8"],
//!  "rate_limits":[{"name":"requests","limit":100,"window_s":1,"cost":1}],
//!  "credits":{"remaining":1000,"refill_amount":1000,"refill_interval":"daily","set_at":1796000000000000}}
//! ```
//!
//! Each field is present only when it restricts something; `refill_amount`
//! and `refill_interval` only with a refill. Reading re-parses every value
//! through keyward-core's parsers and fails closed: an unknown version or an
//! unknown field (written by a newer keyward), or a value the parsers
//! refuse, makes the row unreadable (`Corrupt`), so its key answers
//! UNAVAILABLE rather than validating without a restriction it carries.
//!
//! What was spent of the credits is not here: it changes with use, so it
//! lives in columns of its own (`credits_set_at`, `credits_period`,
//! `credits_used`), which usage flushes write without touching the policy.

use std::sync::Arc;
use std::time::Duration;

use keyward_core::{AllowedCidrs, Credits, Policy, RateLimit, RateLimits, RefillInterval};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// The format written today.
const VERSION: u64 = 1;

/// The column's value for `policy`: NULL when it restricts nothing.
pub(super) fn to_column(policy: &Policy) -> Option<String> {
    if policy.is_unrestricted() {
        return None;
    }
    let mut stored = Map::new();
    stored.insert("v".to_owned(), json!(VERSION));
    if !policy.allowed_cidrs.is_empty() {
        stored.insert(
            "allowed_cidrs".to_owned(),
            cidrs_value(&policy.allowed_cidrs),
        );
    }
    if !policy.rate_limits.is_empty() {
        stored.insert(
            "rate_limits".to_owned(),
            rate_limits_value(&policy.rate_limits),
        );
    }
    if policy.credits.is_some() {
        stored.insert("credits".to_owned(), credits_value(policy.credits.as_ref()));
    }
    Some(Value::Object(stored).to_string())
}

/// The policy of key `id` from its column.
pub(super) fn from_column(id: &str, column: Option<&str>) -> Result<Option<Arc<Policy>>, Error> {
    let Some(text) = column else {
        return Ok(None);
    };
    let corrupt = |what: String| Error::corrupt(format!("api key {id}: policy: {what}"));
    let Value::Object(stored) =
        serde_json::from_str::<Value>(text).map_err(|e| corrupt(e.to_string()))?
    else {
        return Err(corrupt("not a JSON object".to_owned()));
    };
    let mut policy = Policy::default();
    for (field, value) in &stored {
        match field.as_str() {
            "v" if value.as_u64() == Some(VERSION) => {}
            "v" => return Err(corrupt(format!("unknown version {value}"))),
            "allowed_cidrs" => {
                let raw: Vec<String> = serde_json::from_value(value.clone())
                    .map_err(|e| corrupt(format!("allowed_cidrs: {e}")))?;
                policy.allowed_cidrs = AllowedCidrs::parse(&raw)
                    .map_err(|(_, e)| corrupt(format!("allowed_cidrs: {e}")))?;
            }
            "rate_limits" => {
                policy.rate_limits =
                    read_rate_limits(value).map_err(|e| corrupt(format!("rate_limits: {e}")))?;
            }
            "credits" => {
                policy.credits =
                    Some(read_credits(value).map_err(|e| corrupt(format!("credits: {e}")))?);
            }
            other => return Err(corrupt(format!("unknown field {other:?}"))),
        }
    }
    if !stored.contains_key("v") {
        return Err(corrupt("no version".to_owned()));
    }
    Ok(policy.shared())
}

/// An allowlist as a JSON value in event changes: its canonical ranges.
pub(super) fn cidrs_value(cidrs: &AllowedCidrs) -> Value {
    cidrs.to_strings().into()
}

/// Rate limits as a JSON value, in the column and in event changes: sorted
/// by name, each `{"name", "limit", "window_s", "cost"}`.
pub(super) fn rate_limits_value(limits: &RateLimits) -> Value {
    limits
        .as_slice()
        .iter()
        .map(|limit| {
            json!({
                "name": limit.name,
                "limit": limit.limit,
                "window_s": limit.window.as_secs(),
                "cost": limit.cost,
            })
        })
        .collect()
}

/// Credits as a JSON value, in the column and in event changes:
/// `{"remaining", "refill_amount"?, "refill_interval"?, "set_at"}`, or null
/// for none (unlimited).
pub(super) fn credits_value(credits: Option<&Credits>) -> Value {
    let Some(credits) = credits else {
        return Value::Null;
    };
    let mut value = Map::new();
    value.insert("remaining".to_owned(), json!(credits.remaining));
    if let Some(refill) = credits.refill {
        value.insert("refill_amount".to_owned(), json!(refill.amount));
        value.insert(
            "refill_interval".to_owned(),
            json!(refill.interval.as_str()),
        );
    }
    value.insert("set_at".to_owned(), json!(credits.set_at));
    Value::Object(value)
}

/// The fields of a stored JSON object, refusing any not in `known`.
fn object<'a>(value: &'a Value, known: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let Value::Object(fields) = value else {
        return Err("not a JSON object".to_owned());
    };
    match fields.keys().find(|field| !known.contains(&field.as_str())) {
        Some(unknown) => Err(format!("unknown field {unknown:?}")),
        None => Ok(fields),
    }
}

/// A stored integer field; `None` when absent.
fn integer(fields: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    fields
        .get(name)
        .map(|value| {
            value
                .as_i64()
                .ok_or_else(|| format!("{name} is not an integer"))
        })
        .transpose()
}

fn read_rate_limits(value: &Value) -> Result<RateLimits, String> {
    let Value::Array(stored) = value else {
        return Err("not a JSON array".to_owned());
    };
    let limits = stored
        .iter()
        .map(|stored| {
            let fields = object(stored, &["name", "limit", "window_s", "cost"])?;
            let name = fields
                .get("name")
                .and_then(Value::as_str)
                .ok_or("no name")?;
            let limit = integer(fields, "limit")?.ok_or("no limit")?;
            let window = integer(fields, "window_s")?
                .ok_or("no window_s")
                .map(|s| u64::try_from(s).ok().map(Duration::from_secs))?;
            let cost = integer(fields, "cost")?.ok_or("no cost")?;
            RateLimit::parse(name, limit, window, cost)
                .map_err(|(field, e)| format!("{}: {}", field.as_str(), e.description()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    RateLimits::new(limits).map_err(|(_, e)| e.description().to_owned())
}

fn read_credits(value: &Value) -> Result<Credits, String> {
    let fields = object(
        value,
        &["remaining", "refill_amount", "refill_interval", "set_at"],
    )?;
    let remaining = integer(fields, "remaining")?.ok_or("no remaining")?;
    let set_at = integer(fields, "set_at")?.ok_or("no set_at")?;
    let interval = match fields.get("refill_interval") {
        None => None,
        Some(raw) => Some(
            raw.as_str()
                .and_then(RefillInterval::from_stored)
                .ok_or_else(|| format!("unknown refill_interval {raw}"))?,
        ),
    };
    let amount = integer(fields, "refill_amount")?.unwrap_or(0);
    Credits::parse(remaining, amount, interval, set_at).map_err(|errors| {
        errors
            .iter()
            .map(|(field, e)| format!("{}: {}", field.as_str(), e.description()))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use keyward_core::Refill;

    use super::*;

    #[test]
    fn policies_round_trip_and_unknown_ones_are_refused() {
        assert_eq!(to_column(&Policy::default()), None);
        assert_eq!(from_column("k", None).expect("no policy"), None);
        let policy = Policy {
            allowed_cidrs: AllowedCidrs::parse(&["2001:db8::/32", "10.0.0.0/8"]).expect("valid"),
            ..Policy::default()
        };
        let column = to_column(&policy).expect("a restriction");
        assert_eq!(
            column,
            r#"{"allowed_cidrs":["10.0.0.0/8","2001:db8::/32"],"v":1}"#
        );
        let read = from_column("k", Some(&column)).expect("readable");
        assert_eq!(read.as_deref(), Some(&policy));
        for bad in [
            r#"{"v":2,"allowed_cidrs":["10.0.0.0/8"]}"#,
            r#"{"allowed_cidrs":["10.0.0.0/8"]}"#,
            r#"{"v":1,"allowed_cidrs":["nope"]}"#,
            r#"{"v":1,"quota":[]}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert!(from_column("k", Some(bad)).is_err(), "{bad}");
        }
    }

    fn limit(name: &str, limit: i64, secs: u64, cost: i64) -> RateLimit {
        RateLimit::parse(name, limit, Some(Duration::from_secs(secs)), cost).expect("valid")
    }

    #[test]
    fn rate_limits_and_credits_round_trip_through_the_parsers() {
        let policy = Policy {
            rate_limits: RateLimits::new(vec![
                limit("requests", 100, 1, 0),
                limit("bulk", 1000, 10, 5),
            ])
            .expect("valid"),
            credits: Some(Credits {
                remaining: 250,
                refill: Some(Refill {
                    amount: 1000,
                    interval: RefillInterval::Monthly,
                }),
                set_at: 1_796_000_000_000_000,
            }),
            ..Policy::default()
        };
        let column = to_column(&policy).expect("a restriction");
        assert_eq!(
            column,
            concat!(
                r#"{"credits":{"refill_amount":1000,"refill_interval":"monthly","remaining":250,"set_at":1796000000000000},"#,
                r#""rate_limits":[{"cost":5,"limit":1000,"name":"bulk","window_s":10},"#,
                r#"{"cost":1,"limit":100,"name":"requests","window_s":1}],"v":1}"#
            )
        );
        let read = from_column("k", Some(&column)).expect("readable");
        assert_eq!(read.as_deref(), Some(&policy));

        // Credits alone, without a refill (zero left is a restriction too).
        let spent = Policy {
            credits: Some(Credits {
                remaining: 0,
                refill: None,
                set_at: 1,
            }),
            ..Policy::default()
        };
        let column = to_column(&spent).expect("a restriction");
        assert_eq!(column, r#"{"credits":{"remaining":0,"set_at":1},"v":1}"#);
        let read = from_column("k", Some(&column)).expect("readable");
        assert_eq!(read.as_deref(), Some(&spent));
    }

    #[test]
    fn stored_rate_limits_and_credits_the_parsers_refuse_are_corrupt() {
        for bad in [
            r#"{"v":1,"rate_limits":[{"name":"r","limit":0,"window_s":1,"cost":1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":0,"cost":1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":-1,"cost":1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"a b","limit":1,"window_s":1,"cost":1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":1,"cost":-1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":1}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":1,"cost":1,"burst":2}]}"#,
            r#"{"v":1,"rate_limits":[{"name":"r","limit":1,"window_s":1,"cost":1},{"name":"r","limit":2,"window_s":1,"cost":1}]}"#,
            r#"{"v":1,"rate_limits":{"name":"r"}}"#,
            r#"{"v":1,"credits":{"remaining":-1,"set_at":1}}"#,
            r#"{"v":1,"credits":{"remaining":1}}"#,
            r#"{"v":1,"credits":{"remaining":1,"set_at":1,"refill_amount":5}}"#,
            r#"{"v":1,"credits":{"remaining":1,"set_at":1,"refill_amount":5,"refill_interval":"weekly"}}"#,
            r#"{"v":1,"credits":{"remaining":1,"set_at":1,"carry_over":true}}"#,
            r#"{"v":1,"credits":{"remaining":"1","set_at":1}}"#,
            r#"{"v":1,"credits":null}"#,
        ] {
            assert!(from_column("k", Some(bad)).is_err(), "{bad}");
        }
    }
}
