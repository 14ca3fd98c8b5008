//! The `/metrics` listener: HTTP/1.1 through hyper (already in the tree
//! under tonic), bounded like the gRPC port: a few connections, a header
//! deadline and a deadline per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";
/// What a scrape is answered with: Prometheus' text format (see [`text_format`]).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapers open one or two connections; beyond this a connection is closed.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `registry` on `listener` at [`METRICS_PATH`] until dropped (the
/// server aborts it on shutdown, which closes every open connection).
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue; // Dropping the stream closes it.
        };
        let registry = Arc::clone(&registry);
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let response = respond(&registry, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn respond<B>(registry: &Registry, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let mut openmetrics = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut openmetrics, registry) {
        tracing::error!(%error, "metrics could not be encoded");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n");
    }
    let text = text_format(&openmetrics);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// prometheus-client's OpenMetrics text as Prometheus' text format 0.0.4,
/// which every Prometheus reads and `promtool check metrics` lints (it
/// parses only this format). For the metric types keyward exports the two
/// differ in three places only: a counter family is named with its `_total`
/// suffix in `# HELP` and `# TYPE`, `unknown` is `untyped`, and there is no
/// `# EOF` (nor `# UNIT`) line.
pub fn text_format(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // A `# HELP` line waits for its `# TYPE` line, which says whether the
    // family is a counter.
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |text: &mut String, help: &mut Option<(&str, &str)>, suffix: &str| {
        if let Some((name, rest)) = help.take() {
            text.push_str(&format!("# HELP {name}{suffix} {rest}\n"));
        }
    };
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(described) = line.strip_prefix("# HELP ") {
            flush_help(&mut text, &mut help, "");
            let (name, rest) = described.split_once(' ').unwrap_or((described, ""));
            help = Some((name, rest));
            continue;
        }
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').unwrap_or((typed, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            flush_help(&mut text, &mut help, suffix);
            text.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        flush_help(&mut text, &mut help, "");
        text.push_str(line);
        text.push('\n');
    }
    flush_help(&mut text, &mut help, "");
    text
}

#[cfg(test)]
mod tests {
    use super::text_format;

    #[test]
    fn counters_are_named_with_total_and_eof_is_dropped() {
        let openmetrics = "# HELP c Things.\n# TYPE c counter\nc_total{a=\"b\"} 3\n\
                           # HELP g Level.\n# TYPE g gauge\ng 1\n\
                           # HELP u Odd.\n# TYPE u unknown\n# UNIT u seconds\nu 2\n# EOF\n";
        assert_eq!(
            text_format(openmetrics),
            "# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"b\"} 3\n\
             # HELP g Level.\n# TYPE g gauge\ng 1\n\
             # HELP u Odd.\n# TYPE u untyped\nu 2\n"
        );
    }
}
