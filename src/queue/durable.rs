//! The durability wait: the consumer marks what it journaled, a producer
//! waits until what it published is marked.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ring::LAST_PUBLISHED;
use super::Shared;

impl Shared {
    /// Consumer side: every record popped so far is durable.
    pub fn mark_durable(&self) {
        let h = self.header();
        h.durable
            .0
            .store(h.head.0.load(Ordering::Relaxed), Ordering::Release);
    }

    /// Producer side: waits until all this process published is durable.
    pub fn wait_durable(&self, timeout: Duration) -> bool {
        let want = match LAST_PUBLISHED.with(|l| l.get()) {
            (base, pos) if base == self.base as usize => pos,
            _ => return true,
        };
        let durable = &self.header().durable.0;
        if durable.load(Ordering::Acquire) >= want {
            return true;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut spins = 0u32;
        while durable.load(Ordering::Acquire) < want {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            if spins < 200 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        true
    }
}
