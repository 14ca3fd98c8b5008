//! Database proxies for fault tests: the shared [`TcpProxy`]
//! (`tests/support/tcp_proxy.rs`: forward, blackhole, cut, restore) put in
//! front of a test database.

pub use crate::tcp_proxy::TcpProxy as Proxy;

/// Splits a database URL around its host and port: (before, host:port, after).
pub fn split_host(url: &str) -> (&str, &str, &str) {
    let scheme_end = url.find("://").expect("a URL with a scheme") + 3;
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |end| scheme_end + end);
    let host_start = url[scheme_end..authority_end]
        .rfind('@')
        .map_or(scheme_end, |at| scheme_end + at + 1);
    (
        &url[..host_start],
        &url[host_start..authority_end],
        &url[authority_end..],
    )
}

/// A [`Proxy`] in front of the PostgreSQL or MySQL server of `database_url`,
/// and the URL that reaches the same database through it.
pub async fn proxied_database(database_url: &str) -> (Proxy, String) {
    let default_port = if database_url.starts_with("postgres") {
        5432
    } else {
        3306
    };
    let (before, host, after) = split_host(database_url);
    let upstream = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let proxy = Proxy::start(upstream).await;
    let proxied_url = format!("{before}{}{after}", proxy.addr());
    (proxy, proxied_url)
}
