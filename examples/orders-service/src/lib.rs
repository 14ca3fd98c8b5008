//! orders-service: an example product service protected by keyward API keys.
//!
//! It shows the whole integration of `keyward-auth`: a tonic service behind
//! [`KeywardAuthLayer`], which validates each request's key through a
//! [`RemoteValidator`] (keyward's `ValidateKey` over gRPC, with a local
//! verdict cache), requires `orders:read` for `GetOrder` and `orders:write`
//! for `CreateOrder`, accepts keys of one environment only (live keys by
//! default: a production service refuses `sk_test_` keys, and a test
//! deployment, [`OrdersServer::environment`], refuses `sk_live_` ones), and
//! hands the caller's [`Identity`] to the handlers in the request extensions.
//! Orders live in memory, per organization.
//!
//! Like keyward's `Application`, [`OrdersServer`] binds nothing itself: it is
//! given a listener, so tests start it on port 0. It depends on the auth layer
//! and tonic only: never on the keyward server or a database.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use keyward_auth::{
    ClientTls, Environment, Identity, KeywardAuthLayer, RemoteValidator, Scope, TlsError, Validator,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::pb::order_service_server::{OrderService, OrderServiceServer};

/// Generated protobuf and gRPC code for `orders.v1` (server and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("orders.v1");
}

/// The gRPC path of `GetOrder`, which needs `orders:read`.
pub const GET_ORDER: &str = "/orders.v1.OrderService/GetOrder";
/// The gRPC path of `CreateOrder`, which needs `orders:write`.
pub const CREATE_ORDER: &str = "/orders.v1.OrderService/CreateOrder";

/// The auth layer of the order service: every call needs a valid key of
/// `environment`, each method its scope; the key is stripped before the
/// handlers run, since they only need the identity.
pub fn auth_layer<V: Validator>(
    validator: Arc<V>,
    environment: Environment,
) -> KeywardAuthLayer<V> {
    KeywardAuthLayer::from_shared(validator)
        .require_environment(environment)
        .require_scopes(GET_ORDER, [scope("orders:read")])
        .require_scopes(CREATE_ORDER, [scope("orders:write")])
        .hide_credentials(true)
}

fn scope(raw: &str) -> Scope {
    Scope::parse(raw).expect("the order service's scopes are valid literals")
}

/// A bound, not yet running order service.
#[derive(Debug)]
pub struct OrdersServer<V = RemoteValidator> {
    listener: TcpListener,
    validator: Arc<V>,
    environment: Environment,
}

impl OrdersServer<RemoteValidator> {
    /// An order service on `listener` validating keys with the keyward server
    /// at `keyward_url`: `http://127.0.0.1:50051` in plaintext, or an
    /// `https://` URL spoken over TLS with `tls`'s CA bundle and client
    /// certificate (for a keyward that requires mTLS). The connection is
    /// made lazily: while keyward cannot be reached, or refuses the client's
    /// certificate, calls fail as UNAVAILABLE.
    pub fn build(
        listener: TcpListener,
        keyward_url: &str,
        tls: &ClientTls,
    ) -> Result<Self, TlsError> {
        Self::build_balanced(listener, &[keyward_url], tls)
    }

    /// An order service on `listener` validating keys with several keyward
    /// replicas, each URL as in [`OrdersServer::build`] (all with `tls`):
    /// each `ValidateKey` goes to one of them, tonic's balancing channel
    /// picking the less loaded of two at random. It is not failover: a call
    /// sent to a replica that cannot be reached fails as UNAVAILABLE, like
    /// every call with one unreachable URL. One URL is
    /// [`OrdersServer::build`]; give at least one.
    pub fn build_balanced(
        listener: TcpListener,
        keyward_urls: &[impl AsRef<str>],
        tls: &ClientTls,
    ) -> Result<Self, TlsError> {
        let mut endpoints = keyward_urls
            .iter()
            .map(|url| keyward_auth::tls::endpoint(url.as_ref(), tls))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = match endpoints.len() {
            1 => endpoints.remove(0).connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(Self::with_validator(
            listener,
            Arc::new(RemoteValidator::new(channel)),
        ))
    }
}

impl<V: Validator> OrdersServer<V> {
    /// An order service on `listener` validating keys with `validator`,
    /// accepting live keys only.
    pub fn with_validator(listener: TcpListener, validator: Arc<V>) -> Self {
        Self {
            listener,
            validator,
            environment: Environment::Live,
        }
    }

    /// Accepts keys of `environment` only (default `Live`); keys of the
    /// other environment are refused as UNAUTHENTICATED.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The validator, for its metrics (such as `RemoteValidator::calls`).
    pub fn validator(&self) -> &Arc<V> {
        &self.validator
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        Server::builder()
            .layer(auth_layer(self.validator, self.environment))
            .add_service(OrderServiceServer::new(Orders::default()))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

/// The order service's handlers over an in-memory store.
#[derive(Debug, Default)]
pub struct Orders {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_id: u64,
    /// Orders by (organization, order id): an organization sees only its own.
    orders: HashMap<(String, String), pb::Order>,
}

impl Orders {
    /// The caller the auth layer let through.
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        // The layer always inserts the identity before a handler runs; its
        // absence means the service was served without the layer: refuse.
        request
            .extensions()
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unauthenticated"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only map operations run under the lock; a poisoned one is consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn to_caller(identity: &Identity) -> pb::Caller {
    pb::Caller {
        key_id: identity.key_id.clone(),
        organization_id: identity.organization_id.clone(),
        key_name: identity.name.clone(),
        scopes: identity.scopes.clone(),
        environment: identity.environment.as_str().to_owned(),
    }
}

#[tonic::async_trait]
impl OrderService for Orders {
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let identity = self.caller(&request)?;
        let id = request.into_inner().id;
        let order = self
            .state()
            .orders
            .get(&(identity.organization_id.clone(), id))
            .cloned()
            .ok_or_else(|| Status::not_found("order not found"))?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order),
            caller: Some(to_caller(&identity)),
        }))
    }

    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let identity = self.caller(&request)?;
        let req = request.into_inner();
        if req.item.trim().is_empty() {
            return Err(Status::invalid_argument("item must not be empty"));
        }
        if req.quantity == 0 {
            return Err(Status::invalid_argument("quantity must be at least 1"));
        }
        let order = {
            let mut state = self.state();
            state.last_id += 1;
            let order = pb::Order {
                id: format!("ord_{}", state.last_id),
                item: req.item,
                quantity: req.quantity,
                created_by_key_id: identity.key_id.clone(),
            };
            state.orders.insert(
                (identity.organization_id.clone(), order.id.clone()),
                order.clone(),
            );
            order
        };
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order),
            caller: Some(to_caller(&identity)),
        }))
    }
}
