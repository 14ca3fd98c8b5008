//! Building and running the server: the application binds its own listener, so
//! tests start it on port 0 and read the real address back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyward_auth::KeywardAuthLayer;
use keyward_core::{
    Actor, ActorKind, ApiKeySecret, Description, Environment, KeyKind, KeyName, LookupHasher,
    Metadata, OrganizationId, Scopes,
};
use keyward_store::{KeyMaterial, NewKey, Store, StoreError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::AdminApi;
pub use crate::config::Settings;
use crate::config::{Cidr, DatabaseArgs, LimitSettings, TlsSettings};
use crate::connection::{InFlightLimitLayer, LimitedIncoming, ServerIncoming};
use crate::ext_authz::{AuthorizationServer, ExtAuthz};
use crate::limits::Limiter;
use crate::metrics::{self, AdminMetrics};
use crate::pb;
use crate::pb::key_admin_service_server::KeyAdminServiceServer;
use crate::request_id::RequestIdLayer;
use crate::tls::{ServerTls, TlsError, TlsFiles};
use crate::unary::UnaryRouteLayer;
use crate::validation::{AdminValidator, KeyValidator, follow_changes};
use crate::validation_api::{KeyValidationServiceServer, ValidationApi};

/// Every service on keyward's port, as server reflection lists them.
pub const ADVERTISED_SERVICES: &[&str] = &[
    KEY_ADMIN_SERVICE,
    KEY_VALIDATION_SERVICE,
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// How long a shutdown waits for open requests and connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a shutdown waits for the periodic flusher to finish, and then for
/// the last flush of pending last-used data.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Largest admin response: a full ListKeys page of keys with every field at
/// its maximum is about 27 MB.
const MAX_ADMIN_RESPONSE: usize = 32 << 20;
/// Largest ValidateKey or Check response: one key's scopes and metadata.
const MAX_VALIDATION_RESPONSE: usize = 64 << 10;

const KEY_ADMIN_SERVICE: &str = "keyward.v1.KeyAdminService";
const KEY_VALIDATION_SERVICE: &str = "keyward.v1.KeyValidationService";

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
    /// The settings contradict each other.
    #[error("{0}")]
    Config(String),
    /// The lookup secret file could not be read.
    #[error("cannot read the lookup secret: {0}")]
    LookupSecret(std::io::Error),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// A built, bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    store: Store,
    hasher: LookupHasher,
    usage_flush_interval: Duration,
    usage_retention: Duration,
    trusted_proxies: Vec<Cidr>,
    limits: LimitSettings,
    validator: Arc<KeyValidator>,
    /// TLS on the listener, if configured.
    tls: Option<ServerTls>,
    /// Its handshake deadline and reload interval.
    tls_settings: TlsSettings,
    /// The `/metrics` listener and what it serves, when `--metrics-listen` is set.
    metrics: Option<(TcpListener, Arc<Registry>)>,
    admin_metrics: AdminMetrics,
    /// The newest committed feed position when the cache was empty: the
    /// follower applies every event after it.
    feed_head: i64,
}

/// Opens the database, applies migrations and checks the hasher against it.
pub async fn open_store(
    database: &DatabaseArgs,
    hasher: &LookupHasher,
) -> Result<Store, StoreError> {
    let store = Store::connect_with(&database.database_url.0, database.store_options()).await?;
    store.migrate().await?;
    store.check_hasher(&hasher.fingerprint()).await?;
    Ok(store)
}

impl Application {
    /// Checks the settings, opens the store and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.check().map_err(StartupError::Config)?;
        // Before the database: a bad certificate is a configuration error
        // worth reporting at once.
        let tls = TlsFiles::from_settings(&settings.tls)
            .map(ServerTls::load)
            .transpose()?;
        let hasher = settings
            .database
            .hasher()
            .map_err(StartupError::LookupSecret)?;
        let store = open_store(&settings.database, &hasher).await?;
        // Read before anything can be cached, so the follower needs to forget
        // nothing (`seq` order is commit order: no earlier event can follow).
        let feed_head = store.last_event_seq().await?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        if tls.is_none() && !settings.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %settings.listen,
                "serving plaintext on a non-loopback address: keys and admin calls cross the \
                 network unencrypted; set --tls-cert and --tls-key"
            );
        }
        let limiter = Limiter::connect(settings.limiter.clone())
            .await
            .map_err(|error| StartupError::Config(error.to_string()))?;
        let validator = Arc::new(
            KeyValidator::new(store.clone(), hasher.clone(), settings.validator)
                .with_limiter(limiter),
        );
        if validator.refuses_metered_keys() && store.has_metered_keys().await? {
            return Err(StartupError::Config(UNCOUNTED_REPLICAS.to_owned()));
        }
        let admin_metrics = AdminMetrics::default();
        let metrics = match settings.metrics_listen {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?;
                let registry = metrics::registry(&validator, &store, &admin_metrics);
                Some((listener, Arc::new(registry)))
            }
        };
        Ok(Self {
            listener,
            store,
            hasher,
            usage_flush_interval: settings.usage_flush_interval,
            usage_retention: settings.usage_retention,
            trusted_proxies: settings.trusted_proxies,
            limits: settings.limits,
            validator,
            tls,
            tls_settings: settings.tls,
            metrics,
            admin_metrics,
            feed_head,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The address `/metrics` is served on, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let (listener, _) = self.metrics.as_ref()?;
        Some(
            listener
                .local_addr()
                .expect("a bound TCP listener has a local address"),
        )
    }

    /// The admin API's request counters.
    pub fn admin_metrics(&self) -> &AdminMetrics {
        &self.admin_metrics
    }

    /// The store, for tools and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lookup hasher the settings configured.
    pub fn hasher(&self) -> &LookupHasher {
        &self.hasher
    }

    /// The validation path (its cache and counters), for tools and tests.
    pub fn validator(&self) -> &Arc<KeyValidator> {
        &self.validator
    }

    /// Serves until `shutdown` completes, lets open requests finish for at
    /// most [`SHUTDOWN_GRACE`], then stops the periodic flusher (a batch it
    /// is writing is finished) and flushes pending last-used data once more,
    /// each within [`SHUTDOWN_FLUSH_DEADLINE`].
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let addr = self.local_addr();
        let validator = self.validator;
        let limits = self.limits;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<KeyAdminServiceServer<AdminApi>>()
            .await;
        health_reporter
            .set_serving::<KeyValidationServiceServer>()
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
        // Reflection and health requests are a name or two: the small limit.
        let small = limits.max_validation_message_size;
        let reflection_v1 = reflection().build_v1()?.max_decoding_message_size(small);
        let reflection_v1alpha = reflection()
            .build_v1alpha()?
            .max_decoding_message_size(small);

        // The admin API is protected by the same layer product services use;
        // everything else on this port is public by design. The layer takes
        // the client's address from the connection (plaintext or TLS), or
        // from `x-forwarded-for` through `--trusted-proxies` only, and only
        // for the admin calls it authenticates: a public call pays nothing.
        let auth = KeywardAuthLayer::new(AdminValidator(Arc::clone(&validator)))
            .trusted_proxies(self.trusted_proxies.iter().copied())
            .public_prefix("/keyward.v1.KeyValidationService/")
            .public_prefix("/grpc.health.v1.Health/")
            .public_prefix("/envoy.service.auth.v3.Authorization/")
            .public_prefix("/grpc.reflection.v1.ServerReflection/")
            .public_prefix("/grpc.reflection.v1alpha.ServerReflection/");

        let (stop_flusher, flusher_stopped) = tokio::sync::watch::channel(());
        let mut flusher = tokio::spawn(flush_usage_until(
            Arc::clone(&validator),
            self.usage_flush_interval,
            self.usage_retention,
            flusher_stopped,
        ));
        let follower = tokio::spawn(follow_changes(Arc::clone(&validator), self.feed_head));
        let readiness = tokio::spawn(report_readiness(
            self.store.clone(),
            Arc::clone(&validator),
            health_reporter,
        ));
        let tls_watcher = self
            .tls
            .as_ref()
            .map(|tls| tokio::spawn(tls.clone().watch(self.tls_settings.tls_reload_interval)));
        match &self.tls {
            Some(tls) => tracing::info!(
                %addr,
                client_certificates = tls.requires_client_certificates(),
                "keyward listening (TLS)"
            ),
            None => tracing::info!(%addr, "keyward listening"),
        }
        let metrics_server = self.metrics.map(|(listener, registry)| {
            let addr = listener.local_addr().ok();
            tracing::info!(addr = ?addr, "metrics listening at /metrics");
            tokio::spawn(metrics::serve(listener, registry))
        });
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let stopping = Arc::clone(&stopping);
            async move {
                shutdown.await;
                stopping.notify_one();
            }
        };
        // Without TCP_NODELAY a small response waits for the peer's delayed
        // ACK (~40 ms): every ext_authz check and every unary call pays it.
        let incoming = LimitedIncoming::new(
            TcpIncoming::from(self.listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(limits.keepalive_interval)),
            limits.max_connections,
        );
        let incoming = match self.tls {
            Some(tls) => {
                ServerIncoming::tls(incoming, tls, self.tls_settings.tls_handshake_timeout)
            }
            None => ServerIncoming::plaintext(incoming),
        };
        let validation =
            KeyValidationServiceServer::new(ValidationApi::new(Arc::clone(&validator)))
                .max_decoding_message_size(limits.max_validation_message_size)
                .max_encoding_message_size(MAX_VALIDATION_RESPONSE);
        let authorization =
            AuthorizationServer::new(ExtAuthz::new(Arc::clone(&validator), &self.trusted_proxies))
                .max_decoding_message_size(limits.max_check_message_size)
                .max_encoding_message_size(MAX_VALIDATION_RESPONSE);
        // Bounded by construction (SPEC §11): each layer caps a request's
        // size, time or the number in flight and fails fast with a status.
        let serve = Server::builder()
            .timeout(limits.request_timeout)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_size)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // One semaphore for the whole server, taken per request in
            // `call`; beyond it, RESOURCE_EXHAUSTED at once.
            .layer(InFlightLimitLayer::new(limits.max_in_flight))
            .layer(RequestIdLayer)
            .layer(self.admin_metrics)
            .layer(auth)
            // Innermost: the hot methods' calls skip the router.
            .layer(UnaryRouteLayer::new(validation.clone()))
            .layer(UnaryRouteLayer::new(authorization.clone()))
            .add_service(
                KeyAdminServiceServer::new(AdminApi::new(
                    self.store.clone(),
                    self.hasher.clone(),
                    Arc::clone(&validator),
                ))
                .max_decoding_message_size(limits.max_admin_message_size)
                .max_encoding_message_size(MAX_ADMIN_RESPONSE),
            )
            .add_service(validation)
            .add_service(authorization)
            .add_service(health_service.max_decoding_message_size(small))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, signal);
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
        follower.abort();
        readiness.abort();
        if let Some(watcher) = tls_watcher {
            watcher.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        // Not an abort: a batch the flusher has taken is written, not dropped.
        let _ = stop_flusher.send(());
        if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, &mut flusher)
            .await
            .is_err()
        {
            tracing::warn!("the periodic usage flush did not finish in time; abandoning it");
            flusher.abort();
        }
        if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, validator.flush_usage())
            .await
            .is_err()
        {
            tracing::warn!(
                "pending last-used data not written: the database did not answer in time"
            );
        }
        // Unspent credit leases go back to Redis for the other replicas.
        if tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, validator.limiter().shutdown())
            .await
            .is_err()
        {
            tracing::warn!("unspent credit leases not returned: Redis did not answer in time");
        }
        tracing::info!("keyward stopped");
        Ok(served?)
    }
}

/// Why a replica of a shared database without Redis refuses metered keys
/// ([`KeyValidator::refuses_metered_keys`]): its startup error when some
/// exist, and the admin API's FAILED_PRECONDITION for a new one.
pub const UNCOUNTED_REPLICAS: &str = "keys with rate limits or credits on a shared database need \
    --redis-url, so that replicas count together; or start every replica with \
    --per-replica-limits to accept that each replica enforces them alone";

/// How often old usage counts are pruned (and at start).
pub const USAGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Most usage counts one prune deletes; a full prune is followed by another
/// at the next flush tick until the backlog is gone.
pub const USAGE_PRUNE_BATCH: u64 = 10_000;

/// Flushes usage every `every` until `stop` fires, and prunes usage counts
/// older than `retention` (at start, then every [`USAGE_PRUNE_INTERVAL`],
/// at most [`USAGE_PRUNE_BATCH`] rows per tick). A flush in progress is
/// never raced against `stop`, so a batch once taken is written (or put back).
async fn flush_usage_until(
    validator: Arc<KeyValidator>,
    every: Duration,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        // Logged there; a batch that failed stays pending for the next tick.
        let _ = validator.flush_usage().await;
        if tokio::time::Instant::now() >= next_prune {
            // Logged there; a failed prune is tried again next interval.
            let backlog = validator
                .prune_usage(retention, USAGE_PRUNE_BATCH)
                .await
                .is_ok_and(|pruned| pruned >= USAGE_PRUNE_BATCH);
            if !backlog {
                next_prune = tokio::time::Instant::now() + USAGE_PRUNE_INTERVAL;
            }
        }
    }
}

/// How often readiness is re-evaluated (a database ping; the feed's age).
pub const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `grpc.health.v1` true to readiness (SPEC §11), each service on its
/// own tick so a slow ping never delays the other:
/// - the admin service is NOT_SERVING while a ping of its database fails or
///   outlives the store's operation deadline (`--database-timeout`), i.e.
///   exactly while an admin call would fail for want of the database;
/// - the validation service is SERVING while the validator answers from
///   cache: the change feed synced within `stale_if_error`
///   ([`KeyValidator::answers_from_cache`], the test every cached verdict
///   passes), so health and verdicts cannot disagree.
///
/// Watchers are told only of changes. Runs until aborted.
async fn report_readiness(store: Store, validator: Arc<KeyValidator>, reporter: HealthReporter) {
    let admin = {
        let reporter = reporter.clone();
        async move {
            let (mut ticker, mut serving) = (readiness_ticker(), true);
            loop {
                ticker.tick().await;
                let reachable = store.ping().await.is_ok();
                report(&reporter, KEY_ADMIN_SERVICE, &mut serving, reachable).await;
            }
        }
    };
    let validation = async move {
        let (mut ticker, mut serving) = (readiness_ticker(), true);
        loop {
            ticker.tick().await;
            let answers = validator.answers_from_cache();
            report(&reporter, KEY_VALIDATION_SERVICE, &mut serving, answers).await;
        }
    };
    tokio::join!(admin, validation);
}

/// Ticks every [`READINESS_INTERVAL`]; a late tick delays the next ones.
fn readiness_ticker() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(READINESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Tells `reporter` that `service` is now `serving`, if that is a change.
async fn report(reporter: &HealthReporter, service: &str, current: &mut bool, serving: bool) {
    if *current == serving {
        return;
    }
    *current = serving;
    let status = if serving {
        tracing::info!(service, "serving again");
        ServingStatus::Serving
    } else {
        let reason = if service == KEY_ADMIN_SERVICE {
            "the database is unreachable"
        } else {
            "the change feed has not been read for stale-if-error"
        };
        tracing::warn!(service, reason, "not serving");
        ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
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
            policy: keyward_core::Policy::default(),
        })
        .await?;
    tracing::info!(key_id = %key.id, organization_id = %key.organization_id, "admin key created");
    Ok(secret)
}
