//! TLS and mTLS on keyward's port (SPEC §12), with a CA and certificates
//! made for each test (`helpers::certs`): tonic clients through
//! `keyward_auth::tls`, the real grpcurl with `-cacert` (and `-cert`/`-key`,
//! README's "TLS and mTLS" commands among them),
//! the example order service validating through a TLS `RemoteValidator`,
//! certificates reloaded under a running server (file change and SIGHUP),
//! slow handshakes that hold up no one, and the startup warning of a
//! plaintext non-loopback listener. Envoy over TLS is in `envoy.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use keyward::pb;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward_auth::ClientTls;
use keyward_store::testing::Backend;
use orders_service::OrdersServer;
use orders_service::pb::CreateOrderRequest;
use orders_service::pb::order_service_client::OrderServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::grpcurl::{
    LIST, README_SECRET, VALIDATE, assert_valid, grpcurl_or_skip, readme_command, readme_section,
};
use crate::helpers::certs::{TestPki, display};
use crate::helpers::process::{KeywardProcess, bootstrap_with_cli, free_addr};
use crate::helpers::{
    TestApp, captured_logs, code, eventually, unknown_key, with_key, with_tls_app,
};

/// ValidateKey of `key` over a new connection to `url` with `tls`: the
/// verdict, or why there is none (a refused handshake or call).
async fn validate_over(
    url: &str,
    tls: &ClientTls,
    key: &str,
) -> Result<pb::ValidationCode, String> {
    let channel = keyward_auth::tls::endpoint(url, tls)
        .map_err(|error| error.to_string())?
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    KeyValidationServiceClient::new(channel)
        .validate_key(pb::ValidateKeyRequest {
            key: key.to_owned(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().code())
        .map_err(|status| format!("call: {status:?}"))
}

/// Runs `body` against keyward on SQLite serving TLS with `pki`'s server
/// certificate (requiring client certificates with `mtls`), its test
/// clients trusting `pki`'s CA and presenting its client certificate.
async fn with_tls(pki: &TestPki, mtls: bool, body: impl AsyncFnOnce(&TestApp)) {
    with_tls_app(
        Backend::Sqlite,
        |settings| pki.serve_tls(settings, mtls),
        pki.client(),
        body,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_trusting_its_ca_only() {
    let pki = TestPki::new();
    with_tls(&pki, false, async |app| {
        assert!(app.url.starts_with("https://"), "{}", app.url);
        let key = app.create_key("tls client").scopes(&["orders:read"]).await;
        // The harness's own clients speak TLS: admin calls and validation work.
        assert_eq!(
            app.try_validate(&key.secret, &["orders:read"]).await,
            Ok(pb::ValidationCode::Valid)
        );
        assert_eq!(
            validate_over(&app.url, &pki.client_without_certificate(), &key.secret).await,
            Ok(pb::ValidationCode::Valid),
            "no client certificate is needed without --tls-client-ca"
        );
        let refused = validate_over(&app.url, &pki.client_trusting_other_ca(), &key.secret).await;
        assert!(
            refused.is_err(),
            "a client trusting another CA refuses keyward's certificate: {refused:?}"
        );
        let plaintext = validate_over(
            &format!("http://{}", app.addr),
            &ClientTls::default(),
            &key.secret,
        )
        .await;
        assert!(
            plaintext.is_err(),
            "no plaintext on a TLS port: {plaintext:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_of_its_ca() {
    let pki = TestPki::new();
    with_tls(&pki, true, async |app| {
        let key = app.create_key("mtls client").await;
        assert_eq!(
            validate_over(&app.url, &pki.client(), &key.secret).await,
            Ok(pb::ValidationCode::Valid)
        );
        for (client, what) in [
            (pki.client_without_certificate(), "no client certificate"),
            (
                pki.client_with_foreign_certificate(),
                "a client certificate of another CA",
            ),
        ] {
            let refused = validate_over(&app.url, &client, &key.secret).await;
            assert!(refused.is_err(), "{what} is refused: {refused:?}");
        }

        // The client's address still comes from the TCP connection under
        // TLS: a forged x-forwarded-for is not believed.
        assert_eq!(
            app.ip_recorded_with_a_forged_forwarded_for().await,
            "127.0.0.1",
            "the peer's address, not a forged header"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_validates_over_tls_and_mtls() {
    if grpcurl_or_skip().is_none() {
        return;
    }
    let pki = TestPki::new();
    for mtls in [false, true] {
        with_tls(&pki, mtls, async |app| {
            let key = app
                .create_key("grpcurl over tls")
                .scopes(&["orders:read"])
                .await;
            // -cacert, plus -cert/-key under mTLS: what `pki.client()` holds.
            let tls = if mtls {
                pki.client()
            } else {
                pki.client_without_certificate()
            };
            let list = readme_command(app, "list")
                .over_tls(&tls)
                .run()
                .await
                .success();
            assert!(
                list.stdout
                    .lines()
                    .any(|line| line.trim() == "keyward.v1.KeyValidationService"),
                "{}",
                list.stdout
            );
            let verdict = readme_command(app, VALIDATE)
                .with(README_SECRET, &key.secret)
                .over_tls(&tls)
                .run()
                .await
                .json();
            assert_valid(&verdict, &key.id);
            let listed = readme_command(app, LIST)
                .with("$ADMIN", &app.acme_key)
                .over_tls(&tls)
                .run()
                .await
                .json();
            assert!(listed.to_string().contains(&key.id), "{listed}");

            let untrusting = readme_command(app, "list")
                .over_tls(&pki.client_trusting_other_ca())
                .run()
                .await;
            assert_ne!(
                untrusting.code,
                Some(0),
                "grpcurl trusting another CA fails"
            );
            if mtls {
                let anonymous = readme_command(app, "list")
                    .over_tls(&pki.client_without_certificate())
                    .run()
                    .await;
                assert_ne!(
                    anonymous.code,
                    Some(0),
                    "grpcurl without -cert fails under mTLS:\n{}",
                    anonymous.stderr
                );
            }
        })
        .await;
    }
}

/// README's "TLS and mTLS" grpcurl commands, run as written against a
/// keyward requiring client certificates (its host and files replaced by the
/// test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tls_commands_work() {
    if grpcurl_or_skip().is_none() {
        return;
    }
    let pki = TestPki::new();
    with_tls(&pki, true, async |app| {
        let key = app.create_key("readme over tls").await;
        let commands = readme_section("### TLS and mTLS");
        assert_eq!(commands.len(), 2, "list and ValidateKey");
        let mut outputs = Vec::new();
        for command in commands {
            let run = command
                .with("keyward.example:50051", &app.addr.to_string())
                .with(README_SECRET, &key.secret)
                .with_arg("ca.pem", &display(&pki.path("ca.pem")))
                .with_arg("client.pem", &display(&pki.path("client.pem")))
                .with_arg("client-key.pem", &display(&pki.path("client-key.pem")))
                .run()
                .await
                .success();
            outputs.push(run.stdout);
        }
        assert!(
            outputs[0].contains("keyward.v1.KeyValidationService"),
            "{}",
            outputs[0]
        );
        let verdict: serde_json::Value =
            serde_json::from_str(&outputs[1]).expect("grpcurl prints JSON");
        assert_valid(&verdict, &key.id);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_service_validates_through_a_tls_remote_validator() {
    let pki = TestPki::new();
    with_tls(&pki, true, async |keyward| {
        let writer = keyward
            .create_key("orders writer")
            .scopes(&["orders:write"])
            .await;
        // One order service with keyward's CA and a client certificate, one
        // without a certificate (keyward refuses it: it fails closed).
        let mut clients = Vec::new();
        for tls in [pki.client(), pki.client_without_certificate()] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
            let server =
                OrdersServer::build(listener, &keyward.url, &tls).expect("valid TLS settings");
            let addr = server.local_addr();
            tokio::spawn(server.run_until(std::future::pending()));
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a valid URI")
                .connect_lazy();
            clients.push(OrderServiceClient::new(channel));
        }
        let create = |mut client: OrderServiceClient<tonic::transport::Channel>| {
            let secret = writer.secret.clone();
            async move {
                client
                    .create_order(with_key(
                        &secret,
                        CreateOrderRequest {
                            item: "tea".to_owned(),
                            quantity: 1,
                        },
                    ))
                    .await
            }
        };
        let created = create(clients[0].clone())
            .await
            .expect("the order is created");
        let caller = created.into_inner().caller.expect("the caller is echoed");
        assert_eq!(
            caller.key_id, writer.id,
            "the key keyward validated over mTLS"
        );
        assert_eq!(
            code(create(clients[1].clone()).await),
            Code::Unavailable,
            "a validator keyward refuses fails closed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_to_new_connections() {
    let pki = TestPki::new();
    let key = unknown_key();
    with_tls_app(
        Backend::Sqlite,
        |settings| {
            pki.serve_tls(settings, false);
            settings.tls.tls_reload_interval = Duration::from_millis(100);
        },
        pki.client(),
        async |app| {
            let old_ca = pki.client_without_certificate();
            let new_ca = pki.client_trusting_other_ca();
            let served_by =
                async |tls: &ClientTls| validate_over(&app.url, tls, &key).await.is_ok();
            assert!(served_by(&old_ca).await);
            assert!(!served_by(&new_ca).await);

            // Swap in a certificate of the other CA: new connections get it.
            pki.dir.write_issued("server", &pki.other_ca.server());
            let swapped = eventually(Duration::from_secs(30), || async {
                (served_by(&new_ca).await && !served_by(&old_ca).await).then_some(())
            })
            .await;
            assert!(swapped.is_some(), "the new certificate is served");

            // A broken certificate file: the reload fails, the current
            // certificate stays.
            pki.dir.write("server.pem", "not a certificate\n");
            let logged = eventually(Duration::from_secs(30), || async {
                captured_logs()
                    .contains("TLS reload failed; keeping the current certificate")
                    .then_some(())
            })
            .await;
            assert!(logged.is_some(), "a failed reload is logged");
            assert!(served_by(&new_ca).await, "the last good certificate stays");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_a_running_server() {
    let pki = TestPki::new();
    let db = keyward_store::testing::TestDatabase::create(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let admin = bootstrap_with_cli(&db.url);
    let mut flags = pki.serve_flags(false);
    // Polling as good as off: only the signal can reload in time.
    flags.extend(["--tls-reload-interval".to_owned(), "10m".to_owned()]);
    flags.extend(["--database-url".to_owned(), db.url.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut keyward = KeywardProcess::serve("sighup", &flags);
    let old_ca = pki.client_without_certificate();
    let new_ca = pki.client_trusting_other_ca();
    keyward.wait_until_serving_over(&admin, &old_ca).await;
    let url = format!("https://127.0.0.1:{}", keyward.addr.port());
    let served_by = async |tls: &ClientTls| validate_over(&url, tls, &admin).await.is_ok();

    pki.dir.write_issued("server", &pki.other_ca.server());
    assert!(served_by(&old_ca).await, "no reload before the signal");
    keyward.hang_up();
    let swapped = eventually(Duration::from_secs(30), || async {
        (served_by(&new_ca).await && !served_by(&old_ca).await).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "SIGHUP reloads the certificate:\n{}",
        keyward.log_tail()
    );
    assert!(keyward.log().contains("TLS certificate reloaded"));
    drop(keyward);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_handshake_holds_up_no_other_client() {
    let pki = TestPki::new();
    with_tls_app(
        Backend::Sqlite,
        |settings| {
            pki.serve_tls(settings, false);
            settings.tls.tls_handshake_timeout = Duration::from_millis(500);
        },
        pki.client(),
        async |app| {
            // A client that connects and never says hello.
            let mut silent = TcpStream::connect(app.addr).await.expect("a connection");
            let key = app.create_key("busy").await;
            assert_eq!(
                validate_over(&app.url, &pki.client(), &key.secret).await,
                Ok(pb::ValidationCode::Valid),
                "another client is served meanwhile"
            );
            // Past the handshake deadline keyward closes the silent connection.
            let mut buf = [0_u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
                .await
                .expect("keyward closes the connection");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_warns_at_startup() {
    const WARNING: &str = "serving plaintext on a non-loopback address";
    let pki = TestPki::new();
    let db = keyward_store::testing::TestDatabase::create(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let admin = bootstrap_with_cli(&db.url);
    let any = |addr: SocketAddr| SocketAddr::from(([0, 0, 0, 0], addr.port()));

    let url = ["--database-url".to_owned(), db.url.clone()];
    let plain_flags: Vec<&str> = url.iter().map(String::as_str).collect();
    let mut plain = KeywardProcess::serve_at("plain-any", any(free_addr()), &plain_flags, None);
    plain
        .wait_until_serving_over(&admin, &ClientTls::default())
        .await;
    assert!(plain.log().contains(WARNING), "{}", plain.log_tail());

    let mut tls_flags = pki.serve_flags(false);
    tls_flags.extend(url.iter().cloned());
    let tls_flags: Vec<&str> = tls_flags.iter().map(String::as_str).collect();
    let mut tls = KeywardProcess::serve_at("tls-any", any(free_addr()), &tls_flags, None);
    tls.wait_until_serving_over(&admin, &pki.client_without_certificate())
        .await;
    assert!(!tls.log().contains(WARNING), "{}", tls.log_tail());

    let mut local = KeywardProcess::serve("plain-loopback", &plain_flags);
    local.wait_until_serving(&admin).await;
    assert!(!local.log().contains(WARNING), "{}", local.log_tail());
    drop((plain, tls, local));
    db.drop_database().await;
}
