//! Prometheus metrics (SPEC §13), served on their own listener
//! (`--metrics-listen`, path `/metrics`, see [`serve`]).
//!
//! The validation path pays one relaxed atomic increment per counter it
//! touches: every label set it uses is resolved once, when the validator is
//! built ([`ValidationMetrics`] holds an array of counters indexed by path and
//! code), and latency comes from the clock reads the validator already makes.
//! Gauges (cache size, database pools, feed age) are read only when scraped
//! ([`Gauges`]). Labels hold codes, paths, method names and pool names only:
//! never a key, a hash, a hint or a key id.

mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use keyward_core::ValidationCode;
use keyward_store::{PoolUsage, Store};
use pin_project_lite::pin_project;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

pub use self::http::{METRICS_PATH, serve, text_format};
use crate::limits::Limiter;
use crate::validation::KeyValidator;

/// Which entrypoint validated a key: the `path` label of
/// `keyward_validations_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ValidationPath {
    /// `keyward.v1.KeyValidationService/ValidateKey`.
    ValidateKey,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz,
    /// In the process: the admin API's own authentication, and callers of
    /// `KeyValidator::validate` that name no entrypoint.
    #[default]
    InProcess,
}

impl ValidationPath {
    /// Every path, in index order.
    pub const ALL: [Self; 3] = [Self::ValidateKey, Self::ExtAuthz, Self::InProcess];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ValidateKey => "validate_key",
            Self::ExtAuthz => "ext_authz",
            Self::InProcess => "in_process",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    code: &'static str,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// Bucket bounds of `keyward_validation_duration_seconds`: 10 µs (every
/// cache hit) to the longest lookup deadline.
const VALIDATION_BOUNDS: &[f64] = &[
    0.000_01, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Bucket bounds of `keyward_feed_lag_seconds`: around the sync interval
/// (250 ms by default) and the 1 s propagation bound, up to an outage.
const FEED_LAG_BOUNDS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type PathHistograms = Family<PathLabel, Histogram, fn() -> Histogram>;

/// The validation path's counters, owned by the `KeyValidator`.
#[derive(Debug)]
pub struct ValidationMetrics {
    validations: Family<ValidationLabels, Counter>,
    /// `validations`' counters, resolved once: `[path][code]`.
    by_code: [[Counter; ValidationCode::ALL.len()]; 3],
    errors: Family<PathLabel, Counter>,
    errors_by_path: [Counter; 3],
    durations: PathHistograms,
    durations_by_path: [Histogram; 3],
    /// A presented key found in the cache.
    pub(crate) cache_hits: Counter,
    /// A presented hash remembered as unknown.
    pub(crate) negative_cache_hits: Counter,
    /// A presented key that was in neither (read from the database).
    pub(crate) cache_misses: Counter,
    /// Database reads of a missed key that failed or timed out.
    pub(crate) lookup_errors: Counter,
    /// Seconds from a change's commit to this replica applying it.
    pub(crate) feed_lag: Histogram,
    /// Feed events applied.
    pub(crate) feed_events: Counter,
    /// Feed reads that failed or timed out.
    pub(crate) feed_sync_errors: Counter,
    /// Usage flushes that wrote a batch.
    pub(crate) usage_flushes: Counter,
    /// Keys whose usage (last-used data, counts) those batches wrote.
    pub(crate) usage_flushed_keys: Counter,
    /// Usage count rows (key, minute, outcome) those batches added to.
    pub(crate) usage_flushed_counts: Counter,
    /// Usage flushes that failed or timed out (the batch is kept).
    pub(crate) usage_flush_failures: Counter,
}

impl Default for ValidationMetrics {
    fn default() -> Self {
        let validations = Family::<ValidationLabels, Counter>::default();
        let by_code = ValidationPath::ALL.map(|path| {
            ValidationCode::ALL.map(|code| {
                validations
                    .get_or_create(&ValidationLabels {
                        code: code.name(),
                        path: path.label(),
                    })
                    .clone()
            })
        });
        let errors = Family::<PathLabel, Counter>::default();
        let errors_by_path = ValidationPath::ALL.map(|path| {
            errors
                .get_or_create(&PathLabel { path: path.label() })
                .clone()
        });
        let durations: PathHistograms =
            Family::new_with_constructor(|| Histogram::new(VALIDATION_BOUNDS));
        let durations_by_path = ValidationPath::ALL.map(|path| {
            durations
                .get_or_create(&PathLabel { path: path.label() })
                .clone()
        });
        Self {
            validations,
            by_code,
            errors,
            errors_by_path,
            durations,
            durations_by_path,
            cache_hits: Counter::default(),
            negative_cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            lookup_errors: Counter::default(),
            feed_lag: Histogram::new(FEED_LAG_BOUNDS),
            feed_events: Counter::default(),
            feed_sync_errors: Counter::default(),
            usage_flushes: Counter::default(),
            usage_flushed_keys: Counter::default(),
            usage_flushed_counts: Counter::default(),
            usage_flush_failures: Counter::default(),
        }
    }
}

impl ValidationMetrics {
    /// Counts one verdict of `path` that took `took`.
    #[inline]
    pub fn verdict(&self, path: ValidationPath, code: ValidationCode, took: Duration) {
        self.by_code[path.index()][code as usize].inc();
        self.durations_by_path[path.index()].observe(took);
    }

    /// Counts one validation of `path` that could not answer (UNAVAILABLE).
    pub fn error(&self, path: ValidationPath) {
        self.errors_by_path[path.index()].inc();
    }

    /// Verdicts `code` given on `path` so far.
    pub fn verdicts(&self, path: ValidationPath, code: ValidationCode) -> u64 {
        self.by_code[path.index()][code as usize].get()
    }

    /// Adds these families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "keyward_validations",
            "Validation verdicts by code (as in ValidateKey, lowercase) and entrypoint",
            self.validations.clone(),
        );
        registry.register(
            "keyward_validation_errors",
            "Validations that could not answer (UNAVAILABLE: the database was needed and failed)",
            self.errors.clone(),
        );
        registry.register(
            "keyward_validation_duration_seconds",
            "Time to a verdict inside keyward. A cache hit does no I/O and is recorded as 0 \
             (it takes well under the first bucket); a miss as its database read",
            self.durations.clone(),
        );
        for (name, help, counter) in [
            (
                "keyward_cache_hits",
                "Presented keys found in the key cache",
                &self.cache_hits,
            ),
            (
                "keyward_negative_cache_hits",
                "Presented keys remembered as unknown (no database read)",
                &self.negative_cache_hits,
            ),
            (
                "keyward_cache_misses",
                "Presented keys in neither cache (read from the database)",
                &self.cache_misses,
            ),
            (
                "keyward_database_lookup_errors",
                "Database reads of a missed key that failed or timed out",
                &self.lookup_errors,
            ),
            (
                "keyward_feed_events",
                "Change-feed events applied to the cache",
                &self.feed_events,
            ),
            (
                "keyward_feed_sync_errors",
                "Change-feed reads that failed or timed out (cached verdicts are then \
                 served for stale-if-error)",
                &self.feed_sync_errors,
            ),
            (
                "keyward_usage_flushes",
                "Last-used batches written",
                &self.usage_flushes,
            ),
            (
                "keyward_usage_flushed_keys",
                "Keys whose usage (last-used data, counts) a batch wrote",
                &self.usage_flushed_keys,
            ),
            (
                "keyward_usage_flushed_counts",
                "Usage count rows (key, minute, outcome) a batch added to",
                &self.usage_flushed_counts,
            ),
            (
                "keyward_usage_flush_failures",
                "Last-used flushes that failed or timed out (the batch is retried)",
                &self.usage_flush_failures,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "keyward_feed_lag_seconds",
            "Seconds from a change's commit (its event time, on the writer's clock) to this \
             replica applying it",
            self.feed_lag.clone(),
        );
    }
}

/// The registry `/metrics` serves: the validator's families, admin RPCs,
/// and gauges read at scrape time.
pub fn registry(validator: &Arc<KeyValidator>, store: &Store, admin: &AdminMetrics) -> Registry {
    let mut registry = Registry::default();
    validator.metrics().register(&mut registry);
    admin.register(&mut registry);
    registry.register_collector(Box::new(Gauges {
        validator: Arc::clone(validator),
        store: store.clone(),
    }));
    registry
}

/// Values read when scraped: cache sizes, feed age, database pools.
#[derive(Debug)]
struct Gauges {
    validator: Arc<KeyValidator>,
    store: Store,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: &'static str,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug,
) -> std::fmt::Result {
    // Registered metrics get a period after their help text: these too.
    let help = format!("{help}.");
    ConstGauge::new(value).encode(encoder.encode_descriptor(
        name,
        &help,
        None,
        MetricType::Gauge,
    )?)
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let validator = &self.validator;
        let (entries, unknown) = validator.cache().len();
        gauge(
            &mut encoder,
            "keyward_cache_entries",
            "Keys in the key cache",
            entries as u64,
        )?;
        gauge(
            &mut encoder,
            "keyward_cache_bytes",
            "Estimated memory held by the key cache",
            validator.cache().bytes() as u64,
        )?;
        gauge(
            &mut encoder,
            "keyward_negative_cache_entries",
            "Hashes remembered as unknown",
            unknown as u64,
        )?;
        gauge(
            &mut encoder,
            "keyward_database_lookups_in_flight",
            "Distinct missed keys being read from the database",
            validator.in_flight() as u64,
        )?;
        ConstCounter::new(validator.database_lookups()).encode(encoder.encode_descriptor(
            "keyward_database_lookups",
            "Database reads of missed keys (concurrent misses of one key share one).",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            &mut encoder,
            "keyward_feed_sync_age_seconds",
            "Seconds since the last successful change-feed read. Past a few sync intervals \
             the database is unreachable and cached verdicts are served for stale-if-error",
            validator.since_last_sync().as_secs_f64(),
        )?;
        gauge(
            &mut encoder,
            "keyward_usage_pending_keys",
            "Keys with last-used data not yet written",
            validator.usage_pending() as u64,
        )?;

        let (main, lookup) = self.store.pool_usage();
        let pools: [(&'static str, PoolUsage); 2] = [("main", main), ("lookup", lookup)];
        let mut connections = encoder.encode_descriptor(
            "keyward_database_connections",
            "Open database connections by pool (main: admin, feed, usage; lookup: cache misses) \
             and state.",
            None,
            MetricType::Gauge,
        )?;
        for (pool, usage) in pools {
            for (state, value) in [
                ("idle", usage.idle),
                ("in_use", usage.open.saturating_sub(usage.idle)),
            ] {
                ConstGauge::new(i64::from(value))
                    .encode(connections.encode_family(&PoolLabels { pool, state })?)?;
            }
        }
        let mut max = encoder.encode_descriptor(
            "keyward_database_max_connections",
            "The most connections each pool opens.",
            None,
            MetricType::Gauge,
        )?;
        for (pool, usage) in pools {
            ConstGauge::new(i64::from(usage.max))
                .encode(max.encode_family(&PoolLabel { pool })?)?;
        }
        rate_limit_metrics(&mut encoder, validator.limiter())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

/// The limiter's counters (SPEC §13 "rate-limit decisions"), read at scrape.
fn rate_limit_metrics(encoder: &mut DescriptorEncoder<'_>, limiter: &Limiter) -> std::fmt::Result {
    let stats = limiter.stats();
    let mut decisions = encoder.encode_descriptor(
        "keyward_rate_limit_decisions",
        "Calls of keys with rate limits or credits by decision: admitted, rate_limited \
         (including refusals while Redis could not answer), usage_exceeded, and \
         idempotent_repeat (answered from an earlier call, not charged).",
        None,
        MetricType::Counter,
    )?;
    for (decision, value) in [
        ("admitted", stats.admitted()),
        ("rate_limited", stats.rate_limited()),
        ("usage_exceeded", stats.usage_exceeded()),
        ("idempotent_repeat", stats.idempotent_repeats()),
    ] {
        ConstCounter::new(value).encode(decisions.encode_family(&DecisionLabel { decision })?)?;
    }
    for (name, help, value) in [
        (
            "keyward_rate_limit_redis_unavailable_refusals",
            "Calls refused because Redis could not answer (--redis-failure-mode closed).",
            stats.unavailable(),
        ),
        (
            "keyward_rate_limit_local_fallbacks",
            "Meters counted by this replica's share because Redis could not answer \
             (--redis-failure-mode local).",
            stats.fallback(),
        ),
        (
            "keyward_rate_limit_redis_errors",
            "Redis commands that failed or timed out.",
            stats.redis_errors(),
        ),
        (
            "keyward_rate_limit_lease_fetches",
            "Leases of shared counts asked of Redis.",
            stats.lease_fetches(),
        ),
        (
            "keyward_rate_limit_evicted_keys",
            "Keys whose counts were dropped from memory (idle, or over the key cap).",
            stats.evicted_keys(),
        ),
    ] {
        ConstCounter::new(value).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    gauge(
        encoder,
        "keyward_rate_limit_tracked_keys",
        "Keys whose rate-limit and credit counts are kept in memory",
        limiter.tracked_keys() as u64,
    )?;
    if limiter.uses_redis() {
        gauge(
            encoder,
            "keyward_rate_limit_redis_up",
            "Whether Redis answered this replica's last command (1) or not (0)",
            u64::from(limiter.redis_available()),
        )?;
        gauge(
            encoder,
            "keyward_rate_limit_replicas",
            "Live replicas counting through Redis, as last heard",
            limiter.replicas(),
        )?;
    }
    Ok(())
}

/// A histogram of durations with fixed bounds, observed with atomics only
/// (prometheus-client's own takes a lock per observation). Cheap to clone:
/// clones observe into the same buckets.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in seconds, as exposed.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, for the comparison on observe.
    bounds_nanos: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramInner {
            bounds,
            bounds_nanos: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        let bucket = inner
            .bounds_nanos
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(inner.bounds_nanos.len());
        inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if nanos != 0 {
            inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The admin API's method paths.
const ADMIN_PREFIX: &str = "/keyward.v1.KeyAdminService/";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    method: String,
    code: &'static str,
}

/// `keyward_admin_requests_total{method, code}`: admin RPCs by method and gRPC
/// status, counted by [`AdminMetrics`] as a tower layer around the server
/// (so calls the auth layer refuses are counted too). `method` is one of the
/// service's methods or `unknown`, so a caller cannot grow the label set.
#[derive(Debug, Clone)]
pub struct AdminMetrics {
    requests: Family<AdminLabels, Counter>,
    methods: Arc<[String]>,
}

impl Default for AdminMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            methods: admin_methods().into(),
        }
    }
}

/// The admin service's method names, from the descriptor set the server
/// serves over reflection.
fn admin_methods() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
        .expect("the build wrote a valid descriptor set");
    set.file
        .iter()
        .filter(|file| file.package() == "keyward.v1")
        .flat_map(|file| &file.service)
        .filter(|service| service.name() == "KeyAdminService")
        .flat_map(|service| &service.method)
        .map(|method| method.name().to_owned())
        .collect()
}

impl AdminMetrics {
    /// Adds the family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "keyward_admin_requests",
            "Admin RPCs by method and gRPC status code (lowercase; cancelled when the caller \
             went away or the request timed out)",
            self.requests.clone(),
        );
    }

    /// Admin RPCs of `method` answered with `code` so far.
    pub fn requests(&self, method: &str, code: &'static str) -> u64 {
        self.requests
            .get(&AdminLabels {
                method: method.to_owned(),
                code,
            })
            .map_or(0, |counter| counter.get())
    }

    fn method(&self, path: &str) -> Option<usize> {
        let name = path.strip_prefix(ADMIN_PREFIX)?;
        Some(
            self.methods
                .iter()
                .position(|method| method == name)
                .unwrap_or(usize::MAX),
        )
    }

    fn count(&self, method: usize, code: &'static str) {
        let method = self
            .methods
            .get(method)
            .map_or("unknown", String::as_str)
            .to_owned();
        self.requests
            .get_or_create(&AdminLabels { method, code })
            .inc();
    }
}

impl<S> tower::Layer<S> for AdminMetrics {
    type Service = AdminMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminMetricsService {
            inner,
            metrics: self.clone(),
        }
    }
}

/// The service [`AdminMetrics`] produces.
#[derive(Debug, Clone)]
pub struct AdminMetricsService<S> {
    inner: S,
    metrics: AdminMetrics,
}

impl<S, B, ResBody> tower::Service<::http::Request<B>> for AdminMetricsService<S>
where
    S: tower::Service<::http::Request<B>, Response = ::http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AdminMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ::http::Request<B>) -> Self::Future {
        let pending = self
            .metrics
            .method(request.uri().path())
            .map(|method| Pending {
                metrics: self.metrics.clone(),
                method,
                answered: false,
            });
        AdminMetricsFuture {
            inner: self.inner.call(request),
            pending,
        }
    }
}

/// An admin call not answered yet: counted as `cancelled` if dropped so.
#[derive(Debug)]
struct Pending {
    metrics: AdminMetrics,
    method: usize,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.count(self.method, "cancelled");
        }
    }
}

impl Pending {
    fn finish(mut self, code: &'static str) {
        self.metrics.count(self.method, code);
        self.answered = true;
    }
}

pin_project! {
    /// The future of [`AdminMetricsService`].
    pub struct AdminMetricsFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, ResBody, E> Future for AdminMetricsFuture<F>
where
    F: Future<Output = Result<::http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(pending) = this.pending.take() {
            let code = match &output {
                // A unary error is trailers-only: its status is in the headers.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|status| status.to_str().ok())
                    .map_or("ok", grpc_code_label),
                Err(_) => "unknown",
            };
            pending.finish(code);
        }
        Poll::Ready(output)
    }
}

/// A numeric gRPC status as its lowercase name.
fn grpc_code_label(code: &str) -> &'static str {
    match code {
        "0" => "ok",
        "1" => "cancelled",
        "3" => "invalid_argument",
        "4" => "deadline_exceeded",
        "5" => "not_found",
        "6" => "already_exists",
        "7" => "permission_denied",
        "8" => "resource_exhausted",
        "9" => "failed_precondition",
        "10" => "aborted",
        "11" => "out_of_range",
        "12" => "unimplemented",
        "13" => "internal",
        "14" => "unavailable",
        "15" => "data_loss",
        "16" => "unauthenticated",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let histogram = Histogram::new(&[0.001, 0.01]);
        histogram.observe(Duration::ZERO);
        histogram.observe(Duration::from_micros(1500));
        histogram.observe(Duration::from_secs(3));
        let mut registry = Registry::default();
        registry.register("t_seconds", "help", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("t_seconds_count 3"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"0.01\"} 2"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("t_seconds_sum 3.0015"), "{text}");
        assert_eq!(histogram.count(), 3);
    }

    #[test]
    fn paths_index_their_arrays() {
        for (i, path) in ValidationPath::ALL.into_iter().enumerate() {
            assert_eq!(path.index(), i);
        }
        assert_eq!(grpc_code_label("16"), "unauthenticated");
        assert_eq!(grpc_code_label("99"), "unknown");
        assert!(admin_methods().iter().any(|method| method == "CreateKey"));
    }
}
