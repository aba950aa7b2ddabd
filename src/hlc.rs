//! Hybrid logical clock: wall-clock milliseconds in the high 48 bits and a
//! counter in the low 16, so stamps follow real time when clocks agree and
//! still order causally (a receiver's next stamp exceeds what it received)
//! when they do not.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stamp greater than every stamp issued or observed so far.
    pub fn now(&mut self) -> u64 {
        let physical = wall_ms() << 16;
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Takes in a stamp seen from a peer.
    pub fn observe(&mut self, remote: u64) {
        self.last = self.last.max(remote);
    }

    /// Milliseconds since the epoch encoded in a stamp.
    pub fn millis(stamp: u64) -> u64 {
        stamp >> 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_pass_observed_ones() {
        let mut h = Hlc::new();
        let a = h.now();
        let b = h.now();
        assert!(b > a);
        let future = (wall_ms() + 60_000) << 16;
        h.observe(future);
        assert!(h.now() > future);
    }
}
