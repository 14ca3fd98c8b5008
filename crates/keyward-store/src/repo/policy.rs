//! The `api_keys.policy` column: a key's [`Policy`] as versioned JSON text,
//! `{"v":1,"allowed_cidrs":["10.0.0.0/8"]}`, and NULL for a key without
//! restrictions.
//!
//! Reading fails closed: an unknown version or an unknown field (written by
//! a newer keyward) makes the row unreadable (`Corrupt`), so its key answers
//! UNAVAILABLE rather than validating without a restriction it carries.

use std::sync::Arc;

use keyward_core::{AllowedCidrs, Policy};
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

#[cfg(test)]
mod tests {
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
            r#"{"v":1,"rate_limits":[]}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert!(from_column("k", Some(bad)).is_err(), "{bad}");
        }
    }
}
