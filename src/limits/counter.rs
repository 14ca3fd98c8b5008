//! [`Tagged`]: the count of one window (or refill period) in one `AtomicU64`,
//! so charging, refunding and starting a new window are each one
//! compare-and-swap loop, with no lock and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count tagged with the window it counts in, packed as
/// `tag << AMOUNT_BITS | amount`: a count can never leak into another
/// window, and a new window starts by replacing the word. Tags are windows
/// (or periods) relative to their slot's first one, so they never wrap in
/// practice (32-bit tags of 1 s windows last 136 years, 24-bit tags of days
/// 45,000). Amounts saturate at `2^AMOUNT_BITS - 1`, above every limit the
/// policy allows (`MAX_RATE_LIMIT` < 2^32, `MAX_CREDITS` < 2^40).
///
/// Time only moves forward here: an operation for a window older than the
/// stored one (a caller whose clock read is behind another's) acts on the
/// stored, newer window, so a late call can never reopen an ended window.
#[derive(Debug)]
pub(super) struct Tagged<const AMOUNT_BITS: u32>(AtomicU64);

impl<const B: u32> Tagged<B> {
    const MASK: u64 = (1 << B) - 1;
    const MAX_TAG: u64 = u64::MAX >> B;

    /// `amount` counted in window `tag`.
    pub(super) fn new(tag: u64, amount: u64) -> Self {
        Self(AtomicU64::new(Self::pack(tag, amount)))
    }

    fn pack(tag: u64, amount: u64) -> u64 {
        (tag.min(Self::MAX_TAG) << B) | amount.min(Self::MASK)
    }

    fn unpack(word: u64) -> (u64, u64) {
        (word >> B, word & Self::MASK)
    }

    /// The stored window and its amount.
    pub(super) fn load(&self) -> (u64, u64) {
        Self::unpack(self.0.load(Ordering::Acquire))
    }

    /// The amount counted in `tag`: 0 when another window is stored.
    pub(super) fn get(&self, tag: u64) -> u64 {
        match self.load() {
            (stored, amount) if stored == tag => amount,
            _ => 0,
        }
    }

    /// One compare-and-swap loop: `f` maps the stored `(tag, amount)` to the
    /// new one, or to `Err` to leave the word alone.
    fn update<T, E>(
        &self,
        mut f: impl FnMut(u64, u64) -> Result<(u64, u64, T), E>,
    ) -> Result<T, E> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let (tag, amount) = Self::unpack(current);
            let (new_tag, new_amount, out) = f(tag, amount)?;
            let new = Self::pack(new_tag, new_amount);
            if new == current {
                return Ok(out);
            }
            match self
                .0
                .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(out),
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts `cost` in window `tag` unless the count would pass `cap` (or
    /// what the word can hold). A
    /// count of an earlier window is dropped first (the window ended). On
    /// success, the window charged and the count after; on refusal, the
    /// count that refused it.
    pub(super) fn charge(&self, tag: u64, cost: u64, cap: u64) -> Result<(u64, u64), u64> {
        self.update(|stored, count| {
            let (tag, count) = if stored >= tag {
                (stored, count)
            } else {
                (tag, 0)
            };
            match count.checked_add(cost) {
                Some(after) if after <= cap.min(Self::MASK) => Ok((tag, after, (tag, after))),
                _ => Err(count),
            }
        })
    }

    /// Takes `cost` back from window `tag`'s count (a refund); nothing when
    /// another window began meanwhile.
    pub(super) fn refund(&self, tag: u64, cost: u64) {
        let _ = self.update(|stored, count| {
            if stored == tag {
                Ok((stored, count.saturating_sub(cost), ()))
            } else {
                Err(())
            }
        });
    }

    /// Spends `cost` of window `tag`'s amount (a lease): the window spent
    /// from and the amount left, or `None` when it holds less than `cost`
    /// (or an earlier window's amount, which is worthless now).
    pub(super) fn spend(&self, tag: u64, cost: u64) -> Option<(u64, u64)> {
        self.update(|stored, left| {
            if stored >= tag && left >= cost {
                Ok((stored, left - cost, (stored, left - cost)))
            } else {
                Err(())
            }
        })
        .ok()
    }

    /// Adds `amount` to window `tag`: an earlier window's amount is replaced,
    /// a later window's kept and `amount` dropped (it was for a window that
    /// has ended). Whether it was added.
    pub(super) fn deposit(&self, tag: u64, amount: u64) -> bool {
        self.update(|stored, held| {
            if stored == tag {
                Ok((tag, held.saturating_add(amount), true))
            } else if stored < tag {
                Ok((tag, amount, true))
            } else {
                Err(false)
            }
        })
        .unwrap_or_else(|added| added)
    }

    /// Adds `amount` to window `tag` only if it is the stored one (a refund
    /// of a lease spend).
    pub(super) fn add_if(&self, tag: u64, amount: u64) {
        let _ = self.update(|stored, held| {
            if stored == tag {
                Ok((tag, held.saturating_add(amount), ()))
            } else {
                Err(())
            }
        });
    }

    /// Raises window `tag`'s amount to at least `amount` (a later window
    /// replaces an earlier one's): for "the shared count as last seen".
    pub(super) fn raise(&self, tag: u64, amount: u64) {
        let _ = self.update(|stored, held| {
            if stored == tag {
                Ok((tag, held.max(amount), ()))
            } else if stored < tag {
                Ok((tag, amount, ()))
            } else {
                Err(())
            }
        });
    }

    /// Adds `amount` to window `tag`, handing back what an earlier window
    /// held, which the caller must keep elsewhere (spends to persist). A later
    /// stored window takes the amount instead (a late caller).
    pub(super) fn accumulate(&self, tag: u64, amount: u64) -> Option<(u64, u64)> {
        let result: Result<_, ()> = self.update(|stored, held| {
            if stored >= tag {
                Ok((stored, held.saturating_add(amount), None))
            } else {
                Ok((tag, amount, (held > 0).then_some((stored, held))))
            }
        });
        result.unwrap_or(None)
    }

    /// Takes the whole amount out, keeping the window: what it held.
    pub(super) fn take_all(&self) -> (u64, u64) {
        let result: Result<_, ()> = self.update(|stored, held| Ok((stored, 0, (stored, held))));
        result.unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_stays_in_its_window() {
        let count = Tagged::<32>::new(0, 0);
        assert_eq!(count.charge(0, 3, 5), Ok((0, 3)));
        assert_eq!(count.charge(0, 3, 5), Err(3), "over the cap");
        assert_eq!(count.charge(0, 2, 5), Ok((0, 5)));
        // A late caller of window 0 after window 1 began charges window 1.
        assert_eq!(count.charge(1, 1, 5), Ok((1, 1)));
        assert_eq!(count.charge(0, 1, 5), Ok((1, 2)));
        count.refund(0, 1);
        assert_eq!(count.get(1), 2, "a refund to an ended window is dropped");
        count.refund(1, 5);
        assert_eq!(count.get(1), 0, "refunds saturate");
        assert_eq!(count.charge(1, u64::MAX, u64::MAX), Err(0), "no overflow");
    }

    #[test]
    fn leases_are_spent_and_deposited_per_window() {
        let lease = Tagged::<32>::new(0, 0);
        assert_eq!(lease.spend(0, 1), None);
        assert!(lease.deposit(0, 4));
        assert_eq!(lease.spend(0, 3), Some((0, 1)));
        assert_eq!(lease.spend(0, 2), None);
        assert!(lease.deposit(2, 7), "a new window replaces the old lease");
        assert_eq!(lease.load(), (2, 7));
        assert!(!lease.deposit(1, 9), "a lease of an ended window is lost");
        lease.add_if(1, 5);
        assert_eq!(lease.load(), (2, 7));
        lease.add_if(2, 1);
        assert_eq!(lease.take_all(), (2, 8));
        assert_eq!(lease.load(), (2, 0));
        lease.raise(2, 3);
        lease.raise(2, 1);
        assert_eq!(lease.load(), (2, 3));
    }

    #[test]
    fn accumulating_hands_back_an_ended_window() {
        let spends = Tagged::<40>::new(0, 0);
        assert_eq!(spends.accumulate(0, 5), None);
        assert_eq!(spends.accumulate(0, 5), None);
        assert_eq!(spends.accumulate(1, 2), Some((0, 10)));
        assert_eq!(
            spends.accumulate(0, 1),
            None,
            "a late spend joins the newer window"
        );
        assert_eq!(spends.take_all(), (1, 3));
        assert_eq!(spends.accumulate(2, 1), None, "nothing to hand back");
    }
}
