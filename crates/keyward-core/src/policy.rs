//! A key's policy: what a validation of an otherwise valid key must also
//! satisfy: the IP allowlist, rate limits and credits.
//!
//! A policy is parsed once, at the edge (the admin API) or when read back from
//! storage, into its checking form: the warm path searches sorted ranges and
//! allocates nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::fields::FieldError;
use crate::net::{Cidr, address_number};

/// Most CIDR ranges on one key.
pub const MAX_ALLOWED_CIDRS: usize = 64;
/// Longest text of one CIDR range (`ffff:…:ffff/128` is 43 characters).
pub const MAX_CIDR_CHARS: usize = 64;

/// A key's IP allowlist: at most 64 CIDR ranges, IPv4 and IPv6, kept in
/// canonical form (host bits cleared, sorted, without duplicates). Empty
/// means no restriction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedCidrs {
    /// Canonical, sorted, deduplicated: what is stored and shown.
    cidrs: Vec<Cidr>,
    /// The same ranges merged, sorted by first address, per family: what
    /// `contains` searches.
    ipv4: Vec<(u128, u128)>,
    ipv6: Vec<(u128, u128)>,
}

impl AllowedCidrs {
    /// No ranges: no restriction.
    pub const EMPTY: Self = Self {
        cidrs: Vec::new(),
        ipv4: Vec::new(),
        ipv6: Vec::new(),
    };

    /// Parses a list of CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`; a bare
    /// address is a range of one). On error, the index of the bad one, or
    /// `None` for a list over [`MAX_ALLOWED_CIDRS`].
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, (Option<usize>, FieldError)> {
        if raw.len() > MAX_ALLOWED_CIDRS {
            return Err((
                None,
                FieldError::new(format!("must hold at most {MAX_ALLOWED_CIDRS} CIDR ranges")),
            ));
        }
        let cidrs = raw
            .iter()
            .enumerate()
            .map(|(i, raw)| parse_cidr(raw.as_ref()).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(cidrs))
    }

    fn new(mut cidrs: Vec<Cidr>) -> Self {
        cidrs.sort();
        cidrs.dedup();
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for cidr in &cidrs {
            let (is_ipv4, first, last) = cidr.span();
            if is_ipv4 { &mut ipv4 } else { &mut ipv6 }.push((first, last));
        }
        Self {
            cidrs,
            ipv4: merged(ipv4),
            ipv6: merged(ipv6),
        }
    }

    /// Whether the list is empty: no restriction.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// Whether `ip` is in one of the ranges (an IPv4-mapped IPv6 address
    /// counts as IPv4). An empty list contains nothing; [`Policy::admits`]
    /// is the check that treats it as "no restriction".
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (is_ipv4, n) = address_number(ip);
        let ranges = if is_ipv4 { &self.ipv4 } else { &self.ipv6 };
        // The first range ending at or after `n`: the only one that may hold it.
        let at = ranges.partition_point(|&(_, last)| last < n);
        ranges.get(at).is_some_and(|&(first, _)| first <= n)
    }

    /// The ranges in canonical form.
    pub fn as_slice(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// The ranges as canonical text, as the wire and storage carry them.
    pub fn to_strings(&self) -> Vec<String> {
        self.cidrs.iter().map(ToString::to_string).collect()
    }
}

fn parse_cidr(raw: &str) -> Result<Cidr, FieldError> {
    if raw.len() > MAX_CIDR_CHARS {
        return Err(FieldError::new(format!(
            "must be at most {MAX_CIDR_CHARS} characters"
        )));
    }
    raw.parse::<Cidr>().map_err(|_| {
        FieldError::new(
            "must be an IP address or a CIDR range such as 203.0.113.0/24 or 2001:db8::/32",
        )
    })
}

/// Sorted ranges with overlapping and adjacent ones joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out
}

/// Most rate limits on one key.
pub const MAX_RATE_LIMITS: usize = 8;
/// Longest name of a rate limit.
pub const MAX_RATE_LIMIT_NAME_CHARS: usize = 64;
/// Largest `limit` of a rate limit (units per window).
pub const MAX_RATE_LIMIT: u64 = 1_000_000_000;
/// Longest rate-limit window (30 days).
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest cost of one call (per limit, or given with a validation).
pub const MAX_COST: u64 = 1_000_000;
/// Longest idempotency key a validation may carry.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;
/// Largest number of credits (remaining, or a refill amount).
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

/// What one call costs, as a limit's default (`RateLimit::cost`), a
/// validation or an Envoy route sets it: 1 to [`MAX_COST`], or 0 for
/// `None`, the default.
pub fn parse_cost(raw: i64) -> Result<Option<u64>, FieldError> {
    match u64::try_from(raw) {
        Ok(0) => Ok(None),
        Ok(cost) if cost <= MAX_COST => Ok(Some(cost)),
        _ => Err(FieldError::new(format!(
            "must be 1 to {MAX_COST}, or 0 for the default"
        ))),
    }
}

/// Checks a caller's idempotency key: at most
/// [`MAX_IDEMPOTENCY_KEY_CHARS`] characters, none of them control
/// characters. Empty means none was given.
pub fn check_idempotency_key(key: &str) -> Result<(), FieldError> {
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(FieldError::new(format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// One named rate limit: at most `limit` units per `window`, each call
/// costing `cost` units unless the validation says otherwise. Windows are
/// fixed and aligned to the Unix epoch (`floor(now / window)`), so every
/// replica and every caller agrees on when one ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// 1 to 64 of `[A-Za-z0-9_.-]`, unique on the key (`requests`, `burst`).
    pub name: String,
    /// Units per window, 1 to [`MAX_RATE_LIMIT`].
    pub limit: u64,
    /// The window: whole seconds, 1 s to 30 days.
    pub window: Duration,
    /// Units one call costs by default, 1 to [`MAX_COST`].
    pub cost: u64,
}

/// A field of a [`RateLimit`] that was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitField {
    /// `name`.
    Name,
    /// `limit`.
    Limit,
    /// `duration`.
    Duration,
    /// `cost`.
    Cost,
}

impl RateLimitField {
    /// The field's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Limit => "limit",
            Self::Duration => "duration",
            Self::Cost => "cost",
        }
    }
}

/// Where a list of rate limits was rejected: the index and field of the bad
/// limit, or `None` for the list as a whole (too many).
pub type RateLimitError = (Option<(usize, RateLimitField)>, FieldError);

impl RateLimit {
    /// Parses one limit from wire values: `cost` 0 means the default, 1.
    /// `window` is `None` when the wire value is not a valid duration.
    pub fn parse(
        name: &str,
        limit: i64,
        window: Option<Duration>,
        cost: i64,
    ) -> Result<Self, (RateLimitField, FieldError)> {
        let bad = |field, why: String| Err((field, FieldError::new(why)));
        if name.is_empty() || name.chars().count() > MAX_RATE_LIMIT_NAME_CHARS {
            return bad(
                RateLimitField::Name,
                format!("must be 1 to {MAX_RATE_LIMIT_NAME_CHARS} characters"),
            );
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad(
                RateLimitField::Name,
                "must hold only letters, digits, '_', '.' and '-'".to_owned(),
            );
        }
        let Some(limit) = u64::try_from(limit)
            .ok()
            .filter(|l| (1..=MAX_RATE_LIMIT).contains(l))
        else {
            return bad(
                RateLimitField::Limit,
                format!("must be 1 to {MAX_RATE_LIMIT}"),
            );
        };
        let Some(window) = window.filter(|w| {
            w.subsec_nanos() == 0 && *w >= Duration::from_secs(1) && *w <= MAX_RATE_LIMIT_WINDOW
        }) else {
            return bad(
                RateLimitField::Duration,
                "must be whole seconds, 1s to 30 days (2592000s)".to_owned(),
            );
        };
        let cost = parse_cost(cost)
            .map_err(|error| (RateLimitField::Cost, error))?
            .unwrap_or(1);
        Ok(Self {
            name: name.to_owned(),
            limit,
            window,
            cost,
        })
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// The number of the window holding `now_ms` (milliseconds since the
    /// Unix epoch).
    pub fn window_at(&self, now_ms: u64) -> u64 {
        now_ms / self.window_ms()
    }

    /// How long from `now_ms` until its window ends (at least 1 ms).
    pub fn until_reset(&self, now_ms: u64) -> Duration {
        let window = self.window_ms();
        Duration::from_millis(window - now_ms % window)
    }
}

/// A key's rate limits: at most [`MAX_RATE_LIMITS`], unique names, kept
/// sorted by name. A call passes only if it passes every one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits(Vec<RateLimit>);

impl RateLimits {
    /// No limits.
    pub const EMPTY: Self = Self(Vec::new());

    /// Checks a parsed list: the count and unique names. Errors name the
    /// index in `limits` as given.
    pub fn new(limits: Vec<RateLimit>) -> Result<Self, RateLimitError> {
        if limits.len() > MAX_RATE_LIMITS {
            return Err((
                None,
                FieldError::new(format!("must hold at most {MAX_RATE_LIMITS} rate limits")),
            ));
        }
        for (i, limit) in limits.iter().enumerate() {
            if limits[..i].iter().any(|earlier| earlier.name == limit.name) {
                return Err((
                    Some((i, RateLimitField::Name)),
                    FieldError::new("must be unique among the key's rate limits"),
                ));
            }
        }
        let mut limits = limits;
        limits.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self(limits))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits, sorted by name.
    pub fn as_slice(&self) -> &[RateLimit] {
        &self.0
    }
}

/// How often credits are refilled: at 00:00 UTC every day, or on the first
/// of every month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefillInterval {
    /// Every day at 00:00 UTC.
    Daily,
    /// On the first of every month, 00:00 UTC.
    Monthly,
}

impl RefillInterval {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }

    /// Reads the stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Self::Daily),
            "monthly" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// The number of the refill period holding `at`: days, or months, since
    /// the Unix epoch.
    pub fn period_at(self, at: DateTime<Utc>) -> i64 {
        match self {
            Self::Daily => at.timestamp().div_euclid(86_400),
            Self::Monthly => i64::from(at.year() - 1970) * 12 + i64::from(at.month0()),
        }
    }

    /// When `period` ends: the next refill.
    pub fn period_end(self, period: i64) -> DateTime<Utc> {
        match self {
            Self::Daily => Utc
                .timestamp_opt(period.saturating_add(1).saturating_mul(86_400), 0)
                .single()
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            Self::Monthly => {
                let next = period.saturating_add(1);
                let year = i32::try_from(next.div_euclid(12) + 1970).unwrap_or(i32::MAX);
                let month = u32::try_from(next.rem_euclid(12)).unwrap_or(0) + 1;
                Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
                    .single()
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }
}

/// A refill: every `interval`, the key's remaining credits are set to
/// `amount` (unused credits do not carry over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    /// Credits after each refill, 1 to [`MAX_CREDITS`].
    pub amount: u64,
    /// When.
    pub interval: RefillInterval,
}

/// A key's credits (a quota): each valid call spends its cost; at zero,
/// validations are USAGE_EXCEEDED until a refill or an update.
///
/// `remaining` is what an operator set, at `set_at`; what has been spent
/// since is counted apart (in memory, Redis and, in batches, the database),
/// per refill period. `set_at` identifies the setting: a new one starts
/// counting from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    /// Credits granted when set, 0 to [`MAX_CREDITS`].
    pub remaining: u64,
    /// The optional refill.
    pub refill: Option<Refill>,
    /// When the operator set them (microseconds since the epoch): the
    /// setting's identity.
    pub set_at: i64,
}

impl Credits {
    /// The refill period holding `at`: always 0 without a refill.
    pub fn period_at(&self, at: DateTime<Utc>) -> i64 {
        self.refill.map_or(0, |r| r.interval.period_at(at))
    }

    /// The credits granted for `period`: what was set, in the period it was
    /// set in; the refill amount in every later one.
    pub fn allowance(&self, period: i64) -> u64 {
        match self.refill {
            Some(refill) if period != self.set_period() => refill.amount,
            _ => self.remaining,
        }
    }

    /// The period the credits were set in.
    pub fn set_period(&self) -> i64 {
        let set_at = DateTime::<Utc>::from_timestamp_micros(self.set_at).unwrap_or_default();
        self.period_at(set_at)
    }

    /// When `period`'s credits are refilled, if ever.
    pub fn refilled_after(&self, period: i64) -> Option<DateTime<Utc>> {
        self.refill.map(|r| r.interval.period_end(period))
    }
}

/// A field of [`Credits`] that was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditsField {
    /// `remaining`.
    Remaining,
    /// `refill_amount`.
    RefillAmount,
    /// `refill_interval`.
    RefillInterval,
}

impl CreditsField {
    /// The field's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remaining => "remaining",
            Self::RefillAmount => "refill_amount",
            Self::RefillInterval => "refill_interval",
        }
    }
}

impl Credits {
    /// Parses credits from wire values, set at `set_at`. `refill_amount` 0
    /// and no `refill_interval` mean no refill; one without the other is
    /// refused, on the one missing. Every bad field is reported.
    pub fn parse(
        remaining: i64,
        refill_amount: i64,
        refill_interval: Option<RefillInterval>,
        set_at: i64,
    ) -> Result<Self, Vec<(CreditsField, FieldError)>> {
        let mut errors = Vec::new();
        let in_range = |n: i64, min: u64| {
            u64::try_from(n)
                .ok()
                .filter(|n| (min..=MAX_CREDITS).contains(n))
        };
        let remaining = in_range(remaining, 0).unwrap_or_else(|| {
            errors.push((
                CreditsField::Remaining,
                FieldError::new(format!("must be 0 to {MAX_CREDITS}")),
            ));
            0
        });
        let amount = match refill_amount {
            0 => None,
            raw => Some(in_range(raw, 1).ok_or_else(|| {
                FieldError::new(format!("must be 1 to {MAX_CREDITS}, or 0 for no refill"))
            })),
        };
        let refill = match (amount, refill_interval) {
            (None, None) => None,
            (Some(Ok(amount)), Some(interval)) => Some(Refill { amount, interval }),
            (Some(Err(error)), _) => {
                errors.push((CreditsField::RefillAmount, error));
                None
            }
            (None, Some(_)) => {
                errors.push((
                    CreditsField::RefillAmount,
                    FieldError::new("must be set with refill_interval"),
                ));
                None
            }
            (Some(Ok(_)), None) => {
                errors.push((
                    CreditsField::RefillInterval,
                    FieldError::new("must be set with refill_amount"),
                ));
                None
            }
        };
        if errors.is_empty() {
            Ok(Self {
                remaining,
                refill,
                set_at,
            })
        } else {
            Err(errors)
        }
    }
}

/// What has been spent of a key's credits in one refill period, as recorded
/// (in batches) in the database: the starting point of the counters in
/// memory and in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditsSpent {
    /// The [`Credits::set_at`] of the setting spent from: spending of an
    /// older setting does not count against a new one.
    pub set_at: i64,
    /// The refill period ([`Credits::period_at`]).
    pub period: i64,
    /// Credits spent in it.
    pub used: u64,
}

impl Credits {
    /// What is left in `period`, given what was recorded as `spent`.
    pub fn remaining_in(&self, period: i64, spent: CreditsSpent) -> u64 {
        let used = if spent.set_at == self.set_at && spent.period == period {
            spent.used
        } else {
            0
        };
        self.allowance(period).saturating_sub(used)
    }
}

/// What a validation of a valid key must also satisfy. The default policy
/// restricts nothing; a key without restrictions carries no policy at all
/// (see [`Policy::shared`]), so the warm path pays one branch for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Client addresses the key may be used from; empty: any.
    pub allowed_cidrs: AllowedCidrs,
    /// Rate limits; empty: none.
    pub rate_limits: RateLimits,
    /// Credits; `None`: unlimited.
    pub credits: Option<Credits>,
}

impl Policy {
    /// Whether the policy restricts nothing.
    pub fn is_unrestricted(&self) -> bool {
        self.allowed_cidrs.is_empty() && !self.is_metered()
    }

    /// Whether validations are counted against the key: it has rate limits
    /// or credits. A verdict on such a key must not be reused by a caller's
    /// cache, since each call spends.
    pub fn is_metered(&self) -> bool {
        !self.rate_limits.is_empty() || self.credits.is_some()
    }

    /// The policy as a key record carries it: `None` when it restricts
    /// nothing.
    pub fn shared(self) -> Option<Arc<Self>> {
        (!self.is_unrestricted()).then(|| Arc::new(self))
    }

    /// Whether a request from `client` passes the allowlist. It fails
    /// closed: with an allowlist, a request whose client address is unknown
    /// is refused.
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        self.allowed_cidrs.is_empty() || client.is_some_and(|ip| self.allowed_cidrs.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &[&str]) -> AllowedCidrs {
        AllowedCidrs::parse(raw).expect("valid ranges")
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    #[test]
    fn ranges_are_canonical_sorted_and_deduplicated() {
        let cidrs = list(&["10.9.8.7/8", "2001:db8::1/32", "10.0.0.0/8", "192.0.2.1"]);
        assert_eq!(
            cidrs.to_strings(),
            ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
        );
        assert_eq!(
            AllowedCidrs::parse(&cidrs.to_strings()).unwrap(),
            cidrs,
            "canonical text reparses"
        );
        assert!(list(&[] as &[&str]).is_empty());
    }

    #[test]
    fn bad_ranges_name_their_index_and_too_many_is_one_violation() {
        for (raw, index) in [
            (vec!["10.0.0.0/8", "10.0.0.0/33"], Some(1)),
            (vec!["host"], Some(0)),
            (vec!["1.2.3.4", ""], Some(1)),
            (vec!["::/129"], Some(0)),
        ] {
            assert_eq!(AllowedCidrs::parse(&raw).unwrap_err().0, index, "{raw:?}");
        }
        let long = "1".repeat(MAX_CIDR_CHARS + 1);
        assert_eq!(AllowedCidrs::parse(&[long]).unwrap_err().0, Some(0));
        let many: Vec<String> = (0..=MAX_ALLOWED_CIDRS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert_eq!(AllowedCidrs::parse(&many).unwrap_err().0, None);
        assert!(AllowedCidrs::parse(&many[..MAX_ALLOWED_CIDRS]).is_ok());
    }

    #[test]
    fn contains_agrees_with_each_cidr() {
        let raw = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "203.0.113.7",
            "2001:db8::/32",
            "::1",
        ];
        let cidrs = list(&raw);
        let probes = [
            "10.0.0.0",
            "10.255.255.255",
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.0",
            "192.0.2.127",
            "192.0.2.128",
            "192.0.2.255",
            "192.0.3.0",
            "203.0.113.7",
            "203.0.113.8",
            "::ffff:203.0.113.7",
            "2001:db8:ffff::1",
            "2001:db9::",
            "::1",
            "::2",
            "0.0.0.1",
            "::ffff:0:1",
        ];
        for probe in probes {
            let expected = raw
                .iter()
                .any(|c| c.parse::<Cidr>().expect("a cidr").contains(ip(probe)));
            assert_eq!(cidrs.contains(ip(probe)), expected, "{probe}");
        }
        // IPv6 everywhere does not admit IPv4 clients, and the reverse.
        assert!(!list(&["::/0"]).contains(ip("192.0.2.1")));
        assert!(!list(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(list(&["0.0.0.0/0"]).contains(ip("255.255.255.255")));
    }

    #[test]
    fn a_policy_fails_closed_without_an_address() {
        let open = Policy::default();
        assert!(open.is_unrestricted());
        assert!(open.admits(None));
        assert!(open.clone().shared().is_none());
        let office = Policy {
            allowed_cidrs: list(&["203.0.113.0/24"]),
            ..Policy::default()
        };
        assert!(office.admits(Some(ip("203.0.113.9"))));
        assert!(!office.admits(Some(ip("198.51.100.1"))));
        assert!(!office.admits(None));
        assert!(office.shared().is_some());
    }

    fn limit(name: &str, limit: i64, secs: u64, cost: i64) -> Result<RateLimit, RateLimitField> {
        RateLimit::parse(name, limit, Some(Duration::from_secs(secs)), cost).map_err(|e| e.0)
    }

    #[test]
    fn rate_limits_are_checked_field_by_field() {
        let ok = limit("requests", 100, 1, 0).expect("valid");
        assert_eq!((ok.limit, ok.window_ms(), ok.cost), (100, 1000, 1));
        assert_eq!(limit("", 1, 1, 0), Err(RateLimitField::Name));
        assert_eq!(limit("a b", 1, 1, 0), Err(RateLimitField::Name));
        assert_eq!(limit("x", 0, 1, 0), Err(RateLimitField::Limit));
        assert_eq!(limit("x", -5, 1, 0), Err(RateLimitField::Limit));
        assert_eq!(limit("x", 1, 0, 0), Err(RateLimitField::Duration));
        assert_eq!(limit("x", 1, 31 * 86_400, 0), Err(RateLimitField::Duration));
        assert_eq!(limit("x", 1, 1, -1), Err(RateLimitField::Cost));
        assert_eq!(
            RateLimit::parse("x", 1, Some(Duration::from_millis(1500)), 0).map_err(|e| e.0),
            Err(RateLimitField::Duration)
        );
        assert_eq!(
            RateLimit::parse("x", 1, None, 0).map_err(|e| e.0),
            Err(RateLimitField::Duration)
        );
        let twice = RateLimits::new(vec![ok.clone(), ok.clone()]).unwrap_err();
        assert_eq!(twice.0, Some((1, RateLimitField::Name)));
        let many = vec![ok.clone(); MAX_RATE_LIMITS + 1];
        assert_eq!(RateLimits::new(many).unwrap_err().0, None);
    }

    #[test]
    fn costs_and_idempotency_keys_are_checked() {
        assert_eq!(parse_cost(0), Ok(None));
        assert_eq!(parse_cost(7), Ok(Some(7)));
        assert_eq!(parse_cost(1_000_000), Ok(Some(1_000_000)));
        for bad in [-1, 1_000_001, i64::MIN, i64::MAX] {
            assert!(parse_cost(bad).is_err(), "{bad}");
        }
        assert!(check_idempotency_key("").is_ok());
        assert!(check_idempotency_key(&"k".repeat(256)).is_ok());
        for bad in ["k".repeat(257), "order\n17".to_owned(), "\u{7f}".to_owned()] {
            assert!(check_idempotency_key(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let ten = limit("x", 1000, 10, 0).expect("valid");
        assert_eq!(ten.window_at(0), 0);
        assert_eq!(ten.window_at(9_999), 0);
        assert_eq!(ten.window_at(10_000), 1);
        assert_eq!(ten.until_reset(12_500), Duration::from_millis(7_500));
        assert_eq!(ten.until_reset(20_000), Duration::from_secs(10));
    }

    #[test]
    fn credits_are_checked_field_by_field() {
        let fields = |remaining, amount, interval| {
            Credits::parse(remaining, amount, interval, 7)
                .map_err(|errors| errors.into_iter().map(|(f, _)| f).collect::<Vec<_>>())
        };
        let daily = Some(RefillInterval::Daily);
        assert_eq!(
            fields(5, 100, daily),
            Ok(Credits {
                remaining: 5,
                refill: Some(Refill {
                    amount: 100,
                    interval: RefillInterval::Daily
                }),
                set_at: 7
            })
        );
        assert_eq!(fields(0, 0, None).map(|c| c.refill), Ok(None));
        let max = i64::try_from(MAX_CREDITS).expect("fits");
        assert!(fields(max, max, daily).is_ok());
        assert_eq!(fields(-1, 0, None), Err(vec![CreditsField::Remaining]));
        assert_eq!(fields(max + 1, 0, None), Err(vec![CreditsField::Remaining]));
        assert_eq!(fields(1, 5, None), Err(vec![CreditsField::RefillInterval]));
        assert_eq!(fields(1, 0, daily), Err(vec![CreditsField::RefillAmount]));
        assert_eq!(fields(1, -5, daily), Err(vec![CreditsField::RefillAmount]));
        assert_eq!(
            fields(-1, max + 1, daily),
            Err(vec![CreditsField::Remaining, CreditsField::RefillAmount])
        );
    }

    #[test]
    fn credits_are_refilled_per_period() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("a time");
        let set_at = at("2026-01-31T23:00:00Z");
        let credits = Credits {
            remaining: 5,
            refill: Some(Refill {
                amount: 100,
                interval: RefillInterval::Monthly,
            }),
            set_at: set_at.timestamp_micros(),
        };
        let january = credits.period_at(set_at);
        let february = credits.period_at(at("2026-02-01T00:00:00Z"));
        assert_eq!(february, january + 1);
        assert_eq!(credits.allowance(january), 5);
        assert_eq!(credits.allowance(february), 100);
        assert_eq!(
            credits.refilled_after(january),
            Some(at("2026-02-01T00:00:00Z"))
        );
        assert_eq!(
            RefillInterval::Monthly.period_end(credits.period_at(at("2026-12-15T00:00:00Z"))),
            at("2027-01-01T00:00:00Z")
        );
        let daily = RefillInterval::Daily;
        let day = daily.period_at(at("2026-03-04T05:06:07Z"));
        assert_eq!(daily.period_end(day), at("2026-03-05T00:00:00Z"));
        let once = Credits {
            refill: None,
            ..credits
        };
        assert_eq!(
            once.allowance(once.period_at(at("2030-01-01T00:00:00Z"))),
            5
        );
        assert_eq!(once.refilled_after(0), None);
    }
}
