//! The null handler of `scripts/bench-auth.sh` (part 1) and
//! `scripts/bench-instructions.sh`: `grpc.health.v1.Health/Check`, answered
//! by tonic-health whoever calls, served with keyward-auth's layer in front
//! or without it. Nothing the handler does depends on the caller, so the
//! difference between the two servers is the layer's own work.
//!
//! ```text
//! cargo build --release -p null-service
//! target/release/null-service --listen 127.0.0.1:50053 --keyward-url http://127.0.0.1:50051
//! target/release/null-service --listen 127.0.0.1:50054 --no-auth
//! ```
//!
//! `--keyward-timeout SECONDS` sets the remote validator's timeout (its
//! default, 2 s, otherwise): `bench-instructions.sh` runs both servers
//! under callgrind, where a first call through code not yet translated can
//! take longer than that.
//!
//! Protected, it is configured as a product service would be (and as the
//! orders example is): live keys only, the check requires `orders:read`,
//! credentials hidden from the handler, a `RemoteValidator` over one
//! lazily connected channel with its default verdict cache. A benchmark
//! tool, not part of keyward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyward_auth::{Environment, KeywardAuthLayer, RemoteValidator, Scope};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

const USAGE: &str =
    "usage: null-service --listen ADDR (--keyward-url URL [--keyward-timeout SECONDS] | --no-auth)";

/// The route the layer protects: the null handler's.
const CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Options {
        listen,
        keyward_url,
        timeout,
    } = parse(std::env::args().skip(1)).map_err(|why| format!("{why}\n{USAGE}"))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (_reporter, health) = tonic_health::server::health_reporter();
    match keyward_url {
        None => {
            eprintln!("null-service listening on {listen}, WITHOUT the auth layer");
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await?;
        }
        Some(url) => {
            eprintln!("null-service listening on {listen}, protected by keyward at {url}");
            let channel = Endpoint::from_shared(url)?.connect_lazy();
            let mut validator = RemoteValidator::builder(channel);
            if let Some(timeout) = timeout {
                validator = validator.timeout(timeout);
            }
            let layer = KeywardAuthLayer::from_shared(Arc::new(validator.build()))
                .require_environment(Environment::Live)
                .require_scopes(CHECK, [Scope::parse("orders:read")?])
                .hide_credentials(true);
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(incoming)
                .await?;
        }
    }
    Ok(())
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
struct Options {
    listen: SocketAddr,
    /// `None`: no layer.
    keyward_url: Option<String>,
    /// The remote validator's timeout, if not its default.
    timeout: Option<Duration>,
}

/// `--listen ADDR` and either `--keyward-url URL` (protected, optionally
/// with `--keyward-timeout SECONDS`) or `--no-auth`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let (mut listen, mut keyward_url, mut timeout, mut no_auth) = (None, None, None, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?);
            }
            "--keyward-url" => keyward_url = Some(value()?),
            "--keyward-timeout" => {
                let seconds: u64 = value()?
                    .parse()
                    .map_err(|e| format!("--keyward-timeout: {e}"))?;
                timeout = Some(Duration::from_secs(seconds));
            }
            "--no-auth" => no_auth = true,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    match (keyward_url, no_auth) {
        (Some(_), true) | (None, false) => {
            Err("give exactly one of --keyward-url and --no-auth".into())
        }
        (None, true) if timeout.is_some() => Err("--keyward-timeout needs --keyward-url".into()),
        (keyward_url, _) => Ok(Options {
            listen,
            keyward_url,
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn flags_name_one_mode_and_an_address() {
        let listen: SocketAddr = "127.0.0.1:50053".parse().expect("an address");
        assert_eq!(
            parsed(&["--listen", "127.0.0.1:50053", "--keyward-url", "http://k:1"]),
            Ok(Options {
                listen,
                keyward_url: Some("http://k:1".to_owned()),
                timeout: None,
            })
        );
        assert_eq!(
            parsed(&[
                "--keyward-timeout",
                "30",
                "--listen",
                "127.0.0.1:50053",
                "--keyward-url",
                "http://k:1",
            ]),
            Ok(Options {
                listen,
                keyward_url: Some("http://k:1".to_owned()),
                timeout: Some(Duration::from_secs(30)),
            })
        );
        assert_eq!(
            parsed(&["--no-auth", "--listen", "127.0.0.1:50053"]),
            Ok(Options {
                listen,
                keyward_url: None,
                timeout: None,
            })
        );
        for bad in [
            &[][..],
            &["--no-auth"],
            &["--listen", "127.0.0.1:50053"],
            &[
                "--listen",
                "127.0.0.1:50053",
                "--no-auth",
                "--keyward-url",
                "http://k:1",
            ],
            &["--listen", "localhost", "--no-auth"],
            &["--listen"],
            &["--listen", "127.0.0.1:50053", "--no-auth", "--verbose"],
            &[
                "--listen",
                "127.0.0.1:50053",
                "--no-auth",
                "--keyward-timeout",
                "30",
            ],
            &[
                "--listen",
                "127.0.0.1:50053",
                "--keyward-url",
                "http://k:1",
                "--keyward-timeout",
                "soon",
            ],
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }
}
