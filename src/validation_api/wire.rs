//! `ValidateKey`'s messages on the wire, read and written by
//! [`UnaryServer`](crate::unary::UnaryServer) instead of prost's generated
//! structs: the hot path allocates nothing per call for either message.
//!
//! - [`ValidateKeyCall`] keeps the request's bytes as received (a
//!   reference-counted slice of the connection's read buffer, not a copy) and where each
//!   field is in them; its strings are borrowed from there. The message's
//!   structure is checked when it is decoded, by the rules prost applies: the
//!   last value of a singular field wins, unknown fields are skipped, a known
//!   field of the wrong wire type is an error. Its strings are checked to be
//!   UTF-8 when they are read, each once: one that is not is the caller's
//!   INVALID_ARGUMENT, named by field (prost would refuse the whole message,
//!   and check each string twice here: once decoding, once reading).
//! - [`ValidateKeyReply`] is the call's own part of the answer (verdict,
//!   cache hint, rate-limit state), encoded per call, followed by the key's
//!   description (id, organization, scopes, metadata, …), which the
//!   validation cache keeps encoded once per key version
//!   ([`CachedKey::description`]) and which is copied into every answer as
//!   bytes. Protobuf lets a message's fields come in any order, so the two
//!   together are one valid `ValidateKeyResponse`. The description is prost's
//!   encoding of the generated message; the call's own fields are written
//!   one by one with prost's field encoders (a proto3 default left out, as
//!   prost leaves it out), and the tests read every answer back with prost.

use std::fmt;
use std::ops::Range;
use std::str::Utf8Error;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use keyward_core::ValidationCode;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use crate::cache::CachedKey;
use crate::convert;
use crate::pb;
use crate::unary::{WireCall, WireReply, length_delimited, put_string};
use crate::validation::Validation;

/// Field numbers of `keyward.v1.ValidateKeyRequest`.
mod field {
    pub const KEY: u32 = 1;
    pub const REQUIRED_SCOPES: u32 = 2;
    pub const CLIENT_IP: u32 = 3;
    pub const USER_AGENT: u32 = 4;
    pub const COST: u32 = 5;
    pub const IDEMPOTENCY_KEY: u32 = 6;
}

/// A decoded `ValidateKeyRequest`: its bytes and where its fields are.
#[derive(Clone, Default)]
pub struct ValidateKeyCall {
    message: Bytes,
    key: Range<usize>,
    client_ip: Range<usize>,
    user_agent: Range<usize>,
    idempotency_key: Range<usize>,
    required_scopes: usize,
    cost: i64,
}

impl WireCall for ValidateKeyCall {
    /// Reads `message`, a whole serialized `ValidateKeyRequest`.
    fn decode(message: Bytes) -> Result<Self, String> {
        let mut call = Self::default();
        let mut rest: &[u8] = &message;
        while !rest.is_empty() {
            let (tag, wire_type) = decode_key(&mut rest).map_err(|e| e.to_string())?;
            match (tag, wire_type) {
                (
                    field::KEY
                    | field::REQUIRED_SCOPES
                    | field::CLIENT_IP
                    | field::USER_AGENT
                    | field::IDEMPOTENCY_KEY,
                    WireType::LengthDelimited,
                ) => {
                    let bytes = length_delimited(&mut rest)?;
                    // `rest` now starts right after them.
                    let end = message.len() - rest.len();
                    let span = end - bytes.len()..end;
                    match tag {
                        field::KEY => call.key = span,
                        field::REQUIRED_SCOPES => call.required_scopes += 1,
                        field::CLIENT_IP => call.client_ip = span,
                        field::USER_AGENT => call.user_agent = span,
                        _ => call.idempotency_key = span,
                    }
                }
                // int64 on the wire: a varint, two's complement for negatives.
                (field::COST, WireType::Varint) => {
                    call.cost = decode_varint(&mut rest).map_err(|e| e.to_string())? as i64;
                }
                (field::KEY..=field::IDEMPOTENCY_KEY, _) => {
                    return Err(format!(
                        "ValidateKeyRequest field {tag}: invalid wire type {wire_type:?}"
                    ));
                }
                _ => skip_field(wire_type, tag, &mut rest, DecodeContext::default())
                    .map_err(|e| e.to_string())?,
            }
        }
        call.message = message;
        Ok(call)
    }
}

impl ValidateKeyCall {
    fn text(&self, span: &Range<usize>) -> Result<&str, Utf8Error> {
        std::str::from_utf8(&self.message[span.clone()])
    }

    /// The presented key; an error if it is not UTF-8.
    pub fn key(&self) -> Result<&str, Utf8Error> {
        self.text(&self.key)
    }

    /// The client's address as the caller wrote it; an error if it is not UTF-8.
    pub fn client_ip(&self) -> Result<&str, Utf8Error> {
        self.text(&self.client_ip)
    }

    /// The client's user agent; an error if it is not UTF-8.
    pub fn user_agent(&self) -> Result<&str, Utf8Error> {
        self.text(&self.user_agent)
    }

    /// The caller's idempotency key, empty when none; an error if it is not UTF-8.
    pub fn idempotency_key(&self) -> Result<&str, Utf8Error> {
        self.text(&self.idempotency_key)
    }

    /// The call's cost as sent (0: each limit's own).
    pub fn cost(&self) -> i64 {
        self.cost
    }

    /// How many scopes the call requires (duplicates counted).
    pub fn required_scope_count(&self) -> usize {
        self.required_scopes
    }

    /// The required scopes as sent, in order; an error for one that is not
    /// UTF-8.
    pub fn required_scopes(&self) -> impl Iterator<Item = Result<&str, Utf8Error>> {
        let mut rest: &[u8] = &self.message;
        std::iter::from_fn(move || {
            // The message was read whole once: nothing here can fail.
            while !rest.is_empty() {
                let (tag, wire_type) = decode_key(&mut rest).ok()?;
                if tag == field::REQUIRED_SCOPES && wire_type == WireType::LengthDelimited {
                    return length_delimited(&mut rest).ok().map(std::str::from_utf8);
                }
                skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
            }
            None
        })
    }
}

// It holds the raw key: never printed.
impl fmt::Debug for ValidateKeyCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NOT_UTF8: &str = "<not UTF-8>";
        let scopes = self
            .required_scopes()
            .map(|scope| scope.unwrap_or(NOT_UTF8))
            .collect::<Vec<_>>();
        f.debug_struct("ValidateKeyCall")
            .field(
                "key",
                &keyward_auth::RedactedKey(self.key().unwrap_or(NOT_UTF8)),
            )
            .field("required_scopes", &scopes)
            .field("client_ip", &self.client_ip().unwrap_or(NOT_UTF8))
            .field("user_agent", &self.user_agent().unwrap_or(NOT_UTF8))
            .field("cost", &self.cost)
            .field(
                "idempotency_key",
                &!self.idempotency_key().is_ok_and(str::is_empty),
            )
            .finish()
    }
}

/// A `ValidateKeyResponse` ready to be written: the call's own fields
/// (written here, field by field, as prost writes them: a proto3 default is
/// left out) and the key's encoded description.
#[derive(Debug)]
pub struct ValidateKeyReply {
    validation: Validation,
    cache_ttl: Duration,
}

/// Field numbers of `keyward.v1.ValidateKeyResponse`'s own fields.
mod reply {
    pub const VALID: u32 = 1;
    pub const CODE: u32 = 2;
    pub const CACHE_TTL: u32 = 13;
    pub const METERED: u32 = 15;
    pub const LIMIT_NAME: u32 = 16;
    pub const LIMIT: u32 = 17;
    pub const REMAINING: u32 = 18;
    pub const RESET: u32 = 19;
    pub const RETRY_AFTER: u32 = 20;
    pub const WINDOW: u32 = 21;
}

impl WireReply for ValidateKeyReply {
    fn encode(&self, buf: &mut impl BufMut) {
        self.encode_own(buf);
        if let Some(key) = &self.validation.key {
            buf.put_slice(description(key));
        }
    }
}

impl ValidateKeyReply {
    /// The answer to a call that `validation` decided, with the cache hint
    /// `cache_ttl`. The key is described only for VALID and
    /// INSUFFICIENT_SCOPE (`Validation::key` is `None` otherwise).
    pub fn new(validation: Validation, cache_ttl: Duration) -> Self {
        Self {
            validation,
            cache_ttl,
        }
    }

    /// Writes the call's own fields, as prost writes them.
    fn encode_own(&self, buf: &mut impl BufMut) {
        use prost::encoding::{bool, int32, int64, message};
        let validation = &self.validation;
        let valid = validation.code == ValidationCode::Valid;
        if valid {
            bool::encode(reply::VALID, &true, buf);
        }
        let code = i32::from(convert::validation_code(validation.code));
        if code != 0 {
            int32::encode(reply::CODE, &code, buf);
        }
        message::encode(reply::CACHE_TTL, &convert::duration(self.cache_ttl), buf);
        if validation.metered {
            bool::encode(reply::METERED, &true, buf);
        }
        if let Some(limited) = &validation.throttle {
            put_string(reply::LIMIT_NAME, limited.name(), buf);
            for (tag, value) in [
                (reply::LIMIT, limited.state.limit),
                (reply::REMAINING, limited.state.remaining),
            ] {
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                if value != 0 {
                    int64::encode(tag, &value, buf);
                }
            }
            if let Some(reset) = limited.reset() {
                message::encode(reply::RESET, &convert::duration(reset), buf);
            }
            if !valid {
                let retry_after = convert::duration(limited.state.retry_after);
                message::encode(reply::RETRY_AFTER, &retry_after, buf);
            }
            if let Some(window) = limited.window() {
                message::encode(reply::WINDOW, &convert::duration(window), buf);
            }
        }
    }

    /// The answer as the generated message reads it (for tests and tools:
    /// what a client receives).
    pub fn to_message(&self) -> pb::ValidateKeyResponse {
        let mut bytes = BytesMut::new();
        self.encode(&mut bytes);
        pb::ValidateKeyResponse::decode(bytes.freeze()).expect("a valid message")
    }
}

/// What ValidateKey says about `key`, encoded once per cached key version.
pub fn description(key: &CachedKey) -> &Bytes {
    key.description(|key| {
        let message = convert::key_description(key);
        let mut bytes = BytesMut::with_capacity(message.encoded_len());
        message
            .encode(&mut bytes)
            .expect("the buffer holds the message");
        bytes.freeze()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyward_core::{Metadata, Scopes};

    use super::*;
    use crate::cache::tests::keyed;

    fn request() -> pb::ValidateKeyRequest {
        pb::ValidateKeyRequest {
            key: "sk_live_ünïcode".to_owned(),
            required_scopes: vec!["orders:read".to_owned(), String::new(), "a:b".to_owned()],
            client_ip: "203.0.113.7".to_owned(),
            user_agent: "agent/1.0".to_owned(),
            cost: -5,
            idempotency_key: "retry-1".to_owned(),
        }
    }

    fn decoded(bytes: Vec<u8>) -> Result<ValidateKeyCall, String> {
        ValidateKeyCall::decode(bytes.into())
    }

    #[test]
    fn a_call_reads_every_field_as_prost_does() {
        let sent = request();
        let call = decoded(sent.encode_to_vec()).expect("decodes");
        assert_eq!(call.key(), Ok(sent.key.as_str()));
        assert_eq!(call.required_scope_count(), 3);
        assert_eq!(scopes(&call), sent.required_scopes);
        assert_eq!(call.client_ip(), Ok(sent.client_ip.as_str()));
        assert_eq!(call.user_agent(), Ok(sent.user_agent.as_str()));
        assert_eq!(call.cost(), -5);
        assert_eq!(call.idempotency_key(), Ok(sent.idempotency_key.as_str()));

        // An empty message is every field's default.
        let empty = decoded(Vec::new()).expect("decodes");
        assert_eq!((empty.key(), empty.required_scope_count()), (Ok(""), 0));
        assert_eq!(empty.required_scopes().count(), 0);

        // The last value of a singular field wins; unknown fields (a varint,
        // a string, a fixed64) are skipped, as prost does.
        let mut bytes = sent.encode_to_vec();
        bytes.extend(
            pb::ValidateKeyRequest {
                key: "second".to_owned(),
                cost: 7,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        bytes.extend([0x38, 0x01, 0x42, 0x01, b'x', 0x49, 0, 0, 0, 0, 0, 0, 0, 0]);
        let prost_read = pb::ValidateKeyRequest::decode(bytes.as_slice()).expect("prost reads it");
        let call = decoded(bytes).expect("decodes");
        assert_eq!((call.key(), call.cost()), (Ok("second"), 7));
        assert_eq!(call.key(), Ok(prost_read.key.as_str()));
        assert_eq!(scopes(&call), prost_read.required_scopes);
    }

    fn scopes(call: &ValidateKeyCall) -> Vec<&str> {
        call.required_scopes()
            .map(|scope| scope.expect("UTF-8"))
            .collect()
    }

    #[test]
    fn a_string_that_is_not_utf8_is_an_error_of_its_field_alone() {
        let mut sent = request();
        sent.required_scopes[1] = "\u{e9}".to_owned();
        let mut bytes = sent.encode_to_vec();
        for text in ["ü", "\u{e9}"] {
            let at = bytes
                .windows(text.len())
                .position(|w| w == text.as_bytes())
                .expect("the text");
            bytes[at] = 0xff;
        }
        assert!(
            pb::ValidateKeyRequest::decode(bytes.as_slice()).is_err(),
            "prost refuses the whole message"
        );
        let call = decoded(bytes).expect("the structure is sound");
        assert!(call.key().is_err());
        let read: Vec<_> = call.required_scopes().map(|scope| scope.ok()).collect();
        assert_eq!(read, [Some("orders:read"), None, Some("a:b")]);
        assert_eq!(call.client_ip(), Ok("203.0.113.7"));
        assert_eq!(call.user_agent(), Ok("agent/1.0"));
        assert_eq!(call.idempotency_key(), Ok("retry-1"));
    }

    #[test]
    fn a_malformed_call_is_refused_where_prost_refuses_it() {
        let good = request().encode_to_vec();
        let cases = [
            ("truncated", good[..good.len() - 1].to_vec()),
            ("a string as a varint", vec![0x08, 0x01]),
            ("cost as a string", vec![0x2a, 0x01, b'1']),
            ("length past the end", vec![0x0a, 0x7f, b'a']),
        ];
        for (what, bytes) in cases {
            assert!(
                pb::ValidateKeyRequest::decode(bytes.as_slice()).is_err(),
                "{what}: prost refuses it"
            );
            assert!(decoded(bytes).is_err(), "{what}: refused");
        }
    }

    #[test]
    fn a_reply_at_its_largest_reads_back_as_prost_writes_it() {
        use keyward_core::{
            MAX_RATE_LIMIT, MAX_RATE_LIMIT_NAME_CHARS, Policy, RateLimit, RateLimits,
        };

        use crate::limits::{LimitState, Which};
        use crate::validation::Limited;

        let name = "n".repeat(MAX_RATE_LIMIT_NAME_CHARS);
        let limit = RateLimit {
            name: name.clone(),
            limit: MAX_RATE_LIMIT,
            window: Duration::from_secs(30 * 24 * 3600),
            cost: 1,
        };
        let policy = Policy {
            rate_limits: RateLimits::new(vec![limit]).expect("a valid limit"),
            ..Policy::default()
        };
        let validation = Validation {
            code: ValidationCode::RateLimited,
            key: None,
            metered: true,
            throttle: Some(Limited {
                state: LimitState {
                    which: Which::RateLimit(0),
                    limit: u64::MAX,
                    remaining: u64::MAX,
                    reset: Duration::MAX,
                    retry_after: Duration::MAX,
                },
                policy: Arc::new(policy),
            }),
        };
        let reply = ValidateKeyReply::new(validation, Duration::MAX);
        let mut own = BytesMut::new();
        reply.encode_own(&mut own);
        let read = reply.to_message();
        assert_eq!(read.encode_to_vec(), own.to_vec(), "prost's bytes");
        assert_eq!(
            (read.code(), read.metered, read.limit_name.as_str()),
            (pb::ValidationCode::RateLimited, true, name.as_str())
        );
    }

    #[test]
    fn a_reply_is_the_outcome_and_the_cached_description() {
        let scopes = Scopes::parse(&["orders:read", "orders:write"]).expect("scopes");
        let team = ("team".to_owned(), "core".to_owned());
        let metadata = Metadata::parse([(&team.0, &team.1)]).expect("metadata");
        let (_, key) = keyed(scopes, metadata);
        let validation = Validation {
            code: ValidationCode::InsufficientScope,
            key: Some(Arc::clone(&key)),
            metered: false,
            throttle: None,
        };
        let ttl = Duration::from_secs(30);
        let expected = pb::ValidateKeyResponse {
            code: pb::ValidationCode::InsufficientScope.into(),
            cache_ttl: Some(convert::duration(ttl)),
            ..convert::key_description(&key)
        };
        assert_eq!(
            ValidateKeyReply::new(validation.clone(), ttl).to_message(),
            expected
        );
        // Encoded once, then the same bytes for every answer.
        let first = description(&key).as_ptr();
        assert_eq!(description(&key).as_ptr(), first);

        // No key described for a verdict that names none.
        let bare = Validation::bare(ValidationCode::NotFound);
        let reply = ValidateKeyReply::new(bare, ttl).to_message();
        let expected = pb::ValidateKeyResponse {
            code: pb::ValidationCode::NotFound.into(),
            cache_ttl: Some(convert::duration(ttl)),
            ..Default::default()
        };
        assert_eq!(reply, expected);
    }
}
