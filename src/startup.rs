//! Building and running the server: the application binds its own listener, so
//! tests start it on port 0 and read the real address back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use keyward_auth::KeywardAuthLayer;
use keyward_core::{
    Actor, ActorKind, ApiKeySecret, Description, Environment, KeyKind, KeyName, LookupHasher,
    Metadata, OrganizationId, Scopes,
};
use keyward_store::{KeyMaterial, NewKey, Store, StoreError};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::admin::AdminApi;
use crate::ext_authz::ExtAuthz;
use crate::pb;
use crate::pb::key_admin_service_server::KeyAdminServiceServer;
use crate::pb::key_validation_service_server::KeyValidationServiceServer;
use crate::request_id::RequestIdLayer;
use crate::validation::{AdminValidator, KeyValidator, ValidatorSettings, follow_changes};
use crate::validation_api::ValidationApi;

/// Every service on keyward's port, as server reflection lists them.
pub const ADVERTISED_SERVICES: &[&str] = &[
    "keyward.v1.KeyAdminService",
    "keyward.v1.KeyValidationService",
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// How long a shutdown waits for open requests and connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database could not be opened, migrated or checked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Reflection could not load the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What `Application::build` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database URL.
    pub database_url: String,
    /// Listen address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The lookup hasher.
    pub hasher: LookupHasher,
    /// How often last-used data is flushed.
    pub usage_flush_interval: Duration,
    /// Cache, change-feed and outage settings of the validation path.
    pub validator: ValidatorSettings,
}

/// A built, bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    store: Store,
    hasher: LookupHasher,
    usage_flush_interval: Duration,
    validator: Arc<KeyValidator>,
}

/// Opens the database, applies migrations and checks the hasher against it.
pub async fn open_store(database_url: &str, hasher: &LookupHasher) -> Result<Store, StoreError> {
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    store.check_hasher(&hasher.fingerprint()).await?;
    Ok(store)
}

impl Application {
    /// Opens the store and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let store = open_store(&settings.database_url, &settings.hasher).await?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let validator = Arc::new(KeyValidator::new(
            store.clone(),
            settings.hasher.clone(),
            settings.validator,
        ));
        Ok(Self {
            listener,
            store,
            hasher: settings.hasher,
            usage_flush_interval: settings.usage_flush_interval,
            validator,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The store, for tools and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The validation path (its cache and counters), for tools and tests.
    pub fn validator(&self) -> &Arc<KeyValidator> {
        &self.validator
    }

    /// Serves until `shutdown` completes, lets open requests finish for at
    /// most [`SHUTDOWN_GRACE`], then flushes pending last-used data.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let addr = self.local_addr();
        let validator = self.validator;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<KeyAdminServiceServer<AdminApi>>()
            .await;
        health_reporter
            .set_serving::<KeyValidationServiceServer<ValidationApi>>()
            .await;
        // Services are advertised by name so that Envoy's Authorization shows
        // in `list` too; envoy-types ships no descriptors for `describe`.
        let reflection = || {
            ADVERTISED_SERVICES.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    // google.rpc.BadRequest, so grpcurl prints field violations readably.
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        // The admin API is protected by the same layer product services use;
        // everything else on this port is public by design.
        let auth = KeywardAuthLayer::new(AdminValidator(Arc::clone(&validator)))
            .public_prefix("/keyward.v1.KeyValidationService/")
            .public_prefix("/grpc.health.v1.Health/")
            .public_prefix("/envoy.service.auth.v3.Authorization/")
            .public_prefix("/grpc.reflection.v1.ServerReflection/")
            .public_prefix("/grpc.reflection.v1alpha.ServerReflection/");

        let flusher = tokio::spawn(flush_usage_forever(
            Arc::clone(&validator),
            self.usage_flush_interval,
        ));
        let follower = tokio::spawn(follow_changes(Arc::clone(&validator)));
        tracing::info!(%addr, "keyward listening");
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let stopping = Arc::clone(&stopping);
            async move {
                shutdown.await;
                stopping.notify_one();
            }
        };
        let serve = Server::builder()
            .layer(RequestIdLayer)
            .layer(auth)
            .add_service(KeyAdminServiceServer::new(AdminApi::new(
                self.store.clone(),
                self.hasher.clone(),
                Arc::clone(&validator),
            )))
            .add_service(KeyValidationServiceServer::new(ValidationApi::new(
                Arc::clone(&validator),
            )))
            .add_service(AuthorizationServer::new(ExtAuthz::new(Arc::clone(
                &validator,
            ))))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Without TCP_NODELAY a small response waits for the peer's delayed
            // ACK (~40 ms): every ext_authz check and every unary call pays it.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                signal,
            );
        // Clients that keep idle connections open would hold a graceful
        // shutdown forever: bound the drain.
        let served = tokio::select! {
            served = serve => served,
            () = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        flusher.abort();
        follower.abort();
        // Aborting the flusher cannot lose a batch it took: the recorder puts
        // it back. Failures are logged by `flush_usage`.
        let _ = validator.flush_usage().await;
        tracing::info!("keyward stopped");
        Ok(served?)
    }
}

async fn flush_usage_forever(validator: Arc<KeyValidator>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Logged there; the batch stays pending for the next tick.
        let _ = validator.flush_usage().await;
    }
}

/// Creates an admin key for `organization` (creating the organization if
/// needed) and returns the raw key. The actor is the CLI.
pub async fn bootstrap(
    store: &Store,
    hasher: &LookupHasher,
    organization: OrganizationId,
    name: KeyName,
) -> Result<ApiKeySecret, StoreError> {
    store.ensure_organization(&organization).await?;
    let secret = ApiKeySecret::generate(KeyKind::Admin, Environment::Live);
    let key = store
        .create_key(NewKey {
            organization_id: organization,
            workspace_id: None,
            name,
            description: Description::default(),
            scopes: Scopes::default(),
            metadata: Metadata::default(),
            secret: KeyMaterial::new(hasher, &secret),
            created_by: Actor {
                kind: ActorKind::ServiceAccount,
                id: "cli".to_owned(),
            },
            user_id: None,
            service_account_id: None,
            expires_at: None,
        })
        .await?;
    tracing::info!(key_id = %key.id, organization_id = %key.organization_id, "admin key created");
    Ok(secret)
}
