//! Garbage for the bad-input tests, the same bytes on every run, and
//! connections from chosen loopback addresses (floods of strangers).

#[path = "../ports/mod.rs"]
#[allow(dead_code)] // the e2e tests use connect_from only
mod ports;
#[allow(unused_imports)] // only the flood tests connect from chosen addresses
pub use ports::connect_from;

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
