//! [`AuthMetrics`]: what the layer and [`RemoteValidator`](crate::RemoteValidator)
//! did, as counters a product service exports with its own metrics.
//!
//! The counters are plain atomics, so counting costs the same with or
//! without Prometheus; cargo feature `metrics` adds
//! [`AuthMetrics::register`], which exposes them on a `prometheus-client`
//! registry as the `keyward_auth_*` families. No label carries a key, a key
//! id or anything else a caller sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::validator::Denial;

/// Counters shared by a [`KeywardAuthLayer`](crate::KeywardAuthLayer) and its
/// validator. Cheap to clone: clones count into the same counters.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    missing_key: AtomicU64,
    unauthenticated: AtomicU64,
    forbidden: AtomicU64,
    wrong_environment: AtomicU64,
    ip_not_allowed: AtomicU64,
    rate_limited: AtomicU64,
    usage_exceeded: AtomicU64,
    errors: AtomicU64,
    keyward_calls: AtomicU64,
    cache_hits: AtomicU64,
}

/// Why the layer refused a request: the `reason` label of
/// `keyward_auth_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// The request carried no key.
    MissingKey,
    /// The key is malformed, unknown, or not active.
    Unauthenticated,
    /// The key is valid but may not make this request (a missing scope).
    Forbidden,
    /// The key is of the other environment than the layer requires
    /// ([`require_environment`](crate::KeywardAuthLayer::require_environment));
    /// the client is told UNAUTHENTICATED, as for any key that is no
    /// credential here.
    WrongEnvironment,
    /// The client's address is outside the key's IP allowlist (the client is
    /// told PERMISSION_DENIED, as for a missing scope).
    IpNotAllowed,
    /// The key is over one of its rate limits.
    RateLimited,
    /// The key has no credits left.
    UsageExceeded,
}

impl DenialReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 7] = [
        Self::MissingKey,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::WrongEnvironment,
        Self::IpNotAllowed,
        Self::RateLimited,
        Self::UsageExceeded,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::WrongEnvironment => "wrong_environment",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::UsageExceeded => "usage_exceeded",
        }
    }
}

impl From<&Denial> for DenialReason {
    fn from(denial: &Denial) -> Self {
        match denial {
            Denial::Unauthenticated => Self::Unauthenticated,
            Denial::Forbidden => Self::Forbidden,
            Denial::IpNotAllowed => Self::IpNotAllowed,
            Denial::RateLimited(_) => Self::RateLimited,
            Denial::UsageExceeded(_) => Self::UsageExceeded,
        }
    }
}

impl AuthMetrics {
    /// New counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the layer authenticated (public paths are not counted).
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }

    /// Requests refused for `reason`.
    pub fn denials(&self, reason: DenialReason) -> u64 {
        self.denial_counter(reason).load(Ordering::Relaxed)
    }

    /// Requests refused as UNAVAILABLE (503) because the validator could not
    /// answer (keyward unreachable, slow or failing).
    pub fn errors(&self) -> u64 {
        self.0.errors.load(Ordering::Relaxed)
    }

    /// `ValidateKey` calls a `RemoteValidator` made.
    pub fn keyward_calls(&self) -> u64 {
        self.0.keyward_calls.load(Ordering::Relaxed)
    }

    /// Verdicts a `RemoteValidator` answered from its cache.
    pub fn cache_hits(&self) -> u64 {
        self.0.cache_hits.load(Ordering::Relaxed)
    }

    fn denial_counter(&self, reason: DenialReason) -> &AtomicU64 {
        match reason {
            DenialReason::MissingKey => &self.0.missing_key,
            DenialReason::Unauthenticated => &self.0.unauthenticated,
            DenialReason::Forbidden => &self.0.forbidden,
            DenialReason::WrongEnvironment => &self.0.wrong_environment,
            DenialReason::IpNotAllowed => &self.0.ip_not_allowed,
            DenialReason::RateLimited => &self.0.rate_limited,
            DenialReason::UsageExceeded => &self.0.usage_exceeded,
        }
    }

    pub(crate) fn note_request(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_denial(&self, reason: DenialReason) {
        self.denial_counter(reason).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_error(&self) {
        self.0.errors.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn note_keyward_call(&self) {
        self.0.keyward_calls.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn note_cache_hit(&self) {
        self.0.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(feature = "metrics")]
mod export {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::registry::Registry;

    use super::{AuthMetrics, DenialReason};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ReasonLabel {
        reason: &'static str,
    }

    impl AuthMetrics {
        /// Exposes these counters on `registry` as
        /// `keyward_auth_requests_total`,
        /// `keyward_auth_denials_total{reason}` (`missing_key`,
        /// `unauthenticated`, `forbidden`, `wrong_environment`), `keyward_auth_errors_total`,
        /// `keyward_auth_keyward_calls_total` and
        /// `keyward_auth_cache_hits_total`. Register once per registry.
        pub fn register(&self, registry: &mut Registry) {
            registry.register_collector(Box::new(self.clone()));
        }
    }

    fn counter(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: u64,
    ) -> std::fmt::Result {
        let metric = ConstCounter::new(value);
        let help = format!("{help}.");
        metric.encode(encoder.encode_descriptor(name, &help, None, MetricType::Counter)?)
    }

    impl Collector for AuthMetrics {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            counter(
                &mut encoder,
                "keyward_auth_requests",
                "Requests the keyward auth layer authenticated (public paths excluded)",
                self.requests(),
            )?;
            let mut denials = encoder.encode_descriptor(
                "keyward_auth_denials",
                "Requests the keyward auth layer refused, by reason.",
                None,
                MetricType::Counter,
            )?;
            for reason in DenialReason::ALL {
                let label = ReasonLabel {
                    reason: reason.label(),
                };
                ConstCounter::new(self.denials(reason)).encode(denials.encode_family(&label)?)?;
            }
            counter(
                &mut encoder,
                "keyward_auth_errors",
                "Requests refused as unavailable because keyward could not answer",
                self.errors(),
            )?;
            counter(
                &mut encoder,
                "keyward_auth_keyward_calls",
                "ValidateKey calls made to keyward (cache misses)",
                self.keyward_calls(),
            )?;
            counter(
                &mut encoder,
                "keyward_auth_cache_hits",
                "Verdicts answered from the local verdict cache",
                self.cache_hits(),
            )
        }
    }
}
