//! The database fault tests' TCP proxy: it can cut connections (a refused,
//! closed database) or blackhole them (a silent network partition).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP proxy the test can cut: `cut` closes every live connection and
/// refuses new ones (accepts and closes them at once); `restore` lets
/// connections through again. `blackhole` stops moving bytes without closing
/// anything (new connections are accepted and held); `resume` moves them again.
pub struct Proxy {
    /// The address to connect to instead of the upstream.
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    flowing: watch::Sender<bool>,
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
        let (flowing, flow) = watch::channel(true);
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if state.cut {
                        continue; // dropping `inbound` closes it
                    }
                    let upstream = upstream.clone();
                    let mut flow = flow.clone();
                    let relay = tokio::spawn(async move {
                        // A blackholed proxy holds a new connection unanswered.
                        if flow.wait_for(|flowing| *flowing).await.is_err() {
                            return;
                        }
                        if let Ok(outbound) = TcpStream::connect(&upstream).await {
                            let (in_read, in_write) = inbound.into_split();
                            let (out_read, out_write) = outbound.into_split();
                            tokio::join!(
                                pump(in_read, out_write, flow.clone()),
                                pump(out_read, in_write, flow),
                            );
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
            flowing,
            accept,
        }
    }

    /// Stops moving bytes, in both directions, on live and new connections,
    /// without closing any: to keyward the database goes silent.
    pub fn blackhole(&self) {
        self.flowing.send_replace(false);
    }

    /// Moves bytes again after [`blackhole`](Self::blackhole), held ones first.
    pub fn resume(&self) {
        self.flowing.send_replace(true);
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

/// Copies `from` to `to` while the proxy lets bytes flow; holds them (and
/// stops reading) while it is blackholed. Ends at EOF, on an error or when
/// the proxy is dropped.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: watch::Receiver<bool>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        if flow.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Read just before a blackhole: held until it lifts.
        if flow.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
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
