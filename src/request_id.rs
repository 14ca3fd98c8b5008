//! `x-request-id` on every response: echoed when the caller sent one,
//! generated otherwise. Everything logged while a request is handled is in a
//! `request` span carrying that id and the caller's W3C `traceparent`, when
//! it sent a well-formed one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Adds `x-request-id` to requests that lack one and to every response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service produced by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) if id.len() <= 128 => id.clone(),
            _ => {
                let id = HeaderValue::from_bytes(&keyward_core::new_ulid_bytes())
                    .expect("a ULID is ASCII alphanumeric");
                request.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // Every answer's id is new: HTTP/2 sends it as a literal "never
        // indexed" (HPACK), instead of adding each one to the connection's
        // header table, where it would only push out the headers that repeat
        // (and cost both ends an insertion and an eviction per call).
        id.set_sensitive(true);
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or("<not ascii>"),
            traceparent = tracing::field::Empty,
        );
        if let Some(traceparent) = request
            .headers()
            .get(&TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .filter(|value| is_traceparent(value))
        {
            span.record("traceparent", traceparent);
        }
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = future.await?;
                response.headers_mut().insert(X_REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Whether `value` has the shape of a W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, or a later version with more fields):
/// only such a value is logged, so a header cannot forge log lines.
fn is_traceparent(value: &str) -> bool {
    let mut fields = value.split('-');
    let hex = |field: Option<&str>, len: usize| {
        field.is_some_and(|f| f.len() == len && f.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let version = fields.next();
    let shaped = hex(version, 2)
        && hex(fields.next(), 32)
        && hex(fields.next(), 16)
        && hex(fields.next(), 2);
    shaped && (version != Some("00") || fields.next().is_none()) && value.len() <= 512
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn only_well_formed_traceparents_are_logged() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x=1",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }
}
