//! What keyward takes from the connection rather than from the client: a cap
//! on open connections, TLS, and the TCP peer (each [`Connection`]'s connect
//! info, plaintext or TLS, from which the admin API's auth layer takes the
//! client's address).
//!
//! [`LimitedIncoming`] hands tonic accepted TCP connections (with
//! `TCP_NODELAY`), each holding a permit of a semaphore; a connection beyond
//! the cap is closed at once, so its client fails fast instead of waiting.
//! [`ServerIncoming`] adds TLS: each accepted connection's handshake runs in
//! its own task with a deadline, so a slow or silent client delays no other
//! accept, and the permit is held from accept to close (handshakes in
//! progress count against the cap).
//! [`InFlightLimitLayer`] caps the requests handled at once over all
//! connections: a request beyond it is answered RESOURCE_EXHAUSTED at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tower::{Layer, Service};

use crate::tls::ServerTls;

/// Accepted connections, at most a fixed number open at once.
#[derive(Debug)]
pub struct LimitedIncoming {
    inner: TcpIncoming,
    permits: Arc<Semaphore>,
    /// Whether the last connection was refused (logged once per episode).
    refusing: bool,
}

impl LimitedIncoming {
    /// At most `max_connections` of `inner`'s connections open at once.
    pub fn new(inner: TcpIncoming, max_connections: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            refusing: false,
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<LimitedConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let stream = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            };
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    if std::mem::take(&mut self.refusing) {
                        tracing::info!("accepting connections again");
                    }
                    return Poll::Ready(Some(Ok(LimitedConnection {
                        stream,
                        _permit: permit,
                    })));
                }
                Err(_) => {
                    if !std::mem::replace(&mut self.refusing, true) {
                        tracing::warn!(
                            "connection limit reached; closing new connections until one ends"
                        );
                    }
                    drop(stream);
                }
            }
        }
    }
}

/// An accepted connection holding one permit of the connection cap until it
/// is dropped.
#[derive(Debug)]
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepted connections, capped, and over TLS when given a [`ServerTls`].
#[derive(Debug)]
pub struct ServerIncoming {
    inner: LimitedIncoming,
    tls: Option<(ServerTls, Duration)>,
    handshakes: JoinSet<Option<TlsStream<LimitedConnection>>>,
}

impl ServerIncoming {
    /// `inner`'s connections as they are (plaintext).
    pub fn plaintext(inner: LimitedIncoming) -> Self {
        Self {
            inner,
            tls: None,
            handshakes: JoinSet::new(),
        }
    }

    /// `inner`'s connections once their TLS handshake with `tls`'s current
    /// configuration completed within `handshake_timeout`; a connection
    /// whose handshake fails or is too slow is closed (and logged at debug:
    /// anyone can make a handshake fail).
    pub fn tls(inner: LimitedIncoming, tls: ServerTls, handshake_timeout: Duration) -> Self {
        Self {
            inner,
            tls: Some((tls, handshake_timeout)),
            handshakes: JoinSet::new(),
        }
    }
}

impl Stream for ServerIncoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some((tls, timeout)) = &this.tls else {
            return Pin::new(&mut this.inner)
                .poll_next(cx)
                .map(|next| next.map(|accepted| accepted.map(Connection::Plain)));
        };
        // Start a handshake for every connection accepted so far.
        let mut listening = true;
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(connection))) => {
                    let acceptor = tls.acceptor();
                    let timeout = *timeout;
                    this.handshakes.spawn(async move {
                        let peer = connection.connect_info().remote_addr();
                        match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
                            Ok(Ok(stream)) => Some(stream),
                            Ok(Err(error)) => {
                                tracing::debug!(?peer, %error, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(?peer, "TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => {
                    listening = false;
                    break;
                }
                Poll::Pending => break,
            }
        }
        // Hand over the first completed handshake.
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => {
                    return Poll::Ready(Some(Ok(Connection::Tls(Box::new(stream)))));
                }
                // A failed handshake (logged by its task); its permit is back.
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "a TLS handshake task failed");
                }
                Poll::Ready(None) if !listening => return Poll::Ready(None),
                // The listener woke us for new connections, or a handshake will.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A connection tonic serves: plaintext or TLS, with its permit of the
/// connection cap either way.
#[derive(Debug)]
pub enum Connection {
    /// Plaintext.
    Plain(LimitedConnection),
    /// TLS, handshake done.
    Tls(Box<TlsStream<LimitedConnection>>),
}

impl Connected for Connection {
    // The TCP peer in both cases, so the auth layer reads one extension type
    // whatever the transport.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(connection) => connection.connect_info(),
            Self::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(connection) => connection.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Caps the requests being handled at once over all connections. The permit
/// is taken in `call`, never waited for: a request beyond the cap gets
/// RESOURCE_EXHAUSTED at once (readiness is never reported as pending, so no
/// request is queued on a full server whatever its connection does), and
/// the permit is held until the response future ends (the request timeout
/// ends a slow one).
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// At most `max` requests at once; one semaphore shared by every clone.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

/// The service produced by [`InFlightLimitLayer`].
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, ResBody> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Box::pin(std::future::ready(Ok(crate::error::overloaded())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}
