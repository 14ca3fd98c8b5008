//! Parsed, known-good field values. Each `parse` returns a `FieldError` whose
//! message is a lowercase description fit for a `BadRequest` field violation.

use std::collections::BTreeMap;
use std::fmt;

/// Why a field value was rejected; the caller adds the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(String);

impl FieldError {
    /// A rejection with the given lowercase description.
    pub fn new(description: impl Into<String>) -> Self {
        Self(description.into())
    }

    /// The description, e.g. "must be at most 128 characters".
    pub fn description(&self) -> &str {
        &self.0
    }
}

/// Maximum characters of a key name.
pub const MAX_NAME_CHARS: usize = 128;
/// Maximum characters of a description.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Maximum characters of one scope.
pub const MAX_SCOPE_CHARS: usize = 128;
/// Maximum number of scopes on one key (and required by one validation).
pub const MAX_SCOPES: usize = 64;
/// Longest client IP address recorded as last-used data (an IPv6 address
/// with a zone fits).
pub const MAX_CLIENT_IP_CHARS: usize = 64;
/// Longest user agent recorded as last-used data.
pub const MAX_USER_AGENT_CHARS: usize = 512;
/// Maximum number of metadata entries on one key.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Maximum characters of a metadata key.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Maximum characters of a metadata value.
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// Maximum characters of an external reference (workspace, user, service account).
pub const MAX_REF_CHARS: usize = 128;
/// Maximum characters of an organization id.
pub const MAX_ORGANIZATION_CHARS: usize = 64;

fn check_text(value: &str, max: usize, allow_newlines: bool) -> Result<(), FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(format!("must be at most {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(FieldError::new("must not contain control characters"));
    }
    Ok(())
}

fn check_token(value: &str, max: usize, extra: &[char]) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new("must not be empty"));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(format!("must be at most {max} characters")));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    {
        let allowed: String = extra.iter().collect();
        return Err(FieldError::new(format!(
            "may contain only letters, digits and {allowed:?}"
        )));
    }
    Ok(())
}

/// A key's human name: 1 to 128 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    /// Parses a name sent by a client.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.trim().is_empty() {
            return Err(FieldError::new("is required and must not be blank"));
        }
        check_text(raw, MAX_NAME_CHARS, false)?;
        Ok(Self(raw.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A free-text description: up to 1024 characters; newlines and tabs allowed,
/// other control characters not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    /// Parses a description sent by a client.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        check_text(raw, MAX_DESCRIPTION_CHARS, true)?;
        Ok(Self(raw.to_owned()))
    }

    /// The description as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An organization id: 1 to 64 of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganizationId(String);

impl OrganizationId {
    /// Parses an organization id given by an operator.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        check_token(raw, MAX_ORGANIZATION_CHARS, &['_', '.', '-'])?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrganizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to something keyward does not own (a workspace, a user, a
/// service account): 1 to 128 of `[A-Za-z0-9_.:@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalRef;

impl OptionalRef {
    /// Parses an optional reference: the empty string means "none".
    pub fn parse(raw: &str) -> Result<Option<String>, FieldError> {
        if raw.is_empty() {
            return Ok(None);
        }
        check_token(raw, MAX_REF_CHARS, &['_', '.', ':', '@', '-'])?;
        Ok(Some(raw.to_owned()))
    }
}

/// A permission: `*`, or `:`-separated segments of `[a-z0-9_.-]` whose last
/// segment may be `*` (`orders:*` grants `orders:read` and `orders:items:write`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Parses one scope.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::check(raw).map(|raw| Self(raw.to_owned()))
    }

    /// Checks `raw` by [`parse`](Self::parse)'s rules without copying it,
    /// and gives it back: for the scopes a call requires, which are compared
    /// and dropped, so the hot path keeps them borrowed (see
    /// [`grant_all`](Scopes::grant_all)).
    pub fn check(raw: &str) -> Result<&str, FieldError> {
        const SYNTAX: &str =
            "must be '*' or ':'-separated segments of [a-z0-9_.-], the last of which may be '*'";
        if raw.is_empty() {
            return Err(FieldError::new("must not be empty"));
        }
        if raw.len() > MAX_SCOPE_CHARS {
            return Err(FieldError::new(format!(
                "must be at most {MAX_SCOPE_CHARS} characters"
            )));
        }
        let is_segment = |segment: &str| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        };
        // Only the last segment may be `*`.
        let valid = match raw.rsplit_once(':') {
            None => raw == "*" || is_segment(raw),
            Some((stem, last)) => {
                (last == "*" || is_segment(last)) && stem.split(':').all(is_segment)
            }
        };
        if !valid {
            return Err(FieldError::new(SYNTAX));
        }
        Ok(raw)
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`, a scope [`check`](Self::check)ed
    /// or parsed.
    pub fn grants(&self, required: impl AsRef<str>) -> bool {
        let required = required.as_ref();
        match self.0.strip_suffix('*') {
            None => self.0 == required,
            // `*` alone grants everything; `a:*` grants everything under `a:`.
            Some(stem) => required.starts_with(stem) && required.len() > stem.len(),
        }
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scopes of a key: at most 64, sorted, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Parses a list of scopes. On error, returns the index of the bad one.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, (Option<usize>, FieldError)> {
        if raw.len() > MAX_SCOPES {
            return Err((
                None,
                FieldError::new(format!("must hold at most {MAX_SCOPES} scopes")),
            ));
        }
        let mut scopes = raw
            .iter()
            .enumerate()
            .map(|(i, s)| Scope::parse(s.as_ref()).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        Ok(Self(scopes))
    }

    /// Wraps scopes read back from storage, where they were valid when written.
    pub fn from_trusted(raw: Vec<String>) -> Self {
        Self(raw.into_iter().map(Scope).collect())
    }

    /// The scopes, sorted.
    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }

    /// The scopes as strings, as the wire and `Identity` carry them.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|scope| scope.0.clone()).collect()
    }

    /// Whether every required scope is granted by some held scope. The
    /// required ones are parsed [`Scope`]s or `&str`s [`Scope::check`]ed
    /// (a call's, borrowed from its request).
    pub fn grant_all<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required
            .iter()
            .all(|needed| self.0.iter().any(|held| held.grants(needed)))
    }
}

/// Free-form string metadata: at most 32 entries; keys 1 to 64 of
/// `[A-Za-z0-9_.-]`, values up to 512 characters without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Parses metadata. On error, returns the offending map key, if any.
    pub fn parse<'a>(
        raw: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, (Option<String>, FieldError)> {
        let mut map = BTreeMap::new();
        for (key, value) in raw {
            check_token(key, MAX_METADATA_KEY_CHARS, &['_', '.', '-'])
                .map_err(|e| (Some(key.clone()), FieldError::new(format!("key {e}"))))?;
            check_text(value, MAX_METADATA_VALUE_CHARS, false)
                .map_err(|e| (Some(key.clone()), FieldError::new(format!("value {e}"))))?;
            map.insert(key.clone(), value.clone());
        }
        if map.len() > MAX_METADATA_ENTRIES {
            return Err((
                None,
                FieldError::new(format!("must hold at most {MAX_METADATA_ENTRIES} entries")),
            ));
        }
        Ok(Self(map))
    }

    /// Wraps metadata read back from storage.
    pub fn from_trusted(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }

    /// The entries, sorted by key.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    #[test]
    fn scope_syntax() {
        for good in [
            "*",
            "orders",
            "orders:read",
            "orders:*",
            "a.b-c_d:e:*",
            "v2:x",
        ] {
            assert!(Scope::parse(good).is_ok(), "{good:?} should parse");
        }
        for bad in [
            "",
            "Orders",
            "orders:",
            ":read",
            "orders::read",
            "or*ders",
            "*:read",
            "a b",
            "orders:re*",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Scope::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn wildcards_grant_what_they_cover() {
        let cases = [
            ("*", "orders:read", true),
            ("orders:*", "orders:read", true),
            ("orders:*", "orders:items:write", true),
            ("orders:*", "orders", false),
            ("orders:*", "ordersx:read", false),
            ("orders:read", "orders:read", true),
            ("orders:read", "orders:write", false),
            ("orders", "orders:read", false),
        ];
        for (held, required, expected) in cases {
            assert_eq!(
                scope(held).grants(scope(required)),
                expected,
                "{held} -> {required}"
            );
        }
    }

    #[test]
    fn scopes_are_sorted_deduplicated_and_bounded() {
        let scopes = Scopes::parse(&["b", "a", "b"]).unwrap();
        assert_eq!(scopes.as_slice(), &[scope("a"), scope("b")]);
        assert_eq!(Scopes::parse(&["a", "B"]).unwrap_err().0, Some(1));
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert_eq!(Scopes::parse(&many).unwrap_err().0, None);
        assert!(scopes.grant_all(&[] as &[&str]));
        assert!(!scopes.grant_all(&[scope("c")]));
    }

    #[test]
    fn names_and_descriptions() {
        assert!(KeyName::parse("Production").is_ok());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("   ").is_err());
        assert!(KeyName::parse("a\u{7}b").is_err());
        assert!(KeyName::parse("line\nbreak").is_err());
        assert!(KeyName::parse(&"é".repeat(128)).is_ok());
        assert!(KeyName::parse(&"é".repeat(129)).is_err());
        assert!(Description::parse("two\nlines").is_ok());
        assert!(Description::parse("nul\0").is_err());
        assert!(Description::parse(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn references_and_organizations() {
        assert_eq!(OptionalRef::parse("").unwrap(), None);
        assert_eq!(
            OptionalRef::parse("user_1@x").unwrap().as_deref(),
            Some("user_1@x")
        );
        assert!(OptionalRef::parse("has space").is_err());
        assert!(OrganizationId::parse("acme-corp").is_ok());
        assert!(OrganizationId::parse("").is_err());
        assert!(OrganizationId::parse("acme/corp").is_err());
    }

    #[test]
    fn metadata_rules() {
        let good: BTreeMap<String, String> = [("team".into(), "payments".into())].into();
        assert!(Metadata::parse(&good).is_ok());
        let bad_key: BTreeMap<String, String> = [("a b".into(), "x".into())].into();
        assert_eq!(
            Metadata::parse(&bad_key).unwrap_err().0.as_deref(),
            Some("a b")
        );
        let bad_value: BTreeMap<String, String> = [("k".into(), "\u{1b}[31m".into())].into();
        assert!(Metadata::parse(&bad_value).is_err());
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(Metadata::parse(&many).is_err());
    }
}
