//! Runs the example order service:
//!
//! ```text
//! orders-service --keyward-url http://127.0.0.1:50051 --listen 127.0.0.1:50052
//! orders-service --keyward-url https://keyward:50051 --keyward-ca-cert ca.pem \
//!     --keyward-client-cert orders.pem --keyward-client-key orders-key.pem
//! ```
//!
//! Each flag has an environment equivalent: `KEYWARD_URL`, `KEYWARD_CA_CERT`,
//! `KEYWARD_CLIENT_CERT`, `KEYWARD_CLIENT_KEY`, `ORDERS_LISTEN`,
//! `ORDERS_NO_AUTH`. `--no-auth` serves the same handlers without the auth
//! layer (every call as the anonymous caller): the baseline of
//! `scripts/bench-auth.sh`, never for deployment.

use std::net::SocketAddr;
use std::path::PathBuf;

use keyward_auth::ClientTls;
use orders_service::{OrdersServer, run_unprotected_until};
use tokio::net::TcpListener;

const USAGE: &str = "usage: orders-service [--keyward-url URL] [--keyward-ca-cert PEM]
                      [--keyward-client-cert PEM --keyward-client-key PEM] [--listen ADDR] [--no-auth]
  --keyward-url URL           keyward's gRPC address; https:// speaks TLS [env KEYWARD_URL] [default http://127.0.0.1:50051]
  --keyward-ca-cert PEM       CA bundle that signed keyward's certificate [env KEYWARD_CA_CERT] [default: system roots]
  --keyward-client-cert PEM   client certificate for a keyward requiring mTLS [env KEYWARD_CLIENT_CERT]
  --keyward-client-key PEM    its private key [env KEYWARD_CLIENT_KEY]
  --listen ADDR               address to serve on; port 0 picks one [env ORDERS_LISTEN] [default 127.0.0.1:50052]
  --no-auth                   serve WITHOUT the auth layer, every call as organization \"anonymous\";
                              for benchmarks only [env ORDERS_NO_AUTH=1]";

struct Args {
    keyward_url: String,
    tls: ClientTls,
    listen: SocketAddr,
    no_auth: bool,
}

impl Args {
    /// Flags first, then the environment, then the defaults; `None` when
    /// help was asked for.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut keyward_url = std::env::var("KEYWARD_URL").ok();
        let mut ca_cert = std::env::var("KEYWARD_CA_CERT").ok();
        let mut client_cert = std::env::var("KEYWARD_CLIENT_CERT").ok();
        let mut client_key = std::env::var("KEYWARD_CLIENT_KEY").ok();
        let mut listen = std::env::var("ORDERS_LISTEN").ok();
        let mut no_auth = std::env::var("ORDERS_NO_AUTH")
            .is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"));
        while let Some(arg) = args.next() {
            if arg == "--no-auth" {
                no_auth = true;
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let slot = match flag.as_str() {
                "--keyward-url" => &mut keyward_url,
                "--keyward-ca-cert" => &mut ca_cert,
                "--keyward-client-cert" => &mut client_cert,
                "--keyward-client-key" => &mut client_key,
                "--listen" => &mut listen,
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            };
            let value = inline.or_else(|| args.next());
            *slot = Some(value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?);
        }
        let listen = listen.unwrap_or_else(|| "127.0.0.1:50052".to_owned());
        Ok(Some(Self {
            keyward_url: keyward_url.unwrap_or_else(|| "http://127.0.0.1:50051".to_owned()),
            tls: ClientTls {
                ca_cert: ca_cert.map(PathBuf::from),
                client_cert: client_cert.map(PathBuf::from),
                client_key: client_key.map(PathBuf::from),
            },
            listen: listen
                .parse()
                .map_err(|error| format!("invalid listen address {listen:?}: {error}"))?,
            no_auth,
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(args.listen).await?;
    let shutdown = async {
        // Without a working signal handler, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    if args.no_auth {
        eprintln!(
            "orders-service listening on {} WITHOUT authentication (--no-auth)",
            listener.local_addr()?
        );
        run_unprotected_until(listener, shutdown).await?;
        return Ok(());
    }
    let server = OrdersServer::build(listener, &args.keyward_url, &args.tls)?;
    eprintln!(
        "orders-service listening on {}, validating keys with keyward at {}",
        server.local_addr(),
        args.keyward_url
    );
    server.run_until(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        Args::parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn flags_take_a_separate_or_inline_value() {
        let args = parse(&["--keyward-url", "http://kw:1", "--listen=127.0.0.1:0"])
            .expect("valid flags")
            .expect("not help");
        assert_eq!(args.keyward_url, "http://kw:1");
        assert_eq!(args.listen, "127.0.0.1:0".parse().expect("an address"));
        let tls = parse(&[
            "--keyward-url=https://kw:1",
            "--keyward-ca-cert",
            "ca.pem",
            "--keyward-client-cert=c.pem",
            "--keyward-client-key",
            "k.pem",
        ])
        .expect("valid flags")
        .expect("not help")
        .tls;
        assert_eq!(tls.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.client_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(tls.client_key, Some(PathBuf::from("k.pem")));
        let no_auth = parse(&["--no-auth", "--listen", "127.0.0.1:0"])
            .expect("valid flags")
            .expect("not help");
        assert!(no_auth.no_auth, "--no-auth takes no value");
        assert!(parse(&["--help"]).expect("help is not an error").is_none());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
    }
}
