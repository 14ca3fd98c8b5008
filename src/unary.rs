//! [`UnaryServer`]: a gRPC service of one unary method, written out rather
//! than generated, for the two methods on the hot path (`ValidateKey`, and
//! Envoy's ext_authz `Check`).
//!
//! tonic's generated servers box every call's handler future twice (once in
//! `async_trait`, once in the method wrapper) and read and write messages
//! with prost. Here the handler future is boxed once, and each method brings
//! its own codec, which reads the request in place and writes the answer
//! without building prost's structs.

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use tonic::codec::Codec;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// One unary gRPC method and what serves it.
pub trait UnaryMethod: Clone + Send + Sync + 'static {
    /// The service's full name (`package.Service`).
    const SERVICE: &'static str;
    /// The method's route (`/package.Service/Method`).
    const ROUTE: &'static str;
    /// Reads requests and writes answers.
    type Codec: Codec<Encode: Send, Decode: Send> + Default + Send + 'static;

    /// Answers one call.
    fn call(
        self,
        request: Request<<Self::Codec as Codec>::Decode>,
    ) -> impl Future<Output = Result<Response<<Self::Codec as Codec>::Encode>, Status>> + Send;
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
        let mut grpc = Grpc::new(M::Codec::default()).apply_max_message_size_config(
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        Box::pin(async move { Ok(grpc.unary(method, request).await) })
    }
}

/// `M` as tonic's unary calls take a method.
struct Method<M>(M);

impl<M: UnaryMethod> UnaryService<<M::Codec as Codec>::Decode> for Method<M> {
    type Response = <M::Codec as Codec>::Encode;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<<M::Codec as Codec>::Decode>) -> Self::Future {
        Box::pin(self.0.clone().call(request))
    }
}
