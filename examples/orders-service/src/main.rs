//! Runs the example order service:
//!
//! ```text
//! orders-service --keyward-url http://127.0.0.1:50051 --listen 127.0.0.1:50052
//! orders-service --keyward-url http://10.0.0.1:50051,http://10.0.0.2:50051
//! orders-service --keyward-url https://keyward:50051 --keyward-ca-cert ca.pem \
//!     --keyward-client-cert orders.pem --keyward-client-key orders-key.pem
//! ```
//!
//! Each flag has an environment equivalent: `KEYWARD_URL`, `KEYWARD_CA_CERT`,
//! `KEYWARD_CLIENT_CERT`, `KEYWARD_CLIENT_KEY`, `ORDERS_LISTEN`,
//! `ORDERS_ENVIRONMENT`. `--keyward-url` may be given more
//! than once, or as a comma-separated list (so may `KEYWARD_URL`): the service
//! then balances its `ValidateKey` calls over those keyward replicas.
//! `--environment` picks the keys the
//! service accepts: `live` (the default, a production service: `sk_test_`
//! keys are refused) or `test` (a test deployment: `sk_live_` keys are
//! refused).

use std::net::SocketAddr;
use std::path::PathBuf;

use keyward_auth::{ClientTls, Environment};
use orders_service::OrdersServer;
use tokio::net::TcpListener;

const USAGE: &str = "usage: orders-service [--keyward-url URL] [--keyward-ca-cert PEM]
                      [--keyward-client-cert PEM --keyward-client-key PEM] [--listen ADDR]
                      [--environment ENV]
  --keyward-url URL[,URL...]  keyward's gRPC address; https:// speaks TLS; repeated or comma-separated:
                              several replicas, each call to one of them [env KEYWARD_URL]
                              [default http://127.0.0.1:50051]
  --keyward-ca-cert PEM       CA bundle that signed keyward's certificate [env KEYWARD_CA_CERT] [default: system roots]
  --keyward-client-cert PEM   client certificate for a keyward requiring mTLS [env KEYWARD_CLIENT_CERT]
  --keyward-client-key PEM    its private key [env KEYWARD_CLIENT_KEY]
  --listen ADDR               address to serve on; port 0 picks one [env ORDERS_LISTEN] [default 127.0.0.1:50052]
  --environment ENV           the keys accepted: live (sk_live_) or test (sk_test_); keys of the
                              other environment are refused [env ORDERS_ENVIRONMENT] [default live]
";

struct Args {
    /// One or more keyward replicas.
    keyward_urls: Vec<String>,
    tls: ClientTls,
    listen: SocketAddr,
    environment: Environment,
}

impl Args {
    /// Flags first, then the environment, then the defaults; `None` when
    /// help was asked for.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        // Every --keyward-url given, each maybe a comma-separated list.
        let mut keyward_urls: Vec<String> = Vec::new();
        let mut ca_cert = std::env::var("KEYWARD_CA_CERT").ok();
        let mut client_cert = std::env::var("KEYWARD_CLIENT_CERT").ok();
        let mut client_key = std::env::var("KEYWARD_CLIENT_KEY").ok();
        let mut listen = std::env::var("ORDERS_LISTEN").ok();
        let mut environment = std::env::var("ORDERS_ENVIRONMENT").ok();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut keyward_url = None;
            // Each flag's value goes to its slot; the last one given counts,
            // except for --keyward-url, whose values all count.
            let slot = match flag.as_str() {
                "--keyward-url" => &mut keyward_url,
                "--keyward-ca-cert" => &mut ca_cert,
                "--keyward-client-cert" => &mut client_cert,
                "--keyward-client-key" => &mut client_key,
                "--listen" => &mut listen,
                "--environment" => &mut environment,
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            };
            let value = inline.or_else(|| args.next());
            *slot = Some(value.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?);
            keyward_urls.extend(keyward_url);
        }
        if keyward_urls.is_empty() {
            keyward_urls.push(
                std::env::var("KEYWARD_URL")
                    .unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned()),
            );
        }
        let keyward_urls = keyward_urls
            .iter()
            .flat_map(|list| list.split(','))
            .map(|url| match url.trim() {
                "" => Err(format!("an empty keyward URL in {keyward_urls:?}\n{USAGE}")),
                url => Ok(url.to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let listen = listen.unwrap_or_else(|| "127.0.0.1:50052".to_owned());
        let environment = environment.unwrap_or_else(|| "live".to_owned());
        Ok(Some(Self {
            keyward_urls,
            tls: ClientTls {
                ca_cert: ca_cert.map(PathBuf::from),
                client_cert: client_cert.map(PathBuf::from),
                client_key: client_key.map(PathBuf::from),
            },
            listen: listen
                .parse()
                .map_err(|error| format!("invalid listen address {listen:?}: {error}"))?,
            environment: Environment::from_stored(&environment).ok_or_else(|| {
                format!("invalid environment {environment:?}: expected live or test\n{USAGE}")
            })?,
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
    let server = OrdersServer::build_balanced(listener, &args.keyward_urls, &args.tls)?
        .environment(args.environment);
    eprintln!(
        "orders-service listening on {}, validating {} keys with keyward at {}",
        server.local_addr(),
        args.environment.as_str(),
        args.keyward_urls.join(", ")
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
        assert_eq!(args.keyward_urls, ["http://kw:1"]);
        assert_eq!(args.listen, "127.0.0.1:0".parse().expect("an address"));
        assert_eq!(args.environment, Environment::Live, "live keys by default");
        let test = parse(&["--environment", "test"])
            .expect("valid flags")
            .expect("not help");
        assert_eq!(test.environment, Environment::Test);
        assert!(parse(&["--environment", "staging"]).is_err());
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
        assert!(
            parse(&["--no-auth"]).is_err(),
            "there is no unauthenticated mode"
        );
        assert!(parse(&["--help"]).expect("help is not an error").is_none());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
    }

    #[test]
    fn keyward_url_may_be_repeated_or_a_list() {
        let urls = |args: &[&str]| {
            parse(args)
                .expect("valid flags")
                .expect("not help")
                .keyward_urls
        };
        assert_eq!(
            urls(&["--keyward-url", "http://a:1", "--keyward-url=http://b:1"]),
            ["http://a:1", "http://b:1"]
        );
        assert_eq!(
            urls(&["--keyward-url", "http://a:1, http://b:1,http://c:1"]),
            ["http://a:1", "http://b:1", "http://c:1"]
        );
        assert_eq!(
            urls(&[
                "--keyward-url=http://a:1,http://b:1",
                "--keyward-url",
                "http://c:1"
            ]),
            ["http://a:1", "http://b:1", "http://c:1"]
        );
        assert!(
            parse(&["--keyward-url", "http://a:1,"]).is_err(),
            "an empty URL"
        );
        assert!(parse(&["--keyward-url", ""]).is_err(), "an empty URL");
    }
}
