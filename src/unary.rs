//! [`UnaryServer`]: a gRPC service of one unary method, written out rather
//! than generated, for the two methods on the hot path (`ValidateKey`, and
//! Envoy's ext_authz `Check`).
//!
//! tonic's generated servers box every call's handler future twice (once in
//! `async_trait`, once in the method wrapper) and read and write messages
//! with prost. Here the handler future is boxed once, and the messages go
//! through [`WireCodec`]: the method's request type reads the request in
//! place ([`WireCall`]), its answer type writes itself straight into tonic's
//! buffer ([`WireReply`]), without building prost's structs. The few
//! protobuf helpers both methods' messages share are here too.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// One unary gRPC method and what serves it.
pub trait UnaryMethod: Clone + Send + Sync + 'static {
    /// The service's full name (`package.Service`).
    const SERVICE: &'static str;
    /// The method's route (`/package.Service/Method`).
    const ROUTE: &'static str;
    /// The request, as read from the wire.
    type Call: WireCall;
    /// The answer, as written to the wire.
    type Reply: WireReply;

    /// Answers one call.
    fn call(
        self,
        request: Request<Self::Call>,
    ) -> impl Future<Output = Result<Response<Self::Reply>, Status>> + Send;
}

/// The tonic service serving `M` (no compression, like the generated
/// servers by default); any other route is UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct UnaryServer<M> {
    method: M,
    max_decoding_message_size: Option<usize>,
    max_encoding_message_size: Option<usize>,
}

impl<M: UnaryMethod> UnaryServer<M> {
    /// The service over `method`, with tonic's default message-size limits.
    pub fn new(method: M) -> Self {
        Self {
            method,
            max_decoding_message_size: None,
            max_encoding_message_size: None,
        }
    }

    /// Largest request accepted (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// Largest answer sent (tonic's default: unlimited).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding_message_size = Some(limit);
        self
    }
}

impl<M: UnaryMethod> NamedService for UnaryServer<M> {
    const NAME: &'static str = M::SERVICE;
}

impl<M, B> Service<http::Request<B>> for UnaryServer<M>
where
    M: UnaryMethod,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != M::ROUTE {
            let unknown = Status::unimplemented(format!("{} has no such method", M::SERVICE));
            return Box::pin(std::future::ready(Ok(unknown.into_http())));
        }
        let method = Method(self.method.clone());
        let codec = WireCodec::<M::Call, M::Reply>(PhantomData);
        let mut grpc = Grpc::new(codec).apply_max_message_size_config(
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        Box::pin(async move { Ok(grpc.unary(method, request).await) })
    }
}

/// `M` as tonic's unary calls take a method.
struct Method<M>(M);

impl<M: UnaryMethod> UnaryService<M::Call> for Method<M> {
    type Response = M::Reply;
    type Future = BoxFuture<Response<M::Reply>, Status>;

    fn call(&mut self, request: Request<M::Call>) -> Self::Future {
        Box::pin(self.0.clone().call(request))
    }
}

/// A request read from its bytes as tonic received them (a reference-counted
/// slice of its read buffer, not a copy).
pub trait WireCall: Sized + Send + 'static {
    /// Reads a whole serialized message: an error is the caller's INTERNAL,
    /// as tonic's prost codec answers a message it cannot read.
    fn decode(message: Bytes) -> Result<Self, String>;
}

/// An answer written straight into tonic's buffer.
pub trait WireReply: Send + 'static {
    /// The size of tonic's read and write buffers for this method's
    /// messages (tonic's default: 8 KiB per call).
    const BUFFER_SIZE: usize = 8 * 1024;

    /// Writes the whole serialized message.
    fn encode(&self, buf: &mut impl BufMut);
}

/// The codec of a [`UnaryMethod`]: `C` read by [`WireCall::decode`], `R`
/// written by [`WireReply::encode`].
pub struct WireCodec<C, R>(PhantomData<fn() -> (C, R)>);

impl<C, R> Clone for WireCodec<C, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, R> Copy for WireCodec<C, R> {}

impl<C, R: WireReply> WireCodec<C, R> {
    /// tonic's default: yield to the runtime after this many bytes.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    fn buffer_settings() -> BufferSettings {
        BufferSettings::new(R::BUFFER_SIZE, Self::YIELD_THRESHOLD)
    }
}

impl<C: WireCall, R: WireReply> Codec for WireCodec<C, R> {
    type Encode = R;
    type Decode = C;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl<C: WireCall, R: WireReply> Encoder for WireCodec<C, R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        Self::buffer_settings()
    }
}

impl<C: WireCall, R: WireReply> Decoder for WireCodec<C, R> {
    type Item = C;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<C>, Status> {
        let message = buf.copy_to_bytes(buf.remaining());
        C::decode(message).map(Some).map_err(Status::internal)
    }

    fn buffer_settings(&self) -> BufferSettings {
        Self::buffer_settings()
    }
}

/// The length-delimited bytes at the front of `rest`, taken off it.
pub(crate) fn length_delimited<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = decode_varint(rest).map_err(|e| e.to_string())?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= rest.len())
        .ok_or("buffer underflow")?;
    let (bytes, after) = rest.split_at(len);
    *rest = after;
    Ok(bytes)
}

/// The tag and length of a length-delimited field of `len` bytes.
pub(crate) fn put_delimited_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A proto3 string field, left out when empty (its default), as prost
/// writes it.
pub(crate) fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited_head(tag, value.len(), buf);
        buf.put_slice(value.as_bytes());
    }
}
