//! `keyward-auth` end to end: product services behind `KeywardAuthLayer` with
//! a `RemoteValidator` asking a real keyward (the harness's `TestApp` on a
//! fresh SQLite database).
//!
//! The gRPC side is the example `orders-service`; the HTTP side is a small
//! axum router built here, called in process through `tower::ServiceExt`.
//! Nothing here measures speed: waits poll with a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::routing::{get, post};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request as HttpRequest, StatusCode};
use keyward::pb;
use keyward::pb::key_validation_service_client::KeyValidationServiceClient;
use keyward::pb::key_validation_service_server::{
    KeyValidationService, KeyValidationServiceServer,
};
use keyward_auth::{
    Environment, Identity, KeywardAuthLayer, RemoteValidator, Scope, ValidationFuture,
    ValidationRequest, Validator,
};
use keyward_store::testing::Backend;
use orders_service::OrdersServer;
use orders_service::pb::order_service_client::OrderServiceClient;
use orders_service::pb::{CreateOrderRequest, GetOrderRequest};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tower::ServiceExt;

use crate::helpers::{
    CreatedKey, code, eventually, serve_until_dropped, unknown_key, with_app, with_key,
};

/// Generous bound for things that take about a cache hint (1 s) to happen.
const DEADLINE: Duration = Duration::from_secs(15);
/// README: a change on keyward is seen by a service using the remote
/// validator within this (keyward's cache hint bounds the reuse of a verdict).
const CACHE_HINT_BOUND: Duration = Duration::from_secs(1);
/// Scheduling slack on top of [`CACHE_HINT_BOUND`] on a busy test machine.
const MARGIN: Duration = Duration::from_secs(1);

fn lazy_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_lazy()
}

// ---------------------------------------------------------------------------
// The gRPC side: the example order service.
// ---------------------------------------------------------------------------

/// The example order service on port 0, validating with `validator`;
/// stopped when dropped.
struct Orders {
    client: OrderServiceClient<Channel>,
    addr: std::net::SocketAddr,
    server: AbortHandle,
}

impl Drop for Orders {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start_orders<V: Validator>(validator: Arc<V>) -> Orders {
    start_orders_for(validator, Environment::Live).await
}

/// [`start_orders`] accepting keys of `environment` only.
async fn start_orders_for<V: Validator>(validator: Arc<V>, environment: Environment) -> Orders {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let server = OrdersServer::with_validator(listener, validator).environment(environment);
    // Bound already: the lazy channel's first call finds it listening.
    let addr = server.local_addr();
    let client = OrderServiceClient::new(lazy_channel(addr));
    let server = tokio::spawn(server.run_until(std::future::pending())).abort_handle();
    Orders {
        client,
        addr,
        server,
    }
}

impl Orders {
    /// CreateOrder with `key` over a new connection from the loopback
    /// address `source` (any of 127.0.0.0/8): the layer's client address.
    async fn create_from(
        &self,
        source: std::net::IpAddr,
        key: &str,
    ) -> Result<orders_service::pb::CreateOrderResponse, tonic::Status> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a valid URI")
            .local_address(Some(source))
            .connect_lazy();
        let message = CreateOrderRequest {
            item: "tea".to_owned(),
            quantity: 1,
        };
        OrderServiceClient::new(channel)
            .create_order(with_key(key, message))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create(
        &self,
        key: Option<&str>,
    ) -> Result<orders_service::pb::CreateOrderResponse, tonic::Status> {
        let message = CreateOrderRequest {
            item: "tea".to_owned(),
            quantity: 3,
        };
        let request = match key {
            Some(key) => with_key(key, message),
            None => Request::new(message),
        };
        self.client
            .clone()
            .create_order(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(
        &self,
        key: &str,
        id: &str,
    ) -> Result<orders_service::pb::GetOrderResponse, tonic::Status> {
        self.client
            .clone()
            .get_order(with_key(key, GetOrderRequest { id: id.to_owned() }))
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_a_valid_key_holding_the_method_scope() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey {
            id: writer_id,
            secret: writer,
            ..
        } = keyward
            .create_key("writer")
            .scopes(&["orders:read", "orders:write"])
            .await;
        let CreatedKey {
            id: reader_id,
            secret: reader,
            ..
        } = keyward.create_key("reader").scopes(&["orders:read"]).await;
        let orders = start_orders(Arc::new(RemoteValidator::new(keyward.lazy_channel()))).await;

        assert_eq!(code(orders.create(None).await), Code::Unauthenticated);
        assert_eq!(
            code(orders.create(Some("wrong")).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(orders.create(Some(&unknown_key())).await),
            Code::Unauthenticated
        );
        // An admin key is not a product key.
        assert_eq!(
            code(orders.create(Some(&keyward.acme_key)).await),
            Code::Unauthenticated
        );

        let created = orders
            .create(Some(&writer))
            .await
            .expect("a key with orders:write creates orders");
        let caller = created.caller.expect("the handler echoes its caller");
        assert_eq!(caller.key_id, writer_id);
        assert_eq!(caller.organization_id, "acme");
        assert_eq!(caller.key_name, "writer");
        let order = created.order.expect("the order");
        assert_eq!(order.created_by_key_id, writer_id);

        let status = orders
            .create(Some(&reader))
            .await
            .expect_err("orders:read does not grant orders:write");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "permission denied",
            "the message tells nothing"
        );

        let fetched = orders
            .get(&reader, &order.id)
            .await
            .expect("a key with orders:read reads orders");
        assert_eq!(fetched.caller.expect("the caller").key_id, reader_id);
        assert_eq!(fetched.order, Some(order));
    })
    .await;
}

/// The example service accepts keys of its environment only: live keys by
/// default, test keys when deployed as a test service; a key of the other
/// environment is UNAUTHENTICATED, also when a verdict for it is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_accept_only_keys_of_their_environment() {
    with_app(Backend::Sqlite, async |keyward| {
        let live = keyward
            .create_key("live client")
            .scopes(&["orders:read", "orders:write"])
            .await;
        let test = keyward
            .create_key("test client")
            .scopes(&["orders:read", "orders:write"])
            .test_environment()
            .await;
        assert!(live.secret.starts_with("sk_live_"));
        assert!(test.secret.starts_with("sk_test_"));
        // One validator, hence one verdict cache, for both services.
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let production = start_orders(Arc::clone(&validator)).await;
        let staging = start_orders_for(Arc::clone(&validator), Environment::Test).await;

        let created = production
            .create(Some(&live.secret))
            .await
            .expect("a live key works on a live service");
        let caller = created.caller.expect("the handler echoes its caller");
        assert_eq!(caller.key_id, live.id);
        assert_eq!(caller.environment, "live");
        assert_eq!(
            code(production.create(Some(&test.secret)).await),
            Code::Unauthenticated,
            "a test key is no credential for a live service"
        );

        let created = staging
            .create(Some(&test.secret))
            .await
            .expect("a test key works on a test service");
        let caller = created.caller.expect("the handler echoes its caller");
        assert_eq!(caller.key_id, test.id);
        assert_eq!(caller.environment, "test");
        assert_eq!(
            code(staging.create(Some(&live.secret)).await),
            Code::Unauthenticated,
            "a live key is refused by a test service"
        );

        // Both keys now have "allowed" verdicts in the shared cache: each is
        // still refused by the service of the other environment, without a
        // call to keyward.
        let calls = validator.calls();
        assert_eq!(
            code(production.create(Some(&test.secret)).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(staging.get(&live.secret, "ord_missing").await),
            Code::Unauthenticated
        );
        assert!(production.create(Some(&live.secret)).await.is_ok());
        assert!(staging.create(Some(&test.secret)).await.is_ok());
        assert_eq!(
            validator.calls(),
            calls,
            "every verdict came from the cache"
        );
    })
    .await;
}

/// keyward's `ValidateKey` with a one-hour cache hint: a keyward (an older
/// one, or one with a long propagation bound) that lets verdicts be reused
/// far longer than a key lives.
struct LongHint {
    keyward: KeyValidationServiceClient<Channel>,
}

#[tonic::async_trait]
impl KeyValidationService for LongHint {
    async fn validate_key(
        &self,
        request: Request<pb::ValidateKeyRequest>,
    ) -> Result<tonic::Response<pb::ValidateKeyResponse>, tonic::Status> {
        let mut response = self
            .keyward
            .clone()
            .validate_key(request.into_inner())
            .await?
            .into_inner();
        response.cache_ttl = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
        Ok(tonic::Response::new(response))
    }
}

/// The remote validator bounds a cached verdict by the key's `expires_at`:
/// with keyward hinting an hour (and the validator allowing it), a key that
/// expires in a few seconds is refused soon after it expires, not an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_verdict_is_never_reused_past_the_keys_expiry() {
    with_app(Backend::Sqlite, async |keyward| {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let long_hint = listener.local_addr().expect("an address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KeyValidationServiceServer::new(LongHint {
                    keyward: keyward.validation(),
                }))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let validator = Arc::new(
            RemoteValidator::builder(lazy_channel(long_hint))
                .max_cache_ttl(Duration::from_secs(3600))
                .build(),
        );
        let orders = start_orders(Arc::clone(&validator)).await;

        // A key that never expires keeps its verdict for the hour.
        let lasting = keyward.create_key("lasting").scopes(&["orders:read"]).await;
        assert_eq!(
            code(orders.get(&lasting.secret, "ord_missing").await),
            Code::NotFound
        );
        let calls = validator.calls();
        assert_eq!(
            code(orders.get(&lasting.secret, "ord_missing").await),
            Code::NotFound
        );
        assert_eq!(validator.calls(), calls, "cached for keyward's long hint");

        let expires_at = chrono::Utc::now() + chrono::Duration::seconds(3);
        let expiring = keyward
            .create_key("expiring")
            .scopes(&["orders:read"])
            .expires_at(expires_at)
            .await;
        assert_eq!(
            code(orders.get(&expiring.secret, "ord_missing").await),
            Code::NotFound,
            "allowed before its expiry"
        );
        let calls = validator.calls();
        let refused = eventually(DEADLINE, || async {
            (code(orders.get(&expiring.secret, "ord_missing").await) == Code::Unauthenticated)
                .then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "the expired key was still accepted {:?} after its expiry",
            chrono::Utc::now() - expires_at
        );
        assert!(
            chrono::Utc::now() >= expires_at,
            "refused only once it expired"
        );
        assert!(
            validator.calls() > calls,
            "keyward was asked again once the key expired"
        );
        server.abort();
    })
    .await;
}

/// keyward itself never hints a cache time past the key's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_cuts_its_cache_hint_at_the_keys_expiry() {
    with_app(Backend::Sqlite, async |keyward| {
        let lasting = keyward.create_key("lasting").await;
        let response = keyward.validate(&lasting.secret, &[]).await;
        let full = response.cache_ttl.expect("a hint");
        assert!(full.seconds > 0 || full.nanos > 0, "{full:?}");

        // A key expiring well within the hint; on a machine slow enough
        // that it expired before it was validated, try again.
        let mut checked = false;
        for _ in 0..5 {
            let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(400);
            let key = keyward.create_key("short").expires_at(expires_at).await;
            let asked_at = chrono::Utc::now();
            let response = keyward.validate(&key.secret, &[]).await;
            if response.code() != pb::ValidationCode::Valid {
                continue;
            }
            let hint = response.cache_ttl.expect("a hint");
            let hint = chrono::Duration::seconds(hint.seconds)
                + chrono::Duration::nanoseconds(i64::from(hint.nanos));
            assert!(
                asked_at + hint <= expires_at,
                "hint {hint:?} reaches past the expiry {expires_at} (asked at {asked_at})"
            );
            checked = true;
            break;
        }
        assert!(checked, "no short-lived key was ever validated in time");
    })
    .await;
}

/// A key's IP allowlist behind the layer, over real gRPC from two loopback
/// addresses: outside the list is PERMISSION_DENIED with the generic
/// message, and the remote validator's verdict cache never lets a "valid"
/// cached for one address serve another (both orders: allowed address
/// first, refused address first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_holds_behind_the_layer_also_from_the_verdict_cache() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { id, secret, .. } = keyward
            .create_key("local writer")
            .scopes(&["orders:write"])
            .with(|r| r.allowed_cidrs = vec!["127.0.0.1/32".into()])
            .await;
        let (inside, outside) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let refused = |result: Result<_, tonic::Status>| {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), Code::PermissionDenied);
            assert_eq!(status.message(), "permission denied", "nothing told");
        };

        // Allowed address first: its "valid" is cached, and the refused
        // address hits that entry and is checked locally.
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let orders = start_orders(Arc::clone(&validator)).await;
        let created = orders.create_from(inside, &secret).await.expect("allowed");
        assert_eq!(created.caller.expect("the caller").key_id, id);
        assert_eq!(validator.calls(), 1);
        orders.create_from(inside, &secret).await.expect("allowed");
        assert_eq!(validator.calls(), 1, "a cache hit");
        refused(orders.create_from(outside, &secret).await);
        assert_eq!(validator.calls(), 1, "refused from the cached verdict");
        orders.create_from(inside, &secret).await.expect("allowed");

        // Refused address first: keyward's IP_NOT_ALLOWED is cached for that
        // address only, and the allowed address still gets through.
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let orders = start_orders(Arc::clone(&validator)).await;
        refused(orders.create_from(outside, &secret).await);
        assert_eq!(validator.calls(), 1);
        refused(orders.create_from(outside, &secret).await);
        assert_eq!(
            validator.calls(),
            1,
            "the refusal is cached for its address"
        );
        orders.create_from(inside, &secret).await.expect("allowed");
        assert_eq!(validator.calls(), 2, "another address asks keyward");
        refused(orders.create_from(outside, &secret).await);
        assert_eq!(validator.calls(), 2);

        // Lifting the list shows within the cache hint.
        keyward
            .admin()
            .update_key(keyward.acme(keyward::pb::UpdateKeyRequest {
                id: id.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["allowed_cidrs".into()],
                }),
                ..Default::default()
            }))
            .await
            .expect("UpdateKey succeeds");
        let admitted = eventually(CACHE_HINT_BOUND + MARGIN, || async {
            orders.create_from(outside, &secret).await.ok().map(drop)
        })
        .await;
        assert!(
            admitted.is_some(),
            "the lifted list shows within the cache hint"
        );
    })
    .await;
}

/// SPEC §15 behind the layer: a rate-limited key is refused
/// RESOURCE_EXHAUSTED with `retry-after` once its limit is spent, although
/// the remote validator caches verdicts: a metered key's "valid" is neither
/// cached nor shared between concurrent requests, so every request is
/// charged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_behind_the_layer_despite_its_verdict_cache() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { secret, .. } = keyward
            .create_key("ten a month")
            .scopes(&["orders:write"])
            .with(|r| {
                r.rate_limits = vec![crate::rate_limits::monthly_limit("requests", 10)];
            })
            .await;
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let orders = start_orders(Arc::clone(&validator)).await;
        // 16 concurrent requests: exactly 10 get through.
        let calls = (0..16).map(|_| orders.create(Some(&secret)));
        let results = futures_util::future::join_all(calls).await;
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 10, "{results:?}");
        assert_eq!(validator.calls(), 16, "each request asked keyward");
        let status = orders.create(Some(&secret)).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "rate limited");
        let retry_after: u64 = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a retry-after in seconds");
        assert!(retry_after >= 1);
        assert!(
            status
                .metadata()
                .get("ratelimit")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("\"requests\";r=0")),
            "{:?}",
            status.metadata()
        );

        // Credits: the second request finds none left.
        let one_credit = keyward
            .create_key("one credit")
            .scopes(&["orders:write"])
            .with(|r| r.credits = Some(crate::rate_limits::credits(1)))
            .await;
        orders
            .create(Some(&one_credit.secret))
            .await
            .expect("the credit is spent");
        let status = orders
            .create(Some(&one_credit.secret))
            .await
            .expect_err("no credit left");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "usage exceeded");
    })
    .await;
}

/// README's claim: a service using the remote validator sees a change on
/// keyward within about a second (keyward's cache hint), even though the
/// verdict was cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_key_is_refused_within_the_cache_hint() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { id, secret: key, .. } = keyward
            .create_key("soon archived")
            .scopes(&["orders:read"])
            .await;
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let orders = start_orders(Arc::clone(&validator)).await;
        assert_eq!(code(orders.get(&key, "ord_missing").await), Code::NotFound);
        let calls = validator.calls();
        assert_eq!(code(orders.get(&key, "ord_missing").await), Code::NotFound);
        assert_eq!(validator.calls(), calls, "the verdict is cached");

        keyward.archive(&id).await;
        let archived_at = Instant::now();
        let refused = eventually(CACHE_HINT_BOUND + MARGIN, || async {
            (code(orders.get(&key, "ord_missing").await) == Code::Unauthenticated)
                .then(|| archived_at.elapsed())
        })
        .await;
        assert!(
            refused.is_some(),
            "the archived key was still accepted {} ms after ArchiveKey returned (bound {} ms + {} ms margin)",
            archived_at.elapsed().as_millis(),
            CACHE_HINT_BOUND.as_millis(),
            MARGIN.as_millis()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_refused_while_keyward_is_down() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { secret: used, .. } =
            keyward.create_key("used").scopes(&["orders:read"]).await;
        let CreatedKey { secret: fresh, .. } =
            keyward.create_key("fresh").scopes(&["orders:read"]).await;
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let orders = start_orders(Arc::clone(&validator)).await;
        assert_eq!(code(orders.get(&used, "ord_missing").await), Code::NotFound);

        keyward.stop().await;

        // A key with no cached verdict is refused at once.
        assert_eq!(
            code(orders.get(&fresh, "ord_missing").await),
            Code::Unavailable
        );
        // A cached verdict may be reused for keyward's hint; then refused.
        let refused = eventually(DEADLINE, || async {
            (code(orders.get(&used, "ord_missing").await) == Code::Unavailable).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "the key was still accepted with keyward down"
        );
        let calls = validator.calls();
        for key in [&used, &fresh] {
            for _ in 0..3 {
                assert_eq!(
                    code(orders.get(key, "ord_missing").await),
                    Code::Unavailable
                );
                assert_eq!(code(orders.create(Some(key)).await), Code::Unavailable);
            }
        }
        // Every refusal was keyward's absence, not a cached denial: each of
        // the 12 requests asked keyward again.
        assert_eq!(validator.calls(), calls + 12);
    })
    .await;
}

/// Counts the lookups that have started (been polled once), so a test can
/// tell when every request has joined the validator's single flight.
struct Started {
    inner: Arc<RemoteValidator>,
    started: AtomicUsize,
}

impl Validator for Started {
    fn validate<'a>(&'a self, request: ValidationRequest<'a>) -> ValidationFuture<'a> {
        let mut lookup = self.inner.validate(request);
        let mut counted = false;
        Box::pin(std::future::poll_fn(move |cx| {
            let poll = lookup.as_mut().poll(cx);
            if !counted {
                counted = true;
                self.started.fetch_add(1, Ordering::SeqCst);
            }
            poll
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_uncached_key_make_one_validate_key_call() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey {
            id, secret: key, ..
        } = keyward
            .create_key("busy")
            .scopes(&["orders:read", "orders:write"])
            .await;
        // The validator asks a second keyward over the same database that is
        // bound but not serving yet: its one call waits in the listen backlog
        // until every request has joined it, whatever the machine's speed.
        let replica = keyward.build_replica().await;
        let remote = Arc::new(
            RemoteValidator::builder(lazy_channel(replica.local_addr()))
                .timeout(Duration::from_secs(60))
                .build(),
        );
        let validator = Arc::new(Started {
            inner: Arc::clone(&remote),
            started: AtomicUsize::new(0),
        });
        let orders = Arc::new(start_orders(Arc::clone(&validator)).await);

        let requests: Vec<_> = (0..100)
            .map(|_| {
                let (orders, key) = (Arc::clone(&orders), key.clone());
                tokio::spawn(async move { orders.create(Some(&key)).await })
            })
            .collect();
        let all_started = eventually(Duration::from_secs(60), || async {
            (validator.started.load(Ordering::SeqCst) == 100).then_some(())
        })
        .await;
        assert!(all_started.is_some(), "every request reaches the validator");
        assert_eq!(remote.calls(), 1);

        let replica = serve_until_dropped(replica);
        for request in requests {
            let created = request
                .await
                .expect("no panic")
                .expect("every request is let through");
            assert_eq!(created.caller.expect("the caller").key_id, id);
        }
        assert_eq!(remote.calls(), 1, "one ValidateKey call for 100 requests");

        replica.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// The HTTP side: an axum router behind the same layer.
// ---------------------------------------------------------------------------

/// `GET /whoami` (any valid key), `POST /orders` (needs `orders:write`),
/// `GET /headers` (tells which credential headers the handler saw).
fn http_app(validator: Arc<RemoteValidator>, hide_credentials: bool) -> Router {
    let auth = KeywardAuthLayer::from_shared(validator)
        .require_scopes(
            "/orders",
            [Scope::parse("orders:write").expect("a valid scope")],
        )
        .hide_credentials(hide_credentials);
    Router::new()
        .route("/whoami", get(whoami))
        .route("/orders", post(whoami))
        .route("/headers", get(credential_headers))
        .layer(auth)
}

async fn whoami(Extension(identity): Extension<Identity>) -> String {
    format!("{} {}", identity.key_id, identity.organization_id)
}

async fn credential_headers(headers: HeaderMap) -> String {
    format!(
        "authorization={} x-api-key={}",
        headers.contains_key(AUTHORIZATION),
        headers.contains_key("x-api-key")
    )
}

/// Sends one request through `app`: the status, the headers and the body.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut request = HttpRequest::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::empty()).expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .expect("a small body");
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_get_401_403_200_and_503_when_keyward_is_down() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey {
            id: reader_id,
            secret: reader,
            ..
        } = keyward.create_key("reader").scopes(&["orders:read"]).await;
        let CreatedKey { secret: fresh, .. } =
            keyward.create_key("fresh").scopes(&["orders:read"]).await;
        let app = http_app(
            Arc::new(RemoteValidator::new(keyward.lazy_channel())),
            false,
        );

        let (status, headers, _) = send(&app, "GET", "/whoami", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(WWW_AUTHENTICATE));
        let (status, headers, _) =
            send(&app, "GET", "/whoami", &[("authorization", "Bearer wrong")]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(WWW_AUTHENTICATE));

        let bearer = format!("Bearer {reader}");
        let (status, _, body) = send(&app, "GET", "/whoami", &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("{reader_id} acme"));
        let (status, _, body) = send(&app, "GET", "/whoami", &[("x-api-key", &reader)]).await;
        assert_eq!(status, StatusCode::OK, "x-api-key works too");
        assert_eq!(body, format!("{reader_id} acme"));

        let (status, _, body) = send(&app, "POST", "/orders", &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.is_empty(), "a denial tells nothing");

        keyward.stop().await;
        let (status, _, _) = send(&app, "GET", "/whoami", &[("x-api-key", &fresh)]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let refused = eventually(DEADLINE, || async {
            let (status, _, _) = send(&app, "GET", "/whoami", &[("authorization", &bearer)]).await;
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "the key was still accepted with keyward down"
        );
    })
    .await;
}

/// Over HTTP, a client outside the key's allowlist gets an empty 403, and
/// one inside 200. The address comes from a `ClientIp` extension, as a
/// non-tonic server sets it (axum in process has no connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_outside_the_allowlist_get_403() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { id, secret, .. } = keyward
            .create_key("office")
            .with(|r| r.allowed_cidrs = vec!["203.0.113.0/24".into()])
            .await;
        let app = http_app(
            Arc::new(RemoteValidator::new(keyward.lazy_channel())),
            false,
        );
        let from = async |client: Option<[u8; 4]>| {
            let mut request = HttpRequest::builder()
                .uri("/whoami")
                .header("x-api-key", &secret)
                .body(Body::empty())
                .expect("a valid request");
            if let Some(ip) = client {
                request
                    .extensions_mut()
                    .insert(keyward_auth::ClientIp(ip.into()));
            }
            let response = app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .expect("a small body");
            (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
        };
        assert_eq!(
            from(Some([203, 0, 113, 7])).await,
            (StatusCode::OK, format!("{id} acme"))
        );
        for outside in [Some([198, 51, 100, 1]), None] {
            assert_eq!(
                from(outside).await,
                (StatusCode::FORBIDDEN, String::new()),
                "{outside:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hide_credentials_strips_the_key_before_the_handler() {
    with_app(Backend::Sqlite, async |keyward| {
        let CreatedKey { secret: key, .. } = keyward.create_key("hidden").await;
        let validator = Arc::new(RemoteValidator::new(keyward.lazy_channel()));
        let bearer = format!("Bearer {key}");
        let hiding = http_app(Arc::clone(&validator), true);
        let showing = http_app(validator, false);

        for headers in [
            &[("authorization", bearer.as_str())][..],
            &[("x-api-key", key.as_str())][..],
            // Both: the bearer key is the one validated; neither header is passed on.
            &[("authorization", bearer.as_str()), ("x-api-key", "other")][..],
        ] {
            let (status, _, body) = send(&hiding, "GET", "/headers", headers).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "authorization=false x-api-key=false", "{headers:?}");
        }
        let (status, _, body) =
            send(&showing, "GET", "/headers", &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "authorization=true x-api-key=false");
    })
    .await;
}
