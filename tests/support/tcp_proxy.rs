//! A loopback TCP proxy for fault tests: put it between keyward and its
//! database (or between a client and keyward) and make the network misbehave.
//!
//! - [`forward`](TcpProxy::forward): bytes flow both ways (the start mode).
//! - [`blackhole`](TcpProxy::blackhole): a partition or failover. Live
//!   connections stay open but no byte moves in either direction; new
//!   connections are accepted and held without reaching the upstream. Nothing
//!   is closed, so a peer only notices through its own deadlines. Bytes sent
//!   meanwhile wait in socket buffers and flow on when forwarding resumes,
//!   as TCP retransmission delivers them after a healed partition.
//! - [`cut`](TcpProxy::cut): an outage the peer sees at once. Live connections
//!   are closed and new ones are accepted and closed.
//! - [`restore`](TcpProxy::restore): back to forwarding.
//!
//! Shared by the end-to-end tests (`#[path = "../support/tcp_proxy.rs"] mod
//! tcp_proxy;` from `tests/api`) and the soak driver (`#[path =
//! "../tests/support/tcp_proxy.rs"] mod tcp_proxy;` from `examples/`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy does with bytes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay bytes both ways.
    Forward,
    /// Hold every connection open and relay nothing.
    Blackhole,
    /// Close every connection and refuse new ones.
    Cut,
}

/// A TCP proxy on `127.0.0.1:<free port>` in front of one upstream address.
/// Dropping it closes its listener and every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (`host:port`). Upstream connections
    /// are opened per accepted connection, when forwarding allows it.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the proxy");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (mode, _) = watch::channel(Mode::Forward);
        let relays = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accept = tokio::spawn({
            let mode = mode.clone();
            let relays = Arc::clone(&relays);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *mode.borrow() == Mode::Cut {
                        continue; // dropping `inbound` closes it
                    }
                    let relay = tokio::spawn(relay(inbound, upstream.clone(), mode.subscribe()));
                    let mut relays = relays.lock().unwrap_or_else(PoisonError::into_inner);
                    relays.retain(|relay| !relay.is_finished());
                    relays.push(relay.abort_handle());
                }
            }
        });
        Self {
            addr,
            mode,
            relays,
            accept,
        }
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Relays bytes both ways again (also after [`cut`](Self::cut)).
    pub fn forward(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Stops relaying in both directions without closing anything.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Closes every live connection and refuses new ones until restored.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        // Aborting a relay drops both of its sockets, which closes them.
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        for relay in relays.drain(..) {
            relay.abort();
        }
    }

    /// Ends a blackhole or a cut: the same as [`forward`](Self::forward).
    pub fn restore(&self) {
        self.forward();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Waits until the mode allows forwarding; `false` when the connection must
/// end (cut, or the proxy is gone).
async fn forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|mode| *mode != Mode::Blackhole).await {
        Ok(mode) => *mode == Mode::Forward,
        Err(_) => false,
    }
}

/// One proxied connection: the upstream is dialled only once forwarding is
/// allowed, so a connection made during a blackhole hangs like one into a
/// partition.
async fn relay(inbound: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    if !forwarding(&mut mode).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // When one direction ends (EOF or error) the other is dropped with it:
    // the connection is over.
    tokio::select! {
        () = pump(in_read, out_write, mode.clone()) => {}
        () = pump(out_read, in_write, mode) => {}
    }
}

/// Copies one direction, pausing whenever the proxy is blackholed: before
/// each read and again before writing what was read.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // A blackhole or a cut began while waiting for bytes: check again.
            changed = mode.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if !forwarding(&mut mode).await || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Mode, TcpProxy};

    /// Long enough that a byte relayed on loopback would have arrived.
    const QUIET: Duration = Duration::from_millis(300);
    /// Generous bound for a byte to cross loopback through the proxy.
    const DEADLINE: Duration = Duration::from_secs(5);

    /// An upstream that echoes every byte back.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, byte: u8) -> std::io::Result<u8> {
        stream.write_all(&[byte]).await?;
        let mut reply = [0u8; 1];
        let n = stream.read(&mut reply).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(reply[0])
    }

    #[tokio::test]
    async fn forwards_blackholes_without_closing_and_resumes() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, round_trip(&mut client, 1)).await;
        assert_eq!(echoed.unwrap().unwrap(), 1);

        proxy.blackhole();
        assert_eq!(proxy.mode(), Mode::Blackhole);
        // Nothing comes back, and the connection is not closed either: the
        // read neither returns bytes nor EOF.
        client.write_all(&[2]).await.unwrap();
        let mut reply = [0u8; 1];
        let quiet = tokio::time::timeout(QUIET, client.read(&mut reply)).await;
        assert!(
            quiet.is_err(),
            "a blackholed connection answered: {quiet:?}"
        );
        // A connection opened during the blackhole is accepted and hangs.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(&[3]).await.unwrap();
        let quiet = tokio::time::timeout(QUIET, late.read(&mut reply)).await;
        assert!(quiet.is_err(), "a new blackholed connection answered");

        proxy.restore();
        // The byte held during the blackhole arrives, on both connections.
        let mut held = [0u8; 1];
        tokio::time::timeout(DEADLINE, client.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held[0], 2);
        tokio::time::timeout(DEADLINE, late.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held[0], 3);
        let echoed = tokio::time::timeout(DEADLINE, round_trip(&mut client, 4)).await;
        assert_eq!(echoed.unwrap().unwrap(), 4);
    }

    #[tokio::test]
    async fn cut_closes_and_refuses_until_restored() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, round_trip(&mut client, 1)).await;
        assert_eq!(echoed.unwrap().unwrap(), 1);

        proxy.cut();
        // The live connection ends (EOF or reset), within the deadline.
        let ended = tokio::time::timeout(DEADLINE, round_trip(&mut client, 2)).await;
        assert!(ended.expect("a cut connection ends").is_err());
        // A new connection is closed at once.
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let ended = tokio::time::timeout(DEADLINE, round_trip(&mut refused, 3)).await;
        assert!(ended.expect("a refused connection ends").is_err());

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, round_trip(&mut again, 5)).await;
        assert_eq!(echoed.unwrap().unwrap(), 5);
    }

    #[tokio::test]
    async fn a_blackhole_turns_into_a_cut() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, round_trip(&mut client, 1)).await;
        assert_eq!(echoed.unwrap().unwrap(), 1);
        proxy.blackhole();
        proxy.cut();
        let ended = tokio::time::timeout(DEADLINE, round_trip(&mut client, 2)).await;
        assert!(ended.expect("a cut connection ends").is_err());
    }
}
