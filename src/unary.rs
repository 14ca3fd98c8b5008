//! [`UnaryServer`]: a gRPC service of one unary method, written out rather
//! than generated, for the two methods on the hot path (`ValidateKey`, and
//! Envoy's ext_authz `Check`), and [`UnaryRouteLayer`], which hands their
//! calls to it ahead of tonic's router.
//!
//! tonic's generated servers box every call's handler future twice (once in
//! `async_trait`, once in the method wrapper), read and write messages with
//! prost, and run each call through `tonic::server::Grpc`'s general
//! machinery: a streaming decoder with its own buffer (the request copied
//! into it), compression negotiation, an encoder body that buffers and
//! frames each message of a stream. A unary call needs none of it. Here the
//! request's one message is taken from the body's DATA frames as received
//! (no copy when one frame holds it, as one holds a small request),
//! read in place by the method's [`WireCall`], and the answer is written by
//! its [`WireReply`] into one buffer behind the gRPC frame header, sent as
//! one DATA frame and the `grpc-status: 0` trailers. The protocol's rules
//! are kept as tonic keeps them (its statuses and messages), with one
//! deliberate difference: a second request message on the unary call is
//! INTERNAL (as gRPC's Go, Java and C cores answer), where tonic reads and
//! drops it. README "Decisions" has the entry. The few protobuf helpers
//! both methods' messages share are here too.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::Either;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Version};
use http_body::{Body, Frame};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::Layer;

/// One unary gRPC method and what serves it.
pub trait UnaryMethod: Clone + Send + Sync + 'static {
    /// The service's full name (`package.Service`).
    const SERVICE: &'static str;
    /// The method's route (`/package.Service/Method`).
    const ROUTE: &'static str;
    /// The request, as read from the wire.
    type Call: WireCall;
    /// The answer, as written to the wire. Its response metadata must not
    /// name gRPC's own headers (`grpc-status`, `content-type`, …): unlike
    /// tonic's, this server does not strip them (both methods set none).
    type Reply: WireReply;

    /// Answers one call.
    fn call(
        self,
        request: Request<Self::Call>,
    ) -> impl Future<Output = Result<Response<Self::Reply>, Status>> + Send;
}

/// A request read from its bytes as received (a reference-counted slice of
/// the connection's read buffer, not a copy).
pub trait WireCall: Sized + Send + 'static {
    /// Reads a whole serialized message: an error is the caller's INTERNAL,
    /// as tonic's prost codec answers a message it cannot read.
    fn decode(message: Bytes) -> Result<Self, String>;
}

/// An answer written straight into the buffer that is sent.
pub trait WireReply: Send + 'static {
    /// The reply buffer's first capacity (it grows if a reply needs more).
    const BUFFER_SIZE: usize = 1024;

    /// Writes the whole serialized message.
    fn encode(&self, buf: &mut impl BufMut);
}

/// tonic's default limit on a request message (4 MiB).
const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// A gRPC message's frame header: the compressed flag and the length.
const FRAME_HEADER: usize = 5;

static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// The tonic service serving `M` (no compression, like the generated
/// servers by default); any other route is UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct UnaryServer<M> {
    method: M,
    max_decoding_message_size: usize,
    max_encoding_message_size: Option<usize>,
}

impl<M: UnaryMethod> UnaryServer<M> {
    /// The service over `method`, with tonic's default message-size limits.
    pub fn new(method: M) -> Self {
        Self {
            method,
            max_decoding_message_size: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
            max_encoding_message_size: None,
        }
    }

    /// Largest request accepted (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = limit;
        self
    }

    /// Largest answer sent (tonic's default: unlimited).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding_message_size = Some(limit);
        self
    }

    /// Serves one call of `M`'s route.
    fn serve<B>(
        &self,
        request: http::Request<B>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<StdError> + Send + 'static,
    {
        let method = self.method.clone();
        let limit = self.max_decoding_message_size;
        let max_reply = self.max_encoding_message_size;
        Box::pin(async move {
            let answer = match read_call::<M::Call, B>(request, limit).await {
                Ok(call) => method.call(call).await,
                Err(status) => Err(status),
            };
            Ok(answer
                .and_then(|response| reply(response, max_reply))
                .unwrap_or_else(Status::into_http))
        })
    }
}

impl<M: UnaryMethod> NamedService for UnaryServer<M> {
    const NAME: &'static str = M::SERVICE;
}

impl<M, B> Service<http::Request<B>> for UnaryServer<M>
where
    M: UnaryMethod,
    B: Body + Send + 'static,
    B::Data: Send,
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
        self.serve(request)
    }
}

/// The call's one message, read as tonic's unary server reads it: an
/// unsupported `grpc-encoding` is UNIMPLEMENTED (naming the encodings
/// accepted), a message over `limit` OUT_OF_RANGE, a missing, cut-short,
/// compressed-flagged or second message INTERNAL.
async fn read_call<C: WireCall, B>(
    request: http::Request<B>,
    limit: usize,
) -> Result<Request<C>, Status>
where
    B: Body,
    B::Error: Into<StdError>,
{
    if let Some(encoding) = request.headers().get(&GRPC_ENCODING)
        && encoding != "identity"
    {
        return Err(unsupported_encoding(encoding));
    }
    let (parts, body) = request.into_parts();
    let message = read_message(body, limit).await?;
    let call = C::decode(message).map_err(Status::internal)?;
    Ok(Request::from_http(http::Request::from_parts(parts, call)))
}

fn unsupported_encoding(encoding: &HeaderValue) -> Status {
    let name = String::from_utf8_lossy(encoding.as_bytes());
    let mut status = Status::unimplemented(format!(
        "Content is compressed with `{name}` which isn't supported"
    ));
    status.metadata_mut().insert(
        GRPC_ACCEPT_ENCODING.as_str(),
        "identity".parse().expect("ASCII"),
    );
    status
}

/// The one gRPC message of a unary request body, read to the end of the
/// stream. Holds at most one frame past the message's end before refusing.
async fn read_message<B>(body: B, limit: usize) -> Result<Bytes, Status>
where
    B: Body,
    B::Error: Into<StdError>,
{
    let mut body = pin!(body);
    let mut received = Received::One(Bytes::new());
    let mut expected: Option<usize> = None;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|error| Status::from_error(error.into()))?;
        // Request trailers are not read: neither method looks at metadata.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let data = data.copy_to_bytes(data.remaining());
        if data.is_empty() {
            continue;
        }
        received.push(data);
        let bytes = received.as_slice();
        if expected.is_none() && bytes.len() >= FRAME_HEADER {
            expected = Some(FRAME_HEADER + message_length(&bytes[..FRAME_HEADER], limit)?);
        }
        if let Some(expected) = expected
            && bytes.len() > expected
        {
            return Err(Status::internal(
                "protocol error: a unary call carried more than one request message",
            ));
        }
    }
    match expected {
        None if received.as_slice().is_empty() => Err(Status::internal("Missing request message.")),
        Some(expected) if received.as_slice().len() == expected => {
            let mut whole = received.into_bytes();
            whole.advance(FRAME_HEADER);
            Ok(whole)
        }
        _ => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
}

/// The message length a frame header (five bytes) announces, under `limit`.
fn message_length(header: &[u8], limit: usize) -> Result<usize, Status> {
    match header[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(len)
}

/// The request body's bytes so far: the first DATA frame kept as received,
/// copied together only when the message spans several.
enum Received {
    One(Bytes),
    Several(BytesMut),
}

impl Received {
    fn push(&mut self, data: Bytes) {
        match self {
            Self::One(first) if first.is_empty() => *first = data,
            Self::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&data);
                *self = Self::Several(joined);
            }
            Self::Several(joined) => joined.extend_from_slice(&data),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::One(bytes) => bytes,
            Self::Several(bytes) => bytes,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Self::One(bytes) => bytes,
            Self::Several(bytes) => bytes.freeze(),
        }
    }
}

/// The HTTP response of an answered call: its metadata as headers, the
/// message as one DATA frame, then `grpc-status: 0`. A message over
/// `max_reply` is OUT_OF_RANGE instead (as tonic, though tonic sends it as
/// trailers after the headers; this is the trailers-only response).
fn reply<R: WireReply>(
    response: Response<R>,
    max_reply: Option<usize>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let (metadata, message, extensions) = response.into_parts();
    let mut frame = BytesMut::with_capacity(R::BUFFER_SIZE);
    frame.put_bytes(0, FRAME_HEADER);
    message.encode(&mut frame);
    let len = frame.len() - FRAME_HEADER;
    if let Some(limit) = max_reply
        && len > limit
    {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    let len = u32::try_from(len).map_err(|_| Status::out_of_range("message too large"))?;
    frame[1..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
    let mut response = http::Response::new(tonic::body::Body::new(UnaryBody {
        message: Some(frame.freeze()),
        done: false,
    }));
    *response.version_mut() = Version::HTTP_2;
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, GRPC_CONTENT_TYPE.clone());
    *response.extensions_mut() = extensions;
    Ok(response)
}

/// A unary answer's body: the framed message, then the OK trailers.
struct UnaryBody {
    message: Option<Bytes>,
    done: bool,
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Hands the calls of `M`'s route to its [`UnaryServer`] ahead of the
/// services this layer wraps (tonic's router): the hot methods skip the
/// router's path matching and its per-call URL parameters. Put it innermost,
/// so every other layer still sees those calls. Any other request, and any
/// other method of `M`'s service, goes to the wrapped service.
#[derive(Debug, Clone)]
pub struct UnaryRouteLayer<M> {
    server: UnaryServer<M>,
}

impl<M: UnaryMethod> UnaryRouteLayer<M> {
    /// Serves `server`'s route ahead of the wrapped service.
    pub fn new(server: UnaryServer<M>) -> Self {
        Self { server }
    }
}

impl<M: Clone, S> Layer<S> for UnaryRouteLayer<M> {
    type Service = UnaryRoute<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryRoute {
            server: self.server.clone(),
            inner,
        }
    }
}

/// See [`UnaryRouteLayer`].
#[derive(Debug, Clone)]
pub struct UnaryRoute<M, S> {
    server: UnaryServer<M>,
    inner: S,
}

impl<M, S, B> Service<http::Request<B>> for UnaryRoute<M, S>
where
    M: UnaryMethod,
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<UnaryFuture<S::Error>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == M::ROUTE {
            Either::Left(UnaryFuture {
                served: self.server.serve(request),
                error: std::marker::PhantomData,
            })
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

/// A [`UnaryServer`]'s answer as the wrapped service's result type.
pub struct UnaryFuture<E> {
    served: BoxFuture<http::Response<tonic::body::Body>, Infallible>,
    error: std::marker::PhantomData<fn() -> E>,
}

impl<E> Future for UnaryFuture<E> {
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.served
            .as_mut()
            .poll(cx)
            .map(|Ok(response)| Ok(response))
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::{BufMut, Bytes};
    use futures_util::stream;
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tonic::codegen::{Service, http};
    use tonic::{Code, Request, Response, Status};

    use super::{UnaryMethod, UnaryServer, WireCall, WireReply};

    /// A method that answers its request's bytes, repeated `times` (the
    /// request's first byte).
    #[derive(Clone)]
    struct Echo;

    struct Said(Bytes);

    impl WireCall for Said {
        fn decode(message: Bytes) -> Result<Self, String> {
            Ok(Self(message))
        }
    }

    impl WireReply for Said {
        fn encode(&self, buf: &mut impl BufMut) {
            let times = self.0.first().copied().unwrap_or(1);
            for _ in 0..times {
                buf.put_slice(&self.0);
            }
        }
    }

    impl UnaryMethod for Echo {
        const SERVICE: &'static str = "test.Echo";
        const ROUTE: &'static str = "/test.Echo/Say";
        type Call = Said;
        type Reply = Said;

        async fn call(self, request: Request<Said>) -> Result<Response<Said>, Status> {
            let said = request.into_inner();
            if said.0.is_empty() {
                return Err(Status::invalid_argument("say something"));
            }
            Ok(Response::new(said))
        }
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    /// The request `route` with these DATA frames as its body.
    fn request(
        route: &str,
        frames: Vec<Vec<u8>>,
    ) -> http::Request<StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>>>
    {
        let body = stream::iter(
            frames
                .into_iter()
                .map(|data| Ok(Frame::data(Bytes::from(data)))),
        );
        http::Request::builder()
            .uri(format!("http://localhost{route}"))
            .header("content-type", "application/grpc")
            .body(StreamBody::new(body))
            .unwrap()
    }

    struct Answer {
        headers: HeaderMap,
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
    }

    impl Answer {
        /// The answer's status: from the trailers, or the headers of a
        /// trailers-only answer.
        fn code(&self) -> Code {
            let status = self.trailers.as_ref().unwrap_or(&self.headers);
            Status::from_header_map(status).map_or(Code::Ok, |status| status.code())
        }

        fn message(&self) -> String {
            let status = self.trailers.as_ref().unwrap_or(&self.headers);
            Status::from_header_map(status).map_or(String::new(), |s| s.message().to_owned())
        }
    }

    async fn call<B>(server: &mut UnaryServer<Echo>, request: http::Request<B>) -> Answer
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        let response = server.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        Answer {
            headers: parts.headers,
            data: collected.to_bytes().to_vec(),
            trailers,
        }
    }

    #[tokio::test]
    async fn an_answer_is_one_framed_message_then_ok_trailers() {
        let mut server = UnaryServer::new(Echo);
        let answer = call(&mut server, request(Echo::ROUTE, vec![frame(b"\x02hi")])).await;
        assert_eq!(answer.headers["content-type"], "application/grpc");
        assert_eq!(answer.data, frame(b"\x02hi\x02hi"));
        let trailers = answer.trailers.as_ref().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(answer.code(), Code::Ok);
    }

    #[tokio::test]
    async fn a_message_split_over_frames_is_read_whole() {
        let mut server = UnaryServer::new(Echo);
        let whole = frame(b"\x01split over many frames");
        let pieces = whole.chunks(3).map(<[u8]>::to_vec).collect();
        let answer = call(&mut server, request(Echo::ROUTE, pieces)).await;
        assert_eq!(answer.code(), Code::Ok);
        assert_eq!(answer.data, frame(b"\x01split over many frames"));
        // An empty DATA frame anywhere changes nothing.
        let pieces = vec![
            vec![],
            whole[..2].to_vec(),
            vec![],
            whole[2..].to_vec(),
            vec![],
        ];
        let answer = call(&mut server, request(Echo::ROUTE, pieces)).await;
        assert_eq!(answer.data, frame(b"\x01split over many frames"));
    }

    #[tokio::test]
    async fn the_methods_error_is_a_trailers_only_answer() {
        let mut server = UnaryServer::new(Echo);
        let answer = call(&mut server, request(Echo::ROUTE, vec![frame(b"")])).await;
        assert_eq!(answer.code(), Code::InvalidArgument);
        assert_eq!(answer.message(), "say something");
        assert!(answer.data.is_empty());
        assert!(answer.trailers.is_none());
    }

    #[tokio::test]
    async fn a_malformed_request_stream_is_refused_as_tonic_refuses_it() {
        let mut server = UnaryServer::new(Echo).max_decoding_message_size(16);
        let mut compressed = frame(b"\x01hi");
        compressed[0] = 1;
        let mut bad_flag = frame(b"\x01hi");
        bad_flag[0] = 7;
        let whole = frame(b"\x01hi");
        let cases: Vec<(&str, Vec<Vec<u8>>, Code, &str)> = vec![
            (
                "no message",
                vec![],
                Code::Internal,
                "Missing request message.",
            ),
            (
                "a partial header",
                vec![whole[..3].to_vec()],
                Code::Internal,
                "Unexpected EOF",
            ),
            (
                "a cut-short message",
                vec![whole[..6].to_vec()],
                Code::Internal,
                "Unexpected EOF",
            ),
            (
                "compressed",
                vec![compressed],
                Code::Internal,
                "compressed-flag",
            ),
            (
                "an unknown flag",
                vec![bad_flag],
                Code::Internal,
                "invalid compression flag: 7",
            ),
            (
                "over the limit",
                vec![frame(&[1; 17])],
                Code::OutOfRange,
                "found 17 bytes",
            ),
            (
                "two messages",
                vec![frame(b"\x01hi"), frame(b"\x01again")],
                Code::Internal,
                "more than one request message",
            ),
            (
                "two messages in one frame",
                vec![[frame(b"\x01hi"), frame(b"\x01again")].concat()],
                Code::Internal,
                "more than one request message",
            ),
        ];
        for (case, frames, code, message) in cases {
            let answer = call(&mut server, request(Echo::ROUTE, frames)).await;
            assert_eq!(answer.code(), code, "{case}");
            assert!(
                answer.message().contains(message),
                "{case}: {}",
                answer.message()
            );
        }
        // At the limit is fine.
        let answer = call(&mut server, request(Echo::ROUTE, vec![frame(&[1; 16])])).await;
        assert_eq!(answer.code(), Code::Ok);
    }

    #[tokio::test]
    async fn a_compressed_request_is_unimplemented_naming_identity() {
        let mut server = UnaryServer::new(Echo);
        let mut gzip = request(Echo::ROUTE, vec![frame(b"\x01hi")]);
        gzip.headers_mut()
            .insert("grpc-encoding", "gzip".parse().unwrap());
        let answer = call(&mut server, gzip).await;
        assert_eq!(answer.code(), Code::Unimplemented);
        assert!(answer.message().contains("`gzip`"), "{}", answer.message());
        assert_eq!(answer.headers["grpc-accept-encoding"], "identity");
        // `identity` is no compression.
        let mut identity = request(Echo::ROUTE, vec![frame(b"\x01hi")]);
        identity
            .headers_mut()
            .insert("grpc-encoding", "identity".parse().unwrap());
        assert_eq!(call(&mut server, identity).await.code(), Code::Ok);
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_out_of_range() {
        let mut server = UnaryServer::new(Echo).max_encoding_message_size(8);
        let answer = call(&mut server, request(Echo::ROUTE, vec![frame(b"\x02four")])).await;
        assert_eq!(answer.code(), Code::OutOfRange);
        assert!(
            answer.message().contains("found 10 bytes"),
            "{}",
            answer.message()
        );
        let answer = call(&mut server, request(Echo::ROUTE, vec![frame(b"\x01four")])).await;
        assert_eq!(answer.code(), Code::Ok);
    }

    #[tokio::test]
    async fn another_route_is_unimplemented() {
        let mut server = UnaryServer::new(Echo);
        let answer = call(
            &mut server,
            request("/test.Echo/Shout", vec![frame(b"\x01hi")]),
        )
        .await;
        assert_eq!(answer.code(), Code::Unimplemented);
    }
}
