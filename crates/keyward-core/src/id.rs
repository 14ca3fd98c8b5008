//! Opaque, prefixed, time-sortable identifiers (`key_` + a ULID).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngExt;

use crate::fields::FieldError;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// The length of a ULID in Crockford base32.
pub const ULID_LEN: usize = 26;

/// A new ULID: 48 bits of milliseconds since the epoch, then 80 random bits,
/// in Crockford base32. Lexicographic order follows creation time.
pub fn new_ulid() -> String {
    let ulid = new_ulid_bytes();
    String::from_utf8(ulid.to_vec()).expect("Crockford base32 is ASCII")
}

/// [`new_ulid`] as its 26 ASCII bytes, without an allocation (a request id
/// per call is made from these).
pub fn new_ulid_bytes() -> [u8; ULID_LEN] {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & ((1 << 48) - 1);
    let random: u128 = rand::rng().random::<u128>() & ((1 << 80) - 1);
    let value = (u128::from(millis) << 80) | random;
    let mut ulid = [0; ULID_LEN];
    for (i, byte) in ulid.iter_mut().rev().enumerate() {
        *byte = CROCKFORD[((value >> (i * 5)) & 31) as usize];
    }
    ulid
}

/// The id of an API key: `key_01JC...`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    const PREFIX: &'static str = "key_";

    /// A fresh id for a new key.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, new_ulid()))
    }

    /// Parses an id sent by a client.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let ulid = raw.strip_prefix(Self::PREFIX).ok_or(FieldError::new(
            "must be a key id such as key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
        ))?;
        // The first character carries only 3 bits of a 128-bit ULID.
        if ulid.len() != ULID_LEN
            || !ulid.bytes().all(|b| CROCKFORD.contains(&b))
            || ulid.as_bytes()[0] > b'7'
        {
            return Err(FieldError::new(
                "must be a key id such as key_01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Wraps an id read back from storage, where it was valid when written.
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_sort_by_time() {
        let a = KeyId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = KeyId::generate();
        assert!(a < b);
        assert_eq!(KeyId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "key_",
            "01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
            "usr_01JC3Y4M9ZQ8W6D4T2B1N0XK7P",
            "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7",
            "key_01JC3Y4M9ZQ8W6D4T2B1N0XK7PP",
            "key_01jc3y4m9zq8w6d4t2b1n0xk7p",
            "key_81JC3Y4M9ZQ8W6D4T2B1N0XK7P",
            "key_01JC3Y4M9ZQ8W6D4T2B1N0XKIU",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
