//! The one place where errors become `tonic::Status`.

use keyward_core::FieldError;
use keyward_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Errors of the API handlers.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more fields are bad; nothing was written.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// The id names no key of the caller's organization.
    #[error("key not found")]
    NotFound,
    /// The change conflicts with the key's lifecycle.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database cannot be reached.
    #[error("database unavailable")]
    Unavailable,
    /// Anything unexpected: logged in full, answered as a plain INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::NotFound,
            StoreError::FailedPrecondition(reason) => Self::FailedPrecondition(reason),
            too_many @ StoreError::TooManyKeys { .. } => {
                Self::FailedPrecondition(too_many.to_string())
            }
            StoreError::Unavailable(_) => Self::Unavailable,
            other @ (StoreError::HasherMismatch
            | StoreError::Database(_)
            | StoreError::Corrupt(_)) => Self::Internal(other.to_string()),
        }
    }
}

/// Most field violations one error carries; the rest are counted in one
/// more entry, so a request with a million bad elements gets a small answer.
pub const MAX_VIOLATIONS: usize = 16;
/// Longest field name, description or message sent back (bytes): a field
/// name or description may quote what the client sent.
const MAX_TEXT_BYTES: usize = 128;
/// Longest status message (bytes).
const MAX_MESSAGE_BYTES: usize = 512;

/// The answer to a request beyond the in-flight cap: RESOURCE_EXHAUSTED,
/// trailers only.
pub fn overloaded<B: Default>() -> http::Response<B> {
    Status::resource_exhausted("keyward is at its limit of requests in flight; retry shortly")
        .into_http()
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let violations = bounded(violations);
                let mut message = String::from("invalid");
                for (i, violation) in violations.iter().enumerate() {
                    let separator = if i == 0 { " " } else { ", " };
                    if message.len() + separator.len() + violation.field.len() > MAX_MESSAGE_BYTES {
                        message.push_str(", …");
                        break;
                    }
                    message.push_str(separator);
                    message.push_str(&violation.field);
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotFound => Status::not_found("key not found"),
            ApiError::FailedPrecondition(reason) => {
                Status::failed_precondition(truncated(reason, MAX_MESSAGE_BYTES))
            }
            ApiError::Unavailable => Status::unavailable("database unavailable"),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// At most [`MAX_VIOLATIONS`] violations with short texts, then one entry
/// counting the rest: the status and its details stay within a few KB.
fn bounded(violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    let total = violations.len();
    let mut kept: Vec<FieldViolation> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|violation| {
            FieldViolation::new(
                truncated(violation.field, MAX_TEXT_BYTES),
                truncated(violation.description, MAX_TEXT_BYTES),
            )
        })
        .collect();
    if total > MAX_VIOLATIONS {
        kept.push(FieldViolation::new(
            "…",
            format!("and {} more violations", total - MAX_VIOLATIONS),
        ));
    }
    kept
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `…`.
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Collects field violations while a request is parsed, so one response names
/// every bad field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Whether no field is bad so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records that `field` is bad.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Whether a repeated `field` of `len` elements is within `max`; if not,
    /// records ONE violation for the whole field. Call it before parsing the
    /// elements, and skip them when it is `false`: an over-long list costs
    /// one comparison, not one violation per element.
    pub fn check_count(&mut self, field: &str, len: usize, max: usize, noun: &str) -> bool {
        if len <= max {
            return true;
        }
        self.add(field, format!("must hold at most {max} {noun}"));
        false
    }

    /// Parses with `parse`, recording a violation of `field` on error.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, FieldError>) -> Option<T> {
        parsed
            .map_err(|error| self.add(field, error.description()))
            .ok()
    }

    /// `Ok` when nothing was recorded, the violations otherwise. After `Ok`,
    /// every `Option` that `check` returned is `Some` (see [`PARSED`]).
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// The reason an `Option` from [`Violations::check`] may be unwrapped after
/// [`Violations::finish`] returned `Ok`.
pub const PARSED: &str = "finish() returned Ok, so every checked field parsed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_name_every_bad_field() {
        let mut v = Violations::default();
        assert_eq!(v.check("a", Ok::<_, FieldError>(1)), Some(1));
        assert_eq!(v.check::<u8>("b", Err(FieldError::new("is bad"))), None);
        v.add("c", "is worse");
        let status = Status::from(v.finish().unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid b, c");
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations.len(), 2);
    }

    #[test]
    fn an_over_long_list_is_one_violation() {
        let mut v = Violations::default();
        assert!(v.check_count("scopes", 64, 64, "scopes"));
        assert!(!v.check_count("scopes", 1_900_000, 64, "scopes"));
        let status = Status::from(v.finish().unwrap_err());
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations.len(), 1);
        assert_eq!(
            details.field_violations[0].description,
            "must hold at most 64 scopes"
        );
    }

    #[test]
    fn any_error_is_small() {
        let long = "é".repeat(1_000);
        let mut v = Violations::default();
        for i in 0..10_000 {
            v.add(format!("{long}[{i}]"), long.clone());
        }
        let status = Status::from(v.finish().unwrap_err());
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES + 8,
            "{}",
            status.message().len()
        );
        assert!(
            status.details().len() < 5 * 1024,
            "{}",
            status.details().len()
        );
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            details.field_violations[MAX_VIOLATIONS].description,
            format!("and {} more violations", 10_000 - MAX_VIOLATIONS)
        );
        assert!(details.field_violations[0].field.ends_with('…'));

        let reason = ApiError::FailedPrecondition("x".repeat(100_000));
        assert!(Status::from(reason).message().len() <= MAX_MESSAGE_BYTES);
    }
}
