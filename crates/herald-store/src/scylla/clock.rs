//! Write timestamps that order writers by ownership term, not by their clocks.
//!
//! CQL resolves two writes of one cell by their write timestamp: the higher one wins,
//! whenever it arrives. Herald stamps every write of the message log itself, from a clock
//! that is strictly increasing in this process and kept inside a window its lease grants:
//! at least the *floor* (one past the ceiling of whoever held the partitions before), below
//! the *ceiling* this process published with its last lease renewal. A later owner's floor
//! is above every ceiling of an earlier one, so its writes win over anything an earlier
//! owner still has in flight, even if that owner's clock runs ahead.

use crate::StoreError;
use std::sync::atomic::{AtomicI64, Ordering};

/// The process's source of write timestamps (microseconds, like CQL's own).
#[derive(Debug)]
pub struct WriteClock {
    last: AtomicI64,
    floor: AtomicI64,
    ceiling: AtomicI64,
}

impl Default for WriteClock {
    fn default() -> Self {
        Self::unbounded()
    }
}

impl WriteClock {
    /// No lease bounds it (a store used by one writer, or tests).
    pub fn unbounded() -> Self {
        Self {
            last: AtomicI64::new(0),
            floor: AtomicI64::new(0),
            ceiling: AtomicI64::new(i64::MAX),
        }
    }

    /// The next timestamp: above every earlier one, at least now and the floor, below the
    /// ceiling. Fails when the ceiling is reached (the lease must be renewed first).
    pub fn next(&self) -> Result<i64, StoreError> {
        let now = now_us();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let ts = (last + 1).max(now).max(self.floor.load(Ordering::Acquire));
            if ts >= self.ceiling.load(Ordering::Acquire) {
                return Err(StoreError::Fenced(
                    "write timestamp reached the lease's ceiling; the lease was not renewed in time"
                        .into(),
                ));
            }
            match self
                .last
                .compare_exchange_weak(last, ts, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(ts),
                Err(seen) => last = seen,
            }
        }
    }

    /// The highest timestamp handed out so far.
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Acquire)
    }

    /// Raises the floor (never lowers it): partitions taken over from a writer whose
    /// timestamps went up to `floor - 1`.
    pub fn raise_floor(&self, floor: i64) {
        self.floor.fetch_max(floor, Ordering::AcqRel);
    }

    pub fn floor(&self) -> i64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The bound published with the lease: no timestamp at or above it is handed out.
    pub fn set_ceiling(&self, ceiling: i64) {
        self.ceiling.store(ceiling, Ordering::Release);
    }

    pub fn ceiling(&self) -> i64 {
        self.ceiling.load(Ordering::Acquire)
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_within_floor_and_ceiling() {
        let c = WriteClock::unbounded();
        let a = c.next().unwrap();
        let b = c.next().unwrap();
        assert!(b > a);
        // A floor far in the future (a predecessor whose clock ran ahead) is respected.
        let far = now_us() + 3_600_000_000;
        c.raise_floor(far);
        assert!(c.next().unwrap() >= far);
        c.raise_floor(1); // never lowered
        assert!(c.floor() == far);
        // At the ceiling nothing more is handed out.
        c.set_ceiling(c.last() + 2);
        assert!(c.next().is_ok());
        assert!(matches!(c.next(), Err(StoreError::Fenced(_))));
    }
}
