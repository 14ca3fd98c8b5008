//! The order service behind its auth layer, with a stub validator (no keyward
//! needed) and with a `RemoteValidator` whose keyward cannot be reached.
//! The end-to-end tests against a real keyward are the root package's
//! `tests/api/auth_layer.rs`.

use std::sync::Arc;

use keyward_auth::{
    Denial, Identity, IdentityDetails, ValidationFuture, ValidationRequest, Validator,
    ValidatorError, Verdict,
};
use keyward_core::{ApiKeySecret, Environment, KeyKind};
use orders_service::OrdersServer;
use orders_service::pb::order_service_client::OrderServiceClient;
use orders_service::pb::{CreateOrderRequest, GetOrderRequest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Knows three keys: `reader` (acme, `orders:read`), `writer` (acme,
/// `orders:*`), `globex` (globex, `*`); `down` makes it fail.
struct StubValidator;

impl Validator for StubValidator {
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        Box::pin(async move {
            let (organization, scopes) = match request.key {
                "reader" => ("acme", vec!["orders:read"]),
                "writer" => ("acme", vec!["orders:*"]),
                "globex" => ("globex", vec!["*"]),
                "down" => return Err(ValidatorError::unavailable("stub is down")),
                _ => return Ok(Verdict::Deny(Denial::Unauthenticated)),
            };
            let held: Vec<keyward_auth::Scope> = scopes
                .iter()
                .map(|s| keyward_auth::Scope::parse(s).expect("valid stub scopes"))
                .collect();
            let granted = request
                .required_scopes
                .iter()
                .all(|required| held.iter().any(|scope| scope.grants(required)));
            if !granted {
                return Ok(Verdict::Deny(Denial::Forbidden));
            }
            Ok(Verdict::Allow(Identity::new(IdentityDetails {
                key_id: format!("key_{}", request.key),
                organization_id: organization.to_owned(),
                workspace_id: None,
                name: request.key.to_owned(),
                scopes: scopes.into_iter().map(str::to_owned).collect(),
                metadata: Default::default(),
                user_id: None,
                service_account_id: None,
                environment: Environment::Live,
                expires_at: None,
            })))
        })
    }
}

struct Running {
    client: OrderServiceClient<Channel>,
    _stop: oneshot::Sender<()>,
}

async fn start<V: Validator>(server: OrdersServer<V>) -> Running {
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the order service accepts connections");
    Running {
        client: OrderServiceClient::new(channel),
        _stop: stop,
    }
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("a free port")
}

fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("an ASCII header"),
    );
    request
}

fn order(item: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        item: item.to_owned(),
        quantity: 2,
    }
}

#[tokio::test]
async fn each_method_needs_a_key_with_its_scope() {
    let mut app = start(OrdersServer::with_validator(
        listener().await,
        Arc::new(StubValidator),
    ))
    .await;

    let status = app
        .client
        .create_order(order("tea"))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = app
        .client
        .create_order(with_key("nobody", order("tea")))
        .await
        .expect_err("an unknown key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = app
        .client
        .create_order(with_key("reader", order("tea")))
        .await
        .expect_err("a key without orders:write");
    assert_eq!(status.code(), Code::PermissionDenied);

    let created = app
        .client
        .create_order(with_key("writer", order("tea")))
        .await
        .expect("orders:* grants orders:write")
        .into_inner();
    let caller = created.caller.expect("the caller is echoed");
    assert_eq!(caller.key_id, "key_writer");
    assert_eq!(caller.organization_id, "acme");
    let created = created.order.expect("the order");
    assert_eq!(created.created_by_key_id, "key_writer");

    let fetched = app
        .client
        .get_order(with_key(
            "reader",
            GetOrderRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("the reader of the same organization sees it")
        .into_inner();
    assert_eq!(fetched.order, Some(created.clone()));
    assert_eq!(fetched.caller.expect("the caller").key_id, "key_reader");

    let status = app
        .client
        .get_order(with_key("globex", GetOrderRequest { id: created.id }))
        .await
        .expect_err("another organization's order");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_validator_that_cannot_answer_refuses_every_call() {
    let mut app = start(OrdersServer::with_validator(
        listener().await,
        Arc::new(StubValidator),
    ))
    .await;
    let status = app
        .client
        .create_order(with_key("down", order("tea")))
        .await
        .expect_err("the validator is down");
    assert_eq!(status.code(), Code::Unavailable);
    let status = app
        .client
        .get_order(with_key("down", GetOrderRequest { id: "ord_1".into() }))
        .await
        .expect_err("the validator is down");
    assert_eq!(status.code(), Code::Unavailable);
}

/// An address nothing listens on: a port whose listener was dropped.
async fn unreachable_url() -> String {
    let addr = listener().await.local_addr().expect("a local address");
    format!("http://{addr}")
}

#[tokio::test]
async fn an_unreachable_keyward_refuses_every_call() {
    let tls = keyward_auth::ClientTls::default();
    let one = OrdersServer::build(listener().await, &unreachable_url().await, &tls)
        .expect("a valid keyward URL");
    // Balanced over two replicas, neither reachable: the same.
    let replicas = [unreachable_url().await, unreachable_url().await];
    let balanced = OrdersServer::build_balanced(listener().await, &replicas, &tls)
        .expect("valid keyward URLs");
    for server in [one, balanced] {
        let validator = Arc::clone(server.validator());
        let mut app = start(server).await;
        let key = ApiKeySecret::generate(KeyKind::Standard, Environment::Live);
        for _ in 0..2 {
            let status = app
                .client
                .get_order(with_key(
                    key.expose(),
                    GetOrderRequest { id: "ord_1".into() },
                ))
                .await
                .expect_err("keyward cannot be reached");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        assert_eq!(validator.calls(), 2, "failures are not cached");
    }
}

#[tokio::test]
async fn every_keyward_url_must_be_valid() {
    let tls = keyward_auth::ClientTls::default();
    let urls = [unreachable_url().await, "ftp://keyward:1".to_owned()];
    assert!(OrdersServer::build_balanced(listener().await, &urls, &tls).is_err());
}

#[tokio::test]
async fn the_handlers_refuse_every_call_the_layer_did_not_let_through() {
    use orders_service::Orders;
    use orders_service::pb::order_service_server::OrderServiceServer;

    // The handlers served without the auth layer, by mistake: no identity in
    // any request, so every call is refused, whatever it carries.
    let listener = listener().await;
    let addr = listener.local_addr().expect("a local address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OrderServiceServer::new(Orders::default()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the order service accepts connections");
    let mut client = OrderServiceClient::new(channel);
    let mut create = Request::new(order("tea"));
    create
        .metadata_mut()
        .insert("authorization", "Bearer writer".parse().expect("ASCII"));
    let refused = client
        .create_order(create)
        .await
        .expect_err("no identity, no order");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = client
        .get_order(GetOrderRequest { id: "1".to_owned() })
        .await
        .expect_err("no identity, no order");
    assert_eq!(refused.code(), Code::Unauthenticated);
    drop(stop);
}
