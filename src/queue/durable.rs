//! The durability wait: the consumer marks what it journaled, a producer
//! waits until what it published is marked.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ring::LAST_PUBLISHED;
use super::Shared;
use crate::os;

impl Shared {
    /// Consumer side: every record popped so far is durable. Wakes the
    /// producers asleep in [`Shared::wait_durable`], if any.
    pub fn mark_durable(&self) {
        let h = self.header();
        h.durable
            .0
            .store(h.head.0.load(Ordering::Relaxed), Ordering::SeqCst);
        h.durable_epoch.fetch_add(1, Ordering::SeqCst);
        if h.durable_waiters.load(Ordering::SeqCst) > 0 {
            os::futex_wake_all(&h.durable_epoch);
        }
    }

    /// Producer side: waits until all this process published is durable,
    /// at most `timeout`. Spins briefly, then sleeps on the epoch futex:
    /// a SIP worker waiting for the journal's fsync costs no CPU.
    pub fn wait_durable(&self, timeout: Duration) -> bool {
        let want = match LAST_PUBLISHED.with(|l| l.get()) {
            (base, pos) if base == self.base as usize => pos,
            _ => return true,
        };
        let h = self.header();
        let durable = &h.durable.0;
        if durable.load(Ordering::Acquire) >= want {
            return true;
        }
        for _ in 0..200 {
            std::hint::spin_loop();
            if durable.load(Ordering::Acquire) >= want {
                return true;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            // The epoch is read before `durable`: a mark after this read
            // bumps it, so the futex wait below returns at once instead of
            // missing that mark.
            let epoch = h.durable_epoch.load(Ordering::SeqCst);
            h.durable_waiters.fetch_add(1, Ordering::SeqCst);
            let done = durable.load(Ordering::SeqCst) >= want;
            let left = deadline.saturating_duration_since(Instant::now());
            if !done && !left.is_zero() {
                os::futex_wait(&h.durable_epoch, epoch, left);
            }
            h.durable_waiters.fetch_sub(1, Ordering::SeqCst);
            if done || durable.load(Ordering::SeqCst) >= want {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}
