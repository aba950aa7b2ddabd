//! Hybrid logical clock: wall-clock milliseconds in the high 48 bits and a
//! counter in the low 16, so stamps follow real time when clocks agree and
//! still order causally (a receiver's next stamp exceeds what it received)
//! when they do not.
//!
//! A node has one clock, a word in the shared region
//! ([`crate::queue::Shared::stamp`]): SIP workers stamp their changes as
//! usrloc makes them, the engine stamps its own and observes its peers'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stamp greater than every stamp issued or observed so far on `clock`.
pub fn tick(clock: &AtomicU64) -> u64 {
    let physical = wall_ms() << 16;
    let mut last = clock.load(Ordering::Relaxed);
    loop {
        let next = physical.max(last + 1);
        match clock.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(now) => last = now,
        }
    }
}

/// Takes in a stamp seen from a peer (or in the journal).
pub fn observe(clock: &AtomicU64, remote: u64) {
    clock.fetch_max(remote, Ordering::AcqRel);
}

/// Milliseconds since the epoch encoded in a stamp.
pub fn millis(stamp: u64) -> u64 {
    stamp >> 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_pass_observed_ones() {
        let clock = AtomicU64::new(0);
        let a = tick(&clock);
        let b = tick(&clock);
        assert!(b > a);
        let future = (wall_ms() + 60_000) << 16;
        observe(&clock, future);
        assert!(tick(&clock) > future);
        observe(&clock, a);
        assert!(
            tick(&clock) > future,
            "an older stamp does not turn it back"
        );
    }
}
