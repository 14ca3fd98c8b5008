//! The raw API key: `<prefix>_<body>`, generated from a CSPRNG and guarded by a
//! CRC32 checksum so typos and random strings are rejected without a lookup.

use std::fmt;

use rand::RngExt;
use rand::distr::Alphanumeric;

use crate::key::{Environment, KeyKind};

/// Number of random base62 characters in a key body (32 × log2 62 ≈ 190.5 bits).
const RANDOM_LEN: usize = 32;
/// Number of base62 characters encoding the CRC32 checksum.
const CHECKSUM_LEN: usize = 6;
/// Characters shown in `prefix` and at the start of `partial_key_hint`.
const DISPLAY_PREFIX_LEN: usize = 12;
/// Characters shown at the end of `partial_key_hint`.
const HINT_SUFFIX_LEN: usize = 4;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The documented shape of every key keyward issues.
pub const KEY_REGEX: &str = r"^sk_(live|test|admin)_[0-9A-Za-z]{38}$";

/// Why a string is not a keyward key. Deliberately coarse: callers only learn
/// that the key is malformed, never which part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// The string does not have the `sk_<kind>_<38 base62>` shape.
    #[error("api key is malformed")]
    Shape,
    /// The shape is right but the checksum does not match (a typo).
    #[error("api key checksum does not match")]
    Checksum,
}

/// A raw API key. It never prints: `Debug` and `Display` show only the hint.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret {
    raw: String,
    kind: KeyKind,
    environment: Environment,
}

impl ApiKeySecret {
    /// Generates a new key of the given kind; admin keys ignore `environment`
    /// in their prefix.
    pub fn generate(kind: KeyKind, environment: Environment) -> Self {
        let prefix = prefix_for(kind, environment);
        let mut raw = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
        raw.push_str(prefix);
        raw.push('_');
        raw.extend(
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(RANDOM_LEN)
                .map(char::from),
        );
        let checksum = encode_checksum(crc32fast::hash(raw.as_bytes()));
        raw.extend(checksum.iter().map(|&b| char::from(b)));
        Self {
            raw,
            kind,
            environment,
        }
    }

    /// Parses a presented key: shape first, then the checksum. The
    /// validation path uses [`PresentedKey::parse`], which does not copy.
    pub fn parse(raw: &str) -> Result<Self, KeyFormatError> {
        PresentedKey::parse(raw).map(|key| Self {
            raw: key.raw.to_owned(),
            kind: key.kind,
            environment: key.environment,
        })
    }

    /// The raw key. Only for handing it to its owner once, or hashing it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The kind the prefix says this key is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The environment the prefix says this key is for (`Live` for admin keys).
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The first 12 characters, e.g. `sk_live_7Gq2`: safe to display.
    pub fn display_prefix(&self) -> String {
        self.raw[..DISPLAY_PREFIX_LEN].to_owned()
    }

    /// First 12 characters, `...`, last 4: safe to display.
    pub fn partial_hint(&self) -> String {
        format!(
            "{}...{}",
            &self.raw[..DISPLAY_PREFIX_LEN],
            &self.raw[self.raw.len() - HINT_SUFFIX_LEN..]
        )
    }
}

/// A presented key whose shape and checksum are right, borrowed from the
/// request that carried it: what the validation path hashes, with no copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    raw: &'a str,
    kind: KeyKind,
    environment: Environment,
}

impl<'a> PresentedKey<'a> {
    /// The longest a key can be (`sk_admin_` and the body): anything longer
    /// is not a key, whatever it holds.
    pub const MAX_LEN: usize = "sk_admin_".len() + RANDOM_LEN + CHECKSUM_LEN;

    /// Checks a presented key: shape first, then the checksum.
    pub fn parse(raw: &'a str) -> Result<Self, KeyFormatError> {
        let (kind, environment, rest) = if let Some(rest) = raw.strip_prefix("sk_live_") {
            (KeyKind::Standard, Environment::Live, rest)
        } else if let Some(rest) = raw.strip_prefix("sk_test_") {
            (KeyKind::Standard, Environment::Test, rest)
        } else if let Some(rest) = raw.strip_prefix("sk_admin_") {
            (KeyKind::Admin, Environment::Live, rest)
        } else {
            return Err(KeyFormatError::Shape);
        };
        if rest.len() != RANDOM_LEN + CHECKSUM_LEN
            || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(KeyFormatError::Shape);
        }
        let (signed, checksum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if encode_checksum(crc32fast::hash(signed.as_bytes())) != checksum.as_bytes() {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self {
            raw,
            kind,
            environment,
        })
    }

    /// The raw key, for hashing.
    pub fn expose(&self) -> &'a str {
        self.raw
    }

    /// The kind the prefix says this key is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The environment the prefix says this key is for (`Live` for admin keys).
    pub fn environment(&self) -> Environment {
        self.environment
    }
}

impl<'a> From<&'a ApiKeySecret> for PresentedKey<'a> {
    fn from(secret: &'a ApiKeySecret) -> Self {
        Self {
            raw: &secret.raw,
            kind: secret.kind,
            environment: secret.environment,
        }
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedKey({}...)", &self.raw[..DISPLAY_PREFIX_LEN])
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({})", self.partial_hint())
    }
}

impl Environment {
    /// The environment a standard key's prefix names: `Live` for `sk_live_…`,
    /// `Test` for `sk_test_…`, `None` for admin keys and anything else. Reads
    /// the prefix alone (no shape or checksum check), so it costs nothing on
    /// a hot path; the prefix is part of what the lookup hash covers, so a
    /// found key's prefix is its environment.
    pub fn of_key_prefix(raw: &str) -> Option<Self> {
        if raw.starts_with("sk_live_") {
            Some(Self::Live)
        } else if raw.starts_with("sk_test_") {
            Some(Self::Test)
        } else {
            None
        }
    }
}

fn prefix_for(kind: KeyKind, environment: Environment) -> &'static str {
    match (kind, environment) {
        (KeyKind::Admin, _) => "sk_admin",
        (KeyKind::Standard, Environment::Live) => "sk_live",
        (KeyKind::Standard, Environment::Test) => "sk_test",
    }
}

/// Fixed-width base62 of a CRC32 (62^6 > 2^32, so six characters always fit).
fn encode_checksum(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_kind_env() -> impl Strategy<Value = (KeyKind, Environment)> {
        prop_oneof![
            Just((KeyKind::Standard, Environment::Live)),
            Just((KeyKind::Standard, Environment::Test)),
            Just((KeyKind::Admin, Environment::Live)),
        ]
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let raw = key.expose();
        assert!(raw.starts_with("sk_live_"));
        assert_eq!(raw.len(), "sk_live_".len() + 38);
        assert_eq!(key.display_prefix().len(), 12);
        assert_eq!(key.partial_hint().len(), 12 + 3 + 4);
        assert!(!format!("{key:?}").contains(raw));
        let admin = ApiKeySecret::generate(KeyKind::Admin, Environment::Live);
        assert_eq!(admin.expose().len(), PresentedKey::MAX_LEN);
    }

    #[test]
    fn rejects_strings_that_are_not_keys() {
        for bad in [
            "",
            "sk_live_",
            "sk_prod_0123456789012345678901234567890123456789",
            "sk_live_0123456789012345678901234567890123456789", // 40 chars: too long
            "sk_live_01234567890123456789012345678901234567",   // wrong checksum
            "sk_live_0123456789012345678901234567890-234567",
            "Bearer sk_live_0123456789",
        ] {
            assert!(
                ApiKeySecret::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn every_generated_key_round_trips((kind, env) in any_kind_env()) {
            let key = ApiKeySecret::generate(kind, env);
            let parsed = ApiKeySecret::parse(key.expose()).unwrap();
            prop_assert_eq!(&parsed, &key);
            prop_assert_eq!(parsed.kind(), kind);
            prop_assert_eq!(parsed.environment(), env);
            let by_prefix = (kind == KeyKind::Standard).then_some(env);
            prop_assert_eq!(Environment::of_key_prefix(key.expose()), by_prefix);
            let presented = PresentedKey::parse(key.expose()).unwrap();
            prop_assert_eq!(presented, PresentedKey::from(&key));
            let shown = format!("{presented:?}");
            prop_assert!(!shown.contains(key.expose()));
        }

        #[test]
        fn a_changed_body_character_is_rejected(
            (kind, env) in any_kind_env(),
            position in 0usize..38,
            replacement in proptest::sample::select(BASE62.to_vec()),
        ) {
            let key = ApiKeySecret::generate(kind, env);
            let raw = key.expose();
            let index = raw.len() - 38 + position;
            prop_assume!(raw.as_bytes()[index] != replacement);
            let mut changed = raw.as_bytes().to_vec();
            changed[index] = replacement;
            let changed = String::from_utf8(changed).unwrap();
            prop_assert_eq!(ApiKeySecret::parse(&changed), Err(KeyFormatError::Checksum));
        }

        #[test]
        fn random_strings_never_parse(s in "sk_(live|test|admin)_[0-9A-Za-z]{38}") {
            // A random well-shaped string passes the checksum with odds of 1 in 2^32.
            prop_assert!(ApiKeySecret::parse(&s).is_err());
        }
    }
}
