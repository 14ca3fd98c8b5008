//! `Check`'s messages on the wire, read and written by
//! [`UnaryServer`](crate::unary::UnaryServer) instead of prost's generated
//! structs, as `ValidateKey`'s are (`validation_api::wire`).
//!
//! - [`CheckCall`] keeps the request's bytes as received and
//!   where the few fields keyward reads are in them: the client's address
//!   (`attributes.source.address.socket_address.address`), five of the
//!   client's headers (`attributes.request.http.headers`) and the route's
//!   three `context_extensions`. Envoy sends every header of the request
//!   and a dozen other attributes; prost would allocate a `String` for each
//!   and hash each header into a map, only for nearly all of them to be
//!   dropped. The fields read follow prost's rules (the last value of a
//!   field or of a map key wins, messages met twice merge, a known field of
//!   the wrong wire type is an error); fields keyward does not read are
//!   skipped by their wire type, unread. A field read that is not UTF-8 is
//!   INVALID_ARGUMENT (Envoy then denies the request), checked once, when it
//!   is read.
//! - [`CheckReply`] writes an allowed request's answer (keyward's headers,
//!   the credential headers to remove, the key as dynamic metadata) straight
//!   from the cached key, field by field in prost's order and encoding; any
//!   other answer is prost's message. The tests read every answer back with
//!   prost and compare it with the message built the generated way.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use chrono::SecondsFormat;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HeaderValueOption};
use prost::Message;
use prost::encoding::{
    DecodeContext, WireType, decode_key, encode_key, encode_varint, encoded_len_varint, key_len,
    message, skip_field,
};
use tonic::Status;

use super::{ENVIRONMENT, KEY_ID, METADATA_NAMESPACE, ORGANIZATION_ID, SCOPES, WORKSPACE_ID};
use crate::cache::CachedKey;
use crate::unary::{WireCall, WireReply, length_delimited, put_delimited_head, put_string};

/// The client headers keyward reads (Envoy sends header names lowercased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `authorization` (`Bearer <key>`).
    Authorization,
    /// `x-api-key`.
    ApiKey,
    /// `user-agent`, recorded as the key's last user agent.
    UserAgent,
    /// `idempotency-key`: a retry is charged once.
    IdempotencyKey,
    /// `x-forwarded-for`, believed from `--trusted-proxies` only.
    ForwardedFor,
}

impl Header {
    const ALL: [Self; 5] = [
        Self::Authorization,
        Self::ApiKey,
        Self::UserAgent,
        Self::IdempotencyKey,
        Self::ForwardedFor,
    ];

    /// The header's name, as Envoy sends it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authorization => "authorization",
            Self::ApiKey => "x-api-key",
            Self::UserAgent => "user-agent",
            Self::IdempotencyKey => "idempotency-key",
            Self::ForwardedFor => "x-forwarded-for",
        }
    }
}

/// The route's `context_extensions` keyward reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The scopes the route requires.
    RequiredScopes,
    /// The one environment whose keys the route accepts.
    RequiredEnvironment,
    /// What one call of the route costs.
    Cost,
}

impl Extension {
    const ALL: [Self; 3] = [Self::RequiredScopes, Self::RequiredEnvironment, Self::Cost];

    /// The entry's key.
    pub fn name(self) -> &'static str {
        match self {
            Self::RequiredScopes => super::REQUIRED_SCOPES,
            Self::RequiredEnvironment => super::REQUIRED_ENVIRONMENT,
            Self::Cost => super::COST,
        }
    }
}

/// Field numbers of the messages a `CheckRequest` nests, on the way to the
/// fields keyward reads.
mod field {
    /// `CheckRequest.attributes`.
    pub const ATTRIBUTES: u32 = 1;
    /// `AttributeContext.source`, `.request`, `.context_extensions`.
    pub const SOURCE: u32 = 1;
    pub const REQUEST: u32 = 4;
    pub const CONTEXT_EXTENSIONS: u32 = 10;
    /// `Peer.address`.
    pub const PEER_ADDRESS: u32 = 1;
    /// `Address`'s oneof: `socket_address`, `pipe`, `envoy_internal_address`.
    pub const SOCKET_ADDRESS: u32 = 1;
    pub const PIPE: u32 = 2;
    pub const ENVOY_INTERNAL_ADDRESS: u32 = 3;
    /// `SocketAddress.address`.
    pub const ADDRESS: u32 = 2;
    /// `AttributeContext.Request.http`.
    pub const HTTP: u32 = 2;
    /// `HttpRequest.headers`.
    pub const HEADERS: u32 = 3;
    /// A map entry's key and value.
    pub const MAP_KEY: u32 = 1;
    pub const MAP_VALUE: u32 = 2;
}

/// A decoded `CheckRequest`: its bytes and where the fields keyward reads
/// are in them (`None`: not sent).
#[derive(Clone, Default)]
pub struct CheckCall {
    message: Bytes,
    source_address: Option<Range<usize>>,
    headers: [Option<Range<usize>>; Header::ALL.len()],
    extensions: [Option<Range<usize>>; Extension::ALL.len()],
}

/// Calls `each` with every field of `message` (its tag, wire type and, for a
/// length-delimited field, its bytes), skipping the others' values.
fn fields<'a>(
    mut message: &'a [u8],
    mut each: impl FnMut(u32, WireType, &'a [u8]) -> Result<(), String>,
) -> Result<(), String> {
    while !message.is_empty() {
        let (tag, wire_type) = decode_key(&mut message).map_err(|e| e.to_string())?;
        if wire_type == WireType::LengthDelimited {
            each(tag, wire_type, length_delimited(&mut message)?)?;
        } else {
            each(tag, wire_type, &[])?;
            skip_field(wire_type, tag, &mut message, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// An error unless a field keyward reads came length-delimited.
fn nested(name: &str, wire_type: WireType) -> Result<(), String> {
    if wire_type == WireType::LengthDelimited {
        Ok(())
    } else {
        Err(format!("{name}: invalid wire type {wire_type:?}"))
    }
}

/// Calls `each` with the bytes of every `tag` field of `message`: a message
/// or string keyward reads, `name` in errors.
fn each_of<'a>(
    message: &'a [u8],
    tag: u32,
    name: &str,
    mut each: impl FnMut(&'a [u8]) -> Result<(), String>,
) -> Result<(), String> {
    fields(message, |field, wire_type, bytes| {
        if field != tag {
            return Ok(());
        }
        nested(name, wire_type)?;
        each(bytes)
    })
}

/// The key and value of a `map<string, string>` entry (each empty when
/// absent, as prost reads it).
fn map_entry<'a>(entry: &'a [u8], map: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    // Empty slices of the entry itself, so that their place in the message
    // is known too.
    let (mut key, mut value) = (&entry[..0], &entry[..0]);
    fields(entry, |tag, wire_type, bytes| {
        match tag {
            field::MAP_KEY => {
                nested(map, wire_type)?;
                key = bytes;
            }
            field::MAP_VALUE => {
                nested(map, wire_type)?;
                value = bytes;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok((key, value))
}

impl WireCall for CheckCall {
    /// Reads `message`, a whole serialized `CheckRequest`.
    fn decode(message: Bytes) -> Result<Self, String> {
        let mut call = Self::default();
        let base = message.as_ptr() as usize;
        let span = |bytes: &[u8]| {
            let start = bytes.as_ptr() as usize - base;
            start..start + bytes.len()
        };
        each_of(&message, field::ATTRIBUTES, "attributes", |attributes| {
            fields(attributes, |tag, wire_type, bytes| match tag {
                field::SOURCE => {
                    nested("attributes.source", wire_type)?;
                    call.read_source(bytes, &span)
                }
                field::REQUEST => {
                    nested("attributes.request", wire_type)?;
                    call.read_request(bytes, &span)
                }
                field::CONTEXT_EXTENSIONS => {
                    nested("attributes.context_extensions", wire_type)?;
                    let (key, value) = map_entry(bytes, "attributes.context_extensions")?;
                    if let Some(i) = Extension::ALL
                        .iter()
                        .position(|e| e.name().as_bytes() == key)
                    {
                        call.extensions[i] = Some(span(value));
                    }
                    Ok(())
                }
                _ => Ok(()),
            })
        })?;
        call.message = message;
        Ok(call)
    }
}

impl CheckCall {
    /// `Peer`: its `address`.
    fn read_source(
        &mut self,
        peer: &[u8],
        span: &impl Fn(&[u8]) -> Range<usize>,
    ) -> Result<(), String> {
        each_of(
            peer,
            field::PEER_ADDRESS,
            "attributes.source.address",
            |address| self.read_address(address, span),
        )
    }

    /// `Address`, a oneof: a `socket_address` holds the client's address;
    /// another kind of address replaces it.
    fn read_address(
        &mut self,
        address: &[u8],
        span: &impl Fn(&[u8]) -> Range<usize>,
    ) -> Result<(), String> {
        const SOCKET: &str = "attributes.source.address.socket_address";
        fields(address, |tag, wire_type, bytes| {
            match tag {
                field::SOCKET_ADDRESS => {
                    nested(SOCKET, wire_type)?;
                    // A oneof set again merges into what it held; set anew,
                    // it starts empty.
                    let mut held = self.source_address.take().unwrap_or(0..0);
                    let address = "attributes.source.address.socket_address.address";
                    each_of(bytes, field::ADDRESS, address, |text| {
                        held = span(text);
                        Ok(())
                    })?;
                    self.source_address = Some(held);
                }
                field::PIPE | field::ENVOY_INTERNAL_ADDRESS => {
                    nested("attributes.source.address", wire_type)?;
                    self.source_address = None;
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// `AttributeContext.Request`: its `http.headers`.
    fn read_request(
        &mut self,
        request: &[u8],
        span: &impl Fn(&[u8]) -> Range<usize>,
    ) -> Result<(), String> {
        const HEADERS: &str = "attributes.request.http.headers";
        each_of(request, field::HTTP, "attributes.request.http", |http| {
            each_of(http, field::HEADERS, HEADERS, |entry| {
                let (name, value) = map_entry(entry, HEADERS)?;
                if let Some(i) = Header::ALL.iter().position(|h| h.name().as_bytes() == name) {
                    self.headers[i] = Some(span(value));
                }
                Ok(())
            })
        })
    }

    fn text(
        &self,
        span: Option<&Range<usize>>,
        what: impl fmt::Display,
    ) -> Result<Option<&str>, Status> {
        span.map(|span| {
            std::str::from_utf8(&self.message[span.clone()]).map_err(|_| {
                Status::invalid_argument(format!("CheckRequest: {what} must be UTF-8"))
            })
        })
        .transpose()
    }

    /// The client's address as Envoy reports it (`None`: not a socket address).
    pub fn source_address(&self) -> Result<Option<&str>, Status> {
        self.text(self.source_address.as_ref(), "attributes.source.address")
    }

    /// The value of one of the client's headers.
    pub fn header(&self, header: Header) -> Result<Option<&str>, Status> {
        let span = self.headers[header as usize].as_ref();
        self.text(span, format_args!("header {}", header.name()))
    }

    /// The value of one of the route's `context_extensions`.
    pub fn extension(&self, extension: Extension) -> Result<Option<&str>, Status> {
        let span = self.extensions[extension as usize].as_ref();
        self.text(
            span,
            format_args!("context_extensions {}", extension.name()),
        )
    }
}

// It holds the client's credentials: only which fields were sent is printed.
impl fmt::Debug for CheckCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = |span: &Option<Range<usize>>| span.is_some();
        f.debug_struct("CheckCall")
            .field("source_address", &sent(&self.source_address))
            .field("headers", &self.headers.each_ref().map(sent))
            .field("extensions", &self.extensions.each_ref().map(sent))
            .finish()
    }
}

/// A `CheckResponse` ready to be written.
#[derive(Debug)]
pub enum CheckReply {
    /// The request is allowed with `key`: keyward's headers and the key's
    /// dynamic metadata, written from the key.
    Allowed(Allowed),
    /// Any other answer, as prost writes it.
    Message(Box<CheckResponse>),
}

/// An allowed request's answer.
#[derive(Debug)]
pub struct Allowed {
    /// The key the request presented.
    pub key: Arc<CachedKey>,
    /// Whether `authorization` (holding a credential) is removed from the
    /// upstream request.
    pub remove_authorization: bool,
    /// Whether `x-api-key` (holding a credential) is removed too.
    pub remove_api_key: bool,
    /// Headers added to the client's response (the key's RateLimit headers).
    pub response_headers: Vec<HeaderValueOption>,
}

/// Field numbers of the messages of an allowed `CheckResponse`.
mod reply {
    /// `CheckResponse.status`, `.ok_response`, `.dynamic_metadata`.
    pub const STATUS: u32 = 1;
    pub const OK_RESPONSE: u32 = 3;
    pub const DYNAMIC_METADATA: u32 = 4;
    /// `OkHttpResponse.headers`, `.headers_to_remove`, `.response_headers_to_add`.
    pub const HEADERS: u32 = 2;
    pub const HEADERS_TO_REMOVE: u32 = 5;
    pub const RESPONSE_HEADERS_TO_ADD: u32 = 6;
    /// `HeaderValueOption.header`, `.append_action`.
    pub const HEADER: u32 = 1;
    pub const APPEND_ACTION: u32 = 3;
    /// `HeaderValue.key`, `.value`.
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    /// `Struct.fields` (a map: entries of key 1, value 2).
    pub const FIELDS: u32 = 1;
    /// `Value.string_value`, `.struct_value`.
    pub const STRING_VALUE: u32 = 3;
    pub const STRUCT_VALUE: u32 = 5;
}

/// Bytes of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Bytes of a proto3 string field: none when empty (the default is left out).
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

/// `HeaderValueOption { header: { key, value }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }`.
struct SetHeader<'a>(&'a str, &'a str);

impl SetHeader<'_> {
    const ACTION: i32 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;

    fn header_len(&self) -> usize {
        string_len(reply::KEY, self.0) + string_len(reply::VALUE, self.1)
    }

    fn len(&self) -> usize {
        delimited_len(reply::HEADER, self.header_len())
            + key_len(reply::APPEND_ACTION)
            + encoded_len_varint(Self::ACTION as u64)
    }

    fn put(&self, tag: u32, buf: &mut impl BufMut) {
        put_delimited_head(tag, self.len(), buf);
        put_delimited_head(reply::HEADER, self.header_len(), buf);
        put_string(reply::KEY, self.0, buf);
        put_string(reply::VALUE, self.1, buf);
        encode_key(reply::APPEND_ACTION, WireType::Varint, buf);
        encode_varint(Self::ACTION as u64, buf);
    }
}

/// A `map<string, Value>` entry holding a string value (a oneof: written
/// even when empty).
struct StringField<'a>(&'a str, &'a str);

impl StringField<'_> {
    fn value_len(&self) -> usize {
        delimited_len(reply::STRING_VALUE, self.1.len())
    }

    fn len(&self) -> usize {
        string_len(reply::KEY, self.0) + delimited_len(reply::VALUE, self.value_len())
    }

    fn put(&self, buf: &mut impl BufMut) {
        put_delimited_head(reply::FIELDS, self.len(), buf);
        put_string(reply::KEY, self.0, buf);
        put_delimited_head(reply::VALUE, self.value_len(), buf);
        put_delimited_head(reply::STRING_VALUE, self.1.len(), buf);
        buf.put_slice(self.1.as_bytes());
    }
}

impl Allowed {
    /// Writes the answer: `status` OK (an empty `google.rpc.Status`), then
    /// `ok_response`, then `dynamic_metadata`, as prost orders them.
    fn encode(&self, buf: &mut impl BufMut) {
        let key = &self.key;
        // One scope (the usual case) is borrowed; several are joined.
        let scopes: Cow<'_, str> = match key.scopes.as_slice() {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(one.as_str()),
            many => Cow::Owned(
                many.iter()
                    .map(|scope| scope.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        let expires_at = key
            .expires_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        let environment = key.environment.as_str();

        let workspace = key.workspace_id.as_deref();
        let upstream = [
            Some(SetHeader(KEY_ID, key.id.as_str())),
            Some(SetHeader(ORGANIZATION_ID, &key.organization_id)),
            Some(SetHeader(SCOPES, &scopes)),
            Some(SetHeader(ENVIRONMENT, environment)),
            workspace.map(|workspace| SetHeader(WORKSPACE_ID, workspace)),
        ];
        let remove = [
            self.remove_authorization
                .then_some(Header::Authorization.name()),
            self.remove_api_key.then_some(Header::ApiKey.name()),
            // Never let a client-sent workspace header through.
            workspace.is_none().then_some(WORKSPACE_ID),
        ];
        let ok_len = upstream
            .iter()
            .flatten()
            .map(|header| delimited_len(reply::HEADERS, header.len()))
            .sum::<usize>()
            + remove
                .iter()
                .flatten()
                .map(|name| string_len(reply::HEADERS_TO_REMOVE, name))
                .sum::<usize>()
            + message::encoded_len_repeated(reply::RESPONSE_HEADERS_TO_ADD, &self.response_headers);

        let metadata = [
            Some(StringField("key_id", key.id.as_str())),
            Some(StringField("organization_id", &key.organization_id)),
            Some(StringField("scopes", &scopes)),
            Some(StringField("environment", environment)),
            expires_at
                .as_deref()
                .map(|expires_at| StringField("expires_at", expires_at)),
            workspace.map(|workspace| StringField("workspace_id", workspace)),
        ];
        let inner_len = metadata
            .iter()
            .flatten()
            .map(|field| delimited_len(reply::FIELDS, field.len()))
            .sum::<usize>();
        let namespace_value_len = delimited_len(reply::STRUCT_VALUE, inner_len);
        let namespace_len = string_len(reply::KEY, METADATA_NAMESPACE)
            + delimited_len(reply::VALUE, namespace_value_len);
        let metadata_len = delimited_len(reply::FIELDS, namespace_len);

        put_delimited_head(reply::STATUS, 0, buf);
        put_delimited_head(reply::OK_RESPONSE, ok_len, buf);
        for header in upstream.iter().flatten() {
            header.put(reply::HEADERS, buf);
        }
        for name in remove.iter().flatten() {
            put_string(reply::HEADERS_TO_REMOVE, name, buf);
        }
        message::encode_repeated(reply::RESPONSE_HEADERS_TO_ADD, &self.response_headers, buf);
        put_delimited_head(reply::DYNAMIC_METADATA, metadata_len, buf);
        put_delimited_head(reply::FIELDS, namespace_len, buf);
        put_string(reply::KEY, METADATA_NAMESPACE, buf);
        put_delimited_head(reply::VALUE, namespace_value_len, buf);
        put_delimited_head(reply::STRUCT_VALUE, inner_len, buf);
        for field in metadata.iter().flatten() {
            field.put(buf);
        }
    }
}

impl WireReply for CheckReply {
    fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Allowed(allowed) => allowed.encode(buf),
            Self::Message(message) => message
                .encode(buf)
                .expect("an encode buffer grows as needed"),
        }
    }
}

impl CheckReply {
    /// The answer as Envoy reads it (for tests: what Envoy receives).
    pub fn to_message(&self) -> CheckResponse {
        let mut bytes = bytes::BytesMut::new();
        self.encode(&mut bytes);
        CheckResponse::decode(bytes.freeze()).expect("a valid message")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::ext_authz::v3::CheckRequestExt;
    use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse, OkHttpResponse};
    use envoy_types::pb::envoy::config::core::v3::{
        Address, Pipe, SocketAddress, address, socket_address::PortSpecifier,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use envoy_types::pb::google::rpc;
    use keyward_core::{ApiKey, Metadata, Scopes};

    use super::*;
    use crate::cache::tests::keyed;
    use crate::ext_authz::set_header;

    fn pairs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn socket(address: &str) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(PortSpecifier::PortValue(41000)),
                ..Default::default()
            })),
        })
    }

    fn request(
        source: Option<Address>,
        headers: &[(&str, &str)],
        extensions: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: source,
                    principal: "spiffe://peer".to_owned(),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    address: socket("10.0.0.2"),
                    ..Default::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: "17".to_owned(),
                        method: "GET".to_owned(),
                        headers: pairs(headers),
                        path: "/orders?page=2".to_owned(),
                        host: "orders.example".to_owned(),
                        size: 12,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: pairs(extensions),
                ..Default::default()
            }),
        }
    }

    /// Requests as Envoy sends them, and odd ones: parts missing, empty
    /// values, another kind of address.
    fn requests() -> Vec<CheckRequest> {
        let everything = [
            ("authorization", "Bearer sk_live_x"),
            ("x-api-key", "sk_live_y"),
            ("user-agent", "curl/8.5"),
            ("idempotency-key", "retry-1"),
            ("x-forwarded-for", "198.51.100.7, 10.0.0.1"),
            (":path", "/orders"),
            ("accept", "*/*"),
            ("Authorization", "Bearer not-lowercase"),
        ];
        let extensions = [
            ("required_scopes", "orders:read orders:write"),
            ("required_environment", "live"),
            ("cost", "3"),
            ("other", "x"),
        ];
        let pipe = Some(Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/run/envoy.sock".to_owned(),
                mode: 0,
            })),
        });
        vec![
            CheckRequest::default(),
            CheckRequest {
                attributes: Some(AttributeContext::default()),
            },
            request(socket("203.0.113.9"), &everything, &extensions),
            request(socket("2001:db8::1"), &[("x-api-key", "")], &[("cost", "")]),
            request(socket(""), &[("authorization", "ü")], &[]),
            request(None, &[], &extensions[..1]),
            request(pipe, &everything[..2], &[]),
            request(Some(Address { address: None }), &[("user-agent", "a")], &[]),
        ]
    }

    fn check(bytes: Vec<u8>) {
        let expected = CheckRequest::decode(bytes.as_slice()).expect("prost reads it");
        let call = CheckCall::decode(bytes.into()).expect("keyward reads it");
        assert_eq!(
            call.source_address().expect("UTF-8"),
            expected.get_client_address().map(String::as_str),
            "{expected:?}"
        );
        for header in Header::ALL {
            let sent = expected
                .get_client_headers()
                .and_then(|headers| headers.get(header.name()));
            assert_eq!(
                call.header(header).expect("UTF-8"),
                sent.map(String::as_str),
                "{header:?} of {expected:?}"
            );
        }
        for extension in Extension::ALL {
            let sent = expected
                .attributes
                .as_ref()
                .and_then(|attributes| attributes.context_extensions.get(extension.name()));
            assert_eq!(
                call.extension(extension).expect("UTF-8"),
                sent.map(String::as_str),
                "{extension:?} of {expected:?}"
            );
        }
    }

    /// Each request alone, and every two one after the other: protobuf reads
    /// two messages written back to back as one, the second merged into the
    /// first (the last value of a field or map key wins, a oneof set again
    /// takes the last variant).
    #[test]
    fn a_call_reads_what_prost_reads_even_merged() {
        let requests = requests();
        for first in &requests {
            check(first.encode_to_vec());
            for second in &requests {
                let mut bytes = first.encode_to_vec();
                bytes.extend(second.encode_to_vec());
                check(bytes);
            }
        }
    }

    proptest::proptest! {
        /// A request with a few bytes changed: when prost still reads it,
        /// keyward reads the same; either way, nothing panics.
        #[test]
        fn a_damaged_call_is_read_as_prost_reads_it_or_refused(
            changes in proptest::collection::vec((0..4096usize, proptest::num::u8::ANY), 1..4)
        ) {
            let mut bytes = requests()[2].encode_to_vec();
            for (at, byte) in changes {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if CheckRequest::decode(bytes.as_slice()).is_ok() {
                check(bytes);
            } else if let Ok(call) = CheckCall::decode(bytes.into()) {
                for header in Header::ALL {
                    let _ = call.header(header);
                }
                let _ = call.source_address();
            }
        }
    }

    /// `tag` holding `content`, length-delimited.
    fn delimited(tag: u32, content: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        put_delimited_head(tag, content.len(), &mut bytes);
        bytes.extend_from_slice(content);
        bytes
    }

    /// A request whose only header is `name: value`, `value` as raw bytes.
    fn with_header(name: &str, value: &[u8]) -> Vec<u8> {
        let mut entry = delimited(field::MAP_KEY, name.as_bytes());
        entry.extend(delimited(field::MAP_VALUE, value));
        let http = delimited(field::HEADERS, &entry);
        let request = delimited(field::HTTP, &http);
        let attributes = delimited(field::REQUEST, &request);
        delimited(field::ATTRIBUTES, &attributes)
    }

    #[test]
    fn a_field_read_must_be_utf8_and_others_are_not_read() {
        let call = CheckCall::decode(with_header("authorization", b"Bearer \xff").into())
            .expect("well-formed");
        let refused = call.header(Header::Authorization).expect_err("not UTF-8");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("authorization"), "{refused:?}");
        // Nothing of it leaks into the message.
        assert!(!refused.message().contains("Bearer"), "{refused:?}");

        // prost refuses the whole message for any string that is not UTF-8;
        // keyward reads the headers it needs only.
        let bytes = with_header("referer", b"\xff");
        assert!(CheckRequest::decode(bytes.as_slice()).is_err());
        let call = CheckCall::decode(bytes.into()).expect("well-formed");
        assert_eq!(call.header(Header::Authorization).expect("absent"), None);
    }

    #[test]
    fn a_malformed_call_is_refused() {
        let whole = requests()[2].encode_to_vec();
        for cut in [1, 2, whole.len() / 2, whole.len() - 1] {
            assert!(
                CheckCall::decode(Bytes::copy_from_slice(&whole[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        // `attributes` as a varint.
        let mut wrong = Vec::new();
        encode_key(field::ATTRIBUTES, WireType::Varint, &mut wrong);
        encode_varint(1, &mut wrong);
        assert!(CheckRequest::decode(wrong.as_slice()).is_err());
        assert!(CheckCall::decode(wrong.into()).is_err());
    }

    fn string_value(value: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(value.to_owned())),
        }
    }

    /// The allowed answer built with prost's generated structs.
    fn expected(allowed: &Allowed) -> CheckResponse {
        let key = &allowed.key;
        let scopes = key
            .scopes
            .as_slice()
            .iter()
            .map(|scope| scope.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut upstream = vec![
            set_header(KEY_ID, key.id.as_str()),
            set_header(ORGANIZATION_ID, &key.organization_id),
            set_header(SCOPES, &scopes),
            set_header(ENVIRONMENT, key.environment.as_str()),
        ];
        let mut remove = Vec::new();
        if allowed.remove_authorization {
            remove.push("authorization".to_owned());
        }
        if allowed.remove_api_key {
            remove.push("x-api-key".to_owned());
        }
        let mut fields = HashMap::from([
            ("key_id".to_owned(), string_value(key.id.as_str())),
            (
                "organization_id".to_owned(),
                string_value(&key.organization_id),
            ),
            ("scopes".to_owned(), string_value(&scopes)),
            (
                "environment".to_owned(),
                string_value(key.environment.as_str()),
            ),
        ]);
        if let Some(expires_at) = key.expires_at {
            fields.insert(
                "expires_at".to_owned(),
                string_value(&expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            );
        }
        match &key.workspace_id {
            Some(workspace) => {
                upstream.push(set_header(WORKSPACE_ID, workspace));
                fields.insert("workspace_id".to_owned(), string_value(workspace));
            }
            None => remove.push(WORKSPACE_ID.to_owned()),
        }
        CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: upstream,
                headers_to_remove: remove,
                response_headers_to_add: allowed.response_headers.clone(),
                ..Default::default()
            })),
            dynamic_metadata: Some(Struct {
                fields: HashMap::from([(
                    METADATA_NAMESPACE.to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(Struct { fields })),
                    },
                )]),
            }),
        }
    }

    #[test]
    fn an_allowed_answer_is_what_prost_would_write() {
        let scope_sets: [&[&str]; 3] = [&[], &["orders:read"], &["a:b", "orders:read", "x"]];
        for scopes in scope_sets {
            for workspace in [None, Some("ws_1")] {
                for expires in [false, true] {
                    for (remove_authorization, remove_api_key) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        for throttled in [false, true] {
                            let (_, cached) = keyed(
                                Scopes::parse(scopes).expect("valid scopes"),
                                Metadata::default(),
                            );
                            let mut key: ApiKey = (*cached).clone();
                            key.workspace_id = workspace.map(str::to_owned);
                            key.expires_at = expires.then_some(key.created_at);
                            let allowed = Allowed {
                                key: Arc::new(CachedKey::new(key)),
                                remove_authorization,
                                remove_api_key,
                                response_headers: if throttled {
                                    vec![
                                        set_header("ratelimit-policy", "\"minute\";q=60;w=60"),
                                        set_header("ratelimit", "\"minute\";r=59;t=60"),
                                    ]
                                } else {
                                    Vec::new()
                                },
                            };
                            let want = expected(&allowed);
                            let reply = CheckReply::Allowed(allowed);
                            assert_eq!(reply.to_message(), want);
                        }
                    }
                }
            }
        }
    }
}
