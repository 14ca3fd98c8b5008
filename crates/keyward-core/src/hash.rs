//! The BLAKE3 lookup hash under which a key is stored and found.

use std::fmt;

use crate::secret::PresentedKey;

const DERIVE_CONTEXT: &str = "keyward 2026-11-23 api key lookup hash v1";
const SECRET_CONTEXT: &str = "keyward 2026-11-23 operator lookup secret v1";
/// A fixed input whose hash identifies the hasher configuration, so a server
/// started with the wrong secret notices before any key silently fails.
const FINGERPRINT_INPUT: &[u8] = b"keyward lookup-hash fingerprint";

/// Computes lookup hashes: domain-separated with `derive_key`, or keyed with an
/// operator-supplied secret.
#[derive(Clone)]
pub struct LookupHasher {
    key: [u8; 32],
}

impl LookupHasher {
    /// The default hasher: BLAKE3 in `derive_key` mode with keyward's context.
    pub fn derived() -> Self {
        Self {
            key: blake3::derive_key(DERIVE_CONTEXT, b""),
        }
    }

    /// A hasher keyed with an operator secret (any length; it is stretched by
    /// BLAKE3's `derive_key`).
    pub fn keyed(operator_secret: &[u8]) -> Self {
        Self {
            key: blake3::derive_key(SECRET_CONTEXT, operator_secret),
        }
    }

    /// The lookup hash of a key (an [`ApiKeySecret`](crate::ApiKeySecret)
    /// or a [`PresentedKey`]).
    pub fn hash<'a>(&self, key: impl Into<PresentedKey<'a>>) -> LookupHash {
        LookupHash(*blake3::keyed_hash(&self.key, key.into().expose().as_bytes()).as_bytes())
    }

    /// Identifies this configuration without revealing the secret.
    pub fn fingerprint(&self) -> String {
        blake3::keyed_hash(&self.key, FINGERPRINT_INPUT)
            .to_hex()
            .to_string()
    }
}

impl fmt::Debug for LookupHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupHasher(..)")
    }
}

/// A 32-byte BLAKE3 lookup hash, stored as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupHash(pub [u8; 32]);

impl LookupHash {
    /// Lowercase hex, as stored in the database.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for LookupHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKeySecret, Environment, KeyKind};

    #[test]
    fn keyed_and_derived_hashes_differ() {
        let key = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        let derived = LookupHasher::derived();
        let keyed = LookupHasher::keyed(b"operator secret");
        assert_ne!(derived.hash(&key), keyed.hash(&key));
        assert_eq!(derived.hash(&key), LookupHasher::derived().hash(&key));
        assert_ne!(derived.fingerprint(), keyed.fingerprint());
        assert_eq!(derived.hash(&key).to_hex().len(), 64);
    }
}
