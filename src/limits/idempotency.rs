//! Idempotency keys: a retried call with the same key is answered with the
//! first call's charge instead of being charged again. [`LocalIdempotency`]
//! remembers them in memory (one replica, or Redis unreachable in `local`
//! mode); with Redis they are remembered there (`Limiter` drives it, with
//! [`encode`] / [`decode`] for the stored charge).
//!
//! The raw idempotency key is never kept: memory holds a BLAKE3 digest of
//! the API key's id and the idempotency key, Redis a digest of the
//! idempotency key in a name scoped by the key id.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use foldhash::fast::RandomState;
use keyward_auth::sync::lock;
use keyward_core::KeyId;

use super::{Charge, Decision, LimitState, Which};

/// Most idempotency keys remembered in memory. Past it the oldest are
/// forgotten first: a retry of one of them is charged again.
pub(super) const MAX_ENTRIES: usize = 100_000;

/// A remembered call: the digest of the key id and idempotency key.
pub(super) type Digest = [u8; 32];

/// The digest memory keys an idempotency key by: scoped to the API key, so
/// two keys' callers never share an answer.
pub(super) fn digest(id: &KeyId, idempotency_key: &str) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(id.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(idempotency_key.as_bytes());
    *hasher.finalize().as_bytes()
}

#[derive(Debug)]
enum Entry {
    /// The first call is being charged.
    Pending { expires_ms: u64 },
    /// The first call was admitted with this charge.
    Done { expires_ms: u64, charge: Charge },
}

impl Entry {
    fn expires_ms(&self) -> u64 {
        match self {
            Self::Pending { expires_ms } | Self::Done { expires_ms, .. } => *expires_ms,
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Digest, Entry, RandomState>,
    /// Insertion order, which is expiry order (one TTL for all): what
    /// expires or is forgotten first.
    order: VecDeque<(u64, Digest)>,
}

impl Entries {
    /// Drops the front entry if it is still the one queued.
    fn pop_front(&mut self) {
        if let Some((expires_ms, digest)) = self.order.pop_front()
            && self
                .map
                .get(&digest)
                .is_some_and(|entry| entry.expires_ms() == expires_ms)
        {
            self.map.remove(&digest);
        }
    }
}

/// What [`LocalIdempotency::begin`] found.
pub(super) enum Begin<'a> {
    /// A repeat: the first call's charge.
    Repeat(Charge),
    /// The first call with this key: charge it, then [`First::finish`].
    First(First<'a>),
    /// The first call with this key is still being charged.
    Busy,
}

/// Idempotency keys remembered in memory: at most [`MAX_ENTRIES`], each for
/// the TTL after its first call.
#[derive(Debug)]
pub(super) struct LocalIdempotency {
    entries: Mutex<Entries>,
    max_entries: usize,
}

impl LocalIdempotency {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    /// Looks `digest` up at `now_ms`; if it is new, marks it pending until
    /// `now_ms + ttl`.
    pub(super) fn begin(&self, digest: Digest, now_ms: u64, ttl: Duration) -> Begin<'_> {
        let mut entries = lock(&self.entries);
        while entries
            .order
            .front()
            .is_some_and(|(expires_ms, _)| *expires_ms <= now_ms)
        {
            entries.pop_front();
        }
        match entries.map.get(&digest) {
            Some(Entry::Done { expires_ms, charge }) if *expires_ms > now_ms => {
                return Begin::Repeat(*charge);
            }
            Some(Entry::Pending { expires_ms }) if *expires_ms > now_ms => return Begin::Busy,
            _ => {}
        }
        while entries.map.len() >= self.max_entries && !entries.order.is_empty() {
            entries.pop_front();
        }
        let expires_ms = now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        entries.map.insert(digest, Entry::Pending { expires_ms });
        entries.order.push_back((expires_ms, digest));
        Begin::First(First {
            store: self,
            digest,
            expires_ms,
            done: false,
        })
    }

    /// The number of remembered keys.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.entries).map.len()
    }
}

/// The first call of an idempotency key: remembers its charge if it was
/// admitted, and forgets the key otherwise (or if the call is dropped), so
/// a retry after a denial is charged normally.
pub(super) struct First<'a> {
    store: &'a LocalIdempotency,
    digest: Digest,
    expires_ms: u64,
    done: bool,
}

impl First<'_> {
    /// Records the first call's charge.
    pub(super) fn finish(mut self, charge: Charge) {
        self.done = true;
        let mut entries = lock(&self.store.entries);
        let ours = entries
            .map
            .get(&self.digest)
            .is_some_and(|entry| entry.expires_ms() == self.expires_ms);
        if !ours {
            return;
        }
        if charge.decision == Decision::Admitted {
            entries.map.insert(
                self.digest,
                Entry::Done {
                    expires_ms: self.expires_ms,
                    charge,
                },
            );
        } else {
            entries.map.remove(&self.digest);
        }
    }
}

impl Drop for First<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut entries = lock(&self.store.entries);
        if matches!(entries.map.get(&self.digest), Some(Entry::Pending { expires_ms }) if *expires_ms == self.expires_ms)
        {
            entries.map.remove(&self.digest);
        }
    }
}

/// What Redis holds while the first call is being charged.
pub(super) const PENDING: &str = "pending";

/// A charge as Redis stores it: `v1:<decision>:<which>:<limit>:<remaining>:<reset ms>:<retry ms>`.
pub(super) fn encode(charge: &Charge) -> String {
    let decision = match charge.decision {
        Decision::Admitted => 'a',
        Decision::RateLimited => 'r',
        Decision::UsageExceeded => 'u',
    };
    match charge.state {
        None => format!("v1:{decision}:-"),
        Some(state) => {
            let which = match state.which {
                Which::RateLimit(i) => i.to_string(),
                Which::Credits => "c".to_owned(),
            };
            format!(
                "v1:{decision}:{which}:{}:{}:{}:{}",
                state.limit,
                state.remaining,
                state.reset.as_millis(),
                state.retry_after.as_millis()
            )
        }
    }
}

/// Reads back what [`encode`] wrote; `None` for anything else.
pub(super) fn decode(raw: &str) -> Option<Charge> {
    let mut parts = raw.split(':');
    if parts.next()? != "v1" {
        return None;
    }
    let decision = match parts.next()? {
        "a" => Decision::Admitted,
        "r" => Decision::RateLimited,
        "u" => Decision::UsageExceeded,
        _ => return None,
    };
    let which = match parts.next()? {
        "-" => {
            return parts.next().is_none().then_some(Charge {
                decision,
                state: None,
            });
        }
        "c" => Which::Credits,
        i => Which::RateLimit(i.parse().ok()?),
    };
    let mut number = || parts.next()?.parse::<u64>().ok();
    let state = LimitState {
        which,
        limit: number()?,
        remaining: number()?,
        reset: Duration::from_millis(number()?),
        retry_after: Duration::from_millis(number()?),
    };
    parts.next().is_none().then_some(Charge {
        decision,
        state: Some(state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(remaining: u64) -> Charge {
        Charge {
            decision: Decision::Admitted,
            state: Some(LimitState {
                which: Which::RateLimit(2),
                limit: 10,
                remaining,
                reset: Duration::from_millis(1500),
                retry_after: Duration::ZERO,
            }),
        }
    }

    #[test]
    fn charges_round_trip_through_their_stored_form() {
        let credits = Charge {
            decision: Decision::UsageExceeded,
            state: Some(LimitState {
                which: Which::Credits,
                limit: 1_000_000_000_000,
                remaining: 0,
                reset: Duration::from_secs(86_400),
                retry_after: Duration::from_secs(86_400),
            }),
        };
        let open = Charge {
            decision: Decision::Admitted,
            state: None,
        };
        for charge in [admitted(3), credits, open] {
            assert_eq!(
                decode(&encode(&charge)),
                Some(charge),
                "{}",
                encode(&charge)
            );
        }
        for bad in [
            "",
            PENDING,
            "v1:a",
            "v1:x:-",
            "v1:a:1:2:3:4",
            "v1:a:1:2:3:4:5:6",
            "v2:a:-",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_first_admitted_call_is_remembered_until_it_expires() {
        let memory = LocalIdempotency::new(10);
        let ttl = Duration::from_secs(60);
        let id = KeyId::generate();
        let digest = digest(&id, "order-1");
        assert_ne!(
            digest,
            super::digest(&KeyId::generate(), "order-1"),
            "scoped by key"
        );
        let Begin::First(first) = memory.begin(digest, 0, ttl) else {
            panic!("a new key is a first call");
        };
        assert!(matches!(memory.begin(digest, 1, ttl), Begin::Busy));
        first.finish(admitted(3));
        assert!(matches!(memory.begin(digest, 59_999, ttl), Begin::Repeat(c) if c == admitted(3)));
        let Begin::First(again) = memory.begin(digest, 60_000, ttl) else {
            panic!("expired after the TTL");
        };
        drop(again);
        assert_eq!(memory.len(), 0, "a dropped first call is forgotten");
        let Begin::First(denied) = memory.begin(digest, 60_001, ttl) else {
            panic!("forgotten");
        };
        denied.finish(Charge {
            decision: Decision::RateLimited,
            state: None,
        });
        assert!(
            matches!(memory.begin(digest, 60_002, ttl), Begin::First(_)),
            "a denied call is not remembered: its retry is charged"
        );
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let memory = LocalIdempotency::new(3);
        let ttl = Duration::from_secs(60);
        let id = KeyId::generate();
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let Begin::First(first) = memory.begin(digest(&id, name), i as u64, ttl) else {
                panic!("new");
            };
            first.finish(admitted(i as u64));
        }
        assert_eq!(memory.len(), 3);
        assert!(matches!(
            memory.begin(digest(&id, "d"), 10, ttl),
            Begin::Repeat(_)
        ));
        assert!(
            matches!(memory.begin(digest(&id, "a"), 10, ttl), Begin::First(_)),
            "the oldest was forgotten"
        );
    }
}
