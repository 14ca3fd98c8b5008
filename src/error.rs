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

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                let message = format!("invalid {}", fields.join(", "));
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotFound => Status::not_found("key not found"),
            ApiError::FailedPrecondition(reason) => Status::failed_precondition(reason),
            ApiError::Unavailable => Status::unavailable("database unavailable"),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Collects field violations while a request is parsed, so one response names
/// every bad field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is bad.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
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
}
