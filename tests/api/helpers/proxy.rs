//! The database outage test's TCP proxy, moved here unchanged from
//! `hot_path.rs` (only made `pub`); the shared blackhole-capable proxy in
//! `tests/support/tcp_proxy.rs` is to replace it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP proxy the test can cut: `cut` closes every live connection and
/// refuses new ones (accepts and closes them at once); `restore` lets
/// connections through again.
pub struct Proxy {
    /// The address to connect to instead of the upstream.
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    live: Vec<AbortHandle>,
}

impl Proxy {
    /// Relays connections to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if state.cut {
                        continue; // dropping `inbound` closes it
                    }
                    let upstream = upstream.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    state.live.retain(|relay| !relay.is_finished());
                    state.live.push(relay.abort_handle());
                }
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Closes every live connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cut = true;
        for relay in state.live.drain(..) {
            relay.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cut = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

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
    let proxied_url = format!("{before}{}{after}", proxy.addr);
    (proxy, proxied_url)
}
